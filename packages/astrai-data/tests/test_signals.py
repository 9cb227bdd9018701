"""Stopping ``astrai-data pack`` with SIGTERM leaves neither an output nor temporary files."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astrai_core import Tokenizer

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "pretrain"


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"test corpus not found at {CORPUS}")
def test_sigterm_during_pack_cleans_up(tmp_path):
    texts = [path.read_text(encoding="utf-8") for path in sorted(CORPUS.glob("*/*.txt"))[::40]]
    Tokenizer.train(texts, tmp_path / "tok.model", vocab_size=2000)
    output = tmp_path / "out.arrow"
    process = subprocess.Popen(
        [sys.executable, "-m", "astrai_data.cli", "pack", str(CORPUS), str(output), "--tokenizer", str(tmp_path / "tok.model")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".*.tmp")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.skip("pack finished before it could be interrupted")
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, stderr
    assert "Traceback" not in stderr
    assert not output.exists()
    assert list(tmp_path.glob(".*")) == []
