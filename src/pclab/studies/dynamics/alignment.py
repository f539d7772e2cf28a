"""How well the PC weight update follows the backprop gradient of the same network, per layer.

The *PC update* is the parameter gradient of :meth:`PCLearning.weight_energy` at the relaxed state
(before the parameter optimiser transforms it). It is compared with the backprop gradient of the
energy the PC rule descends (same units: ``1/2 ||e||^2`` for Gaussian nodes, nats for
cross-entropy nodes, batch mean), with the targets clamped, at two states:

* ``feedforward`` (models with a feed-forward path from the image: discriminative, hybrid): the
  feed-forward state ``ff(x; theta)`` -- every hidden error is zero there, so this is the output
  loss backpropagated through the feed-forward pass, the gradient of plain ``bp``;
* ``inference`` (every model): the state after ``T`` steps of inference with only the image
  clamped, backpropagated through the unrolled inference (the objective of
  ``bp-through-inference``, in energy units). When inference has converged this equals the PC
  update (envelope theorem: ``dE/dz = 0`` at the fixed point), which the tests check.

Layers are the PCN's edge modules. Amortisers (encoders) are skipped: PC learning trains them on their own
loss (:meth:`~pclab.core.PCN.amortiser_loss`), which has no backprop counterpart in the energy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...core import PCN, Inference, PCLearning, relax

Batch = Mapping[str, torch.Tensor]


def _edge_grads(model: PCN, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flattened gradient of ``loss`` per edge module (zeros where it does not depend on it)."""
    out = {}
    for key, module in model.edge_modules.items():
        params = [p for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out[key] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    return out


def pc_update(rule: PCLearning, batch: Batch) -> dict[str, torch.Tensor]:
    """The PC rule's parameter gradient per edge module, at the state relaxed with ``batch`` clamped."""
    relaxed = relax(rule.model, batch, rule.inference)
    with torch.enable_grad():
        return _edge_grads(rule.model, rule.weight_energy(relaxed))


REFERENCES = ("feedforward", "inference")


def backprop_reference(model: PCN, batch: Batch, inference: Inference, reference: str, image: str = "x") -> dict[str, torch.Tensor]:
    """The backprop gradient per edge module of the energy with ``batch`` clamped, at the
    ``reference`` state (``"feedforward"`` or ``"inference"``, module docstring)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    with torch.enable_grad():
        if reference == "feedforward":
            state = model.initial_state({image: batch[image]}, "forward")
        else:
            state = dict(relax(model, {image: batch[image]}, inference, differentiable=True).values)
        state.update(batch)
        return _edge_grads(model, model.energy(state, set(batch)))


def compare(pc: Mapping[str, torch.Tensor], bp: Mapping[str, torch.Tensor]) -> list[dict[str, float | str]]:
    """Per layer: cosine of the two gradients and the norm ratio ``||g_pc|| / ||g_bp||``."""
    rows = []
    for key in pc:
        a, b = pc[key].double(), bp[key].double()
        na, nb = float(a.norm()), float(b.norm())
        cosine = float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan")
        rows.append({"layer": key, "cosine": cosine, "norm_ratio": na / nb if nb > 0 else float("nan"),
                     "pc_norm": na, "bp_norm": nb})
    return rows


def alignment(rule: PCLearning, batch: Batch, references: tuple[str, ...] = REFERENCES, image: str = "x") -> list[dict[str, float | str]]:
    """Per-layer cosine and norm ratio of the PC update against each backprop reference on ``batch``
    (``feedforward`` is skipped when only the image is in the batch: no feed-forward path)."""
    pc = pc_update(rule, batch)
    rows = []
    for reference in references:
        if reference == "feedforward" and set(batch) == {image}:
            continue
        bp = backprop_reference(rule.model, batch, rule.inference, reference, image)
        rows += [{"reference": reference, **row} for row in compare(pc, bp)]
    return rows
