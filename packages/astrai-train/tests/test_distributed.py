"""Data-parallel training, DDP and FSDP, on CPU with the gloo backend, started by our spawn helper and by torchrun."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from astrai_core import load_checkpoint
from astrai_train import TrainContextBuilder
from astrai_train.distributed import cpu_threads_per_process
from safetensors.torch import load_file


# Adam turns gradient differences of float rounding (the ranks sum in another order) into update
# differences of up to lr for near-zero gradients, so these runs use a small rate and a larger eps.
OPTIMIZER = {"lr": 1e-3, "eps": 1e-6}
# The gradient norms of these runs are about 0.9, so every step is clipped. A norm taken over one
# rank's FSDP shard alone would clip differently and change the losses by about 5e-5.
MAX_GRAD_NORM = 0.5


def losses(out_dir):
    result = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            result[record["step"]] = record["loss"]
    return result


def train(config, command=None):
    path = config.out_dir + ".json"
    config.save(path)
    command = command or [sys.executable, "-m", "astrai_train.cli", "run"]
    result = subprocess.run([*command, path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def single_process(workspace, tmp_path_factory, tiny_config):
    directory = tmp_path_factory.mktemp("single")
    config = tiny_config(
        workspace, directory, batch_size=4, max_steps=6, log_interval=1, val_dataset=None, num_threads=1,
        optimizer=OPTIMIZER, max_grad_norm=MAX_GRAD_NORM, ckpt_interval=3, keep_checkpoints=5,
    )
    train(config)
    return directory / "run"


def rewind(out_dir, step):
    """Make a finished run look as if it had died right after saving ``step-<step>``."""
    for path in out_dir.iterdir():
        later_step = path.name.startswith("step-") and int(path.name.removeprefix("step-")) > step
        if path.name == "final" or later_step:
            shutil.rmtree(path)
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    earlier_records = [line for line in lines if json.loads(line)["step"] <= step]
    (out_dir / "metrics.jsonl").write_text("\n".join(earlier_records) + "\n")


def assert_same_run(a, b):
    assert losses(a).keys() == losses(b).keys()
    for step, loss in losses(a).items():
        assert losses(b)[step] == pytest.approx(loss, abs=1e-5), step
    first = load_checkpoint(a / "final").model.state_dict()
    second = load_checkpoint(b / "final").model.state_dict()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-5, rtol=1e-4)


def test_two_processes_match_one(workspace, tmp_path, tiny_config, single_process, monkeypatch):
    # No num_threads: the processes share the cores out between them.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = tiny_config(
        workspace, tmp_path, batch_size=2, nprocs=2, max_steps=6, log_interval=1, val_dataset=None,
        optimizer=OPTIMIZER, max_grad_norm=MAX_GRAD_NORM,
    )
    result = train(config)
    assert "starting 2 training processes" in result.stderr
    threads = cpu_threads_per_process(2)
    assert f"each of the 2 training processes uses {threads} CPU threads" in result.stderr
    out_dir = tmp_path / "run"
    assert_same_run(single_process, out_dir)
    # Only rank 0 logs: one record per step.
    steps = [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_torchrun_matches_one_process(workspace, tmp_path, tiny_config, single_process):
    config = tiny_config(
        workspace, tmp_path, batch_size=2, max_steps=6, log_interval=1, val_dataset=None, num_threads=1,
        optimizer=OPTIMIZER, max_grad_norm=MAX_GRAD_NORM,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "astrai_train.cli", "run"]
    train(config, torchrun)
    assert_same_run(single_process, tmp_path / "run")


def test_resume_with_other_process_count(workspace, tmp_path, tiny_config, single_process):
    fields = dict(
        max_steps=6, log_interval=1, val_dataset=None, num_threads=1, ckpt_interval=3, keep_checkpoints=5, optimizer=OPTIMIZER,
        max_grad_norm=MAX_GRAD_NORM,
    )
    train(tiny_config(workspace, tmp_path, batch_size=2, nprocs=2, **fields))
    out_dir = tmp_path / "run"
    # Pretend the 2-process run died after step 3, then resume it with one process.
    shutil.rmtree(out_dir / "final")
    shutil.rmtree(out_dir / "step-6")
    kept = [line for line in (out_dir / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 3]
    (out_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    result = train(tiny_config(workspace, tmp_path, batch_size=4, nprocs=1, **fields))
    assert "resuming from" in result.stderr
    assert_same_run(single_process, out_dir)


# Each torchrun rank runs this script. It records which rank writes which checkpoint directory.
RECORD_WRITES = """
import os, sys
import astrai_train.trainer as trainer
from astrai_train.cli import main

save_checkpoint = trainer.save_checkpoint

def recording_save_checkpoint(path, *args, **kwargs):
    with open(os.path.join(sys.argv[1], "writes-rank" + os.environ["RANK"]), "a") as log:
        log.write(os.path.basename(path) + "\\n")
    return save_checkpoint(path, *args, **kwargs)

