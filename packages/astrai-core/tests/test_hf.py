"""Parity with Hugging Face transformers and checkpoint interop, on tiny random models.

The parity tests export an AstrAI model with ``export_hf_checkpoint``, load the folder with
transformers' own ``from_pretrained`` and compare logits, so they check the architecture, the
RoPE scalings and the exporter together. They are skipped only when transformers is not installed.
"""

import json

import pytest
import torch
from astrai_core import (
    ModelConfig,
    Transformer,
    export_hf_checkpoint,
    import_hf_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from astrai_core.hf import config_from_hf, from_hf_name, to_hf_name

BASE = dict(vocab_size=120, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=96, max_len=256)

PARITY_CASES = {
    "llama-gqa-tied": {},
    "llama-mha-untied": {"n_kv_heads": 4, "tie_embeddings": False},
    "llama-mqa-theta": {"n_kv_heads": 1, "rope_theta": 500000.0},
    "qwen3-qk-norm": {"use_qk_norm": True, "tie_embeddings": False, "rope_theta": 1e6},
    "linear": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "llama3": {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "qwen3-yarn": {
        "use_qk_norm": True,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    },
    # Explicit head sizes: 4 heads of 32 are wider than hidden_size=64, and 64 does not split into 6 heads.
    "llama-head-dim": {"dim_head": 32, "tie_embeddings": False},
    "qwen3-head-dim": {"use_qk_norm": True, "n_heads": 6, "n_kv_heads": 2, "dim_head": 16},
    "qwen3-head-dim-yarn": {
        "use_qk_norm": True,
        "dim_head": 32,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    },
    "yarn-mscale": {
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": 128,
            "beta_fast": 16,
            "beta_slow": 2,
            "mscale": 0.8,
            "mscale_all_dim": 0.5,
        },
    },
}


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():  # norms away from 1 so a swapped or dropped norm weight shows in the logits
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_logits_match_transformers(tmp_path, case):
    transformers = pytest.importorskip("transformers")
    model = make_model(**PARITY_CASES[case])
    export_hf_checkpoint(model, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    expected_class = "Qwen3ForCausalLM" if model.config.use_qk_norm else "LlamaForCausalLM"
    assert type(hf_model).__name__ == expected_class

    # Long enough to pass the original context of the scaled cases, so their scaling matters.
    tokens = torch.randint(0, BASE["vocab_size"], (2, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)["logits"]
        theirs = hf_model(tokens).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_scaling_changes_logits():
    """Guards the parity tests: if scaling were ignored they would still pass on short inputs."""
    tokens = torch.randint(0, BASE["vocab_size"], (1, 200), generator=torch.Generator().manual_seed(1))
    plain = make_model()(tokens)["logits"]
    for case in ("linear", "llama3", "qwen3-yarn"):
        overrides = {key: value for key, value in PARITY_CASES[case].items() if key != "use_qk_norm"}
        scaled = make_model(**overrides)(tokens)["logits"]
        assert not torch.allclose(plain, scaled, atol=1e-3), case


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("shard_size", [None, 120_000])
def test_export_import_round_trip_is_bit_exact(tmp_path, tokenizer, tie, shard_size):
    model = make_model(vocab_size=400, tie_embeddings=tie, use_qk_norm=True)
    kwargs = {} if shard_size is None else {"shard_size": shard_size}
    export_hf_checkpoint(model, tmp_path / "hf", tokenizer, **kwargs)
    files = sorted(path.name for path in (tmp_path / "hf").iterdir())
    if shard_size is None:
        assert files == ["config.json", "model.safetensors", "tokenizer.model"]
    else:
        shards = [tmp_path / "hf" / name for name in files if name.startswith("model-")]
        assert "model.safetensors.index.json" in files
        assert len(shards) > 2
        # Each shard holds at most shard_size bytes of tensors (plus its small JSON header).
        assert all(shard.stat().st_size <= shard_size + 2_000 for shard in shards)
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id)

    imported = import_hf_checkpoint(tmp_path / "hf")
    assert imported.config == model.config
    assert_same_weights(model, imported.model)
    assert imported.tokenizer.encode("测试 test") == tokenizer.encode("测试 test")
    if tie:
        assert imported.model.lm_head.weight.data_ptr() == imported.model.embed_tokens.weight.data_ptr()


def assert_same_weights(model, other):
    original, restored = model.state_dict(), other.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name


def test_head_dim_round_trip_is_bit_exact(tmp_path):
    model = make_model(use_qk_norm=True, n_heads=6, n_kv_heads=2, dim_head=16, tie_embeddings=False)
    export_hf_checkpoint(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["head_dim"] == 16
    imported = import_hf_checkpoint(tmp_path / "hf")
    assert imported.config == model.config
    assert_same_weights(model, imported.model)


# transformers' LlamaConfig requires hidden_size % num_attention_heads == 0 even with head_dim set.
@pytest.mark.parametrize(("family", "n_heads"), [("llama", 4), ("qwen3", 6)])
def test_transformers_head_dim_folder_imports(tmp_path, family, n_heads):
    """Import a folder that transformers wrote itself, with head_dim * heads != hidden_size."""
    transformers = pytest.importorskip("transformers")
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[family]
    # initializer_range=0.2 makes the attention scores large enough that a wrong softmax scale
    # (1/sqrt(hidden_size / heads) in place of 1/sqrt(head_dim)) shows in the logits.
    hf_config = config_class(
        vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=n_heads, num_key_value_heads=2, head_dim=24, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    hf_model = model_class(hf_config).eval()
    with torch.no_grad():
        for param in hf_model.parameters():
            if param.dim() == 1:
                param.uniform_(0.5, 1.5)
    hf_model.save_pretrained(tmp_path / "hf")

    imported = import_hf_checkpoint(tmp_path / "hf")
    assert imported.config.head_dim == 24
    assert imported.config.use_qk_norm == (family == "qwen3")
    tokens = torch.randint(0, 120, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = imported.model(tokens)["logits"]
        theirs = hf_model(tokens).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_export_of_a_checkpoint_takes_its_tokenizer(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ckpt", make_model(vocab_size=400), tokenizer)
    export_hf_checkpoint(load_checkpoint(tmp_path / "ckpt"), tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tokenizer.model_proto


def test_exported_folder_loads_in_bfloat16(tmp_path):
    model = make_model().to(torch.bfloat16)
    export_hf_checkpoint(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    imported = import_hf_checkpoint(tmp_path / "hf")
    assert imported.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(imported.model.layers[1].feed_forward.up_proj.weight, model.layers[1].feed_forward.up_proj.weight)


def test_gated_attention_cannot_be_exported(tmp_path):
    with pytest.raises(ValueError, match="use_gated_attention"):
        export_hf_checkpoint(make_model(use_gated_attention=True), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_llama_export_rejects_uneven_heads(tmp_path):
    with pytest.raises(ValueError, match="dim=64 and n_heads=6 as llama"):
        export_hf_checkpoint(make_model(n_heads=6, n_kv_heads=2, dim_head=16), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def llama_config(**changes) -> dict:
    config = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
        "bos_token_id": 1,
    }
    config.update(changes)
    return config


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"attention_bias": True}, "attention_bias=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"quantization_config": {"bits": 4}}, "quantization_config"),
        ({"model_type": "gemma"}, "'gemma'"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
    ],
)
def test_unsupported_config_fields_are_named(changes, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        config_from_hf(llama_config(**changes))


def test_head_dim_is_imported():
    assert config_from_hf(llama_config()).head_dim == 8
    assert config_from_hf(llama_config(head_dim=8)).dim_head is None
    assert config_from_hf(llama_config(head_dim=16)).dim_head == 16
    assert config_from_hf(llama_config(hidden_size=36, num_attention_heads=6, head_dim=12)).dim_head == 12


def test_qwen3_head_dim_defaults_to_128():
    assert config_from_hf(llama_config(model_type="qwen3")).head_dim == 128
    assert config_from_hf(llama_config(model_type="qwen3", head_dim=8)).dim_head is None


@pytest.mark.parametrize(
    ("head_dim", "named"), [(7, "dim_head=7 is odd"), (0, "dim_head must be a positive integer")]
)
def test_invalid_head_dim_is_named(head_dim, named):
    with pytest.raises(ValueError, match=named):
        config_from_hf(llama_config(head_dim=head_dim))


def test_qwen3_0_6b_config_is_imported():
    # The shape fields of Qwen/Qwen3-0.6B's config.json. Its model card gives 0.44B non-embedding
    # parameters.
    config = config_from_hf(
        llama_config(
            model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
            num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000, tie_word_embeddings=True,
            sliding_window=None, use_sliding_window=False, max_window_layers=28, attention_bias=False,
            attention_dropout=0.0,
        )
    )  # fmt: skip
    assert (config.dim, config.n_heads, config.head_dim) == (1024, 16, 128)
    assert config.use_qk_norm
    assert 0.435e9 < config.num_parameters(include_embeddings=False) < 0.445e9


def test_both_rope_spellings_are_read():
    scaling = {"rope_type": "linear", "factor": 2.0}
    legacy = config_from_hf(llama_config(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=5e5))
    current = config_from_hf(llama_config(rope_parameters={**scaling, "rope_theta": 5e5}))
    assert legacy == current
    assert legacy.rope_scaling == scaling
    assert legacy.rope_theta == 5e5


def test_weight_names():
    assert to_hf_name("layers.3.attention.k_norm.weight") == "model.layers.3.self_attn.k_norm.weight"
    assert to_hf_name("layers.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert from_hf_name("model.layers.11.mlp.down_proj.weight") == "layers.11.feed_forward.down_proj.weight"
    assert from_hf_name("model.embed_tokens.weight") == "embed_tokens.weight"
    assert from_hf_name("model.layers.0.vision_tower.weight") is None


def test_missing_weights_file_is_explained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(llama_config()))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        import_hf_checkpoint(tmp_path)
