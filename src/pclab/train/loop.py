"""The training loop and its run directory.

A run directory holds::

    config.yaml        the resolved configuration
    metrics.jsonl      one JSON record per finished epoch
    checkpoint.pt      model, learning-rule state, metrics and the position in the epoch
    telemetry/         per-step, per-node energies of sampled training batches (Parquet), if asked
    results.json       final metrics: test_accuracy, recon_mse (where the model reconstructs),
                       epoch_seconds (compilation excluded; compile_seconds apart), ...
                       (present only once the run has finished)
    failure.json       what went wrong, if the run failed or diverged (the last good checkpoint is kept)
    .pclab.lock        locked by the one process writing the run (:func:`pclab.io.own_directory`)

Every file is written atomically (temporary name, then rename). A checkpoint holds tensors and plain
data only and is loaded without running code (:func:`pclab.io.load_torch`), then checked: keys,
configuration, position, state shapes. Checkpoints are written after each
epoch and, within an epoch, every ``checkpoint_every`` batches and every ``checkpoint_seconds``.
Randomness is derived from ``(seed, epoch)`` and the RNG state is part of a mid-epoch checkpoint,
so a run resumed from any checkpoint (``resume=True``) ends with exactly the results of an
uninterrupted run (timings aside).
"""

from __future__ import annotations

import itertools
import math
import time
import traceback
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core import PCN, Inference, LearningRule, relax
from ..core.fast import compiled
from ..data import DataError, Dataset, batches, load
from ..io import RunDirError, UnsafeFileError, append_line, atomic_write, load_torch, own_directory, read_json_lines, save_torch, to_json, write_json
from .build import build_inference, build_model, build_rule, data_shape, make_batch, prepare_images, task
from .config import ConfigError, RunConfig, same_run, to_dict

CHECKPOINT_FORMAT = 2


