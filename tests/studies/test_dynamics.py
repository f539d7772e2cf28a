"""Tests of the dynamics study: its metrics on a linear generative model whose inference is known in
closed form, the alignment of PC with backprop where they must agree, paired initialisation, and
the whole study end to end on the tiny preset."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from pclab.core import PCN, SGD, Dense, Inference, Node, PCLearning, TaskLoss
from pclab.models import mlp
from pclab.studies import dynamics
from pclab.studies.dynamics.alignment import alignment, backprop_reference, compare, pc_update
from pclab.studies.dynamics.metrics import is_monotone, past_horizon, steps_to_fraction, steps_to_tolerance, trace
from pclab.studies.dynamics.presets import resolve, trials
from pclab.studies.dynamics.stepsize import choose_step, largest_steady_step, validation_split
from pclab.studies.dynamics.trial import build, run_config


def linear_generative(latent: int = 3, pixels: int = 8, seed: int = 0) -> PCN:
    """``z -> x`` with ``mu_x = W z + b``: energy ``1/2 ||x - W z - b||^2``, a quadratic in ``z``."""
    torch.manual_seed(seed)
    model = PCN([Node("z", (latent,)), Node("x", (pixels,))], [("z", "x", Dense(latent, pixels))])
    return model.double()


def closed_form(model: PCN, x: torch.Tensor, lr: float, steps: int) -> dict[str, list[float]]:
    """Gradient descent from ``z_0 = 0`` on ``1/2 ||x - W z - b||^2``:
    ``z_t = z* + (I - lr W^T W)^t (z_0 - z*)`` with ``z* = (W^T W)^-1 W^T (x - b)``."""
    W, b = model.module("z", "x").linear.weight.detach(), model.module("z", "x").linear.bias.detach()
    A = torch.eye(W.shape[1], dtype=W.dtype) - lr * W.T @ W
    z_star = torch.linalg.solve(W.T @ W, W.T @ (x - b).T).T
    z0 = torch.zeros_like(z_star)
    out: dict[str, list[float]] = {"energy": [], "residual": [], "recon_mse": [], "drift": []}
    for t in range(steps + 1):
        z = z_star + (z0 - z_star) @ torch.linalg.matrix_power(A, t).T
        e = x - z @ W.T - b
        out["energy"].append(float(0.5 * e.pow(2).sum(1).mean()))
        out["residual"].append(float((e @ W).norm(dim=1).mean()))
        out["recon_mse"].append(float(e.pow(2).mean()))
        out["drift"].append(float((z - z0).norm(dim=1).mean()))
    out["fixed_point_energy"] = [float(0.5 * (x - z_star @ W.T - b).pow(2).sum(1).mean())]
    return out


def test_trace_matches_the_closed_form_gradient_descent_of_a_linear_generative_model():
    model = linear_generative()
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    T, horizon, lr = 10, 40, 0.05
    tr = trace(model, {"x": x}, Inference(steps=T, optimizer=SGD(lr), init="zeros"), horizon, trained_steps=T,
               latent="z", image_target=x)
    exact = closed_form(model, x, lr, horizon)
    assert tr.total_energy == pytest.approx(exact["energy"], rel=1e-9)
    assert tr.residual == pytest.approx(exact["residual"], rel=1e-9)
    assert tr.recon_mse == pytest.approx(exact["recon_mse"], rel=1e-9)
    assert tr.pred_mse == pytest.approx(exact["recon_mse"], rel=1e-9)
    assert [row[0] for row in tr.drift] == pytest.approx(exact["drift"], rel=1e-9, abs=1e-12)
    assert steps_to_tolerance(tr.total_energy, 1e-3) == steps_to_tolerance(exact["energy"], 1e-3)
    assert steps_to_fraction(tr.total_energy) == steps_to_fraction(exact["energy"])
    assert is_monotone(tr.total_energy)


def test_a_converged_linear_model_stays_put_past_T_and_a_too_large_step_diverges():
    model = linear_generative()
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    W = model.module("z", "x").linear.weight.detach()
    lam_max = float(torch.linalg.eigvalsh(W.T @ W).max())
    T = 300
    settled = trace(model, {"x": x}, Inference(steps=T, optimizer=SGD(1.0 / lam_max), init="zeros"), 4 * T,
                    trained_steps=T, latent="z", image_target=x)
    fixed = closed_form(model, x, 1.0 / lam_max, 0)["fixed_point_energy"][0]
    assert settled.total_energy[-1] == pytest.approx(fixed, rel=1e-6)
    drift_T = settled.drift[T][0]
    assert past_horizon([settled.total_energy[T], settled.total_energy[-1]], drift_T, settled.move_past_T) == "stays"
    assert settled.residual[-1] < 1e-6
    wild = trace(model, {"x": x}, Inference(steps=5, optimizer=SGD(2.5 / lam_max), init="zeros"), 20,
                 trained_steps=5, latent="z", image_target=x)
    assert not is_monotone(wild.total_energy)
    assert past_horizon([wild.total_energy[5], wild.total_energy[-1]], wild.drift[5][0], wild.move_past_T) == "diverges"


def test_steps_to_tolerance_mirrors_the_early_stop_of_relax():
    model = linear_generative()
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    from pclab.core import relax

    tolerance = 1e-3
    tr = trace(model, {"x": x}, Inference(steps=5, optimizer=SGD(0.05), init="zeros"), 200, trained_steps=5)
    stopped = relax(model, {"x": x}, Inference(steps=200, optimizer=SGD(0.05), init="zeros", tolerance=tolerance))
    assert steps_to_tolerance(tr.total_energy, tolerance) == stopped.steps
    assert steps_to_tolerance([1.0, 0.5, 0.25], 1e-3) is None
    assert steps_to_fraction([4.0, 2.0, 1.04, 1.0, 1.0]) == 3
    assert steps_to_fraction([1.0, 1.0, 2.0]) == 0


def test_pc_update_equals_backprop_for_a_single_layer_classifier():
    torch.manual_seed(0)
    model = mlp([6, 4], output="ce").double()
    batch = {"x": torch.randn(7, 6, dtype=torch.float64), "y": torch.eye(4, dtype=torch.float64)[torch.arange(7) % 4]}
    rule = PCLearning(model, Inference(steps=5), torch.optim.SGD(model.parameters(), lr=0.1))
    rows = alignment(rule, batch)
    assert [r["reference"] for r in rows] == ["feedforward", "inference"]
    for row in rows:
        assert row["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert row["norm_ratio"] == pytest.approx(1.0, abs=1e-12)


def test_pc_update_approaches_backprop_through_inference_at_the_fixed_point_of_a_generative_model():
    model = linear_generative()
    x = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    W = model.module("z", "x").linear.weight.detach()
    lr = 1.0 / float(torch.linalg.eigvalsh(W.T @ W).max())
    rule = PCLearning(model, Inference(steps=400, optimizer=SGD(lr), init="zeros"), torch.optim.SGD(model.parameters(), lr=0.1))
    (row,) = compare(pc_update(rule, {"x": x}), backprop_reference(model, {"x": x}, rule.inference, "inference"))
    assert row["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert row["norm_ratio"] == pytest.approx(1.0, abs=1e-4)


def test_paired_runs_start_every_rule_from_the_same_weights():
    spec = resolve("tiny")
    for family in ("discriminative", "hybrid"):
        params = [p for p in trials(spec, "/unused") if p["family"] == family and p["seed"] == 1]
        states = [build(run_config(p), (1, 8, 8), 10).state_dict() for p in params]
        assert len(states) == 4 * 2  # 4 rules x 2 horizons
        for other in states[1:]:
            assert all(torch.equal(states[0][k], other[k]) for k in states[0])


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_the_hybrids_energy_is_the_backprop_loss_up_to_one_common_factor(lam):
    """At the feed-forward state with image and label clamped, the gradient of the hybrid's PC energy
    (precisions from lam) w.r.t. every decoder and head parameter is one constant times that of the
    backprop rules' loss (1 - lam) MSE + lam CE: PC learning descends the same objective."""
    spec = resolve("tiny", {"families": {"hybrid": {"config": {"learning": {"lam": lam}}}}})
    params = [p for p in trials(spec, "/unused") if p["family"] == "hybrid" and p["seed"] == 0]
    models_ = {p["rule"]: build(run_config(p), (1, 8, 8), 10).double() for p in params}
    precisions = {rule: (m.nodes["x"].energy.precision, m.nodes["y"].energy.precision) for rule, m in models_.items()}
    assert len(set(precisions.values())) == 1  # every rule relaxes the same energy
    image_precision, label_precision = precisions["pc"]
    assert image_precision / label_precision == pytest.approx((1 - lam) / lam * 2 / 64, rel=1e-12)
    model = models_["pc"]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(16, 64, dtype=torch.float64, generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (16,), generator=generator)
    y = torch.eye(10, dtype=torch.float64)[labels]
    state = model.initial_state({"x": x}, "forward")
    state["y"] = y
    params_ = [p for module in model.edge_modules.values() for p in module.parameters()]
    energy = torch.autograd.grad(model.energy(state, {"x", "y"}), params_)
    loss, _ = TaskLoss.mix(lam)(model, state, {"x": x, "y": labels})
    backprop = torch.autograd.grad(loss, params_)
    g_energy, g_loss = torch.cat([g.reshape(-1) for g in energy]), torch.cat([g.reshape(-1) for g in backprop])
    scale = float(g_energy.norm() / g_loss.norm())
    assert torch.allclose(g_energy, scale * g_loss, rtol=1e-9, atol=1e-12)
    # the common factor is the one hybrid_precisions divides by: the larger of (1 - lam) 2 / P and lam
    assert scale == pytest.approx(1.0 / max((1 - lam) * 2 / 64, lam), rel=1e-9)


