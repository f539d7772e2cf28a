"""A checkpoint is data, never code; a damaged or ill-fitting one is one line and exit 5.

The hostile checkpoints hold an object whose ``__reduce__`` returns ``(os.system, ("touch OWNED",))``:
an unrestricted unpickler runs the command while reading the file. pclab must refuse them before
anything is built, also where the file is otherwise damaged.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import pclab.train.loop as loop
from pclab import cli
from pclab.io import UnsafeFileError, load_torch
from pclab.train import load_run, train
from pclab.train.loop import RunDirError

runner = CliRunner()


def pclab(*args):
    return runner.invoke(cli.app, [str(a) for a in args], prog_name="pclab")


def one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class Payload:
    """Unpickled by an unrestricted unpickler, it runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoint(path: Path, marker: Path, kind: str) -> None:
    """Write a hostile file at ``path``: a torch zip archive (``zip``), a bare pickle (``pickle``), or
    a zip archive whose tensor record is missing (``damaged``: reported as damaged once read)."""
    state = {"format": 2, "payload": Payload(marker), "model": {"w": torch.ones(3)}}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(state))
        return
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if kind == "zip":
        path.write_bytes(buffer.getvalue())
        return
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            if "/data/" not in item.filename:  # drop the tensor's storage: the file is damaged
                target.writestr(item, source.read(item))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("run")
    train(tiny("epochs=1"), out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny():
    from pclab.train import apply_overrides, preset, validate

    return lambda *sets: validate(apply_overrides(preset("tiny"), list(sets)), "tiny")


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_the_payload_is_live_when_unpickled_without_restriction(tmp_path):
    """The control: the hostile file does run its command under ``weights_only=False``
    (what pclab did before), so the refusals below are refusals of a working attack."""
    marker = tmp_path / "OWNED"
    hostile_checkpoint(tmp_path / "checkpoint.pt", marker, "zip")
    torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["zip", "pickle", "damaged"])
def test_load_torch_refuses_code_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "OWNED"
    hostile_checkpoint(tmp_path / "checkpoint.pt", marker, kind)
    with pytest.raises(UnsafeFileError) as err:
        load_torch(tmp_path / "checkpoint.pt")
    message = str(err.value)
    assert "\n" not in message and "refused to load" in message and "expected tensors and plain data only" in message
    if kind != "pickle":  # torch's zip reader names the function; a bare pickle fails on its protocol first
        assert "system" in message
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_the_commands_that_load_a_checkpoint_refuse_a_hostile_one(tmp_path, finished_run, command):
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "OWNED"
    hostile_checkpoint(run / "checkpoint.pt", marker, "zip")
    if command == "evaluate":
        result = pclab("evaluate", run)
    else:
        result = pclab("train", "--preset", "tiny", "--set", "epochs=1", "--out", run, "--resume", "-q")
    one_line_error(result, 5, "checkpoint.pt: refused to load", "system", "pclab did not write it")
    assert not marker.exists()


def test_the_clarity_studys_model_loader_refuses_a_hostile_checkpoint(tmp_path, finished_run):
    """``pclab study clarity --run RUN`` reads RUN through :func:`load_run`."""
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "OWNED"
    hostile_checkpoint(run / "checkpoint.pt", marker, "damaged")
    with pytest.raises(RunDirError, match="refused to load"):
        load_run(run)
    assert not marker.exists()


def test_every_checkpoint_pclab_writes_loads_under_the_restriction(tmp_path, tiny, monkeypatch):
    """Mid-epoch checkpoints (RNG state, running sums, telemetry rows) and scheduled optimisers."""
    config = tiny("epochs=1", "checkpoint_every=3", "telemetry=true", "telemetry_every=2", "learning.schedule=cosine",
                  "learning.warmup_epochs=0.5", "learning.optimizer=adamw")
    seen = []
    save = loop._save_checkpoint

    def spy(out, run, history, position):
        where = save(out, run, history, position)
        state = load_torch(out / "checkpoint.pt")
        seen.append((state["position"]["batch"], state["rule"]["scheduler"] is not None))
        return where

    monkeypatch.setattr(loop, "_save_checkpoint", spy)
    train(config, tmp_path, progress=False)
    assert seen == [(3, True), (6, True), (0, True)]


# --------------------------------------------------------------------- damaged checkpoints


