"""The clarity report: tidy tables from the trial records, figures, and a summary from the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ...io import load_torch
from ...sweep import trial_id
from ..report import Report, rule_colour, rule_name
from ..stats import describe, mean_interval, paired_difference

METRICS = ["m_g", "m_r", "m_i", "m_i_perturbation", "embedding_norm", "psnr", "ssim"]
ROUTE_NAMES = {"gradient": "gradient descent on the input (L1 embedding loss)",
               "gradient-relaxed": "gradient descent on the input through the model's relaxation (generative layers)",
               "pcn": "PCN relaxation with the layer clamped"}
PROCEDURE_NAMES = {"pclab": "pclab's procedure (Adam, step annealed to 0)",
                   "badger": "Badger's procedure (plain gradient descent, step 0.1, 500 steps, N(0.7, 0.05^2) start)"}


# ---------------------------------------------------------------------------- tables
def per_image_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (trial, layer, route, test image) with Badger's metrics, PSNR and SSIM."""
    rows = []
    for rec in records:
        if rec["status"] != "ok":
            continue
        p, r = rec["params"], rec["result"]
        if p["kind"] == "model":
            info = {"test": "models", "model": r["model"], "arch": r["arch"], "rule": r["rule"], "trained": r["trained"],
                    "generative_path": r["generative_path"], "seed": p["seed"]}
        else:
            rule = p.get("rule", "untrained")
            info = {"test": "width", "model": f"width {p['width']} {rule}", "arch": "width test", "rule": rule,
                    "trained": rule != "untrained", "generative_path": False, "seed": p["seed"]}
        for layer in r["layers"]:
            base = {k: layer[k] for k in ("layer", "depth", "width", "input_size", "route")}
            base["procedure"] = layer.get("procedure", "pclab")
            for i in range(len(layer["m_i"])):
                rows.append({**info, **base, "image": i, **{m: layer[m][i] for m in METRICS}})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["m_g_below_m_r"] = frame["m_g"] < frame["m_r"]
        frame["m_i_relative"] = frame["m_i"] / frame["m_i_perturbation"]
    return frame


