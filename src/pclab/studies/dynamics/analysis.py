"""From trial records to tidy tables, medians with spread, and the summary sentences.

Spread is taken over every (seed, test batch) pair of a family/rule/probe: median, interquartile
range (q25, q75), min and max.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RULE_ORDER = ["pc", "bp-through-inference", "bp-through-inference-truncated", "bp"]
KEYS = ["family", "rule", "T", "probe"]


def _ok(records: Sequence[dict[str, Any]]):
    for r in records:
        if r["status"] == "ok":
            yield r["params"], r["result"]


def step_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (trial, probe, batch, step): total energy, residual ``||dE/dz||``, recon MSE of
    the image decoded from the latent, MSE of the image prediction, label accuracy, total drift
    (root-sum-square over free nodes of their batch-mean drift)."""
    rows = []
    for p, res in _ok(records):
        for probe, data in res["probes"].items():
            for b, tr in enumerate(data["traces"]):
                for t in range(len(tr["energy"])):
                    rows.append({
                        "family": p["family"], "rule": p["rule"], "T": res["trained_steps"], "probe": probe, "seed": p["seed"],
                        "batch": b, "step": t,
                        "energy": sum(tr["energy"][t]), "residual": tr["residual"][t],
                        "recon_mse": tr["recon_mse"][t] if tr["recon_mse"] else math.nan,
                        "pred_mse": tr["pred_mse"][t] if tr["pred_mse"] else math.nan,
                        "accuracy": tr["accuracy"][t] if tr["accuracy"] else math.nan,
                        "drift": math.sqrt(sum(d * d for d in tr["drift"][t])),
                    })
    return pd.DataFrame(rows)


def node_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (trial, probe, batch, step, node): energy and error norm of every error node,
    and the drift of every free node (NaN where a quantity does not apply to the node)."""
    rows = []
    for p, res in _ok(records):
        for probe, data in res["probes"].items():
            for b, tr in enumerate(data["traces"]):
                nodes = list(dict.fromkeys([*tr["nodes"], *tr["free"]]))
                for t in range(len(tr["energy"])):
                    for node in nodes:
                        i = tr["nodes"].index(node) if node in tr["nodes"] else None
                        j = tr["free"].index(node) if node in tr["free"] else None
                        rows.append({
                            "family": p["family"], "rule": p["rule"], "T": res["trained_steps"], "probe": probe, "seed": p["seed"],
                            "batch": b, "step": t, "node": node,
                            "energy": tr["energy"][t][i] if i is not None else math.nan,
                            "error_norm": tr["error_norm"][t][i] if i is not None else math.nan,
                            "drift": tr["drift"][t][j] if j is not None else math.nan,
                        })
    return pd.DataFrame(rows)


def scalar_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (trial, probe, batch): the convergence scalars of :func:`metrics.convergence`."""
    rows = []
    for p, res in _ok(records):
        for probe, data in res["probes"].items():
            for b, sc in enumerate(data["scalars"]):
                rows.append({"family": p["family"], "rule": p["rule"], "T": res["trained_steps"], "probe": probe, "seed": p["seed"],
                             "batch": b, "trained_steps": res["trained_steps"], "lr": res.get("lr", math.nan), **sc})
    return pd.DataFrame(rows)


def alignment_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (PC trial, measurement point, layer): cosine and norm ratio."""
    rows = [{"family": p["family"], "rule": p["rule"], "T": res["trained_steps"], "seed": p["seed"], **row}
            for p, res in _ok(records) for row in res["alignment"]]
    return pd.DataFrame(rows)


def sensitivity_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (trial, step kind, test batch) of the step-size sensitivity probe: ``kind``
    (test step, half, largest steady), the latent step ``lr``, its ``multiple`` of the test step and
    the probe's convergence scalars."""
    rows = [{"family": p["family"], "rule": p["rule"], "T": res["trained_steps"], "seed": p["seed"], **row}
            for p, res in _ok(records) for row in res.get("sensitivity", [])]
    return pd.DataFrame(rows)


def step_table(scalars: pd.DataFrame) -> pd.DataFrame:
    """Per family, rule, T and probe: the latent step size each trial relaxed with (median, min, max over
    seeds) and the latent's relative movement within T, ``||z_T - z_0|| / ||z_0||`` (median over seeds x batches)."""
    g = scalars.groupby(KEYS, sort=False)
    out = pd.DataFrame({"lr_median": g["lr"].median(), "lr_min": g["lr"].min(), "lr_max": g["lr"].max(),
                        "latent_move_T": g["latent_move_T"].median(), "drift_T": g["drift_T"].median()}).reset_index()
    return _ordered(out)


