"""Study "clarity": input reconstruction from a layer's embedding (Badger 2022; REFERENCE 6)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from pclab import models
from pclab.core import Inference
from pclab.studies import clarity
from pclab.studies.clarity import (
    InversionConfig,
    clarity_metrics,
    forward_embedding,
    gaussian_blur,
    initial_input,
    invert,
    layer_depths,
    native_reconstruction,
    psnr,
    ssim,
)

torch.set_num_threads(1)

ADAM = InversionConfig(steps=600, lr=0.05, lr_final=0.0, optimizer="adam")
SGD = InversionConfig(steps=600, lr=0.05, lr_final=0.0, optimizer="sgd")


def _frozen_linear(n_in: int, n_out: int, orthogonal: bool = False) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(n_in, n_out)
    if orthogonal:
        q, _ = torch.linalg.qr(torch.randn(n_in, n_in))
        layer.weight.data = q[:n_out]
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


def _reconstruct(layer: torch.nn.Module, images: torch.Tensor, config: InversionConfig = ADAM):
    """Images (N, 1, 8, 8) in [0, 1] -> (reconstruction, metrics) through a flat layer."""
    x = images.reshape(len(images), -1)
    start = initial_input(tuple(x.shape), config, generator=torch.Generator().manual_seed(1))
    recon = invert(layer, layer(x), start, config)
    metrics = clarity_metrics(layer, x, recon, lambda a: a.reshape(len(a), 1, 8, 8), 0.05,
                              generator=torch.Generator().manual_seed(2))
    return recon, metrics


def _images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- the two named checks
def test_invertible_linear_layer_is_inverted_to_near_zero_input_distance():
    images = _images()
    _, m = _reconstruct(_frozen_linear(64, 64, orthogonal=True), images)
    start_distance = (initial_input((8, 64), ADAM, generator=torch.Generator().manual_seed(1)) - images.reshape(8, -1)).norm(dim=1)
    assert m.m_i.max() < 1e-2 * start_distance.min()   # from ~3 unit pixels to below 0.03
    assert (m.m_g < m.m_r).all()
    assert (m.ssim > 0.999).all()


def test_layer_narrower_than_its_input_is_not_inverted():
    images = _images()
    layer = _frozen_linear(64, 16)
    _, m = _reconstruct(layer, images, SGD)
    # the embedding is matched better than a small input perturbation manages ...
    assert (m.m_g < m.m_r).all()
    # ... yet the image is far away: a 48-dimensional null space of inputs shares the embedding.
    assert (m.m_i > 3 * m.m_i_perturbation).all()
    # Plain gradient steps lie in the row space, so the start's null-space component is never removed:
    # m_i = ||P_null (a_0 - a_target)||, which the metric reports.
    x = images.reshape(8, -1)
    start = initial_input((8, 64), SGD, generator=torch.Generator().manual_seed(1))
    w = layer.weight
    null = torch.eye(64) - w.T @ torch.linalg.solve(w @ w.T, w)
    assert torch.allclose(m.m_i, ((start - x) @ null).norm(dim=1), rtol=0.02)
    _, square = _reconstruct(_frozen_linear(64, 64, orthogonal=True), images)
    assert m.m_i.min() > 50 * square.m_i.max()
    assert (m.ssim < square.ssim).all()


def test_constant_step_gradient_descent_stalls_on_the_l1_loss():
    """Badger's plain constant step leaves the L1 descent oscillating; annealing the step settles it."""
    layer = _frozen_linear(64, 64, orthogonal=True)
    _, constant = _reconstruct(layer, _images(), InversionConfig(steps=300, lr=0.1))
    _, annealed = _reconstruct(layer, _images(), InversionConfig(steps=300, lr=0.1, lr_final=0.0))
    assert annealed.m_i.median() < 0.5 * constant.m_i.median()


# ---------------------------------------------------------------------------- image utilities
def test_ssim_of_identical_images_is_one_and_lower_for_different_images():
    images = _images(4)
    assert torch.allclose(ssim(images, images), torch.ones(4), atol=1e-6)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert (ssim(noisy, images) < 0.95).all()
    big = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(ssim(big, big), torch.ones(2), atol=1e-6)


