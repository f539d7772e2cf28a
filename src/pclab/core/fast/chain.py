"""The fast path for chains of Dense layers: relaxation and PC weight gradients written out by hand.

Most PCNs people train are a chain ``n0 -> n1 -> ... -> nL`` with one fully-connected layer per
edge (an MLP). For such a network :func:`~pclab.core.relax.relax` and
:class:`~pclab.core.learning.PCLearning` use this module instead of the general graph code. It
computes the same quantities as the reference path (``PCN.latent_grads`` / autograd of
``PCN.energy``) and tests in ``tests/fast`` check that they agree. What makes it faster:

* no per-step dictionaries, graph walks or autograd: a step is a handful of tensor ops per layer;
* **unchanged predictions are not recomputed**: ``mu_l = f(W_l z_{l-1} + b_l)`` changes only when
  ``z_{l-1}`` moves, so the prediction from a clamped input is computed once per batch;
* **exactly-zero errors are skipped**: after a feed-forward initialisation every free node sits on
  its prediction, so its error is exactly zero until it or the node below it moves. With only the
  output clamped, at step ``t`` only the ``t + 1`` layers nearest the output carry error; the others
  need neither a prediction nor a backward product. This is bookkeeping of which tensors are
  *exactly* zero (it holds with precision schedules, fixed predictions, momentum), not an
  approximation;
* **a free node right above a clamped one** (the first hidden layer of a discriminative MLP), when
  relaxed by plain SGD, is carried through the next layer's pre-activation: its value enters
  only linearly, so one product with ``W W^T`` per step replaces the backward product and the
  next forward product through ``W`` (:class:`Anchored`; the same arithmetic reordered);
* the PC weight gradient of a Dense layer is the outer product
  ``dE/dW_l = -(pi_l e_l * f'(a_l))^T z_{l-1} / batch`` (a Hebbian update), computed directly from
  the predictions the relaxation already holds.

The fast path is chosen automatically (:func:`dense_chain`, :func:`supports`) only when it is
valid: every edge module is exactly a pclab :class:`~pclab.core.layers.Dense` without hooks, the
graph is one path of 1-d nodes, hidden nodes are Gaussian, no amortisers, and the latent optimiser
is pclab's ``SGD`` or ``Adam``. Everything else (arbitrary modules, trajectories, early stopping,
step hooks, truncated or checkpointed backprop through the inference) takes the reference path.
Backprop through the inference otherwise uses the hand-derived reverse pass of
:mod:`pclab.core.fast.chain_adjoint` (latent SGD), or autograd through these same ops
(``relax_chain(..., differentiable=True)``) where that does not apply.

:mod:`pclab.core.fast.compiled` runs the same functions under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..energy import CrossEntropy, Energy, Gaussian
from ..graph import PCN, edge_key
from ..layers import ACTIVATIONS, SLOPE_FROM_OUTPUT, Dense
from ..optim import SGD, Adam, LatentOptimizer, OptState

Params = list[tuple[torch.Tensor, torch.Tensor | None]]
"""``(weight, bias)`` of each layer, ``weight: (out, in)``."""


@dataclass(frozen=True)
class DenseChain:
    """A PCN whose value nodes form one path, each edge a pclab :class:`Dense`.

    Attributes:
        nodes: node names from the root to the last node, ``n0 .. nL``.
        layers: ``layers[l - 1]`` predicts ``nodes[l]`` from ``nodes[l - 1]`` (``L`` modules).
        energies: ``energies[l - 1]`` is the energy of ``nodes[l]``.
    """

    nodes: tuple[str, ...]
    layers: tuple[Dense, ...]
    energies: tuple[Energy, ...]

    @property
    def depth(self) -> int:
        """Number of layers ``L``."""
        return len(self.layers)

    def params(self) -> Params:
        """The current ``(weight, bias)`` of every layer."""
        linears = [layer._modules["linear"] for layer in self.layers]  # (nn.Module's __getattr__ is slow)
        return [(linear._parameters["weight"], linear._parameters["bias"]) for linear in linears]


def _plain_dense(module: torch.nn.Module) -> bool:
    """``module`` is exactly a pclab Dense whose forward nobody intercepts."""
    linear = module._modules.get("linear")  # (not module.linear: nn.Module's __getattr__ is slow)
    if type(module) is not Dense or type(linear) is not torch.nn.Linear:
        return False
    for m in (module, linear):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or "forward" in m.__dict__:
            return False
    return True


def dense_chain(model: PCN) -> DenseChain | None:
    """The chain structure of ``model``, or ``None`` when the fast path does not apply."""
    if model.amortisers or len(model.edges) != len(model.nodes) - 1:
        return None
    roots = [n for n in model.order if not model.incoming[n]]
    if len(roots) != 1:
        return None
    names, layers = [roots[0]], []
    while model.outgoing[names[-1]]:
        outgoing = model.outgoing[names[-1]]
        if len(outgoing) != 1:
            return None
        module = model.edge_modules[outgoing[0].key]
        if not _plain_dense(module):
            return None
        names.append(outgoing[0].target)
        layers.append(module)
    if len(names) != len(model.nodes):
        return None
    widths = [layers[0].linear.in_features] + [layer.linear.out_features for layer in layers]
    if any(model.nodes[n].shape != (w,) for n, w in zip(names, widths)):
        return None
    energies = tuple(model.nodes[n].energy for n in names[1:])
    if not all(type(e) is Gaussian for e in energies[:-1]) or type(energies[-1]) not in (Gaussian, CrossEntropy):
        return None
    return DenseChain(tuple(names), tuple(layers), energies)


def still_valid(chain: DenseChain, model: PCN) -> bool:
    """``chain`` still describes ``model``: the same plain Dense modules on its edges (a cheaper
    check than :func:`dense_chain`, for a structure found before)."""
    modules = model.edge_modules._modules
    return len(modules) == chain.depth and all(
        modules.get(edge_key(source, target)) is layer and _plain_dense(layer)
        for source, target, layer in zip(chain.nodes, chain.nodes[1:], chain.layers)
    )


def supports(optimizer: LatentOptimizer) -> bool:
    """Latent optimisers the fast path reproduces exactly (their own ``update`` is called)."""
    return type(optimizer) in (SGD, Adam)


@dataclass(frozen=True)
class Plan:
    """Everything about one relaxation of a chain that does not depend on the tensors.

    Node indices run ``0 .. L`` along ``chain.nodes``.

    Attributes:
        chain: the structure.
        clamped: ``clamped[i]``: node ``i`` keeps its given value.
        free: ``free[i]``: relaxation moves node ``i`` (not clamped, not a released read-out).
        active: ``active[i]``: node ``i`` contributes energy (index 0: never).
        steps: number of inference steps ``T``.
        optimizer: latent update rule (pclab ``SGD`` or ``Adam``).
        weights: ``weights[t][i]``: precision of node ``i`` at step ``t`` (static precision times
            the schedule's multiplier), ``T`` rows.
        fixed_prediction: predictions and their Jacobians stay at the initial values.
        feed_forward: the initial values are the feed-forward pass (so free errors start at 0).
    """

    chain: DenseChain
    clamped: tuple[bool, ...]
    free: tuple[bool, ...]
    active: tuple[bool, ...]
    steps: int
    optimizer: SGD | Adam
    weights: tuple[tuple[float, ...], ...]
    fixed_prediction: bool
    feed_forward: bool

    @property
    def readout(self) -> bool:
        """The last node is a released read-out (given ``softmax(mu_L)`` after relaxation)."""
        return not self.active[-1] and not self.clamped[-1]

    def __hash__(self) -> int:
        # a plan keys compiled graphs and is hashed on every training step: hash its fields once
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}  # a copy hashes its own fields


# ---------------------------------------------------------------------------- predictions
_NARROW = 16  # compiled: products through layers this narrow become fused reductions


def narrow(weight: torch.Tensor) -> bool:
    """Under compilation, products with ``weight`` (``(n_out, n_in)``) go as fused reductions:
    BLAS is slow for a 10-class layer's shapes, and Inductor fuses the reduction into the step's
    elementwise loop."""
    return narrow_rows(weight.shape[0])


def narrow_rows(n_out: int) -> bool:
    """:func:`narrow` for a weight of ``n_out`` rows (no tensor needed: eagerly a transposed view
    made only to ask would cost a dispatch)."""
    return torch.compiler.is_compiling() and n_out <= _NARROW


def back_through(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight``, ``(batch, n_out) @ (n_out, n_in)``; a fused reduction for a :func:`narrow` weight."""
    return (g[:, :, None] * weight[None]).sum(1) if narrow(weight) else g @ weight


def forward_through(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T``, ``(batch, n_in) @ (n_in, n_out)``; a fused reduction for a :func:`narrow` weight."""
    return (x[:, None, :] * weight[None]).sum(-1) if narrow(weight) else x @ weight.t()


class Predictions:
    """The predictions ``mu_l = f(a_l)``, ``a_l = W_l z_{l-1} + b_l``, of a chain's layers, with
    their slopes ``f'(a_l)``; an entry is recomputed only when marked stale.

    Index ``l = 1 .. L``; index 0 is unused.
    """

    def __init__(self, chain: DenseChain, params: Params, functions: list | None = None):
        self.chain, self.params = chain, params
        # ``(f, f')`` of every layer's activation (layers.ACTIVATIONS), index l - 1
        self.functions = functions if functions is not None else [ACTIVATIONS[layer.activation] for layer in chain.layers]
        n = chain.depth + 1
        self.a: list[torch.Tensor | None] = [None] * n
        self.mu: list[torch.Tensor | None] = [None] * n
        self.slopes: list[torch.Tensor | None] = [None] * n
        self.stale = [True] * n

    def compute(self, l: int, source: torch.Tensor) -> torch.Tensor:
        """``mu_l`` from ``source``, the value of node ``l - 1`` (always recomputed)."""
        weight, bias = self.params[l - 1]
        if narrow(weight):  # a fused reduction
            a = forward_through(source, weight)
            a = a if bias is None else a + bias
        else:
            a = F.linear(source, weight, bias)
        self.a[l], self.mu[l] = a, self.functions[l - 1][0](a)
        self.slopes[l] = None
        self.stale[l] = False
        return self.mu[l]

    def set(self, l: int, a: torch.Tensor) -> None:
        """Take ``a_l`` as given (tracked elsewhere) and ``mu_l = f(a_l)``."""
        self.a[l], self.mu[l] = a, self.functions[l - 1][0](a)
        self.slopes[l] = None
        self.stale[l] = False

    def get(self, l: int, z: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mu_l`` at the values ``z`` (recomputed only when stale)."""
        return self.compute(l, z[l - 1]) if self.stale[l] else self.mu[l]

    def backward(self, l: int, g: torch.Tensor) -> torch.Tensor:
        """``g * f'(a_l)``: a gradient with respect to ``mu_l`` taken back through the activation."""
        layer = self.chain.layers[l - 1]
        if layer.activation == "identity":
            return g
        if layer.activation == "tanh":  # one fused op: g * (1 - mu^2)
            return torch.ops.aten.tanh_backward(g, self.mu[l])
        if self.slopes[l] is None:
            from_output = SLOPE_FROM_OUTPUT.get(layer.activation)  # (tanh: the fused op above)
            self.slopes[l] = from_output(self.mu[l]) if from_output is not None else self.functions[l - 1][1](self.a[l])
        return g * self.slopes[l]

    def copy(self) -> Predictions:
        other = Predictions(self.chain, self.params, self.functions)
        other.a, other.mu, other.slopes, other.stale = list(self.a), list(self.mu), list(self.slopes), list(self.stale)
        return other


# ---------------------------------------------------------------------------- relaxation
def weighted_error(energy: Energy, z: torch.Tensor, mu: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * dE/dz`` of a node, as ``-weight * dE/dmu`` (equal for Gaussian and clamped
    cross-entropy nodes, whose ``z`` gradient is not used)."""
    g = energy.grad_z(z, mu) if type(energy) is Gaussian else -energy.grad_mu(z, mu)
    return g if weight == 1.0 else weight * g


@dataclass
class ChainState:
    """A relaxed chain, as the learning rule needs it.

    Attributes:
        values: node values ``z[0] .. z[L]`` after relaxation (a released read-out included).
        initial: the values before the first step.
        predictions: predictions at ``values`` (stale entries are recomputed on demand).
        initial_predictions: predictions at ``initial``.
        anchored: the nodes relaxed through the next layer's pre-activation (:class:`Anchored`).
    """

    values: list[torch.Tensor]
    initial: list[torch.Tensor]
    predictions: Predictions
    initial_predictions: Predictions
    anchored: dict[int, Anchored] = field(default_factory=dict)


@dataclass
class LayerRecord:
    """What the reverse pass (:mod:`pclab.core.fast.chain_adjoint`) reads of layer ``l`` at one
    relaxation step (all ``(batch, width)``).

    ``a, mu``: pre-activation and prediction at the step's values; ``e``: the precision-weighted
    error ``w_l dE_l/dz_l``; ``delta``: ``e * f'(a)`` when the node below is free (else ``None``);
    ``source``: the value of node ``l - 1``; ``w``: the precision ``w_l``.
    """

    l: int
    a: torch.Tensor
    mu: torch.Tensor
    e: torch.Tensor
    delta: torch.Tensor | None
    source: torch.Tensor
    w: float


@dataclass
class StepRecord:
    """One relaxation step: the layers that carried error and the nodes updated.

    ``updates``: ``(node, has_gradient, first)``; ``has_gradient`` False: a momentum step at an
    exactly-zero gradient; ``first``: the node's velocity was unset before. Anchored nodes are
    not in ``updates``.
    """

    layers: list[LayerRecord]
    updates: list[tuple[int, bool, bool]]
    carried: dict[int, float]
    """Anchored node ``i`` -> ``c = 1 - lr w_i`` of this step."""


def feed_forward(plan: Plan, params: Params, clamp: Sequence[torch.Tensor | None]) -> tuple[list[torch.Tensor], Predictions]:
    """``PCN.initial_state(clamp, "forward")`` for a chain (the same ops), keeping the predictions.

    ``clamp[i]`` is node ``i``'s clamped value or ``None``.
    """
    chain = plan.chain
    predictions = Predictions(chain, params)
    like = next(v for v in clamp if v is not None)
    z: list[torch.Tensor] = []
    for l in range(chain.depth + 1):
        if clamp[l] is not None:
            z.append(clamp[l])
        elif l == 0:  # a free root starts at zero
            z.append(like.new_zeros((like.shape[0], params[0][0].shape[1])))
        else:
            z.append(chain.energies[l - 1].released(predictions.compute(l, z[l - 1])))
    return z, predictions


class Anchored:
    """A free node ``i`` whose own prediction is constant (the node below is clamped), relaxed by
    plain SGD (step ``lr``), carried through the next layer's pre-activation instead of its value.

    ``z_i`` enters relaxation only through its error ``E = z_i - mu_i`` and through
    ``a_{i+1} = W z_i + b = a_ff + W E`` (``W = W_{i+1}``, ``a_ff`` the feed-forward value), both
    linear in ``z_i``. With ``g = e_{i+1} * f'(a_{i+1})`` (the error above, taken back through the
    activation) and ``c = 1 - lr pi_i(t)``, one SGD step is ``E <- c E + lr g W``, hence

        a_{i+1} <- a_ff + c (a_{i+1} - a_ff) + lr g (W W^T)
        D <- c D + g,   E = lr D W  (needed only at the end: z_i = mu_i + E).

    That is one product with the ``(n_{i+1}, n_{i+1})`` matrix ``W W^T`` per step instead of two
    with ``W`` (the backward product, then the next forward one): the same arithmetic reordered,
    equal to the direct updates up to float rounding (``tests/fast``).
    """

    def __init__(self, i: int, weight: torch.Tensor, a_ff: torch.Tensor, lr: float):
        self.i, self.weight, self.a_ff, self.lr = i, weight, a_ff, lr
        self.a = a_ff
        self.gram: torch.Tensor | None = None
        self.d: torch.Tensor | None = None  # D; None while E is exactly zero

    @staticmethod
    def pays(batch: int, n_in: int, n_out: int, steps: int) -> bool:
        """Whether the saved products (``steps`` x batch x n_out x (2 n_in - n_out)) outweigh the
        extra ones (``W W^T``, the final ``D W`` and the exact re-prediction at the end)."""
        saved = steps * batch * n_out * (2 * n_in - n_out)
        return saved > n_in * n_out * n_out + 2 * batch * n_in * n_out

    def step(self, g: torch.Tensor | None, c: float) -> torch.Tensor | None:
        """One SGD step given ``g`` (``None``: exactly zero); the new ``a_{i+1}`` or ``None`` if unchanged."""
        if g is None:
            if self.d is None or c == 1.0:
                return None
            self.d = self.d * c
            self.a = torch.lerp(self.a_ff, self.a, c)
            return self.a
        if self.gram is None:
            self.gram = self.weight @ self.weight.t()
        if self.d is None:
            self.d, base = g, self.a_ff
        else:
            self.d = torch.add(g, self.d, alpha=c)
            base = torch.lerp(self.a_ff, self.a, c)
        self.a = torch.addmm(base, g, self.gram, alpha=self.lr)
        return self.a

    def value(self, mu: torch.Tensor) -> torch.Tensor:
        """``z_i = mu_i + lr D W``."""
        return mu.clone() if self.d is None else torch.addmm(mu, self.d, self.weight, alpha=self.lr)


def anchor(plan: Plan, params: Params, predictions: Predictions, z: list[torch.Tensor]) -> dict[int, Anchored]:
    """The free nodes relaxation carries through the next layer (see :class:`Anchored`)."""
    optimizer, L = plan.optimizer, plan.chain.depth
    if type(optimizer) is not SGD or optimizer.momentum != 0.0 or not plan.feed_forward or plan.fixed_prediction:
        return {}
    out = {}
    for i in range(1, L):
        if not (plan.free[i] and plan.clamped[i - 1] and plan.active[i + 1] and plan.active[i]):
            continue
        weight = params[i][0]
        n_out, n_in = weight.shape
        if not Anchored.pays(z[i].shape[0], n_in, n_out, plan.steps - (L - i - 1)):
            continue
        a = predictions.a[i + 1] if not predictions.stale[i + 1] else None
        if a is None:
            predictions.compute(i + 1, z[i])
            a = predictions.a[i + 1]
        out[i] = Anchored(i, weight, a, optimizer.lr)
    return out


def relax_chain(
    plan: Plan, params: Params, initial: list[torch.Tensor], predictions: Predictions | None = None, differentiable: bool = False,
    tape: list[StepRecord] | None = None,
) -> ChainState:
    """Relax the free nodes of a chain for ``plan.steps`` steps.

    Args:
        plan: what to do.
        params: the layers' ``(weight, bias)``.
        initial: first values ``z[0] .. z[L]`` (not modified).
        predictions: predictions already computed at ``initial`` (by :func:`feed_forward`).
        differentiable: update out of place, so that autograd can backpropagate a loss on the
            result through every step (bp-through-inference); otherwise the caller runs this under
            ``no_grad`` and the latents are updated in place. Skipping exactly-zero errors stays
            exact for the gradients: such an error is zero *as a function of the parameters* (a
            node still at its feed-forward value minus the same prediction), so its derivative is 0.
        tape: a list to append one :class:`StepRecord` per step to, what the hand-derived reverse
            pass of :mod:`pclab.core.fast.chain_adjoint` reads (latent SGD, no fixed predictions;
            a released read-out is then left to the caller).

    Per step: the precision-weighted error ``e_l = pi_l dE_l/dz_l`` of every layer carrying
    error, then for every free node ``dE/dz_i = e_i - J_{i+1}^T e_{i+1}`` with
    ``J^T g = (g * f'(a)) W``, then the optimiser's update. ``zero[l]`` tracks errors known to be
    exactly zero; predictions are recomputed only when their input moved.
    """
    chain, L, optimizer = plan.chain, plan.chain.depth, plan.optimizer
    z = [v.clone() if plan.free[i] else v for i, v in enumerate(initial)]
    if predictions is None:
        predictions = Predictions(chain, params)
    current = predictions.copy()
    sources = initial if plan.fixed_prediction else z  # what the predictions are computed from
    states: list[OptState | None] = [optimizer.init(v) if plan.free[i] else None for i, v in enumerate(z)]
    # errors exactly zero now: free nodes of a feed-forward start
    zero = [plan.feed_forward and plan.free[l] for l in range(L + 1)]
    touched = [False] * (L + 1)  # has had a gradient not known to be zero
    idle_updates = type(optimizer) is not SGD  # Adam counts its steps even at zero gradient
    still = type(optimizer) is SGD and optimizer.momentum == 0.0  # a zero gradient leaves the node where it is
    zeros: list[torch.Tensor | None] = [None] * (L + 1)
    anchored = anchor(plan, params, current, z)
    layers_with_error = [l for l in range(1, L + 1) if plan.active[l] and l not in anchored]
    free_nodes = [i for i in range(L + 1) if plan.free[i]]

    for t in range(plan.steps):
        w = plan.weights[t]
        # e[l] = pi_l dE_l/dz_l, the precision-weighted error (Gaussian: pi (z - mu)); None when
        # exactly zero. dE_l/dmu_l = -e[l].
        e: list[torch.Tensor | None] = [None] * (L + 2)
        records: dict[int, LayerRecord] = {}
        for l in layers_with_error:
            if not zero[l] and w[l] != 0.0:
                mu = current.get(l, sources)
                e[l] = weighted_error(chain.energies[l - 1], z[l], mu, w[l])
                if tape is not None:
                    records[l] = LayerRecord(l, current.a[l], mu, e[l], None, z[l - 1], w[l])
        moved, tracked = [], []
        updates: list[tuple[int, bool, bool]] = []
        carried: dict[int, float] = {}
        for i in free_nodes:
            # dE/dz_i = e_i - J_{i+1}^T e_{i+1},  J^T g = (g * f'(a)) @ W
            own, above = e[i], e[i + 1]
            back = None if above is None else current.backward(i + 1, above)
            if tape is not None and back is not None:
                records[i + 1].delta = back
            if i in anchored:
                carried[i] = 1.0 - optimizer.lr * w[i]
                a = anchored[i].step(back, carried[i])
                if a is not None:
                    tracked.append((i + 1, a))
                    zero[i] = zero[i + 1] = False
                continue
            if back is not None:
                if own is None:
                    if zeros[i] is None:
                        zeros[i] = torch.zeros_like(z[i])
                    own = zeros[i]
                weight = params[i][0]
                if narrow(weight):
                    grad = own - back_through(back, weight)
                else:
                    grad = torch.addmm(own, back, weight, alpha=-1)
            elif own is not None:
                grad = own
            else:  # exactly zero: only a moving optimiser state (momentum, Adam's moments) still moves a node
                moves = touched[i] and not still
                if not moves and not idle_updates:
                    continue
                if zeros[i] is None:
                    zeros[i] = torch.zeros_like(z[i])
                if tape is not None:
                    updates.append((i, False, states[i]["velocity"] is None))
                z[i], states[i] = optimizer.update(z[i], zeros[i], states[i], differentiable)
                if moves:
                    moved.append(i)
                continue
            if tape is not None:
                updates.append((i, True, states[i]["velocity"] is None))
            z[i], states[i] = optimizer.update(z[i], grad, states[i], differentiable)
            touched[i] = True
            moved.append(i)
        for i in moved:
            zero[i] = False
            if i < L:
                zero[i + 1] = False
                if not plan.fixed_prediction:
                    current.stale[i + 1] = True
        for l, a in tracked:  # after every backward product of this step used the old slopes
            current.set(l, a)
        if tape is not None:
            tape.append(StepRecord(list(records.values()), updates, carried))
    for i, node in anchored.items():
        z[i] = node.value(current.mu[i])
        current.stale[i + 1] = True  # predict exactly from the relaxed value (weight update, read-out)
    if plan.fixed_prediction:
        # ``current`` holds the predictions at the initial values; hand on predictions *at the
        # relaxed values* (the PC weight energy uses those).
        current = Predictions(chain, params)
    state = ChainState(z, list(initial), current, predictions, anchored)
    if plan.readout and tape is None:
        state.values[L] = chain.energies[L - 1].released(
            (predictions if plan.fixed_prediction else current).get(L, sources)
        )
    return state


# ---------------------------------------------------------------------------- learning
def weight_gradients(
    plan: Plan, state: ChainState, forward_update: bool
) -> tuple[torch.Tensor, list[tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """``dE/dtheta`` of the batch-mean energy at the relaxed state (static precisions) and ``E``:
    what ``PCN.energy(...).backward()`` gives.

    For layer ``l`` with ``delta_l = pi_l dE/dmu_l * f'(a_l) / batch``, shape ``(batch, out)``:
    ``dE/dW_l = delta_l^T z_{l-1}`` and ``dE/db_l = sum over the batch of delta_l``. With
    ``forward_update`` the presynaptic values (and so the predictions) are the initial ones. A
    layer whose node has no energy (a released read-out) gets ``None``, as with autograd.

    Returns:
        ``(E, [(dE/dW_l, dE/db_l) for l = 1 .. L])``.
    """
    chain, z = plan.chain, state.values
    batch = z[0].shape[0]
    if forward_update:
        sources = [z[i] if plan.clamped[i] else state.initial[i] for i in range(chain.depth + 1)]
        predictions = state.initial_predictions
    else:
        sources, predictions = z, state.predictions
    total = None
    grads: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    for l in range(1, chain.depth + 1):
        if not plan.active[l]:
            grads.append((None, None))
            continue
        energy = chain.energies[l - 1]
        mu = predictions.get(l, sources)
        if type(energy) is Gaussian:
            error = energy.grad_z(z[l], mu)  # z - mu
            flat = error.reshape(-1)
            value = (0.5 * energy.precision) * torch.dot(flat, flat)
            delta = predictions.backward(l, error) * (-energy.precision / batch)
        else:
            value = energy.precision * energy.value(z[l], mu).sum()
            delta = predictions.backward(l, energy.grad_mu(z[l], mu) * (energy.precision / batch))
        total = value if total is None else total + value
        has_bias = chain.layers[l - 1].linear.bias is not None
        grads.append((delta.t() @ sources[l - 1], delta.sum(0) if has_bias else None))
    if total is None:
        return z[0].new_zeros(()), grads
    return total / batch, grads


def incremental(
    plan: Plan, params: Params, clamp: Sequence[torch.Tensor | None],
    learn: Callable[[list[tuple[torch.Tensor | None, torch.Tensor | None]]], None],
) -> torch.Tensor:
    """Incremental PC on a chain from its feed-forward pass: at every step the latent gradients at
    the current values and weights, then ``learn(dE/dtheta)`` (which takes a weight step, changing
    ``params`` in place), then the latent step with the gradients from before it -- what
    ``relax(..., on_step=...)`` does for :class:`~pclab.core.learning.IncrementalPC`, without
    autograd. Run under ``no_grad``; returns the batch-mean energy of the last step (static
    precisions, before its weight step).

    Nothing is cached across steps (every weight step moves every prediction), and a free node with
    no error anywhere near it still gets its (zero-gradient) update, as in the general loop.
    """
    if plan.readout or plan.fixed_prediction or not plan.feed_forward:
        raise ValueError("the incremental chain path relaxes from the feed-forward pass, with no released read-out "
                         "and no fixed prediction")
    chain, L, optimizer = plan.chain, plan.chain.depth, plan.optimizer
    start, predictions = feed_forward(plan, params, clamp)
    z = [v.clone() if plan.free[i] else v for i, v in enumerate(start)]
    states = [optimizer.init(v) if plan.free[i] else None for i, v in enumerate(z)]
    state = ChainState(z, start, predictions, predictions)
    energy = z[0].new_zeros(())
    for t in range(plan.steps):
        w = plan.weights[t]
        e: list[torch.Tensor | None] = [None] * (L + 2)
        for l in range(1, L + 1):
            if plan.active[l] and w[l] != 0.0:
                e[l] = weighted_error(chain.energies[l - 1], z[l], predictions.get(l, z), w[l])
        grads: dict[int, torch.Tensor] = {}
        for i in range(L + 1):
            if not plan.free[i]:
                continue
            grad = e[i] if e[i] is not None else torch.zeros_like(z[i])
            if e[i + 1] is not None:  # dE/dz_i = e_i - J_{i+1}^T e_{i+1}
                grad = torch.addmm(grad, predictions.backward(i + 1, e[i + 1]), params[i][0], alpha=-1)
            grads[i] = grad
        energy, weight_grads = weight_gradients(plan, state, forward_update=False)
        learn(weight_grads)
        for i, grad in grads.items():
            z[i], states[i] = optimizer.update(z[i], grad, states[i], False)
        predictions.stale = [True] * (L + 1)  # new weights and new values
    return energy


def set_grads(chain: DenseChain, grads: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
    """Store gradients in ``.grad`` of the parameters that require one (as ``backward`` would)."""
    for (weight, bias), (dw, db) in zip(chain.params(), grads):
        for param, g in ((weight, dw), (bias, db)):
            if param is not None and g is not None and param.requires_grad:
                param.grad = g