def test_choose_step_keeps_to_steps_whose_energy_never_rises():
    """On ``1/2 ||x - W z - b||^2`` gradient descent lowers the energy at every step iff ``lr * lam_max < 2``."""
    model = linear_generative()
    x = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    W = model.module("z", "x").linear.weight.detach()
    lam_max = float(torch.linalg.eigvalsh(W.T @ W).max())
    inference = Inference(steps=10, optimizer=SGD(0.01), init="zeros")
    grid = [0.25 / lam_max, 1.0 / lam_max, 1.9 / lam_max, 2.5 / lam_max]
    choice = choose_step(model, {"x": x}, inference, grid, 30)
    steady = {round(r["eta"] * lam_max, 6): r["steady"] for r in choice["candidates"]}
    assert steady == {0.25: True, 1.0: True, 1.9: True, 2.5: False}
    assert choice["lr"] in grid[:3] and choice["scale"] == 1.0
    best = min((r for r in choice["candidates"] if r["steady"]), key=lambda r: r["energy_T"])
    assert choice["lr"] == best["lr"]
    assert largest_steady_step(model, {"x": x}, inference, grid, 30) == pytest.approx(1.9 / lam_max)
    assert largest_steady_step(model, {"x": x}, inference, grid[3:], 30) is None


def test_validation_split_is_disjoint_stratified_and_the_same_for_every_seed():
    from pclab.data import load

    train = load("digits", "train")
    rest, held_out = validation_split(train, 100)
    again, held_again = validation_split(train, 100)
    assert len(rest) + len(held_out) == len(train) and len(held_out) == 100
    assert torch.equal(held_out.images, held_again.images)
    flat = {tuple(v.tolist()) for v in held_out.images.reshape(100, -1)}
    assert not any(tuple(v.tolist()) in flat for v in rest.images.reshape(len(rest), -1)[:200])
    assert set(held_out.labels.tolist()) == set(range(10))


