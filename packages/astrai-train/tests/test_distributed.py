"""Data-parallel training on CPU with the gloo backend, started by our spawn helper and by torchrun."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from astrai_core import load_checkpoint


# Adam turns gradient differences of float rounding (the ranks sum in another order) into update
# differences of up to lr for near-zero gradients, so these runs use a small rate and a larger eps.
OPTIMIZER = {"lr": 1e-3, "eps": 1e-6}


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
    config = tiny_config(workspace, directory, batch_size=4, max_steps=6, log_interval=1, val_dataset=None, num_threads=1, optimizer=OPTIMIZER)
    train(config)
    return directory / "run"


def assert_same_run(a, b):
    assert losses(a).keys() == losses(b).keys()
    for step, loss in losses(a).items():
        assert losses(b)[step] == pytest.approx(loss, abs=1e-5), step
    first = load_checkpoint(a / "final").model.state_dict()
    second = load_checkpoint(b / "final").model.state_dict()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-5, rtol=1e-4)


def test_two_processes_match_one(workspace, tmp_path, tiny_config, single_process):
    config = tiny_config(
        workspace, tmp_path, batch_size=2, nprocs=2, max_steps=6, log_interval=1, val_dataset=None, num_threads=1,
        optimizer=OPTIMIZER,
    )
    result = train(config)
    assert "starting 2 training processes" in result.stderr
    out_dir = tmp_path / "run"
    assert_same_run(single_process, out_dir)
    # Only rank 0 logs: one record per step.
    steps = [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_torchrun_matches_one_process(workspace, tmp_path, tiny_config, single_process):
    config = tiny_config(workspace, tmp_path, batch_size=2, max_steps=6, log_interval=1, val_dataset=None, num_threads=1, optimizer=OPTIMIZER)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "astrai_train.cli", "run"]
    train(config, torchrun)
    assert_same_run(single_process, tmp_path / "run")


def test_resume_with_other_process_count(workspace, tmp_path, tiny_config, single_process):
    fields = dict(
        max_steps=6, log_interval=1, val_dataset=None, num_threads=1, ckpt_interval=3, keep_checkpoints=5, optimizer=OPTIMIZER
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
