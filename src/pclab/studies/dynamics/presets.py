"""Presets of the dynamics study and their expansion into trials.

A preset holds, per model family, a base :class:`~pclab.train.RunConfig` (plain data; the rule,
seed and training initialisation are set per trial), the rules to train, the training
initialisation per rule and the test-time probes; plus the seeds and the measurement settings.

Probes (what is relaxed at test time, identical for every rule; every probe starts where the
family's training relaxation starts, the same for every rule):

* generative ``recognise``: image clamped; the latent starts at zero and the hidden layer at its
  top-down prediction (feed-forward init); inference recovers the latent of the test image.
* hybrid ``recognise``: image clamped, label released (a read-out); the latent starts at the
  encoder's output (amortised init). The image and label precisions are
  :func:`pclab.train.hybrid_precisions` of the rules' ``lam`` for every rule.
* discriminative ``released``: image clamped, label released, hidden layers start at **zero**.
  With the feed-forward init the energy of a released discriminative chain is exactly zero and
  nothing moves, so the zero start is what shows its dynamics: relaxation must carry the
  image's information up through the layers; the fixed point is the feed-forward pass.
* discriminative ``label-clamped``: image and true label clamped, hidden layers from zero: the
  relaxation PC learning performs in training.

Every rule of the discriminative family starts its relaxation from zero hidden layers, in
training and at test: PC learning relaxes from there with the label clamped, backprop through
inference unrolls the ``released`` relaxation (cross-entropy of the label prediction at step
``T``); from the feed-forward init nothing would move and it would equal plain backprop.
"""

from __future__ import annotations

import copy
from typing import Any

from ...train import hybrid_precisions
from ...train.config import ConfigError, short
from ..settings import check_settings

_GEN = {"name": "recognise", "clamp": ["x"], "init": "forward"}
_HYB = {"name": "recognise", "clamp": ["x"], "init": "forward"}
_DISC = [
    {"name": "released", "clamp": ["x"], "init": "zeros"},
    {"name": "label-clamped", "clamp": ["x", "y"], "init": "zeros"},
]

RULES = ("pc", "bp-through-inference", "bp-through-inference-truncated", "bp")
"""Training rules of the study: ``bp-through-inference-truncated`` backpropagates through the last
``max(1, round(truncate_fraction * T))`` inference steps only."""