class DivergenceError(RuntimeError):
    """Training produced a non-finite or exploding energy, loss or parameter.

    ``details`` holds the diagnosis (epoch, batch, inference step, node, layer, parameters).
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = details or {}


@dataclass
class Run:
    """Everything a training run holds: config, data, model, learning rule."""

    config: RunConfig
    train: Dataset
    test: Dataset
    model: PCN
    rule: LearningRule
    inference: Inference

    @property
    def classes(self) -> int:
        return self.train.classes


def check_finite_data(dataset: Dataset) -> None:
    """Raise :class:`~pclab.data.DataError` if ``dataset.images`` holds NaN or Inf (naming the first sample)."""
    finite = torch.isfinite(dataset.images.reshape(len(dataset), -1)).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise DataError(
            f"{dataset.name} ({dataset.split}): images must be finite, got NaN/Inf in "
            f"{int((~finite).sum())} of {len(dataset)} samples (first: index {first})"
        )


def load_data(config: RunConfig) -> tuple[Dataset, Dataset]:
    """Train and test splits of ``config.data`` (subsets taken deterministically from the seed)."""
    dc = config.data
    train = load(dc.dataset, "train", root=dc.root)
    test = load(dc.dataset, "test", root=dc.root)
    if dc.train_subset is not None and dc.train_subset < len(train):
        train = train.subset(dc.train_subset, seed=config.seed)
    if dc.test_subset is not None and dc.test_subset < len(test):
        test = test.subset(dc.test_subset, seed=config.seed)
    return train, test


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: expected 'cpu' (CUDA is not available on this machine), got {device!r}")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device: expected cuda:0 .. cuda:{torch.cuda.device_count() - 1}, got {device!r}")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: expected 'cpu' (MPS is not available on this machine), got 'mps'")


def prepare(config: RunConfig, data: tuple[Dataset, Dataset] | None = None) -> Run:
    """Load and check data, build model and rule, all seeded from ``config.seed``."""
    _check_device(config.device)
    train, test = data if data is not None else load_data(config)
    for dataset in (train, test):
        check_finite_data(dataset)
    shape, classes = data_shape(train)
    if data_shape(test) != (shape, classes):
        raise DataError(f"test split: expected images {shape} and {classes} classes like the train split, got {data_shape(test)}")
    torch.manual_seed(config.seed)
    try:
        model = build_model(config, shape, classes)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model: cannot build {config.model.kind} for {config.data.dataset} images {shape}: {err}") from None
    steps_per_epoch = math.ceil(len(train) / config.data.batch_size)
    rule = build_rule(config, model, steps_per_epoch)
    return Run(config, train, test, model, rule, build_inference(config.inference))


def _epoch_seed(config: RunConfig, epoch: int) -> int:
    return config.seed * 1_000_003 + epoch


def evaluate(run: Run, dataset: Dataset | None = None, batch_size: int = 1000) -> dict[str, float]:
    """Test metrics of the model in ``run``.

    * ``test_accuracy``: accuracy of the native read-out -- the feed-forward prediction for
      classifiers and for ``bp``-trained hybrids; the relaxed prediction (image clamped, label
      released) for hybrids trained by PC rules or by backprop through inference.
    * ``test_accuracy_feedforward`` / ``test_accuracy_relaxed`` (hybrids): both read-outs.
    * ``recon_mse`` (generative and hybrid models): mean squared pixel error of the image predicted
      from the latents inferred with only the image clamped (pixel scale of the model's input:
      [0, 1] for generative models, [-1, 1] for the hybrid family); ``recon_mse_feedforward`` for
      hybrids: from the encoder's latent without relaxation.
    """
    config, model = run.config, run.model
    dataset = dataset if dataset is not None else run.test
    kind = task(config)
    sums: dict[str, float] = {}
    count = 0
    model.eval()
    with torch.no_grad():
        for images, labels in batches(dataset, batch_size, shuffle=False):
            x = prepare_images(config, images)
            labels = labels.to(x.device)
            n = len(labels)
            count += n

            def add(key: str, value: torch.Tensor) -> None:  # called within this iteration only
                sums[key] = sums.get(key, 0.0) + float(value) * n

            if kind in ("classify", "hybrid"):
                ff = model.initial_state({"x": x}, "forward")
                add("test_accuracy_feedforward", (model.predictions(ff)["y"].argmax(1) == labels).float().mean())
                if kind == "hybrid":
                    add("recon_mse_feedforward", ((model.predictions(ff)["x"] - x) ** 2).mean())
            if kind in ("generate", "hybrid"):
                relaxed = relax(model, {"x": x}, run.inference).values
                mu = model.predictions(relaxed)
                add("recon_mse_relaxed", ((mu["x"] - x) ** 2).mean())
                if kind == "hybrid":
                    add("test_accuracy_relaxed", (mu["y"].argmax(1) == labels).float().mean())
    model.train()
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    if kind == "classify":
        metrics["test_accuracy"] = metrics.pop("test_accuracy_feedforward")
    elif kind == "generate":
        metrics["recon_mse"] = metrics["recon_mse_relaxed"]
    else:
        native = "feedforward" if config.learning.rule == "bp" else "relaxed"
        metrics["test_accuracy"] = metrics[f"test_accuracy_{native}"]
        metrics["recon_mse"] = metrics[f"recon_mse_{native}"]
    return metrics


# ---------------------------------------------------------------------------------- divergence


def _bad(value: float, limit: float) -> bool:
    return not math.isfinite(value) or abs(value) > limit


def _parameters_ok(parameters: Sequence[torch.Tensor], limit: float) -> bool:
    """The largest |parameter| is finite and at most ``limit``. Checked on every batch, so by one
    foreach L2 norm per parameter (at least its largest |entry|; non-finite if an entry is) and one
    synchronisation, cheaper than the exact maxima, which are taken only when a norm is not below
    ``limit``."""
    parameters = [p for p in parameters if p.numel()]
    if not parameters:
        return True
    with torch.no_grad():
        if not _bad(float(torch.stack(torch._foreach_norm(parameters)).max()), limit):
            return True
        peak = float(torch.stack([p.abs().max() for p in parameters]).max())
    return not _bad(peak, limit)


def diagnose(run: Run, batch: dict[str, torch.Tensor] | None, limit: float,
             before: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Where a divergence shows.

    ``parameters``: names of parameters that are now non-finite or above ``limit``. With the
    ``batch`` and the parameters ``before`` its learning step, the batch is relaxed again and the
    first inference ``step`` and ``node`` (with its ``layer``) whose energy is non-finite or above
    ``limit`` are reported; if there is none, the relaxation was sound and the weight update
    itself diverged (``cause: "weight update"``).
    """
    found: dict[str, Any] = {
        "parameters": [n for n, p in run.model.named_parameters() if p.numel() and _bad(float(p.detach().abs().max()), limit)]
    }
    if batch is None or run.config.learning.rule == "bp":
        return found
    if before is not None:
        with torch.no_grad():
            for parameter, saved in zip(run.model.parameters(), before):
                parameter.copy_(saved)
    clamp = {k: v for k, v in batch.items() if k in run.model.nodes and v.dtype.is_floating_point}
    try:
        trajectory = relax(run.model, clamp, run.inference, record=True).trajectory
    except Exception as err:  # a broken model may fail anywhere; the diagnosis must not
        found["relaxation_error"] = f"{type(err).__name__}: {err}"
        return found
    assert trajectory is not None
    for step, energies in enumerate(trajectory.energy):
        for node, energy in zip(trajectory.nodes, energies):
            if _bad(energy, limit):
                found.update(cause="inference", step=step, node=node, layer=run.model.layer_index.get(node), energy=energy)
                return found
    if before is not None:
        found["cause"] = "weight update"
    return found


