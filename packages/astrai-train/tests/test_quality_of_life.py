import json
import xml.etree.ElementTree as ElementTree

import pytest
import torch
from astrai_train import BaseStrategy, LossOutput, StrategyFactory, TrainCallback, Trainer
from astrai_train.strategy import SEQStrategy


@StrategyFactory.register("test-nan-at-step-2")
class NanAtSecondStep(SEQStrategy):
    """The SEQ loss, except that the second call returns NaN."""

    calls = 0

    def compute_loss(self, batch):
        output = super().compute_loss(batch)
        type(self).calls += 1
        if type(self).calls == 2:
            return LossOutput(output.loss * float("nan"), output.num_tokens)
        return output


class Steps(TrainCallback):
    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, metrics):
        self.losses.append(metrics["loss"])


def test_evaluation_reports_each_language(workspace, tmp_path, tiny_config):
    trainer = Trainer(tiny_config(workspace, tmp_path, max_steps=2))
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluation = [r for r in records if "val_loss" in r][-1]
    assert {"val_loss_en", "val_loss_zh", "val_tokens_en", "val_tokens_zh"} <= evaluation.keys()
    total = evaluation["val_tokens_en"] + evaluation["val_tokens_zh"]
    assert evaluation["val_tokens"] == total
    weighted = (
        evaluation["val_loss_en"] * evaluation["val_tokens_en"] + evaluation["val_loss_zh"] * evaluation["val_tokens_zh"]
    ) / total
    assert evaluation["val_loss"] == pytest.approx(weighted)


def test_loss_plot_is_written(workspace, tmp_path, tiny_config):
    Trainer(tiny_config(workspace, tmp_path, max_steps=4, log_interval=1)).train()
    svg = ElementTree.parse(tmp_path / "run" / "metrics.svg").getroot()
    names = [element.text for element in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "loss" in names
    assert "val_loss" in names
    assert "val_loss_zh" in names
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}polyline"))) >= 3


def test_nonfinite_loss_stops_with_step(workspace, tmp_path, tiny_config):
    NanAtSecondStep.calls = 0
    config = tiny_config(workspace, tmp_path, strategy="test-nan-at-step-2", val_dataset=None)
    with pytest.raises(FloatingPointError, match="step 2: loss is nan"):
        Trainer(config).train()


def test_nonfinite_loss_skips_update(workspace, tmp_path, tiny_config):
    NanAtSecondStep.calls = 0
    config = tiny_config(
        workspace, tmp_path, strategy="test-nan-at-step-2", on_nonfinite="skip", val_dataset=None, max_steps=3
    )
    steps = Steps()
    trainer = Trainer(config)
    trainer.callbacks.append(steps)
    snapshots = []

    class Snapshot(TrainCallback):
        def on_step_end(self, trainer, metrics):
            snapshots.append({k: v.clone() for k, v in trainer.context.model.state_dict().items()})

    trainer.callbacks.append(Snapshot())
    trainer.train()
    assert len(steps.losses) == 3
    assert steps.losses[1] != steps.losses[1]  # NaN
    for name in snapshots[0]:
        assert torch.equal(snapshots[0][name], snapshots[1][name]), name
    assert any(not torch.equal(snapshots[1][n], snapshots[2][n]) for n in snapshots[1])


def test_nonfinite_policy_validated(workspace, tmp_path, tiny_config):
    with pytest.raises(ValueError, match="on_nonfinite"):
        tiny_config(workspace, tmp_path, on_nonfinite="ignore")


def test_base_strategy_is_abstract():
    with pytest.raises(NotImplementedError):
        BaseStrategy(torch.nn.Linear(1, 1)).compute_loss({})


def test_gradient_checkpointing_gives_same_update(workspace, tmp_path, tiny_config):
    from astrai_core import load_checkpoint

    plain = tiny_config(workspace, tmp_path / "plain", max_steps=2, val_dataset=None)
    recomputed = tiny_config(workspace, tmp_path / "ckpt", max_steps=2, val_dataset=None, gradient_checkpointing=True)
    Trainer(plain).train()
    trainer = Trainer(recomputed)
    trainer.train()
    assert trainer.context.model.gradient_checkpointing
    a = load_checkpoint(tmp_path / "plain" / "run" / "final").model.state_dict()
    b = load_checkpoint(tmp_path / "ckpt" / "run" / "final").model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_compiled_model_trains_and_saves(workspace, tmp_path, tiny_config):
    from astrai_core import load_checkpoint

    config = tiny_config(workspace, tmp_path, max_steps=2, val_dataset=None, compile=True)
    trainer = Trainer(config)
    trainer.train()
    assert trainer.context.strategy.model is not trainer.context.model
    saved = load_checkpoint(tmp_path / "run" / "final").model.state_dict()
    assert not any(name.startswith("_orig_mod") for name in saved)
