"""Backprop through the Dense-chain relaxation by a hand-derived reverse pass (bp-through-inference).

:class:`~pclab.core.learning.BPThroughInference` differentiates a task loss on the state after ``T``
relaxation steps. Autograd through the fast relaxation of :mod:`pclab.core.fast.chain` records every
op of every step and replays its backward, roughly two forward relaxations plus autograd's
bookkeeping. This module computes the same gradients by hand: the forward is that same relaxation
(:func:`pclab.core.fast.chain.relax_chain`) keeping a tape of only the tensors the reverse pass
reads (per step and layer: the pre-activation, prediction, error and the presynaptic value, all of
which the forward computes anyway), and :func:`reverse` walks the steps back
(:mod:`pclab.core.fast.differentiable` makes the two an ``autograd.Function``).

The algebra. One step of plain SGD is ``z' = z - lr g(z; theta)`` with ``g = dE/dz`` of the
step's energy ``E = sum_l w_l E_l(z_l, mu_l)``, ``mu_l = f(a_l)``, ``a_l = W_l z_{l-1} + b_l``
(``w_l``: the precision at that step, schedule included). Given the adjoint ``lam' = dL/dz'``,

    lam = lam' + c H u,       dL/dtheta += c d(u . g)/dtheta,       u = lam', c = -lr

with ``H = dg/dz``, the Hessian of ``E`` (block tridiagonal over the layers). Both come from the
scalar ``S = u . g``, the derivative of ``E`` in the direction ``u``; per layer ``l`` with
tangents ``da_l = W_l u_{l-1}`` and ``nu_l = f'(a_l) da_l``:

* Gaussian: ``S_l = w_l (z_l - mu_l) . (u_l - nu_l)``; with ``r = u_l - nu_l`` and ``e_l = w_l (z_l - mu_l)``
  ``dS/dz_l = w_l r`` and ``dS/da_l = -q_l``, ``q_l = w_l f'(a_l) r + e_l f''(a_l) da_l``;
* clamped cross-entropy (``p = softmax(mu_L)``, ``s = sum z_L``): ``dS/dmu_L = w_L s (p nu - p (p . nu))``,
  so ``q_L = -f'(a_L) dS/dmu_L + e_L f''(a_L) da_L`` (``e_L = w_L (z_L - s p)``);
* then ``dS/dz_{l-1} = -q_l W_l``, ``dS/dW_l = -q_l^T z_{l-1} - delta_l^T u_{l-1}`` and
  ``dS/db_l = -sum q_l``, where ``delta_l = e_l f'(a_l)`` is the forward's backward product.

Momentum (heavy ball or Nesterov) adds a velocity adjoint; the same ``S`` is taken with ``u`` the
adjoint of the step's gradient (``c = 1``). The feed-forward start ``z_l = f(W_l z_{l-1} + b_l)``
is backpropagated by hand at the end.

What keeps it cheap:

* a free node right above a clamped one is relaxed as the PC fast path does it
  (:class:`pclab.core.fast.chain.Anchored`: one product with ``G = W W^T`` per step) and differentiated
  in those variables (see :func:`reverse`): per step one product with ``G`` and one for
  ``dL/dG``, where a plain free input needs four (``W u``, ``q W`` and two for ``dL/dW``);
* a layer whose input is clamped has a constant pre-activation: its per-step factors are summed
  first (``f'(a)`` applied once) and multiplied by the input once, the feed-forward term included;
* bias gradients are summed once at the end; tanh and sigmoid take their curvature term inside
  one slope product;
* the relaxation's exactly-zero errors are skipped as in the forward (the reverse differentiates
  the computation that ran, which equals the full one as a function of the parameters, see
  :func:`pclab.core.fast.chain.relax_chain`), and so are exactly-zero adjoints (a node the loss does
  not read, until the error reaches it).

Eagerly, the weight-gradient products of a layer with a free input are added step by step, not
stacked into one ``(T B x out)^T (T B x in)`` product: on a CPU stacking was slower, the copy into
the stacked rows and reading them back cold costing more than the small products' latency. Under ``torch.compile`` the terms of
layers up to 128 x 128 are stacked (so is an anchored node's ``dL/dG``; :func:`stacked`).

Applies (:func:`applies`; otherwise the caller differentiates with autograd) to latent ``SGD``
(momentum and Nesterov included), any precisions and precision schedules, feed-forward or given
initial values, no fixed predictions, activations with a hand-written second derivative
(:data:`pclab.core.layers.CURVATURE`), clamped values that do not require a gradient, and a relaxation with
something to move (a feed-forward start with no clamped target is plain backprop, left to autograd).
The relaxation autograd differentiates by this reverse pass is :func:`pclab.core.fast.differentiable.relax`;
with ``Inference(compile=True)`` both passes run under ``torch.compile`` (:mod:`pclab.core.fast.compiled_adjoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..energy import Gaussian
from ..layers import CURVATURE, slope_times
from ..optim import SGD
from .chain import (
    Anchored,
    Params,
    Plan,
    Predictions,
    StepRecord,
    back_through,
    feed_forward,
    forward_through,
    narrow,
    narrow_rows,
    relax_chain,
)


# ---------------------------------------------------------------------------- when it applies
def applies(plan: Plan, given: Sequence[torch.Tensor | None], start: Sequence[torch.Tensor] | None = None) -> bool:
    """Whether the reverse pass can differentiate the relaxation of ``plan`` by hand.

    ``given[i]``: node ``i``'s clamped value or ``None``; ``start``: the initial values when the
    relaxation does not start from the feed-forward pass.
    """
    optimizer = plan.optimizer
    if type(optimizer) is not SGD or plan.fixed_prediction or plan.steps == 0:
        return False
    if any(layer.activation not in CURVATURE for layer in plan.chain.layers):
        return False
    if any(v is not None and v.requires_grad for v in given):
        return False  # gradients for clamped values: left to autograd
    if not any(plan.free):
        return False
    if start is not None:
        return True
    if plan.feed_forward:
        # every free node starts on its prediction: only a clamped node above a prediction
        # carries error, and without one nothing ever moves (autograd then is plain backprop)
        return any(plan.clamped[l] and plan.active[l] and any(w[l] != 0.0 for w in plan.weights) for l in range(1, len(plan.free)))
    return True


# ---------------------------------------------------------------------------- reverse
def _add(x: torch.Tensor | None, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``x + alpha y`` with ``None`` as an exact zero."""
    if x is None:
        return y if alpha == 1.0 else y * alpha
    if alpha != 1.0 and torch.compiler.is_compiling():
        # Inductor (torch 2.13) rewrites add(mm(a, b), y, alpha=k) into addmm(y, a, b), losing
        # alpha (x is such a product in the anchored branch of reverse)
        return x + y * alpha
    return torch.add(x, y, alpha=alpha)