def _diverged(run: Run, where: dict[str, Any], bad_metrics: dict[str, float], batch: dict[str, torch.Tensor] | None,
              out: Path | None, last_checkpoint: dict[str, Any] | None, before: list[torch.Tensor] | None = None) -> DivergenceError:
    """Diagnose, write ``failure.json`` and return the error to raise."""
    details = {**where, "metrics": bad_metrics, **diagnose(run, batch, run.config.max_energy, before), "last_checkpoint": last_checkpoint}
    parts = [f"training diverged at epoch {where['epoch']}" + (f", batch {where['batch']}" if where.get("batch") is not None else "")]
    if bad_metrics:
        parts.append("non-finite or exploding " + ", ".join(f"{k} = {v:.4g}" for k, v in bad_metrics.items()))
    if details.get("cause") == "inference":
        parts.append(f"relaxation blew up first at inference step {details['step']} in node {details['node']!r} "
                     f"(layer {details['layer']}), energy {details['energy']:.4g}")
    elif details.get("cause") == "weight update":
        parts.append("the relaxation was finite; the weight update diverged")
    if details["parameters"]:
        shown = details["parameters"][:3]
        parts.append(f"parameters {shown}{' ...' if len(details['parameters']) > 3 else ''} hold NaN/Inf or exceed {run.config.max_energy:g}")
    if last_checkpoint is None:
        kept = "No checkpoint was written before it"
    elif last_checkpoint["batch"] is None:
        kept = f"The last good checkpoint (end of epoch {last_checkpoint['epoch']}) is kept"
    else:
        kept = f"The last good checkpoint (epoch {last_checkpoint['epoch']}, after {last_checkpoint['batch']} batches) is kept"
    advice = "lower inference.lr (the latent step size) or learning.lr" if details.get("cause") == "inference" else "lower learning.lr"
    message = "; ".join(parts) + f". {kept}; {advice}."
    details["message"] = message
    if out is not None:
        write_json(out / "failure.json", {"kind": "divergence", **details})
    return DivergenceError(message, details)


# ---------------------------------------------------------------------------------- telemetry


def _telemetry_rows(run: Run, batch: dict[str, torch.Tensor], epoch: int, index: int) -> list[dict[str, Any]]:
    clamp = {k: v for k, v in batch.items() if k in run.model.nodes and v.dtype.is_floating_point}
    trajectory = relax(run.model, clamp, run.inference, record=True).trajectory
    assert trajectory is not None
    rows = []
    for step, (energies, norms) in enumerate(zip(trajectory.energy, trajectory.error_norm)):
        for node, energy, norm in zip(trajectory.nodes, energies, norms):
            rows.append({"epoch": epoch, "batch": index, "step": step, "node": node, "energy": energy, "error_norm": norm})
    return rows


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    atomic_write(path, lambda h: pq.write_table(table, h), binary=True)


