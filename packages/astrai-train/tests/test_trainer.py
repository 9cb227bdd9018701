import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from astrai_core import load_checkpoint
from astrai_train import TrainCallback, Trainer, TrainContextBuilder, default_callbacks, latest_checkpoint
from click.testing import CliRunner


class Recorder(TrainCallback):
    def __init__(self):
        self.losses, self.evaluations = [], []

    def on_step_end(self, trainer, metrics):
        self.losses.append(metrics["loss"])

    def on_evaluate(self, trainer, metrics):
        self.evaluations.append(metrics["val_loss"])


def run(config, resume=True):
    recorder = Recorder()
    trainer = Trainer(config, builder=TrainContextBuilder(config, resume=resume))
    trainer.callbacks.append(recorder)
    trainer.train()
    return recorder


def test_loss_decreases_and_final_saved(workspace, tmp_path, tiny_config):
    config = tiny_config(workspace, tmp_path, max_steps=30, log_interval=10)
    recorder = run(config)
    assert recorder.evaluations[-1] < recorder.evaluations[0]
    final = load_checkpoint(tmp_path / "run" / "final")
    assert final.tokenizer is not None
    assert final.config.vocab_size == final.tokenizer.vocab_size


def test_first_evaluation_is_untrained_baseline(workspace, tmp_path, tiny_config):
    recorder = run(tiny_config(workspace, tmp_path, max_steps=2))
    vocab = load_checkpoint(tmp_path / "run" / "final").config.vocab_size
    # A freshly initialised model predicts nearly uniformly.
    assert recorder.evaluations[0] == pytest.approx(math.log(vocab), rel=0.05)


def test_metrics_log_is_jsonl(workspace, tmp_path, tiny_config):
    run(tiny_config(workspace, tmp_path, max_steps=4, log_interval=2))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4]
    assert all(r["tokens_per_second"] > 0 for r in steps)
    assert any("val_loss" in r for r in records)


class Interrupt(Exception):
    pass


