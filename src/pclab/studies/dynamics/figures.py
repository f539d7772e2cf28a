"""The dynamics study's figures (matplotlib figures; the report embeds and saves them).

Curves show the median over every (seed, test batch) pair with the interquartile range shaded;
a dashed vertical line marks the trained horizon ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from ..report import rule_colour  # noqa: E402
from .analysis import RULE_ORDER  # noqa: E402

COLORS = {rule: rule_colour(rule) for rule in RULE_ORDER if rule != "bp-through-inference-truncated"}
COLORS["bp-through-inference-truncated"] = "#8c564b"  # brown: distinct from every rule colour of the reports


def _rules(frame: pd.DataFrame) -> list[str]:
    present = set(frame["rule"])
    return [r for r in RULE_ORDER if r in present]


def _curve(ax, frame: pd.DataFrame, quantity: str, T: int, log: bool = False) -> bool:
    """Median and IQR per rule of ``quantity`` vs step from a :func:`analysis.band` frame."""
    drawn = False
    for rule in _rules(frame):
        g = frame[(frame["rule"] == rule) & (frame["quantity"] == quantity)].sort_values("step")
        if g.empty or g["median"].isna().all():
            continue
        ax.plot(g["step"], g["median"], color=COLORS[rule], label=rule)
        ax.fill_between(g["step"], g["q25"], g["q75"], color=COLORS[rule], alpha=0.25, linewidth=0)
        drawn = True
    if drawn:
        ax.axvline(T, color="grey", linestyle="--", linewidth=1)
        if log:
            ax.set_yscale("log")
            # plain tick labels ("5.4", not "5.4 x 10^0") where the axis spans less than a decade
            ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.grid(alpha=0.3)
    return drawn


def _panels(steps: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(steps["family"], steps["probe"])))


def curves(steps: pd.DataFrame, T: int, quantities: Sequence[tuple[str, str, bool]]) -> plt.Figure:
    """One row per (family, probe), one column per ``(quantity, y label, log scale)``."""
    panels = _panels(steps)
    fig, axes = plt.subplots(len(panels), len(quantities), figsize=(3.4 * len(quantities), 2.6 * len(panels)),
                             squeeze=False, constrained_layout=True)
    for i, (family, probe) in enumerate(panels):
        sub = steps[(steps["family"] == family) & (steps["probe"] == probe)]
        for j, (quantity, label, log) in enumerate(quantities):
            ax = axes[i, j]
            if not _curve(ax, sub, quantity, T, log):
                ax.set_axis_off()
                continue
            ax.set_title(f"{family} / {probe}", fontsize=9)
            ax.set_xlabel("inference step t")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
    return fig


def energy_row(steps: pd.DataFrame, T: int) -> plt.Figure:
    """The key figure: total energy vs inference step, one panel per (family, probe) side by side
    (up to four a row), one colour per training rule; median over seeds x batches, IQR shaded."""
    panels = _panels(steps)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(10.4, 2.6 * cols + 0.4), 2.5 * rows + 0.5), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (family, probe) in zip(axes.flat, panels):
        sub = steps[(steps["family"] == family) & (steps["probe"] == probe)]
        _curve(ax, sub, "energy", T, log=True)
        ax.set_title(f"{family} / {probe}", fontsize=9)
        ax.set_xlabel("inference step t", fontsize=8)
        ax.set_ylabel("total energy E (energy units, log)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:len(panels)]:  # a rule missing from the first panel (bp has no generative model)
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8, frameon=False)
    return fig


def readout_curves(steps: pd.DataFrame, T: int) -> plt.Figure:
    """Accuracy of the label read-out and reconstruction MSE vs step, for every panel that has them."""
    items = []
    for family, probe in _panels(steps):
        sub = steps[(steps["family"] == family) & (steps["probe"] == probe)]
        for quantity, label in (("accuracy", "label accuracy (fraction)"), ("recon_mse", "reconstruction MSE (pixel scale^2)")):
            if sub[sub["quantity"] == quantity]["median"].notna().any():
                items.append((family, probe, quantity, label, sub))
    cols = min(3, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(items):]:
        ax.set_axis_off()
    for ax, (family, probe, quantity, label, sub) in zip(axes.flat, items):
        _curve(ax, sub, quantity, T, log=quantity == "recon_mse")
        ax.set_title(f"{family} / {probe}", fontsize=9)
        ax.set_xlabel("inference step t")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return fig


def heatmap(nodes: pd.DataFrame, family: str, probe: str, T: int, quantity: str = "energy") -> plt.Figure:
    """Layer x step maps of the median ``quantity`` (log colour scale), one panel per rule."""
    sub = nodes[(nodes["family"] == family) & (nodes["probe"] == probe) & (nodes["quantity"] == quantity)]
    rules = _rules(sub)
    order = list(dict.fromkeys(sub["node"]))
    positive = sub["median"][sub["median"] > 0]
    norm = LogNorm(vmin=max(float(positive.min()), float(positive.max()) * 1e-8), vmax=float(positive.max())) if len(positive) else None
    fig, axes = plt.subplots(1, len(rules), figsize=(3.4 * len(rules), 0.5 * len(order) + 1.8), squeeze=False,
                             constrained_layout=True)
    image = None
    for ax, rule in zip(axes[0], rules):
        table = sub[sub["rule"] == rule].pivot(index="node", columns="step", values="median").reindex(order)
        data = np.ma.masked_where(~(table.to_numpy(dtype=float) > 0), table.to_numpy(dtype=float))
        image = ax.imshow(data, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest", origin="lower")
        ax.set_yticks(range(len(order)), order)
        ax.set_xlabel("inference step t")
        ax.set_ylabel("node (root side at the bottom)")
        ax.axvline(T, color="white", linestyle="--", linewidth=1)
        ax.set_title(rule, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=f"median {quantity.replace('_', ' ')} (log scale)")
    fig.suptitle(f"{family} / {probe}: {quantity.replace('_', ' ')} per node and step", fontsize=10)
    return fig


def image_grid(images: dict[str, dict[str, np.ndarray]], shape: tuple[int, int], title: str) -> plt.Figure:
    """Decoded images along the steps: for each sample, one row per rule; first column the target.

    ``images``: rule -> ``{"target": (k, pixels), "decoded": (steps, k, pixels), "steps": (steps,)}``.
    """
    rules = [r for r in RULE_ORDER if r in images]
    first = images[rules[0]]
    steps, k = first["steps"], first["target"].shape[0]
    rows, cols = k * len(rules), len(steps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols + 1.2, 0.9 * rows + 0.4), squeeze=False)
    lo = min(float(first["target"].min()), min(float(images[r]["decoded"].min()) for r in rules))
    hi = max(float(first["target"].max()), max(float(images[r]["decoded"].max()) for r in rules))
    for s in range(k):
        for i, rule in enumerate(rules):
            row = s * len(rules) + i
            axes[row, 0].imshow(first["target"][s].reshape(shape), cmap="gray", vmin=lo, vmax=hi)
            for j, _ in enumerate(steps):
                axes[row, j + 1].imshow(images[rule]["decoded"][j, s].reshape(shape), cmap="gray", vmin=lo, vmax=hi)
            axes[row, 0].set_ylabel(rule, fontsize=6, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("target", fontsize=7)
    for j, step in enumerate(steps):
        axes[0, j + 1].set_title(f"t={int(step)}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def alignment_curves(align: pd.DataFrame) -> plt.Figure:
    """Per family: cosine and norm ratio of the PC update vs the backprop gradient over training,
    one colour per layer, solid against the through-inference reference, dotted against the
    feed-forward one (median over seeds, min-max shaded)."""
    families = list(dict.fromkeys(align["family"]))
    fig, axes = plt.subplots(len(families), 2, figsize=(9, 2.9 * len(families)), squeeze=False, constrained_layout=True)
    for i, family in enumerate(families):
        sub = align[align["family"] == family]
        for j, (quantity, label) in enumerate((("cosine", "cosine(PC update, BP gradient)"), ("norm_ratio", "||PC update|| / ||BP gradient||"))):
            ax = axes[i, j]
            colours: dict[str, str] = {}
            for (reference, layer), g in sub.groupby(["reference", "layer"], sort=False):
                stats = g.groupby("progress")[quantity].agg(["median", "min", "max"]).reset_index()
                style = "-" if reference == "inference" else ":"
                line, = ax.plot(stats["progress"] * 100, stats["median"], style, marker="o", markersize=3,
                                color=colours.get(layer), label=f"{layer} vs {reference}")
                colours[layer] = line.get_color()
                ax.fill_between(stats["progress"] * 100, stats["min"], stats["max"], color=line.get_color(), alpha=0.15, linewidth=0)
            if quantity == "norm_ratio":
                ax.set_yscale("log")
            ax.set_xlabel("training progress (% of batches)")
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(f"{family}: PC-trained network", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return fig


def horizon(band: pd.DataFrame, factor: int) -> plt.Figure:
    """The horizon question: task metric vs test-time steps as a multiple of ``T_train`` (0 to
    ``factor``), one panel per (family, probe, metric), one colour per rule, darker for a longer
    ``T_train`` (median over seeds x test batches)."""
    items = []
    for family, probe in dict.fromkeys(zip(band["family"], band["probe"])):
        if probe == "label-clamped":  # the true label is clamped: its read-out is no test accuracy
            continue
        for quantity, label in (("recon_mse", "reconstruction MSE (log)"), ("accuracy", "label accuracy (fraction)")):
            sub = band[(band["family"] == family) & (band["probe"] == probe) & (band["quantity"] == quantity)]
            if sub["median"].notna().any():
                items.append((family, probe, quantity, label, sub))
    cols = min(3, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(items):]:
        ax.set_axis_off()
    for ax, (family, probe, quantity, label, sub) in zip(axes.flat, items):
        horizons = sorted(set(sub["T"]))
        for rule in _rules(sub):
            for i, T in enumerate(horizons):
                g = sub[(sub["rule"] == rule) & (sub["T"] == T)].sort_values("step")
                if g.empty:
                    continue
                alpha = 0.35 + 0.65 * (i + 1) / len(horizons)
                ax.plot(g["step"] / T, g["median"], color=COLORS[rule], alpha=alpha, linewidth=0.8 + 0.6 * i,
                        label=f"{rule}, T={T}")
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, factor)
        if quantity == "recon_mse":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set_title(f"{family} / {probe}", fontsize=9)
        ax.set_xlabel("T_test / T_train")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5, ncols=2)
    return fig