# ---------------------------------------------------------------------------------- checkpoints


@dataclass
class _Position:
    """Where training stands: ``epoch`` (0-based) and the next ``batch`` in it, with the epoch's
    running sums so far."""

    epoch: int = 0
    batch: int = 0
    totals: dict[str, float] | None = None
    seen: int = 0
    seconds: float = 0.0
    telemetry: list[dict[str, Any]] | None = None
    rng: torch.Tensor | None = None


def _save_checkpoint(out: Path, run: Run, history: list[dict[str, Any]], position: _Position) -> dict[str, Any]:
    save_torch(out / "checkpoint.pt", {
        "format": CHECKPOINT_FORMAT,
        "config": to_dict(run.config),
        "model": run.model.state_dict(),
        "rule": run.rule.state_dict(),
        "history": history,
        "position": vars(position),
    })
    return _where(position)


def _where(position: _Position) -> dict[str, Any]:
    """A checkpoint's place: ``{"epoch": e, "batch": b}`` = after ``b`` batches of epoch ``e``
    (1-based), or ``{"epoch": e, "batch": None}`` = at the end of epoch ``e``."""
    if position.batch:
        return {"epoch": position.epoch + 1, "batch": position.batch}
    return {"epoch": position.epoch, "batch": None}


CHECKPOINT_KEYS = {"format", "config", "model", "rule", "history", "position"}


def read_checkpoint(path: Path, config: RunConfig, per_epoch: int | None = None) -> dict[str, Any]:
    """The checkpoint at ``path``, checked: data only (never code, :func:`~pclab.io.load_torch`),
    pclab's format with every key, written by this configuration and, given the number of batches
    ``per_epoch``, at a position this run can reach (see :func:`_check_position`)."""
    try:
        state = load_torch(path, map_location=config.device)
    except UnsafeFileError as err:
        raise RunDirError(f"{err}; pclab did not write it: delete it or restore your own") from None
    except ValueError as err:
        raise RunDirError(f"{err}. Delete it to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: expected a pclab checkpoint (format {CHECKPOINT_FORMAT}), got another file")
    if set(state) != CHECKPOINT_KEYS:
        raise RunDirError(f"{path}: expected a checkpoint with keys {sorted(CHECKPOINT_KEYS)}, got {_brief(sorted(map(str, state)))}; "
                          f"it is damaged, delete it to start the run over")
    kinds = {"config": dict, "model": dict, "rule": dict, "history": list, "position": dict}
    for key, kind in kinds.items():
        if not isinstance(state[key], kind):
            raise RunDirError(f"{path}: expected {key!r} to be a {kind.__name__}, got {type(state[key]).__name__}; "
                              f"it is damaged, delete it to start the run over")
    if not same_run(state["config"], to_dict(config)):
        raise RunDirError(f"{path}: written by a different configuration; use a new --out, or the config in "
                          f"{path.parent / 'config.yaml'} to resume")
    if per_epoch is not None:
        problem = _check_position(state["position"], state["history"], config.epochs, per_epoch)
        if problem:
            raise RunDirError(f"{path}: {problem}; it is damaged, delete it to start the run over")
    return state


