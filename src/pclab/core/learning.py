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
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from . import chain as dense
from . import chain_adjoint, compiled
from .graph import PCN, State
from .optim import SGD
from .relax import Inference, Relaxed, chain_plan, fast_chain, relax

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TaskLoss:
    """A task loss on the predictions of a state, averaged over the batch.

    ``reconstruct``: node -> weight of ``MSE(mu_node, target)`` (mean over elements).
    ``classify``: node -> weight of ``CE(mu_node, target)``; the target is class indices
    ``(batch,)`` or class probabilities ``(batch, classes)``.
    """

    reconstruct: Mapping[str, float] = field(default_factory=dict)
    classify: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reconstruct and not self.classify:
            raise ValueError("a TaskLoss needs at least one reconstruct or classify term")
        for kind, terms in (("reconstruct", self.reconstruct), ("classify", self.classify)):
            for node, weight in terms.items():
                if not (weight >= 0):
                    raise ValueError(f"TaskLoss {kind} weight of node {node!r} must be >= 0, got {weight!r}")

    @classmethod
    def mix(cls, lam: float, image: str = "x", label: str = "y") -> TaskLoss:
        """``(1 - lam) * MSE(image) + lam * CE(label)``: the classification-reconstruction mix."""
        if not (0.0 <= lam <= 1.0):
            raise ValueError(f"lam must be in [0, 1], got {lam!r}")
        return cls(reconstruct={image: 1.0 - lam}, classify={label: lam})

    @property
    def targets(self) -> set[str]:
        return set(self.reconstruct) | set(self.classify)

    def __call__(self, model: PCN, values: State, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, parts)`` for the predictions at ``values``; parts are per-term floats."""
        mu = {node: model._prediction(node, values) for node in self.targets}  # only those the loss uses
        loss = None
        parts: dict[str, float] = {}
        for node, weight in self.reconstruct.items():
            term = F.mse_loss(mu[node], batch[node])
            parts[f"mse_{node}"] = float(term.detach())
            loss = weight * term if loss is None else loss + weight * term
        for node, weight in self.classify.items():
            term = F.cross_entropy(mu[node], batch[node])
            parts[f"ce_{node}"] = float(term.detach())
            loss = weight * term if loss is None else loss + weight * term
        assert loss is not None
        return loss, parts


class LearningRule:
    """Base class: owns the parameter optimiser and scheduler of ``model``."""

    def __init__(self, model: PCN, optimizer: torch.optim.Optimizer, scheduler: Any | None = None):
        if not isinstance(model, PCN):
            raise TypeError(f"model must be a pclab PCN, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

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
        if self.__dict__.get("_learning_clamp") == clamped:
            return
        model = self.model
        targets = [n for n in model.error_nodes if n in clamped and model.active(n, clamped)]
        if not targets and inference.init == "forward" and not model.amortisers:
            missing = [n for n in model.error_nodes if not model.outgoing[n] and n not in clamped] or list(model.error_nodes)
            raise ValueError(f"{type(self).__name__}.step: expected the batch to clamp a node that has a prediction, e.g. {missing}; "
                             f"got only {sorted(clamped)}: from the feed-forward start every prediction error is 0 and nothing would learn")
        self._learning_clamp = clamped

    def _chain_plan(self, inference: Inference, batch: Batch) -> dense.Plan | None:
        """The Dense-chain plan of relaxing ``batch`` from the feed-forward pass, or ``None`` when
        the model is not such a chain; kept until the inference, the clamped nodes or the
        model's modules change."""
        clamped = frozenset(batch)
        memo = self.__dict__.get("_plan_memo")  # (inference, clamped, plan)
        if memo is not None and memo[0] is inference and memo[1] == clamped and dense.still_valid(memo[2].chain, self.model):
            return memo[2]
        structure = fast_chain(self.model, inference)
        if structure is None:
            return None
        plan = chain_plan(self.model, structure, clamped, inference, feed_forward=True)
        self._plan_memo = (inference, clamped, plan)
        return plan

    def _optimizer_compiles(self) -> bool:
        """Whether the optimiser's step may run compiled: its hyperparameters are those of the first
        time this was asked. A new float learning rate (a scheduler's, a manual edit) would
        recompile a compiled step; tensor rates are updated in place and read by it."""
        if self.scheduler is not None and not compiled.rates_are_tensors(self.optimizer):
            return False
        now = compiled.hyperparameters(self.optimizer)
        return self.__dict__.setdefault("_compiled_hyperparameters", now) == now

    def _apply(self) -> None:
        if not self._compiled_update():
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def _compiled_update(self) -> bool:
        """Take the optimiser's step as a compiled graph (:func:`pclab.core.compiled.optimizer_update`)
        where this rule runs compiled; ``False``: nothing done, ``optimizer.step()`` runs."""
        return False

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

    For a chain of :class:`~pclab.core.layers.Dense` layers the relaxation and the gradient are the
    hand-derived fast path of :mod:`pclab.core.chain` (the same numbers; with
    ``Inference(compile=True)`` both run as one compiled graph, :mod:`pclab.core.compiled`, and
    the optimiser's step from the same compiled frame while its hyperparameters stay put: without
    a scheduler, or with one over tensor learning rates). Other PCNs relaxed by pclab's ``SGD``
    take each relaxation step's latent gradient from a compiled graph (see :class:`Inference`).
    """

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
        inference = self.inference
        if inference.compile:
            energy = self._compiled_step(batch)
            if energy is not None:
                return {"energy": float(energy)}
            if fast_chain(self.model, inference) is not None:  # one compiled graph per Dense chain is enough
                inference = replace(inference, compile=False)
        relaxed = relax(self.model, batch, inference)
        self.optimizer.zero_grad(set_to_none=True)
        if relaxed.chain is not None and type(self).weight_energy is PCLearning.weight_energy:
            energy = self._chain_grads(relaxed)  # the same gradients, written out for Dense chains
        else:
            energy = self.weight_energy(relaxed)
            if energy.requires_grad:  # no active node (e.g. only a read-out): nothing to learn
                energy.backward()
        self._apply()
        return {"energy": float(energy.detach())}

    def _compiled_step(self, batch: Batch) -> torch.Tensor | None:
        """The whole step -- relaxation, weight gradients and the optimiser's step while its
        hyperparameters stay those of the first compiled step -- from a compiled frame
        (:mod:`pclab.core.compiled`), or ``None`` where that does not apply."""
        inference = self.inference
        if type(self).weight_energy is not PCLearning.weight_energy:  # a subclass's own energy
            return None
        if inference.init != "forward" or inference.tolerance is not None:
            return None
        plan = self._chain_plan(inference, batch)
        if plan is None:
            return None
        structure = plan.chain
        params = structure.params()
        self.model.check_clamp(batch, like=params[0][0])
        clamp = [batch.get(n) for n in structure.nodes]
        if self._optimizer_compiles():
            with torch.no_grad():
                energy = compiled.pc_train_step(plan, params, clamp, self.forward_update, self.optimizer)
            if energy is not None and self.scheduler is not None:
                self.scheduler.step()
            return energy
        with torch.no_grad():
            out = compiled.pc_step(plan, params, clamp, self.forward_update)
        if out is None:
            return None
        energy, grads = out
        self.optimizer.zero_grad(set_to_none=True)
        dense.set_grads(structure, grads)
        self._apply()
        return energy

    def _chain_grads(self, relaxed: Relaxed) -> torch.Tensor:
        """``weight_energy(relaxed).backward()`` by :func:`pclab.core.chain.weight_gradients`."""
        plan, state = relaxed.chain
        with torch.no_grad():
            energy, grads = dense.weight_gradients(plan, state, self.forward_update)
        dense.set_grads(plan.chain, grads)
        return energy


class IncrementalPC(LearningRule):
    """Incremental PC: a weight step at every inference step, from the same errors as the latent step.

    A chain of :class:`~pclab.core.layers.Dense` layers relaxed from its feed-forward pass takes the
    hand-derived path :func:`pclab.core.chain.incremental` (the same numbers, no autograd); with
    ``Inference(compile=True)`` and a ``torch.optim`` Adam, AdamW or SGD, the whole batch -- every
    latent step with its weight step -- runs as one compiled graph
    (:func:`pclab.core.compiled.incremental_train_step`)."""

    def __init__(self, model: PCN, inference: Inference, optimizer: torch.optim.Optimizer, scheduler: Any | None = None):
        super().__init__(model, optimizer, scheduler)
        self.inference = inference

    def step(self, batch: Batch) -> dict[str, float]:
        self._check_learns(batch, self.inference)
        energy = self._chain_step(batch)
        if energy is None:
            energy = self._general_step(batch)
        if self.scheduler is not None:
            self.scheduler.step()
        return {"energy": energy}

    def _chain_step(self, batch: Batch) -> float | None:
        """:func:`pclab.core.chain.incremental` where it applies, else ``None``."""
        inference = self.inference
        if inference.init != "forward" or inference.tolerance is not None or inference.fixed_prediction:
            return None
        plan = self._chain_plan(inference, batch)
        if plan is None or plan.readout:
            return None
        structure = plan.chain
        params = structure.params()
        self.model.check_clamp(batch, like=params[0][0])
        clamp = [batch.get(n) for n in structure.nodes]
        if inference.compile and self._optimizer_compiles():
            with torch.no_grad():
                energy = compiled.incremental_train_step(plan, params, clamp, self.optimizer)
            if energy is not None:
                return float(energy)

        def learn(grads: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
            self.optimizer.zero_grad(set_to_none=True)
            dense.set_grads(structure, grads)
            self.optimizer.step()

        with torch.no_grad():
            return float(dense.incremental(plan, params, clamp, learn))

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

    On a chain of :class:`~pclab.core.layers.Dense` layers relaxed from its feed-forward pass by
    pclab's ``SGD``, with a plain :class:`TaskLoss` and neither ``truncate`` nor ``checkpoint``,
    a step needs no autograd: the hand-derived reverse pass takes the loss's derivative directly
    (:func:`pclab.core.chain_adjoint.task_loss_grads`, the same gradients), and with
    ``Inference(compile=True)`` the whole step is one compiled graph.
    """

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

    def _compiled_update(self) -> bool:
        # with Inference(compile=True) the step after backward runs compiled too
        return self.inference.compile and self._optimizer_compiles() and compiled.optimizer_update(self.optimizer)

    def step(self, batch: Batch) -> dict[str, float]:
        metrics = self._chain_step(batch)
        return super().step(batch) if metrics is None else metrics

    def _chain_step(self, batch: Batch) -> dict[str, float] | None:
        """The step without autograd on a Dense chain relaxed from its feed-forward pass with a
        plain :class:`TaskLoss` (:func:`pclab.core.chain_adjoint.task_loss_grads`: the same
        gradients as ``loss.backward()``); with ``Inference(compile=True)`` one compiled graph,
        the optimiser's step included where :func:`pclab.core.compiled.functional_groups`
        applies. ``None`` where this does not apply (the caller takes :meth:`objective`)."""
        inference = self.inference
        if self.truncate is not None or self.checkpoint is not False or type(self.loss) is not TaskLoss:
            return None
        if inference.init != "forward" or inference.tolerance is not None:
            return None
        _check_batch(batch, self.clamp, self.loss)
        clamp = {n: batch[n] for n in self.clamp}
        plan = self._chain_plan(inference, clamp)
        if plan is None:
            return None
        structure = plan.chain
        params = structure.params()
        size = self.model.check_clamp(clamp, like=params[0][0])
        given = [clamp.get(n) for n in structure.nodes]
        terms, names = _chain_terms(self.loss, structure)
        targets = [batch[n] for n in names]
        if not chain_adjoint.applies(plan, given) or not _plain_targets(structure, terms, targets, params[0][0], size):
            return None
        need = tuple((w.requires_grad, b is not None and b.requires_grad) for w, b in params)
        if not any(w or b for w, b in need):
            return None  # (autograd's own error: nothing requires grad)
        key = (plan, terms, need)
        reached = self.__dict__.get("_reached", {}).get(key)
        values = None
        if inference.compile and reached is not None:  # (a first step runs eagerly: it shows which parameters the loss reaches)
            with torch.no_grad():
                if self._optimizer_compiles() and compiled.traces_update(self.optimizer):
                    values = compiled.bpti_train_step(plan, params, given, terms, targets, need, reached, self.optimizer)
                    if values is not None and self.scheduler is not None:
                        self.scheduler.step()
                else:
                    out = compiled.bpti_step(plan, params, given, terms, targets, need)
                    if out is not None:
                        values = out[0]
                        self._set_grads_and_step(key, params, out[1])
        if values is None:
            with torch.no_grad():
                values, grads = chain_adjoint.task_loss_grads(plan, params, given, terms, targets, need)
            self._set_grads_and_step(key, params, grads)
        numbers = values.tolist()
        metrics = {"loss": numbers[0]}
        for term, name, value in zip(terms, names, numbers[1:]):
            metrics[f"{term.kind}_{name}"] = value
        return metrics

    def _set_grads_and_step(self, key: tuple, params: dense.Params, grads: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
        """Leave ``grads`` in ``.grad``, note which parameters they reach (``key``: plan, terms,
        need) and take ``torch.optim``'s step (where this path compiles, the optimiser's update is
        in the graph of :func:`pclab.core.compiled.bpti_train_step`; these eager steps are a
        plan's first, an odd batch size's and those of optimisers it cannot trace)."""
        plan = key[0]
        self.optimizer.zero_grad(set_to_none=True)
        dense.set_grads(plan.chain, grads)
        # in the flat order of the chain's parameters (compiled._flat)
        reached = [g is not None and p.requires_grad for pair, layer in zip(grads, params) for g, p in zip(pair, layer) if p is not None]
        self.__dict__.setdefault("_reached", {})[key] = tuple(reached)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

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


def _chain_terms(loss: TaskLoss, chain: dense.DenseChain) -> tuple[tuple[chain_adjoint.LossTerm, ...], tuple[str, ...]]:
    """``loss``'s terms on ``chain``'s nodes, in the order :meth:`TaskLoss.__call__` adds them, and their node names."""
    index = {n: i for i, n in enumerate(chain.nodes)}
    items = [(n, w, "mse") for n, w in loss.reconstruct.items()] + [(n, w, "ce") for n, w in loss.classify.items()]
    return tuple(chain_adjoint.LossTerm(index[n], float(w), kind) for n, w, kind in items), tuple(n for n, _, _ in items)


def _plain_targets(chain: dense.DenseChain, terms: Sequence[chain_adjoint.LossTerm], targets: Sequence[torch.Tensor],
                   like: torch.Tensor, batch: int) -> bool:
    """Targets :func:`pclab.core.chain_adjoint.task_loss_grads` takes as they are: the predicted
    node's ``(batch, width)`` in ``like``'s dtype (MSE, CE with class probabilities) or ``(batch,)``
    int64 class indices (CE), on ``like``'s device, not requiring grad; anything else goes to
    ``F.mse_loss`` / ``F.cross_entropy`` themselves (their broadcasting, their errors)."""
    for term, target in zip(terms, targets):
        if not isinstance(target, torch.Tensor) or target.device != like.device or target.requires_grad:
            return False
        if term.kind == "ce" and target.dtype == torch.int64:
            expected: tuple[int, ...] = (batch,)
        else:
            expected = (batch, chain.layers[term.node - 1].linear.out_features)
            if target.dtype != like.dtype:
                return False
        if tuple(target.shape) != expected:
            return False
    return True


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
