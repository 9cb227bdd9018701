"""Stopping and resuming real training processes: SIGTERM, Ctrl-C (SIGINT) and kill -9.

Each case runs ``astrai-train run`` in a subprocess, stops it mid-run, runs the same command
again, and checks that every step's loss equals the uninterrupted run's, bit for bit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

MAX_STEPS = 300


def write_config(tiny_config, workspace, directory, **overrides):
    fields = dict(max_steps=MAX_STEPS, log_interval=1, ckpt_interval=25, eval_batches=1, num_threads=1)
    fields.update(overrides)
    config = tiny_config(workspace, directory, **fields)
    path = directory / "run.json"
    config.save(path)
    return path


def start(config_path):
    return subprocess.Popen(
        [sys.executable, "-m", "astrai_train.cli", "run", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def losses_by_step(out_dir):
    """The last logged loss of each step (a resumed run logs some steps twice)."""
    losses = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def wait_for_step(out_dir, process, step, timeout=60.0):
    metrics = out_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training exited with {process.returncode} before step {step}: {process.stderr.read()}")
        if metrics.exists() and sum(1 for line in metrics.read_text().splitlines() if '"loss"' in line) >= step:
            return
        time.sleep(0.005)
    pytest.fail(f"training did not reach step {step} within {timeout} s")


@pytest.fixture(scope="module")
def reference(workspace, tmp_path_factory, tiny_config):
    directory = tmp_path_factory.mktemp("reference")
    path = write_config(tiny_config, workspace, directory)
    result = subprocess.run([sys.executable, "-m", "astrai_train.cli", "run", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return losses_by_step(directory / "run")


@pytest.mark.parametrize(
    ("how", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130), ("SIGKILL", -signal.SIGKILL)]
)
def test_resume_after_stop_repeats_losses(workspace, tmp_path, tiny_config, reference, how, exit_code):
    path = write_config(tiny_config, workspace, tmp_path)
    out_dir = tmp_path / "run"
    process = start(path)
    wait_for_step(out_dir, process, 40)
    os.kill(process.pid, getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    if how != "SIGKILL":
        assert f"stopped by {how}" in stderr
        assert "run the same command again to resume" in stderr
    interrupted = losses_by_step(out_dir)
    assert len(interrupted) < MAX_STEPS

    result = subprocess.run([sys.executable, "-m", "astrai_train.cli", "run", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    assert losses_by_step(out_dir) == reference


def test_graceful_stop_saves_current_step(workspace, tmp_path, tiny_config):
    path = write_config(tiny_config, workspace, tmp_path, ckpt_interval=0)
    out_dir = tmp_path / "run"
    process = start(path)
    wait_for_step(out_dir, process, 30)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    saved = [p.name for p in out_dir.glob("step-*")]
    assert len(saved) == 1
    logged = max(losses_by_step(out_dir))
    assert saved[0] == f"step-{logged}"
    assert not list(out_dir.glob(".*tmp"))
