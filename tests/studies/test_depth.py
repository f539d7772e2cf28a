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
    assert set(mlp.variant) == set(preset["variants"])
    assert set(mlp.depth) == set(preset["depths"])
    # one phase-BN VGG trained end to end per variant the preset names
    assert set(vgg.variant) == set(preset["vgg_variants"]) and set(vgg.depth) == set(preset["vgg_depths"])
    assert accuracy["median"].between(0, 100).all()
    gaps = pd.read_csv(tmp_path / "tables" / "gap_to_bp.csv")
    groups = len(accuracy[["model", "depth"]].drop_duplicates())  # one bp row per (model, depth)
    assert "bp" not in set(gaps.variant) and len(gaps) == len(accuracy) - groups
    diag = pd.read_csv(tmp_path / "tables" / "diagnostics_digits.csv")
    assert set(diag.stage) == {"init", "trained"}
    init_pc = diag[(diag.variant == "pc") & (diag.stage == "init")].sort_values("layer")
    # feed-forward init: the output layer errs at step 0, the error walks down one layer per step
    n = preset["diagnostic_depth"]
    assert init_pc.first_error_step.tolist() == [n - 1 - layer for layer in range(n)]
    assert (diag[diag.variant == "bp"].grad_norm > 0).all()
    mupc = pd.read_csv(tmp_path / "tables" / "mupc.csv")
    assert set(mupc.parameterisation) == {"mupc", "standard"}
    for figure in ("accuracy_vs_depth", "mupc", "error_heatmap_digits_init", "grad_norm_digits_trained"):
        assert (tmp_path / "figures" / f"{figure}.png").exists()
    assert not (tmp_path / "tables" / "failures.csv").exists()


def test_a_vgg_only_run_writes_its_report(tmp_path):
    overrides = {"datasets": [], "vgg_variants": ["pc", "bp"], "mupc": {"runs": []}}
    report = depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    assert set(accuracy.model) == {"vgg-bn"} and set(accuracy.variant) == {"pc", "bp"}
    assert "vgg-bn" in report.read_text()


def test_rerun_skips_finished_trials(tmp_path):
    overrides = {"depths": [3], "variants": ["pc", "bp"], "vgg_dataset": None, "mupc": {"runs": [["mupc", "pc"]]}}
    depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")}
    assert len(stamps) == 3
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


@pytest.mark.parametrize("preset", ["quick", "targets", "full"])
def test_every_trial_of_the_larger_presets_has_a_valid_config(preset):
    accuracy, mupc = _accuracy_configs(preset)
    config = depth.PRESETS[preset]
    assert accuracy and mupc
    for p in accuracy:
        c = p["config"]
        assert c.epochs == config["epochs"] and c.data.batch_size == config["training"]["batch_size"]
        assert c.inference.steps == p["depth"]
        if p["model"] == "mlp":
            assert c.model.kind == "mlp" and len(c.model.widths) == p["depth"] + 1 and c.model.init == "lecun"


def test_quick_preset_trains_bp_on_all_images_at_batch_128():
    accuracy, mupc = _accuracy_configs("quick")
    grid = {(p["dataset"], p["depth"], p["variant"], p["seed"]) for p in accuracy}
    assert grid == {("mnist", d, v, 0) for d in (3, 7, 11, 15) for v in ("pc", "spiking+fu", "decaying+fu", "bp")}
    assert all(p["config"].data.train_subset is None and p["config"].data.batch_size == 128 for p in accuracy)
    assert {(p["parameterisation"], p["iterations"]) for p in mupc} == {("mupc", 200), ("standard", 200)}


def test_targets_preset_grid_is_what_it_says():
    accuracy, mupc = _accuracy_configs("targets")
    main = ("pc", "spiking+fu", "decaying+fu", "bp")
    expected = {(ds, d, v, s) for ds in ("mnist", "fashion-mnist") for d in (3, 7, 11, 15) for v in main for s in (0, 1)}
    expected |= {(ds, 15, v, s) for ds in ("mnist", "fashion-mnist") for v in ("pc+fu", "spiking", "decaying") for s in (0, 1)}
    grid = [(p["dataset"], p["depth"], p["variant"], p["seed"]) for p in accuracy]
    assert len(grid) == len(set(grid)) and set(grid) == expected
    for p in accuracy:
        c = p["config"]
        assert c.data.train_subset is None and c.data.test_subset is None and c.data.batch_size == 128
        assert c.learning.schedule == "cosine" and c.learning.forward_update == depth.VARIANTS[p["variant"]]["forward_update"]
    diagnosed = {(p["dataset"], p["variant"]) for p in accuracy if p["diagnostics"]}
    assert diagnosed == {(ds, v) for ds in ("mnist", "fashion-mnist") for v in (*main, "pc+fu", "spiking", "decaying")}
    assert sorted((p["parameterisation"], p["rule"], p["iterations"], p["depth"], p["width"]) for p in mupc) == [
        ("mupc", "pc", 900, 30, 128), ("standard", "pc", 900, 30, 128)]


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


