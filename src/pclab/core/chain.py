"""The fast path for chains of Dense layers: relaxation and PC weight gradients written out by hand.

Most PCNs people train are a chain ``n0 -> n1 -> ... -> nL`` with one fully-connected layer per
edge (an MLP). For such a network :func:`~pclab.core.relax.relax` and
:class:`~pclab.core.learning.PCLearning` use this module instead of the general graph code. It
computes the same quantities as the reference path (``PCN.latent_grads`` / autograd of
``PCN.energy``), in the same order of operations where that matters, and tests in ``tests/perf``
check equality. What makes it faster:

* no per-step dictionaries, graph walks or autograd: each step is a handful of tensor ops per layer;
* **unchanged predictions are not recomputed**: ``mu_l = f(W_l z_{l-1} + b_l)`` changes only when
  ``z_{l-1}`` moves, so the prediction from a clamped input is computed once per batch;
* **exactly-zero errors are skipped**: after a feed-forward initialisation every free node sits
  on its prediction, so its error is exactly zero until it or the node below it moves. With
  only the output clamped, at step ``t`` only the ``t + 1`` layers nearest the output carry error;
  the others need neither a prediction nor a backward product. This is bookkeeping of which
  tensors are *exactly* zero (it holds with any precision schedule, fixed predictions, momentum),
  not an approximation;
* the PC weight gradient of a Dense layer is the outer product
  ``dE/dW_l = -(pi_l e_l * f'(a_l))^T z_{l-1} / batch`` (a Hebbian update), computed directly at the
  predictions the relaxation already holds.

The fast path is chosen automatically (:func:`dense_chain`) only when it is valid: every edge
module is exactly a pclab :class:`~pclab.core.layers.Dense` without hooks, the graph is one path,
hidden nodes are Gaussian, no amortisers, and the latent optimiser is pclab's ``SGD`` or ``Adam``.
Everything else (arbitrary modules, recording, early stopping, step hooks, backprop through the
inference) takes the reference path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .energy import CrossEntropy, Energy, Gaussian
from .graph import PCN, State
from .layers import Dense
from .optim import SGD, Adam, LatentOptimizer, OptState


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


def _plain_dense(module: torch.nn.Module) -> bool:
    """``module`` is exactly a pclab Dense whose forward nobody intercepts."""
    if type(module) is not Dense:
        return False
    for m in (module, module.linear):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
        if type(m.forward) is not type(module.forward) or "forward" in m.__dict__:
            return False
    return type(module.linear) is torch.nn.Linear


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
    if not all(isinstance(e, Gaussian) for e in energies[:-1]):
        return None
    if not isinstance(energies[-1], (Gaussian, CrossEntropy)):
        return None
    return DenseChain(tuple(names), tuple(layers), energies)


def supports_optimizer(optimizer: LatentOptimizer) -> bool:
    """Latent optimisers the fast path reproduces exactly (their ``update`` is called as is)."""
    return type(optimizer) in (SGD, Adam)


# ---------------------------------------------------------------------------- predictions
_SLOPE_FROM_OUTPUT = {
    # f'(a) from mu = f(a), where that is how ``layers.ACTIVATIONS`` computes it bit for bit
    "tanh": lambda a, mu: 1.0 - mu * mu,
    "sigmoid": lambda a, mu: mu * (1.0 - mu),
}


class Predictions:
    """The predictions ``mu_l`` (with pre-activations ``a_l`` and slopes ``f'(a_l)``) of a chain,
    recomputed only when their input has moved.

    Index ``l = 1 .. L`` is the layer predicting node ``l``; entries are ``None`` until computed.
    """

    def __init__(self, chain: DenseChain):
        self.chain = chain
        n = chain.depth + 1
        self.a: list[torch.Tensor | None] = [None] * n
        self.mu: list[torch.Tensor | None] = [None] * n
        self._slope: list[torch.Tensor | None] = [None] * n
        self.stale = [True] * n

    def compute(self, l: int, source: torch.Tensor) -> torch.Tensor:
        """``mu_l`` from the value ``source`` of node ``l - 1`` (always recomputed)."""
        layer = self.chain.layers[l - 1]
        a = layer.linear(source)
        self.a[l], self.mu[l] = a, layer._f(a)
        self._slope[l] = None
        self.stale[l] = False
        return self.mu[l]

    def get(self, l: int, z: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mu_l`` at the current values ``z`` (recomputed only when stale)."""
        return self.compute(l, z[l - 1]) if self.stale[l] else self.mu[l]

    def slope(self, l: int) -> torch.Tensor | None:
        """``f'(a_l)`` (``None`` for the identity), computed once per prediction."""
        layer = self.chain.layers[l - 1]
        if layer.activation == "identity":
            return None
        if self._slope[l] is None:
            from_output = _SLOPE_FROM_OUTPUT.get(layer.activation)
            a, mu = self.a[l], self.mu[l]
            self._slope[l] = from_output(a, mu) if from_output is not None else layer._df(a)
        return self._slope[l]

    def backward(self, l: int, eps: torch.Tensor) -> torch.Tensor:
        """``(eps * f'(a_l))`` : ``dE/da_l`` given ``eps = dE/dmu_l``."""
        slope = self.slope(l)
        return eps if slope is None else eps * slope

    def copy(self) -> Predictions:
        other = Predictions(self.chain)
        other.a, other.mu, other._slope, other.stale = list(self.a), list(self.mu), list(self._slope), list(self.stale)
        return other


# ---------------------------------------------------------------------------- relaxation
@dataclass
class ChainState:
    """What the fast relaxation hands to the learning rule.

    Attributes:
        values: node values in chain order, ``z[0] .. z[L]`` (released read-outs included).
        initial: the values before the first step, chain order.
        predictions: predictions at ``values`` (stale entries are recomputed on demand).
        initial_predictions: predictions at ``initial`` (the feed-forward pass), or ``None``.
    """

    values: list[torch.Tensor]
    initial: list[torch.Tensor]
    predictions: Predictions
    initial_predictions: Predictions | None


def feed_forward(chain: DenseChain, clamp: dict[str, torch.Tensor], batch: int, like: torch.Tensor) -> tuple[list[torch.Tensor], Predictions]:
    """``PCN.initial_state(clamp, "forward")`` for a chain (same ops), keeping the predictions."""
    predictions = Predictions(chain)
    z: list[torch.Tensor] = []
    for l, name in enumerate(chain.nodes):
        if name in clamp:
            z.append(clamp[name])
        elif l == 0:  # a free root starts at zero
            z.append(like.new_zeros((batch, chain.layers[0].linear.in_features)))
        else:
            z.append(chain.energies[l - 1].released(predictions.compute(l, z[l - 1])))
    return z, predictions


def relax_chain(
    chain: DenseChain,
    initial: list[torch.Tensor],
    free: Sequence[bool],
    active: Sequence[bool],
    steps: int,
    optimizer: LatentOptimizer,
    weights: Callable[[int], Sequence[float]],
    fixed_prediction: bool,
    predictions: Predictions | None,
    zero_error: Sequence[bool],
) -> ChainState:
    """Relax the free nodes of a chain for ``steps`` steps (no autograd; in place on copies).

    Args:
        chain: the structure.
        initial: first values ``z[0] .. z[L]`` (not modified).
        free: ``free[i]``: node ``i`` is moved by relaxation.
        active: ``active[l]`` (``l >= 1``): node ``l`` contributes energy.
        steps: number of steps ``T``.
        optimizer: latent update rule (pclab SGD or Adam).
        weights: ``weights(t)[l]``: precision of node ``l`` at step ``t`` (static precision times
            the schedule; index 0 unused).
        fixed_prediction: predictions and Jacobians stay at the initial values.
        predictions: predictions already computed at ``initial`` (the feed-forward pass), or ``None``.
        zero_error: ``zero_error[l]``: the error of node ``l`` is exactly zero at ``initial``.
    """
    L = chain.depth
    z = [v.clone() if free[i] else v for i, v in enumerate(initial)]
    initial_predictions = predictions
    current = predictions.copy() if predictions is not None else Predictions(chain)
    states: list[OptState | None] = [optimizer.init(v) if free[i] else None for i, v in enumerate(z)]
    zero = list(zero_error)
    touched = [False] * (L + 1)  # node has received a gradient that is not known to be zero
    needs_idle_updates = not isinstance(optimizer, SGD)  # Adam counts steps even at zero gradient
    zeros: list[torch.Tensor | None] = [None] * (L + 1)
    sources = initial if fixed_prediction else z  # inputs of the predictions

    for t in range(steps):
        w = weights(t)
        # eps[l] = dE/dmu_l (precision-weighted); None when exactly zero
        eps: list[torch.Tensor | None] = [None] * (L + 2)
        for l in range(1, L + 1):
            if not active[l] or zero[l] or w[l] == 0.0:
                continue
            mu = current.get(l, sources)
            eps[l] = w[l] * chain.energies[l - 1].grad_mu(z[l], mu)
        # dE/dz_i = pi_i e_i - J_{i+1}^T eps_{i+1}  for every free node
        moved = [False] * (L + 1)
        for i in range(L + 1):
            if not free[i]:
                continue
            grad = None
            if i >= 1 and eps[i] is not None:
                grad = -eps[i]  # Gaussian: w * grad_z = -(w * grad_mu)
            if i < L and eps[i + 1] is not None:
                back = current.backward(i + 1, eps[i + 1]) @ chain.layers[i].linear.weight
                grad = back if grad is None else grad + back
            if grad is None:
                if not touched[i]:
                    if not needs_idle_updates:
                        continue
                    if zeros[i] is None:
                        zeros[i] = torch.zeros_like(z[i])
                    z[i], states[i] = optimizer.update(z[i], zeros[i], states[i], False)
                    continue
                if zeros[i] is None:
                    zeros[i] = torch.zeros_like(z[i])
                grad = zeros[i]
            z[i], states[i] = optimizer.update(z[i], grad, states[i], False)
            touched[i] = moved[i] = True
        for i in range(L + 1):
            if not moved[i]:
                continue
            if i >= 1:
                zero[i] = False
            if i < L:
                zero[i + 1] = False
                if not fixed_prediction:
                    current.stale[i + 1] = True
    if fixed_prediction:
        # ``current`` still holds the predictions at the initial values; the state hands on
        # predictions *at the relaxed values* (PCLearning's weight energy uses them).
        current.stale = [True] * (L + 1)
    return ChainState(z, list(initial), current, initial_predictions)


def release_readout(chain: DenseChain, state: ChainState, fixed_prediction: bool) -> None:
    """Give a released cross-entropy output its read-out value ``softmax(mu_L)`` (in ``state``)."""
    L = chain.depth
    sources = state.initial if fixed_prediction else state.values
    state.values[L] = chain.energies[L - 1].released(state.predictions.get(L, sources))


# ---------------------------------------------------------------------------- learning
def weight_grads(chain: DenseChain, state: ChainState, active: Sequence[bool], clamped: Sequence[bool], forward_update: bool) -> torch.Tensor:
    """Set ``.grad`` of every layer's parameters to ``dE/dtheta`` of the batch-mean energy at the
    relaxed state (static precisions), as ``PCN.energy(...).backward()`` would; return ``E``.

    For layer ``l`` with ``delta_l = pi_l dE/dmu_l * f'(a_l) / batch``, shape ``(batch, out)``:
    ``dE/dW_l = delta_l^T z_{l-1}`` and ``dE/db_l = sum_batch delta_l``. With ``forward_update``
    the presynaptic values (and so the predictions) are those of the initial state. Layers whose
    node has no energy (a released read-out) get no gradient, as with autograd.
    """
    z = state.values
    batch = z[0].shape[0]
    if forward_update:
        sources = [z[i] if clamped[i] else state.initial[i] for i in range(chain.depth + 1)]
        predictions = state.initial_predictions or Predictions(chain)
    else:
        sources, predictions = z, state.predictions
    total = z[0].new_zeros(())
    for l in range(1, chain.depth + 1):
        if not active[l]:
            continue
        energy, layer = chain.energies[l - 1], chain.layers[l - 1]
        mu = predictions.get(l, sources)
        total = total + energy.precision * energy.value(z[l], mu).sum()
        delta = predictions.backward(l, (energy.precision / batch) * energy.grad_mu(z[l], mu))
        weight, bias = layer.linear.weight, layer.linear.bias
        if weight.requires_grad:
            weight.grad = delta.t() @ sources[l - 1]
        if bias is not None and bias.requires_grad:
            bias.grad = delta.sum(0)
    return total / batch
