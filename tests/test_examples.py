"""Every script in examples/ runs with ``--quick`` and prints the numbers it promises.

Each runs as a user would run it (a subprocess of this Python), so a broken import, a changed
public name or a story that no longer holds (energy that does not fall, a fix that no longer
fixes) shows up here. Each script is a fresh interpreter (about 3 s of imports) plus a few seconds of
training: some 35 s in all on 2 busy cores, hence ``slow`` (about 20 s under ``-n 2``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow

NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def run(script: str, *args: str, timeout: float = 120) -> str:
    """stdout of ``python examples/<script> --quick <args>``; fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", *args], capture_output=True,
                            text=True, timeout=timeout, env=env, check=False)
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def row(output: str, label: str) -> list[float]:
    """The numbers on the line that starts with ``label`` (after the label itself)."""
    match = re.search(rf"^{re.escape(label)}\s(.*)$", output, re.MULTILINE)
    assert match, f"no line starting with {label!r} in\n{output}"
    return [float(v) for v in re.findall(NUMBER, match.group(1))]


def test_custom_graph():
    out = run("custom_graph.py")
    accuracy = float(re.search(rf"feed-forward test accuracy ({NUMBER}) %", out).group(1))
    assert 50 < accuracy <= 100
    for node in ("c", "h", "y"):
        assert len(row(out, node)) == 3
    before, sgd, torch_opt = row(out, "total")
    assert 0 < sgd < before and 0 < torch_opt < before  # both optimisers descend the energy
    assert row(out, "c")[0] == 0.0 and row(out, "h")[0] == 0.0  # feed-forward start: error only at the label


def test_three_ways(tmp_path):
    figure = tmp_path / "energy.png"
    out = run("three_ways.py", "--out", str(figure))
    for rule in ("pc", "bp-through-inference", "bp"):
        e0, eT, e4T, *accuracies = row(out, rule)
        assert e4T <= eT <= e0, (rule, e0, eT, e4T)  # latent SGD at this step size only descends
        assert len(accuracies) == 3 and all(0 <= a <= 100 for a in accuracies)
        assert accuracies[0] > 50  # trained: the feed-forward read-out is far above chance
    assert figure.stat().st_size > 0


def test_deep_fixes():
    out = run("deep_fixes.py")
    accuracy = {v: float(re.search(rf"test accuracy {re.escape(v)}\s+({NUMBER}) %", out).group(1))
                for v in ("pc", "spiking+fu", "decaying+fu", "bp")}
    assert all(0 <= a <= 100 for a in accuracy.values())
    assert min(accuracy["spiking+fu"], accuracy["decaying+fu"]) > accuracy["pc"] + 10  # the fixes fix
    for variant in ("pc", "spiking+fu", "decaying+fu"):
        # feed-forward start, label clamped: the error front walks down one layer per step
        assert row(out, variant) == [7, 6, 5, 4, 3, 2, 1, 0]


def test_hybrid_tradeoff(tmp_path):
    figure = tmp_path / "front.png"
    out = run("hybrid_tradeoff.py", "--out", str(figure))
    rows = [row(out, f"{lam:>5.2f}") for lam in (0.1, 0.5, 0.9)]
    for *_, accuracy, mse in rows:
        assert 0 <= accuracy <= 100 and mse > 0
    # more weight on the label: better accuracy, worse reconstruction
    assert rows[-1][-2] > rows[0][-2] and rows[-1][-1] > rows[0][-1]
    assert figure.stat().st_size > 0


def test_sweep(tmp_path):
    out = run("sweep.py", "--dir", str(tmp_path / "sweep"))
    assert len(list((tmp_path / "sweep" / "trials").glob("*.json"))) == 4
    first, again = (float(v) for v in re.search(rf"({NUMBER}) s; the same sweep again: ({NUMBER}) s", out).groups())
    assert again < first  # the second call reads the records back
    for rule in ("pc", "bp"):
        accuracies = row(out, rule)[-2:]  # the pivot table's line: one accuracy per width
        assert all(0 <= a <= 100 for a in accuracies)
    assert "failed" not in out
