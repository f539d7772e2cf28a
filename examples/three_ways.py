"""One MLP PCN, three ways to learn it, and how each trained net then *infers*.

The same network (same initial weights, same batches) is trained by

* ``PCLearning``        -- relax with image and label clamped, then the local PC weight step;
* ``BPThroughInference`` -- relax T steps from zero hidden values with the label released, then
  backprop the label's squared error through all T steps;
* ``Backprop``          -- the feed-forward pass of the same modules (T = 0).

Each trained net is then relaxed on the test images with only the image clamped and its hidden
layers starting at zero; the script prints the energy at steps 0, T and 4T and the accuracy of
the label prediction at T and 4T. PC trains the weights *for* the relaxation's fixed point;
backprop through inference trains them for step T, and what happens after T is not its concern.

Run:  python examples/three_ways.py [--quick] [--steps 8] [--epochs 5] [--out energy.png]
"""

from __future__ import annotations

import argparse
import copy

import torch

from pclab import SGD, Backprop, BPThroughInference, Inference, LearningRule, PCLearning, TaskLoss, classify, relax
from pclab.data import batches, load, one_hot
from pclab.models import mlp


def rules(steps: int, lr: float, seed: int) -> dict[str, LearningRule]:
    """The three rules, each on its own copy of one initial network."""
    torch.manual_seed(seed)
    start = mlp([64, 64, 64, 10], activation="tanh")
    nets = {name: copy.deepcopy(start) for name in ("pc", "bp-through-inference", "bp")}
    latent, loss = SGD(0.2), TaskLoss(reconstruct={"y": 1.0})  # squared error on the one-hot label
    return {
        "pc": PCLearning(nets["pc"], Inference(steps, latent), torch.optim.Adam(nets["pc"].parameters(), lr)),
        # trained on the relaxation it is tested with (label released, hidden from zero); from a
        # feed-forward start a released chain is already at rest, and this would be plain backprop
        "bp-through-inference": BPThroughInference(
            nets["bp-through-inference"], Inference(steps, latent, init="zeros"),
            torch.optim.Adam(nets["bp-through-inference"].parameters(), lr), loss, clamp=("x",)),
        "bp": Backprop(nets["bp"], torch.optim.Adam(nets["bp"].parameters(), lr), loss, clamp=("x",)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, a few seconds")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="inference steps T used in training")
    parser.add_argument("--lr", type=float, default=3e-3, help="weight learning rate (Adam), the same for every rule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tensors this small run fastest on one)")
    parser.add_argument("--out", help="save a figure of energy per step to this path")
    args = parser.parse_args()
    epochs, T = (1 if args.quick else args.epochs), args.steps

    torch.set_num_threads(args.threads)
    train, test = load("digits", "train"), load("digits", "test")
    learners = rules(T, args.lr, args.seed)
    for epoch in range(epochs):
        for images, labels in batches(train, 32, shuffle=True, generator=epoch):  # same order for every rule
            batch = {"x": images.flatten(1), "y": one_hot(labels, 10)}
            for rule in learners.values():
                rule.step(batch)

    x, labels = test.images.flatten(1), test.labels
    released = Inference(4 * T, SGD(0.2), init="zeros")
    curves = {}
    print(f"test: image clamped, label released, hidden layers from zero; T = {T}, epochs {epochs}")
    print(f"{'rule':<22}{'E(0)':>10}{'E(T)':>10}{'E(4T)':>10}{'acc ff %':>10}{'acc T %':>10}{'acc 4T %':>10}")
    for name, rule in learners.items():
        model = rule.model
        energy = relax(model, {"x": x}, released, record=True).trajectory.total_energy()
        accuracy = [(classify(model, x, inference).argmax(1) == labels).float().mean().item() * 100
                    for inference in (None, Inference(T, SGD(0.2), init="zeros"), released)]
        curves[name] = energy
        print(f"{name:<22}{energy[0]:>10.4f}{energy[T]:>10.4f}{energy[4 * T]:>10.4f}" + "".join(f"{a:>10.1f}" for a in accuracy))

    if args.out:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, energy in curves.items():
            ax.plot(energy, label=name)
        ax.axvline(T, color="grey", linestyle=":", label="T (training horizon)")
        ax.set(xlabel="inference step", ylabel="total energy (test mean)", yscale="log", title="label released, hidden from zero")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