_STACKED = 128 * 128


def stacked(n_out: int, n_in: int) -> bool:
    """Whether the per-step weight-gradient terms ``(batch, n_out)^T (batch, n_in)`` are stacked into
    one ``(n_out x T B) @ (T B x n_in)`` product at the end: under compilation and for layers of at
    most 128 x 128 weights. Inductor writes each step's factors straight into the stacked rows (no
    copies) and one product replaces ``T`` small ones with their launches: faster on compiled steps
    of width-128 MLPs, slower from width 256, whose per-step products already run at the large
    product's rate while the stacked rows are read back cold. Eagerly the stacking is a copy and
    each step's term is added at once instead (stacking gained nothing there and kept a tensor per
    step alive)."""
    return torch.compiler.is_compiling() and n_out * n_in <= _STACKED


class _Reverse:
    """Accumulates the parameter gradients of one reverse pass (terms ``-dS/dtheta``, times
    ``scale`` at the end).

    Layer ``l`` with a free input: ``dL/dW_l = scale * sum (q^T source + delta^T u)`` and
    ``dL/db_l = scale * sum q`` over the steps; eagerly each step's products are added as they
    come (while the factors are still in cache; stacking them into one product per layer was
    slower), under compilation they are stacked into one (see the module docstring). With a
    clamped input, ``const[l]`` collects the
    ``(batch, out)`` terms to be taken through ``f'`` once and multiplied by that input once.
    """

    def __init__(self, L: int, scale: float):
        self.scale = scale
        self.dw: list[torch.Tensor | None] = [None] * (L + 1)
        self.q: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]  # bias terms, summed at the end
        self.const: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]
        # compiled: the (left, right) factors of every weight term, one stacked product at the end
        self.rows: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(L + 1)]

    def add(self, l: int, q: torch.Tensor, source: torch.Tensor, delta: torch.Tensor | None = None, below: torch.Tensor | None = None) -> None:
        """Add ``q^T source (+ delta^T below)`` to layer ``l``'s weight term, ``sum q`` to its bias term."""
        self.q[l].append(q)
        if narrow_rows(q.shape[1]):  # (out, batch) @ (batch, in) for a narrow layer: a fused reduction
            term = (q[:, :, None] * source[:, None, :]).sum(0)
            if delta is not None:
                term = term + (delta[:, :, None] * below[:, None, :]).sum(0)
            self.dw[l] = term if self.dw[l] is None else self.dw[l] + term
            return
        if stacked(q.shape[1], source.shape[1]):
            self.rows[l].append((q, source))
            if delta is not None:
                self.rows[l].append((delta, below))
            return
        if self.dw[l] is None:
            self.dw[l] = torch.mm(q.t(), source)
        else:
            self.dw[l].addmm_(q.t(), source)
        if delta is not None:
            self.dw[l].addmm_(delta.t(), below)

    def grads(self, plan: Plan, z0: Sequence[torch.Tensor], const_a: Sequence[torch.Tensor | None],
              const_mu: Sequence[torch.Tensor | None], need: Sequence[tuple[bool, bool]]) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """``(dL/dW_l, dL/db_l)`` of every layer (``None`` where none is needed or nothing reached it)."""
        out: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for l in range(1, plan.chain.depth + 1):
            need_w, need_b = need[l - 1]
            dw, db = self.dw[l], None
            if self.rows[l] and need_w:
                dw = _add(dw, torch.mm(torch.cat([a for a, _ in self.rows[l]]).t(), torch.cat([b for _, b in self.rows[l]])))
            qs = self.q[l]
            if qs:
                db = qs[0].sum(0) if len(qs) == 1 else torch.stack(qs).sum((0, 1))
            if self.const[l]:
                summed = self.const[l][0] if len(self.const[l]) == 1 else torch.stack(self.const[l]).sum(0)
                q = slope_times(plan.chain.layers[l - 1].activation, summed, const_a[l], const_mu[l])
                if need_w:
                    dw = _add(dw, torch.mm(q.t(), z0[l - 1]))
                db = _add(db, q.sum(0))
            has_bias = plan.chain.layers[l - 1].linear.bias is not None
            scale = self.scale
            out.append((
                None if dw is None or not need_w else (dw if scale == 1.0 else dw.mul_(scale)),
                None if db is None or not need_b or not has_bias else (db if scale == 1.0 else db.mul_(scale)),
            ))
        return out


