"""The trade-off study's report: tidy table, Pareto fronts, curves vs lam, reconstruction grids and
a summary written from the run's own numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from ..report import Report, rule_colour, rule_name
from ..stats import claim, paired_difference
from .pareto import mark_pareto, tradeoff_gap
from .training import WAY_LABELS, decode_images, grid_images, trial_data

SLICE = ["dataset", "way", "complexity", "latent"]
"""Columns naming one trade-off curve (a sweep over lam)."""

METRICS = ["test_accuracy", "recon_mse", "probe_accuracy", "probe_mse",
           "test_accuracy_feedforward", "recon_mse_feedforward", "test_accuracy_relaxed", "recon_mse_relaxed"]

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
    """Per slice: best accuracy, best MSE and the trade-off gap (:func:`.pareto.tradeoff_gap`) of
    the task metrics and of the latent probes."""
    rows = []
    for key, group in curve_table.groupby(SLICE, sort=True):
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


# ------------------------------------------------------------------------------------------ figures
_RULE = {"bp": "bp", "bpti": "bp-through-inference", "pc": "pc"}


def _complexities(table: pd.DataFrame) -> list[str]:
    return sorted(table["complexity"].unique(), key=_COMPLEXITY_ORDER.get)


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


def _grid(n: int, columns: int = 4, width: float = 10.4, height: float = 2.6) -> tuple[plt.Figure, np.ndarray]:
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


def summary_lines(gap_table: pd.DataFrame, curve_table: pd.DataFrame) -> list[str]:
    """Sentences from the numbers: how the front moves with d and complexity, how the ways differ,
    and whether the paper's direction (larger d / model softens the trade-off) holds here."""
    lines: list[str] = []
    if gap_table.empty:
        return ["No run finished; nothing to summarise."]
    verdicts = {}
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
            verdicts[(factor, gap)] = (softer, harder)
            lines.append(
                f"{name} ({kind} gap, smallest -> largest {factor}): softer in {softer}, harsher in {harder} of "
                f"{softer + harder} slices [{'; '.join(details)}]."
            )
    for (factor, gap), (softer, harder) in verdicts.items():
        name = "larger latent" if factor == "latent" else "larger model"
        if softer > harder:
            lines.append(f"Paper's direction ({name} softens the trade-off, {gap.split('_')[1]} metrics): reproduced in most slices here.")
        else:
            lines.append(f"Paper's direction ({name} softens the trade-off, {gap.split('_')[1]} metrics): NOT reproduced here "
                         f"({softer} softer vs {harder} harsher).")
    for dataset, g in gap_table.groupby("dataset"):
        parts = []
        for way, w in g.groupby("way"):
            parts.append(
                f"{WAY_LABELS[way]}: best accuracy {_fmt(w['best_accuracy'].max(), True)}, best MSE {_fmt(w['best_recon_mse'].min())}, "
                f"mean task gap {_fmt(w['gap_task'].mean())}, mean latent gap {_fmt(w['gap_latent'].mean())}"
            )
        lines.append(f"{dataset}, ways compared over all slices -- " + "; ".join(parts) + ".")
        c = curve_table[curve_table["dataset"] == dataset]
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
    "front that moves up and left at every lam but whose pure-reconstruction end improves most counts as harsher."
)


def per_seed_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Per (slice, seed): best test accuracy and best reconstruction MSE over lam, and the task trade-off gap."""
    rows = []
    for key, g in table.groupby([*SLICE, "seed"], sort=True):
        rows.append({**dict(zip([*SLICE, "seed"], key)), "best_accuracy": g["test_accuracy"].max(),
                     "best_recon_mse": g["recon_mse"].min(), "gap_task": tradeoff_gap(g["test_accuracy"], g["recon_mse"])})
    return pd.DataFrame(rows)


def _paired(per_seed: pd.DataFrame, by: str, a: Any, b: Any, value: str, scale: float = 1.0):
    """Seed-paired difference of the mean over the other slice columns of ``value`` at ``by == a`` minus ``by == b``
    (only slices present at both); returns the interval and how many slices each seed averages."""
    others = [c for c in SLICE if c != by]
    wide = per_seed.pivot_table(index=[*others, "seed"], columns=by, values=value, aggfunc="first")
    if a not in wide.columns or b not in wide.columns:
        return None, 0
    both = wide[[a, b]].dropna()
    if both.empty:
        return None, 0
    per = both.groupby("seed").mean()
    slices = int(both.groupby("seed").size().max())
    return paired_difference(scale * per[a].to_numpy(), scale * per[b].to_numpy()), slices


def _curves(k: int) -> str:
    return "one curve" if k == 1 else f"mean of {k} curves"


def findings(table: pd.DataFrame) -> list[str]:
    """At most six sentences from the runs: each way against backprop (best accuracy, best MSE) and the
    effect of d and of model size on the trade-off gap, each a seed-paired difference with its interval."""
    if table.empty:
        return ["No run finished; no finding."]
    per_seed = per_seed_curves(table)
    lines = []
    ways = set(per_seed["way"])
    for way in ("pc", "bpti"):
        if way not in ways or "bp" not in ways:
            continue
        name = rule_name(_RULE[way])
        acc, k = _paired(per_seed, "way", way, "bp", "best_accuracy", 100.0)
        if acc is not None:
            lines.append(claim(f"{name[:1].upper() + name[1:]} minus backprop, best test accuracy over lam ({_curves(k)})", acc))
    if {"pc", "bp"} <= ways:
        mse, k = _paired(per_seed, "way", "pc", "bp", "best_recon_mse")
        if mse is not None:
            lines.append(claim(f"PC learning minus backprop, best reconstruction MSE per pixel ({_curves(k)})", mse,
                               unit="", digits=4, within=None))
    latents = sorted(per_seed["latent"].unique())
    if len(latents) > 1:
        gap, k = _paired(per_seed, "latent", latents[-1], latents[0], "gap_task")
        if gap is not None:
            lines.append(claim(f"Latent size d {latents[0]} -> {latents[-1]}, change of the trade-off gap (0 = no trade-off; "
                               f"{_curves(k)}, negative = softer)", gap, unit="", digits=3, within=None))
    comps = _complexities(per_seed)
    if len(comps) > 1:
        gap, k = _paired(per_seed, "complexity", comps[-1], comps[0], "gap_task")
        if gap is not None:
            lines.append(claim(f"Model {comps[0]} -> {comps[-1]}, change of the trade-off gap ({_curves(k)}, "
                               "negative = softer)", gap, unit="", digits=3, within=None))
    return lines


# ------------------------------------------------------------------------------------------- report
_METHODS = """Convention: lam weights classification, L = (1 - lam) * MSE + lam * CE. Rathjens & Wiskott's lambda weights reconstruction; the table's paper_lambda column is 1 - lam.

