"""Learning rules: how the parameters of a PCN change after (or during) relaxation.

Every rule works on the same :class:`~pclab.core.graph.PCN` object, owns its parameter optimiser
(and optional learning-rate scheduler), takes one batch per :meth:`LearningRule.step`, and has
``state_dict()`` / ``load_state_dict()`` so a run resumes with identical next updates.

* :class:`PCLearning`     -- the local PC rule at the relaxed state (``forward_update`` option).
* :class:`IncrementalPC`  -- a weight step after every inference step.
* :class:`ZeroDivergenceIL` -- Z-IL: each layer learns at the step its error first appears.
* :class:`BPThroughInference` -- a task loss on the state after ``T`` steps, backpropagated
  through the unrolled inference.
* :class:`Backprop`       -- plain backprop of the feed-forward pass of the same modules.

A batch is a mapping node name -> tensor. PC rules clamp every node in the batch. The backprop
rules clamp the nodes named in ``clamp`` and use the others as targets of their :class:`TaskLoss`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .fast import dispatch
from .graph import PCN, State
from .loss import TaskLoss
from .optim import SGD
from .relax import Inference, Relaxed, relax

Batch = Mapping[str, torch.Tensor]


class LearningRule:
    """Base class: owns the parameter optimiser and scheduler of ``model``.

    ``algorithm`` names what a rule computes; :mod:`pclab.core.fast.dispatch` reads it to offer an
    accelerator for :meth:`step` (a subclass that changes the maths gets the reference step)."""

    algorithm: str = ""

    def __init__(self, model: PCN, optimizer: torch.optim.Optimizer, scheduler: Any | None = None):
        if not isinstance(model, PCN):
            raise TypeError(f"model must be a pclab PCN, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.fast_cache = dispatch.RuleCache()  # what accelerators keep between steps (plans, compiled state)
        self._learning_clamp: frozenset[str] | None = None  # the batch keys _check_learns last accepted

    def step(self, batch: Batch) -> dict[str, float]:
        """Learn from one batch; return scalar metrics (energies, losses)."""
        raise NotImplementedError

    def _check_learns(self, batch: Batch, inference: Inference) -> None:
        """ValueError if the batch clamps no node that has a prediction while relaxation starts from the
        feed-forward pass (e.g. a classifier's batch without its label): every prediction error is then 0
        and the step would learn nothing. Checked once per set of batch keys."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"{type(self).__name__}.step: expected a batch mapping node name -> tensor, got {type(batch).__name__}")
        clamped = frozenset(batch)
        if self._learning_clamp == clamped:
            return
        model = self.model
        targets = [n for n in model.error_nodes if n in clamped and model.active(n, clamped)]
        if not targets and inference.init == "forward" and not model.amortisers:
            missing = [n for n in model.error_nodes if not model.outgoing[n] and n not in clamped] or list(model.error_nodes)
            raise ValueError(f"{type(self).__name__}.step: expected the batch to clamp a node that has a prediction, e.g. {missing}; "
                             f"got only {sorted(clamped)}: from the feed-forward start every prediction error is 0 and nothing would learn")
        self._learning_clamp = clamped

    def _apply(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            if state.get("scheduler") is None:
                raise ValueError("checkpoint has no scheduler state but this rule has a scheduler")
            self.scheduler.load_state_dict(state["scheduler"])


class PCLearning(LearningRule):
    """The PC rule: relax with the batch clamped, then one optimiser step on ``dE/dtheta``.

    ``dE/dtheta`` of an edge depends only on its target's error and its source's value: the rule
    is local. With ``forward_update`` the presynaptic values are those of the initial
    (feed-forward) pass instead of the relaxed ones (Qi et al. 2025). Amortisers (encoders giving
    a latent its first value) learn to predict the relaxed latent
    (:meth:`~pclab.core.graph.PCN.amortiser_loss`).

    Accelerated (the same numbers, :mod:`pclab.core.fast.dispatch`) for chains of
    :class:`~pclab.core.layers.Dense` layers: hand-derived relaxation and gradients, with
    ``Inference(compile=True)`` one compiled graph with the optimiser's step.
    """

    algorithm = "pc"

    def __init__(
        self,
        model: PCN,
        inference: Inference,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        forward_update: bool = False,
    ):
        super().__init__(model, optimizer, scheduler)
        self.inference, self.forward_update = inference, forward_update

    def weight_energy(self, relaxed: Relaxed) -> torch.Tensor:
        """The energy whose parameter gradient is the update (batch mean, a scalar)."""
        values = {n: v.detach() for n, v in relaxed.values.items()}
        sources = None
        if self.forward_update:
            sources = {n: v.detach() for n, v in relaxed.initial.items() if n not in relaxed.clamped}
        energy = self.model.energy(values, relaxed.clamped, sources)
        if self.model.amortisers:  # encoders learn to predict the relaxed latents
            energy = energy + self.model.amortiser_loss(values, relaxed.clamped)
        return energy

    def step(self, batch: Batch) -> dict[str, float]:
        self._check_learns(batch, self.inference)
        fast = dispatch.learning_step(self, batch)
        if fast is not None:  # an accelerator computes this step
            return fast()
        relaxed = relax(self.model, batch, self.inference)
        self.optimizer.zero_grad(set_to_none=True)
        energy = self.weight_energy(relaxed)
        if energy.requires_grad:  # no active node (e.g. only a read-out): nothing to learn
            energy.backward()
        self._apply()
        return {"energy": float(energy.detach())}

class IncrementalPC(LearningRule):
    """Incremental PC: a weight step at every inference step, from the same errors as the latent step.

    Accelerated for chains of :class:`~pclab.core.layers.Dense` layers relaxed from their
    feed-forward pass (:mod:`pclab.core.fast.dispatch`)."""

    algorithm = "incremental-pc"

    def __init__(self, model: PCN, inference: Inference, optimizer: torch.optim.Optimizer, scheduler: Any | None = None):
        super().__init__(model, optimizer, scheduler)
        if inference.parametrisation != "state":
            raise ValueError("IncrementalPC takes a weight step inside a state-based relaxation; "
                             f"expected Inference(parametrisation='state'), got {inference.parametrisation!r}")
        self.inference = inference

    def step(self, batch: Batch) -> dict[str, float]:
        self._check_learns(batch, self.inference)
        fast = dispatch.learning_step(self, batch)
        if fast is not None:  # an accelerator computes this step
            return fast()
        energy = self._general_step(batch)
        if self.scheduler is not None:
            self.scheduler.step()
        return {"energy": energy}

    def _general_step(self, batch: Batch) -> float:
        clamped = frozenset(batch)
        last = {}

        def learn(t: int, values: State) -> None:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                detached = {n: v.detach() for n, v in values.items()}
                energy = self.model.energy(detached, clamped)
                if self.model.amortisers:  # encoders learn to predict the current latents
                    energy = energy + self.model.amortiser_loss(detached, clamped)
                if energy.requires_grad:  # no active node: nothing to learn
                    energy.backward()
            self.optimizer.step()
            last["energy"] = energy.detach()

        relax(self.model, batch, self.inference, on_step=learn)
        return float(last["energy"]) if last else 0.0


class ZeroDivergenceIL(LearningRule):
    """Z-IL (Song et al. 2020): feed-forward init, latent SGD with step 1, ``T = N`` steps, and the
    edges into layer ``l`` take their gradient at step ``t = N - 1 - l`` only. For a
    feed-forward network whose output node is clamped to a target, the resulting update equals
    the backprop gradient of that output's energy.
    """

    algorithm = "z-il"

    def __init__(self, model: PCN, optimizer: torch.optim.Optimizer, scheduler: Any | None = None):
        super().__init__(model, optimizer, scheduler)
        self.inference = Inference(steps=model.num_layers, optimizer=SGD(lr=1.0), init="forward")

    def step(self, batch: Batch) -> dict[str, float]:
        self._check_learns(batch, self.inference)
        clamped = frozenset(batch)
        model = self.model
        self.optimizer.zero_grad(set_to_none=True)

        def learn(t: int, values: State) -> None:
            layer = model.num_layers - 1 - t
            nodes = [n for n in model.error_nodes if model.layer_index[n] == layer]
            with torch.enable_grad():
                detached = {n: v.detach() for n, v in values.items()}
                energies = model.energies(detached, clamped)
                terms = [energies[n].mean() for n in nodes if n in energies]
                if terms:
                    torch.stack(terms).sum().backward()

        relax(model, batch, self.inference, on_step=learn)
        self._apply()
        return {}


class _TaskLossRule(LearningRule):
    """A rule that descends a task loss by backprop: one optimiser step on ``objective(batch)``."""

    def objective(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def step(self, batch: Batch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.objective(batch)
        loss.backward()
        self._apply()
        return {"loss": float(loss.detach()), **parts}


class BPThroughInference(_TaskLossRule):
    """Backprop of a task loss on the state after ``T`` relaxation steps, through every step.

    Args:
        model: the network.
        inference: the relaxation that is unrolled (its optimiser must be differentiable:
            pclab ``SGD`` or ``Adam``).
        optimizer: parameter optimiser.
        loss: the task loss on the final state's predictions.
        clamp: batch entries clamped during inference; the rest are targets only.
        truncate: backpropagate through the last ``truncate`` steps only.
        checkpoint: ``True``: recompute each step in the backward pass (memory per step: the state
            only); an integer ``s >= 1`` (not a bool): binomial checkpointing with ``s`` stored
            states (:mod:`pclab.core.binomial`; memory independent of ``T``, at most
            ``(r + 1) T`` steps rerun without a graph, ``r`` the least integer with
            ``binom(s + 1 + r, s + 1) >= T``); ``False``: keep the whole unrolled graph.

    Accelerated (:mod:`pclab.core.fast.dispatch`) on a chain of :class:`~pclab.core.layers.Dense`
    layers relaxed by pclab's ``SGD``: a hand-derived reverse pass instead of autograd, with
    ``Inference(compile=True)`` one compiled graph with the optimiser's step.
    """

    algorithm = "bp-through-inference"

    def __init__(
        self,
        model: PCN,
        inference: Inference,
        optimizer: torch.optim.Optimizer,
        loss: TaskLoss,
        clamp: Sequence[str],
        scheduler: Any | None = None,
        truncate: int | None = None,
        checkpoint: bool | int = False,
    ):
        super().__init__(model, optimizer, scheduler)
        _check_clamp_names(model, clamp, loss)
        if not isinstance(checkpoint, int) or (not isinstance(checkpoint, bool) and checkpoint < 1):
            raise ValueError(f"checkpoint must be True, False or a number of slots >= 1, got {checkpoint!r}")
        self.inference, self.loss, self.clamp = inference, loss, tuple(clamp)
        self.truncate, self.checkpoint = truncate, checkpoint

    def step(self, batch: Batch) -> dict[str, float]:
        _check_batch(batch, self.clamp, self.loss)
        fast = dispatch.learning_step(self, batch)
        if fast is not None:  # an accelerator computes this step
            return fast()
        return super().step(batch)

    def objective(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The task loss after the unrolled relaxation (differentiable in the parameters)."""
        _check_batch(batch, self.clamp, self.loss)
        clamp = {n: batch[n] for n in self.clamp}
        per_step = isinstance(self.checkpoint, bool) and self.checkpoint
        slots = None if isinstance(self.checkpoint, bool) else self.checkpoint
        relaxed = relax(
            self.model, clamp, self.inference, differentiable=True,
            truncate=self.truncate, checkpoint_steps=per_step, checkpoint_slots=slots,
        )
        return self.loss(self.model, relaxed.values, batch)


class Backprop(_TaskLossRule):
    """Plain backprop: the task loss on the feed-forward pass of the same modules (``T = 0``)."""

    algorithm = "backprop"

    def __init__(
        self,
        model: PCN,
        optimizer: torch.optim.Optimizer,
        loss: TaskLoss,
        clamp: Sequence[str],
        scheduler: Any | None = None,
    ):
        super().__init__(model, optimizer, scheduler)
        _check_clamp_names(model, clamp, loss)
        self.loss, self.clamp = loss, tuple(clamp)

    def objective(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        _check_batch(batch, self.clamp, self.loss)
        values = self.model.initial_state({n: batch[n] for n in self.clamp}, "forward")
        return self.loss(self.model, values, batch)


def _check_clamp_names(model: PCN, clamp: Sequence[str], loss: TaskLoss) -> None:
    if isinstance(clamp, str):
        raise TypeError(f"clamp must be a sequence of node names, got the string {clamp!r}; write ({clamp!r},)")
    for name in [*clamp, *loss.targets]:
        if name not in model.nodes:
            raise ValueError(f"unknown node {name!r} in clamp or loss; nodes are {list(model.nodes)}")
    for name in loss.targets:
        if name not in model.error_nodes:
            raise ValueError(f"loss target {name!r} has no prediction (no incoming edge) to compare with")


def _check_batch(batch: Batch, clamp: Sequence[str], loss: TaskLoss) -> None:
    missing = [n for n in [*clamp, *loss.targets] if n not in batch]
    if missing:
        raise ValueError(f"batch lacks entries {missing}; it has {sorted(batch)}")