def reverse(
    plan: Plan, params: Params, tape: list[StepRecord], lam: list[torch.Tensor | None],
    z0: Sequence[torch.Tensor], ff: Predictions | None, need: Sequence[tuple[bool, bool]],
    anchored: dict[int, Anchored],
) -> tuple[list[torch.Tensor | None], list[tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """Walk the recorded steps backwards from ``lam = dL/dz_T`` (``None``: exactly zero).

    Args:
        plan, params: the relaxation.
        tape: what :func:`record` recorded.
        lam: adjoint of every node's final value (only free nodes are read).
        z0: the initial values.
        ff: the feed-forward predictions when the relaxation started from them (its adjoint is
            backpropagated to the parameters too), else ``None``.
        need: ``(weight, bias)`` gradient wanted, per layer.
        anchored: the anchored nodes of the forward (plain SGD, feed-forward start; only their
            ``gram`` and ``d`` are read).

    An anchored node ``i`` (:class:`~pclab.core.fast.chain.Anchored`) is differentiated in the variables
    the forward used: ``a = a_{i+1}`` and ``D`` with ``a' = a_ff + c (a - a_ff) + lr g G``,
    ``D' = c D + g``, ``z_i = mu_i + lr D W`` (``G = W W^T``, ``W = W_{i+1}``, ``g`` the error above
    taken back through the activation, ``c = 1 - lr w_i``). With ``alpha = dL/da`` the adjoint of
    ``g`` is ``lr (alpha' G + dL/dD' / lr)``: the same formulas as a free input with
    ``da = alpha' G + dL/dD' / lr``, whose result ``q`` goes to ``alpha = c alpha' + lr q``; the
    parameters get ``dL/dG += lr g^T alpha'`` (one product per step, where a free input needs two),
    ``dL/da_ff += (1 - c) alpha'`` and at the end ``dL/dW += (dL/dG + dL/dG^T) W``.

    Returns:
        ``(dL/dz_0 per node, [(dL/dW_l, dL/db_l)])``.
    """
    chain, L, optimizer = plan.chain, plan.chain.depth, plan.optimizer
    lr, momentum, nesterov = optimizer.lr, optimizer.momentum, optimizer.nesterov
    plain = momentum == 0.0
    c = -lr if plain else 1.0  # lam <- lam + c H u; dL/dtheta += c dS/dtheta
    acc = _Reverse(L, -c)  # the stored terms are -dS/dtheta
    activations = [None, *(layer.activation for layer in chain.layers)]
    curvature = [None, *(CURVATURE[a] for a in activations[1:])]
    lam = list(lam)
    lam_v: list[torch.Tensor | None] = [None] * (L + 1)
    const_a: list[torch.Tensor | None] = [None] * (L + 1)
    const_mu: list[torch.Tensor | None] = [None] * (L + 1)
    label_mass: list[torch.Tensor | None] = [None] * (L + 1)
    # anchored node i, layer k = i + 1 (see above); natural units (not scaled by -c)
    beta: dict[int, torch.Tensor | None] = {}  # k -> dL/da_k / lr
    lam_d: dict[int, torch.Tensor | None] = {}  # i -> dL/dD
    q_steps: dict[int, list[torch.Tensor]] = {}  # k -> every step's q (dL/da_ff = lr sum q)
    gram_adj: dict[int, torch.Tensor | None] = {}  # k -> dL/dG
    gram_terms: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # k -> (g, alpha') of every step: dL/dG = lr^2 sum g^T alpha'
    gram_lr: dict[int, torch.Tensor] = {}  # k -> lr G
    direct_dw: dict[int, torch.Tensor | None] = {}  # k -> dL/dW_k through the final z_i
    final: dict[int, torch.Tensor | None] = {}  # i -> dL/dz_i at the end (z_i = mu_i + ...)
    for i, node in anchored.items():
        k, weight = i + 1, params[i][0]
        beta[k] = gram_adj[k] = direct_dw[k] = lam_d[i] = None
        gram_terms[k] = []
        q_steps[k] = []
        if node.gram is not None:
            gram_lr[k] = node.gram * lr
        final[i], lam[i] = lam[i], None
        if final[i] is not None:
            lam_d[i] = torch.mm(final[i], weight.t()).mul_(lr)
            if node.d is not None:
                direct_dw[k] = torch.mm(node.d.t(), final[i]).mul_(lr)
    for step in reversed(tape):
        # u: the adjoint of each node's latent gradient at this step (None: exactly zero)
        u: list[torch.Tensor | None] = [None] * (L + 1)
        for i, has_gradient, first in step.updates:
            if plain:
                u[i] = lam[i]
                continue
            lz, lv = lam[i], lam_v[i]
            # v' = m v + g;  z' = z - lr v'  (Nesterov: z' = z - lr (g + m v'))
            lvp = lv if lz is None else _add(lv, lz, -lr * (momentum if nesterov else 1.0))
            gamma = lvp if not nesterov or lz is None else _add(lvp, lz, -lr)
            lam_v[i] = None if first or lvp is None else lvp * momentum
            u[i] = gamma if has_gradient else None
        new = list(lam)
        carried_da: dict[int, torch.Tensor | None] = {}
        carried_c: dict[int, float] = {}
        below_beta = dict(beta)  # beta' (after this step)
        for i, cst in step.carried.items():
            k, bp, ld = i + 1, beta[i + 1], lam_d[i]
            da = None if bp is None else torch.mm(bp, gram_lr[k])
            carried_da[k] = da if ld is None else _add(da, ld, 1.0 / lr)
            carried_c[k] = cst
            if ld is not None and cst != 1.0:
                lam_d[i] = ld * cst
        for rec in step.layers:
            l = rec.l
            carried = l in carried_da
            below, own = carried_da[l] if carried else u[l - 1], u[l]
            if below is None and own is None:
                continue
            weight = params[l - 1][0]
            act = activations[l]
            if not plan.free[l - 1]:  # constant input and pre-activation: f' applied once at the end
                # (own is not None here; a clamped node's own adjoint is always None)
                const_a[l], const_mu[l] = rec.a, rec.mu
                acc.const[l].append(own if rec.w == 1.0 else own * rec.w)
                new[l] = _add(new[l], own, c * rec.w)
                continue
            if carried or below is None:
                da = below
            else:
                da = forward_through(below, weight)
            nu = None if da is None else slope_times(act, da, rec.a, rec.mu)
            if type(chain.energies[l - 1]) is Gaussian:
                if own is None:
                    r = -nu
                elif nu is None:
                    r = own
                else:
                    r = own - nu
                if plan.free[l]:
                    new[l] = _add(new[l], r, c * rec.w)
                pre = r if rec.w == 1.0 else r * rec.w  # -dS/dmu
            else:  # a clamped cross-entropy output: nu is set (own is None)
                if label_mass[l] is None:
                    label_mass[l] = z0[l].sum(1, keepdim=True)  # sum_k z_k of the clamped label, (batch, 1)
                p = torch.softmax(rec.mu, dim=1)
                pn = p * nu
                hess = pn - p * pn.sum(1, keepdim=True)  # (diag p - p p^T) nu
                pre = hess * (label_mass[l] * -rec.w)
            # q = f'(a) pre + e f''(a) da
            if da is not None and curvature[l] is not None:
                factor, through_slope, scale = curvature[l]
                if through_slope:
                    q = slope_times(act, torch.addcmul(pre, rec.e * factor(rec.a, rec.mu), da, value=scale), rec.a, rec.mu)
                else:
                    q = torch.addcmul(slope_times(act, pre, rec.a, rec.mu), rec.e * factor(rec.a, rec.mu), da, value=scale)
            else:
                q = slope_times(act, pre, rec.a, rec.mu)
            if carried:  # alpha = c alpha' + lr q, dL/dG += lr g^T alpha'
                bp = below_beta[l]
                q_steps[l].append(q)
                beta[l] = q if bp is None else torch.add(q, bp, alpha=carried_c[l])
                if bp is not None:
                    n = weight.shape[0]  # (dL/dG: n x n)
                    if stacked(n, n):  # one product at the end
                        gram_terms[l].append((rec.delta, bp))
                    elif gram_adj[l] is None:  # (added now: beta' is not kept for the end)
                        gram_adj[l] = torch.mm(rec.delta.t(), bp).mul_(lr * lr)
                    else:
                        gram_adj[l].addmm_(rec.delta.t(), bp, alpha=lr * lr)
                continue
            if narrow(weight):
                through = back_through(q, weight)
                new[l - 1] = through * -c if new[l - 1] is None else new[l - 1] - c * through
            else:
                new[l - 1] = torch.addmm(new[l - 1], q, weight, alpha=-c) if new[l - 1] is not None else torch.mm(q, weight).mul_(-c)
            acc.add(l, q, rec.source, rec.delta if below is not None else None, below)
        for k, cst in carried_c.items():  # alpha = c alpha' where this step had no q (else set above)
            if beta[k] is below_beta[k] and beta[k] is not None and cst != 1.0:
                beta[k] = beta[k] * cst
        lam = new
    for i in anchored:
        # a_{i+1} starts at a_ff = W mu_i + b: dL/da_ff = alpha_0 + sum (1 - c) alpha' = lr sum q
        # (alpha_T = 0); z_i = mu_i + lr D W
        k, weight = i + 1, params[i][0]
        if q_steps[k]:
            summed = q_steps[k][0] if len(q_steps[k]) == 1 else torch.stack(q_steps[k]).sum(0)
            acc.add(k, summed, z0[i])  # acc's terms are scaled by -c = lr
            lam[i] = torch.mm(summed, weight).mul_(lr)
        if final[i] is not None:
            lam[i] = _add(lam[i], final[i])
    if ff is not None:  # the start z_l = f(W_l z_{l-1} + b_l) of every free node l >= 1
        inv = 1.0 / (-c)  # stored terms are scaled by -c at the end
        for l in range(L, 0, -1):
            if not plan.free[l] or lam[l] is None:
                continue
            act = activations[l]
            if not plan.free[l - 1]:
                const_a[l], const_mu[l] = ff.a[l], ff.mu[l]
                acc.const[l].append(lam[l] * inv)
                continue
            g = slope_times(act, lam[l], ff.a[l], ff.mu[l])
            acc.add(l, g * inv, z0[l - 1])
            if l - 1 >= 1:  # a free root starts at zero whatever the parameters
                lam[l - 1] = torch.addmm(lam[l - 1], g, params[l - 1][0]) if lam[l - 1] is not None else torch.mm(g, params[l - 1][0])
            lam[l] = None
    grads = acc.grads(plan, z0, const_a, const_mu, need)
    for i in anchored:
        k = i + 1
        dw, db = grads[k - 1]
        extra = direct_dw[k]
        terms = gram_terms[k]
        if terms:
            gram_adj[k] = torch.mm(torch.cat([g for g, _ in terms]).t(), torch.cat([a for _, a in terms])).mul_(lr * lr)
        if gram_adj[k] is not None:
            sym = gram_adj[k] + gram_adj[k].t()
            extra = torch.mm(sym, params[i][0]) if extra is None else extra.addmm_(sym, params[i][0])
        if extra is not None and need[k - 1][0]:
            grads[k - 1] = (_add(dw, extra), db)
    return lam, grads


# ---------------------------------------------------------------------------- autograd
def record(plan: Plan, params: Params, given: Sequence[torch.Tensor | None], start: Sequence[torch.Tensor] | None):
    """The relaxation of :func:`pclab.core.fast.chain.relax_chain` with its tape for :func:`reverse`
    (the forward of :func:`pclab.core.fast.differentiable.relax`, also traced by
    :mod:`pclab.core.fast.compiled_adjoint`): ``(final values of the free nodes, z0, ff, tape,
    anchored)``; ``start`` detached, or ``None`` for a feed-forward start (``ff``: its predictions)."""
    ff = None
    if start is None:
        z0, ff = feed_forward(plan, params, given)
    else:
        z0 = list(start)
    tape: list[StepRecord] = []
    state = relax_chain(plan, params, z0, ff, differentiable=True, tape=tape)
    # free values are copies even where a node never moved: the initial state stays a plain tensor
    out = [state.values[i] for i in range(len(z0)) if plan.free[i]]
    return out, z0, ff, tape, state.anchored


# ---------------------------------------------------------------------------- a task loss, whole
@dataclass(frozen=True)
class LossTerm:
    """One term of a task loss on a chain: ``weight * MSE(mu_k, target)`` (``kind="mse"``, mean over
    elements) or ``weight * CE(mu_k, target)`` (``kind="ce"``, batch mean; class indices or
    class probabilities) of node ``k``'s prediction ``mu_k = f(W_k z_{k-1} + b_k)``."""

    node: int
    weight: float
    kind: str


def _term_grad(term: LossTerm, mu: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, weight * dvalue/dmu)`` of one term: ``F.mse_loss`` / ``F.cross_entropy`` and
    their derivatives by hand (PyTorch's defaults: mean reduction, ``ignore_index=-100``)."""
    if term.kind == "mse":
        value = F.mse_loss(mu, target)
        return value, (mu - target) * (2.0 * term.weight / mu.numel())
    value = F.cross_entropy(mu, target)
    p = torch.softmax(mu, dim=1)
    if target.is_floating_point():  # class probabilities: d/dmu of -sum t log softmax(mu) = p sum t - t
        return value, (p * target.sum(1, keepdim=True) - target) * (term.weight / mu.shape[0])
    kept = target != -100  # (ignore_index: such rows do not count in the mean)
    one_hot = F.one_hot(torch.where(kept, target, 0), mu.shape[1]).to(mu.dtype)
    scale = kept.to(mu.dtype)[:, None] * (term.weight / kept.sum())
    return value, (p - one_hot) * scale


def task_loss_grads(
    plan: Plan, params: Params, given: Sequence[torch.Tensor | None], terms: Sequence[LossTerm],
    targets: Sequence[torch.Tensor], need: Sequence[tuple[bool, bool]],
) -> tuple[torch.Tensor, list[tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """Bp-through-inference on a chain without autograd: relax from the feed-forward pass (the
    recorded forward, :func:`record`), the task loss ``sum_k weight_k term_k(mu_k, target_k)`` on
    the predictions at the relaxed values, its derivative by hand, and :func:`reverse` to the
    parameters -- what ``loss.backward()`` through :func:`relax` gives, as plain tensor code
    (:mod:`pclab.core.fast.compiled` traces it into one graph with the optimiser's step). Run under
    ``no_grad``; requires :func:`applies` and a feed-forward plan.

    Args:
        plan, params, given: as :func:`record`.
        terms: the loss's terms; ``targets[j]`` is term ``j``'s target.
        need: ``(weight, bias)`` gradient wanted, per layer.

    Returns:
        ``(values, grads)``: the loss and then each term's unweighted value, shape
        ``(1 + len(terms),)``, and ``(dL/dW_l, dL/db_l)`` per layer (``None`` where no gradient
        reaches a parameter or none is needed).
    """
    chain, L = plan.chain, plan.chain.depth
    out, z0, ff, tape, anchored = record(plan, params, given, None)
    z = list(z0)
    for i, v in zip((i for i in range(L + 1) if plan.free[i]), out):
        z[i] = v
    predictions = Predictions(chain, params)
    lam: list[torch.Tensor | None] = [None] * (L + 1)
    direct: list[list[torch.Tensor | None]] = [[None, None] for _ in range(L)]
    values: list[torch.Tensor] = []
    loss: torch.Tensor | None = None
    for term, target in zip(terms, targets):
        k = term.node
        value, g = _term_grad(term, predictions.get(k, z), target)
        values.append(value)
        loss = term.weight * value if loss is None else loss + term.weight * value  # (as TaskLoss sums)
        delta = predictions.backward(k, g)  # dL/da_k
        if need[k - 1][0]:
            direct[k - 1][0] = _add(direct[k - 1][0], delta.t() @ z[k - 1])
        if need[k - 1][1] and params[k - 1][1] is not None:
            direct[k - 1][1] = _add(direct[k - 1][1], delta.sum(0))
        if plan.free[k - 1]:
            lam[k - 1] = _add(lam[k - 1], back_through(delta, params[k - 1][0]))
    _, grads = reverse(plan, params, tape, lam, z0, ff, need, anchored)
    merged = []
    for (dw, db), (extra_w, extra_b) in zip(grads, direct):
        merged.append((dw if extra_w is None else _add(dw, extra_w), db if extra_b is None else _add(db, extra_b)))
    assert loss is not None
    return torch.stack([loss, *values]), merged
