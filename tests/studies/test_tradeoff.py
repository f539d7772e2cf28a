"""The trade-off study: end to end on tiny data, Pareto marking, and the pure objectives at lam = 0, 1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pclab import models
from pclab.core import SGD, Backprop, BPThroughInference, Inference, PCLearning, TaskLoss, relax
from pclab.studies import tradeoff
from pclab.studies.tradeoff.analysis import hypervolume_changes, paired_change
from pclab.studies.tradeoff.pareto import hypervolume, mark_pareto, pareto_optimal, tradeoff_gap
from pclab.studies.tradeoff.probes import decoder_probe_mse, linear_probe_accuracy
from pclab.train import hybrid_precisions


# ------------------------------------------------------------------------------------ end to end
def test_sweep_runs_end_to_end_on_tiny_data_and_writes_the_report(tmp_path):
    report = tradeoff.run("tiny", tmp_path, executor="serial")
    assert report.exists()
    html = report.read_text()
    for needle in ("Findings", "Pareto fronts", "Trade-off curves vs lam", "Reconstructions across lam", "paper_lambda"):
        assert needle in html
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv")
    config = tradeoff.PRESETS["tiny"]
    assert len(runs) == len(config["ways"]) * len(config["lams"]) * len(config["latents"]) * len(config["complexities"])
    for column in ("test_accuracy", "recon_mse", "probe_accuracy", "probe_mse", "pareto_optimal", "way", "lam", "latent"):
        assert column in runs.columns
    assert runs[["test_accuracy", "recon_mse", "probe_accuracy", "probe_mse"]].notna().all().all()
    assert runs.groupby(["way", "seed"])["pareto_optimal"].any().all()  # every front has a point
    gaps = pd.read_csv(tmp_path / "tables" / "tradeoff_gaps.csv")
    assert set(gaps["way"]) == {"bp", "bpti", "pc"}
    hv = pd.read_csv(tmp_path / "tables" / "hypervolumes.csv")
    assert len(hv) == 3 and hv["hv_task"].between(0, 1).all()
    # the PC ways' test-time relaxation moves the latent and lowers the energy wherever the image has an energy
    relaxed = runs[(runs["way"] != "bp") & (runs["lam"] < 1)]
    assert (relaxed["latent_movement"] > 0.01).all() and (relaxed["energy_drop"] > 0).all()
    assert runs.loc[runs["way"] == "bp", "latent_movement"].isna().all()
    for name in ("pareto_digits", "pareto_probes_digits", "pareto_ways", "lam_digits", "lam_probes_digits", "grid_digits_small_d2"):
        assert (tmp_path / "figures" / f"{name}.png").exists()
    # the key figure (the issue's fronts, one curve per d) comes right after the Findings, before every other figure
    assert html.index("id='findings'") < html.index('id="fig-pareto_digits"') < html.index('id="fig-pareto_ways"')
    meta = json.loads((tmp_path / "report.json").read_text())
    assert 1 <= len(meta["findings"]) <= 6 and meta["findings"][0].startswith("Hypervolume change with d or model size: not testable")
    assert any(line.startswith("Test-time relaxation") for line in meta["findings"])
    # a second call skips the finished runs and rewrites the same table
    tradeoff.run("tiny", tmp_path, executor="serial")
    assert len(pd.read_csv(tmp_path / "tables" / "runs.csv")) == len(runs)


@pytest.mark.slow
def test_a_tiny_paper_preset_pairs_seeds_and_states_verdicts(tmp_path):
    """The paper preset's shape (PC ways on Small only, several seeds) on tiny data: every d and
    model-size change has n = 2 pairs, an interval and one of the three verdicts."""
    tiny = tradeoff.PRESETS["tiny"]
    overrides = {k: tiny[k] for k in ("datasets", "epochs", "batch_size", "lr", "validation", "train_subset", "test_subset",
                                      "probe_subset", "relax_step_sizes", "relax_steps")}
    overrides.update(latents=[2, 4], lams=[0.0, 1.0], seeds=[0, 1], grid_slices=[])
    tradeoff.run("paper", tmp_path, executor="serial", overrides=overrides)
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv")
    assert set(runs.loc[runs["way"] != "bp", "complexity"]) == {"small"} and set(runs.loc[runs["way"] == "bp", "complexity"]) == {"small", "medium"}
    changes = pd.read_csv(tmp_path / "tables" / "hypervolume_changes.csv")
    assert (changes["n"] == 2).all() and changes[["ci_low", "ci_high"]].notna().all().all()
    assert set(changes["verdict"]) <= {"softens", "harsher", "no detectable change"}
    assert set(changes.loc[changes["factor"] == "model size", "way"]) == {"bp"}  # the PC ways' Medium runs are excluded
    assert set(changes.loc[changes["factor"] == "d", "way"]) == {"bp", "bpti", "pc"}


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown tradeoff setting"):
        tradeoff.study_config("tiny", {"latent_size": 3})
    with pytest.raises(ValueError, match="lams"):
        tradeoff.study_config("tiny", {"lams": [0.0, 1.5]})
    with pytest.raises(ValueError, match="unknown tradeoff preset"):
        tradeoff.study_config("huge")


def test_presets_cover_the_issue():
    full = tradeoff.PRESETS["full"]
    assert len(full["lams"]) >= 11 and min(full["lams"]) == 0.0 and max(full["lams"]) == 1.0
    assert full["latents"] == [2, 4, 8, 16, 32, 64]
    assert set(full["complexities"]) == {"small", "medium", "large"} and len(full["seeds"]) >= 2
    quick = tradeoff.PRESETS["quick"]
    assert quick["datasets"] == ["mnist"] and quick["train_subset"] is None and quick["batch_size"] == 512
    assert quick["complexities"] == ["small", "medium"] and {0.0, 1.0} <= set(quick["lams"])
    paper = tradeoff.study_config("paper")
    assert paper["datasets"] == ["mnist"] and paper["train_subset"] is None
    assert (paper["epochs"], paper["batch_size"], paper["lr"]) == (10, 512, 1e-3)
    assert {2, 4, 16} <= set(paper["latents"]) and len(paper["lams"]) >= 5
    runs = tradeoff.trials(paper)
    bp = [r for r in runs if r["way"] == "bp"]
    assert {r["complexity"] for r in bp} == {"small", "medium"} and len({r["seed"] for r in bp}) == 3
    for way in ("bpti", "pc"):
        mine = [r for r in runs if r["way"] == way]
        assert {r["complexity"] for r in mine} == {"small"} and len({r["seed"] for r in mine}) >= 2
        assert {r["latent"] for r in mine} == set(paper["latents"]) and {r["lam"] for r in mine} == set(paper["lams"])


def test_exclude_leaves_out_the_runs_matching_every_key_of_an_entry():
    exclude = [{"ways": ["pc", "bpti"], "lams": [0.0]}, {"ways": ["bpti"], "lams": [1.0]}]
    config = tradeoff.study_config("tiny", {"lams": [0.0, 1.0], "exclude": exclude})
    runs = {(r["way"], r["lam"]) for r in tradeoff.trials(config)}
    assert runs == {("bp", 0.0), ("bp", 1.0), ("pc", 1.0)}
    with pytest.raises(ValueError, match="exclude"):
        tradeoff.study_config("tiny", {"exclude": [{"lam": [1.0]}]})
    for bad in ([{"ways": "pc"}], [{}], ["pc"], {"ways": ["pc"]}):  # one clear line, before any trial
        with pytest.raises(ValueError, match=r"^tradeoff study setting exclude(\[0\])?: expected") as err:
            tradeoff.study_config("tiny", {"exclude": bad})
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ Pareto
def test_pareto_marking_on_a_hand_made_table():
    table = pd.DataFrame({
        "way": ["bp"] * 5 + ["pc"] * 3,
        "test_accuracy": [0.90, 0.95, 0.80, 0.95, 0.70, 0.5, 0.6, float("nan")],
        "recon_mse":     [0.10, 0.20, 0.05, 0.25, 0.30, 0.1, 0.1, 0.01],
    })
    marked = mark_pareto(table, ["way"])
    # bp: (0.90, 0.10), (0.95, 0.20), (0.80, 0.05) form the front; (0.95, 0.25) is dominated by
    # (0.95, 0.20) (equal accuracy, lower error); (0.70, 0.30) by everything.
    # pc: (0.6, 0.1) dominates (0.5, 0.1); the NaN row is never optimal.
    assert marked["pareto_optimal"].tolist() == [True, True, True, False, False, False, True, False]


def test_pareto_keeps_exact_duplicates_of_an_optimal_point():
    assert pareto_optimal([0.9, 0.9, 0.5], [0.1, 0.1, 0.2]).tolist() == [True, True, False]


def test_tradeoff_gap_is_zero_without_a_trade_off_and_grows_with_it():
    assert tradeoff_gap([0.1, 0.9, 0.5], [0.5, 0.1, 0.3]) == 0.0  # one point is best in both
    # best compromise (0.8, 0.11): 1 - 0.8/0.9 = 0.111 shortfall, 0.11/0.1 - 1 = 0.1 excess
    assert tradeoff_gap([0.1, 0.9, 0.8], [0.1, 0.5, 0.11]) == pytest.approx(1 / 9)
    assert tradeoff_gap([0.1, 0.9], [0.1, 0.5]) == pytest.approx(min(1 - 0.1 / 0.9, 4.0))
    assert np.isnan(tradeoff_gap([0.5], [0.1]))


# ------------------------------------------------------------------------------------- hypervolume
def test_hypervolume_of_known_small_fronts():
    # one point (acc 0.55, MSE 0.5) against reference (0.1, 1.0): rectangle 0.5 x 0.45 of the 1.0 x 0.9 box
    assert hypervolume([0.55], [0.5], 1.0) == pytest.approx(0.25)
    assert hypervolume([1.0], [0.0], 1.0) == pytest.approx(1.0)  # the ideal point dominates the whole box
    # two points: (0.55, 0.5) and (1.0, 0.75): union = 0.5 x 0.45 + 0.25 x 0.9 (the second's strip) ...
    # ... = area of [0.5, 1] x [0.1, 0.55] plus [0.75, 1] x [0.55, 1.0]
    assert hypervolume([0.55, 1.0], [0.5, 0.75], 1.0) == pytest.approx((0.5 * 0.45 + 0.25 * 0.45) / 0.9)
    assert hypervolume([], [], 1.0) == 0.0


def test_hypervolume_ignores_points_beyond_the_reference_and_nans():
    base = hypervolume([0.55], [0.5], 1.0)
    assert hypervolume([0.55, 0.05, 0.99, float("nan")], [0.5, 0.01, 1.2, 0.1], 1.0) == pytest.approx(base)
    assert hypervolume([0.1], [0.5], 1.0) == 0.0  # on the reference accuracy: no area
    with pytest.raises(ValueError, match="reference"):
        hypervolume([0.5], [0.5], 0.0)


_front = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 2)), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(_front, st.tuples(st.floats(0, 1), st.floats(0, 2)), st.floats(0.1, 2))
def test_hypervolume_is_in_unit_range_and_never_drops_when_a_point_is_added(points, extra, reference):
    acc, err = [p[0] for p in points], [p[1] for p in points]
    value = hypervolume(acc, err, reference)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert hypervolume([*acc, extra[0]], [*err, extra[1]], reference) >= value - 1e-12


@settings(max_examples=200, deadline=None)
@given(_front, st.floats(0, 0.5), st.floats(0, 1), st.floats(0.1, 2))
def test_hypervolume_grows_when_every_point_improves(points, gain, shrink, reference):
    """Monotone under dominance: a front whose every point has higher-or-equal accuracy and
    lower-or-equal error dominates at least the same area."""
    acc, err = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    better = hypervolume(np.minimum(acc + gain, 1.0), err * shrink, reference)
    assert better >= hypervolume(acc, err, reference) - 1e-12
    assert hypervolume(acc, err, reference) == pytest.approx(hypervolume(acc[pareto_optimal(acc, err)], err[pareto_optimal(acc, err)], reference))


def test_paired_change_verdicts_come_from_the_interval():
    assert paired_change([0.05])["verdict"] == "cannot tell, n = 1"
    up = paired_change([0.10, 0.12, 0.11])
    assert up["verdict"] == "softens" and up["ci_low"] > 0 and up["mean_change"] == pytest.approx(0.11)
    # t(0.975, 2) = 4.303; sd 0.01 -> half-width 4.303 * 0.01 / sqrt(3)
    assert up["ci_high"] - up["mean_change"] == pytest.approx(4.3027 * 0.01 / np.sqrt(3), rel=1e-3)
    assert paired_change([-0.1, -0.12, -0.11])["verdict"] == "harsher"
    assert paired_change([0.1, -0.1, 0.05])["verdict"] == "no detectable change"


def test_hypervolume_changes_pair_seeds_across_d_and_model_size():
    rows = []
    for seed, bump in ((0, 0.10), (1, 0.12)):
        for comp, extra in (("small", 0.0), ("medium", -0.05)):
            rows += [{"dataset": "mnist", "way": "bp", "complexity": comp, "latent": 2, "seed": seed, "hv_task": 0.5 + extra, "hv_latent": 0.4},
                     {"dataset": "mnist", "way": "bp", "complexity": comp, "latent": 16, "seed": seed, "hv_task": 0.5 + extra + bump,
                      "hv_latent": 0.4}]
    changes = hypervolume_changes(pd.DataFrame(rows)).set_index(["factor", "held", "front"])
    assert changes.loc[("d", "complexity=small", "task"), "mean_change"] == pytest.approx(0.11)
    assert changes.loc[("d", "complexity=small", "task"), "n"] == 2
    assert changes.loc[("model size", "latent=2", "task"), "mean_change"] == pytest.approx(-0.05)
    assert changes.loc[("d", "complexity=small", "latent"), "mean_change"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------- relaxation
def test_relaxing_the_hybrid_pcn_moves_its_latent_and_lowers_the_energy():
    """Fails if the relaxation chosen on validation leaves the latent where the encoder put it."""
    torch.manual_seed(0)
    model = models.rathjens_wiskott("small", 4, 64, 10, *tradeoff.precisions_for(0.5, 64))
    x = torch.tanh(torch.randn(200, 4) @ torch.randn(4, 64))  # images the decoder family can explain
    inference = Inference(steps=10, optimizer=SGD(0.005))
    choice = tradeoff.choose_relaxation(model, {"x": x}, inference, [0.01, 0.1, 1.0], [5, 10])
    assert choice["steps"] in (5, 10) and choice["energy_end"] < 0.9 * choice["energy_start"]
    chosen = Inference(steps=choice["steps"], optimizer=SGD(choice["lr"]))
    relaxed = relax(model, {"x": x}, chosen)
    moved = (relaxed.values["z"] - relaxed.initial["z"]).norm(dim=1) / relaxed.initial["z"].norm(dim=1)
    assert moved.mean() > 0.05
    assert model.energy(relaxed.values, {"x"}) < model.energy(relaxed.initial, {"x"})
    # the old fixed setting (10 steps at 0.005) barely moved it: the reason the choice exists
    old = relax(model, {"x": x}, inference)
    assert ((old.values["z"] - old.initial["z"]).norm(dim=1) / old.initial["z"].norm(dim=1)).mean() < 0.2 * moved.mean()


def test_choice_relaxes_nothing_without_an_energy():
    model = models.rathjens_wiskott("small", 4, 64, 10, *tradeoff.precisions_for(1.0, 64))  # no image energy at lam = 1
    choice = tradeoff.choose_relaxation(model, {"x": torch.rand(20, 64)}, Inference(steps=5), [0.1, 1.0], [5])
    assert choice["steps"] == 0


# ------------------------------------------------------------------------------------------ probes
def test_probes_read_information_the_latent_holds():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=g)
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    z = centres[labels] + 0.3 * torch.randn(600, 2, generator=g)
    noise = torch.randn(600, 2, generator=g)
    assert linear_probe_accuracy(z[:400], labels[:400], z[400:], labels[400:]) > 0.95
    assert linear_probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:]) < 0.6
    images = torch.tanh(z @ torch.randn(2, 16, generator=g))  # images that are a function of z
    good = decoder_probe_mse(z[:400], images[:400], z[400:], images[400:], features=256)
    bad = decoder_probe_mse(noise[:400], images[:400], noise[400:], images[400:], features=256)
    assert good < 0.1 * bad


# ---------------------------------------------------------------- the pure objectives at lam 0 and 1
def _batch(pixels=16, classes=3, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, pixels, generator=g) * 2 - 1
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-8, msg=f"parameter {name}")


@pytest.mark.parametrize("way", ["bp", "bpti"])
@pytest.mark.parametrize("lam, pure", [(0.0, TaskLoss(reconstruct={"x": 1.0})), (1.0, TaskLoss(classify={"y": 1.0}))])
def test_backprop_ways_reduce_to_the_pure_objective_at_the_ends(way, lam, pure):
    torch.manual_seed(0)
    model = models.rathjens_wiskott("medium", 3, 16, 3).double()
    x, y = _batch()
    batch = {"x": x.double(), "y": y}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.0)
    if way == "bp":
        mixed, single = Backprop(model, optimiser, TaskLoss.mix(lam), ("x",)), Backprop(model, optimiser, pure, ("x",))
    else:
        inference = Inference(steps=4, optimizer=SGD(0.05))
        mixed = BPThroughInference(model, inference, optimiser, TaskLoss.mix(lam), ("x",))
        single = BPThroughInference(model, inference, optimiser, pure, ("x",))
    _assert_same(_grads(model, lambda: mixed.objective(batch)[0]), _grads(model, lambda: single.objective(batch)[0]))


def _pc_update(model, batch, inference):
    """Parameter gradients of one amortised PC step (no optimiser step)."""
    rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.0))
    relaxed = relax(model, batch, inference)
    return _grads(model, lambda: rule.weight_energy(relaxed)), relaxed


def _pc_setting(lam):
    torch.manual_seed(0)
    model = models.rathjens_wiskott("medium", 3, 16, 3, *hybrid_precisions(lam, 16)).double()
    x, y = _batch()
    return model, x.double(), torch.nn.functional.one_hot(y, 3).double(), Inference(steps=5, optimizer=SGD(0.05))


def test_pc_at_lam_zero_is_the_pure_generative_update():
    """lam = 0: the label energy has weight 0, so the update equals PC learning with the image alone
    clamped (the label released: a read-out without energy), and the head learns nothing."""
    model, x, onehot, inference = _pc_setting(0.0)
    grads, _ = _pc_update(model, {"x": x, "y": onehot}, inference)
    reference, _ = _pc_update(model, {"x": x}, inference)
    head = [n for n in grads if "z_to_y" in n]
    assert head and all(grads[n].abs().max() == 0 for n in head)
    _assert_same({n: g for n, g in grads.items() if n not in head}, {n: g for n, g in reference.items() if n not in head})


def test_pc_at_lam_one_is_the_pure_classification_update():
    """lam = 1: the image energy has weight 0: the decoder learns nothing, and the relaxed latent and
    the head/encoder updates equal those of a model with no decoder at all (latent -> label only)."""
    model, x, onehot, inference = _pc_setting(1.0)
    grads, relaxed = _pc_update(model, {"x": x, "y": onehot}, inference)
    decoder = [n for n in grads if "z_to_x" in n]
    assert decoder and all(grads[n].abs().max() == 0 for n in decoder)

    from pclab.core import PCN
    amortiser = model.amortisers["z"]
    classifier = PCN([model.nodes[n] for n in ("x", "z", "y")], [("z", "y", model.module("z", "y"))],
                     [("x", "z", model.amortiser_modules[amortiser.key])])
    reference, pure_relaxed = _pc_update(classifier, {"x": x, "y": onehot}, inference)
    torch.testing.assert_close(relaxed.values["z"], pure_relaxed.values["z"])
    _assert_same({n: g for n, g in grads.items() if n not in decoder}, reference)


def test_hybrid_precisions_match_the_backprop_loss_weights():
    image, label = hybrid_precisions(0.5, 16)  # (1 - lam) * 2 / P : lam, the larger scaled to 1
    assert label == 1.0 and image == pytest.approx(2 / 16)
    assert hybrid_precisions(0.0, 16) == (1.0, 0.0) and hybrid_precisions(1.0, 16) == (0.0, 1.0)


def test_default_hybrid_has_the_latent_as_its_only_path_and_the_layered_function():
    """The default graph (x, z, y) computes the same feed-forward function as the layered one
    built from the same seed, and its stacked edges keep the hand-derived VJP exact."""
    torch.manual_seed(0)
    layered = models.rathjens_wiskott("large", 3, 16, 3, layered=True)
    torch.manual_seed(0)
    model = models.rathjens_wiskott("large", 3, 16, 3)
    assert list(model.nodes) == ["x", "z", "y"]
    assert len(list(model.parameters())) == len(list(layered.parameters()))
    x = torch.rand(5, 16)
    deep = layered.initial_state({"x": x}, "forward")
    flat = model.initial_state({"x": x}, "forward")
    torch.testing.assert_close(model.predictions(flat)["x"], layered.predictions(deep)["x"])
    torch.testing.assert_close(model.predictions(flat)["y"], layered.predictions(deep)["y"])
    grads, _ = model.latent_grads(flat, ["z"], {"x"}, method="manual")
    auto, _ = model.latent_grads(flat, ["z"], {"x"}, method="autograd")
    torch.testing.assert_close(grads["z"], auto["z"])


def test_findings_answer_from_hypervolume_changes_and_pair_each_way_with_backprop_over_seeds():
    from pclab.studies.stats import describe, paired_difference
    from pclab.studies.tradeoff.analysis import findings

    rows = []
    best = {"bp": [0.90, 0.92, 0.91], "pc": [0.85, 0.88, 0.86], "bpti": [0.89, 0.92, 0.90]}
    for way, accs in best.items():
        for seed, acc in enumerate(accs):
            for lam, (a, mse) in {0.0: (0.1, 0.05), 0.5: (acc, 0.08), 1.0: (acc - 0.01, 0.3)}.items():
                for latent in (2, 16):
                    recon = mse * (1.0 if way == "bp" else 1.1) / (1 + latent / 16)
                    rows.append({"dataset": "mnist", "way": way, "complexity": "small", "latent": latent, "lam": lam, "seed": seed,
                                 "test_accuracy": a, "recon_mse": recon, "probe_accuracy": a, "probe_mse": recon, "mean_image_mse": 0.5,
                                 "latent_movement": 0.2 if way != "bp" else float("nan"), "energy_drop": 0.3 if way != "bp" else float("nan")})
    lines = findings(pd.DataFrame(rows))
    assert len(lines) == 4  # d (one model size: no model-size sentence), two ways, the relaxation
    # a larger d lowers every MSE at the same accuracy: each front dominates more area, on every seed
    assert lines[0].startswith("Larger d (2 -> 16), change of the task front's hypervolume")
    assert lines[0].count(": softens") == 3 and "n=3 seeds" in lines[0]
    pc = describe(paired_difference([85.0, 88.0, 86.0], [90.0, 92.0, 91.0]))
    assert lines[1] == f"PC learning minus backprop, test accuracy at the same runs (lam > 0; mean of 4 points per seed): {pc}."
    assert lines[1].endswith("n=3 seeds).")  # an interval, and it excludes zero
    assert lines[2].startswith("Backprop through inference minus backprop, test accuracy at the same runs (lam > 0; mean of 4 points "
                               "per seed): -0.67 points")
    assert "no detectable difference" in lines[2]
    assert lines[3].startswith("Test-time relaxation") and "PC learning 0.200 (0.200-0.200) and 30.0 %" in lines[3]
    single = findings(pd.DataFrame([r for r in rows if r["seed"] == 0]))
    assert "(n=1 seed each: the intervals cannot be computed, so no verdict)" in single[0] and ": softens" not in single[0]
    assert all("(n=1 seed: the interval cannot be computed)" in line for line in single[1:3])
