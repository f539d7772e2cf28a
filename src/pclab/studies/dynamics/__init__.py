"""Study ``dynamics``: how PC learning and backprop change a PCN's inference dynamics (seed 002).

The same architectures -- a generative PCN (latent -> image; an MLP and, in the larger presets, a
transposed-conv one), a discriminative PCN (image -> label) and the hybrid image/latent/label model
-- are trained by ``pc``, by ``bp-through-inference`` (whole and truncated) and (where a
feed-forward path exists) by ``bp``, on matched objectives (the hybrid's precisions from the
backprop rules' ``lam``; one relaxation start per family for every rule), in paired runs (same
initial weights and data order per seed), at several training horizons ``T_train``. Each trained
network is then relaxed on fixed test batches for ``4 T_train`` steps while recording, per step,
energy per node, error norms, drift, ``||dE/dz||``, reconstruction MSE and label accuracy, and
again at three latent step sizes (step-size sensitivity); during PC training the PC weight update
is compared with the backprop gradient per layer. Rules are compared on task metrics, energies
only within one network.

Usage::

    from pclab.studies import dynamics
    report = dynamics.run("quick", Path("runs/dynamics-quick"))

Modules: :mod:`.presets` (presets, trials), :mod:`.trial` (one trial), :mod:`.metrics`
(per-step traces and convergence scalars), :mod:`.alignment` (PC update vs backprop gradient),
:mod:`.stepsize` (latent step size on a validation split), :mod:`.analysis` (tables, summary,
Findings), :mod:`.figures`.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...sweep import failures, run_trials, trial_id
from ..report import Report
from ..settings import preflight
from . import analysis, figures
from .metrics import DIVERGE_FACTOR, MOVE_THRESHOLD
from .presets import PRESETS, resolve, trials
from .trial import run_config, run_trial

__all__ = ["PRESETS", "run", "run_trial"]


def run(preset: str, out: Path, address: str | None = None, executor: str = "ray", overrides: dict | None = None) -> Path:
    """Run the study (skipping finished trials) and write ``out/report.html``; returns its path.

    Args:
        preset: ``"tiny"``, ``"quick"``, ``"standard"`` or ``"full"`` (see :data:`PRESETS`).
        out: study folder (trial records, artifacts, report, tables, figures).
        address: Ray cluster address (``None``: Ray embedded on this machine).
        executor: ``"ray"`` or ``"serial"``.
        overrides: nested values merged into the preset, e.g. ``{"seeds": [0]}``.
    """
    started = time.time()
    spec = resolve(preset, overrides)
    out = Path(out).resolve()
    params = trials(spec, str(out))
    preflight("dynamics", [(f"{t['family']}/{t['rule']} T {t['T']} seed {t['seed']}", functools.partial(run_config, t)) for t in params])
    records = run_trials(run_trial, params, out, address=address, executor=executor)
    report = Report("Inference dynamics of PC- vs backprop-trained PCNs", out, {"preset": preset, "overrides": overrides or {}, **spec},
                    question=analysis.QUESTION, study="dynamics", preset=preset, started=started)
    write_report(report, records, spec, out, time.time() - started)
    return report.write()


def write_report(report: Report, records: list[dict[str, Any]], spec: dict[str, Any], out: Path, seconds: float) -> None:
    """Fill ``report`` from the trial records."""
    failed = failures(records)
    ok = [r for r in records if r["status"] == "ok"]
    report.methods("What was run", _design_text(spec))
    if not ok:
        report.findings([f"All {len(records)} trials failed; see the failures table."])
        _failures(report, failed)
        return
    T = int(spec["T_ref"])
    steps_all = analysis.step_frame(ok)
    scalars_all = analysis.scalar_frame(ok)
    steps = steps_all[steps_all["T"] == T]
    nodes = analysis.node_frame([r for r in ok if r["result"]["trained_steps"] == T])
    scalars = scalars_all[scalars_all["T"] == T]
    align = analysis.alignment_frame(ok)
    sensitivity = analysis.sensitivity_frame(ok)
    step_band = analysis.band(steps, [*analysis.KEYS, "step"], ["energy", "residual", "recon_mse", "pred_mse", "accuracy", "drift"])
    horizon_band = analysis.band(steps_all, [*analysis.KEYS, "step"], ["recon_mse", "accuracy"])
    node_band = analysis.band(nodes, [*analysis.KEYS, "node", "step"], ["energy", "error_norm", "drift"])
    conv = analysis.convergence_table(scalars)
    align_ref = align[align["T"] == T] if not align.empty else align
    lines = analysis.summary_lines(conv, align_ref, spec["tolerance"], spec["horizon_factor"])
    lines.append(f"{len(ok)} of {len(records)} trials finished" + (f"; {len(failed)} failed (table below)." if failed else ".")
                 + f" Wall time of this study run (trials not already finished, plus the report): {seconds / 60:.1f} min; "
                 f"summed trial wall time {sum(r['seconds'] for r in records) / 60:.1f} min, "
                 f"summed trial CPU time {sum(r['result'].get('cpu_seconds', 0.0) for r in ok) / 60:.1f} min.")
    report.findings(analysis.findings(scalars_all, align, T, spec["horizon_factor"]))
    report.statements(lines)

    report.figure(figures.horizon(horizon_band, spec["horizon_factor"]), "horizon", "Task metric vs test-time inference steps "
                  "T_test (as a multiple of the trained horizon T_train, up to 4 T_train), one colour per training rule, darker "
                  "for longer T_train; median over seeds x test batches. Dashed line: T_test = T_train.", key=True)
    report.table(analysis.convergence_table(scalars_all), "horizon", "Task metrics at t = 0, T and 4T per family, rule, T_train and "
                 "probe (medians over seeds x batches)")
    report.section("Latent step size",
                   "Each trial relaxes at its trained latent step size (the hybrid's chosen on the validation split from the "
                   "stated grid: per epoch with the training clamp; for PC learning, trained with the label clamped, and for "
                   "bp, which does not relax in training, the test relaxation with the image clamped is chosen after training; "
                   "the other families' step is fixed); latent_move_T is the latent's relative movement ||z_T - z_0|| / ||z_0|| "
                   "at test (hybrid: from the encoder's output).")
    report.table(analysis.step_table(scalars_all), "step_sizes", "Latent step size and latent movement per family, rule, T_train and probe")
    if not sensitivity.empty:
        report.section("Step-size sensitivity without retraining",
                       "Each trained network's first probe relaxed at its test latent step, half of it, and the largest "
                       "multiple of it in the sensitivity grid whose energy never rises over 4T steps on a held-out "
                       "validation batch; task metrics at T and 4T (medians over seeds x the first sensitivity_batches test batches).")
        report.table(analysis.sensitivity_table(sensitivity), "sensitivity", "Task metrics at three latent step sizes")
    report.section(f"Dynamics at T_train = {T}", f"The figures and tables below are the networks trained with T = {T}.")
    report.figure(figures.energy_row(step_band, T), "energy", "Total energy along inference (log scale), median over seeds x test "
                  "batches, IQR shaded, one colour per training rule; dashed line: the trained horizon T. Energies of "
                  "different networks are not one scale: read the shape of each curve, not the levels between rules.")
    report.section("Energy and fixed-point residual along inference",
                   "Total energy (sum over nodes of the batch-mean node energy) and the fixed-point residual "
                   "||dE/dz|| (L2 norm over all free nodes, batch mean) at every step; median over seeds x test "
                   "batches, IQR shaded, log scale. Dashed line: the trained horizon T.")
    report.figure(figures.curves(step_band, T, [("energy", "total energy E (energy units, log)", True),
                                                 ("residual", "||dE/dz|| (energy units per unit z, log)", True),
                                                 ("drift", "drift ||z_t - z_0|| (units of z)", False)]),
                  "energy_vs_step", "Energy, residual and total latent drift vs inference step, one colour per training rule.")
    report.section("Layer x step", "Median energy of each node at each step (log colour; blank = zero energy, e.g. a "
                   "released read-out), and the drift of each free node from its initial value.")
    for family, probe in dict.fromkeys(zip(steps["family"], steps["probe"])):
        report.figure(figures.heatmap(node_band, family, probe, T, "energy"), f"heat_energy_{family}_{probe}",
                      f"{family} / {probe}: energy per node and step.")
        report.figure(figures.heatmap(node_band, family, probe, T, "drift"), f"heat_drift_{family}_{probe}",
                      f"{family} / {probe}: drift of each free node from its initial value per step.")
    report.section("Read-outs along inference",
                   "Label accuracy of argmax mu_y at the current state, and MSE of the image decoded top-down from "
                   "the current latent z alone (generative: pixels in [0, 1]; hybrid: pixels in [-1, 1]).")
    report.figure(figures.readout_curves(step_band, T), "readouts_vs_step", "Accuracy and reconstruction MSE vs inference step.")
    _image_grids(report, [r for r in ok if r["result"]["trained_steps"] == T], out)
    if not align.empty:
        report.section("Alignment of the PC update with backprop during training",
                       "Cosine and norm ratio, per layer (edge module), of the PC weight update (the gradient of the PC "
                       "weight energy at the relaxed state, before Adam) against the backprop gradient of the same energy "
                       "with the targets clamped, at two states. 'feedforward' (discriminative, hybrid): the feed-forward "
                       "state (hidden errors zero), i.e. the output loss backpropagated through the feed-forward pass, "
                       "the gradient plain bp follows (for the hybrid the latent comes from the encoder, which PC learning "
                       "trains to predict the relaxed latent). 'inference' (all models; the only one for the generative model, which has no "
                       "feed-forward path from the image): the state after T inference steps with only the image clamped, "
                       "backpropagated through the unrolled inference (bp-through-inference's objective in energy units); "
                       "it equals the PC update when inference has converged. Measured on the current training batch at "
                       "evenly spaced points; median over seeds, min-max shaded.")
        report.figure(figures.alignment_curves(align_ref), "alignment", f"PC update vs backprop gradient over training (T = {T}).")
        report.table(analysis.band(align, ["family", "T", "reference", "layer", "progress"], ["cosine", "norm_ratio"]), "alignment",
                     "Alignment per family, T_train, layer and training point (median, IQR, min-max over seeds)")
    report.table(conv, "convergence", f"Convergence per family, rule and probe at T = {T} (medians over seeds x batches; fractions; "
                 "past-T counts)")
    report.table(step_band, "steps", "Per-step quantities: median, IQR, min-max over seeds x batches", max_rows=20)
    report.table(node_band, "layers", "Per-node, per-step energy, error norm and drift", max_rows=20)
    report.table(_trial_table(ok), "trials", "Trials: training and probing time")
    _failures(report, failed)


def _design_text(spec: dict[str, Any]) -> str:
    fams = spec["families"]
    lines = [
        f"Preset: {spec['description']}. Seeds {spec['seeds']}; every rule of a family starts, for a given seed, from the "
        "same initial weights and sees the same training batches in the same order (paired runs). Test: "
        f"{spec['test_batches']} fixed batches of {spec['test_batch_size']} test images (the same for every trial); each "
        f"trained network is relaxed for {spec['horizon_factor']}T steps, T being the inference horizon T_train it was trained with, "
        f"T_train in {spec['T_train']} (reference T_train for the single-horizon figures: {spec['T_ref']}). "
        f"Validation split: {spec['validation']} stratified training images set aside (seed 0) from every trial's training set; "
        "it chooses the hybrid's latent step size and gives the held-out batch of the step-size sensitivity probe "
        f"(grid of multiples of the test step: {spec['sensitivity_grid']}; measured on the first {spec['sensitivity_batches']} "
        "test batch(es)). bp-through-inference-truncated backpropagates "
        f"through the last max(1, round({spec['truncate_fraction']:g} T)) inference steps only.",
    ]
    for family, fam in fams.items():
        c = fam["config"]
        inf = c["inference"]
        step = (f"latent step chosen per epoch on the validation split from eta in {fam['step_grid']} divided by the largest "
                "clamped precision (lowest energy at T among steps whose energy never rises), for PC learning and bp the test "
                "step chosen likewise after training with the image clamped" if fam["step_grid"]
                else f"lr {inf['lr']:g}")
        lines.append(
            f"{family}: model {c['model']}; rules {fam['rules']}; inference T_train steps of latent "
            f"{inf['optimizer']} ({step}); every rule starts relaxation at init '{fam['init']}'; "
            f"weights Adam lr {c['learning']['lr']}, batch {c['data']['batch_size']}, {c['epochs']} epoch(s) on "
            f"{c['data']['train_subset'] or 'all'} {c['data']['dataset']} training images; probes "
            + ", ".join(f"{p['name']} (clamped {p['clamp']}, init {p['init']})" for p in fam["probes"]) + "."
        )
    lines += [
        "Why these choices. Generative: bp is not defined (no feed-forward path from the image); the backprop-trained "
        "variant is bp-through-inference with the image clamped and the MSE of the image prediction after T steps as loss. "
        "Discriminative: with the label released and the feed-forward init the energy is exactly zero and nothing moves "
        "(backprop through that relaxation would be plain backprop), so every rule starts its relaxation from zero hidden "
        "layers, in training and at test: PC learning relaxes from there with image and label clamped, bp-through-inference "
        "is trained on the 'released' relaxation (cross-entropy of the label prediction at step T), and both probes start "
        "there; the 'label-clamped' probe is the relaxation PC learning performs in training, its 'label accuracy' only "
        "shows how far the label prediction has moved towards the clamped true label, not a test accuracy. Hybrid: every "
        "rule's network has the image and label precisions hybrid_precisions(lam) of the backprop rules' lam, so the PC "
        "energy weighs image and label like their loss (1 - lam) MSE + lam CE (up to a common factor) and every rule relaxes "
        "the same energy; PC learning also trains the encoder (an amortiser) to predict the relaxed latent, so every rule "
        "starts inference from its own trained encoder's output. Energies of different networks are not compared: "
        "rules are compared on task metrics (reconstruction MSE, label accuracy), energies only within one network.",
        f"Definitions. Steps to tolerance: the number of updates after which relax(tolerance={spec['tolerance']:g}) "
        "would stop (relative change of the total energy between consecutive steps below the tolerance); 'never' when "
        f"not reached within {spec['horizon_factor']}T. Steps to 99 %: the first step at which the energy has made 99 % "
        f"of its decrease over the {spec['horizon_factor']}T steps. Monotone: the energy never rises by more than 1e-6 (relative) "
        f"between steps. Past T: 'diverges' if the energy at {spec['horizon_factor']}T is not finite or exceeds "
        f"{DIVERGE_FACTOR:g} x the energy at T; else 'drifts' if ||z_end - z_T|| > {MOVE_THRESHOLD:g} x ||z_T - z_0|| "
        "(free nodes together, batch mean); else 'stays'. Energies are batch means in energy units "
        "(1/2 ||e||^2 for Gaussian nodes, nats for cross-entropy nodes).",
    ]
    return "\n\n".join(lines)


def _image_grids(report: Report, records: list[dict[str, Any]], out: Path) -> None:
    by_family: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    seed = min(r["params"]["seed"] for r in records)
    for r in records:
        p = r["params"]
        path = out / "artifacts" / trial_id(p) / "images.npz"
        if p["seed"] != seed or not path.exists():
            continue
        with np.load(path) as data:
            probe = next(k for k in data.files if k not in ("target", "steps"))
            by_family.setdefault(f"{p['family']} / {probe}", {})[p["rule"]] = {
                "target": data["target"], "decoded": data[probe], "steps": data["steps"],
            }
    if not by_family:
        return
    report.section("Reconstructions along inference",
                   f"The first test images (seed {seed}) and the image decoded top-down from the latent z at selected "
                   "steps, one row per rule.")
    for name, images in by_family.items():
        pixels = next(iter(images.values()))["target"].shape[1]
        side = int(math.isqrt(pixels))
        report.figure(figures.image_grid(images, (side, side), f"{name}: decoded image vs step"),
                      "images_" + name.replace(" / ", "_"), f"{name}: reconstructions along the inference steps.")


def _trial_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{
        "family": r["params"]["family"], "rule": r["params"]["rule"], "T": r["result"]["trained_steps"], "seed": r["params"]["seed"],
        "train_seconds": r["result"]["train_seconds"], "probe_seconds": r["result"]["probe_seconds"],
        "trial_seconds": r["seconds"], "cpu_seconds": r["result"].get("cpu_seconds", math.nan), "id": r["id"],
    } for r in records])


def _failures(report: Report, failed: list[dict[str, Any]]) -> None:
    if not failed:
        report.text("No trial failed.")
        return
    report.table(pd.DataFrame([{"id": f["id"], "family": f["params"]["family"], "rule": f["params"]["rule"],
                                "seed": f["params"]["seed"], "error": f["error"]} for f in failed]),
                 "failures", "Failed trials")
