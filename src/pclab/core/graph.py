"""The predictive coding network: value nodes joined by prediction edges.

A :class:`PCN` is a plain ``nn.Module``. Its parameters are those of its edge modules; its value
nodes hold no tensors (the values of one batch are a ``dict[str, Tensor]``, the *state*, owned
by relaxation). Each edge ``source -> target`` carries a module ``f`` with
``mu_target = sum over incoming edges of f(z_source)``. A node with incoming edges has an energy
of its prediction error; a node without (a root) has none. *Amortisers* are edges used only to
initialise a node (an encoder giving a latent's first value); they never enter the energy.

Conventions (used by every piece of pclab):

* ``E`` of one sample is the sum of the node energies; relaxation descends the gradient of each
  sample's own energy (so latent step sizes do not depend on the batch size); learning rules
  descend the batch mean.
* Clamped nodes keep the values given; free nodes are inferred. A released cross-entropy node is
  a read-out (value ``softmax(mu)``) and has no energy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .energy import CrossEntropy, Energy, Gaussian

State = dict[str, torch.Tensor]
"""Values of the nodes for one batch: name -> tensor of shape ``(batch, *node.shape)``."""


@dataclass(frozen=True)
class Node:
    """A value node.

    Args:
        name: unique identifier (also the key in states and batches).
        shape: shape of one sample's value, e.g. ``(784,)`` or ``(1, 28, 28)``.
        energy: energy of the node's prediction error (ignored for roots).
    """

    name: str
    shape: tuple[int, ...]
    energy: Energy = field(default_factory=Gaussian)

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ValueError(f"node name must be non-empty and contain no '.', got {self.name!r}")
        shape = tuple(int(s) for s in self.shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"node {self.name!r}: shape must be non-empty positive sizes, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)


@dataclass(frozen=True)
class Edge:
    """Where an edge module sits: ``target`` is predicted from ``source`` by ``module``."""

    source: str
    target: str
    key: str


def all_finite(values: torch.Tensor) -> bool:
    """Every element of ``values`` is finite. A finite sum proves it with one reduction (several
    times cheaper than ``isfinite().all()``); only a non-finite sum (NaN/Inf, or an overflow of
    finite values) takes the exact check."""
    return math.isfinite(values.sum().item()) or bool(torch.isfinite(values).all())


def evaluates_once(module: nn.Module) -> bool:
    """Whether calling ``module`` once per relaxation equals calling it at every step: nothing in it
    samples (dropout) or updates state (a ``torch.nn`` BatchNorm's running statistics) in training
    mode. (:class:`~pclab.core.batchnorm.PhasedBatchNorm` leaves its statistics alone while relaxing.)"""
    stateful = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return not any(isinstance(m, stateful) and m.training for m in module.modules())


def edge_key(source: str, target: str) -> str:
    return f"{source}_to_{target}"


class PCN(nn.Module):
    """A predictive coding network over a directed acyclic graph of value nodes.

    Args:
        nodes: the value nodes.
        edges: ``(source, target, module)`` triples; ``module`` maps a ``(batch, *source.shape)``
            tensor to a ``(batch, *target.shape)`` prediction.
        amortisers: optional ``(source, target, module)`` triples that give a free node its initial
            value (an encoder); they take no part in the energy.

    Example:
        >>> from pclab.core import PCN, Node, Dense, CrossEntropy
        >>> net = PCN(
        ...     nodes=[Node("x", (784,)), Node("h", (128,)), Node("y", (10,), CrossEntropy())],
        ...     edges=[("x", "h", Dense(784, 128, "tanh")), ("h", "y", Dense(128, 10))],
        ... )
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        edges: Iterable[tuple[str, str, nn.Module]],
        amortisers: Iterable[tuple[str, str, nn.Module]] = (),
    ):
        super().__init__()
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise TypeError(f"nodes must be pclab Node objects, got {type(node).__name__}")
            if node.name in self.nodes:
                raise ValueError(f"duplicate node name {node.name!r}")
            self.nodes[node.name] = node
        self.edge_modules = nn.ModuleDict()
        self.edges: list[Edge] = self._register(edges, self.edge_modules, "edge")
        self.amortiser_modules = nn.ModuleDict()
        self.amortisers: dict[str, Edge] = {}
        for edge in self._register(amortisers, self.amortiser_modules, "amortiser"):
            if edge.target in self.amortisers:
                raise ValueError(f"node {edge.target!r} has two amortisers")
            self.amortisers[edge.target] = edge
        self.incoming: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        self.outgoing: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        for edge in self.edges:
            self.incoming[edge.target].append(edge)
            self.outgoing[edge.source].append(edge)
        self.order: list[str] = self._topological_order()
        self.error_nodes: list[str] = [n for n in self.order if self.incoming[n]]
        self.layer_index, self.num_layers = self._layer_indices()
        self.fast = all(hasattr(m, "forward_with_vjp") for m in self.edge_modules.values())
        for edge in [*self.edges, *self.amortisers.values()]:
            self._check_linear(edge, (self.edge_modules if edge in self.edges else self.amortiser_modules)[edge.key])
        self._shapes_seen: set[str] = set()  # nodes whose predictions have been seen to have the node's shape

    # ------------------------------------------------------------------ structure
    def _register(self, triples: Iterable[tuple[str, str, nn.Module]], store: nn.ModuleDict, what: str) -> list[Edge]:
        out = []
        for triple in triples:
            if len(triple) != 3:
                raise ValueError(f"each {what} must be (source, target, module), got {triple!r}")
            source, target, module = triple
            for end in (source, target):
                if end not in self.nodes:
                    raise ValueError(f"{what} {source!r} -> {target!r} names unknown node {end!r}; nodes are {list(self.nodes)}")
            if not isinstance(module, nn.Module):
                raise TypeError(f"{what} {source!r} -> {target!r}: module must be an nn.Module, got {type(module).__name__}")
            key = edge_key(source, target)
            if key in store:
                raise ValueError(f"duplicate {what} {source!r} -> {target!r}")
            store[key] = module
            out.append(Edge(source, target, key))
        return out

    def _topological_order(self) -> list[str]:
        indegree = {n: len(self.incoming[n]) for n in self.nodes}
        ready = [n for n in self.nodes if indegree[n] == 0]
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for edge in self.outgoing[n]:
                indegree[edge.target] -= 1
                if indegree[edge.target] == 0:
                    ready.append(edge.target)
        if len(order) != len(self.nodes):
            cyclic = sorted(set(self.nodes) - set(order))
            raise ValueError(f"prediction edges must form an acyclic graph; nodes on a cycle: {cyclic}")
        return order

    def _layer_indices(self) -> tuple[dict[str, int], int]:
        depth: dict[str, int] = {}
        for n in self.order:
            depth[n] = max((depth[e.source] + 1 for e in self.incoming[n]), default=0)
        index = {n: depth[n] - 1 for n in self.error_nodes}
        return index, max(index.values(), default=-1) + 1

    def module(self, source: str, target: str) -> nn.Module:
        """The module predicting ``target`` from ``source``."""
        return self.edge_modules[edge_key(source, target)]

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    # ------------------------------------------------------------------ validation
    def _check_linear(self, edge: Edge, module: nn.Module) -> None:
        """A module whose sizes are known without running it (a pclab ``Dense``, an ``nn.Linear``) must map
        its source node's shape to its target node's."""
        linear = module if type(module) is nn.Linear else getattr(module, "linear", None) if type(module).__name__ == "Dense" else None
        if not isinstance(linear, nn.Linear):
            return
        source, target = self.nodes[edge.source].shape, self.nodes[edge.target].shape
        if source[-1] != linear.in_features or target != (*source[:-1], linear.out_features):
            raise ValueError(f"module {edge.source!r} -> {edge.target!r}: expected a map from node shape {source} to node shape {target}, "
                             f"got a {type(module).__name__} from {linear.in_features} to {linear.out_features} features")

    def _check_prediction(self, name: str, mu: torch.Tensor, what: str = "prediction") -> None:
        """Once per node: its prediction ``mu`` has shape ``(batch, *node.shape)``."""
        if tuple(mu.shape[1:]) != self.nodes[name].shape:
            sources = [e.source for e in self.incoming[name]] if what == "prediction" else [self.amortisers[name].source]
            raise ValueError(f"{what} of node {name!r} (from {sources}): expected shape (batch, {', '.join(map(str, self.nodes[name].shape))}), "
                             f"got {tuple(mu.shape)}; the module's output does not fit the node")
        if what == "prediction":
            self._shapes_seen.add(name)

    def check_state(self, values: Mapping[str, torch.Tensor], clamp: Mapping[str, torch.Tensor], what: str = "state") -> None:
        """``values`` (e.g. a relaxation's ``initial``) must give every node that ``clamp`` does not, and only
        nodes of the model, each a tensor of shape ``(batch, *node.shape)`` like the clamped values."""
        if not isinstance(values, Mapping):
            raise TypeError(f"{what}: expected a mapping node name -> tensor, got {type(values).__name__}")
        unknown = [n for n in values if n not in self.nodes]
        if unknown:
            raise ValueError(f"{what}: unknown node(s) {unknown}; nodes are {list(self.nodes)}")
        missing = [n for n in self.order if n not in values and n not in clamp]
        if missing:
            raise ValueError(f"{what}: expected a value for every node that is not clamped, missing {missing}")
        batch = self.check_clamp(clamp) if clamp else None
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{what}: value of node {name!r} must be a torch.Tensor, got {type(value).__name__}")
            if name in clamp:
                continue
            expected = (value.shape[0] if batch is None and value.dim() else batch, *self.nodes[name].shape)
            if tuple(value.shape) != expected:
                raise ValueError(f"{what}: value of node {name!r} has shape {tuple(value.shape)}; expected {expected}")

    def check_clamp(self, clamp: Mapping[str, torch.Tensor], like: torch.Tensor | None = None) -> int:
        """Validate clamped values against the nodes; return the batch size.

        ``like``: one of the model's parameters, whose device and dtype the values must have
        (default: the first parameter's, found by walking the modules on every call).
        """
        if not clamp:
            raise ValueError("at least one node must be clamped to give the batch size")
        batch = None
        first = like if like is not None else next(self.parameters(), None)
        device = first.device if first is not None else self.device
        dtype = first.dtype if first is not None else self.dtype
        for name, value in clamp.items():
            if name not in self.nodes:
                raise ValueError(f"cannot clamp unknown node {name!r}; nodes are {list(self.nodes)}")
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"clamped value of node {name!r} must be a torch.Tensor, got {type(value).__name__}")
            expected = self.nodes[name].shape
            if tuple(value.shape[1:]) != expected:
                raise ValueError(
                    f"clamped value of node {name!r} has shape {tuple(value.shape)}; expected (batch, {', '.join(map(str, expected))})"
                )
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"clamped values disagree on the batch size: node {name!r} has {value.shape[0]}, others {batch}")
            if value.device != device:
                raise ValueError(f"clamped value of node {name!r} is on {value.device}; the model is on {device}")
            if value.dtype != dtype:
                raise ValueError(f"clamped value of node {name!r} has dtype {value.dtype}; the model has {dtype}")
            if not all_finite(value):
                bad = int((~torch.isfinite(value)).sum())
                raise ValueError(f"clamped value of node {name!r} must be finite; it holds NaN/Inf in {bad} elements")
        assert batch is not None
        return batch

    # ------------------------------------------------------------------ forward quantities
    def initial_state(self, clamp: Mapping[str, torch.Tensor], init: str = "forward", generator: torch.Generator | None = None) -> State:
        """First values of all nodes for a batch.

        Args:
            clamp: values of the clamped nodes, ``name -> (batch, *shape)``.
            init: ``"forward"``: a free node takes its amortiser's output if it has one, else its
                released prediction from nodes already set (a feed-forward pass), else zeros;
                ``"zeros"``; ``"random"``: standard normal noise (from ``generator``).
        """
        if init not in ("forward", "zeros", "random"):
            raise ValueError(f"unknown init {init!r}; expected 'forward', 'zeros' or 'random'")
        batch = self.check_clamp(clamp)
        values: State = dict(clamp)
        pending = [n for n in self.order if n not in values]

        def fill(name: str) -> torch.Tensor:
            shape = (batch, *self.nodes[name].shape)
            if init == "random":
                noise = torch.randn(shape, generator=generator, dtype=self.dtype, device="cpu" if generator is not None else self.device)
                return noise.to(self.device)
            return torch.zeros(shape, dtype=self.dtype, device=self.device)

        if init != "forward":
            for name in pending:
                values[name] = fill(name)
            return values
        while pending:
            for name in pending:
                amortiser = self.amortisers.get(name)
                if amortiser is not None and amortiser.source in values:
                    values[name] = self.amortiser_modules[amortiser.key](values[amortiser.source])
                    self._check_prediction(name, values[name], "amortiser output")
                    break
                sources = self.incoming[name]
                if sources and amortiser is None and all(e.source in values for e in sources):
                    mu = self._prediction(name, values)
                    values[name] = self.nodes[name].energy.released(mu)
                    break
            else:  # nothing could be derived: the first waiting root (else node) starts at zero
                roots = [n for n in pending if not self.incoming[n]] or pending
                name = roots[0]
                values[name] = fill(name)
            pending.remove(name)
        return values

    def _prediction(self, name: str, values: Mapping[str, torch.Tensor], cached: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        total = None
        for edge in self.incoming[name]:
            if cached is not None and edge.key in cached:
                mu = cached[edge.key]
            else:
                mu = self.edge_modules[edge.key](values[edge.source])
            total = mu if total is None else total + mu
        assert total is not None
        if name not in self._shapes_seen:
            self._check_prediction(name, total)
        return total

    def clamped_contributions(self, values: Mapping[str, torch.Tensor], clamped: Iterable[str]) -> dict[str, torch.Tensor]:
        """Edge key -> prediction contribution of every edge out of a clamped node, to be computed
        once per relaxation instead of at every step (``latent_grads(..., cached=...)``); edges
        whose module holds dropout or a ``torch.nn`` BatchNorm in training mode are left out (each
        call samples a new mask or moves the running statistics: they keep being called every step)."""
        clamped = set(clamped)
        return {e.key: self.edge_modules[e.key](values[e.source]) for e in self.edges
                if e.source in clamped and evaluates_once(self.edge_modules[e.key])}

    def predictions(self, values: Mapping[str, torch.Tensor], sources: Mapping[str, torch.Tensor] | None = None,
                    cached: Mapping[str, torch.Tensor] | None = None) -> State:
        """Prediction ``mu`` of every node that has incoming edges.

        Args:
            values: the state.
            sources: optional presynaptic values that replace ``values`` as edge inputs (the
                feed-forward values, for the forward-update rule and the fixed-prediction
                assumption).
            cached: edge key -> contribution to use instead of calling the edge's module
                (:meth:`clamped_contributions`).
        """
        inputs = values if sources is None else {**values, **sources}
        return {name: self._prediction(name, inputs, cached) for name in self.error_nodes}

    def forward(self, clamp: Mapping[str, torch.Tensor]) -> State:
        """The feed-forward pass: ``initial_state(clamp, "forward")``."""
        return self.initial_state(clamp, "forward")

    def active(self, name: str, clamped: Iterable[str]) -> bool:
        """Whether node ``name`` contributes energy (it has a prediction and is not a released CE read-out)."""
        if not self.incoming[name]:
            return False
        return not (isinstance(self.nodes[name].energy, CrossEntropy) and name not in clamped)

    def energies(
        self,
        values: Mapping[str, torch.Tensor],
        clamped: Iterable[str],
        mu: Mapping[str, torch.Tensor] | None = None,
        multipliers: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Precision-weighted energy of every active node, each ``(batch,)``.

        Args:
            values: the state.
            clamped: names of the clamped nodes.
            mu: predictions (computed from ``values`` if omitted).
            multipliers: precision-schedule factors per node (1 when absent).
        """
        clamped = set(clamped)
        mu = self.predictions(values) if mu is None else mu
        out = {}
        for name in self.error_nodes:
            if not self.active(name, clamped):
                continue
            energy = self.nodes[name].energy
            weight = energy.precision * (1.0 if multipliers is None else multipliers.get(name, 1.0))
            out[name] = weight * energy.value(values[name], mu[name])
        return out

    def energy(
        self,
        values: Mapping[str, torch.Tensor],
        clamped: Iterable[str],
        sources: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Batch mean of the total energy (a scalar): the objective of the PC learning rule.

        ``sources`` replaces the presynaptic values (see :meth:`predictions`).
        """
        per_node = self.energies(values, clamped, self.predictions(values, sources))
        if not per_node:
            first = next(iter(values.values()))
            return first.new_zeros(())
        return torch.stack(list(per_node.values())).sum(0).mean()

    def amortiser_loss(self, values: Mapping[str, torch.Tensor], clamped: Iterable[str]) -> torch.Tensor:
        """How far each amortiser's guess is from the (relaxed) value of its free target:
        ``sum over amortisers of 1/2 ||z_target - g(z_source)||^2``, batch mean (a scalar).

        PC rules add it to their weight objective so an encoder learns to predict what inference
        finds (amortised inference); it takes no part in relaxation. The targets are constants.
        """
        clamped = set(clamped)
        total = None
        for target, edge in self.amortisers.items():
            if target in clamped:
                continue
            guess = self.amortiser_modules[edge.key](values[edge.source].detach())
            term = 0.5 * (values[target].detach() - guess).pow(2).reshape(guess.shape[0], -1).sum(1).mean()
            total = term if total is None else total + term
        if total is None:
            return next(iter(values.values())).new_zeros(())
        return total

    # ------------------------------------------------------------------ latent gradients
    def latent_grads(
        self,
        values: Mapping[str, torch.Tensor],
        free: Sequence[str],
        clamped: Iterable[str],
        multipliers: Mapping[str, float] | None = None,
        sources: Mapping[str, torch.Tensor] | None = None,
        cached: Mapping[str, torch.Tensor] | None = None,
        differentiable: bool = False,
        method: str = "auto",
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """``dE/dz`` of each sample's energy for every free node, and the node energies.

        Args:
            values: the state.
            free: names of the nodes to differentiate for.
            clamped: names of the clamped nodes.
            multipliers: precision-schedule factors per node.
            sources: presynaptic values for the predictions (fixed-prediction assumption).
            cached: edge key -> prediction contribution of edges whose input does not change
                (e.g. from a clamped input); used instead of recomputing.
            differentiable: keep the graph so the result can be backpropagated (through the
                parameters and the incoming values).
            method: ``"manual"`` (hand-derived VJPs, needs every edge module to define
                ``forward_with_vjp``), ``"autograd"``, or ``"auto"`` (manual when possible).

        Returns:
            ``(grads, energies)``: name -> ``(batch, *shape)`` gradient, and name -> ``(batch,)``
            precision-weighted energy of every active node.
        """
        if method == "auto":
            method = "manual" if self.fast else "autograd"
        if method == "manual":
            return self._manual_grads(values, free, set(clamped), multipliers, sources, cached)
        if method != "autograd":
            raise ValueError(f"unknown gradient method {method!r}; expected 'auto', 'manual' or 'autograd'")
        return self._autograd_grads(values, free, set(clamped), multipliers, sources, differentiable, cached)

    def _manual_grads(self, values, free, clamped, multipliers, sources, cached):
        inputs = values if sources is None else {**values, **sources}
        free_set = set(free)
        mu: dict[str, torch.Tensor] = {}
        vjps: dict[str, object] = {}
        for edge in self.edges:
            if not self.active(edge.target, clamped):
                continue
            if cached is not None and edge.key in cached:
                contribution = cached[edge.key]
            elif edge.source in free_set:
                contribution, vjps[edge.key] = self.edge_modules[edge.key].forward_with_vjp(inputs[edge.source])
            else:
                contribution = self.edge_modules[edge.key](inputs[edge.source])
            mu[edge.target] = contribution if edge.target not in mu else mu[edge.target] + contribution
        grads: State = {}
        energies: dict[str, torch.Tensor] = {}

        def add(name: str, g: torch.Tensor) -> None:
            grads[name] = g if name not in grads else grads[name] + g

        for name in self.error_nodes:
            if name not in mu:
                continue
            if name not in self._shapes_seen:
                self._check_prediction(name, mu[name])
            energy = self.nodes[name].energy
            weight = energy.precision * (1.0 if multipliers is None else multipliers.get(name, 1.0))
            z = values[name]
            energies[name] = weight * energy.value(z, mu[name])
            if weight == 0.0:
                continue
            if name in free_set:
                add(name, weight * energy.grad_z(z, mu[name]))
            eps = weight * energy.grad_mu(z, mu[name])
            for edge in self.incoming[name]:
                if edge.key in vjps:
                    add(edge.source, vjps[edge.key](eps))
        for name in free:
            if name not in grads:
                grads[name] = torch.zeros_like(values[name])
        return grads, energies

    def _autograd_grads(self, values, free, clamped, multipliers, sources, differentiable, cached=None):
        with torch.enable_grad():
            local = dict(values)
            for name in free:
                z = local[name]
                if not differentiable:
                    z = z.detach().requires_grad_(True)
                elif not z.requires_grad:
                    z = z.requires_grad_(True) if z.is_leaf else z
                local[name] = z
            inputs = local if sources is None else {**local, **sources}
            # Under fixed prediction a free node's predictions (and Jacobians) are taken at its
            # source value: a separate graph node, whose gradient is the backpropagated term.
            at_sources = {}
            for name in free:
                if sources is not None and name in sources:
                    s = sources[name]
                    s = s.view_as(s) if differentiable and s.requires_grad else s.detach().requires_grad_(True)
                    at_sources[name] = inputs[name] = s
            mu = self.predictions(inputs, cached=cached)
            energies = self.energies(local, clamped, mu, multipliers)
            targets = [local[n] for n in free] + list(at_sources.values())
            if energies and targets:
                total = torch.stack(list(energies.values())).sum()
                found = torch.autograd.grad(total, targets, create_graph=differentiable, allow_unused=True)
            else:
                found = [None] * len(targets)
        backpropagated = dict(zip(at_sources, found[len(free):]))
        grads = {}
        for n, g in zip(free, found[: len(free)]):
            g = g if g is not None else torch.zeros_like(local[n])
            extra = backpropagated.get(n)
            grads[n] = g if extra is None else g + extra
        if not differentiable:
            grads = {n: g.detach() for n, g in grads.items()}
            energies = {n: e.detach() for n, e in energies.items()}
        return grads, energies
