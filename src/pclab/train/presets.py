"""Named run configurations: the settings of published results (REFERENCE 7) and quick runs.

Each preset is plain data for :func:`pclab.train.config.validate`; ``--set`` overrides apply on top.
"""

from __future__ import annotations

from typing import Any

# PCX's tuned MLP settings for MNIST with PC and squared-error output (REFERENCE 7).
_PCX_MLP: dict[str, Any] = {
    "model": {"kind": "mlp", "widths": [784, 128, 128, 128, 10], "activation": "gelu", "output": "gaussian"},
    "inference": {"steps": 8, "optimizer": "momentum", "lr": 0.0105, "momentum": 0.65},
    "learning": {"rule": "pc", "optimizer": "adamw", "lr": 2.97e-4, "weight_decay": 3.55e-4},
    "data": {"dataset": "mnist", "batch_size": 128},
    "epochs": 25,
}


# The ePC authors' deep MLP (Goemaere et al. 2026, REFERENCE 5b): 784-128x19-10 GELU, orthogonal init
# (ReLU's gain), squared error on a sigmoid read-out, batch 64, Adam with warm-up + cosine. Weight lr 1e-4: at
# 3e-4 and 1e-3 backprop's sigmoid read-out saturated at zero within the first 50 batches (accuracy 10 %).
_EPC_DEEP: dict[str, Any] = {
    "model": {"kind": "mlp", "widths": [784, *[128] * 19, 10], "activation": "gelu", "output": "gaussian",
              "output_activation": "sigmoid", "init": "orthogonal"},
    "inference": {"steps": 24, "optimizer": "sgd", "lr": 0.2, "parametrisation": "error"},
    "learning": {"rule": "pc", "optimizer": "adam", "lr": 1e-4, "schedule": "cosine", "warmup_epochs": 0.3},
    "data": {"dataset": "mnist", "batch_size": 64},
    "epochs": 3,
    "eval_inference": False,  # the label released, ePC's relaxed read-out is the feed-forward pass
}


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "pcx-mnist-pc": ("MLP 784-128x3-10 GELU, MNIST, PC T=8, PCX's tuned settings, 25 epochs (PCX: 98.42 %)", _PCX_MLP),
    "pcx-mnist-bp": (
        "the same MLP trained by backprop, PCX's BP-SE settings, 25 epochs (PCX: 98.46 %)",
        _with(_PCX_MLP, learning={"rule": "bp", "optimizer": "adamw", "lr": 2.749e-4, "weight_decay": 5.121e-3}),
    ),
    "pcx-fmnist-pc": (
        "the same MLP on Fashion-MNIST, PC T=5, PCX's Fashion-MNIST settings (PCX: 89.88 %)",
        # PCX's tuned PC-SE Fashion-MNIST config: its own latent step and weight decay
        _with(_PCX_MLP, inference={"steps": 5, "lr": 0.02607, "momentum": 0.1},
              learning={"weight_decay": 1.838e-3}, data={"dataset": "fashion-mnist", "batch_size": 128}),
    ),
    "pcx-fmnist-bp": (
        "the same MLP on Fashion-MNIST by backprop (PCX: 89.83 %)",
        _with(_PCX_MLP, learning={"rule": "bp", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 3.55e-4},
              data={"dataset": "fashion-mnist", "batch_size": 128}),
    ),
    "epc-mnist-deep": (
        "ePC: the 20-layer MLP 784-128x19-10 GELU (orthogonal init, sigmoid squared error), MNIST, T=24 error steps, 3 epochs",
        _EPC_DEEP,
    ),
    "epc-mnist-deep-bp": (
        "the same 20-layer MLP and schedule trained by backprop (squared error of the sigmoid read-out)",
        _with(_EPC_DEEP, learning={"rule": "bp"}),
    ),
    "speed-mlp": (
        "speed benchmark: MLP 784-128-128-10 tanh, batch 64, T=20, latent SGD 0.1, Adam, 1 epoch",
        {
            "model": {"kind": "mlp", "widths": [784, 128, 128, 10], "activation": "tanh"},
            "inference": {"steps": 20, "optimizer": "sgd", "lr": 0.1},
            "learning": {"rule": "pc", "optimizer": "adam", "lr": 1e-3},
            "data": {"dataset": "mnist", "batch_size": 64},
            "epochs": 1,
        },
    ),
    "mnist-quick": (
        "a one-minute MNIST run: MLP 784-128-10, PC T=8, 10k training images, 2 epochs",
        _with(_PCX_MLP, model={"widths": [784, 128, 10]}, data={"dataset": "mnist", "batch_size": 128, "train_subset": 10000},
              epochs=2),
    ),
    "hybrid-mnist-bpti": (
        "Rathjens-Wiskott Small, d=16, MNIST, trained by backprop through 20 inference steps, lam=0.5",
        {
            "model": {"kind": "rathjens_wiskott", "complexity": "small", "latent": 16},
            "inference": {"steps": 20, "optimizer": "sgd", "lr": 0.05},
            "learning": {"rule": "bp-through-inference", "optimizer": "adam", "lr": 1e-3, "lam": 0.5},
            "data": {"dataset": "mnist", "batch_size": 512},
            "epochs": 10,
        },
    ),
    "generative-mnist-pc": (
        "generative MLP 32-256-784, MNIST, PC with 50 inference steps from zeros",
        {
            "model": {"kind": "generative_mlp", "widths": [32, 256, 784]},
            "inference": {"steps": 50, "optimizer": "sgd", "lr": 0.1, "init": "zeros"},
            "learning": {"rule": "pc", "optimizer": "adam", "lr": 1e-3},
            "data": {"dataset": "mnist", "batch_size": 128},
            "epochs": 5,
        },
    ),
    "tiny": (
        "seconds-long smoke run on synthetic data (tests)",
        {
            "model": {"kind": "mlp", "widths": [64, 32, 10], "activation": "tanh"},
            "inference": {"steps": 5, "optimizer": "sgd", "lr": 0.1},
            "learning": {"rule": "pc", "optimizer": "adam", "lr": 1e-2},
            "data": {"dataset": "synthetic", "batch_size": 32, "train_subset": 256, "test_subset": 128},
            "epochs": 2,
        },
    ),
}


def preset(name: str) -> dict[str, Any]:
    """Plain data of preset ``name``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; `pclab presets` lists them: {sorted(PRESETS)}")
    import copy

    return copy.deepcopy(PRESETS[name][1])
