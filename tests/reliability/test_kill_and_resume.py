"""Kill a training process at a random point (SIGKILL, SIGTERM); ``--resume`` ends exactly where an
uninterrupted run ends (timings aside)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pclab
from pclab.io import read_json
from pclab.train import train

SETTINGS = ["epochs=4", "checkpoint_every=2", "telemetry=true", "telemetry_every=3"]
SRC = str(Path(pclab.__file__).resolve().parents[1])


def _command(out: Path, resume: bool) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "pclab", "train", "--preset", "tiny", *sets, "--out", str(out), "-q", *(["--resume"] if resume else [])]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def _start_and_kill(out: Path, resume: bool, sig: int, rng: random.Random) -> int:
    """Start training; once a checkpoint exists, wait a random moment and send ``sig``."""
    process = subprocess.Popen(_command(out, resume), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    checkpoint = out / "checkpoint.pt"
    first = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != first:
            break
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.0))
    process.send_signal(sig)
    process.communicate(timeout=60)
    return process.returncode


def _comparable(results: dict) -> str:
    strip = lambda d: {k: v for k, v in d.items() if "seconds" not in k}  # noqa: E731
    return json.dumps({**strip(results), "history": [strip(h) for h in results["history"]]}, sort_keys=True)


@pytest.mark.slow
def test_killed_at_random_points_then_resumed_equals_uninterrupted(tmp_path, tiny):
    rng = random.Random(int(os.environ.get("PCLAB_KILL_SEED", time.time_ns() % 10_000)))
    reference = train(tiny(*SETTINGS), tmp_path / "reference", progress=False)
    out = tmp_path / "run"
    killed = _start_and_kill(out, resume=False, sig=signal.SIGKILL, rng=rng)
    terminated = _start_and_kill(out, resume=True, sig=signal.SIGTERM, rng=rng)
    assert killed in (-signal.SIGKILL, 0)  # 0: it finished before the signal arrived (a very slow machine)
    assert terminated in (130, 0, -signal.SIGTERM)  # -SIGTERM: the signal came before pclab's handler was set
    train(tiny(*SETTINGS), out, resume=True, progress=False)  # the last leg in this process
    assert _comparable(read_json(out / "results.json")) == _comparable(reference)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not list(out.rglob(".*.tmp"))
