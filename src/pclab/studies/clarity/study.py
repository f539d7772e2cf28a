"""The clarity study: presets, the trial set, and :func:`run`."""

from __future__ import annotations

import copy
import functools
import time
from pathlib import Path
from typing import Any

from ...sweep import failures, run_trials
from ...train import validate
from ...train.config import DATA_SHAPES, MAX_EPOCHS, MAX_STEPS, ConfigError, InferenceConfig, validate_section
from ..settings import check_settings, preflight
from .inversion import PROCEDURES, InversionConfig
from .reporting import write_report
from .trials import run_trial

_MNIST_TRAINING = {"dataset": "mnist", "batch_size": 64, "train_subset": 10000, "test_subset": 2000, "epochs": 1, "validation": 0.1}

_INFERENCE = {"steps": 8, "optimizer": "sgd", "lr": 0.1}
_ADAM = {"optimizer": "adam", "lr": 1e-3}

# The learning rules compared, by name: the name is the rule's label in every table and Finding, and
# each entry is the run configuration's "inference" and "learning" sections, so a rule that is a
# relaxation variant is one more entry (ePC: {"inference": {..., "parametrisation": "error"},
# "learning": {"rule": "pc", ...}} once the core's inference has it).
# bp-through-inference starts its relaxation from zeros: from the feed-forward start a discriminative
# chain with only the image clamped is already at its energy minimum, and the rule is plain backprop.
_RULES: dict[str, dict[str, Any]] = {
    "pc": {"inference": {**_INFERENCE, "init": "forward"}, "learning": {"rule": "pc", **_ADAM}},
    "bp-through-inference": {"inference": {**_INFERENCE, "init": "zeros"}, "learning": {"rule": "bp-through-inference", **_ADAM}},
    "bp": {"inference": {**_INFERENCE, "init": "forward"}, "learning": {"rule": "bp", **_ADAM}},
}

# the hybrid image/latent/label model (REFERENCE 4) and a generative chain: the models with a generative path
_HYBRID = {
    "model": {"kind": "rathjens_wiskott", "complexity": "small", "latent": 16},
    "inference": {"steps": 20, "optimizer": "sgd", "lr": 0.1},
    "learning": {"rule": "pc", "optimizer": "adam", "lr": 1e-3, "lam": 0.5},
}


def _generative(widths: list[int]) -> dict[str, Any]:
    return {"model": {"kind": "generative_mlp", "widths": widths}, "inference": {"steps": 20, "optimizer": "sgd", "lr": 0.1},
            "learning": {"rule": "pc", "optimizer": "adam", "lr": 1e-3}}