HYBRID_STEP_GRID = [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
"""Relative latent step sizes ``eta`` the hybrid's relaxation is chosen from (absolute step:
``eta`` divided by the largest clamped precision, :mod:`.stepsize`)."""


def _families(dataset: str, pixels: int, image_shape: tuple[int, int, int], sizes: dict[str, Any], batch: int, epochs: int,
              train_subset: int | None, names: tuple[str, ...]) -> dict[str, Any]:
    data = {"dataset": dataset, "batch_size": batch, "train_subset": train_subset}
    learning = {"optimizer": "adam", "lr": 1e-3}
    families = {
        "generative": {
            "config": {
                "model": {"kind": "generative_mlp", "widths": [sizes["latent"], sizes["hidden"], pixels], "activation": "tanh"},
                "inference": {"optimizer": "sgd", "lr": 0.1},
                "learning": learning, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference", "bp-through-inference-truncated"],
            "init": "forward", "step_grid": None,
            "probes": [_GEN],
        },
        "conv-generative": {
            "config": {
                "model": {"kind": "deconv_generator", "latent": sizes["latent"], "width": sizes["channels"], "activation": "relu"},
                "inference": {"optimizer": "sgd", "lr": 0.1},
                "learning": learning, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference", "bp-through-inference-truncated"],
            "init": "forward", "step_grid": None,
            "probes": [_GEN],
        },
        "discriminative": {
            "config": {
                "model": {"kind": "mlp", "widths": [pixels, sizes["hidden"], sizes["hidden"] // 2, 10], "activation": "tanh", "output": "ce"},
                "inference": {"optimizer": "sgd", "lr": 0.1},
                "learning": learning, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference", "bp-through-inference-truncated", "bp"],
            "init": "zeros", "step_grid": None,
            "probes": _DISC,
        },
        "hybrid": {
            "config": {
                "model": {"kind": "rathjens_wiskott", "complexity": "small", "latent": sizes["latent"]},
                "inference": {"optimizer": "sgd", "lr": HYBRID_STEP_GRID[0] / hybrid_precisions(0.5, pixels)[0]},
                "learning": {**learning, "lam": 0.5}, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference", "bp-through-inference-truncated", "bp"],
            "init": "forward", "step_grid": HYBRID_STEP_GRID,
            "probes": [_HYB],
        },
    }
    return {name: families[name] for name in names}


def _preset(description: str, dataset: str, image_shape: tuple[int, int, int], sizes: dict[str, int], T_train: list[int], T_ref: int,
            batch: int, epochs: int, train_subset: int | None, seeds: list[int], test_batches: int, test_batch_size: int,
            alignment_points: int, image_steps: list[int], validation: int,
            names: tuple[str, ...] = ("generative", "discriminative", "hybrid")) -> dict[str, Any]:
    pixels = image_shape[0] * image_shape[1] * image_shape[2]
    return {
        "description": description,
        "families": _families(dataset, pixels, image_shape, sizes, batch, epochs, train_subset, names),
        "seeds": seeds, "T_train": T_train, "T_ref": T_ref, "truncate_fraction": 0.25,
        "validation": validation, "sensitivity_grid": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "sensitivity_batches": 1,
        "test_batches": test_batches, "test_batch_size": test_batch_size, "test_seed": 0,
        "horizon_factor": 4, "tolerance": 1e-3, "alignment_points": alignment_points,
        "keep_images": 4, "image_steps": image_steps,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _preset(
        "seconds: scikit-learn digits (8x8), 1 epoch, T_train 3 and 5, 2 seeds (tests)",
        "digits", (1, 8, 8), {"latent": 4, "hidden": 32, "channels": 8}, T_train=[3, 5], T_ref=5, batch=64, epochs=1, train_subset=512,
        seeds=[0, 1], test_batches=2, test_batch_size=32, alignment_points=3, image_steps=[0, 1, 2], validation=128,
    ),
    "quick": _preset(
        "under 10 minutes on 2 CPU cores: MNIST, 4k training images, 1 epoch, T_train 5 and 20, 3 seeds, 512 test images",
        "mnist", (1, 28, 28), {"latent": 16, "hidden": 128, "channels": 16}, T_train=[5, 20], T_ref=20, batch=128, epochs=1,
        train_subset=4000, seeds=[0, 1, 2], test_batches=2, test_batch_size=256, alignment_points=5, image_steps=[0, 1, 2, 5, 10],
        validation=1000,
    ),
    "standard": _preset(
        "the answering preset, sized to about 2 hours on 2 CPU cores from measured CPU seconds per trial: MNIST, 30k training "
        "images, 1 epoch, T_train 5, 10, 20 and 40, 5 seeds, 1024 test images, MLP and transposed-conv generative models",
        "mnist", (1, 28, 28), {"latent": 16, "hidden": 128, "channels": 16}, T_train=[5, 10, 20, 40], T_ref=20, batch=128, epochs=1,
        train_subset=30000, seeds=[0, 1, 2, 3, 4], test_batches=4, test_batch_size=256, alignment_points=9,
        image_steps=[0, 1, 2, 5, 10, 20], validation=1000, names=("generative", "conv-generative", "discriminative", "hybrid"),
    ),
    "full": _preset(
        "for a larger machine: MNIST, all training images but the validation split, 3 epochs, T_train 5, 10, 20 and 40, "
        "5 seeds, 2048 test images, MLP and convolutional generative models",
        "mnist", (1, 28, 28), {"latent": 16, "hidden": 128, "channels": 32}, T_train=[5, 10, 20, 40], T_ref=20, batch=128, epochs=3,
        train_subset=None, seeds=[0, 1, 2, 3, 4], test_batches=8, test_batch_size=256, alignment_points=9,
        image_steps=[0, 1, 2, 5, 10, 20], validation=1000, names=("generative", "conv-generative", "discriminative", "hybrid"),
    ),
}
"""``tiny`` (tests, seconds), ``quick`` (< 10 min on 2 cores), ``standard`` (the answering preset,
about 2 hours on 2 cores), ``full`` (a larger machine); see each description."""


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of preset ``preset`` with ``overrides`` merged in (nested dicts merge key by key)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown dynamics preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    _merge(spec, overrides or {}, "")
    check_settings("dynamics", spec, PRESETS, positive=_POSITIVE, limits={"test_batch_size": (1, 100_000), "horizon_factor": (1, 100),
                                                                                "T_train[]": (1, 10_000), "truncate_fraction": (0, 1)})
    if spec["T_ref"] not in spec["T_train"]:
        raise ConfigError(f"dynamics study setting T_ref: expected one of T_train {spec['T_train']}, got {short(spec['T_ref'])}")
    for family, fam in spec["families"].items():
        unknown = [r for r in fam["rules"] if r not in RULES]
        if unknown:
            raise ConfigError(f"dynamics study setting families.{family}.rules: expected rules from {list(RULES)}, got {short(unknown)}")
    return spec


_POSITIVE = ("test_batches", "sensitivity_batches", "test_batch_size", "horizon_factor", "tolerance", "alignment_points", "validation", "T_ref",
             "truncate_fraction")


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str) -> None:
    for key, value in extra.items():
        if key not in base:
            raise ConfigError(f"dynamics study setting{' ' + where if where else ''}: unknown key {short(key)}; expected one of {sorted(base)}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            _merge(base[key], value, f"{where}.{key}".lstrip("."))
        else:
            base[key] = copy.deepcopy(value)


def truncation(rule: str, T: int, fraction: float) -> int | None:
    """Steps backpropagated through by ``rule`` trained at horizon ``T`` (``None``: all of them)."""
    return max(1, round(fraction * T)) if rule == "bp-through-inference-truncated" else None


def trials(spec: dict[str, Any], out: str) -> list[dict[str, Any]]:
    """The trial parameters of a resolved preset: family x rule x T_train x seed."""
    common = {k: spec[k] for k in ("test_batches", "test_batch_size", "test_seed", "horizon_factor", "tolerance", "validation",
                                   "sensitivity_grid", "sensitivity_batches", "alignment_points", "keep_images", "image_steps")}
    out_trials = []
    for family, fam in spec["families"].items():
        for rule in fam["rules"]:
            for T in spec["T_train"]:
                for seed in spec["seeds"]:
                    out_trials.append({
                        "family": family, "rule": rule, "seed": seed, "T": T, "truncate": truncation(rule, T, spec["truncate_fraction"]),
                        "train_init": fam["init"], "step_grid": fam["step_grid"], "config": fam["config"], "probes": fam["probes"],
                        **common, "out": out,
                    })
    return out_trials