def test_summary_states_failure_gaps_targets_and_mupc_from_the_numbers():
    rows = []
    accuracy = {  # (dataset, depth) -> variant -> per-seed accuracy
        ("mnist", 3): {"pc": [97.0, 97.2], "spiking+fu": [97.1, 97.0], "bp": [97.5, 97.3]},
        ("mnist", 15): {"pc": [11.0, 10.0], "spiking+fu": [94.0, 94.4], "bp": [95.5, 95.7]},
        ("fashion-mnist", 3): {"pc": [87.0, 87.0], "spiking+fu": [87.5, 87.1], "bp": [88.0, 88.2]},
        ("fashion-mnist", 15): {"pc": [10.0, 10.0], "spiking+fu": [85.0, 85.2], "bp": [86.0, 86.4]},
    }
    for (dataset, d), variants in accuracy.items():
        for variant, values in variants.items():
            for seed, value in enumerate(values):
                rows.append({"dataset": dataset, "model": "mlp", "depth": d, "variant": variant, "seed": seed,
                             "best_test_accuracy": value, "epoch_seconds": 1.0})
    frame = pd.DataFrame(rows)
    mupc = pd.DataFrame([{"parameterisation": "mupc", "rule": "pc", "final_test_accuracy": 92.0, "iterations_run": 900,
                          "depth": 30, "width": 128, "diverged": False}])
    lines = depth._summary({"diagnostic_depth": 15}, depth.accuracy_table(frame), depth.gap_table(frame), mupc, {}, [])
    text = "\n".join(lines)
    assert "mnist mlp: vanilla PC loses accuracy with depth (97.10 % at depth 3, 10.50 % at depth 15" in text
    # MNIST: best gap -0.35 at depth 3 (met), -1.40 at depth 15 (missed); Fashion-MNIST: -0.80, -1.10 (both met)
    assert "depth 15: spiking+fu -1.40" in text and "Target (within 1.0 points of bp): NOT met at depth 15 (run: 3, 15)" in text
    assert "Target (within 2.0 points of bp): met at depths 3, 15" in text
    assert "after 900 iterations" in text and "-1.26 points from it" in text


def test_a_misspelt_study_setting_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'epoch': unknown"):
        depth._resolve("quick", {"epoch": 3})
    with pytest.raises(ValueError, match="mupc.iteration: unknown"):
        depth._resolve("quick", {"mupc": {"iteration": 10}})
    config = depth._resolve("targets", {"vgg_variants": ["bp"], "mupc": {"iterations": 10}})
    assert config["vgg_variants"] == ["bp"] and config["mupc"]["iterations"] == 10 and config["mupc"]["width"] == 128


def test_findings_are_seed_paired_differences_with_their_interval():
    from pclab.studies.stats import describe, paired_difference

    rows = [{"dataset": "mnist", "model": "mlp", "depth": d, "variant": v, "seed": s, "best_test_accuracy": acc}
            for (d, v), values in {(3, "pc"): [97.0, 97.2], (3, "bp"): [97.5, 97.3], (3, "spiking+fu"): [97.1, 97.0],
                                   (15, "pc"): [11.0, 10.0], (15, "bp"): [95.5, 95.7], (15, "spiking+fu"): [94.0, 94.4]}.items()
            for s, acc in enumerate(values)]
    mupc = pd.DataFrame([{"parameterisation": "mupc", "rule": "pc", "final_test_accuracy": a, "iterations_run": 900, "depth": 30}
                         for a in (92.0, 93.0)])
    lines = depth.findings(pd.DataFrame(rows), mupc)
    pc, best = describe(paired_difference([11.0, 10.0], [95.5, 95.7])), describe(paired_difference([94.0, 94.4], [95.5, 95.7]))
    assert lines[0] == f"mnist MLP, depth 15: vanilla PC minus backprop, best test accuracy: {pc}."
    assert lines[0].startswith("mnist MLP, depth 15: vanilla PC minus backprop, best test accuracy: -85.10 points (95 % CI -92.7")
    assert lines[1] == f"mnist MLP, depth 15: best of 1 PC variant (spiking+fu) minus backprop: {best}."
    assert lines[2].startswith("mnist MLP: vanilla PC at depth 15 minus at depth 3: -86.60 points")
    assert lines[3].startswith("Residual MLP, depth 30, muPC, pc: test accuracy after 900 iterations: 92.50 % (95 % CI 86.1")
    one_seed = depth.findings(pd.DataFrame([r for r in rows if r["seed"] == 0]), mupc.iloc[:0])
    assert all("(n=1 seed: the interval cannot be computed)" in line for line in one_seed) and len(one_seed) == 3
