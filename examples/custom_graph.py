"""A PCN built by hand: a conv branch and a dense branch that both predict the label.

Graph (every arrow is an ordinary ``nn.Module``; ``y`` receives the sum of two predictions)::

    x (64) --conv 3x3--> c (4, 8, 8) --flatten+linear--+
      |                                                +--> y (10)
      +----Dense tanh--> h (32) -------Dense-----------+

It trains briefly with the PC rule, then relaxes one test batch (image and true label clamped)
with two latent optimisers -- pclab's ``SGD`` and ``torch.optim.RMSprop`` through the
``TorchOptimizer`` adapter -- and prints each node's energy before and after relaxation.

Run:  python examples/custom_graph.py [--quick] [--epochs 3] [--steps 20]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from pclab import PCN, SGD, Dense, Inference, Node, PCLearning, TorchOptimizer, classify, relax
from pclab.data import batches, load, one_hot


def build() -> PCN:
    """The two-branch network; ``x`` is flat so the Dense branch takes it as is."""
    conv = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.Tanh())
    return PCN(
        nodes=[Node("x", (64,)), Node("c", (4, 8, 8)), Node("h", (32,)), Node("y", (10,))],
        edges=[
            ("x", "c", conv),
            ("x", "h", Dense(64, 32, "tanh")),
            ("c", "y", nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))),
            ("h", "y", Dense(32, 10)),
        ],
    )


def energy_table(model: PCN, clamp: dict[str, torch.Tensor], optimizers: dict[str, object], steps: int) -> dict[str, list[float]]:
    """Per-node energy (batch mean) at step 0 and after ``steps`` steps, for each latent optimiser."""
    table: dict[str, list[float]] = {}
    for name, opt in optimizers.items():
        # record=True keeps a Trajectory: one row of per-node energies per step
        trajectory = relax(model, clamp, Inference(steps=steps, optimizer=opt), record=True).trajectory
        table.setdefault("step 0", trajectory.energy[0])
        table[name] = trajectory.energy[-1]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, a few seconds")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="latent steps T of the compared relaxations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tensors this small run fastest on one)")
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = load("digits", "train"), load("digits", "test")
    model = build()
    print(f"nodes {list(model.nodes)}; error nodes {model.error_nodes}; layer index {model.layer_index}")

    # The PC rule needs nothing Dense-specific: relaxation falls back to autograd for the conv edge.
    rule = PCLearning(model, Inference(steps=8, optimizer=SGD(0.1)), torch.optim.Adam(model.parameters(), 3e-3))
    for epoch in range(epochs):
        for images, labels in batches(train, 32, shuffle=True, generator=epoch):
            metrics = rule.step({"x": images.flatten(1), "y": one_hot(labels, 10)})
        accuracy = (classify(model, test.images.flatten(1)).argmax(1) == test.labels).float().mean()
        print(f"epoch {epoch + 1}: train energy {metrics['energy']:.4f}, feed-forward test accuracy {100 * accuracy:.1f} %")

    clamp = {"x": test.images[:128].flatten(1), "y": one_hot(test.labels[:128], 10)}
    optimizers = {
        "pclab SGD(0.1)": SGD(0.1),
        "torch RMSprop(0.01)": TorchOptimizer(torch.optim.RMSprop, lr=0.01),
    }
    table = energy_table(model, clamp, optimizers, args.steps)
    columns = list(table)
    print(f"\nenergy per node, image and label clamped, feed-forward start, T = {args.steps}")
    print(f"{'node':<6}" + "".join(f"{c:>22}" for c in columns))
    for i, node in enumerate(model.error_nodes):
        print(f"{node:<6}" + "".join(f"{table[c][i]:>22.5f}" for c in columns))
    print(f"{'total':<6}" + "".join(f"{sum(table[c]):>22.5f}" for c in columns))


if __name__ == "__main__":
    main()
