import os
import subprocess
import sys

import pytest
import torch
from astrai_core import ModelConfig, Transformer, load_checkpoint, save_checkpoint


def make_model(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=400, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64, tie_embeddings=tie
    )
    return Transformer(config)


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_is_bit_exact(tmp_path, tokenizer, tie):
    model = make_model(tie)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, metadata={"step": 7})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    assert loaded.metadata["step"] == "7"
    assert loaded.tokenizer.encode("测试 test") == tokenizer.encode("测试 test")
    tokens = torch.randint(0, 400, (1, 9))
    assert torch.equal(model.eval()(tokens)["logits"], loaded.model(tokens)["logits"])


def test_explicit_head_size_round_trips(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=400, dim=32, n_layers=2, n_heads=6, n_kv_heads=2, dim_ffn=64, max_len=64, dim_head=8
    )
    model = Transformer(config).eval()
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == config
    tokens = torch.randint(0, 400, (1, 9))
    assert torch.equal(model(tokens)["logits"], loaded.model(tokens)["logits"])


def test_tied_weights_stay_tied_after_load(tmp_path):
    save_checkpoint(tmp_path / "ckpt", make_model(tie=True))
    model = load_checkpoint(tmp_path / "ckpt").model
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()


def test_files_contain_no_pickle(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ckpt", make_model(), tokenizer)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors", "tokenizer.model"]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    first = make_model()
    save_checkpoint(path, first)

    def crash(_directory):
        raise RuntimeError("disk full")

    second = make_model()
    with torch.no_grad():
        second.norm.weight.fill_(2.0)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, second, extra_files=crash)
    loaded = load_checkpoint(path).model
    assert torch.equal(loaded.norm.weight, first.norm.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_overwrite_replaces_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make_model())
    second = make_model()
    with torch.no_grad():
        second.norm.weight.fill_(3.0)
    save_checkpoint(path, second)
    assert torch.equal(load_checkpoint(path).model.norm.weight, second.norm.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_not_a_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)


def test_mismatched_weights_are_reported(tmp_path):
    save_checkpoint(tmp_path / "ckpt", make_model())
    bigger = ModelConfig(vocab_size=400, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64)
    bigger.save(tmp_path / "ckpt" / "config.json")
    with pytest.raises(ValueError, match="missing weights"):
        load_checkpoint(tmp_path / "ckpt")


def test_bfloat16_cast_on_load(tmp_path):
    save_checkpoint(tmp_path / "ckpt", make_model())
    model = load_checkpoint(tmp_path / "ckpt", dtype=torch.bfloat16).model
    assert model.embed_tokens.weight.dtype == torch.bfloat16


LOAD_AND_MEASURE = r"""
import sys, torch
from astrai_core import load_checkpoint
def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
del load_checkpoint(sys.argv[1]).model  # first use of the code paths allocates about 70 MB once
before = peak()
model = load_checkpoint(sys.argv[1]).model
# Touch every 4 KiB page of every weight (one bf16 value per 2 KiB) without large temporaries:
# a float32 copy of the embedding alone would add 32 MB to the peak being measured.
float(sum(p.reshape(-1)[::1024].float().sum() for p in model.parameters()))
print(peak() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from Linux's /proc")
def test_loading_does_not_hold_weights_twice(tmp_path):
    config = ModelConfig(vocab_size=8192, dim=1024, n_layers=4, n_heads=8, n_kv_heads=2, dim_ffn=4096, max_len=64)
    torch.manual_seed(0)
    model = Transformer(config).to(torch.bfloat16)
    save_checkpoint(tmp_path / "ckpt", model)
    del model
    weight_bytes = (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    output = subprocess.run(
        [sys.executable, "-c", LOAD_AND_MEASURE, str(tmp_path / "ckpt")], check=True, capture_output=True, text=True
    )
    assert int(output.stdout) <= 1.3 * weight_bytes


def test_damaged_weights_file_is_named(tmp_path):
    save_checkpoint(tmp_path / "ckpt", make_model())
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_checkpoint(tmp_path / "ckpt")


def test_checkpoint_folder_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt", make_model())
    finally:
        os.umask(previous)
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755
