"""SIGTERM to ``pclab train`` is Ctrl-C: exit 130, one line on stderr, the checkpoint kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pclab
from pclab.train import load_run

SRC = str(Path(pclab.__file__).resolve().parents[1])


def test_sigterm_to_train_exits_130_with_one_line_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pclab", "train", "--preset", "tiny", "--set", "epochs=10000", "--set", "checkpoint_every=1",
               "--out", str(out), "-q"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "--resume" in lines[0], err
    load_run(out)  # the checkpoint is whole
