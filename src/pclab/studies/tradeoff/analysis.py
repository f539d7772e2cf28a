"""The trade-off study's report (:class:`..report.Report`): Findings from the run's numbers (how the
hypervolume of the fronts changes with d and model size, the ways' accuracy against backprop, what
the test-time relaxation does), the key figure (Pareto fronts, one panel per way and model size, one
curve per d), curves vs lam, reconstruction grids, the longer statements and the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from ..report import Report, rule_colour, rule_name
from ..stats import Interval, claim, describe, mean_interval, paired_difference
from .pareto import hypervolume, mark_pareto, tradeoff_gap
from .training import WAY_LABELS, decode_images, grid_images, trial_data

SLICE = ["dataset", "way", "complexity", "latent"]
"""Columns naming one trade-off curve (a sweep over lam)."""

METRICS = ["test_accuracy", "recon_mse", "probe_accuracy", "probe_mse",
           "test_accuracy_feedforward", "recon_mse_feedforward", "test_accuracy_relaxed", "recon_mse_relaxed",
           "latent_movement", "energy_drop"]

REFERENCE_ACCURACY = 0.1
"""Accuracy of the fronts' reference point: chance on the ten classes of every data set of the study."""

_COMPLEXITY_ORDER = {"small": 0, "medium": 1, "large": 2}


def tidy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: its parameters, metrics and ``pareto_optimal`` (within its
    dataset, way, complexity, d and seed). Bulky columns (history, images) are dropped."""
    if frame.empty:
        return frame
    keep = [c for c in frame.columns if c not in ("history", "grid_images", "grid_shape", "grid")]
    table = frame[keep].copy()
    table["paper_lambda"] = 1.0 - table["lam"]
    table = mark_pareto(table, [*SLICE, "seed"])
    return table.sort_values([*SLICE, "seed", "lam"], key=_sort_key).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    return column.map(_COMPLEXITY_ORDER) if column.name == "complexity" else column


def curves(table: pd.DataFrame) -> pd.DataFrame:
    """Per slice and lam: median, min and max over seeds of every metric; ``pareto_optimal`` of the
    medians within each slice."""
    present = [m for m in METRICS if m in table.columns]
    grouped = table.groupby([*SLICE, "lam"], sort=True)[present]
    stats = grouped.median().join(grouped.min().add_suffix("_min")).join(grouped.max().add_suffix("_max"))
    stats["seeds"] = table.groupby([*SLICE, "lam"]).size()
    stats = stats.reset_index()
    return mark_pareto(stats, SLICE)


def gaps(curve_table: pd.DataFrame) -> pd.DataFrame:
    """Per slice with a complete front (every lam of its data set): best accuracy, best MSE and the
    trade-off gap (:func:`.pareto.tradeoff_gap`) of the task metrics and of the latent probes."""
    rows = []
    complete = curve_table.groupby("dataset")["lam"].nunique()
    for key, group in curve_table.groupby(SLICE, sort=True):
        if group["lam"].nunique() < complete[key[0]]:
            continue
        rows.append({
            **dict(zip(SLICE, key)),
            "best_accuracy": group["test_accuracy"].max(),
            "best_recon_mse": group["recon_mse"].min(),
            "gap_task": tradeoff_gap(group["test_accuracy"], group["recon_mse"]),
            "best_probe_accuracy": group["probe_accuracy"].max(),
            "best_probe_mse": group["probe_mse"].min(),
            "gap_latent": tradeoff_gap(group["probe_accuracy"], group["probe_mse"]),
            "lams": len(group),
        })
    return pd.DataFrame(rows)


def reference_errors(table: pd.DataFrame) -> dict[str, float]:
    """Per dataset: the fronts' reference error, the test MSE of predicting the mean training image
    (``mean_image_mse``, the same in every run of a data set)."""
    return {dataset: float(g["mean_image_mse"].median()) for dataset, g in table.groupby("dataset")}


def hypervolumes(table: pd.DataFrame) -> pd.DataFrame:
    """Per front (dataset, way, complexity, d, seed): the hypervolume (:func:`.pareto.hypervolume`)
    of the task front (test accuracy vs reconstruction MSE) and of the latent front (probe accuracy
    vs fresh-decoder MSE) against the data set's reference point (accuracy 10 %, mean-image MSE).
    Only complete fronts (every lam of the data set) are measured."""
    references = reference_errors(table)
    complete = table.groupby("dataset")["lam"].nunique()
    rows = []
    for key, g in table.groupby([*SLICE, "seed"], sort=True):
        if g["lam"].nunique() < max(2, complete[key[0]]):  # a partial front (a run excluded or failed) is not comparable
            continue
        reference = references[key[0]]
        rows.append({
            **dict(zip([*SLICE, "seed"], key)),
            "hv_task": hypervolume(g["test_accuracy"], g["recon_mse"], reference, REFERENCE_ACCURACY),
            "hv_latent": hypervolume(g["probe_accuracy"], g["probe_mse"], reference, REFERENCE_ACCURACY),
            "reference_mse": reference,
            "lams": len(g),
        })
    return pd.DataFrame(rows)


def paired_change(differences: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences (one per seed) with its ``confidence`` t-interval
    (:func:`..stats.mean_interval`) and the verdict: ``softens`` (interval above 0: the front dominates
    more area), ``harsher`` (below 0), ``no detectable change`` (the interval holds 0), ``cannot tell,
    n = 1`` (one pair: no interval)."""
    interval = mean_interval(differences, confidence)
    if not interval.computable:
        return {"n": interval.n, "mean_change": interval.mean, "ci_low": float("nan"), "ci_high": float("nan"),
                "verdict": f"cannot tell, n = {interval.n}"}
    verdict = "softens" if interval.low > 0 else "harsher" if interval.high < 0 else "no detectable change"
    return {"n": interval.n, "mean_change": interval.mean, "ci_low": interval.low, "ci_high": interval.high, "verdict": verdict}