# Gradient route, pclab's procedure: Adam with a step size annealed to 0 (Badger's plain eps = 0.1
# gradient descent, procedure "badger", stalls at a distance ~ eps on the L1 loss).
_INVERSION = InversionConfig(steps=500, lr=0.05, lr_final=0.0, optimizer="adam").to_dict()
# PCN route: relax every node but the clamped layer, image included, for this many steps
_NATIVE = {"steps": 300, "optimizer": "momentum", "lr": 0.05, "momentum": 0.9, "init": "forward"}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "description": "seconds: 8x8 digits, two small chains, 2 epochs, 2 seeds, 6 images, 60 steps (tests)",
        "training": {"dataset": "digits", "batch_size": 64, "train_subset": 512, "test_subset": 200, "epochs": 2, "validation": 0.2},
        "architectures": {
            "wide": {"kind": "mlp", "widths": [64, 96, 96, 10], "activation": "tanh"},
            "narrow": {"kind": "mlp", "widths": [64, 24, 24, 10], "activation": "tanh"},
        },
        "rules": _RULES,
        "extra_models": {"hybrid": _HYBRID, "generative": _generative([8, 32, 64])},
        "seeds": [0, 1],
        "images": 6,
        "perturbation_std": 0.05,
        "procedure": "pclab",
        "inversion": {**_INVERSION, "steps": 60, "lr": 0.1},
        "native": {**_NATIVE, "steps": 40},
        "width_test": {"dataset": "digits", "widths": [16, 32, 64, 128], "activation": "tanh", "images": 6,
                       "rules": ["untrained", "pc"], "procedures": ["pclab", "badger"]},
        "grid_images": 3,
    },
    "quick": {
        "description": "under 10 minutes on 2 CPU cores: MNIST (10k training images, 2 epochs), 784-1000-1000-10 and 784-256-256-10 "
                       "tanh chains by pc, bp-through-inference and bp, a PC-trained hybrid and generative chain, 3 seeds, "
                       "16 test images, 500 steps; width test untrained and trained by pc and bp, both procedures",
        "training": {**_MNIST_TRAINING, "epochs": 2},
        "architectures": {
            "wide": {"kind": "mlp", "widths": [784, 1000, 1000, 10], "activation": "tanh"},
            "narrow": {"kind": "mlp", "widths": [784, 256, 256, 10], "activation": "tanh"},
        },
        "rules": _RULES,
        "extra_models": {"hybrid": _HYBRID, "generative": _generative([16, 256, 784])},
        "seeds": [0, 1, 2],
        "images": 16,
        "perturbation_std": 0.05,
        "procedure": "pclab",
        "inversion": _INVERSION,
        "native": _NATIVE,
        "width_test": {"dataset": "mnist", "widths": [64, 256, 512, 784, 1024, 2048], "activation": "tanh", "images": 16,
                       "rules": ["untrained", "pc", "bp"], "procedures": ["pclab", "badger"]},
        "grid_images": 4,
    },
    "standard": {
        "description": "about 1 hour on 2 CPU cores (sized from measured per-trial CPU seconds): full MNIST (54k training, "
                       "6k validation), 5 epochs, the quick preset's models, 6 seeds, 32 test images, 7 widths",
        "training": {**_MNIST_TRAINING, "train_subset": None, "test_subset": None, "epochs": 5},
        "architectures": {
            "wide": {"kind": "mlp", "widths": [784, 1000, 1000, 10], "activation": "tanh"},
            "narrow": {"kind": "mlp", "widths": [784, 256, 256, 10], "activation": "tanh"},
        },
        "rules": _RULES,
        "extra_models": {"hybrid": _HYBRID, "generative": _generative([16, 256, 784])},
        "seeds": [0, 1, 2, 3, 4, 5],
        "images": 32,
        "perturbation_std": 0.05,
        "procedure": "pclab",
        "inversion": _INVERSION,
        "native": _NATIVE,
        "width_test": {"dataset": "mnist", "widths": [64, 128, 256, 512, 784, 1024, 2048], "activation": "tanh", "images": 32,
                       "rules": ["untrained", "pc", "bp"], "procedures": ["pclab", "badger"]},
        "grid_images": 4,
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("architectures", "rules", "extra_models"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_POSITIVE = ("images", "grid_images", "training.validation", "width_test.images", "width_test.widths[]", "inversion.steps", "inversion.lr", "native.steps",
             "native.lr", "training.batch_size", "training.train_subset", "training.test_subset", "training.epochs")
_LIMITS = {"images": (1, 10_000), "width_test.images": (1, 10_000), "grid_images": (1, 64), "width_test.widths[]": (1, 100_000),
           "inversion.steps": (1, MAX_STEPS), "native.steps": (1, MAX_STEPS), "training.epochs": (1, MAX_EPOCHS),
           "training.validation": (0.01, 0.5)}


def resolve(preset: str, overrides: dict[str, Any] | None = None, runs: list[Path] | None = None) -> dict[str, Any]:
    """The study configuration: ``PRESETS[preset]`` with ``overrides`` merged in (nested dicts merge,
    except ``architectures``, ``rules`` and ``extra_models``, which replace). ``runs`` (or
    ``overrides["runs"]``) lists run directories to study instead of training the default models.

    Settings are checked against the presets' shape (:func:`pclab.studies.settings.check_settings`);
    :class:`~pclab.train.ConfigError` names the first bad one."""
    if preset not in PRESETS:
        raise ConfigError(f"clarity --preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    overrides = dict(overrides or {})
    given = overrides.pop("runs", None)
    if runs is not None and given is not None:
        raise ConfigError("clarity runs: give run directories either as runs=... or as overrides['runs'], not both")
    config = _merge(PRESETS[preset], overrides)
    check_settings("clarity", config, PRESETS, positive=_POSITIVE, signed=("inversion.init_mean",), limits=_LIMITS,
                   open_keys=("architectures", "rules", "extra_models"))
    for path, value in [("procedure", config["procedure"])] + [("width_test.procedures[]", v) for v in config["width_test"]["procedures"]]:
        if value not in PROCEDURES:
            raise ConfigError(f"clarity study setting {path}: expected one of {list(PROCEDURES)}, got {value!r}"[:300])
    for rule in config["width_test"]["rules"]:
        if rule != "untrained" and rule not in config["rules"]:
            raise ConfigError(f"clarity study setting width_test.rules[]: expected 'untrained' or one of {sorted(config['rules'])}, "
                              f"got {rule!r}"[:300])
    try:
        InversionConfig.from_dict(config["inversion"])  # fail before any work
    except (ValueError, TypeError) as err:
        raise ConfigError(f"clarity study setting inversion: {' '.join(str(err).split())[:300]}") from None
    if given is not None and not (isinstance(given, list) and all(isinstance(p, str) for p in given)):
        raise ConfigError(f"clarity study setting runs: expected a list of run directories, got {given!r}"[:300])
    paths = runs if runs is not None else given
    config["runs"] = [str(Path(p).resolve()) for p in paths] if paths else []
    for p in config["runs"]:
        if not (Path(p) / "config.yaml").exists() or not (Path(p) / "checkpoint.pt").exists():
            raise ConfigError(f"run directory {p} is not a finished pclab run: expected config.yaml and checkpoint.pt in it")
    return config


def check_trials(config: dict[str, Any]) -> int:
    """Validate what every trial of a resolved configuration builds first (run configs, the relaxation
    of the PCN route, the width test's chains) before any trial starts; returns how many checks ran."""
    items: list[tuple[str, Any]] = [("native", functools.partial(validate_section, InferenceConfig, config["native"], "clarity native"))]
    for t in trials(config):
        if t["kind"] == "model" and "train" in t["source"]:
            items.append((f"{t['label']} seed {t['seed']}", functools.partial(validate, t["source"]["train"], f"clarity model {t['label']}")))
        elif t["kind"] == "width":
            items.append((f"width {t['width']} {t['rule']} seed {t['seed']}",
                          functools.partial(validate, t["train"], f"clarity width test {t['width']}")))
    return preflight("clarity", items)


def _run_config(config: dict[str, Any], name: str, model: dict[str, Any], rule: dict[str, Any], seed: int,
                dataset: str | None = None) -> dict[str, Any]:
    t = config["training"]
    return {
        "model": model,
        "inference": rule.get("inference", {}),
        "learning": rule.get("learning", {}),
        "data": {"dataset": dataset or t["dataset"], "batch_size": t["batch_size"], "train_subset": t["train_subset"],
                 "test_subset": t["test_subset"]},
        "epochs": t["epochs"],
        "seed": seed,
        "eval_inference": False,
        "name": name,
    }


def trials(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every trial of a resolved configuration: models (trained and untrained) and the width test."""
    common = {"images": config["images"], "inversion": config["inversion"], "native": config["native"],
              "perturbation_std": config["perturbation_std"], "procedure": config["procedure"],
              "validation": config["training"]["validation"]}
    out: list[dict[str, Any]] = []
    for seed in config["seeds"]:
        if config["runs"]:
            for path in config["runs"]:
                name = Path(path).name
                for trained in (True, False):
                    label = name if trained else f"{name} untrained"
                    out.append({"kind": "model", "label": label, "arch": name, "source": {"run": path},
                                "trained": trained, "seed": seed, **common})
        else:
            for arch, model in config["architectures"].items():
                for i, (rule, settings) in enumerate(config["rules"].items()):
                    run = _run_config(config, f"{arch}-{rule}", model, settings, seed)
                    out.append({"kind": "model", "label": f"{arch} {rule}", "arch": arch, "rule": rule, "source": {"train": run},
                                "trained": True, "seed": seed, **common})
                    if i == 0:  # the initial weights depend on the architecture and seed only
                        out.append({"kind": "model", "label": f"{arch} untrained", "arch": arch, "source": {"train": run},
                                    "trained": False, "seed": seed, **common})
            for name, spec in config["extra_models"].items():
                run = _run_config(config, name, spec["model"], spec, seed)
                rule = spec["learning"]["rule"]
                out.append({"kind": "model", "label": f"{name} {rule}", "arch": name, "rule": rule,
                            "source": {"train": run}, "trained": True, "seed": seed, **common})
                out.append({"kind": "model", "label": f"{name} untrained", "arch": name, "source": {"train": run},
                            "trained": False, "seed": seed, **common})
        wt = config["width_test"]
        (c, h, w), classes = DATA_SHAPES.get(wt["dataset"], ((1, 1, 1), 1))
        for rule in wt["rules"]:
            for width in wt["widths"]:
                model = {"kind": "mlp", "widths": [c * h * w, width, classes], "activation": wt["activation"]}
                settings = config["rules"].get(rule) or next(iter(config["rules"].values()))
                run = _run_config(config, f"width{width}-{rule}", model, settings, seed, dataset=wt["dataset"])
                out.append({"kind": "width", "dataset": wt["dataset"], "width": width, "activation": wt["activation"], "rule": rule,
                            "train": run, "seed": seed, "images": wt["images"], "inversion": config["inversion"],
                            "procedures": wt["procedures"], "native": config["native"], "perturbation_std": config["perturbation_std"],
                            "validation": config["training"]["validation"]})
    return out


def run(
    preset: str,
    out: Path,
    address: str | None = None,
    executor: str = "ray",
    overrides: dict[str, Any] | None = None,
    runs: list[Path] | None = None,
) -> Path:
    """Run the clarity study and write its report; returns the path of ``report.html``.

    Args:
        preset: ``"tiny"``, ``"quick"`` or ``"standard"`` (see ``PRESETS``).
        out: study folder: ``trials/``, ``models/`` (the weights of the models it trains, ``best.pt``), ``artifacts/`` (images),
            ``report.html``, ``tables/``, ``figures/``.
        address: Ray cluster address (``None``: embedded Ray).
        executor: ``"ray"`` or ``"serial"``.
        overrides: settings merged into the preset (e.g. ``{"images": 8, "inversion": {"steps": 200}}``);
            ``overrides["runs"]`` is the same as ``runs``.
        runs: pclab run directories to study (with their untrained architectures) instead of the
            models the study trains by default (``pclab study clarity --run RUN_DIR``).
    """
    started = time.time()
    out = Path(out)
    config = resolve(preset, overrides, runs)
    check_trials(config)
    config["preset"] = preset
    records = run_trials(functools.partial(run_trial, out=str(out.resolve())), trials(config), out,
                         address=address, executor=executor)
    return write_report(records, failures(records), config, out, started)