def _check_position(position: dict[str, Any], history: list[Any], epochs: int, per_epoch: int) -> str | None:
    """What is wrong with a checkpoint's position (expected ... got ...), or None.

    A position is after ``batch`` batches (0 .. per_epoch - 1) of the 0-based ``epoch`` (0 .. epochs;
    ``epochs``: finished), with one ``history`` record per finished epoch; mid-epoch it also holds
    the epoch's running sums, the samples seen, the seconds spent, the telemetry rows and the CPU
    random state.
    """
    keys = {f.name for f in fields(_Position)}
    if set(position) != keys:
        return f"expected a position with keys {sorted(keys)}, got {_brief(sorted(map(str, position)))}"
    count = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    real = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    epoch, batch = position["epoch"], position["batch"]
    if not count(epoch) or not 0 <= epoch <= epochs:
        return f"expected position epoch (epochs finished) 0 .. {epochs}, got {_brief(epoch)}"
    if not count(batch) or not 0 <= batch < per_epoch or (batch and epoch == epochs):
        return f"expected position batch (batches done in the epoch) 0 .. {per_epoch - 1}, 0 once all {epochs} epochs are, got {_brief(batch)}"
    if len(history) != epoch or not all(isinstance(h, dict) for h in history):
        return f"expected {epoch} per-epoch records (one per finished epoch), got {len(history)} entries"
    if not batch:
        return None
    totals, rng, telemetry = position["totals"], position["rng"], position["telemetry"]
    if not isinstance(totals, dict) or not all(isinstance(k, str) and real(v) for k, v in totals.items()):
        return f"expected position totals mapping names to numbers, got {_brief(totals)}"
    if not count(position["seen"]) or position["seen"] < 0 or not real(position["seconds"]):
        return f"expected position seen >= 0 (an integer) and seconds (a float), got {_brief(position['seen'])} and {_brief(position['seconds'])}"
    if telemetry is not None and not (isinstance(telemetry, list) and all(isinstance(r, dict) for r in telemetry)):
        return f"expected position telemetry rows (a list of records), got {type(telemetry).__name__}"
    reference = torch.get_rng_state()
    if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == reference.dtype and rng.shape == reference.shape):
        got = f"{rng.dtype} of shape {tuple(rng.shape)}" if isinstance(rng, torch.Tensor) else type(rng).__name__
        return f"expected position rng a {reference.dtype} tensor of shape {tuple(reference.shape)}, got {got}"
    return None


def _load_states(path: Path, run: Run, state: dict[str, Any]) -> None:
    """Load a checked checkpoint's model and learning-rule states into ``run``; a state that does not
    fit (missing or unexpected parameters, other shapes) is a :class:`RunDirError`."""
    for name, target in (("model", run.model), ("rule", run.rule)):
        try:
            target.load_state_dict(state[name])
        except Exception as err:  # torch and the rules raise several kinds, with multi-line messages
            raise RunDirError(f"{path}: expected the {name} state of this run's {name}, got one that does not fit "
                              f"({type(err).__name__}: {_brief(err, 300)}); it is damaged, delete it to start the run over") from None
    names = {id(p): n for n, p in run.model.named_parameters()}
    for parameter, values in run.rule.optimizer.state.items():  # loaded as given: a shape is checked only at a step
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != parameter.shape:
                raise RunDirError(f"{path}: expected optimiser state {key!r} of {names.get(id(parameter), 'a parameter')} of shape "
                                  f"{tuple(parameter.shape)}, got {tuple(value.shape)}; it is damaged, delete it to start the run over")


