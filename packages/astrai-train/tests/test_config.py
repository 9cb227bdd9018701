import json

import pytest
from astrai_train import TrainConfig


def base(**overrides):
    data = {"dataset": "data.arrow", "out_dir": "out"}
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": -1}, "max_steps"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"data_parallel": "zero3"}, "data_parallel"),
        ({"optimizer": {"lr": 0}}, "optimizer.lr"),
        ({"optimizer": {"learning_rate": 1e-3}}, "learning_rate"),
        ({"schedule": {"name": "linear"}}, "schedule.name"),
        ({"model": "huge"}, "huge"),
        ({"model": {"preset": "tiny", "dims": 3}}, "dims"),
        ({"model": {"preset": "tiny", "n_heads": 5}}, "n_heads"),
        ({"batch": 3}, "batch"),
    ],
)
def test_invalid_values_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(base(**overrides))


def test_missing_required_field():
    with pytest.raises(ValueError, match="dataset"):
        TrainConfig.from_dict({"out_dir": "x"})


def test_relative_paths_resolve_against_file(tmp_path):
    path = tmp_path / "configs" / "run.json"
    path.parent.mkdir()
    path.write_text(json.dumps(base(val_dataset="val.arrow")))
    config = TrainConfig.from_file(path)
    assert config.dataset == str(path.parent / "data.arrow")
    assert config.val_dataset == str(path.parent / "val.arrow")
    assert config.out_dir == str(path.parent / "out")


def test_invalid_json_reports_line(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{\n "dataset": "x",\n}')
    with pytest.raises(ValueError, match="line 3"):
        TrainConfig.from_file(path)


def test_round_trip_through_dict():
    config = TrainConfig.from_dict(base(optimizer={"lr": 1e-3}, schedule={"name": "wsd"}))
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config


def test_model_config_overrides_vocab():
    config = TrainConfig.from_dict(base(model={"preset": "tiny", "n_layers": 2}))
    model_config = config.model_config(vocab_size=500)
    assert model_config.n_layers == 2
    assert model_config.vocab_size == 500


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr must be a number, got 'fast'"),
        ({"schedule": {"warmup_steps": "ten"}}, "schedule.warmup_steps must be a number"),
        ({"max_grad_norm": None}, "max_grad_norm must be a number"),
    ],
)
def test_wrong_types_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(base(**overrides))


def test_model_without_preset_needs_no_vocab_size(tmp_path):
    model = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim_ffn": 176, "max_len": 64}
    config = TrainConfig(dataset="x.arrow", out_dir=str(tmp_path), model=model)
    assert config.model_config(vocab_size=500).vocab_size == 500
    with pytest.raises(ValueError, match="dim_ffn"):
        TrainConfig(dataset="x.arrow", out_dir=str(tmp_path), model={**model, "dim_ffn": 0})
