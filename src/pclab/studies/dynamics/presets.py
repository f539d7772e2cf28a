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


def _families(dataset: str, pixels: int, sizes: dict[str, Any], steps: int, batch: int, epochs: int,
              train_subset: int | None) -> dict[str, Any]:
    data = {"dataset": dataset, "batch_size": batch, "train_subset": train_subset}
    learning = {"optimizer": "adam", "lr": 1e-3}
    return {
        "generative": {
            "config": {
                "model": {"kind": "generative_mlp", "widths": [sizes["latent"], sizes["hidden"], pixels], "activation": "tanh"},
                "inference": {"steps": steps, "optimizer": "sgd", "lr": 0.1},
                "learning": learning, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference"],
            "train_init": {"pc": "forward", "bp-through-inference": "forward"},
            "probes": [_GEN],
        },
        "discriminative": {
            "config": {
                "model": {"kind": "mlp", "widths": [pixels, sizes["hidden"], sizes["hidden"] // 2, 10], "activation": "tanh", "output": "ce"},
                "inference": {"steps": steps, "optimizer": "sgd", "lr": 0.1},
                "learning": learning, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference", "bp"],
            "train_init": {"pc": "zeros", "bp-through-inference": "zeros", "bp": "zeros"},
            "probes": _DISC,
        },
        "hybrid": {
            "config": {
                "model": {"kind": "rathjens_wiskott", "complexity": "small", "latent": sizes["latent"]},
                "inference": {"steps": steps, "optimizer": "sgd", "lr": 0.05 / hybrid_precisions(0.5, pixels)[0]},
                "learning": {**learning, "lam": 0.5}, "data": data, "epochs": epochs,
            },
            "rules": ["pc", "bp-through-inference", "bp"],
            "train_init": {"pc": "forward", "bp-through-inference": "forward", "bp": "forward"},
            "probes": [_HYB],
        },
    }


def _preset(description: str, dataset: str, pixels: int, sizes: dict[str, int], steps: int, batch: int, epochs: int,
            train_subset: int | None, seeds: list[int], test_batches: int, test_batch_size: int,
            alignment_points: int, image_steps: list[int]) -> dict[str, Any]:
    return {
        "description": description,
        "families": _families(dataset, pixels, sizes, steps, batch, epochs, train_subset),
        "seeds": seeds,
        "test_batches": test_batches, "test_batch_size": test_batch_size, "test_seed": 0,
        "horizon_factor": 4, "tolerance": 1e-3, "alignment_points": alignment_points,
        "keep_images": 4, "image_steps": image_steps,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _preset(
        "seconds: scikit-learn digits (8x8), 1 epoch, T=5, 2 seeds (tests)",
        "digits", 64, {"latent": 4, "hidden": 32}, steps=5, batch=64, epochs=1, train_subset=512,
        seeds=[0, 1], test_batches=2, test_batch_size=32, alignment_points=3, image_steps=[0, 1, 2],
    ),
    "quick": _preset(
        "under 10 minutes on 2 CPU cores: MNIST, 20k training images, 1 epoch, T=20, 3 seeds, 512 test images",
        "mnist", 784, {"latent": 16, "hidden": 128}, steps=20, batch=128, epochs=1, train_subset=20000,
        seeds=[0, 1, 2], test_batches=2, test_batch_size=256, alignment_points=5, image_steps=[0, 1, 2, 5, 10],
    ),
    "full": _preset(
        "the one to cite: MNIST, all 60k training images, 3 epochs, T=20, 5 seeds, 2048 test images "
        "(under an hour on 2 CPU cores; measured times: the benchmarks page)",
        "mnist", 784, {"latent": 16, "hidden": 128}, steps=20, batch=128, epochs=3, train_subset=None,
        seeds=[0, 1, 2, 3, 4], test_batches=8, test_batch_size=256, alignment_points=9, image_steps=[0, 1, 2, 5, 10],
    ),
}
"""``tiny`` (tests, seconds), ``quick`` (< 10 min on 2 cores), ``full`` (to cite; see its description)."""


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of preset ``preset`` with ``overrides`` merged in (nested dicts merge key by key)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown dynamics preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    _merge(spec, overrides or {}, "")
    check_settings("dynamics", spec, PRESETS, positive=_POSITIVE, limits={"test_batch_size": (1, 100_000), "horizon_factor": (1, 100)})
    return spec


_POSITIVE = ("test_batches", "test_batch_size", "horizon_factor", "tolerance", "alignment_points")


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str) -> None:
    for key, value in extra.items():
        if key not in base:
            raise ConfigError(f"dynamics study setting{' ' + where if where else ''}: unknown key {short(key)}; expected one of {sorted(base)}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            _merge(base[key], value, f"{where}.{key}".lstrip("."))
        else:
            base[key] = copy.deepcopy(value)


def trials(spec: dict[str, Any], out: str) -> list[dict[str, Any]]:
    """The trial parameters of a resolved preset: family x rule x seed."""
    common = {k: spec[k] for k in ("test_batches", "test_batch_size", "test_seed", "horizon_factor", "tolerance",
                                   "alignment_points", "keep_images", "image_steps")}
    out_trials = []
    for family, fam in spec["families"].items():
        for rule in fam["rules"]:
            for seed in spec["seeds"]:
                out_trials.append({
                    "family": family, "rule": rule, "seed": seed, "train_init": fam["train_init"][rule],
                    "config": fam["config"], "probes": fam["probes"], **common, "out": out,
                })
    return out_trials