def _brief(value: Any, limit: int = 80) -> str:
    """``str(value)`` on one line, cut to ``limit`` characters (a file's content may be anything)."""
    text = " ".join((repr(value) if isinstance(value, str) else str(value)).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# ---------------------------------------------------------------------------------- the loop


def train(
    config: RunConfig,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data: tuple[Dataset, Dataset] | None = None,
) -> dict[str, Any]:
    """Train ``config`` for ``config.epochs`` epochs; return the final results.

    Args:
        config: the run's configuration.
        out: run directory (``None``: keep nothing on disk).
        resume: continue from ``out/checkpoint.pt`` if it exists (a finished run returns its results).
        progress: show a progress bar.
        data: ``(train, test)`` datasets to use instead of loading ``config.data``.

    Raises:
        DivergenceError: a non-finite or exploding energy, loss or parameter (``failure.json`` says
            where; the last good checkpoint is kept).
        RunDirError: ``out`` is not a directory, another pclab process writes it (each run
            directory has one writer: a lock held for the whole run), or ``resume`` with a damaged
            checkpoint or one of another configuration.
    """
    out_path = Path(out) if out is not None else None
    with own_directory(out_path, ("telemetry",)) if out_path is not None else nullcontext():
        run = prepare(config, data)
        try:
            return _train(run, out_path, resume, progress)
        except (DivergenceError, KeyboardInterrupt):
            raise
        except Exception as err:
            if out_path is not None:
                write_json(out_path / "failure.json", {
                    "kind": "error", "message": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                })
            raise


def _start(run: Run, out: Path | None, resume: bool) -> tuple[list[dict[str, Any]], _Position, dict[str, Any] | None]:
    """Set up the run directory; return history, position and the checkpoint resumed from."""
    if out is None:
        return [], _Position(), None
    checkpoint = out / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    position, last = _Position(), None
    if resume and checkpoint.exists():
        state = read_checkpoint(checkpoint, run.config, math.ceil(len(run.train) / run.config.data.batch_size))
        _load_states(checkpoint, run, state)
        history = state["history"]
        position = _Position(**state["position"])
        last = _where(position)
    else:
        for stale in ("metrics.jsonl", "results.json", "checkpoint.pt"):
            (out / stale).unlink(missing_ok=True)
        if (out / "telemetry").is_dir():
            for part in (out / "telemetry").glob("epoch_*.parquet"):
                if part.stem[len("epoch_"):].isdigit():  # pclab's own names only
                    part.unlink()
    # the checkpoint is the truth: a crash between it and the metrics line loses no record
    lines = "".join(_json(h) + "\n" for h in history)
    atomic_write(out / "metrics.jsonl", lambda h: h.write(lines))
    atomic_write(out / "config.yaml", lambda h: yaml.safe_dump(to_dict(run.config), h, sort_keys=False))
    (out / "failure.json").unlink(missing_ok=True)
    return history, position, last


PROGRESS_ACCURACY_EVERY = 10
"""The progress bar's running training accuracy is the feed-forward accuracy of every 10th batch:
on every batch it would add a noticeable part of a compiled PC epoch's time."""


def _batch_accuracy(run: Run, batch: dict[str, torch.Tensor]) -> float | None:
    """Feed-forward accuracy on a training batch (for the progress bar only)."""
    if task(run.config) == "generate" or "y" not in batch:
        return None
    with torch.no_grad():
        predicted = run.model.predictions(run.model.initial_state({"x": batch["x"]}, "forward"))["y"].argmax(1)
    target = batch["y"] if batch["y"].ndim == 1 else batch["y"].argmax(1)
    return float((predicted == target).float().mean())


def _train(run: Run, out: Path | None, resume: bool, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    config = run.config
    history, position, last_checkpoint = _start(run, out, resume)
    per_epoch = math.ceil(len(run.train) / config.data.batch_size)
    parameters = list(run.model.parameters())
    before = [p.detach().clone() for p in parameters]
    for epoch in range(position.epoch, config.epochs):
        resuming = position.epoch == epoch and position.batch > 0
        first = position.batch if resuming else 0
        totals = dict(position.totals or {}) if resuming else {}
        telemetry = list(position.telemetry or []) if resuming else []
        seen = position.seen if resuming else 0
        seconds_before = position.seconds if resuming else 0.0
        generator = torch.Generator().manual_seed(_epoch_seed(config, epoch))
        torch.manual_seed(_epoch_seed(config, epoch))
        epoch_batches = itertools.islice(batches(run.train, config.data.batch_size, shuffle=True, generator=generator), first, None)
        if resuming and position.rng is not None:
            torch.set_rng_state(position.rng.cpu())
        started = last_saved = time.perf_counter()
        compiled_before = compiled.total_compile_seconds()
        correct = counted = 0.0
        bar = tqdm(total=per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        for index, (images, labels) in enumerate(epoch_batches, start=first):
            batch = make_batch(config, images, labels, run.classes)
            if config.telemetry and index % config.telemetry_every == 0 and config.learning.rule != "bp":
                telemetry.extend(_telemetry_rows(run, batch, epoch, index))
            if progress and index % PROGRESS_ACCURACY_EVERY == 0:
                accuracy = _batch_accuracy(run, batch)
                if accuracy is not None:
                    correct, counted = correct + accuracy * len(labels), counted + len(labels)
            with torch.no_grad():  # the parameters before this step, for a diagnosis should it diverge
                torch._foreach_copy_(before, parameters)
            metrics = run.rule.step(batch)
            bad = {k: v for k, v in metrics.items() if _bad(v, config.max_energy)}
            if bad or not _parameters_ok(parameters, config.max_energy):
                raise _diverged(run, {"epoch": epoch + 1, "batch": index}, bad, batch, out, last_checkpoint, before)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(labels)
            seen += len(labels)
            bar.update(1)
            shown = {k: f"{v / seen:.4g}" for k, v in totals.items()}
            if counted:
                shown["acc"] = f"{correct / counted:.3f}"
            bar.set_postfix(shown, refresh=False)  # drawn at tqdm's own pace (a redraw per batch costs time)
            now = time.perf_counter()
            due = (config.checkpoint_every and (index + 1) % config.checkpoint_every == 0) or (
                config.checkpoint_seconds is not None and now - last_saved >= config.checkpoint_seconds)
            if out is not None and due and index + 1 < per_epoch:
                here = _Position(epoch, index + 1, totals, seen, seconds_before + now - started, telemetry, torch.get_rng_state())
                last_checkpoint = _save_checkpoint(out, run, history, here)
                last_saved = time.perf_counter()
        bar.close()
        # compilation (first batch under inference.compile) is reported apart, not as training time
        compiling = compiled.total_compile_seconds() - compiled_before
        seconds = seconds_before + time.perf_counter() - started - compiling
        record = {"epoch": epoch + 1, "epoch_seconds": seconds, **{f"train_{k}": v / max(seen, 1) for k, v in totals.items()}}
        if config.inference.compile:
            record["compile_seconds"] = compiling
        record.update(evaluate(run))
        bad = {k: v for k, v in record.items() if isinstance(v, float) and _bad(v, config.max_energy)}
        if bad or not _parameters_ok(parameters, config.max_energy):
            raise _diverged(run, {"epoch": epoch + 1, "batch": None}, bad, None, out, last_checkpoint)
        history.append(record)
        if progress:
            shown = {k: round(v, 4) for k, v in record.items() if k.startswith(("test", "recon", "train"))}
            tqdm.write(f"epoch {epoch + 1}/{config.epochs} ({seconds:.1f} s): {shown}")
        if out is not None:
            if telemetry:
                _write_parquet(out / "telemetry" / f"epoch_{epoch + 1:03d}.parquet", telemetry)
            last_checkpoint = _save_checkpoint(out, run, history, _Position(epoch + 1))
            append_line(out / "metrics.jsonl", _json(record))
        position = _Position(epoch + 1)
    results = _results(config, history)
    if out is not None:
        write_json(out / "results.json", results)
    return results


def _json(record: dict[str, Any]) -> str:
    return to_json(record, sort_keys=True)


def _results(config: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1]
    results: dict[str, Any] = {k: v for k, v in last.items() if k.startswith(("test_", "recon_"))}
    results["epochs"] = len(history)
    results["epoch_seconds"] = sum(h["epoch_seconds"] for h in history) / len(history)
    if "test_accuracy" in last:
        best = max(history, key=lambda h: h["test_accuracy"])
        results["best_test_accuracy"] = best["test_accuracy"]
        results["best_epoch"] = best["epoch"]
    results["history"] = history
    results["config"] = to_dict(config)
    return results


def load_run(out: str | Path) -> tuple[RunConfig, Run]:
    """The config and trained model of a run directory (from its checkpoint)."""
    from .config import load, validate

    out = Path(out)
    if not (out / "config.yaml").is_file():
        found = "a folder without one" if out.is_dir() else "no such folder"
        raise RunDirError(f"{out}: expected a pclab run directory (with config.yaml), got {found}")
    try:
        data = load(out / "config.yaml")  # the restricted loader: no aliases, bounded size and depth
    except ConfigError as err:
        raise RunDirError(f"{out / 'config.yaml'}: damaged ({err})") from None
    config = validate(data, str(out / "config.yaml"))
    if not (out / "checkpoint.pt").is_file():
        raise RunDirError(f"{out}: no checkpoint.pt yet (the run has not finished an epoch)")
    run = prepare(config)
    state = read_checkpoint(out / "checkpoint.pt", config)
    _load_states(out / "checkpoint.pt", run, state)
    return config, run


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records of a run directory."""
    return read_json_lines(Path(out) / "metrics.jsonl")
