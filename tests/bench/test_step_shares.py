"""bench/step_shares.py on the tiny presets: every kind of trial gets a step cost with sane shares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "step_shares.py"


def _module():
    spec = importlib.util.spec_from_file_location("step_shares", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("study, expected", [("dynamics", {"generative/pc", "discriminative/bp", "hybrid/bp-through-inference"}),
                                             ("clarity", {"wide pc", "narrow bp"})])
def test_every_kind_is_timed(study: str, expected: set[str]) -> None:
    steps = _module().shares(study, "tiny")
    assert expected <= set(steps)
    assert not any("untrained" in name for name in steps)  # an untrained model takes no training step
    for name, r in steps.items():
        assert r["step"] > 0 and r["step_small"] > 0, name
        assert 0 <= r["fixed"] <= r["step"] and 0 <= r["fixed_share"] <= 1, name
        assert r["products"] > 0, name  # every tiny model multiplies matrices