def edited(source: Path, target: Path, edit) -> Path:
    """A copy of the run ``source`` whose checkpoint went through ``edit(state)``."""
    run = copy_run(source, target)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, run / "checkpoint.pt")
    return run


@pytest.fixture(scope="module")
def mid_epoch_run(tmp_path_factory, tiny):
    """A run interrupted after 3 batches of epoch 1 (8 batches an epoch), as its checkpoint stands."""
    out = tmp_path_factory.mktemp("mid")
    config = tiny("checkpoint_every=3")
    original = loop._save_checkpoint

    def stop_after_first(*args):
        original(*args)
        raise KeyboardInterrupt

    loop._save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, out, progress=False)
    finally:
        loop._save_checkpoint = original
    assert torch.load(out / "checkpoint.pt", weights_only=True)["position"]["batch"] == 3
    return out


def _drop(key):
    return lambda state: state.pop(key)


def _position(**changes):
    return lambda state: state["position"].update(changes)


DAMAGES = {
    "no rule state": (_drop("rule"), "expected a checkpoint with keys"),
    "no position": (_drop("position"), "expected a checkpoint with keys"),
    "history not a list": (lambda s: s.update(history={"epoch": 1}), "expected 'history' to be a list, got dict"),
    "batch beyond the epoch": (_position(batch=99), "expected position batch (batches done in the epoch) 0 .. 7, 0 once all 2 epochs are, got 99"),
    "negative batch": (_position(batch=-1), "0 .. 7, 0 once all 2 epochs are, got -1"),
    "epoch beyond the run": (_position(epoch=7), "expected position epoch (epochs finished) 0 .. 2, got 7"),
    "epoch as text": (_position(epoch="1"), "expected position epoch (epochs finished) 0 .. 2, got '1'"),
    "history of other epochs": (_position(epoch=1), "expected 1 per-epoch records"),
    "position key missing": (lambda s: s["position"].pop("seen"), "expected a position with keys"),
    "running sums not numbers": (_position(totals={"energy": "x"}), "expected position totals mapping names to numbers"),
    "random state of another shape": (_position(rng=torch.zeros(3, dtype=torch.uint8)), "expected position rng a torch.uint8 tensor"),
    "model parameter missing": (lambda s: s["model"].pop(next(iter(s["model"]))), "expected the model state of this run's model"),
    "model parameter of another shape": (lambda s: s["model"].update({k: torch.zeros(2) for k in list(s["model"])[:1]}),
                                         "expected the model state of this run's model"),
    "optimiser state missing": (lambda s: s["rule"].update(optimizer={}), "expected the rule state of this run's rule"),
    "optimiser state of another shape": (lambda s: next(iter(s["rule"]["optimizer"]["state"].values())).update(exp_avg=torch.zeros(3)),
                                         "expected optimiser state 'exp_avg' of edge_modules."),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_checkpoint_with_missing_keys_or_a_bad_position_is_one_line_and_exit_5(tmp_path, mid_epoch_run, damage):
    edit, needle = DAMAGES[damage]
    run = edited(mid_epoch_run, tmp_path / "run", edit)
    result = pclab("train", "--preset", "tiny", "--set", "checkpoint_every=3", "--out", run, "--resume", "-q")
    message = one_line_error(result, 5, "checkpoint.pt: ", needle)
    assert "delete it to start the run over" in message


def test_the_undamaged_mid_epoch_checkpoint_resumes(tmp_path, mid_epoch_run, tiny):
    """The control of the damages above: the same copy, unedited, resumes to an uninterrupted run's results."""
    run = edited(mid_epoch_run, tmp_path / "run", lambda state: None)
    resumed = train(tiny("checkpoint_every=3"), run, resume=True, progress=False)
    reference = train(tiny("checkpoint_every=3"), tmp_path / "reference", progress=False)
    untimed = lambda history: [{k: v for k, v in h.items() if "seconds" not in k} for h in history]  # noqa: E731
    assert untimed(resumed["history"]) == untimed(reference["history"]) and math.isfinite(resumed["test_accuracy"])


def test_evaluate_reports_a_damaged_model_state_in_one_line(tmp_path, finished_run):
    run = edited(finished_run, tmp_path / "run", lambda s: s["model"].pop(next(iter(s["model"]))))
    one_line_error(pclab("evaluate", run), 5, "expected the model state of this run's model", "Missing key")