def sensitivity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per family, rule, T and step kind: the step (median multiple of the test step) and the task
    metrics at T and at the end (medians over seeds x batches)."""
    values = [c for c in ("multiple", "lr", "recon_mse_T", "recon_mse_end", "accuracy_T", "accuracy_end", "latent_move_T",
                          "monotone_all") if c in frame]
    frame = frame.assign(monotone_all=frame["monotone_all"].astype(float)) if "monotone_all" in frame else frame
    out = frame.groupby(["family", "rule", "T", "kind"], sort=False)[values].median().reset_index()
    return _ordered(out)


TASK_METRICS = {"recon_mse": ("reconstruction MSE", 1000.0, "x 1e-3", 3), "accuracy": ("label accuracy", 100.0, "points", 2)}
"""Task metric -> (name, scale, unit of a difference, digits): MSE differences in thousandths (pixel scale^2)."""


def task_metrics(family: str) -> list[str]:
    """The task metrics a family is judged on (energies of different networks are never compared)."""
    return ["accuracy"] if family == "discriminative" else (["recon_mse", "accuracy"] if family == "hybrid" else ["recon_mse"])


def main_probe(rows: pd.DataFrame) -> str:
    """The probe that shows a family's dynamics (``released`` for the discriminative model)."""
    return "released" if (rows["probe"] == "released").any() else str(rows["probe"].iloc[0])