def test_psnr_matches_its_definition():
    images = _images(2)
    shifted = images + 0.1
    assert torch.allclose(psnr(shifted, images), torch.full((2,), 20.0), atol=1e-4)   # 10 log10(1 / 0.01)
    assert (psnr(images, images) == 100.0).all()


def test_gaussian_blur_keeps_constant_images_and_smooths_noise():
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat, atol=1e-6)
    noise = _images(2)
    assert gaussian_blur(noise, 1.0).std() < 0.6 * noise.std()
    assert torch.equal(gaussian_blur(noise, 0.0), noise)


def test_inversion_with_blur_runs_on_flat_inputs():
    config = InversionConfig(steps=20, lr=0.05, lr_final=0.0, optimizer="adam", blur_start=1.0, blur_end=0.2)
    layer = _frozen_linear(64, 64, orthogonal=True)
    x = _images(2).reshape(2, -1)
    recon = invert(layer, layer(x), initial_input((2, 64), config), config, image_shape=(1, 8, 8))
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    with pytest.raises(ValueError, match="image_shape"):
        invert(layer, layer(x), initial_input((2, 64), config), config)


def test_inversion_config_names_bad_settings():
    with pytest.raises(ValueError, match="unknown inversion settings"):
        InversionConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="optimizer"):
        InversionConfig(optimizer="lbfgs")


# ---------------------------------------------------------------------------- PCN layers and routes
def test_layers_of_a_chain_a_hybrid_and_a_generative_model():
    assert layer_depths(models.mlp([64, 32, 16, 10])) == {"h1": 1, "h2": 2, "y": 3}
    assert layer_depths(models.rathjens_wiskott("medium", latent=4, image=64, layered=True)) == {"z": 1, "c1": 2, "y": 3}
    assert layer_depths(models.generative_mlp([8, 32, 64])) == {}


def test_forward_embedding_is_the_feedforward_value_of_the_node():
    torch.manual_seed(0)
    net = models.mlp([64, 32, 16, 10])
    x = _images(3).reshape(3, -1)
    values = net.initial_state({"x": x}, "forward")
    for layer in ("h1", "h2", "y"):
        assert torch.allclose(forward_embedding(net, layer)(x), values[layer])


def test_native_route_of_a_hybrid_reads_the_decoders_image():
    torch.manual_seed(0)
    net = models.rathjens_wiskott("small", latent=4, image=64)
    z = torch.randn(3, 4)
    start = torch.zeros(3, 64)
    recon = native_reconstruction(net, "z", z, start, Inference(steps=5))
    assert torch.allclose(recon, net.module("z", "x")(z), atol=1e-6)


# ---------------------------------------------------------------------------- the study end to end
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clarity")
    clarity.run("tiny", out, executor="serial")
    return out


