"""Why a deep PCN trained by plain PC falls behind backprop, and two fixes.

An 8-layer, width-32 tanh MLP on digits, trained four ways from the same initial weights:
vanilla PC; PC with the *spiking* precision schedule and the forward update; PC with the
*decaying* schedule and the forward update; and backprop. Relaxation uses T = 8 steps (one per
layer) from a feed-forward start, so the error that the clamped label creates at the top has to
walk down one layer per step. The script prints test accuracies and, from one relaxation of a
test batch (image and label clamped) on each trained PC net, the step at which each layer's
error first becomes non-zero and how large it is at T. The front arrives at the same step in
every variant (a schedule reweights errors, it does not move them faster); what differs is how
the error is shared between layers. With ``--steps`` below the depth the bottom layers never see
an error at all (-1).

Run:  python examples/deep_fixes.py [--quick] [--epochs 8] [--depth 8] [--steps 8]
"""

from __future__ import annotations

import argparse
import copy

import torch

from pclab import SGD, Backprop, Constant, Decaying, Inference, LearningRule, PCLearning, PrecisionSchedule, Spiking, TaskLoss, classify, relax
from pclab.data import batches, load, one_hot
from pclab.models import lecun_init, mlp


def variants(depth: int, steps: int, seed: int) -> dict[str, LearningRule]:
    """Four learners on copies of one network; weights by AdamW, latents by SGD(0.5)."""
    torch.manual_seed(seed)
    start = mlp([64, *[32] * (depth - 1), 10], activation="tanh", output="ce")
    lecun_init(start)  # N(0, 1/fan_in): PyTorch's default init leaves a deep tanh chain nearly silent
    nets = {name: copy.deepcopy(start) for name in ("pc", "spiking+fu", "decaying+fu", "bp")}

    def adamw(name: str) -> torch.optim.Optimizer:
        return torch.optim.AdamW(nets[name].parameters(), 1e-3, weight_decay=1e-4)

    def inference(precision: PrecisionSchedule = Constant()) -> Inference:  # Constant(): plain PC
        return Inference(steps, SGD(0.5), precision=precision)

    return {
        "pc": PCLearning(nets["pc"], inference(), adamw("pc")),
        "spiking+fu": PCLearning(nets["spiking+fu"], inference(Spiking(1e-3)), adamw("spiking+fu"), forward_update=True),
        "decaying+fu": PCLearning(nets["decaying+fu"], inference(Decaying(1.0)), adamw("decaying+fu"), forward_update=True),
        "bp": Backprop(nets["bp"], adamw("bp"), TaskLoss(classify={"y": 1.0}), clamp=("x",)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs, a few seconds")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--depth", type=int, default=8, help="weight layers (error nodes)")
    parser.add_argument("--steps", type=int, help="inference steps T (default: the depth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tensors this small run fastest on one)")
    args = parser.parse_args()
    epochs, steps = (2 if args.quick else args.epochs), (args.steps or args.depth)

    torch.set_num_threads(args.threads)
    train, test = load("digits", "train"), load("digits", "test")
    learners = variants(args.depth, steps, args.seed)
    for epoch in range(epochs):
        for images, labels in batches(train, 32, shuffle=True, generator=epoch):
            batch = {"x": images.flatten(1), "y": one_hot(labels, 10)}  # CE takes one-hot targets too
            for rule in learners.values():
                rule.step(batch)

    x, labels = test.images.flatten(1), test.labels
    print(f"depth {args.depth}, width 32, epochs {epochs}, T = {steps}")
    for name, rule in learners.items():
        accuracy = (classify(rule.model, x).argmax(1) == labels).float().mean().item() * 100
        print(f"test accuracy {name:<12} {accuracy:5.1f} %")

    clamp = {"x": x[:64], "y": one_hot(labels[:64], 10)}
    nodes = learners["pc"].model.error_nodes
    print("\nfirst step with non-zero error (> 1e-10; -1 never) | error norm at T, input side first")
    print(f"{'':<12}" + "".join(f"{n:>8}" for n in nodes))
    for name, rule in learners.items():
        if not isinstance(rule, PCLearning):
            continue
        # relax as in training: feed-forward start, the rule's own precision schedule
        trajectory = relax(rule.model, clamp, rule.inference, record=True).trajectory
        columns = list(zip(*trajectory.error_norm))  # one column per node, one entry per step
        first = [next((t for t, v in enumerate(c) if v > 1e-10), -1) for c in columns]
        print(f"{name:<12}" + "".join(f"{f:>8d}" for f in first))
        print(f"{'':<12}" + "".join(f"{c[-1]:>8.0e}" for c in columns))


if __name__ == "__main__":
    main()