def band(frame: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Median, q25, q75, min, max and count of each of ``values`` within groups ``by`` (long:
    one row per group and quantity)."""
    out = []
    for value in values:
        g = frame.groupby(by, sort=False)[value]
        stats = pd.DataFrame({
            "median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75),
            "min": g.min(), "max": g.max(), "n": g.count(),
        }).reset_index()
        stats.insert(len(by), "quantity", value)
        out.append(stats)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


CONVERGENCE_QUANTITIES = [
    "steps_to_tol", "steps_to_99", "energy_0", "energy_T", "energy_end", "residual_0", "residual_T", "residual_end",
    "drift_T", "move_past_T", "latent_move_T", "recon_mse_0", "recon_mse_T", "recon_mse_end", "accuracy_0", "accuracy_T", "accuracy_end",
]


def convergence_table(scalars: pd.DataFrame) -> pd.DataFrame:
    """Per family/rule/probe: medians of the convergence scalars (``steps_to_tol`` counts a batch
    that never reached the tolerance as infinite), fractions of batches reaching the tolerance and
    with a monotone energy, and how many batches stay / drift / diverge past ``T``."""
    frame = scalars.copy()
    frame["reached_tol"] = frame["steps_to_tol"].notna()
    frame["steps_to_tol"] = frame["steps_to_tol"].astype(float).fillna(math.inf)
    rows = []
    for key, g in frame.groupby(KEYS, sort=False):
        row: dict[str, Any] = dict(zip(KEYS, key))
        row["batches"] = len(g)
        for q in CONVERGENCE_QUANTITIES:
            if q in g and g[q].notna().any():
                row[q] = float(np.median(g[q].dropna().astype(float)))
        row["reached_tol"] = float(g["reached_tol"].mean())
        row["monotone_T"] = float(g["monotone_T"].mean())
        row["monotone_all"] = float(g["monotone_all"].mean())
        for kind in ("stays", "drifts", "diverges"):
            row[f"past_T_{kind}"] = int((g["past_T"] == kind).sum())
        rows.append(row)
    return _ordered(pd.DataFrame(rows))


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "rule" not in frame:
        return frame
    order = {r: i for i, r in enumerate(RULE_ORDER)}
    by = [c for c in ("family", "probe", "rule", "T") if c in frame]
    return frame.sort_values(by, key=lambda s: s.map(order) if s.name == "rule" else s,
                             kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------- summary
def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isinf(v):
        return "never (within the horizon)"
    return f"{v:.3g}"


def _rank(rows: pd.DataFrame, column: str, lower: bool = True) -> tuple[str, float, str, float] | None:
    """Best and worst rule by ``column`` (median), or ``None`` with fewer than two rules."""
    sub = rows[["rule", column]].dropna() if column in rows else pd.DataFrame()
    if len(sub) < 2:
        return None
    sub = sub.sort_values(column, ascending=lower)
    return sub["rule"].iloc[0], float(sub[column].iloc[0]), sub["rule"].iloc[-1], float(sub[column].iloc[-1])


TIE = 0.01
"""Medians closer than this (relative) are reported as a tie."""


def _compare(ranked: tuple[str, float, str, float], what: str, best: str, worst: str, tie: float) -> str:
    """A sentence comparing the best and worst rule, or stating a tie within ``tie`` (relative)."""
    b_rule, b, w_rule, w = ranked
    if math.isinf(b) and math.isinf(w):
        return f"for no rule is the median {what} reached within the horizon"
    if b == w or (math.isfinite(b) and math.isfinite(w) and abs(w - b) <= tie * max(abs(b), abs(w))):
        within = "" if tie == 0 else f" within {tie * 100:g} %"
        return f"the rules tie{within} on the median {what} ({_fmt(b)} to {_fmt(w)})"
    return f"{b_rule} {best} (median {what} {_fmt(b)}; {worst} {w_rule}: {_fmt(w)})"


def summary_lines(conv: pd.DataFrame, align: pd.DataFrame, tolerance: float, horizon_factor: int) -> list[str]:
    """Sentences stating this run's measured comparisons (no conclusion is written in advance)."""
    lines = []
    for (family, probe), rows in conv.groupby(["family", "probe"], sort=False):
        T = int(rows["T"].iloc[0])
        head = f"{family} / {probe} (T = {T}, run to {horizon_factor}T = {horizon_factor * T})"
        parts = []
        fast = _rank(rows, "steps_to_tol")
        if fast:
            parts.append(_compare(fast, f"steps to a relative energy change below {tolerance:g}", "converges fastest", "slowest", 0.0))
        fast99 = _rank(rows, "steps_to_99")
        if fast99:
            parts.append(_compare(fast99, "step at which 99 % of the energy decrease over the horizon is made",
                                  "gets there first", "last", 0.0))
        # task metrics only: energies (and residuals) of different networks are not one scale
        recon = _rank(rows, "recon_mse_T")
        if recon:
            parts.append(_compare(recon, "reconstruction MSE at T", "reconstructs best at T", "worst", TIE))
        acc = _rank(rows, "accuracy_T", lower=False)
        if acc and probe != "label-clamped":
            parts.append(_compare(acc, "label accuracy at T", "reads the label out best at T", "worst", TIE))
        lines.append(f"{head}: " + "; ".join(parts) + "." if parts else f"{head}: a single rule, nothing to compare.")
        for _, r in rows.iterrows():
            total = int(r["batches"])
            change = (r["energy_end"] - r["energy_T"]) / abs(r["energy_T"]) * 100 if r["energy_T"] else math.nan  # within one network
            past = ", ".join(f"{kind} in {int(r[f'past_T_{kind}'])}/{total}" for kind in ("stays", "drifts", "diverges") if r[f"past_T_{kind}"])
            text = (f"{family} / {probe} / {r['rule']}: past T the energy changes by {change:+.3g} % "
                    f"(median {_fmt(r['energy_T'])} -> {_fmt(r['energy_end'])}); the state {past} batches; "
                    f"energy monotone up to T in {r['monotone_T'] * 100:.0f} % and up to {horizon_factor}T in {r['monotone_all'] * 100:.0f} % of batches")
            for q, label, scale in (("accuracy", "label accuracy", 100.0), ("recon_mse", "reconstruction MSE", 1.0)):
                if f"{q}_T" in r and pd.notna(r.get(f"{q}_T")):
                    unit = " %" if scale == 100.0 else ""
                    text += (f"; {label} {r[f'{q}_0'] * scale:.3g}{unit} at t=0, {r[f'{q}_T'] * scale:.3g}{unit} at T, "
                             f"{r[f'{q}_end'] * scale:.3g}{unit} at {horizon_factor}T")
            lines.append(text + ".")
    if not align.empty:
        last = align[align["progress"] == align.groupby("family")["progress"].transform("max")]
        for (family, reference), g in last.groupby(["family", "reference"], sort=False):
            per_layer = g.groupby("layer", sort=False)[["cosine", "norm_ratio"]].median()
            layers = "; ".join(f"{layer}: cosine {row.cosine:.3f}, norm ratio {row.norm_ratio:.3g}" for layer, row in per_layer.iterrows())
            lines.append(f"{family}: at the end of PC training, the PC weight update against the backprop gradient at the "
                         f"{reference} state (median over seeds) -- {layers}.")
    return lines


# ---------------------------------------------------------------------------------- findings
QUESTION = ("Does training a PCN by backprop through its unrolled inference, instead of by PC learning, change how well its "
            "inference settles on task metrics at the trained horizon T and beyond it (4T), is backprop-through-inference-trained "
            "inference tuned to its horizon, and how closely does the PC weight update follow the backprop gradient?")


def _metric_at(frame: pd.DataFrame, metric: str, where: str) -> pd.Series:
    """Per seed: the mean over test batches of ``metric`` at ``where`` (``"T"`` or ``"end"``)."""
    return frame.groupby("seed")[f"{metric}_{where}"].mean()


def _text(metric: str, interval) -> str:
    from ..stats import describe

    name, scale, unit, digits = TASK_METRICS[metric]
    scaled = type(interval)(interval.mean * scale, interval.low * scale, interval.high * scale, interval.n, interval.confidence)
    return describe(scaled, unit=unit, digits=digits, within=None)


def findings(scalars: pd.DataFrame, align: pd.DataFrame, T_ref: int, horizon_factor: int = 4) -> list[str]:
    """The answers, each a mean paired difference over seeds with its 95 % t-interval (a statement of
    direction only where the interval excludes zero; the describe helper says "no detectable
    difference" otherwise). Seed-level values are means over the fixed test batches.

    (a) per family and task metric, at T = ``T_ref`` and at ``horizon_factor`` T: each rule minus PC learning;
    (b) per family, backprop-through-inference variant and task metric: the metric at 4T minus at T, per T_train
        (positive MSE / negative accuracy: worse past the horizon it was trained for);
    (c) per family: the cosine of the PC update with the backprop gradient through inference (mean over layers)
        at the first and last measurement of training and their difference.

    The sentences of the three questions are interleaved (a, b, c, a, b, c, ...).
    """
    from ..report import rule_name as _name
    from ..stats import mean_interval, paired_difference

    def rule_name(rule: str) -> str:
        return "truncated backprop through inference" if rule == "bp-through-inference-truncated" else _name(rule)

    lines = []
    if not scalars.empty:
        for family, rows in scalars.groupby("family", sort=False):
            probe = main_probe(rows)
            rows = rows[rows["probe"] == probe]
            ref = rows[rows["T"] == T_ref]
            rules = [r for r in RULE_ORDER if r in set(ref["rule"]) and r != "pc"]
            for metric in task_metrics(family):
                if f"{metric}_T" not in ref or ref[f"{metric}_T"].isna().all() or "pc" not in set(ref["rule"]):
                    continue
                for where, label in (("T", f"T = {T_ref}"), ("end", f"{horizon_factor}T = {horizon_factor * T_ref}")):
                    pc = _metric_at(ref[ref["rule"] == "pc"], metric, where)
                    parts = []
                    for rule in rules:
                        other = _metric_at(ref[ref["rule"] == rule], metric, where)
                        both = pd.concat([other, pc], axis=1, join="inner").dropna()
                        parts.append(f"{rule_name(rule)} minus PC learning {_text(metric, paired_difference(both.iloc[:, 0], both.iloc[:, 1]))}")
                    if parts:
                        lines.append(f"(a) {family.capitalize()} model ({probe}), {TASK_METRICS[metric][0]} after inference to {label}: "
                                     + "; ".join(parts) + ".")
            for rule in ("bp-through-inference", "bp-through-inference-truncated", "pc"):
                sub = rows[rows["rule"] == rule]
                if sub.empty:
                    continue
                for metric in task_metrics(family):
                    if sub[f"{metric}_T"].isna().all():
                        continue
                    parts = []
                    for T, g in sub.groupby("T"):
                        change = _metric_at(g, metric, "end") - _metric_at(g, metric, "T")
                        parts.append(f"T_train = {T}: {_text(metric, mean_interval(change.to_numpy()))}")
                    lines.append(f"(b) {family.capitalize()} model ({probe}), {rule_name(rule)}: {TASK_METRICS[metric][0]} at "
                                 f"{horizon_factor}T minus at T -- " + "; ".join(parts) + ".")
    if not align.empty:
        ref = align[(align["T"] == T_ref) & (align["reference"] == "inference")]
        for family, g in ref.groupby("family", sort=False):
            per = g.groupby(["seed", "progress"])["cosine"].mean().unstack("progress")
            first, last = per.iloc[:, 0], per.iloc[:, -1]
            lines.append(
                f"(c) {family.capitalize()} model, T = {T_ref}: cosine of the PC weight update with the gradient backpropagated through "
                f"the unrolled inference (mean over layers) at the start of PC training "
                f"{describe_level(mean_interval(first.to_numpy()))}, at its end {describe_level(mean_interval(last.to_numpy()))}; "
                f"end minus start {describe_level(paired_difference(last, first), signed=True)}.")
    if not lines:
        return ["No trial finished; no finding."]
    # interleave the three questions, so a report's Findings box (its first few sentences) answers each
    groups = [[line for line in lines if line.startswith(f"({q})")] for q in "abc"]
    return [line for row in itertools.zip_longest(*groups) for line in row if line is not None]


def describe_level(interval, signed: bool = False) -> str:
    """A cosine (or its change) with its interval."""
    from ..stats import describe

    bound = 2.0 if signed else 1.0
    return describe(interval.clipped(-bound, bound), unit="", digits=3, within=None, signed=signed,
                    null="no detectable change" if signed else "not detectably different from 0")
