"""The trade-off study's report: tidy table, Pareto fronts, curves vs lam, reconstruction grids and
a summary written from the run's own numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats

from ..report import Report
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
    """Mean of paired differences (one per seed) with its ``confidence`` t-interval and the verdict:
    ``softens`` (interval above 0: the front dominates more area), ``harsher`` (below 0), ``no
    detectable change`` (the interval holds 0), ``cannot tell, n = 1`` (one pair: no interval)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean_change": mean, "ci_low": float("nan"), "ci_high": float("nan"), "verdict": f"cannot tell, n = {n}"}
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    low, high = mean - half, mean + half
    verdict = "softens" if low > 0 else "harsher" if high < 0 else "no detectable change"
    return {"n": n, "mean_change": mean, "ci_low": low, "ci_high": high, "verdict": verdict}


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
def _colours(values: list[Any]) -> dict[Any, Any]:
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(1, len(values) - 1) * 0.9) for i, v in enumerate(values)}


def _complexities(table: pd.DataFrame) -> list[str]:
    return sorted(table["complexity"].unique(), key=_COMPLEXITY_ORDER.get)


def pareto_figure(curve_table: pd.DataFrame, dataset: str, accuracy: str, error: str, what: str, reference: float | None = None) -> plt.Figure:
    """Accuracy vs MSE per way (rows) and complexity (columns), every panel on the same fixed axes;
    a line per d through the lams; filled markers are Pareto-optimal within their (way, complexity,
    d) front; bars span seeds (min to max); dotted lines mark the reference point of the hypervolume."""
    data = curve_table[curve_table["dataset"] == dataset]
    ways, comps = [w for w in WAY_LABELS if w in set(data["way"])], _complexities(data)
    latents = sorted(data["latent"].unique())
    colour = _colours(latents)
    right = 1.05 * float(np.nanmax([data[f"{error}_max"].max(), reference or 0.0]))
    fig, axes = plt.subplots(len(ways), len(comps), figsize=(4.2 * len(comps), 3.4 * len(ways)), squeeze=False)
    for i, way in enumerate(ways):
        for j, comp in enumerate(comps):
            ax = axes[i, j]
            for d in latents:
                g = data[(data["way"] == way) & (data["complexity"] == comp) & (data["latent"] == d)].sort_values("lam")
                if g.empty:
                    continue
                optimal = mark_pareto(g, SLICE, accuracy, error, "front")["front"].to_numpy()
                ax.errorbar(g[error], g[accuracy],
                            xerr=[g[error] - g[f"{error}_min"], g[f"{error}_max"] - g[error]],
                            yerr=[g[accuracy] - g[f"{accuracy}_min"], g[f"{accuracy}_max"] - g[accuracy]],
                            color=colour[d], lw=1, alpha=0.6, label=f"d={d}")
                ax.scatter(g[error][optimal], g[accuracy][optimal], color=colour[d], edgecolor="k", s=40, zorder=3)
                ax.scatter(g[error][~optimal], g[accuracy][~optimal], facecolor="white", edgecolor=colour[d], s=30, zorder=3)
                for e, a, lam in zip(g[error], g[accuracy], g["lam"]):
                    ax.annotate(f"{lam:g}", (e, a), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour[d])
            if reference is not None:
                ax.axvline(reference, color="grey", ls=":", lw=1)
                ax.axhline(REFERENCE_ACCURACY, color="grey", ls=":", lw=1)
            ax.set_xlim(0, right)
            ax.set_ylim(0, 1)
            ax.set_title(f"{WAY_LABELS[way]}\n{comp}", fontsize=9)
            ax.set_xlabel(f"{what} reconstruction MSE per pixel (pixels in [-1, 1])")
            ax.set_ylabel(f"{what} accuracy (fraction correct)")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lam_figure(curve_table: pd.DataFrame, dataset: str, metrics: list[tuple[str, str]]) -> plt.Figure:
    """Metrics (rows) vs lam per way (columns); a line per (complexity, d): median over seeds with a
    min-max band."""
    data = curve_table[curve_table["dataset"] == dataset]
    ways = [w for w in WAY_LABELS if w in set(data["way"])]
    slices = sorted({(c, d) for c, d in zip(data["complexity"], data["latent"])}, key=lambda s: (_COMPLEXITY_ORDER[s[0]], s[1]))
    colour = _colours(slices)
    styles = {c: s for c, s in zip(["small", "medium", "large"], ["-", "--", ":"])}
    fig, axes = plt.subplots(len(metrics), len(ways), figsize=(4.2 * len(ways), 3.0 * len(metrics)), squeeze=False, sharey="row")
    for j, way in enumerate(ways):
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i, j]
            for comp, d in slices:
                g = data[(data["way"] == way) & (data["complexity"] == comp) & (data["latent"] == d)].sort_values("lam")
                if g.empty:
                    continue
                ax.plot(g["lam"], g[metric], styles[comp], color=colour[(comp, d)], marker="o", ms=3, label=f"{comp}, d={d}")
                ax.fill_between(g["lam"], g[f"{metric}_min"], g[f"{metric}_max"], color=colour[(comp, d)], alpha=0.15)
            ax.set_xlabel("lam (weight of classification)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(WAY_LABELS[way], fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
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
    fig, axes = plt.subplots(1, len(ways), figsize=(4.4 * len(ways), 0.5 * len(lams) + 1.2), squeeze=False)
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
        "Hypervolume: the area of the accuracy-vs-MSE plane a front dominates, as a fraction of the box between a fixed "
        "reference point per data set (accuracy 10 %, the MSE of predicting the mean training image: "
        + ", ".join(f"{k} {v:.3f}" for k, v in references.items())
        + ") and the ideal point (accuracy 100 %, MSE 0); 0 = no better than the reference, 1 = ideal. The scale is the same "
        "for every front, so a front that moves towards the ideal point never loses area. Change = mean over seeds of the "
        "paired difference (same seed, larger minus smaller d or model) with a 95 % t-interval; 'softens' / 'harsher' only "
        "where the interval excludes 0."
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
    lines.append(
        "Trade-off gap: for each curve over lam, how far its best compromise is from the ideal point (the "
        "curve's best accuracy and best MSE at once): the smallest, over lam, of max(relative accuracy loss, "
        "relative MSE excess); 0 = no trade-off, 0.05 = 5 % worse in one of the two. 'task' uses "
        "the model's own accuracy and reconstruction MSE; 'latent' uses the probes (linear-probe accuracy, "
        "fresh-decoder MSE). The gap is relative to each curve's own best values: a front that moves up and "
        "left at every lam but whose pure-reconstruction end improves most counts as harsher, so the verdict on the "
        "paper's claim below comes from the hypervolume, not from this gap."
    )
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


def build_report(config: dict[str, Any], frame: pd.DataFrame, failed: list[dict[str, Any]], out: Path) -> Path:
    """Write the study's report under ``out``; returns the path of ``report.html``."""
    report = Report("pclab study: the classification-reconstruction trade-off", out, config)
    report.section("What was run", config.get("description", "") + "\n\n" + _METHODS)
    table = tidy_table(frame)
    if table.empty:
        report.summary(["No run finished."])
    else:
        curve_table = curves(table)
        gap_table = gaps(curve_table)
        hv_table = hypervolumes(table)
        changes = hypervolume_changes(hv_table)
        report.summary([*hypervolume_lines(changes, reference_errors(table)), *relaxation_lines(curve_table),
                        *summary_lines(gap_table, curve_table)])
        report.table(table, "runs", "Every run (one row each; pareto_optimal within dataset, way, complexity, d and seed)")
        report.table(hv_table, "hypervolumes", "Per front (one seed): hypervolume of the task and latent fronts against the fixed reference point")
        report.table(changes, "hypervolume_changes", "Hypervolume change with d and model size: mean paired difference over seeds, 95 % t-interval, verdict")
        report.table(gap_table, "tradeoff_gaps", "Per curve: best accuracy / MSE and the trade-off gap (task and latent)")
        report.table(curve_table, "curves", "Median (min, max) over seeds per lam; pareto_optimal of the medians")
        for dataset in sorted(table["dataset"].unique()):
            report.section(f"{dataset}: Pareto fronts")
            reference = reference_errors(table)[dataset]
            report.figure(pareto_figure(curve_table, dataset, "test_accuracy", "recon_mse", "test", reference), f"pareto_{dataset}",
                          f"{dataset}: test accuracy vs reconstruction MSE, one curve per d through the lams (numbers = lam); filled = "
                          "Pareto-optimal within the curve; bars = seed range; dotted = the hypervolume's reference point.")
            report.figure(pareto_figure(curve_table, dataset, "probe_accuracy", "probe_mse", "probe", reference), f"pareto_probes_{dataset}",
                          f"{dataset}: what the latent holds -- linear-probe accuracy vs fresh-decoder MSE, one curve per d.")
            report.section(f"{dataset}: trade-off curves vs lam")
            report.figure(lam_figure(curve_table, dataset, [("test_accuracy", "test accuracy"), ("recon_mse", "recon MSE")]),
                          f"lam_{dataset}", f"{dataset}: test accuracy and reconstruction MSE vs lam (median, band = seed range).")
            report.figure(lam_figure(curve_table, dataset, [("probe_accuracy", "linear-probe accuracy"), ("probe_mse", "fresh-decoder MSE")]),
                          f"lam_probes_{dataset}", f"{dataset}: latent probes vs lam.")
            report.section(f"{dataset}: reconstructions across lam")
            originals = _originals(config, dataset)
            for complexity, latent in config.get("grid_slices", []):
                fig = grid_figure(frame, originals, dataset, complexity, int(latent))
                if fig is not None:
                    report.figure(fig, f"grid_{dataset}_{complexity}_d{latent}",
                                  f"{dataset}, {complexity}, d={latent}: reconstructions of one test image per class (seed {config['seeds'][0]}).")
    if failed:
        report.table(pd.DataFrame(failed), "failures", "Failed runs (recorded, not retried)")
    else:
        report.text("Failed runs: none.")
    if not frame.empty and "trial_seconds" in frame:
        report.text(f"Run time per run: median {frame['trial_seconds'].median():.1f} s, max {frame['trial_seconds'].max():.1f} s, "
                    f"total {frame['trial_seconds'].sum():.0f} s of CPU worker time over {len(frame)} runs.")
    return report.write()
