"""Stacked trials: runs of the trade-off study that differ only in ``lam`` and ``seed``, trained as one.

Where a training step of one run costs mostly per-operation overhead (Python, dispatch, kernel
launches) rather than arithmetic -- small models on small batches or small images, small kernels
on a GPU -- runs that share everything but ``lam`` and ``seed`` (dataset, way, model: complexity
and ``d``, schedule: epochs, batch size, Adam's rate, and every other setting) are trained together,
and the overhead is paid once per stack instead of once per run. Where arithmetic dominates a step
(products, and elementwise work over the batch's images), stacking saves little:
``pclab bench study tradeoff`` measures which is the case for a preset (:mod:`pclab.bench.study`).

* **Parameters** of the ``M`` members are stacked along a leading dimension, ``(M, *shape)``. Each
  member is initialised exactly as it would be alone (:func:`.training.build_run`, seeded from its
  own seed) and its stacked slice starts as a copy of that.
* **Products**: every layer is one batched product (``torch.baddbmm``) over the members.
* **Training step**: member ``m``'s objective is its own -- way (a) ``(1 - lam_m) MSE + lam_m CE``;
  way (b) the same on the latent relaxed ``T_m`` steps, backpropagated through them; way (c) the
  energy at the latent relaxed with its own precisions, plus the encoder's amortiser loss -- on its
  own batch. Relaxation is latent SGD with each member's own step size and ``T``, re-chosen each
  epoch on its own model (:func:`.training.choose_relaxation`, unstacked, as alone); a member with a
  smaller ``T`` takes zero-size steps to the largest. The members' objectives are summed: their
  parameters are disjoint, so the sum's gradient with respect to ``m``'s slice is ``m``'s own.
* **Optimiser**: one Adam over the stacked tensors. Adam is elementwise, so the slice of its state
  (moments, step) that belongs to member ``m`` is the state ``m``'s own Adam would have.
* **Data order**: each member keeps its own. A run alone visits its training examples in the
  permutation its seed draws each epoch (:func:`.training.epoch_generator`); a member's batches are
  gathered with that same permutation, so it sees exactly the batches it would alone (members with
  equal seeds share an order; different seeds are allowed in one stack).
* **Failure**: a member whose loss stops being finite is recorded as failed with the error a run
  alone raises, and leaves the sum (its slice is still computed, and ignored); the others go on.
* **Records**: after training, each member's slice goes back into its own model, which is measured
  exactly as a run alone is (:func:`.training.measure`): the record has the same fields. Times are
  the stack's training time shared equally among its members, plus the member's own measuring time.

A stacked member equals the run alone up to floating-point rounding (a batched product sums in
another order than a plain one, and way (b) differentiates its relaxation by autograd instead of
the hand-derived reverse pass); tests check it over a few steps in float32 and, tightly, in
float64. In float32 a relaxation choice that two candidates almost tie for could go the other way.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...core import Constant, Dense, Stack
from ...core.layers import ACTIVATIONS, slope_times
from ...data import Dataset
from ...train import DivergenceError, Run, prepare_images
from .training import (
    Phase,
    build_run,
    choose_relaxation,
    epoch_generator,
    measure,
    set_relaxation,
    training_clamp,
    trial_data,
    trial_validation,
    untimed,
)

STACKABLE_WAYS = ("bp", "bpti", "pc")
"""Ways whose runs are trained stacked; the others run alone."""

MEMBER_KEYS = ("lam", "seed", "grid")
"""Trial parameters in which the members of one stack may differ (``grid``: whether a member stores
its reconstructions, which is measured per member)."""


def stack_key(params: dict[str, Any]) -> str | None:
    """What members of one stack share: every trial parameter but :data:`MEMBER_KEYS` (as JSON text);
    None for a trial of a way that is not stacked."""
    if params["way"] not in STACKABLE_WAYS:
        return None
    return json.dumps({k: v for k, v in params.items() if k not in MEMBER_KEYS}, sort_keys=True)


def stack_groups(trials: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``trials`` partitioned into the lists run together: trials with the same :func:`stack_key`
    form one list (in ``trials`` order); every other trial is a list of its own. Lists come in the
    order of their first trial."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for i, params in enumerate(trials):
        key = stack_key(params)
        groups.setdefault(i if key is None else key, []).append(params)
    return list(groups.values())


# ---------------------------------------------------------------------------------------- the model
Chain = list[tuple[str, str]]
"""Layers of a chain of affine maps: ``(parameter prefix, activation)``; the layer's parameters are
``<prefix>.weight`` ``(out, in)`` and ``<prefix>.bias`` ``(out,)``."""


def chain_of(module: nn.Module, prefix: str) -> Chain:
    """The layers of an encoder (``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``) or of a
    :class:`~pclab.core.Stack` of :class:`~pclab.core.Dense` layers with biases.

    Raises TypeError for any other module (such a model is not stacked)."""
    layers: Chain = []
    if isinstance(module, Stack):
        for i, layer in enumerate(module.layers):
            if not isinstance(layer, Dense) or layer.linear.bias is None:
                raise TypeError(f"{prefix}: expected Dense layers with biases, got {type(layer).__name__}")
            layers.append((f"{prefix}.layers.{i}.linear", layer.activation))
        return layers
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"{prefix}: expected nn.Sequential or Stack, got {type(module).__name__}")
    for i, layer in enumerate(module):
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            layers.append((f"{prefix}.{i}", "identity"))
        elif isinstance(layer, nn.ReLU) and layers and layers[-1][1] == "identity":
            layers[-1] = (layers[-1][0], "relu")
        else:
            raise TypeError(f"{prefix}.{i}: expected nn.Linear (with bias) or nn.ReLU after one, got {type(layer).__name__}")
    return layers


def apply_chain(chain: Chain, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """``h`` ``(M, B, in)`` through every layer of ``chain``, member ``m`` with its own slice
    ``params[...][m]``: ``act(h @ W.T + b)`` as one batched product per layer; ``(M, B, out)``."""
    for prefix, activation in chain:
        weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
        h = ACTIVATIONS[activation][0](torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)))
    return h


class StackedHybrid:
    """The parameters of ``M`` Rathjens-Wiskott hybrids (:func:`pclab.models.rathjens_wiskott`,
    nodes ``x``, ``z``, ``y``; decoder and head one edge each) stacked along a leading dimension,
    and their feed-forward pass.

    Args:
        models: the members' models, alike in structure, each with its own values.
    """

    def __init__(self, models: Sequence[nn.Module]):
        first = models[0]
        self.encoder = chain_of(first.amortiser_modules["x_to_z"], "amortiser_modules.x_to_z")
        self.decoder = chain_of(first.edge_modules["z_to_x"], "edge_modules.z_to_x")
        self.head = chain_of(first.edge_modules["z_to_y"], "edge_modules.z_to_y")
        names = [n for n, _ in first.named_parameters()]
        used = {f"{prefix}.{kind}" for chain in (self.encoder, self.decoder, self.head) for prefix, _ in chain for kind in ("weight", "bias")}
        if set(names) != used:
            raise TypeError(f"expected a hybrid of encoder x_to_z, decoder z_to_x and head z_to_y only; other parameters: {sorted(set(names) - used)}")
        self.models = list(models)
        members = [dict(m.named_parameters()) for m in models]
        self.params = {n: torch.stack([p[n].detach() for p in members]).requires_grad_() for n in names}

    def encode(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Images ``(M, B, P)`` -> the encoder's latents ``(M, B, d)`` (``params``: default the stacked ones)."""
        return apply_chain(self.encoder, self.params if params is None else params, x)

    def decode(self, z: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Latents ``(M, B, d)`` -> predicted images ``(M, B, P)``."""
        return apply_chain(self.decoder, self.params if params is None else params, z)

    def classify(self, z: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Latents ``(M, B, d)`` -> logits ``(M, B, classes)``."""
        return apply_chain(self.head, self.params if params is None else params, z)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(M, B, P)`` -> reconstructions ``(M, B, P)`` and logits ``(M, B, classes)`` (feed-forward)."""
        z = self.encode(x)
        return self.decode(z), self.classify(z)

    def energy(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None, precisions: torch.Tensor,
               params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sample energy ``(M, B)`` of the state ``(x, z, labels)``: ``pi_x/2 ||x - dec(z)||^2`` plus,
        with ``labels`` (one-hot ``(M, B, classes)``: the label clamped), ``-pi_y sum labels log softmax(head(z))``.
        ``precisions`` ``(M, 2)``: each member's ``(pi_x, pi_y)``."""
        energy = precisions[:, :1] * 0.5 * (x - self.decode(z, params)).pow(2).sum(-1)
        if labels is not None:
            energy = energy - precisions[:, 1:] * (labels * F.log_softmax(self.classify(z, params), dim=-1)).sum(-1)
        return energy

    def latent_grad(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None, precisions: torch.Tensor) -> torch.Tensor:
        """``dE/dz`` of :meth:`energy` per sample, ``(M, B, d)``, by hand and without a graph: each
        prediction's error ``dE/dmu`` taken back through its chain (as the reference relaxation's
        vector-Jacobian products do; :func:`pclab.core.layers.slope_times`)."""
        with torch.no_grad():
            grad = self._back(self.decoder, z, lambda mu: precisions[:, :1, None] * (mu - x))
            if labels is not None:  # -pi_y sum y log softmax(l): dE/dl = pi_y (softmax(l) sum(y) - y)
                grad = grad + self._back(self.head, z, lambda logits: precisions[:, 1:, None] * (
                    torch.softmax(logits, dim=-1) * labels.sum(-1, keepdim=True) - labels))
        return grad

    def _back(self, chain: Chain, z: torch.Tensor, error: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``dE/dz`` through ``chain`` from ``z``, where ``error(out)`` is ``dE/dout`` at its output."""
        saved = []
        h = z
        for prefix, activation in chain:
            weight, bias = self.params[f"{prefix}.weight"].detach(), self.params[f"{prefix}.bias"].detach()
            a = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            h = ACTIVATIONS[activation][0](a)
            saved.append((weight, activation, a, h))
        g = error(h)
        for weight, activation, a, mu in reversed(saved):
            g = torch.bmm(slope_times(activation, g, a, mu), weight)
        return g

    def relax(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None, precisions: torch.Tensor, rates: torch.Tensor,
              steps: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """Latent SGD on :meth:`energy` from ``z`` ``(M, B, d)``: member ``m`` takes ``steps[m]`` steps of
        size ``rates[m]`` (each sample descends its own energy, as in :func:`pclab.core.relax`); its later
        steps, up to the largest ``steps``, have size 0. ``differentiable``: keep the graph through
        every step (backprop through inference; the gradient by autograd); otherwise the parameters
        are constants and the gradient is :meth:`latent_grad`."""
        for t in range(int(steps.max()) if len(steps) else 0):
            size = torch.where(steps > t, rates, torch.zeros_like(rates))[:, None, None]
            if differentiable:
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(self.energy(z, x, labels, precisions).sum(), z, create_graph=True)
            else:
                grad = self.latent_grad(z, x, labels, precisions)
            z = z - size * grad
        return z if differentiable else z.detach()

    def write_back(self) -> None:
        """Copy each member's slice into its own model."""
        with torch.no_grad():
            for m, model in enumerate(self.models):
                for name, p in model.named_parameters():
                    p.copy_(self.params[name][m])


# ------------------------------------------------------------------------------------------ training
METRICS = {"bp": ("loss", "mse_x", "ce_y"), "bp-through-inference": ("loss", "mse_x", "ce_y"), "pc": ("energy",)}
"""The training metrics of each learning rule, as its ``step`` reports them."""


def _check_alike(runs: Sequence[Run]) -> None:
    """ValueError unless the runs may share one stacked training run (alike but for lam and seed)."""
    first = runs[0].config
    for run in runs:
        c, lc, inference = run.config, run.config.learning, run.inference
        if c.model != first.model or c.data != first.data or c.epochs != first.epochs or c.dtype != first.dtype or c.device != first.device:
            raise ValueError("stacked runs must share model, data, epochs, dtype and device; they differ")
        if lc != first.learning.model_copy(update={"lam": lc.lam}) or lc.rule not in METRICS:
            raise ValueError(f"stacked runs must share their learning settings but lam, with rule one of {sorted(METRICS)}; they differ")
        if lc.optimizer != "adam" or lc.schedule != "constant" or lc.warmup_epochs or lc.frozen_layers or lc.forward_update:
            raise ValueError(f"stacked runs train with Adam at a constant rate on every layer; got {lc.optimizer}, schedule {lc.schedule}, "
                             f"warm-up {lc.warmup_epochs}, frozen layers {lc.frozen_layers}, forward update {lc.forward_update}")
        plain = (inference.optimizer.__class__.__name__ == "SGD" and not inference.optimizer.momentum and inference.init == "forward"
                 and inference.precision == Constant() and inference.tolerance is None and not inference.fixed_prediction
                 and inference.parametrisation == "state" and lc.truncate is None and lc.checkpoint is False)
        if lc.rule != "bp" and not plain:
            raise ValueError("stacked runs relax by plain latent SGD from the feed-forward state, every step, without checkpointing")
        if len(run.train) != len(runs[0].train):
            raise ValueError("stacked runs must share their training set")


class StackedTrainer:
    """One training step of runs alike but for ``lam`` and seed (:func:`_check_alike`), stacked.

    * way (a), ``bp``: loss ``(1 - lam) MSE + lam CE`` on the feed-forward pass;
    * way (b), ``bp-through-inference``: the latent relaxes ``T`` steps on the image energy from the
      encoder's output, the same loss on the relaxed latent, backpropagated through the steps;
    * way (c), ``pc``: image and label clamped with the member's precisions, the latent relaxes,
      then one step on the batch-mean energy at the relaxed latent plus the encoder's amortiser loss.

    The relaxation of ways (b) and (c) is each run's current ``run.inference`` (latent SGD: its step
    size and ``T``), read by :meth:`relaxation`.
    """

    def __init__(self, runs: Sequence[Run]):
        _check_alike(runs)
        self.runs = list(runs)
        config = runs[0].config
        self.rule = config.learning.rule
        self.names = METRICS[self.rule]
        self.model = StackedHybrid([run.model for run in runs])
        tensors = list(self.model.params.values())
        fused = all(t.device.type in ("cpu", "cuda") for t in tensors) or None  # as pclab.train builds Adam
        self.optimizer = torch.optim.Adam(tensors, config.learning.lr, weight_decay=config.learning.weight_decay, fused=fused)
        dtype, device = tensors[0].dtype, tensors[0].device
        lam = [run.config.learning.lam for run in runs]
        self.weights = torch.tensor([[1.0 - v for v in lam], lam], dtype=dtype, device=device)  # (2, M): MSE's and CE's
        self.precisions = torch.tensor([[run.model.nodes["x"].energy.precision, run.model.nodes["y"].energy.precision] for run in runs],
                                       dtype=dtype, device=device)
        self.classes = runs[0].classes
        self.relaxation()

    def relaxation(self, alive: Sequence[int] | None = None) -> None:
        """Read each run's latent step size and ``T`` (``T = 0`` for a member not in ``alive``)."""
        dtype, device = self.precisions.dtype, self.precisions.device
        self.rates = torch.tensor([float(run.inference.optimizer.lr) for run in self.runs], dtype=dtype, device=device)
        self.steps = torch.tensor([run.inference.steps if alive is None or m in alive else 0 for m, run in enumerate(self.runs)],
                                  device=device)

    def step(self, x: torch.Tensor, labels: torch.Tensor, alive: Sequence[int] | None = None) -> torch.Tensor:
        """Learn from one batch per member: images ``x`` ``(M, B, P)`` prepared as the model takes them,
        class indices ``labels`` ``(M, B)``; only members in ``alive`` (default all) learn. Returns the
        metrics ``(len(METRICS[rule]), M)`` (float64, on the CPU) that each member's rule reports."""
        model, count = self.model, len(self.runs)
        if self.rule == "pc":
            onehot = F.one_hot(labels, self.classes).to(x.dtype)
            with torch.no_grad():
                z = model.relax(model.encode(x), x, onehot, self.precisions, self.rates, self.steps)
            loss = model.energy(z, x, onehot, self.precisions).mean(1) + 0.5 * (z - model.encode(x)).pow(2).sum(-1).mean(1)
            metrics = [loss]
        else:
            z = model.encode(x)
            if self.rule == "bp-through-inference":
                z = model.relax(z, x, None, torch.ones_like(self.precisions), self.rates, self.steps, differentiable=True)
            mse = (model.decode(z) - x).pow(2).mean(dim=(1, 2))
            ce = F.cross_entropy(model.classify(z).flatten(0, 1), labels.flatten(), reduction="none").view(count, -1).mean(1)
            loss = self.weights[0] * mse + self.weights[1] * ce
            metrics = [loss, mse, ce]
        self.optimizer.zero_grad(set_to_none=True)
        (loss if alive is None or len(alive) == count else loss[list(alive)]).sum().backward()
        self.optimizer.step()
        return torch.stack(metrics).detach().double().cpu()


def fit_stacked(runs: Sequence[Run], validation: Dataset | None = None, step_sizes: Sequence[float] = (), steps: Sequence[int] = (),
                max_batches: int | None = None) -> tuple[list[list[dict[str, float]]], list[Exception | None]]:
    """Train the runs (one way, alike but for ``lam`` and seed) as one stacked model (:class:`StackedTrainer`).

    Each member gets the training :func:`.training.fit` gives it alone -- same initial weights, same
    batches in the same order, its own Adam state and, for ways (b) and (c), its own relaxation
    re-chosen each epoch on ``validation`` (:func:`.training.choose_relaxation` on its own model, so
    its own step size and ``T``) -- up to floating-point rounding; its weights end in its own model.
    Arguments as :func:`.training.fit`.

    Returns ``(histories, errors)``, one of each per run: the per-epoch history ``fit`` returns
    (``seconds`` and ``cpu_seconds`` are the stack's epoch time shared among the members trained in
    it), and None or the :class:`~pclab.train.DivergenceError` a diverging member raised alone.
    """
    trainer = StackedTrainer(runs)
    config = runs[0].config
    images = prepare_images(config, runs[0].train.images)  # (N, P), the same per batch as make_batch's
    labels = runs[0].train.labels.to(images.device)
    count, batch = len(runs), config.data.batch_size
    histories: list[list[dict[str, float]]] = [[] for _ in runs]
    errors: list[Exception | None] = [None] * count
    for epoch in range(config.epochs):
        alive = [m for m in range(count) if errors[m] is None]
        if not alive:
            break
        share = len(alive)  # the members trained in this epoch share its time
        chosen: list[dict[str, float]] = [{} for _ in runs]
        if validation is not None and trainer.rule != "bp":
            trainer.model.write_back()  # each member chooses on its own current model, as alone
            for m in alive:
                run = runs[m]
                choice = choose_relaxation(run.model, training_clamp(run, validation.images, validation.labels), run.inference, step_sizes, steps)
                if choice["steps"] == 0:  # as fit: no candidate lowered the energy, relax the fewest steps
                    choice = {**choice, "steps": min(steps)}
                set_relaxation(run, choice["lr"], choice["steps"])
                chosen[m] = {"relax_lr": choice["lr"], "relax_steps": choice["steps"]}
        trainer.relaxation(alive)
        orders = torch.stack([torch.randperm(len(images), generator=epoch_generator(run.config.seed, epoch)) for run in runs])
        orders = orders.to(images.device)
        totals = torch.zeros(len(trainer.names), count, dtype=torch.float64)
        seen = done = 0
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(images), batch):
            if max_batches is not None and done >= max_batches:
                break
            done += 1
            index = orders[:, start:start + batch]  # (M, b): each member's own examples
            values = trainer.step(images[index], labels[index], alive)
            size = index.shape[1]
            finite = torch.isfinite(values).all(0).tolist()
            for m in list(alive):
                if not finite[m]:
                    bad = [k for k, v in zip(trainer.names, values[:, m].tolist()) if not math.isfinite(v)]
                    errors[m] = DivergenceError(f"epoch {epoch + 1}: {bad} not finite; lower lr / relax_step_sizes")
                    alive.remove(m)
            totals += values * size
            seen += size
        seconds, cpu_seconds = (time.perf_counter() - started) / share, (time.process_time() - cpu) / share
        for m in range(count):
            if errors[m] is not None:
                continue
            entry = {"epoch": epoch + 1, "seconds": seconds, "cpu_seconds": cpu_seconds, **chosen[m],
                     **{f"train_{k}": float(totals[i, m]) / seen for i, k in enumerate(trainer.names)}}
            if max_batches is not None:
                entry["batches"] = done
            histories[m].append(entry)
    trainer.model.write_back()
    return histories, errors


def run_stack(members: list[dict[str, Any]], phase: Phase = untimed, max_batches: int | None = None) -> list[dict[str, Any] | Exception]:
    """Train and measure the runs ``members`` (parameters of :func:`.training.run_trial`, alike but
    for :data:`MEMBER_KEYS`) as one stack; one outcome per member, in order: the result
    :func:`.training.run_trial` returns for it alone (the same fields), or the exception that ended it.

    Times: ``train_seconds`` and ``train_cpu_seconds`` are the stack's (data, build, training)
    shared equally among the members; ``trial_seconds`` and ``cpu_seconds`` add the member's own
    measuring. ``phase`` and ``max_batches`` as in :func:`.training.run_trial`.
    """
    if any(stack_key(p) is None or stack_key(p) != stack_key(members[0]) for p in members):
        raise ValueError("stacked members must be of a stacked way and alike in every parameter but lam, seed and grid")
    started, cpu = time.perf_counter(), time.process_time()
    with phase("data"):
        data = trial_data(members[0])
        validation = trial_validation(members[0])
    with phase("build"):
        runs = [build_run(params, data) for params in members]  # each seeded from its own seed, as alone
    with phase("train"):
        histories, errors = fit_stacked(runs, validation, members[0]["relax_step_sizes"], members[0]["relax_steps"], max_batches)
    share = len(members)
    trained = {"train_seconds": (time.perf_counter() - started) / share, "train_cpu_seconds": (time.process_time() - cpu) / share}
    outcomes: list[dict[str, Any] | Exception] = []
    for params, run, history, error in zip(members, runs, histories, errors):
        if error is not None:
            outcomes.append(error)
            continue
        own, own_cpu = time.perf_counter(), time.process_time()
        try:
            result = measure(params, run, data, validation, history, phase)
        except Exception as err:  # a failed member is data; its siblings are measured still
            outcomes.append(err)
            continue
        shown = {k: result.pop(k) for k in ("grid_shape", "grid_images") if k in result}
        result.update(trained)
        result.update(shown)
        result["trial_seconds"] = trained["train_seconds"] + time.perf_counter() - own
        result["cpu_seconds"] = trained["train_cpu_seconds"] + time.process_time() - own_cpu
        outcomes.append(result)
    return outcomes