def _q(p: float):
    def f(s: pd.Series) -> float:
        return float(np.quantile(s, p))
    f.__name__ = f"q{int(p * 100)}"
    return f


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer, route): median and quartiles over test images (and seeds) of every metric."""
    keys = ["test", "arch", "model", "rule", "trained", "layer", "depth", "width", "input_size", "route", "procedure"]
    groups = frame.groupby(keys, sort=False)
    out = groups.size().rename("n").reset_index()
    for m in ["m_g", "m_r", "m_i", "m_i_perturbation", "psnr", "ssim"]:
        stats = groups[m].agg(["median", _q(0.25), _q(0.75)]).reset_index(drop=True)
        out[f"{m}_median"], out[f"{m}_q25"], out[f"{m}_q75"] = stats["median"], stats["q25"], stats["q75"]
    out["frac_m_g_below_m_r"] = groups["m_g_below_m_r"].mean().reset_index(drop=True)
    return out


def models_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The models studied: rule, selected epoch, validation and test metrics, run directory, trial cost."""
    rows = []
    for rec in records:
        if rec["status"] != "ok" or rec["params"]["kind"] != "model":
            continue
        r = rec["result"]
        selection = r.get("selection") or {}
        rows.append({"model": r["model"], "arch": r["arch"], "kind": r["kind"], "rule": r["rule"], "seed": rec["params"]["seed"],
                     "dataset": r["dataset"], "epochs": r["epochs"] if r["trained"] else 0, "train_subset": r["train_subset"],
                     "best_epoch": selection.get("best_epoch"), "selected_by": selection.get("metric"),
                     "validation": selection.get("validation"), "test_accuracy": r["test_accuracy"], "recon_mse": r.get("recon_mse"),
                     "procedure": r.get("procedure", "pclab"), "train_cpu_seconds": round(r.get("train_cpu_seconds", float("nan")), 1),
                     "generative_path": r["generative_path"],
                     "layers": ", ".join(dict.fromkeys(layer["layer"] for layer in r["layers"])),
                     "amortiser_change": r.get("amortiser_change"), "trial_seconds": round(rec["seconds"], 1),
                     "cpu_seconds": round(r.get("cpu_seconds", float("nan")), 1), "run_dir": r["run_dir"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- figures
def _style(rule: str) -> dict[str, Any]:
    try:
        colour = rule_colour(rule)
    except KeyError:  # a rule the palette does not know (a run directory's own)
        colour = "black"
    return {"color": colour, "linestyle": "--" if rule == "untrained" else "-"}


def image_grid(records: list[dict[str, Any]], out: Path, route: str, count: int, seed: int) -> plt.Figure | None:
    """Per architecture a block of rows -- the test images, then the untrained net (the reference row),
    then each trained model -- and one column per layer (shallow to deep); each cell ``count`` test
    images side by side. Drawn as one mosaic (gaps of grey) so that large grids stay cheap to render."""
    blocks: dict[str, list[tuple[str, dict[str, Any], dict[str, int]]]] = {}
    for rec in records:
        p = rec["params"]
        if rec["status"] != "ok" or p["kind"] != "model" or p["seed"] != seed:
            continue
        path = out / "artifacts" / trial_id(p) / "reconstructions.pt"
        if not path.exists():
            continue
        layers = {row["layer"]: row["depth"] for row in rec["result"]["layers"] if row["route"] == route}
        if layers:
            blocks.setdefault(rec["result"]["arch"], []).append((rec["result"]["rule"], load_torch(path), layers))
    if not blocks:
        return None
    for rows in blocks.values():
        rows.sort(key=lambda r: r[0] != "untrained")  # the untrained net first: the reference row
    first = next(iter(blocks.values()))[0][1]["targets"]
    h, w = first.shape[-2:]
    count = min(count, len(first))
    gap = max(1, h // 7)
    cell_w = count * w + (count - 1)
    columns = max(len(r[0][2]) for r in blocks.values())
    height = sum(len(rows) + 1 for rows in blocks.values())
    mosaic = np.full((height * (h + gap) + gap * len(blocks), columns * (cell_w + gap)), 0.5, dtype=np.float32)
    row_labels, layer_labels = [], []
    y0 = 0
    for arch, rows in blocks.items():
        layers = sorted(rows[0][2], key=lambda n: rows[0][2][n])
        entries = [(f"{arch}: test images", rows[0][1]["targets"], None)]
        entries += [(f"{arch}: {rule}", pictures[route], layers) for rule, pictures, _ in rows]
        for label, images, names in entries:
            for j in range(len(layers)):
                x0 = j * (cell_w + gap)
                source = images if names is None else images.get(layers[j])
                if source is None or (names is None and j > 0):
                    continue
                for k in range(count):
                    mosaic[y0:y0 + h, x0 + k * (w + 1):x0 + k * (w + 1) + w] = source[k].float().mean(0).numpy()
                if names is not None and label.endswith(rows[0][0]):
                    layer_labels.append((x0, y0, layers[j]))
            row_labels.append((y0 + h / 2, label))
            y0 += h + gap
        y0 += gap
    fig, ax = plt.subplots(figsize=(min(1.4 * columns * count / 2 + 2.4, 10.4), 0.55 * height + 0.8))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for x0, y0_, layer in layer_labels:
        ax.text(x0 + 0.5, y0_ + 0.5, layer, color="yellow", fontsize=6, va="top", ha="left")
    ax.set_xticks([j * (cell_w + gap) + cell_w / 2 for j in range(columns)])
    ax.set_xticklabels([f"layer {j + 1}" for j in range(columns)], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([y for y, _ in row_labels])
    ax.set_yticklabels([label for _, label in row_labels], fontsize=7)
    ax.set_title(f"Reconstructions ({ROUTE_NAMES[route]}); columns: layers shallow to deep; pixels in [0, 1]", fontsize=8, pad=18)
    return fig


def depth_curves(table: pd.DataFrame, route: str) -> plt.Figure | None:
    """Per architecture (rows): m_i, m_g / m_r, PSNR and SSIM against depth, median and IQR bands."""
    part = table[(table["test"] == "models") & (table["route"] == route)]
    if part.empty:
        return None
    archs = list(dict.fromkeys(part["arch"]))
    panels = [("m_i", "input distance m_i (L2, unit pixels)"), ("m_g", "embedding distance reached m_g (L2)"),
              ("psnr", "PSNR (dB)"), ("ssim", "SSIM")]
    fig, axes = plt.subplots(len(archs), len(panels), figsize=(10.4, 2.4 * len(archs) + 0.4), squeeze=False)
    for i, arch in enumerate(archs):
        for j, (metric, label) in enumerate(panels):
            ax = axes[i, j]
            for model, rows in part[part["arch"] == arch].groupby("model", sort=False):
                rows = rows.sort_values("depth")
                style = _style(rows["rule"].iloc[0])
                ax.plot(rows["depth"], rows[f"{metric}_median"], marker="o", label=model, **style)
                ax.fill_between(rows["depth"], rows[f"{metric}_q25"], rows[f"{metric}_q75"], color=style["color"], alpha=0.15)
                if metric == "m_g":
                    ax.plot(rows["depth"], rows["m_r_median"], marker="x", color=style["color"], linestyle=":", alpha=0.7)
            ax.set_xlabel("layer depth (maps from the image)")
            ax.set_ylabel(label, fontsize=8)
            ax.set_xticks(sorted(set(part[part["arch"] == arch]["depth"])))
            if metric == "m_g":
                ax.set_yscale("log")
            ax.set_title(f"{arch}", fontsize=9)
        axes[i, 0].legend(fontsize=7)
    fig.suptitle(f"Clarity vs depth, {ROUTE_NAMES[route]}: median over test images, band = interquartile range; "
                 "dotted x = m_r (perturbed input)", fontsize=9)
    fig.subplots_adjust(hspace=0.45, wspace=0.35)
    return fig


def key_figure(table: pd.DataFrame) -> plt.Figure | None:
    """Median input distance m_i (gradient route) against layer depth, one panel per architecture,
    one line per model in its rule's colour (dashed: untrained), IQR band over test images."""
    part = table[(table["test"] == "models") & (table["route"] == "gradient")]
    if part.empty:
        return None
    archs = list(dict.fromkeys(part["arch"]))
    cols = min(4, len(archs))
    rows = -(-len(archs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(10.4, 2.6 * cols + 0.6), 2.5 * rows + 0.3), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(archs):]:
        ax.set_axis_off()
    for ax, arch in zip(axes.flat, archs):
        for _model, rows_ in part[part["arch"] == arch].groupby("model", sort=False):
            rows_ = rows_.sort_values("depth")
            style = _style(rows_["rule"].iloc[0])
            ax.plot(rows_["depth"], rows_["m_i_median"], marker="o", ms=3, label=rows_["rule"].iloc[0], **style)
            ax.fill_between(rows_["depth"], rows_["m_i_q25"], rows_["m_i_q75"], color=style["color"], alpha=0.12)
        ax.set_title(arch, fontsize=9)
        ax.set_xticks(sorted(set(part[part["arch"] == arch]["depth"])))
        ax.set_xlabel("layer depth (maps from the image)", fontsize=8)
        ax.set_ylabel("m_i (L2, pixels in [0, 1])", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def width_figure(table: pd.DataFrame) -> plt.Figure | None:
    """Per inversion procedure (rows): m_i, m_g vs m_r and SSIM of the hidden layer of one-hidden-layer
    chains against its width (gradient route), one line per training rule (dashed: untrained)."""
    part = table[(table["test"] == "width") & (table["route"] == "gradient")]
    if part.empty:
        return None
    procedures = list(dict.fromkeys(part["procedure"]))
    fig, axes = plt.subplots(len(procedures), 3, figsize=(10.4, 2.8 * len(procedures) + 0.4), squeeze=False)
    labels = ["input distance m_i (L2, unit pixels)", "embedding distance (L2): m_g -o-, m_r :x:", "SSIM"]
    for i, procedure in enumerate(procedures):
        for rule, rows in part[part["procedure"] == procedure].groupby("rule", sort=False):
            rows = rows.sort_values("width")
            style = _style(rule)
            for ax, metric in zip(axes[i], ["m_i", "m_g", "ssim"]):
                ax.plot(rows["width"], rows[f"{metric}_median"], marker="o", label=rule, **style)
                ax.fill_between(rows["width"], rows[f"{metric}_q25"], rows[f"{metric}_q75"], color=style["color"], alpha=0.12)
            axes[i, 1].plot(rows["width"], rows["m_r_median"], marker="x", linestyle=":", color=style["color"])
        for ax, label in zip(axes[i], labels):
            ax.axvline(part["input_size"].iloc[0], color="k", linestyle="--", linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("hidden width (units)")
            ax.set_ylabel(label, fontsize=7)
            ax.set_title(f"{procedure} procedure", fontsize=8)
        axes[i, 1].set_yscale("log")
        axes[i, 0].legend(fontsize=7)
    fig.suptitle("Width test: [input, width, classes] tanh chains, reconstruction from the hidden layer (median, IQR band over "
                 "test images; dashed vertical line: input size)\n" + "; ".join(PROCEDURE_NAMES.get(p, p) for p in procedures), fontsize=8)
    fig.subplots_adjust(wspace=0.3, hspace=0.55)
    return fig


# ---------------------------------------------------------------------------- summary
def _fmt(v: float) -> str:
    return f"{v:.3g}"


def summary_lines(table: pd.DataFrame, models: pd.DataFrame, failed: int) -> list[str]:
    """Sentences from this run's numbers (gradient route unless said otherwise)."""
    lines: list[str] = []
    grad = table[(table["route"] == "gradient") & (table["test"] == "models")]
    lines += _depth_sentences(grad)
    lines += _width_sentences(table[table["test"] == "width"])
    lines += _training_sentences(grad)
    lines += _route_sentences(table[table["test"] == "models"], models)
    if not models.empty and models["test_accuracy"].notna().any():
        trained = models[models["rule"] != "untrained"].dropna(subset=["test_accuracy"])
        if not trained.empty:
            acc = trained.groupby("model")["test_accuracy"].median()
            lines.append("Test accuracy of the trained models (feed-forward read-out): "
                         + "; ".join(f"{m} {100 * a:.1f} %" for m, a in acc.items()) + ".")
    if not models.empty and "amortiser_change" in models:
        frozen = models[(models["rule"] != "untrained") & (models["amortiser_change"] == 0)]
        for _, row in frozen.iterrows():
            lines.append(f"{row['model']}: its encoder (the amortiser giving the latent's first value) did not change in training "
                         f"(largest weight change 0): rule {row['rule']} does not train amortisers, so the gradient route's "
                         "embedding of the latent is the untrained encoder's; the PCN route, which clamps the relaxed latent, "
                         "shows what training changed.")
    if failed:
        lines.append(f"{failed} trial(s) failed; see the failures table. Their models are missing from every figure.")
    return lines


def _depth_sentences(grad: pd.DataFrame) -> list[str]:
    lines = []
    for arch, rows in grad[grad["rule"] == "untrained"].groupby("arch", sort=False):
        rows = rows.sort_values("depth")
        if len(rows) < 2:
            continue
        first, last = rows.iloc[0], rows.iloc[-1]
        increasing = bool(np.all(np.diff(rows["m_i_median"].to_numpy()) >= 0))
        verdict = ("deeper layers reconstruct worse at every depth, as Badger (2022) reports" if increasing and last["m_i_median"] > first["m_i_median"]
                   else "Badger's 'deeper reconstructs worse' is not reproduced monotonically here")
        lines.append(
            f"Untrained {arch}: median input distance m_i goes from {_fmt(first['m_i_median'])} at {first['layer']} "
            f"(depth {first['depth']}, width {first['width']}) to {_fmt(last['m_i_median'])} at {last['layer']} "
            f"(depth {last['depth']}, width {last['width']}); " + verdict + "."
        )
        non_unique = rows[(rows["m_g_median"] < rows["m_r_median"]) & (rows["m_i_median"] > rows["m_i_perturbation_median"])]
        if not non_unique.empty:
            lines.append(
                f"Untrained {arch}, non-unique embeddings at {', '.join(non_unique['layer'])}: the reconstruction's embedding "
                f"is closer to the target's (median m_g {', '.join(_fmt(v) for v in non_unique['m_g_median'])}) than a perturbed "
                f"input's (m_r {', '.join(_fmt(v) for v in non_unique['m_r_median'])}), yet the image is farther away "
                f"(m_i {', '.join(_fmt(v) for v in non_unique['m_i_median'])} vs the perturbation's "
                f"{_fmt(non_unique['m_i_perturbation_median'].iloc[0])})."
            )
    return lines


def _width_sentences(width: pd.DataFrame) -> list[str]:
    lines = []
    for (procedure, rule), group in width[width["route"] == "gradient"].groupby(["procedure", "rule"], sort=False):
        lines += _width_group(group.sort_values("width"), f"{rule}, {procedure} procedure")
    return lines


def _width_group(rows: pd.DataFrame, what: str) -> list[str]:
    size = int(rows["input_size"].iloc[0])
    narrow, wide = rows[rows["width"] < size], rows[rows["width"] >= size]
    lines = []
    if not narrow.empty and not wide.empty:
        claim = narrow["m_i_median"].min() > wide["m_i_median"].max()
        lines.append(
            f"Width test ({size}-pixel input, tanh layer, {what}): widths below the input ({', '.join(map(str, narrow['width']))}) "
            f"leave median m_i {_fmt(narrow['m_i_median'].min())}-{_fmt(narrow['m_i_median'].max())} (SSIM "
            f"{_fmt(narrow['ssim_median'].min())}-{_fmt(narrow['ssim_median'].max())}); widths at or above it "
            f"({', '.join(map(str, wide['width']))}) reach {_fmt(wide['m_i_median'].min())}-{_fmt(wide['m_i_median'].max())} "
            f"(SSIM {_fmt(wide['ssim_median'].min())}-{_fmt(wide['ssim_median'].max())}). "
            + ("Every narrower layer is farther from its input than every wider one: layers narrower than the input are not inverted, as Badger reports."
               if claim else "The narrow and wide ranges overlap: the width claim is not cleanly reproduced at these settings.")
        )
        reached = narrow[narrow["m_g_median"] < narrow["m_r_median"]]
        if not reached.empty:
            lines.append(f"At widths {', '.join(map(str, reached['width']))} the embedding itself was matched (m_g < m_r) "
                         "while the image was not: the layer maps distinct inputs to the same embedding.")
    else:
        lines.append(f"Width test ({what}): only widths on one side of the {size}-pixel input were run; no comparison possible.")
    return lines


CHANGE = 0.10  # relative change of median m_i below which a layer counts as "about unchanged" by training
RESOLUTION = 0.05  # ... and absolute change below this fraction of the perturbation's input distance


def _verdict(before: float, after: float, resolution: float) -> str:
    change = (after - before) / before if before > 0 else 0.0
    if abs(after - before) < resolution:
        return f"about unchanged ({_fmt(before)} -> {_fmt(after)}, a change below {_fmt(resolution)} unit pixels)"
    if change <= -CHANGE:
        return f"clearer ({100 * change:+.0f} %)"
    if change >= CHANGE:
        return f"less clear ({100 * change:+.0f} %)"
    return f"about unchanged ({100 * change:+.0f} %, within {100 * CHANGE:.0f} %)"


def _training_sentences(grad: pd.DataFrame) -> list[str]:
    """Per architecture: median m_i per layer, untrained -> each rule; early vs late layers."""
    lines = []
    for arch, rows in grad.groupby("arch", sort=False):
        base = rows[rows["rule"] == "untrained"].groupby("layer")["m_i_median"].median()
        trained = rows[rows["rule"] != "untrained"]
        if base.empty or trained.empty:
            continue
        rules = list(dict.fromkeys(trained["rule"]))
        resolution = RESOLUTION * float(rows["m_i_perturbation_median"].median())
        after = trained.groupby(["rule", "layer"])["m_i_median"].median()
        depth = rows.groupby("layer")["depth"].first().sort_values()
        parts = [f"{layer} {_fmt(base[layer])} -> " + " / ".join(_fmt(after.get((r, layer), np.nan)) for r in rules)
                 for layer in depth.index if layer in base.index]
        lines.append(f"{arch}, median m_i by layer, untrained -> trained by {' / '.join(rules)}: " + "; ".join(parts) + ".")
        for layer in depth.index:
            if layer in base.index:
                verdicts = [f"{r}: {_verdict(base[layer], after[(r, layer)], resolution)}" for r in rules if (r, layer) in after.index]
                lines.append(f"{arch}, layer {layer} (depth {depth[layer]}) after training: " + ", ".join(verdicts) + ".")
        for i, r1 in enumerate(rules):
            for r2 in rules[i + 1:]:
                diff = max(abs(after.get((r1, layer), np.nan) / after.get((r2, layer), np.nan) - 1) for layer in depth.index)
                if diff < 1e-3:
                    lines.append(f"{arch}: {r1} and {r2} gave the same metrics (largest relative difference of median m_i "
                                 f"{diff:.1e}), as expected when only the image is clamped: a discriminative chain then starts "
                                 "relaxation at its energy minimum, its latents stay at the feed-forward values, and backprop "
                                 "through inference computes backprop's gradients.")
    lines.append(f"Badger (2022) reports that classification training sharpens early layers while late layers map inputs onto "
                 f"learned manifolds; the verdicts above call a change of median m_i real when it exceeds {100 * CHANGE:.0f} % "
                 f"and {100 * RESOLUTION:.0f} % of the input distance of the m_r perturbation.")
    return lines


def route_table(table: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Gradient route vs PCN route: median m_i and SSIM per model and layer."""
    part = table[table["test"] == "models"]
    keys = ["model", "arch", "rule", "layer", "depth"]
    cols = [*keys, "m_i_median", "ssim_median"]
    grad, pcn = part.loc[part["route"] == "gradient", cols], part.loc[part["route"] == "pcn", cols]
    joined = grad.merge(pcn, on=keys, how="outer", suffixes=("_gradient", "_pcn"))
    generative = set(models.loc[models["generative_path"].astype(bool), "model"]) if not models.empty else set()
    joined["pcn_route_reads"] = ["decoder's prediction of the image" if m in generative else "relaxed image root (no generative path)"
                                 for m in joined["model"]]
    return joined


def _route_sentences(models_rows: pd.DataFrame, models: pd.DataFrame) -> list[str]:
    if (models_rows["route"] == "pcn").sum() == 0:
        return []
    routes = route_table(models_rows.assign(test="models"), models).dropna(subset=["m_i_median_gradient", "m_i_median_pcn"])
    lines = []
    for reads, rows in routes.groupby("pcn_route_reads", sort=False):
        better = int((rows["m_i_median_pcn"] < rows["m_i_median_gradient"]).sum())
        ratio = float(np.median(rows["m_i_median_pcn"] / rows["m_i_median_gradient"]))
        names = ", ".join(dict.fromkeys(rows["model"]))
        lines.append(f"PCN route ({reads}; {names}): lower median m_i than the gradient route in {better} of {len(rows)} "
                     f"(model, layer) cells; median ratio m_i(PCN) / m_i(gradient) = {_fmt(ratio)}.")
    return lines


# ---------------------------------------------------------------------------- findings
QUESTION = ("Is the input more recoverable from the layers of a PC-trained network than from those of the same network "
            "trained by backprop or by backprop through inference, and does the width below which a layer cannot be "
            "inverted move with training?")

_MI = "mean input distance m_i (L2, pixels in [0, 1]; lower = more recoverable)"
COMPARISONS = (("pc", "bp"), ("pc", "bp-through-inference"))
"""The rule pairs the Findings compare layer by layer (first minus second)."""


def per_seed(frame: pd.DataFrame, metric: str = "m_i") -> pd.DataFrame:
    """Mean of ``metric`` over test images per (test, arch, model, rule, layer, depth, width, route,
    procedure, seed): seeds are the unit of replication, images within a seed are averaged."""
    keys = ["test", "arch", "model", "rule", "layer", "depth", "width", "route", "procedure", "seed"]
    return frame.groupby(keys, sort=False)[[metric, "m_i_perturbation"]].mean().reset_index()


def width_thresholds(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per (procedure, rule, seed): the smallest width from which on every wider layer of the grid is
    inverted -- mean m_i below the input distance of the m_r perturbation (a reconstruction as close
    as 5 % pixel noise) -- or NaN when no width of the grid is."""
    rows = []
    width = seeds[(seeds["test"] == "width") & (seeds["route"] == "gradient")]
    for (procedure, rule, seed), group in width.groupby(["procedure", "rule", "seed"], sort=False):
        group = group.sort_values("width")
        inverted = (group["m_i"] < group["m_i_perturbation"]).to_numpy()
        threshold = np.nan
        for i in range(len(group) - 1, -1, -1):
            if not inverted[i]:
                break
            threshold = float(group["width"].iloc[i])
        rows.append({"procedure": procedure, "rule": rule, "seed": seed, "threshold": threshold})
    return pd.DataFrame(rows, columns=["procedure", "rule", "seed", "threshold"])


def _paired(cells: pd.DataFrame, index: str, column: str, a: str, b: str):
    table = cells.pivot_table(index=index, columns=column, values="m_i", aggfunc="first")
    if a not in table or b not in table:
        return None
    both = table[[a, b]].dropna()
    return paired_difference(both[a].to_numpy(), both[b].to_numpy()) if len(both) else None


def findings(frame: pd.DataFrame, models: pd.DataFrame | None = None) -> list[str]:
    """Sentences from the per-image metrics, each a mean paired difference over seeds with its 95 %
    interval (:mod:`pclab.studies.stats`): per architecture and layer, each pair of :data:`COMPARISONS`
    (gradient route); the width threshold of each trained rule minus the untrained one (log2 units) per
    procedure; the generative direction (PCN route minus gradient descent through the relaxation); the
    accuracies of the compared models."""
    if frame.empty:
        return ["No trial finished; no finding."]
    seeds = per_seed(frame)
    grad = seeds[(seeds["route"] == "gradient") & (seeds["test"] == "models")]
    lines = []
    for a, b in COMPARISONS:
        parts = []
        for arch, rows in grad.groupby("arch", sort=False):
            if not {a, b} <= set(rows["rule"]):
                continue
            for layer, cells in sorted(rows.groupby("layer"), key=lambda kv: kv[1]["depth"].iloc[0]):
                interval = _paired(cells, "seed", "rule", a, b)
                if interval is not None:
                    parts.append(f"{arch} {layer} {describe(interval, unit='', digits=3, within=None)}")
        if parts:
            lines.append(f"{rule_name(a)} minus {rule_name(b)}, {_MI}, by architecture and layer: " + "; ".join(parts) + ".")
    thresholds = width_thresholds(seeds)
    for procedure, group in thresholds.groupby("procedure", sort=False):
        table = group.pivot_table(index="seed", columns="rule", values="threshold", aggfunc="first", dropna=False)
        if "untrained" not in table:
            continue
        base = table["untrained"]
        summary = ", ".join(f"{rule} {'/'.join('none' if np.isnan(v) else str(int(v)) for v in table[rule])}" for rule in table.columns)
        parts = []
        for rule in [r for r in table.columns if r != "untrained"]:
            both = pd.concat([np.log2(table[rule]), np.log2(base)], axis=1).dropna()
            interval = paired_difference(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy())
            parts.append(f"{rule_name(rule)} minus untrained {describe(interval, unit='octaves', digits=2, within=None)}")
        lines.append(f"Width threshold ({PROCEDURE_NAMES.get(procedure, procedure)}; smallest width from which every wider layer "
                     f"is inverted to within the m_r perturbation's input distance; per seed: {summary}): "
                     + ("; ".join(parts) if parts else "no trained rule in the width test") + ".")
    generative = seeds[(seeds["test"] == "models") & seeds["route"].isin(["gradient-relaxed", "pcn"])]
    parts = []
    for (model, layer), cells in generative.groupby(["model", "layer"], sort=False):
        interval = _paired(cells, "seed", "route", "pcn", "gradient-relaxed")
        if interval is not None and "gradient-relaxed" in set(cells["route"]):
            parts.append(f"{model} {layer} {describe(interval, unit='', digits=3, within=None)}")
    if parts:
        lines.append(f"Generative direction, the PCN's own reconstruction minus gradient descent on the input through the "
                     f"relaxation, {_MI}: " + "; ".join(parts) + ".")
    if models is not None and not models.empty:
        trained = models[(models["rule"] != "untrained") & models["test_accuracy"].notna()]
        parts = []
        for model, rows in trained.groupby("model", sort=False):
            acc = mean_interval(100 * rows["test_accuracy"]).clipped(0.0, 100.0)
            parts.append(f"{model} {acc.mean:.1f} %" + (f" (95 % CI {acc.low:.1f} to {acc.high:.1f}, n={acc.n} seeds)" if acc.computable
                                                        else f" (n={acc.n} seed)"))
        if parts:
            lines.append("Test accuracy of the models compared (weights of the best validation epoch, native read-out): "
                         + "; ".join(parts) + ".")
    return lines or ["No comparison possible in this run."]


# ---------------------------------------------------------------------------- the report
def write_report(records: list[dict[str, Any]], failed: list[dict[str, Any]], config: dict[str, Any], out: Path,
                 started: float | None = None) -> Path:
    """Aggregate the trial records into ``out/report.html`` with tables and figures (``started``: when the
    study call began); returns its path."""
    report = Report("Representation clarity: what each layer represents", out, config, question=QUESTION, study="clarity",
                    started=started)
    frame = per_image_frame(records)
    table = layer_table(frame) if not frame.empty else pd.DataFrame()
    models = models_table(records)
    report.findings(findings(frame, models))
    report.statements(summary_lines(table, models, len(failed)) if not table.empty else ["No trial finished; nothing to report."])
    cpu = sum(r["result"].get("cpu_seconds", 0.0) for r in records if r["status"] == "ok")
    wall = sum(r["seconds"] for r in records)
    cost = f"{cpu:.0f} CPU-seconds of trial processes, " if cpu > 0 else ""
    report.statements([f"Cost: {len(records)} trials, {cost}{wall:.0f} s summed trial wall time (trials run in parallel, "
                    "one CPU each; both include training the models)."])
    procedure = config.get("procedure", "pclab")
    report.statements([f"Inversion procedure of the models: {PROCEDURE_NAMES.get(procedure, procedure)}; width test: "
                       + ", ".join(PROCEDURE_NAMES.get(p, p) for p in config.get("width_test", {}).get("procedures", ["pclab"])) + "."])
    report.methods(
        "Training and selection",
        f"Every trained model gets the same budget: {config['training'].get('epochs')} epoch(s) of batch {config['training'].get('batch_size')} "
        f"on the training split minus a stratified validation part ({config['training'].get('validation')} of it); the weights of "
        "the epoch with the best validation metric (accuracy of the native read-out; image MSE for generative models) are "
        "studied and their test accuracy reported. Backprop through inference relaxes from zeros (from the feed-forward start a "
        "discriminative chain is already at equilibrium and the rule is plain backprop). Seeds are the unit of replication: "
        "metrics are averaged over test images within a seed and rules are compared by mean paired differences over seeds "
        "with 95 % t-intervals.",
    )
    report.methods(
        "Method (Badger 2022)",
        "Layer l's embedding O_l(a) of an image a is the feed-forward value of node l (a cross-entropy label node gives its "
        "logits). Gradient route: starting from noise a_0 ~ N(mu, sigma^2) (unit pixel scale, Badger's N(0.7, 1/20) read as "
        "fractions of the pixel range), a descends sum |O_l(a_target) - O_l(a)| with the procedure's optimiser, step size and "
        "optional annealed Gaussian blur (Badger's: plain gradient descent, step 0.1, 500 steps, sigma 1/20 read as a standard "
        "deviation, no blur for fully-connected nets, blur 2.4 -> 0.4 for convolutional ones; pclab's: Adam with a step annealed "
        "to 0). Generative direction (layers on the image's generative path): O_l(a) is the layer's value after the model's own "
        "relaxation with a clamped, differentiated through the unrolled relaxation. PCN route: node l is clamped to the value the model's own inference gives it with the "
        "image clamped; every other node, image included, is relaxed from the same noise start; the reconstruction is the "
        "image's prediction where a decoder predicts the image (the hybrid model) and the relaxed image node otherwise (a "
        "discriminative chain has no generative path: nothing predicts the image, only the errors of the layers it feeds move it)."
        "\n\nMetrics per test image: m_g = ||O_l(a_target) - O_l(a_g)||, m_r = ||O_l(a_target) - O_l(a_target + n)|| with n ~ "
        f"N(0, {config['perturbation_std']}^2) per pixel (unit scale), m_i = ||a_g - a_target|| in unit pixels over the whole "
        "image, PSNR and SSIM (Gaussian window 11, sigma 1.5, cut to the image) of the reconstruction clipped to [0, 1]. "
        "m_g < m_r with a large m_i means the embedding is matched but does not determine the image (non-unique).",
    )
    fig = key_figure(table) if not table.empty else None
    if fig is not None:
        report.figure(fig, "clarity_vs_depth", "How far the reconstruction from each layer is from the test image (m_i, lower = "
                      "clearer; gradient route), by layer depth; one colour per training rule, dashed = untrained; median over "
                      "test images, IQR band.", key=True)
    for route in ("gradient", "gradient-relaxed", "pcn"):
        fig = image_grid(records, out, route, config.get("grid_images", 4), config["seeds"][0])
        if fig is not None:
            report.figure(fig, f"grid_{route}", f"Test images reconstructed from each layer (columns, shallow to deep), per "
                          f"architecture one row per training rule below the untrained net (the reference row), {ROUTE_NAMES[route]}, "
                          f"seed {config['seeds'][0]}.")
    for route in ("gradient", "pcn"):
        if not table.empty:
            fig = depth_curves(table, route)
            if fig is not None:
                report.figure(fig, f"depth_{route}", f"Clarity metrics against layer depth, {ROUTE_NAMES[route]}; dashed: untrained "
                              "weights; m_g panel also shows m_r (dotted, x) on a log scale.")
    if not table.empty:
        fig = width_figure(table)
        if fig is not None:
            report.figure(fig, "width_test", "Width test: the dashed vertical line is the input size; widths below it cannot be inverted "
                          "if m_i stays large while m_g falls below m_r.")
        shown = table.drop(columns=["test"])
        report.table(shown[table["test"] == "models"], "layers", "Per model, layer and route: median [q25, q75] over test images")
        report.table(shown[table["test"] == "width"], "width_test", "Width test per width and route")
        if (table["route"] == "pcn").any():
            report.table(route_table(table, models), "routes", "Gradient route vs PCN route: median m_i and SSIM")
        report.table(frame, "per_image", "Every reconstruction's metrics", max_rows=20)
    if not models.empty:
        report.table(models, "models", "Models studied")
    report.table(pd.DataFrame(failed or [], columns=["id", "params", "error"]), "failures", "Failed trials")
    return report.write()