Model: the Rathjens-Wiskott fully-connected family (encoder, decoder, head; Small / Medium / Large) as a PCN with three value nodes -- image x, latent z, label y: the decoder z -> x and the head z -> y are each one prediction edge (their layers chained), the encoder gives z its first value (an amortiser); this is pclab.models.rathjens_wiskott's default graph. With layered=True every decoder layer is a value node; relaxed freely, those hidden nodes (616+ units) explain the image themselves and carry image information around the latent (measured: way (b), Medium, d = 2, lam = 0 reached a reconstruction MSE of 0.027 while a fresh decoder on its latent managed only 0.24), so the study keeps the latent as the only path. For Small both graphs are the same.

Ways: (a) bp -- z = enc(x), the loss on dec(z) and head(z), backprop (their model). (b) bpti -- z starts at enc(x) and relaxes T steps (latent SGD) on the image energy with the label released; the loss on the relaxed state is backpropagated through the unrolled relaxation (at lam = 1 the decoder still learns, through its effect on the relaxed latent). (c) pc -- image and label clamped, relaxed, then one local PC weight step; the encoder, an amortiser outside the energy, learns to predict the relaxed latent (energy 1/2 ||z* - enc(x)||^2), otherwise it would keep its random weights.

Weights in (c): the image energy is taken per pixel: image precision (1 - lam) * 2 / P, label precision lam, both divided by the larger one, so the energy has the balance of the backprop loss of (a) and (b). lam = 0: the label energy has weight 0, the head never learns (chance accuracy) and the latent is purely generative -- the pure reconstruction objective. lam = 1: the image energy has weight 0, so relaxation and the decoder ignore the image (the decoder keeps its initial weights) and at test time, with the label released, no energy moves z, which stays at enc(x) -- the pure classification objective. Both ends are kept: they are the extremes of the front.

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
        report.findings(findings(table))
        report.statements(summary_lines(gap_table, curve_table))
        key = slices_of(curve_table, config.get("grid_slices"))
        every = slices_of(curve_table)
        report.figure(front_figure(curve_table, key), "pareto",
                      "Pareto fronts: test accuracy vs reconstruction MSE (pixels in [-1, 1]), one panel per model size and latent "
                      "size d, one colour per training rule, a point per lam; filled = Pareto-optimal within its curve; bars = seed "
                      "range.", key=True)
        if len(every) > len(key):
            report.section("Pareto fronts of every curve")
            report.figure(front_figure(curve_table, every), "pareto_all", "Test accuracy vs reconstruction MSE for every "
                          "(dataset, model size, d).")
        report.section("What the latent holds",
                       "Linear-probe accuracy vs the MSE of a fresh decoder fitted on the frozen latent (see Methods).")
        report.figure(front_figure(curve_table, every, "probe_accuracy", "probe_mse", "probe"), "pareto_probes",
                      "Latent probes: linear-probe accuracy vs fresh-decoder MSE, one colour per training rule, a point per lam.")
        report.section("Trade-off curves vs lam")
        report.figure(lam_figure(curve_table, key, [("test_accuracy", "test accuracy (%)", 100.0), ("recon_mse", "recon MSE per pixel", 1.0)]),
                      "lam", "Test accuracy and reconstruction MSE vs lam (median over seeds, band = seed range).")
        report.figure(lam_figure(curve_table, key, [("probe_accuracy", "probe accuracy (%)", 100.0), ("probe_mse", "fresh-decoder MSE", 1.0)]),
                      "lam_probes", "Latent probes vs lam.")
        report.section("Reconstructions across lam")
        for dataset in sorted(table["dataset"].unique()):
            originals = _originals(config, dataset)
            for complexity, latent in config.get("grid_slices", []):
                fig = grid_figure(frame, originals, dataset, complexity, int(latent))
                if fig is not None:
                    report.figure(fig, f"grid_{dataset}_{complexity}_d{latent}",
                                  f"{dataset}, {complexity}, d={latent}: reconstructions of one test image per class (seed {config['seeds'][0]}).")
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
