"""One training step of each benchmarked algorithm, and the matrix-product FLOPs a step executes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core import PCN, SGD, BPThroughInference, Dense, IncrementalPC, Inference, PCLearning, TaskLoss
from . import models

Step = Callable[[torch.Tensor, torch.Tensor], None]


def bp_step(net: nn.Module, lr: float) -> Step:
    """A minimal PyTorch backprop loop's step on ``net``: Adam at ``lr``, MSE against the one-hot label."""
    optimizer = torch.optim.Adam(net.parameters(), lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()

    return step


BPTI_FLAT_SLOTS = 8
"""Stored states of ``bpti-flat`` (binomial checkpointing)."""


def make_algorithm(name: str, model: PCN, steps: int, latent_lr: float = 0.1, weight_lr: float = 1e-3) -> Step:
    """One training step of algorithm ``name`` on ``model`` (a fresh copy of the weights):

    ``bp`` minimal PyTorch backprop loop (``nn.Sequential``, Adam, MSE); ``pc`` PC rule (fast path
    when the model is a Dense chain); ``pc-compiled`` / ``ipc-compiled`` the same under ``torch.compile``;
    ``pc-reference`` PC on the general graph code (``method="manual"`` for Dense chains, autograd
    otherwise); ``ipc`` incremental PC; ``bpti`` / ``bpti-ckpt`` backprop through the ``T``
    inference steps of PC's relaxation (input and label clamped) of an MSE loss on the output
    prediction, without / with checkpointing; ``bpti-x`` the same with only the input clamped (from a
    feed-forward start no latent moves then: the fast path has no relaxation work left);
    ``bpti-autograd`` ``bpti`` with autograd through the fast relaxation instead of the
    hand-derived reverse pass of :mod:`pclab.core.fast.chain_adjoint` (Dense chains); ``bpti-compiled``
    ``bpti`` with that reverse pass and the relaxation under ``torch.compile``
    (:mod:`pclab.core.fast.compiled_adjoint`); ``bpti-flat``
    ``bpti`` with binomial checkpointing in :data:`BPTI_FLAT_SLOTS` slots (:mod:`pclab.core.binomial`).
    """
    model = copy.deepcopy(model)
    if name == "bp":
        return bp_step(models.as_sequential(model), weight_lr)
    adam = torch.optim.Adam(model.parameters(), weight_lr)
    fast = all(isinstance(m, Dense) for m in model.edge_modules.values())
    # bpti-autograd: the Dense-chain relaxation, differentiated by autograd instead of the hand-derived pass
    accelerators = ("chain",) if name == "bpti-autograd" else None
    inference = Inference(steps=steps, optimizer=SGD(latent_lr), compile=name.endswith("-compiled"), accelerators=accelerators)
    if name in ("pc", "pc-compiled"):
        rule: Any = PCLearning(model, inference, adam)
    elif name == "pc-reference":
        rule = PCLearning(model, Inference(steps=steps, optimizer=SGD(latent_lr), method="manual" if fast else "autograd"), adam)
    elif name in ("ipc", "ipc-compiled"):
        rule = IncrementalPC(model, inference, adam)
    elif name in ("bpti", "bpti-compiled", "bpti-ckpt", "bpti-flat", "bpti-x", "bpti-autograd"):
        clamp = ("x",) if name == "bpti-x" else ("x", "y")
        checkpoint = {"bpti-ckpt": True, "bpti-flat": BPTI_FLAT_SLOTS}.get(name, False)
        rule = BPThroughInference(model, inference, adam, TaskLoss(reconstruct={"y": 1.0}), clamp=clamp, checkpoint=checkpoint)
    else:
        raise ValueError(f"unknown algorithm {name!r}")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        rule.step({"x": x, "y": y})

    return step


def counted_flops(step: Step, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul/conv FLOPs one call of ``step`` executes, counted at the ATen dispatch level with
    ``torch.utils.flop_counter``'s formulas (its ``FlopCounterMode`` cannot watch
    ``autograd.grad`` inside a step, which the general relaxation uses). In-place products
    (``addmm_``, ``baddbmm_``), which that registry leaves out, count as their out-of-place forms."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    def formula_of(packet: Any) -> Any:
        formula = flop_registry.get(packet)
        name = packet.__name__
        if formula is None and name.endswith("_") and hasattr(torch.ops.aten, name[:-1]):
            formula = flop_registry.get(getattr(torch.ops.aten, name[:-1]))
        return formula

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = formula_of(func._overloadpacket)
            if formula is not None:
                Count.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Count():
        step(x, y)
    return Count.total
