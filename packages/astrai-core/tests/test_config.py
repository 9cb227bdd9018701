import dataclasses
import json

import pytest
from astrai_core import PRESETS, ModelConfig, Transformer


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64)
    fields.update(overrides)
    return ModelConfig(**fields)


def test_save_load_round_trip(tmp_path):
    config = tiny(use_qk_norm=True, rope_theta=5e5)
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dim": 30}, "dim=30"),
        ({"n_kv_heads": 3}, "n_kv_heads=3"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"use_qk_norm": "yes"}, "use_qk_norm"),
        ({"dim": 36, "n_heads": 4}, "head size"),
        ({"dim_head": 15}, "dim_head=15 is odd"),
        ({"dim_head": 0}, "dim_head must be a positive integer"),
        ({"dim_head": True}, "dim_head must be a positive integer"),
        ({"dim_head": 8.0}, "dim_head must be a positive integer"),
    ],
)
def test_invalid_value_names_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_unknown_field_in_file_is_named(tmp_path):
    data = tiny().to_dict() | {"n_layer": 3}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="n_layer"):
        ModelConfig.load(path)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "dim": 32,\n  oops\n}')
    with pytest.raises(ValueError, match="line 3"):
        ModelConfig.load(path)


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="tiny"):
        ModelConfig.preset("huge")


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_parameter_count_matches_model(name):
    config = PRESETS[name]
    model = Transformer(config)
    assert config.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dim_head", [4, 16])
def test_parameter_count_with_explicit_head_size(dim_head):
    config = tiny(
        n_heads=6, dim_head=dim_head, use_qk_norm=True, use_gated_attention=True, tie_embeddings=False
    )
    model = Transformer(config)
    assert config.num_parameters() == sum(p.numel() for p in model.parameters())


def test_head_dim_defaults_to_dim_over_heads():
    config = tiny()
    assert config.dim_head is None
    assert config.head_dim == 8


def test_explicit_head_size_lifts_divisibility():
    config = tiny(dim=30, dim_head=16)
    assert config.head_dim == 16
    with pytest.raises(ValueError, match="or set dim_head"):
        tiny(dim=30)


def test_preset_copy_recomputes_default_head_size():
    assert ModelConfig.preset("tiny").head_dim == 32
    wider = ModelConfig.preset("tiny", dim=384)
    assert wider.dim_head is None
    assert wider.head_dim == 64
    assert ModelConfig.preset("small", n_heads=4, n_kv_heads=2).head_dim == 64
    assert dataclasses.replace(tiny(), dim=64).head_dim == 16


def test_copy_keeps_explicit_head_size():
    qwen_like = ModelConfig.preset("tiny", dim_head=128)
    assert qwen_like.head_dim == 128
    assert dataclasses.replace(qwen_like, dim=384).head_dim == 128
    assert dataclasses.replace(qwen_like, dim_head=None).head_dim == 32


def test_explicit_head_size_round_trips(tmp_path):
    config = tiny(n_heads=6, dim_head=16)
    config.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["dim_head"] == 16
    assert ModelConfig.load(tmp_path / "config.json") == config


def test_default_head_size_is_not_written(tmp_path):
    tiny().save(tmp_path / "config.json")
    assert "dim_head" not in json.loads((tmp_path / "config.json").read_text())


def test_config_file_without_dim_head_loads(tmp_path):
    # A config.json as AstrAI 0.2.0 wrote it, before the dim_head field existed.
    old_file = {
        "vocab_size": 100, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim_ffn": 64,
        "max_len": 64, "norm_eps": 1e-05, "rope_theta": 10000.0, "use_qk_norm": False,
        "use_gated_attention": False, "tie_embeddings": True, "rope_scaling": None,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old_file))
    config = ModelConfig.load(path)
    assert config == tiny()
    assert config.head_dim == 8


def test_head_dim_key_gets_hint(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny().to_dict() | {"head_dim": 16}))
    with pytest.raises(ValueError, match="head size field is dim_head"):
        ModelConfig.load(path)


def test_one_billion_preset_size():
    assert 0.9e9 < PRESETS["1b"].num_parameters() < 1.3e9


@pytest.mark.parametrize(
    ("scaling", "named"),
    [
        ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic'"),
        ({"rope_type": "linear"}, "missing \\['factor'\\]"),
        ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, "unknown \\['beta_fast'\\]"),
        ({"rope_type": "yarn", "factor": 0.5}, "factor must be at least 1"),
        ({"rope_type": "linear", "factor": "2"}, "factor must be a positive number"),
        ("linear", "must be null or an object"),
    ],
)
def test_invalid_rope_scaling_names_the_problem(scaling, named):
    with pytest.raises(ValueError, match=named):
        tiny(rope_scaling=scaling)


def test_rope_scaling_is_normalised_and_round_trips(tmp_path):
    config = tiny(rope_scaling={"type": "yarn", "factor": 4.0})
    assert config.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config
    assert tiny(rope_scaling={"rope_type": "default"}).rope_scaling is None