def test_tiny_study_writes_report_tables_and_figures(tiny_study: Path):
    out = tiny_study
    html = (out / "report.html").read_text()
    assert "Findings" in html and "Width test" in html
    for name in ("grid_gradient", "grid_pcn", "depth_gradient", "width_test"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    layers = pd.read_csv(out / "tables" / "layers.csv")
    assert {"m_g_median", "m_r_median", "m_i_median", "psnr_median", "ssim_median"} <= set(layers.columns)
    assert {"pc", "bp-through-inference", "bp", "untrained"} <= set(layers["rule"])
    # the generative direction: gradient descent through the relaxation at the generative layers
    assert set(layers["route"]) == {"gradient", "gradient-relaxed", "pcn"}
    assert set(layers.loc[layers["route"] == "gradient-relaxed", "arch"]) == {"hybrid", "generative"}
    tiny = clarity.PRESETS["tiny"]
    assert (layers["n"] == tiny["images"] * len(tiny["seeds"])).all()
    width = pd.read_csv(out / "tables" / "width_test.csv")
    size = int(width["input_size"].iloc[0])
    assert (width["width"] < size).any() and (width["width"] > size).any()
    assert pd.read_csv(out / "tables" / "failures.csv").empty
    models_table = pd.read_csv(out / "tables" / "models.csv")
    assert models_table.loc[models_table["arch"].isin(["hybrid", "generative"]), "generative_path"].all()
    trained = models_table[models_table["rule"] != "untrained"]
    assert trained["best_epoch"].between(1, tiny["training"]["epochs"]).all() and trained["validation"].notna().all()
    assert trained.loc[(trained["arch"] == "wide") & trained["rule"].isin(["pc", "bp"]), "test_accuracy"].gt(0.5).all()
    # 2 chains x 3 rules + the hybrid + the generative chain, per seed
    assert len(list((out / "models").iterdir())) == 8 * len(tiny["seeds"])
    assert set(width["procedure"]) == {"pclab", "badger"} and set(width["rule"]) == {"untrained", "pc"}


def test_width_test_on_digits_shows_narrow_layers_are_not_inverted(tiny_study: Path):
    width = pd.read_csv(tiny_study / "tables" / "width_test.csv")
    grad = width[(width["route"] == "gradient") & (width["rule"] == "untrained") & (width["procedure"] == "pclab")]
    size = int(grad["input_size"].iloc[0])
    assert grad.loc[grad["width"] < size, "m_i_median"].min() > grad.loc[grad["width"] >= size, "m_i_median"].max()


def test_study_accepts_run_directories(tmp_path: Path):
    from pclab.train import train, validate

    run_dir = tmp_path / "runs" / "wide-pc"
    train(validate({"model": {"kind": "mlp", "widths": [64, 32, 10], "activation": "tanh"}, "epochs": 1,
                    "data": {"dataset": "digits", "train_subset": 256, "test_subset": 100}}), run_dir, progress=False)
    study = tmp_path / "study"
    overrides = {"images": 2, "inversion": {"steps": 10}, "native": {"steps": 5}, "seeds": [0],
                 "width_test": {"widths": [16, 96], "rules": ["untrained"]}, "runs": [str(run_dir)]}
    report = clarity.run("tiny", study, executor="serial", overrides=overrides)
    assert report.exists()
    models_table = pd.read_csv(study / "tables" / "models.csv")
    assert sorted(models_table["model"]) == [run_dir.name, f"{run_dir.name} untrained"]
    assert not (study / "models").exists()   # nothing trained
    with pytest.raises(ValueError, match="not a finished pclab run"):
        clarity.resolve("tiny", runs=[tmp_path])


# ---------------------------------------------------------------------------- training, procedures, findings
def test_validation_split_is_disjoint_stratified_and_deterministic():
    from pclab.data import load
    from pclab.studies.clarity.trials import split_validation

    train = load("digits", "train")
    fit, held = split_validation(train, 0.2, seed=3)
    assert len(fit) + len(held) == len(train) and len(held) == round(0.2 * len(train))
    pairs = {tuple(im.flatten().tolist()) for im in held.images}
    assert not any(tuple(im.flatten().tolist()) in pairs for im in fit.images[:200])
    assert torch.bincount(held.labels, minlength=10).min() >= 0.8 * len(held) / 10
    assert torch.equal(split_validation(train, 0.2, seed=3)[1].labels, held.labels)
    with pytest.raises(ValueError, match="validation fraction"):
        split_validation(train, 1.0, seed=0)


def test_badger_procedure_is_plain_gradient_descent_and_blurs_only_conv_nets():
    from pclab.studies.clarity.inversion import BADGER, procedure_config

    mine = InversionConfig(steps=7)
    assert procedure_config("pclab", mine, convolutional=True) is mine
    fc = procedure_config("badger", mine, convolutional=False)
    assert (fc.steps, fc.lr, fc.lr_final, fc.optimizer, fc.init_mean, fc.init_std) == (500, 0.1, None, "sgd", 0.7, 0.05)
    assert fc.sigma(0) is None
    conv = procedure_config("badger", mine, convolutional=True)
    assert conv.sigma(0) == pytest.approx(2.4) and conv.sigma(BADGER.steps - 1) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="procedure"):
        procedure_config("lbfgs", mine, convolutional=False)
    with pytest.raises(ValueError, match="procedure"):
        clarity.resolve("tiny", {"procedure": "fast"})