class InterruptAt(TrainCallback):
    """Stops a run after step ``step`` (after the checkpoint callback has saved it)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if metrics["step"] == self.step:
            raise Interrupt


def test_resume_continues_with_same_losses(workspace, tmp_path, tiny_config):
    full = run(tiny_config(workspace, tmp_path / "a", max_steps=6, ckpt_interval=3, keep_checkpoints=5))

    config = tiny_config(workspace, tmp_path / "b", max_steps=6, ckpt_interval=3, keep_checkpoints=5)
    first = Recorder()
    with pytest.raises(Interrupt):
        Trainer(config, callbacks=[*default_callbacks(), first, InterruptAt(4)]).train()
    assert latest_checkpoint(config.out_dir).name == "step-3"
    second = run(config)
    # Steps 1-3 from the first run, step 4 was lost with the interruption, 4-6 from the resumed one.
    assert first.losses[:3] + second.losses == pytest.approx(full.losses, abs=1e-6)


def test_no_resume_starts_fresh(workspace, tmp_path, tiny_config):
    config = tiny_config(workspace, tmp_path, max_steps=2)
    run(config)
    for path in Path(config.out_dir).glob("step-*"):
        shutil.rmtree(path)  # keep final/, which a fresh run overwrites
    again = run(config, resume=False)
    assert len(again.losses) == 2


def test_no_resume_rejects_folder_with_checkpoints(workspace, tmp_path, tiny_config):
    from astrai_train.cli import main

    config = tiny_config(workspace, tmp_path, max_steps=4, ckpt_interval=2)
    run(config)
    before = sorted(path.name for path in (tmp_path / "run").iterdir())
    with pytest.raises(ValueError, match="already has checkpoints \\(step-2, step-4\\)"):
        TrainContextBuilder(config, resume=False)

    path = tmp_path / "run.json"
    config.save(path)
    result = CliRunner().invoke(main, ["run", str(path), "--no-resume"])
    assert result.exit_code == 1
    assert "choose another out_dir (--out-dir)" in result.output
    assert str(path) in result.output
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == before


def test_keep_checkpoints_removes_old(workspace, tmp_path, tiny_config):
    run(tiny_config(workspace, tmp_path, max_steps=6, ckpt_interval=1, keep_checkpoints=2))
    names = sorted(p.name for p in (tmp_path / "run").glob("step-*"))
    assert names == ["step-5", "step-6"]


def test_sft_from_pretrained(workspace, tmp_path, tiny_config):
    run(tiny_config(workspace, tmp_path / "pre", max_steps=2))
    config = tiny_config(
        workspace,
        tmp_path / "sft",
        dataset=str(workspace / "chat.arrow"),
        val_dataset=str(workspace / "chat.arrow"),
        init_from=str(tmp_path / "pre" / "run" / "final"),
        tokenizer=None,
        strategy="sft",
        max_steps=8,
    )
    recorder = run(config)
    assert recorder.evaluations[-1] < recorder.evaluations[0]


def test_gradient_accumulation_matches_large_batch(workspace, tmp_path, tiny_config):
    # With a fixed data order, 2 micro-batches of 2 give the same first update as 1 batch of 4
    # (same mean over the same samples, as long as every window has the same number of targets).
    big = run(tiny_config(workspace, tmp_path / "big", batch_size=4, max_steps=1))
    small = run(tiny_config(workspace, tmp_path / "small", batch_size=2, accumulation_steps=2, max_steps=1))
    a = load_checkpoint(tmp_path / "big" / "run" / "final").model.state_dict()
    b = load_checkpoint(tmp_path / "small" / "run" / "final").model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4)
    assert big.losses[0] == pytest.approx(small.losses[0], abs=1e-5)


def test_tokenizer_mismatch_is_reported(workspace, tmp_path, tiny_config):
    from astrai_core import Tokenizer

    other = Tokenizer.train(["something completely different " * 50, "另一种文本" * 50], tmp_path / "o.model", vocab_size=300)
    config = tiny_config(workspace, tmp_path, tokenizer=str(tmp_path / "o.model"))
    with pytest.raises(ValueError, match="tokenizer"):
        Trainer(config).train()
    assert other.vocab_size == 300


def test_cli_run(workspace, tmp_path, tiny_config):
    from astrai_train.cli import main

    config = tiny_config(workspace, tmp_path, max_steps=2)
    path = tmp_path / "run.json"
    config.save(path)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "final model" in result.output


def test_cli_reports_bad_config(tmp_path):
    from astrai_train.cli import main

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset": "x.arrow", "out_dir": "o", "batch_size": "big"}))
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1
    assert "batch_size" in result.output
    assert "Traceback" not in result.output


def test_resume_refuses_other_tokenizer(workspace, tmp_path, tiny_config):
    from astrai_core import Tokenizer
    from astrai_data import Corpus, pack_corpus

    Trainer(tiny_config(workspace, tmp_path, max_steps=2)).train()
    # Same vocabulary size (so the model shape matches), different pieces.
    texts = [(workspace / "corpus" / name).read_text() for name in ("doc00.txt", "doc13.txt")] * 10
    texts += ["zebra quartz jukebox"] * 30
    other = Tokenizer.train(texts, tmp_path / "other.model", vocab_size=400)
    pack_corpus(Corpus(workspace / "corpus", kind="text"), other, tmp_path / "other.arrow", seq_len=32, workers=1)
    config = tiny_config(
        workspace,
        tmp_path,
        max_steps=4,
        tokenizer=str(tmp_path / "other.model"),
        dataset=str(tmp_path / "other.arrow"),
        val_dataset=None,
    )
    with pytest.raises(ValueError, match="another tokenizer"):
        Trainer(config).train()


def test_resume_refuses_other_model_shape(workspace, tmp_path, tiny_config):
    Trainer(tiny_config(workspace, tmp_path, max_steps=2)).train()
    bigger = tiny_config(workspace, tmp_path, max_steps=4)
    bigger.model = dict(bigger.model, n_layers=3)
    with pytest.raises(ValueError, match="another shape"):
        Trainer(bigger).train()


def test_wrongly_typed_strategy_option(workspace, tmp_path, tiny_config):
    config = tiny_config(workspace, tmp_path, strategy_options={"label_smoothing": "x"})
    with pytest.raises(ValueError, match="wrong type"):
        Trainer(config).train()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_gpu_is_reported(workspace, tmp_path, tiny_config):
    with pytest.raises(ValueError, match="no CUDA device"):
        Trainer(tiny_config(workspace, tmp_path, device="cuda")).train()