trainer.save_checkpoint = recording_save_checkpoint
main(["run", sys.argv[2]])
"""

FSDP_FIELDS = dict(
    max_steps=6,
    log_interval=1,
    num_threads=1,
    ckpt_interval=3,
    keep_checkpoints=5,
    optimizer=OPTIMIZER,
    max_grad_norm=MAX_GRAD_NORM,
)


@pytest.fixture(scope="module")
def fsdp_run(workspace, tmp_path_factory, tiny_config):
    """A 2-process FSDP run under torchrun, with evaluation, and the checkpoint writes of each rank."""
    directory = tmp_path_factory.mktemp("fsdp")
    script = directory / "record_writes.py"
    script.write_text(RECORD_WRITES)
    config = tiny_config(workspace, directory, batch_size=2, data_parallel="fsdp", **FSDP_FIELDS)
    config_path = directory / "config.json"
    config.save(config_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, str(script), str(directory), str(config_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "sharded the model over 2 processes with FSDP" in result.stderr
    return directory


def test_fsdp_matches_one_process(fsdp_run, single_process):
    out_dir = fsdp_run / "run"
    assert_same_run(single_process, out_dir)
    # The checkpoints have the single-process format.
    for name in ("optimizer.safetensors", "model.safetensors"):
        expected = load_file(single_process / "step-6" / name)
        assert sorted(load_file(out_dir / "step-6" / name)) == sorted(expected), name


def test_fsdp_writes_on_rank_zero_only(fsdp_run):
    assert (fsdp_run / "writes-rank0").read_text().split() == ["step-3", "step-6", "final"]
    assert not (fsdp_run / "writes-rank1").exists()
    out_dir = fsdp_run / "run"
    written = sorted(path.name for path in out_dir.iterdir())
    assert written == ["final", "metrics.jsonl", "metrics.svg", "step-3", "step-6"]
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [1, 2, 3, 4, 5, 6]
    assert [record["step"] for record in records if "val_loss" in record] == [0, 6]


@pytest.mark.parametrize(
    "resumed_with",
    [dict(batch_size=4, nprocs=1), dict(batch_size=2, nprocs=2, data_parallel="ddp")],
    ids=["one-process", "ddp"],
)
def test_fsdp_checkpoint_resumes_without_fsdp(
    fsdp_run, single_process, tmp_path, workspace, tiny_config, resumed_with
):
    shutil.copytree(fsdp_run / "run", tmp_path / "run")
    rewind(tmp_path / "run", 3)
    # Both runs keep the validation set. Under DDP rank 0 evaluates alone at the end, without the other rank.
    result = train(tiny_config(workspace, tmp_path, **{**FSDP_FIELDS, **resumed_with}))
    assert "resuming from" in result.stderr
    assert_same_run(single_process, tmp_path / "run")


def test_fsdp_resumes_single_process_checkpoint(single_process, tmp_path, workspace, tiny_config):
    shutil.copytree(single_process, tmp_path / "run")
    rewind(tmp_path / "run", 3)
    # The same global batch of 4 from 2 processes x 2 micro-batches, with recomputed activations.
    config = tiny_config(
        workspace, tmp_path, batch_size=1, accumulation_steps=2, gradient_checkpointing=True, nprocs=2,
        data_parallel="fsdp", val_dataset=None, **FSDP_FIELDS,
    )
    result = train(config)
    assert "resuming from" in result.stderr
    assert "sharded the model over 2 processes with FSDP" in result.stderr
    assert_same_run(single_process, tmp_path / "run")


@pytest.mark.parametrize("strategy", ["dpo", "grpo"])
def test_fsdp_rejects_strategies_that_copy_the_model(workspace, tmp_path, tiny_config, strategy):
    config = tiny_config(
        workspace, tmp_path, strategy=strategy, data_parallel="fsdp", val_dataset=None, nprocs=2
    )
    with pytest.raises(ValueError, match=f"strategy '{strategy}' does not support data_parallel='fsdp'"):
        TrainContextBuilder(config)
    config.nprocs = 1  # one process ignores data_parallel
    assert not TrainContextBuilder(config).fully_sharded


def test_cli_rejects_fsdp_dpo_before_starting_processes(workspace, tmp_path, tiny_config):
    from astrai_train.cli import main
    from click.testing import CliRunner

    config = tiny_config(
        workspace, tmp_path, strategy="dpo", data_parallel="fsdp", val_dataset=None, nprocs=2
    )
    path = tmp_path / "run.json"
    config.save(path)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1
    assert f"{path}: strategy 'dpo' does not support data_parallel='fsdp'" in result.output
    assert "starting 2 training processes" not in result.output


def test_cpu_threads_are_shared_out(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads_per_process(2) == 4
    assert cpu_threads_per_process(3) == 2
    assert cpu_threads_per_process(16) == 1
