"""The training loop and its run directory.

A run directory holds::

    config.yaml        the resolved configuration
    metrics.jsonl      one JSON record per finished epoch
    checkpoint.pt      model, learning-rule state and metrics after the last finished epoch
    telemetry/         per-step, per-node energies of sampled training batches (Parquet), if asked
    results.json       final metrics: test_accuracy, recon_mse (where the model reconstructs),
                       epoch_seconds, ...
    failure.json       what went wrong, if the run diverged (the last good checkpoint is kept)

Every file is written atomically. Randomness is derived from ``(seed, epoch)``, so a run resumed
from its checkpoint (``resume=True``) ends with exactly the results of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core import PCN, Inference, LearningRule, relax
from ..data import Dataset, batches, load
from ..io import append_line, atomic_write, load_torch, read_json_lines, save_torch, write_json
from .build import build_inference, build_model, build_rule, data_shape, make_batch, prepare_images, task
from .config import RunConfig, to_dict


class DivergenceError(RuntimeError):
    """Training produced a non-finite or exploding energy, loss or parameter."""


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


def prepare(config: RunConfig, data: tuple[Dataset, Dataset] | None = None) -> Run:
    """Load data and build model and rule, all seeded from ``config.seed``."""
    train, test = data if data is not None else load_data(config)
    shape, classes = data_shape(train)
    torch.manual_seed(config.seed)
    model = build_model(config, shape, classes)
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

            def add(key: str, value: torch.Tensor) -> None:
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


def _check_finite(run: Run, metrics: dict[str, float], epoch: int, batch: int, out: Path | None) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v) or abs(v) > 1e12]
    params = [n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()]
    if not bad and not params:
        return
    detail = {
        "epoch": epoch,
        "batch": batch,
        "non_finite_metrics": {k: metrics[k] for k in bad},
        "non_finite_parameters": params,
        "message": (
            f"training diverged at epoch {epoch}, batch {batch}: "
            + (f"metrics {bad} are not finite or exploded" if bad else "")
            + (f"; parameters {params[:5]} hold NaN/Inf" if params else "")
            + ". The last good checkpoint is kept; lower the learning rates or the latent step size."
        ),
    }
    if out is not None:
        write_json(out / "failure.json", detail)
    raise DivergenceError(detail["message"])


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
        resume: continue from ``out/checkpoint.pt`` if it exists.
        progress: show a progress bar.
        data: ``(train, test)`` datasets to use instead of loading ``config.data``.
    """
    from tqdm.auto import tqdm

    out_path = Path(out) if out is not None else None
    run = prepare(config, data)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        checkpoint_path = out_path / "checkpoint.pt"
        if resume and checkpoint_path.exists():
            state = load_torch(checkpoint_path, map_location=config.device)
            if state["config"] != to_dict(config):
                raise ValueError(f"{checkpoint_path}: checkpoint was written by a different configuration; use a new --out or drop --resume")
            run.model.load_state_dict(state["model"])
            run.rule.load_state_dict(state["rule"])
            history = state["history"]
            start_epoch = state["epoch"] + 1
            # the checkpoint is the truth: a crash between it and the metrics line loses no record
            lines = "".join(_json(h) + "\n" for h in history)
            atomic_write(out_path / "metrics.jsonl", lambda h: h.write(lines))
        elif not resume and (out_path / "metrics.jsonl").exists():
            (out_path / "metrics.jsonl").unlink()
        atomic_write(out_path / "config.yaml", lambda h: yaml.safe_dump(to_dict(config), h, sort_keys=False))
        (out_path / "failure.json").unlink(missing_ok=True)
    epoch_seconds = [h["epoch_seconds"] for h in history]
    for epoch in range(start_epoch, config.epochs):
        generator = torch.Generator().manual_seed(_epoch_seed(config, epoch))
        torch.manual_seed(_epoch_seed(config, epoch))
        telemetry: list[dict[str, Any]] = []
        totals: dict[str, float] = {}
        seen = 0
        started = time.perf_counter()
        bar = tqdm(total=math.ceil(len(run.train) / config.data.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        for index, (images, labels) in enumerate(batches(run.train, config.data.batch_size, shuffle=True, generator=generator)):
            batch = make_batch(config, images, labels, run.classes)
            if config.telemetry and index % config.telemetry_every == 0 and config.learning.rule != "bp":
                telemetry.extend(_telemetry_rows(run, batch, epoch, index))
            metrics = run.rule.step(batch)
            _check_finite(run, metrics, epoch, index, out_path)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(labels)
            seen += len(labels)
            bar.update(1)
            bar.set_postfix({k: f"{v / seen:.4g}" for k, v in totals.items()})
        bar.close()
        seconds = time.perf_counter() - started
        _check_finite(run, {}, epoch, -1, out_path)
        record = {"epoch": epoch + 1, "epoch_seconds": seconds, **{f"train_{k}": v / max(seen, 1) for k, v in totals.items()}}
        record.update(evaluate(run))
        history.append(record)
        epoch_seconds.append(seconds)
        if progress:
            shown = {k: round(v, 4) for k, v in record.items() if k.startswith(("test", "recon", "train"))}
            tqdm.write(f"epoch {epoch + 1}/{config.epochs} ({seconds:.1f} s): {shown}")
        if out_path is not None:
            if telemetry:
                _write_parquet(out_path / "telemetry" / f"epoch_{epoch + 1:03d}.parquet", telemetry)
            save_torch(out_path / "checkpoint.pt", {
                "config": to_dict(config), "epoch": epoch, "model": run.model.state_dict(),
                "rule": run.rule.state_dict(), "history": history,
            })
            append_line(out_path / "metrics.jsonl", _json(record))
    results = _results(config, history)
    if out_path is not None:
        write_json(out_path / "results.json", results)
    return results


def _json(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, sort_keys=True)


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
    from .config import validate

    out = Path(out)
    if not (out / "config.yaml").exists():
        raise FileNotFoundError(f"{out} is not a pclab run directory (no config.yaml)")
    config = validate(yaml.safe_load((out / "config.yaml").read_text()), str(out / "config.yaml"))
    run = prepare(config)
    state = load_torch(out / "checkpoint.pt", map_location=config.device)
    run.model.load_state_dict(state["model"])
    run.rule.load_state_dict(state["rule"])
    return config, run


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records of a run directory."""
    return read_json_lines(Path(out) / "metrics.jsonl")