def hypervolume_changes(hv_table: pd.DataFrame) -> pd.DataFrame:
    """How the hypervolume changes from the smallest to the largest d (within each dataset, way,
    complexity) and from the smallest to the largest model (within each dataset, way, d): the mean
    over seeds of the paired difference (same seed, larger minus smaller), its 95 % t-interval and
    the verdict (:func:`paired_change`), for the task and latent fronts."""
    rows = []
    if hv_table.empty:
        return pd.DataFrame(rows)
    for factor, other in (("latent", "complexity"), ("complexity", "latent")):
        for key, g in hv_table.groupby(["dataset", "way", other], sort=True):
            levels = sorted(g[factor].unique(), key=lambda v: _COMPLEXITY_ORDER.get(v, v))
            if len(levels) < 2:
                continue
            lo = g[g[factor] == levels[0]].set_index("seed")
            hi = g[g[factor] == levels[-1]].set_index("seed")
            seeds = lo.index.intersection(hi.index)
            for front in ("hv_task", "hv_latent"):
                change = paired_change((hi.loc[seeds, front] - lo.loc[seeds, front]).to_numpy())
                rows.append({"factor": "d" if factor == "latent" else "model size", "dataset": key[0], "way": key[1],
                             "held": f"{other}={key[2]}", "from": levels[0], "to": levels[-1], "front": front.split("_")[1],
                             "hv_from": float(lo.loc[seeds, front].mean()), "hv_to": float(hi.loc[seeds, front].mean()), **change})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ figures
_RULE = {"bp": "bp", "bpti": "bp-through-inference", "pc": "pc"}


def _complexities(table: pd.DataFrame) -> list[str]:
    return sorted(table["complexity"].unique(), key=_COMPLEXITY_ORDER.get)


def _colours(values: list[Any]) -> dict[Any, Any]:
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(1, len(values) - 1) * 0.9) for i, v in enumerate(values)}


PAGE_WIDTH = 10.4
"""Width (inches) of the report's figures: the page's width, so no figure is scaled up or scrolls."""


def pareto_figure(curve_table: pd.DataFrame, dataset: str, accuracy: str, error: str, what: str, reference: float | None = None) -> plt.Figure:
    """Accuracy (%) vs MSE, one panel per way (columns) and model size (rows), every panel on the same
    fixed axes; a line per d through the lams (its colour; numbers = lam); filled markers are
    Pareto-optimal within their (way, complexity, d) front; bars span seeds (min to max); dotted lines
    mark the reference point of the hypervolume. At most :data:`PAGE_WIDTH` inches wide."""
    data = curve_table[curve_table["dataset"] == dataset]
    ways, comps = [w for w in WAY_LABELS if w in set(data["way"])], _complexities(data)
    latents = sorted(data["latent"].unique())
    colour = _colours(latents)
    right = 1.05 * float(np.nanmax([data[f"{error}_max"].max(), reference or 0.0]))
    width = min(3.4, PAGE_WIDTH / len(ways))
    fig, axes = plt.subplots(len(comps), len(ways), figsize=(width * len(ways), 0.8 * width * len(comps) + 0.5), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    for i, comp in enumerate(comps):
        for j, way in enumerate(ways):
            ax = axes[i, j]
            for d in latents:
                g = data[(data["way"] == way) & (data["complexity"] == comp) & (data["latent"] == d)].sort_values("lam")
                if g.empty:
                    continue
                optimal = mark_pareto(g, SLICE, accuracy, error, "front")["front"].to_numpy()
                acc = 100 * g[accuracy]
                ax.errorbar(g[error], acc, xerr=[g[error] - g[f"{error}_min"], g[f"{error}_max"] - g[error]],
                            yerr=[acc - 100 * g[f"{accuracy}_min"], 100 * g[f"{accuracy}_max"] - acc],
                            color=colour[d], lw=1, alpha=0.6, label=f"d={d}")
                ax.scatter(g[error][optimal], acc[optimal], color=colour[d], edgecolor="k", s=30, zorder=3)
                ax.scatter(g[error][~optimal], acc[~optimal], facecolor="white", edgecolor=colour[d], s=24, zorder=3)
                for e, a, lam in zip(g[error], acc, g["lam"]):
                    ax.annotate(f"{lam:g}", (e, a), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour[d])
            if reference is not None:
                ax.axvline(reference, color="grey", ls=":", lw=1)
                ax.axhline(100 * REFERENCE_ACCURACY, color="grey", ls=":", lw=1)
            ax.set_xlim(0, right)
            ax.set_ylim(0, 100)
            ax.set_title(f"{WAY_LABELS[way]}\n{comp}", fontsize=8)
            if i == len(comps) - 1:
                ax.set_xlabel(f"{what} MSE per pixel (pixels in [-1, 1])", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{what} accuracy (%)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[d], marker="o", lw=1, label=f"d={d}") for d in latents]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