def test_truncated_rule_backpropagates_through_a_quarter_of_T():
    spec = resolve("tiny", {"T_train": [4, 8], "T_ref": 8})
    got = {(p["rule"], p["T"]): run_config(p).learning.truncate for p in trials(spec, "/unused") if p["family"] == "generative"}
    assert got[("bp-through-inference-truncated", 4)] == 1 and got[("bp-through-inference-truncated", 8)] == 2
    assert got[("bp-through-inference", 8)] is None and got[("pc", 8)] is None
    with pytest.raises(ValueError, match="T_ref"):
        resolve("tiny", {"T_ref": 7})


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="unknown key 'sedes'"):
        resolve("tiny", {"sedes": [0]})


def test_the_study_runs_end_to_end_on_tiny_data(tmp_path):
    report = dynamics.run("tiny", tmp_path, executor="serial", overrides={"seeds": [0]})
    assert report == tmp_path / "report.html"
    text = report.read_text()
    for heading in ("Findings", "Energy and fixed-point residual", "Layer x step", "Read-outs along inference",
                    "Reconstructions along inference", "Alignment of the PC update", "No trial failed"):
        assert heading in text
    conv = pd.read_csv(tmp_path / "tables" / "convergence.csv")
    got = set(zip(conv["family"], conv["rule"], conv["probe"]))
    rules = ("pc", "bp-through-inference", "bp-through-inference-truncated", "bp")
    assert {("generative", r, "recognise") for r in rules[:3]} <= got
    assert not any(f == "generative" and r == "bp" for f, r, _ in got)
    assert {("discriminative", r, p) for r in rules for p in ("released", "label-clamped")} <= got
    assert {("hybrid", r, "recognise") for r in rules} <= got
    assert set(conv["T"]) == {5}
    assert conv["past_T_stays"].add(conv["past_T_drifts"]).add(conv["past_T_diverges"]).eq(conv["batches"]).all()
    steps = pd.read_csv(tmp_path / "tables" / "steps.csv")
    T = 5
    assert steps["step"].max() == 4 * T
    assert {"energy", "residual", "recon_mse", "accuracy", "drift"} <= set(steps["quantity"])
    layers = pd.read_csv(tmp_path / "tables" / "layers.csv")
    assert {"h1", "h2", "y"} <= set(layers[layers["family"] == "discriminative"]["node"])
    align = pd.read_csv(tmp_path / "tables" / "alignment.csv")
    assert set(align["family"]) == {"generative", "discriminative", "hybrid"}
    assert set(align["T"]) == {3, 5}
    assert set(align[align["family"] == "generative"]["reference"]) == {"inference"}
    assert set(align[align["family"] == "discriminative"]["reference"]) == {"feedforward", "inference"}
    assert align["median"].notna().all()
    assert (tmp_path / "figures" / "energy_vs_step.png").exists() and (tmp_path / "figures" / "horizon.png").exists()
    # generative x 3 rules + hybrid x 4 rules, each at T_train 3 and 5
    assert len(list((tmp_path / "artifacts").glob("*/images.npz"))) == 14
    for heading in ("Latent step size", "Step-size sensitivity", "(a) Hybrid model", "(b) Discriminative model", "(c) Generative model"):
        assert heading in text
    horizon = pd.read_csv(tmp_path / "tables" / "horizon.csv")
    assert set(horizon["T"]) == {3, 5}
    assert {"bp-through-inference-truncated"} <= set(horizon["rule"])
    sizes = pd.read_csv(tmp_path / "tables" / "step_sizes.csv")
    hybrid = sizes[sizes["family"] == "hybrid"]
    assert (hybrid["latent_move_T"] > 0.05).all()  # the chosen step moves the latent away from the encoder's output
    sensitivity = pd.read_csv(tmp_path / "tables" / "sensitivity.csv")
    assert {"test step", "half"} <= set(sensitivity["kind"])
    assert sensitivity[sensitivity["kind"] == "half"]["multiple"].eq(0.5).all()
    # rerunning skips the finished trials and rebuilds the same tables
    before = conv.to_csv()
    dynamics.run("tiny", tmp_path, executor="serial", overrides={"seeds": [0]})
    assert pd.read_csv(tmp_path / "tables" / "convergence.csv").to_csv() == before
    assert math.isfinite(conv["energy_T"].median())
