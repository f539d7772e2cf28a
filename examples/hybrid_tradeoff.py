"""Classification vs reconstruction through one small latent: the trade-off in miniature.

The hybrid model of Rathjens & Wiskott (``pclab.models.rathjens_wiskott``: an encoder gives the
latent ``z`` its first value; ``z`` predicts both the image ``x`` and the label ``y``) is trained
on digits with several classification weights ``lam`` (the loss ``(1 - lam) * MSE + lam * CE``).
For PC learning there is no loss: ``lam`` enters through the image and label precisions of the
energy (``pclab.train.build.hybrid_precisions``), which the training config sets up.

The run is described by a plain config dict (what ``pclab train`` reads from YAML), validated
into a ``RunConfig`` and trained with ``pclab.train.train``. For each ``lam`` the script prints the
test accuracy and the reconstruction MSE (pixels in [-1, 1]), both read out after relaxing with
only the image clamped (for ``--rule bp``: the feed-forward pass).

Run:  python examples/hybrid_tradeoff.py [--quick] [--rule pc|bp-through-inference|bp] [--lams 0.1 0.5 0.9] [--out front.png]
"""

from __future__ import annotations

import argparse

import torch

from pclab.data import load
from pclab.train import RunConfig, hybrid_precisions, train, validate


def config(rule: str, lam: float, latent: int, epochs: int, seed: int) -> RunConfig:
    """The run's RunConfig (every field not given keeps its default; ``pclab config --preset tiny`` lists them)."""
    return validate({
        "model": {"kind": "rathjens_wiskott", "complexity": "small", "latent": latent},
        "inference": {"steps": 10, "optimizer": "sgd", "lr": 0.05},
        "learning": {"rule": rule, "optimizer": "adam", "lr": 3e-3, "lam": lam},
        "data": {"dataset": "digits", "batch_size": 32},
        "epochs": epochs,
        "seed": seed,
    }, source=f"hybrid lam={lam}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs, a few seconds")
    parser.add_argument("--rule", default="pc", choices=["pc", "bp-through-inference", "bp"])
    parser.add_argument("--lams", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="classification weights in [0, 1]")
    parser.add_argument("--latent", type=int, default=4, help="size d of the shared latent")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tensors this small run fastest on one)")
    parser.add_argument("--out", help="save the accuracy / MSE front to this path")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs

    torch.set_num_threads(args.threads)
    data = (load("digits", "train"), load("digits", "test"))  # loaded once, shared by every run
    rows = []
    print(f"rule {args.rule}, latent d = {args.latent}, epochs {epochs}")
    print(f"{'lam':>5}{'image prec.':>13}{'label prec.':>13}{'accuracy %':>12}{'recon MSE':>11}")
    for lam in args.lams:
        results = train(config(args.rule, lam, args.latent, epochs, args.seed), progress=False, data=data)
        # bp and bp-through-inference weight their loss by lam and leave the precisions at 1
        precisions = [f"{p:>13.4f}" for p in hybrid_precisions(lam, 64)] if args.rule == "pc" else [f"{'-':>13}"] * 2
        rows.append((lam, 100 * results["test_accuracy"], results["recon_mse"]))
        print(f"{lam:>5.2f}{''.join(precisions)}{rows[-1][1]:>12.1f}{rows[-1][2]:>11.4f}")

    if args.out:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.plot([r[2] for r in rows], [r[1] for r in rows], "o-")
        for lam, accuracy, mse in rows:
            ax.annotate(f"lam={lam:g}", (mse, accuracy), textcoords="offset points", xytext=(5, 5))
        ax.set(xlabel="reconstruction MSE (test)", ylabel="test accuracy (%)", title=f"{args.rule}, d = {args.latent}")
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
