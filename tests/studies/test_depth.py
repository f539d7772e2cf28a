"""The depth study: end to end on its tiny preset (serial, digits data); the larger presets'
grids and configs without running them; the phase-BN VGG and the init the study relies on."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from pclab.core.batchnorm import PhasedBatchNorm, WeightPhasePCLearning
from pclab.studies import depth
from pclab.train import build_model, load_data, make_batch, prepare
from pclab.train.config import DATA_SHAPES


def test_depth_study_tiny_preset_writes_report_and_tables(tmp_path):
    report = depth.run("tiny", tmp_path, executor="serial")
    assert report == tmp_path / "report.html" and report.exists()
    html = report.read_text()
    for text in ("Accuracy vs depth", "Diagnostics", "muPC", "Findings"):
        assert text in html
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    preset = depth.PRESETS["tiny"]
    mlp, vgg = accuracy[accuracy.model == "mlp"], accuracy[accuracy.model == "vgg-bn"]
    frozen = pd.read_csv(tmp_path / "tables" / "frozen_bottom.csv")
    assert set(frozen.depth) == set(preset["depths"]) and (frozen.reference == "spiking+fu").all()
    # bp-frozen runs only at the depths where the reference's bottom layers fall below AdamW's eps
    assert set(mlp.variant) == set(preset["variants"]) - ({"bp-frozen"} if (frozen.frozen_k == 0).all() else set())
    alignment = pd.read_csv(tmp_path / "tables" / "alignment.csv")
    assert set(alignment.stage) == {"init", "trained"} and alignment.cosine.between(-1 - 1e-6, 1 + 1e-6).all()
    assert set(mlp.depth) == set(preset["depths"])
    # one phase-BN VGG trained end to end per variant the preset names
    assert set(vgg.variant) == set(preset["vgg_variants"]) and set(vgg.depth) == set(preset["vgg_depths"])
    assert accuracy["median"].between(0, 100).all()
    gaps = pd.read_csv(tmp_path / "tables" / "gap_to_bp.csv")
    groups = len(accuracy[["model", "optimizer", "depth"]].drop_duplicates())  # one bp row per (model, optimiser, depth)
    assert "bp" not in set(gaps.variant) and len(gaps) == len(accuracy) - groups
    assert set(accuracy.optimizer) == set(preset["optimizers"])
    # tuning: every PC variant got a latent choice, every variant an SGD learning rate, all from the stated grid
    choices = pd.read_csv(tmp_path / "tables" / "tuning_choices.csv").set_index("variant")
    grid = preset["tuning"]
    for v in [v for v in preset["variants"] if v != "bp-frozen"]:
        assert choices.loc[f"sgd:{v}", "weight_lr"] in grid["sgd_lr"]
        if v not in ("bp", "bp-frozen"):
            assert choices.loc[v, "latent_optimizer"] in grid["latent_optimizers"] and choices.loc[v, "latent_lr"] in grid["latent_lr"]
            assert choices.loc[v, "steps_factor"] in (grid["steps"] if v in depth.STEPS_TUNED else [1])
    tuning = pd.read_csv(tmp_path / "tables" / "tuning.csv")
    assert len(tuning[tuning.stage == "sgd"]) == (len(preset["variants"]) - 1) * len(grid["sgd_lr"])  # bp-frozen takes bp's
    diag = pd.read_csv(tmp_path / "tables" / "diagnostics_digits.csv")
    assert set(diag.stage) == {"init", "trained"}
    init_pc = diag[(diag.variant == "pc") & (diag.stage == "init")].sort_values("layer")
    # feed-forward init: the output layer errs at step 0, the error walks down one layer per step
    n = preset["diagnostic_depth"]
    assert init_pc.first_error_step.tolist() == [n - 1 - layer for layer in range(n)]
    assert (diag[diag.variant == "bp"].grad_norm > 0).all()
    mupc = pd.read_csv(tmp_path / "tables" / "mupc.csv")
    assert set(mupc.parameterisation) == {"mupc", "standard"} and set(mupc.rule) == {"pc", "bp", "epc"}
    assert "mupc/pc (skip delay 1)" in set(mupc.run) and mupc.final_test_accuracy.between(0, 100).all()
    for figure in ("accuracy_vs_depth", "mupc", "error_heatmap_digits_init", "grad_norm_digits_trained", "tuning", "energy_vs_step_digits",
                   "alignment"):
        assert (tmp_path / "figures" / f"{figure}.png").exists()
    assert not (tmp_path / "tables" / "failures.csv").exists()


def test_a_vgg_only_run_writes_its_report(tmp_path):
    overrides = {"datasets": [], "vgg_variants": ["pc", "bp"], "mupc": {"runs": []}}
    report = depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    assert set(accuracy.model) == {"vgg-bn"} and set(accuracy.variant) == {"pc", "bp"}
    assert "vgg-bn" in report.read_text()


def test_rerun_skips_finished_trials(tmp_path):
    overrides = {"depths": [3], "variants": ["pc", "bp"], "optimizers": ["adamw"], "vgg_dataset": None, "mupc": {"runs": [["mupc", "pc"]]},
                 "tuning": {"latent_optimizers": ["sgd"], "steps": [1]}}
    depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")}
    assert len(stamps) == 4  # one tuning trial (pc), pc, bp, muPC
    depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")} == stamps


def _accuracy_configs(preset: str) -> tuple[list[dict], list[dict]]:
    """(accuracy trials with their validated configs attached, muPC trials) of a preset."""
    trials = depth.trials(depth._resolve(preset, None), depth.Path("unused"))
    accuracy = [p for p in trials if p["kind"] == "accuracy"]
    for p in accuracy:
        (c, h, w), classes = DATA_SHAPES[p["dataset"]]
        p["config"] = depth._config(p, c * h * w, classes)  # raises if a trial's config is invalid
    return accuracy, [p for p in trials if p["kind"] == "mupc"]


@pytest.mark.parametrize("preset", ["quick", "standard", "full"])
def test_every_trial_of_the_larger_presets_has_a_valid_config(preset):
    config = depth._resolve(preset, None)
    assert depth.check_trials(config, depth.Path("unused")) > 0  # tuning and final trials validate
    accuracy, mupc = _accuracy_configs(preset)
    assert accuracy and mupc
    for p in accuracy:
        c = p["config"]
        assert c.epochs == config["epochs"] and c.data.batch_size == config["training"]["batch_size"]
        assert c.inference.steps == p["depth"] * p.get("steps_factor", 1)
        assert c.learning.optimizer == p["optimizer"] and (c.learning.momentum > 0) == (p["optimizer"] == "sgd")
        assert c.inference.parametrisation == depth.VARIANTS[p["variant"]].get("parametrisation", "state")
        if p["model"] == "mlp":
            assert c.model.kind == "mlp" and len(c.model.widths) == p["depth"] + 1 and c.model.init == "lecun"


def test_quick_preset_has_epc_and_a_small_grid():
    accuracy, mupc = _accuracy_configs("quick")
    grid = {(p["dataset"], p["depth"], p["variant"], p["optimizer"], p["seed"]) for p in accuracy}
    assert grid == {("mnist", d, v, "adamw", 0) for d in (5, 10) for v in ("pc", "spiking+fu", "epc", "bp")}
    assert {(p["parameterisation"], p["rule"], p["iterations"]) for p in mupc} == {("mupc", "pc", 100), ("mupc", "bp", 100)}


def test_standard_preset_answers_the_questions():
    config = depth._resolve("standard", None)
    accuracy, mupc = _accuracy_configs("standard")
    main = ("pc", "spiking+fu", "epc", "epc+fu", "bpti", "bp", "bp-frozen")  # trials() without measured k: bp-frozen at every depth
    expected = {(d, v, o, s) for d in (5, 10, 15, 20) for v in main for o in ("adamw", "sgd") for s in (0, 1, 2)}
    expected |= {(20, v, o, s) for v in ("spiking", "decaying+fu") for o in ("adamw", "sgd") for s in (0, 1, 2)}
    grid = [(p["depth"], p["variant"], p["optimizer"], p["seed"]) for p in accuracy]
    assert len(grid) == len(set(grid)) and set(grid) == expected and {p["dataset"] for p in accuracy} == {"mnist"}
    for p in accuracy:
        c = p["config"]
        assert c.learning.schedule == "cosine" and c.learning.forward_update == depth.VARIANTS[p["variant"]]["forward_update"]
    # tuning happens at the deepest depth only, on the validation split, never on the test set
    tuning = depth.latent_trials(config, depth.Path("unused"))
    assert {p["depth"] for p in tuning} == {20} and all(p["kind"] == "tune" and p["validation"] == 5_000 for p in tuning)
    per_variant = {v: sum(p["variant"] == v for p in tuning) for v in ("pc", "spiking+fu", "epc", "bpti")}
    assert per_variant == {"pc": 18, "spiking+fu": 6, "epc": 18, "bpti": 18}  # 2 optimisers x 3 steps (x 3 T where T matters)
    # muPC, backprop and ePC on the same residual network, and PC with one auxiliary node on each skip path
    assert sorted((p["parameterisation"], p["rule"], p.get("skip_delay", 0), p["seed"]) for p in mupc) == sorted(
        (param, rule, delay, seed) for param, rule, delay in (("mupc", "pc", 0), ("mupc", "bp", 0), ("mupc", "epc", 0), ("mupc", "pc", 1))
        for seed in (0, 1, 2))
    assert {p["depth"] for p in mupc} == {20}


def test_validation_split_is_disjoint_stratified_and_keeps_the_rest():
    from pclab.data import load

    train = load("digits", "train")
    rest, held = depth.validation_split(train, 200)
    assert len(rest) + len(held) == len(train) and len(held) == 200 and held.split == "validation"
    # every image lands in exactly one part: the two parts together are the training set
    key = lambda d: sorted(map(tuple, d.images.reshape(len(d), -1)[:, ::7].tolist()))  # noqa: E731
    assert key(rest) + key(held) != [] and sorted(key(rest) + key(held)) == key(train)
    counts = torch.bincount(held.labels, minlength=10).float()
    assert float(counts.max() - counts.min()) <= 2  # stratified: classes are near-balanced in digits
    with pytest.raises(ValueError, match="validation split"):
        depth.validation_split(train, len(train))


def test_choose_takes_the_best_validation_accuracy_and_never_a_diverged_trial():
    def record(variant, lr, acc, status="ok"):
        result = {"validation_accuracy": acc} if status == "ok" else None
        return {"params": {"variant": variant, "latent_lr": lr}, "status": status, "result": result, "error": "x"}

    records = [record("pc", 0.1, 80.0), record("pc", 0.3, float("nan")), record("pc", 0.5, 85.0), record("pc", 0.7, 85.0),
               record("epc", 0.1, 0.0, "failed"), record("epc", 0.3, 10.0)]
    chosen = depth.choose(records, ("latent_lr",))
    assert chosen["pc"] == {"latent_lr": 0.5, "validation_accuracy": 85.0}  # a tie goes to the first in grid order
    assert chosen["epc"] == {"latent_lr": 0.3, "validation_accuracy": 10.0}
    assert depth.choose([record("pc", 0.1, float("nan"))], ("latent_lr",))["pc"]["latent_lr"] == 0.1


def test_study_vgg_is_the_phase_batchnorm_vgg():
    p = {"training": depth._TRAINING, "variant": "spiking+fu", "model": "vgg-bn", "depth": 3, "vgg_width": 4,
         "dataset": "digits", "train_subset": 64, "test_subset": 32, "epochs": 1, "seed": 0}
    pc_config = depth._config(p, 64, 10)
    bp_config = depth._config({**p, "variant": "bp"}, 64, 10)
    assert pc_config.model.kind == bp_config.model.kind == "vgg_bn"
    data = load_data(pc_config)
    images, labels = data[0].images[:16], data[0].labels[:16]
    for config in (pc_config, bp_config):
        run = prepare(config, data)
        norms = [m for m in run.model.modules() if isinstance(m, PhasedBatchNorm)]
        assert len(norms) == 2  # one per conv block
        assert isinstance(run.rule, WeightPhasePCLearning) == (config.learning.rule == "pc")
        before = norms[0].running_mean.clone()
        run.rule.step(make_batch(config, images, labels, 10))
        # running statistics move exactly once per batch, whatever the number of relaxation steps
        assert all(int(m.num_batches_tracked) == 1 for m in norms)
        assert not torch.equal(norms[0].running_mean, before)


def test_lecun_init_draws_unit_gain_weights_and_zero_biases():
    p = {"training": {**depth._TRAINING, "width": 256}, "variant": "bp", "model": "mlp", "depth": 4,
         "dataset": "mnist", "train_subset": None, "test_subset": None, "epochs": 1, "seed": 0}
    config = depth._config(p, 784, 10)
    model = build_model(config, (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for layer in linears:
        std = float(layer.weight.detach().std())
        # PyTorch's default would give 1 / sqrt(3 fan_in), 42 % lower
        assert abs(std * math.sqrt(layer.in_features) - 1.0) < 0.05
        assert float(layer.bias.detach().abs().max()) == 0.0


def test_a_misspelt_study_setting_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'epoch': unknown"):
        depth._resolve("quick", {"epoch": 3})
    with pytest.raises(ValueError, match="mupc.iteration: unknown"):
        depth._resolve("quick", {"mupc": {"iteration": 10}})
    config = depth._resolve("standard", {"vgg_variants": ["bp"], "mupc": {"iterations": 10}})
    assert config["vgg_variants"] == ["bp"] and config["mupc"]["iterations"] == 10 and config["mupc"]["width"] == 128


def test_findings_are_seed_paired_differences_with_their_interval():
    from pclab.studies.stats import describe, paired_difference

    values = {(3, "pc"): [97.0, 97.2, 97.1], (3, "bp"): [97.5, 97.3, 97.4], (3, "epc"): [97.1, 97.0, 97.2],
              (15, "pc"): [11.0, 10.0, 12.0], (15, "bp"): [95.5, 95.7, 95.6], (15, "epc"): [95.4, 95.8, 95.5],
              (15, "spiking+fu"): [94.0, 94.4, 93.0]}
    rows = [{"dataset": "mnist", "model": "mlp", "optimizer": "adamw", "depth": d, "variant": v, "seed": s, "test_accuracy": acc}
            for (d, v), accs in values.items() for s, acc in enumerate(accs)]
    mupc = pd.DataFrame([{"parameterisation": "mupc", "rule": r, "seed": s, "final_test_accuracy": a, "iterations_run": 900, "depth": 30}
                         for r, accs in (("pc", (92.0, 93.0, 92.5)), ("bp", (95.0, 95.5, 95.2))) for s, a in enumerate(accs)])
    tuning = pd.DataFrame([{"variant": "pc", "latent_optimizer": "sgd", "latent_lr": 0.1, "steps_factor": k, "validation_accuracy": a,
                            "diverged": a != a} for k, a in ((1, 90.0), (2, 91.5), (4, float("nan")))])
    choices = {"pc": {"latent_optimizer": "sgd", "latent_lr": 0.1, "steps_factor": 2}, "sgd:pc": {"weight_lr": 0.03}}
    lines = depth.findings(pd.DataFrame(rows), mupc, choices, tuning, 15)
    drop = describe(paired_difference([11.0, 10.0, 12.0], [97.0, 97.2, 97.1]))
    # the verdicts first: (a), then (b)
    assert lines[0] == "mnist MLP, adamw: tuned vanilla PC loses more than 1 point (whole interval below -1) from depth 15 on, against depth 3."
    assert lines[1] == "mnist MLP, adamw, depth 15: within 1 point of backprop (whole interval inside +-1): epc."
    assert f"mnist MLP, adamw: tuned vanilla PC at depth 15 minus at depth 3: {drop}." in lines
    epc = describe(paired_difference([95.4, 95.8, 95.5], [95.5, 95.7, 95.6]))
    assert f"mnist MLP, adamw, depth 15: epc minus backprop: {epc}." in lines and "within 1 point" in epc
    assert any(line.startswith("mnist MLP, adamw, depth 15: epc minus spiking+fu: +1.77 points") for line in lines)
    assert any(line.startswith("Residual MLP, depth 30, 900 iterations: mupc/pc minus backprop on the same network (mupc/bp), test accuracy: "
                               "-2.73 points") for line in lines)
    assert lines[-1] == ("Relaxation of pc (chosen on validation at depth 15): latent sgd step 0.1, T = 2 x depth; validation accuracy at "
                         "T = 1N: 90.00 %, 2N: 91.50 %, 4N: diverged (one seed).")
    one_seed = depth.findings(pd.DataFrame([r for r in rows if r["seed"] == 0]), mupc.iloc[:0])
    assert all("(n=1 seed: the interval cannot be computed)" in line for line in one_seed if "minus" in line)
    assert "loses more than 1 point (whole interval below -1) at no depth of this run" in one_seed[0]
    bottom = {15: {"reference": "spiking+fu", "median_abs": [1e-9, 1e-4], "k": 1}}
    assert depth.findings(pd.DataFrame(rows), mupc, bottom=bottom)[2] == (
        "Frozen-bottom control (bp-frozen, backprop with the bottom k layers never trained): k = 1 at depth 15 (layers whose median "
        "spiking+fu gradient element is at or below AdamW's eps 1e-08 at initialisation; no bp-frozen trial where k = 0).")


def _run_and_batch(variant: str, n: int = 6, latent_lr: float = 0.5):
    p = {"kind": "accuracy", "training": depth.PRESETS["tiny"]["training"], "variant": variant, "model": "mlp", "depth": n,
         "dataset": "digits", "train_subset": 64, "test_subset": 32, "epochs": 1, "seed": 0, "latent_lr": latent_lr}
    config = depth._config(p, 64, 10)
    data = load_data(config)
    return prepare(config, data), make_batch(config, data[0].images[:32], data[0].labels[:32], 10)


def test_spiking_forward_update_is_layerwise_rescaled_backprop():
    # the claim, measured: cosine 1 with backprop's gradient, norm ratio (1 - eta) eta^(N-1-l), output layer 1
    eta, n = 0.5, 6
    a = depth.alignment(*_run_and_batch("spiking+fu", n, eta))
    assert a["cosine"] == pytest.approx([1.0] * n, abs=1e-5)  # float32 weights
    assert a["norm_ratio"] == pytest.approx([(1 - eta) * eta ** (n - 1 - layer) for layer in range(n - 1)] + [1.0], rel=2e-2)
    bp = depth.alignment(*_run_and_batch("bp", n))
    assert bp["cosine"] == pytest.approx([1.0] * n) and bp["norm_ratio"] == pytest.approx([1.0] * n)
    assert bp["median_abs"] == bp["bp_median_abs"]
    vanilla = depth.alignment(*_run_and_batch("pc", n, eta))
    assert min(vanilla["cosine"]) < 0.9  # vanilla PC after T = N steps is not rescaled backprop: the measure can tell


def test_frozen_layers_counts_the_bottom_run_at_or_below_eps():
    assert depth.frozen_layers([1e-10, 5e-9, 1e-8, 2e-8, 1e-10]) == 3
    assert depth.frozen_layers([1e-4, 1e-10]) == 0 and depth.frozen_layers([1e-9, 1e-9]) == 2
    assert depth.frozen_layers([float("nan"), 1e-10]) == 0


def test_every_method_has_its_own_colour():
    assert set(depth.VARIANTS) <= set(depth._COLOURS) and len(set(depth._COLOURS.values())) == len(depth._COLOURS)


def test_a_tuning_trial_never_loads_the_test_set(monkeypatch):
    loaded = []
    real = depth.pdata.load

    def load(name, split, *args, **kwargs):
        loaded.append(split)
        return real(name, split, *args, **kwargs)

    monkeypatch.setattr(depth.pdata, "load", load)
    monkeypatch.setattr(depth, "load_data", lambda config: pytest.fail("a tuning trial loaded the train/test pair"))
    p = {"kind": "tune", "training": depth.PRESETS["tiny"]["training"], "variant": "pc", "model": "mlp", "depth": 3, "dataset": "digits",
         "train_subset": 128, "test_subset": None, "validation": 64, "epochs": 1, "seed": 0, "latent_lr": 0.1}
    result = depth.accuracy_trial(p)
    assert set(loaded) == {"train"} and 0 <= result["validation_accuracy"] <= 100 and len(result["validation_per_epoch"]) == 1
    assert "test_accuracy" not in result and result["cpu_seconds"] > 0