def _frame(values: dict[tuple[str, str, int], float], test: str = "models", widths: dict[str, int] | None = None) -> pd.DataFrame:
    """Per-image rows: (rule, layer, seed) -> m_i for two images (value +- 0.1, mean = value)."""
    rows = []
    for (rule, layer, seed), m_i in values.items():
        for k, noise in enumerate((-0.1, 0.1)):
            rows.append({"test": test, "arch": "net" if test == "models" else "width test", "model": f"{layer} {rule}", "rule": rule,
                         "layer": layer, "depth": int(layer[-1]) if test == "models" else 1,
                         "width": (widths or {}).get(layer, 8), "route": "gradient", "procedure": "pclab", "seed": seed,
                         "image": k, "m_i": m_i + noise, "m_i_perturbation": 1.0})
    return pd.DataFrame(rows)


def test_findings_compare_rules_layer_by_layer_with_intervals_over_seeds():
    from pclab.studies.clarity.reporting import findings

    values = {}
    for seed, jitter in enumerate((0.0, 0.05, -0.05)):
        values |= {("pc", "h1", seed): 1.0 + jitter, ("bp", "h1", seed): 2.0, ("bp-through-inference", "h1", seed): 1.0 + jitter,
                   ("pc", "h2", seed): 3.0 + jitter, ("bp", "h2", seed): 3.0 - jitter, ("bp-through-inference", "h2", seed): 3.0}
    lines = findings(_frame(values))
    pc_bp = next(line for line in lines if line.startswith("PC learning minus backprop,"))
    assert "net h1 -1.000 (95 % CI -1.1" in pc_bp and "n=3 seeds" in pc_bp
    assert "h2 +0.000" in pc_bp and "no detectable difference" in pc_bp.split("h2")[1]
    assert any("PC learning minus backprop through inference" in line for line in lines)


def test_width_threshold_is_the_smallest_width_from_which_every_wider_layer_is_inverted():
    from pclab.studies.clarity.reporting import findings, per_seed, width_thresholds

    widths = {"w1": 16, "w2": 32, "w3": 64, "w4": 128}
    values = {}
    for seed in range(3):
        values |= {("untrained", "w1", seed): 3.0, ("untrained", "w2", seed): 0.5, ("untrained", "w3", seed): 2.0,
                   ("untrained", "w4", seed): 0.2, ("pc", "w1", seed): 3.0, ("pc", "w2", seed): 3.0,
                   ("pc", "w3", seed): 0.5 if seed else 3.0, ("pc", "w4", seed): 0.5}
    frame = _frame(values, test="width", widths=widths)
    thresholds = width_thresholds(per_seed(frame)).set_index(["rule", "seed"])["threshold"]
    assert thresholds[("untrained", 0)] == 128          # 32 is inverted, but 64 above it is not
    assert thresholds[("pc", 0)] == 128 and thresholds[("pc", 1)] == 64
    line = next(line for line in findings(frame) if line.startswith("Width threshold"))
    assert "PC learning minus untrained -0.67 octaves" in line and "untrained 128/128/128" in line


def test_relaxed_embedding_of_a_generative_chain_is_differentiable_in_the_image():
    from pclab.studies.clarity.pcn import relaxed_embedding

    torch.manual_seed(0)
    net = models.generative_mlp([4, 16, 64])
    a = _images(2).reshape(2, -1).requires_grad_(True)
    z = relaxed_embedding(net, "z", Inference(steps=5), differentiable=True)(a)
    (grad,) = torch.autograd.grad(z.abs().sum(), a)
    assert grad.abs().sum() > 0
    assert torch.allclose(z.detach(), relaxed_embedding(net, "z", Inference(steps=5))(a.detach()), atol=1e-5)
