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