def slices_of(table: pd.DataFrame, chosen: list[list[Any]] | None = None) -> list[tuple[str, str, int]]:
    """The (dataset, complexity, d) curves of ``table``, in order; only the ``chosen`` [complexity, d]
    pairs when given (and present)."""
    present = sorted({(ds, c, int(d)) for ds, c, d in zip(table["dataset"], table["complexity"], table["latent"])},
                     key=lambda s: (s[0], _COMPLEXITY_ORDER[s[1]], s[2]))
    if chosen:
        wanted = {(c, int(d)) for c, d in chosen}
        picked = [s for s in present if (s[1], s[2]) in wanted]
        return picked or present
    return present


def _grid(n: int, columns: int = 4, width: float = PAGE_WIDTH, height: float = 2.6) -> tuple[plt.Figure, np.ndarray]:
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols / columns if n < columns else width, height * rows + 0.5),
                             squeeze=False, constrained_layout=True)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def front_figure(curve_table: pd.DataFrame, slices: list[tuple[str, str, int]], accuracy: str = "test_accuracy",
                 error: str = "recon_mse", what: str = "test") -> plt.Figure:
    """Accuracy (%) vs reconstruction MSE, one panel per (dataset, complexity, d) slice and one line
    per training way (its rule colour), a point per lam; filled points are Pareto-optimal within their
    curve, bars span the seeds (min to max)."""
    fig, axes = _grid(len(slices))
    for ax, (dataset, comp, d) in zip(axes.flat, slices):
        part = curve_table[(curve_table["dataset"] == dataset) & (curve_table["complexity"] == comp) & (curve_table["latent"] == d)]
        for way in [w for w in WAY_LABELS if w in set(part["way"])]:
            g = part[part["way"] == way].sort_values("lam")
            colour = rule_colour(_RULE[way])
            optimal = mark_pareto(g, SLICE, accuracy, error, "front")["front"].to_numpy()
            ax.errorbar(g[error], 100 * g[accuracy], xerr=[g[error] - g[f"{error}_min"], g[f"{error}_max"] - g[error]],
                        yerr=[100 * (g[accuracy] - g[f"{accuracy}_min"]), 100 * (g[f"{accuracy}_max"] - g[accuracy])],
                        color=colour, lw=1.2, alpha=0.8, label=WAY_LABELS[way])
            ax.scatter(g[error][optimal], 100 * g[accuracy][optimal], color=colour, edgecolor="k", s=30, zorder=3)
            ax.scatter(g[error][~optimal], 100 * g[accuracy][~optimal], facecolor="white", edgecolor=colour, s=24, zorder=3)
        ax.set_title(f"{dataset}, {comp}, d={d}", fontsize=9)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.1, 0.2, 0.5, 1, ...: labels in range
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping minor labels
        ax.set_xlabel(f"{what} MSE per pixel (log)", fontsize=8)
        ax.set_ylabel(f"{what} accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8, frameon=False)
    return fig


def lam_figure(curve_table: pd.DataFrame, slices: list[tuple[str, str, int]], metrics: list[tuple[str, str, float]]) -> plt.Figure:
    """Metrics (rows: column, axis label, scale) vs lam, one column per slice, one line per way
    (median over seeds, band = seed range)."""
    cols = len(slices)
    fig, axes = plt.subplots(len(metrics), cols, figsize=(min(10.4, 2.6 * cols + 0.6), 2.4 * len(metrics) + 0.5), squeeze=False,
                             sharey="row", constrained_layout=True)
    for j, (dataset, comp, d) in enumerate(slices):
        part = curve_table[(curve_table["dataset"] == dataset) & (curve_table["complexity"] == comp) & (curve_table["latent"] == d)]
        for i, (metric, label, scale) in enumerate(metrics):
            ax = axes[i, j]
            for way in [w for w in WAY_LABELS if w in set(part["way"])]:
                g = part[part["way"] == way].sort_values("lam")
                colour = rule_colour(_RULE[way])
                ax.plot(g["lam"], scale * g[metric], color=colour, marker="o", ms=3, label=WAY_LABELS[way])
                ax.fill_between(g["lam"], scale * g[f"{metric}_min"], scale * g[f"{metric}_max"], color=colour, alpha=0.15)
            ax.set_xlabel("lam (weight of classification)", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{dataset}, {comp}, d={d}", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8, frameon=False)
    return fig


def grid_figure(frame: pd.DataFrame, originals: np.ndarray | None, dataset: str, complexity: str, latent: int) -> plt.Figure | None:
    """Reconstructions of the grid images (a row per lam, the originals on top when given,
    ``(n, C, H, W)`` in [0, 1]) for each way, side by side."""
    rows = frame[(frame["dataset"] == dataset) & (frame["complexity"] == complexity) & (frame["latent"] == latent)]
    rows = rows[rows["grid_images"].notna()] if "grid_images" in rows else rows.iloc[0:0]
    if rows.empty:
        return None
    ways = [w for w in WAY_LABELS if w in set(rows["way"])]
    lams = sorted(rows["lam"].unique())
    fig, axes = plt.subplots(1, len(ways), figsize=(3.4 * len(ways), 0.45 * len(lams) + 1.2), squeeze=False)
    for ax, way in zip(axes[0], ways):
        strips = [np.concatenate(list(originals[:, 0]), axis=1)] if originals is not None else []
        labels = ["original"] if originals is not None else []
        for lam in lams:
            r = rows[(rows["way"] == way) & (rows["lam"] == lam)]
            if r.empty:
                continue
            shape = tuple(r.iloc[0]["grid_shape"])
            images = decode_images(r.iloc[0]["grid_images"], shape)[:, 0]
            strips.append(np.concatenate(list(images), axis=1))
            labels.append(f"lam={lam:g}")
        ax.imshow(np.concatenate(strips, axis=0), cmap="gray", vmin=0, vmax=1)
        h = strips[0].shape[0]
        ax.set_yticks([h * (k + 0.5) for k in range(len(labels))], labels, fontsize=7)
        ax.set_xticks([])
        ax.set_title(WAY_LABELS[way], fontsize=9)
    fig.suptitle(f"{dataset}, {complexity}, d={latent}: reconstructions (label not clamped), one row per lam")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ summary
def _fmt(x: float, pct: bool = False) -> str:
    return "n/a" if not np.isfinite(x) else (f"{100 * x:.1f} %" if pct else f"{x:.3f}")


def hypervolume_lines(changes: pd.DataFrame, references: dict[str, float]) -> list[str]:
    """The verdict on the paper's claim (a larger latent / model softens the trade-off) per way,
    from the paired hypervolume changes: only intervals that exclude zero count."""
    lines = [
        "Hypervolume reference point (accuracy 10 %, the test MSE of predicting the mean training image): "
        + ", ".join(f"{k} {v:.3f}" for k, v in references.items()) + "; 0 = no better than the reference, 1 = ideal (Methods)."
    ]
    if changes.empty:
        return [*lines, "Effect of d and model size: not testable in this run (one d and one model size)."]
    for (factor, front), g in changes.groupby(["factor", "front"], sort=False):
        details = "; ".join(
            f"{r.dataset}/{r.way}/{r.held}: {r.hv_from:.3f} -> {r.hv_to:.3f}, change {r.mean_change:+.3f}"
            + (f" [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if np.isfinite(r.ci_low) else "") + f" ({r.verdict})"
            for r in g.itertuples())
        lines.append(f"Larger {factor}, {front} front ({g['from'].iloc[0]} -> {g['to'].iloc[0]}): {details}.")
    for (factor, way), g in changes[changes["front"] == "task"].groupby(["factor", "way"], sort=False):
        counts = g["verdict"].value_counts()
        tested = int(counts.get("softens", 0) + counts.get("harsher", 0) + counts.get("no detectable change", 0))
        if tested == 0:
            lines.append(f"Paper's claim (larger {factor} softens the trade-off), {WAY_LABELS[way]}: cannot tell -- one seed per slice.")
            continue
        lines.append(f"Paper's claim (larger {factor} softens the trade-off), {WAY_LABELS[way]}: softens in {counts.get('softens', 0)}, "
                     f"harsher in {counts.get('harsher', 0)}, no detectable change in {counts.get('no detectable change', 0)} of {tested} "
                     "slices (task front, 95 % intervals).")
    return lines


def relaxation_lines(curve_table: pd.DataFrame) -> list[str]:
    """Per way (b)/(c) and lam: how far the test-time relaxation moves the latent and how much it lowers the energy."""
    if "latent_movement" not in curve_table:
        return []
    lines = []
    relaxed = curve_table[curve_table["way"] != "bp"].dropna(subset=["latent_movement"])
    for (dataset, way), g in relaxed.groupby(["dataset", "way"], sort=True):
        per_lam = g.groupby("lam")[["latent_movement", "energy_drop"]].median()
        lines.append(f"{dataset}, {WAY_LABELS[way]}, test-time relaxation (median over slices) per lam -- " + "; ".join(
            f"lam={lam:g}: ||z_T - z_0|| / ||z_0|| = {r.latent_movement:.3f}, energy drop {100 * r.energy_drop:.1f} %"
            for lam, r in per_lam.iterrows()) + ".")
    return lines


def summary_lines(gap_table: pd.DataFrame, curve_table: pd.DataFrame) -> list[str]:
    """Sentences from the numbers: how the front moves with d and complexity (relative gap) and how
    the ways differ; the verdict on the paper's claim is :func:`hypervolume_lines`'."""
    lines: list[str] = []
    if gap_table.empty:
        return ["No run finished; nothing to summarise."]
    for factor, other in (("latent", "complexity"), ("complexity", "latent")):
        if gap_table[factor].nunique() < 2:
            lines.append(f"Effect of {'the latent size d' if factor == 'latent' else 'model complexity'}: not testable in this "
                         f"run -- only {factor} = {gap_table[factor].iloc[0]} was run.")
            continue
        moves = []
        for key, g in gap_table.groupby(["dataset", "way", other], sort=True):
            g = g.sort_values(factor, key=_sort_key)
            lo, hi = g.iloc[0], g.iloc[-1]
            if len(g) > 1:
                moves.append(f"{key[0]}/{key[1]}/{other}={key[2]}: best accuracy {_fmt(lo['best_accuracy'], True)} -> "
                             f"{_fmt(hi['best_accuracy'], True)}, best MSE {_fmt(lo['best_recon_mse'])} -> {_fmt(hi['best_recon_mse'])}")
        lines.append(f"How the front moves from the smallest to the largest {factor}: " + "; ".join(moves) + ".")
        for gap in ("gap_task", "gap_latent"):
            softer = harder = 0
            details = []
            for key, g in gap_table.groupby(["dataset", "way", other], sort=True):
                if g[factor].nunique() < 2:
                    continue
                g = g.sort_values(factor, key=_sort_key)
                lo, hi = g.iloc[0], g.iloc[-1]
                if not (np.isfinite(lo[gap]) and np.isfinite(hi[gap])):
                    continue
                change = hi[gap] - lo[gap]
                softer += change < 0
                harder += change > 0
                details.append(f"{key[0]}/{key[1]}/{other}={key[2]}: {_fmt(lo[gap])} -> {_fmt(hi[gap])}")
            if softer + harder == 0:
                continue
            name = "a larger latent d" if factor == "latent" else "a more complex model"
            kind = gap.split("_")[1]
            lines.append(
                f"{name} ({kind} gap, smallest -> largest {factor}): softer in {softer}, harsher in {harder} of "
                f"{softer + harder} slices [{'; '.join(details)}]."
            )
    for dataset, g in gap_table.groupby("dataset"):
        parts = []
        for way, w in g.groupby("way"):
            parts.append(
                f"{WAY_LABELS[way]}: best accuracy {_fmt(w['best_accuracy'].max(), True)}, best MSE {_fmt(w['best_recon_mse'].min())}, "
                f"mean task gap {_fmt(w['gap_task'].mean())}, mean latent gap {_fmt(w['gap_latent'].mean())}"
            )
        lines.append(f"{dataset}, ways compared over all slices -- " + "; ".join(parts) + ".")
        c = curve_table[curve_table["dataset"] == dataset].merge(g[SLICE], on=SLICE)  # complete fronts only
        ends = []
        for way, w in c.groupby("way"):
            zero, one = w[w["lam"] == w["lam"].min()], w[w["lam"] == w["lam"].max()]
            ends.append(f"{way}: lam={w['lam'].min():g} probe accuracy {_fmt(zero['probe_accuracy'].median(), True)} vs "
                        f"lam={w['lam'].max():g} {_fmt(one['probe_accuracy'].median(), True)}; probe MSE "
                        f"{_fmt(zero['probe_mse'].median())} vs {_fmt(one['probe_mse'].median())}")
        lines.append(f"{dataset}, what the latent holds at the two ends (median over slices) -- " + "; ".join(ends) + ".")
    return lines


QUESTION = ("How much reconstruction must a shared latent give up for classification, and does the answer depend "
            "on the training rule (PC learning, backprop through inference, backprop), the latent size d or the model size?")

_GAP_TEXT = (
    "Trade-off gap: for each curve over lam, how far its best compromise is from the ideal point (the curve's best "
    "accuracy and best MSE at once): the smallest, over lam, of max(relative accuracy loss, relative MSE excess); 0 = no "
    "trade-off, 0.05 = 5 % worse in one of the two. 'task' uses the model's own accuracy and reconstruction MSE; 'latent' "
    "uses the probes (linear-probe accuracy, fresh-decoder MSE). The gap is relative to each curve's own best values: a "
    "front that moves up and left at every lam but whose pure-reconstruction end improves most counts as harsher, so the "
    "Findings' verdict on the paper's claim comes from the hypervolume, not from this gap; the gap is listed with the statements."
)


def _verdict(interval: Interval) -> str:
    """``describe`` of a hypervolume change, with the verdict only where the interval excludes zero."""
    text = describe(interval, unit="", digits=3, within=None, null="no detectable change")
    if interval.computable and interval.low > 0:
        return f"{text}: softens"
    if interval.computable and interval.high < 0:
        return f"{text}: harsher"
    return text


def hypervolume_findings(changes: pd.DataFrame) -> list[str]:
    """One sentence per factor (d, model size): the seed-paired change of each task front's
    hypervolume from the smallest to the largest level, with its interval and a verdict where the
    interval excludes zero (with one seed: the numbers, and that no interval can be computed);
    beyond four slices only the counts of the verdicts."""
    if changes.empty:
        return ["Hypervolume change with d or model size: not testable in this run (one d and one model size)."]
    lines = []
    task = changes[changes["front"] == "task"]
    several = task["dataset"].nunique() > 1
    for factor, g in task.groupby("factor", sort=False):
        g = g.sort_values(["dataset", "way", "held"], key=lambda c: c.map(_held_order) if c.name == "held" else c)
        common = len(set(zip(g["from"], g["to"]))) == 1
        head = f"Larger {factor} ({g['from'].iloc[0]} -> {g['to'].iloc[0]})" if common else f"Larger {factor}"
        subject = f"{head}, change of the task front's hypervolume (paired by seed; a verdict only where the 95 % interval excludes 0)"
        single = bool((g["n"] < 2).all())
        if len(g) > 4:
            counts = g["verdict"].value_counts()
            lines.append(f"{subject}: softens in {counts.get('softens', 0)}, harsher in {counts.get('harsher', 0)}, no detectable "
                         f"change in {counts.get('no detectable change', 0)}, no interval (one seed) in "
                         f"{sum(v for k, v in counts.items() if k.startswith('cannot'))} of {len(g)} slices (each in the statements).")
            continue
        items = []
        for _, r in g.iterrows():
            where = f"{r['dataset']}, " if several else ""
            span = "" if common else f" {r['from']} -> {r['to']}"
            interval = Interval(r["mean_change"], r["ci_low"], r["ci_high"], int(r["n"]))
            items.append(f"{where}{rule_name(_RULE[r['way']])}, {_held(r['held'])}{span}: "
                         + (f"{interval.mean:+.3f}" if single else _verdict(interval)))
        tail = f" (n={int(g['n'].max())} seed each: the intervals cannot be computed, so no verdict)" if single else ""
        lines.append(f"{subject}: " + "; ".join(items) + tail + ".")
    return lines


def _held(held: str) -> str:
    """``latent=2`` -> ``d=2``; ``complexity=small`` -> ``small``."""
    key, value = held.split("=", 1)
    return f"d={value}" if key == "latent" else value


def _held_order(held: str) -> tuple[int, float]:
    value = held.split("=", 1)[1]
    return (_COMPLEXITY_ORDER[value], 0.0) if value in _COMPLEXITY_ORDER else (9, float(value))


def accuracy_findings(table: pd.DataFrame) -> list[str]:
    """Each PC way against backprop at the same runs (dataset, model size, d, lam > 0 -- where the head
    learns -- and seed): the mean over those points of the test-accuracy difference per seed, paired
    over seeds (:func:`..stats.paired_difference`)."""
    lines = []
    points = ["dataset", "complexity", "latent", "lam", "seed"]
    trained = table[table["lam"] > 0]
    bp = trained[trained["way"] == "bp"].set_index(points)["test_accuracy"]
    for way in ("pc", "bpti"):
        other = trained[trained["way"] == way].set_index(points)["test_accuracy"]
        both = pd.concat({"way": other, "bp": bp}, axis=1, join="inner").dropna()
        if both.empty:
            continue
        per_seed = both.groupby(level="seed").mean()
        k = int(both.groupby(level="seed").size().max())
        name = rule_name(_RULE[way])
        interval = paired_difference(100 * per_seed["way"].to_numpy(), 100 * per_seed["bp"].to_numpy())
        lines.append(claim(f"{name[:1].upper() + name[1:]} minus backprop, test accuracy at the same runs (lam > 0; "
                           f"{'one point' if k == 1 else f'mean of {k} points'} per seed)", interval))
    return lines


def relaxation_finding(table: pd.DataFrame) -> list[str]:
    """One sentence: per PC way, how far the test-time relaxation moves the latent and how much it lowers
    the image energy (median and range over the runs with an image energy, lam < 1)."""
    if "latent_movement" not in table:
        return []
    relaxed = table[(table["way"] != "bp") & (table["lam"] < 1)].dropna(subset=["latent_movement", "energy_drop"])
    parts = []
    for way in ("bpti", "pc"):
        g = relaxed[relaxed["way"] == way]
        if g.empty:
            continue
        move, drop = g["latent_movement"], 100 * g["energy_drop"]
        parts.append(f"{rule_name(_RULE[way])} {move.median():.3f} ({move.min():.3f}-{move.max():.3f}) and "
                     f"{drop.median():.1f} % ({drop.min():.1f}-{drop.max():.1f} %)")
    if not parts:
        return []
    return [f"Test-time relaxation (image clamped, label released), latent movement ||z_T - z_0|| / ||z_0|| and image-energy drop, "
            f"median (range) over the {len(relaxed)} runs with lam < 1: " + "; ".join(parts) + "."]


def findings(table: pd.DataFrame) -> list[str]:
    """At most six sentences from the runs answering the study's question: how the task front's
    hypervolume changes with d and with model size (seed-paired, a verdict only where the interval
    excludes zero), each PC way's test accuracy against backprop at the same runs, and what the
    test-time relaxation does."""
    if table.empty:
        return ["No run finished; no finding."]
    changes = hypervolume_changes(hypervolumes(table))
    return [*hypervolume_findings(changes), *accuracy_findings(table), *relaxation_finding(table)]


def accuracy_lines(curve_table: pd.DataFrame) -> list[str]:
    """Test accuracy at the largest lam (pure classification) of every (dataset, model size, d) run by more
    than one way: the numbers behind the ways' accuracy comparison (median over seeds)."""
    top = curve_table[curve_table["lam"] == curve_table["lam"].max()]
    parts = []
    for (dataset, comp, d), g in top.groupby(["dataset", "complexity", "latent"], sort=True):
        if g["way"].nunique() > 1:
            parts.append(f"{dataset}/{comp}/d={d}: " + ", ".join(f"{w} {_fmt(a, True)}" for w, a in zip(g["way"], g["test_accuracy"])))
    if not parts:
        return []
    return [f"Test accuracy at lam = {top['lam'].max():g} (pure classification; median over seeds) -- " + "; ".join(parts) + "."]


# ------------------------------------------------------------------------------------------- report
_METHODS = """Convention: lam weights classification, L = (1 - lam) * MSE + lam * CE. Rathjens & Wiskott's lambda weights reconstruction; the table's paper_lambda column is 1 - lam.

Model: the Rathjens-Wiskott fully-connected family (encoder, decoder, head; Small / Medium / Large) as a PCN with three value nodes -- image x, latent z, label y: the decoder z -> x and the head z -> y are each one prediction edge (their layers chained), the encoder gives z its first value (an amortiser); this is pclab.models.rathjens_wiskott's default graph. With layered=True every decoder layer is a value node; relaxed freely, those hidden nodes (616+ units) explain the image themselves and carry image information around the latent (measured: way (b), Medium, d = 2, lam = 0 reached a reconstruction MSE of 0.027 while a fresh decoder on its latent managed only 0.24), so the study keeps the latent as the only path. For Small both graphs are the same.

Ways: (a) bp -- z = enc(x), the loss on dec(z) and head(z), backprop (their model). (b) bpti -- z starts at enc(x) and relaxes T steps (latent SGD) on the image energy with the label released; the loss on the relaxed state is backpropagated through the unrolled relaxation (at lam = 1 the decoder still learns, through its effect on the relaxed latent). (c) pc -- image and label clamped, relaxed, then one local PC weight step; the encoder, an amortiser outside the energy, learns to predict the relaxed latent (energy 1/2 ||z* - enc(x)||^2), otherwise it would keep its random weights.

Weights in (c): the image energy is taken per pixel: image precision (1 - lam) * 2 / P, label precision lam, both divided by the larger one, so the energy has the balance of the backprop loss of (a) and (b). lam = 0: the label energy has weight 0, the head never learns (chance accuracy) and the latent is purely generative -- the pure reconstruction objective. lam = 1: the image energy has weight 0, so relaxation and the decoder ignore the image (the decoder keeps its initial weights) and at test time, with the label released, no energy moves z, which stays at enc(x) -- the pure classification objective. Both ends are kept: they are the extremes of the front.

Relaxation of (b) and (c): chosen on a validation split (validation images, stratified, set aside from the training set of every way), not by hand. Candidates: latent SGD step sizes relax_step_sizes, each divided by the largest precision among the clamped nodes (so the choice does not depend on how lam scales the energy), and T in relax_steps. Each step size relaxes max(relax_steps) steps from enc(x); the one reaching the lowest validation energy wins, and T is the smallest candidate that attains 90 % of its energy drop. The training relaxation (c: image and label clamped; b: image clamped) is re-chosen at the start of every epoch on the current model (the runs' history records it), the test relaxation (image clamped, label released) once after training (relax_lr, relax_steps). latent_movement is the test-time mean of ||z_T - z_0|| / ||z_0||, energy_drop the relative drop of the image energy (E_0 - E_T) / E_0; at lam = 1 of (c) there is no image energy, nothing is relaxed and both are 0.

Front measures: the hypervolume of each front (one per dataset, way, complexity, d and seed) is the area of the accuracy-vs-MSE plane it dominates, relative to the box between a fixed reference point per data set (accuracy 10 %, the test MSE of predicting the mean training image) and the ideal point (100 %, MSE 0); its change from the smallest to the largest d (same model size) or model (same d) is the mean over seeds of paired differences with a 95 % t-interval. The relative trade-off gap is kept for comparison with earlier runs.

Metrics: test_accuracy and recon_mse are the native read-outs (feed-forward for (a); relaxed with only the image clamped, label released, for (b) and (c)); MSE is per pixel on images scaled to [-1, 1]. The _feedforward / _relaxed columns give both read-outs. probe_accuracy: a least-squares linear classifier (closed-form ridge) on the frozen, standardised test-time latent. probe_mse: a fresh decoder on the frozen latent -- closed-form ridge regression of the image on [z, 1024 random ReLU features of z] (a one-hidden-layer decoder whose hidden layer is random and output layer solved exactly). Probes are fitted on up to probe_subset training latents and scored on the test latents.

Pareto-optimal: no other lam of the same (dataset, way, complexity, d) has both higher-or-equal accuracy and lower-or-equal MSE. Not covered: the paper's CNNs and ViT (pclab has no hybrid conv builder yet)."""


def _originals(config: dict[str, Any], dataset: str) -> np.ndarray | None:
    """The grid's test images as the runs saw them, or None if the data cannot be loaded."""
    try:
        _, test = trial_data({"dataset": dataset, "train_subset": None, "test_subset": config.get("test_subset")})
    except Exception:  # the report must not fail on a missing data set
        return None
    return grid_images(test).numpy()


def build_report(config: dict[str, Any], frame: pd.DataFrame, failed: list[dict[str, Any]], out: Path, started: float | None = None) -> Path:
    """Write the study's report under ``out`` (``started``: when the study call began); returns the path of ``report.html``."""
    report = Report("The classification-reconstruction trade-off", out, config, question=QUESTION, study="tradeoff", started=started)
    report.methods("What was run", config.get("description", ""))
    report.methods("Model, ways, metrics", _METHODS)
    report.methods("Trade-off gap", _GAP_TEXT)
    table = tidy_table(frame)
    if table.empty:
        report.findings(["No run finished; no finding."])
    else:
        curve_table = curves(table)
        gap_table = gaps(curve_table)
        hv_table = hypervolumes(table)
        changes = hypervolume_changes(hv_table)
        references = reference_errors(table)
        report.findings(findings(table))
        report.statements([*hypervolume_lines(changes, references), *relaxation_lines(curve_table), *accuracy_lines(curve_table),
                           *summary_lines(gap_table, curve_table)])
        datasets = sorted(table["dataset"].unique())
        for dataset in datasets:
            report.figure(pareto_figure(curve_table, dataset, "test_accuracy", "recon_mse", "test", references[dataset]), f"pareto_{dataset}",
                          f"{dataset}: Pareto fronts -- test accuracy vs reconstruction MSE on fixed axes, one panel per training way and "
                          "model size, one colour per latent size d through the lams (numbers = lam); filled = Pareto-optimal within "
                          "its curve; bars = seed range; dotted = the hypervolume's reference point.", key=True)
        key = slices_of(curve_table, config.get("grid_slices"))
        report.section("Pareto fronts, the ways side by side")
        report.figure(front_figure(curve_table, key), "pareto_ways",
                      "Test accuracy vs reconstruction MSE (log scale), one panel per (dataset, model size, d), one colour per training "
                      "rule, a point per lam; filled = Pareto-optimal within its curve; bars = seed range.")
        report.section("What the latent holds",
                       "Linear-probe accuracy vs the MSE of a fresh decoder fitted on the frozen latent (see Methods).")
        for dataset in datasets:
            report.figure(pareto_figure(curve_table, dataset, "probe_accuracy", "probe_mse", "probe", references[dataset]),
                          f"pareto_probes_{dataset}", f"{dataset}: latent probes -- linear-probe accuracy vs fresh-decoder MSE, one "
                          "colour per d.")
        report.section("Trade-off curves vs lam")
        for dataset in datasets:
            shown = [s for s in key if s[0] == dataset] or slices_of(curve_table[curve_table["dataset"] == dataset])
            report.figure(lam_figure(curve_table, shown, [("test_accuracy", "test accuracy (%)", 100.0), ("recon_mse", "recon MSE per pixel", 1.0)]),
                          f"lam_{dataset}", f"{dataset}: test accuracy and reconstruction MSE vs lam (median over seeds, band = seed range).")
            report.figure(lam_figure(curve_table, shown, [("probe_accuracy", "probe accuracy (%)", 100.0), ("probe_mse", "fresh-decoder MSE", 1.0)]),
                          f"lam_probes_{dataset}", f"{dataset}: latent probes vs lam.")
        report.section("Reconstructions across lam")
        for dataset in datasets:
            originals = _originals(config, dataset)
            for complexity, latent in config.get("grid_slices", []):
                fig = grid_figure(frame, originals, dataset, complexity, int(latent))
                if fig is not None:
                    report.figure(fig, f"grid_{dataset}_{complexity}_d{latent}",
                                  f"{dataset}, {complexity}, d={latent}: reconstructions of one test image per class (seed {config['seeds'][0]}).")
        report.table(changes, "hypervolume_changes",
                     "Hypervolume change with d and model size: mean paired difference over seeds, 95 % t-interval, verdict")
        report.table(hv_table, "hypervolumes", "Per front (one seed): hypervolume of the task and latent fronts against the fixed reference point")
        report.table(gap_table, "tradeoff_gaps", "Per curve: best accuracy / MSE and the trade-off gap (task and latent)")
        report.table(table, "runs", "Every run (one row each; pareto_optimal within dataset, way, complexity, d and seed)")
        report.table(curve_table, "curves", "Median (min, max) over seeds per lam; pareto_optimal of the medians")
    if failed:
        report.table(pd.DataFrame(failed), "failures", "Failed runs (recorded, not retried)")
    else:
        report.text("Failed runs: none.")
    if not frame.empty and "trial_seconds" in frame:
        report.text(f"Run time per run: median {frame['trial_seconds'].median():.1f} s, max {frame['trial_seconds'].max():.1f} s, "
                    f"total {frame['trial_seconds'].sum():.0f} s of CPU worker time over {len(frame)} runs.")
    return report.write()
