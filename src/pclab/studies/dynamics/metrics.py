"""Per-step measurements of one relaxation, and what they say about convergence.

:func:`trace` runs :func:`pclab.core.relax` once for ``horizon`` steps with ``record=True`` (energy
per node, error norms and drift come from its :class:`~pclab.core.Trajectory`) and adds, through
relax's ``on_step`` hook, the quantities a trajectory does not hold: the reconstruction of the image
from the current latent, the accuracy of the label read-out, the fixed-point residual ``||dE/dz||``
and the state at the trained horizon ``T``. :func:`convergence` turns one trace into scalars
(steps to a tolerance, monotonicity, the residual at ``T``, what happens past ``T``).

Every per-step list has ``horizon + 1`` entries: entry ``t`` is the state after ``t`` updates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ...core import PCN, Inference, State, free_nodes, relax

MOVE_THRESHOLD = 0.1
"""Past ``T`` the state *drifts* when ``||z_4T - z_T|| > MOVE_THRESHOLD * ||z_T - z_0||``."""
DIVERGE_FACTOR = 2.0
"""Past ``T`` the state *diverges* when the energy is not finite or ``E_4T > DIVERGE_FACTOR * E_T``."""


@dataclass
class Trace:
    """Per-step record of one batch's relaxation (``horizon + 1`` rows, row ``t`` after ``t`` updates).

    Attributes:
        nodes: error nodes (columns of ``energy`` and ``error_norm``).
        free: free nodes (columns of ``drift``).
        energy: ``(steps+1, nodes)`` batch-mean energy per node (nats for cross-entropy nodes,
            squared-error units ``1/2 ||e||^2`` for Gaussian nodes).
        error_norm: ``(steps+1, nodes)`` batch-mean L2 norm of each node's prediction error.
        drift: ``(steps+1, free)`` batch-mean L2 distance of each free node from its initial value.
        residual: ``(steps+1,)`` batch-mean ``||dE/dz||`` over all free nodes together.
        recon_mse: ``(steps+1,)`` mean squared pixel error of the image decoded top-down from the
            current latent alone (empty when the model has no image decoder).
        pred_mse: ``(steps+1,)`` mean squared pixel error of the image prediction at the current
            state (from the layer just below the image; empty when not applicable).
        accuracy: ``(steps+1,)`` fraction of samples whose label prediction ``argmax mu_y`` at the
            current state is the true class (empty without labels).
        move_past_T: batch-mean ``||z_end - z_T||`` over all free nodes (``nan`` if horizon <= T).
        latent_move_T: batch mean of ``||z_T - z_0|| / ||z_0||`` of the ``latent`` node, how far
            relaxation moved it relative to its start (against ``||z_T||`` where ``z_0 = 0``; ``nan``
            without a latent).
        images: ``{step: (k, *image.shape)}`` decoded images of the first ``k`` samples.
    """

    nodes: list[str]
    free: list[str]
    energy: list[list[float]]
    error_norm: list[list[float]]
    drift: list[list[float]]
    residual: list[float] = field(default_factory=list)
    recon_mse: list[float] = field(default_factory=list)
    pred_mse: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    move_past_T: float = math.nan
    latent_move_T: float = math.nan
    images: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def total_energy(self) -> list[float]:
        """Total energy per step."""
        return [sum(row) for row in self.energy]

    def to_json(self) -> dict:
        """Plain data (no images)."""
        data = dataclasses.asdict(self)
        data.pop("images")
        return data


def relative_movement(start: torch.Tensor, end: torch.Tensor) -> float:
    """Batch mean of ``||end - start|| / ||start||`` per sample (``(batch, ...)`` tensors; samples with
    ``start = 0`` measure against ``||end||``, and count 0 when both are 0)."""
    a, b = start.reshape(len(start), -1), end.reshape(len(end), -1)
    base = torch.where(a.norm(dim=1) > 0, a.norm(dim=1), b.norm(dim=1))
    moved = (b - a).norm(dim=1)
    return float(torch.where(base > 0, moved / base.clamp_min(1e-30), torch.zeros_like(moved)).mean())


def _per_sample_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(batch,)`` L2 norm of the concatenation of ``tensors`` (each ``(batch, ...)``)."""
    squares = [t.reshape(t.shape[0], -1).pow(2).sum(1) for t in tensors]
    return torch.stack(squares).sum(0).sqrt()


def decode(model: PCN, latent: str, z: torch.Tensor, image: str) -> torch.Tensor:
    """The image predicted top-down from ``latent = z`` alone (a feed-forward pass): ``(batch, *image.shape)``."""
    return model.initial_state({latent: z}, "forward")[image]


def trace(
    model: PCN,
    clamp: Mapping[str, torch.Tensor],
    inference: Inference,
    horizon: int,
    *,
    trained_steps: int,
    labels: torch.Tensor | None = None,
    image: str = "x",
    label: str = "y",
    latent: str | None = None,
    image_target: torch.Tensor | None = None,
    keep_images: int = 0,
    keep_steps: Sequence[int] = (),
) -> Trace:
    """Relax one batch for ``horizon`` steps and record everything per step.

    Args:
        model: the trained network.
        clamp: clamped values, name -> ``(batch, *shape)``.
        inference: latent optimiser, init and precision (its ``steps`` and ``tolerance`` are
            replaced by ``horizon`` and ``None``).
        horizon: steps to run (e.g. ``4 * trained_steps``).
        trained_steps: ``T``, the horizon the network was trained with; the state there is kept
            to measure the movement past it.
        labels: ``(batch,)`` class indices for the accuracy of ``argmax mu_label``.
        image: name of the image node; ``image_target`` ``(batch, *shape)`` is what it should be.
        latent: node from which to decode the image top-down (``None``: no decoding).
        keep_images: keep the decoded images of this many samples at ``keep_steps``.
    """
    if horizon < trained_steps:
        raise ValueError(f"horizon ({horizon}) must be >= the trained steps T ({trained_steps})")
    run = dataclasses.replace(inference, steps=horizon, tolerance=None)
    clamped = frozenset(clamp)
    residual: list[float] = []
    recon: list[float] = []
    pred: list[float] = []
    accuracy: list[float] = []
    images: dict[int, torch.Tensor] = {}
    at_T: dict[str, torch.Tensor] = {}
    latent_0: dict[str, torch.Tensor] = {}
    latent_move = [math.nan]
    free = free_nodes(model, clamped)

    def measure(t: int, values: State) -> None:
        grads, _ = model.latent_grads(values, free, clamped, inference.multipliers(model, t), method=inference.method)
        residual.append(float(_per_sample_norm([grads[n] for n in free]).mean()) if free else 0.0)
        mu = model.predictions(values)
        if image_target is not None and image in mu:
            pred.append(float((mu[image] - image_target).pow(2).mean()))
            if latent is not None:
                decoded = decode(model, latent, values[latent], image)
                recon.append(float((decoded - image_target).pow(2).mean()))
                if t in keep_steps and keep_images > 0:
                    images[t] = decoded[:keep_images].detach().clone()
        if labels is not None and label in mu:
            accuracy.append(float((mu[label].argmax(1) == labels).double().mean()))
        if t == 0 and latent is not None:
            latent_0["z"] = values[latent].detach().clone()
        if t == trained_steps:
            at_T.update({n: values[n].detach().clone() for n in free})
            if latent_0:
                latent_move[0] = relative_movement(latent_0["z"], values[latent])

    with torch.no_grad():
        relaxed = relax(model, clamp, run, record=True, on_step=measure)
        trajectory = relaxed.trajectory
        assert trajectory is not None
        measure(horizon, relaxed.values)
        move = math.nan
        if horizon > trained_steps and at_T:
            move = float(_per_sample_norm([relaxed.values[n] - at_T[n] for n in free]).mean())
    return Trace(
        nodes=list(trajectory.nodes), free=list(trajectory.free), energy=trajectory.energy,
        error_norm=trajectory.error_norm, drift=trajectory.drift, residual=residual, recon_mse=recon,
        pred_mse=pred, accuracy=accuracy, move_past_T=move, latent_move_T=latent_move[0], images=images,
    )


def steps_to_tolerance(energy: Sequence[float], tolerance: float) -> int | None:
    """The step at which ``relax`` with ``Inference(tolerance=tolerance)`` would stop: the first
    ``t >= 2`` with ``|E_{t-1} - E_{t-2}| <= tolerance * |E_{t-2}|`` (``E_t`` = energy after ``t``
    updates), i.e. the number of updates taken; ``None`` if never within ``energy``.

    Mirrors :func:`pclab.core.relax`, which compares the energies at which consecutive updates were
    computed.
    """
    for t in range(2, len(energy)):
        previous, current = energy[t - 2], energy[t - 1]
        if abs(previous - current) <= tolerance * max(abs(previous), 1e-30):
            return t
    return None


def steps_to_fraction(energy: Sequence[float], fraction: float = 0.99) -> int:
    """The first step ``t`` at which the energy has made ``fraction`` of its total decrease over the
    horizon: ``E_t - E_min <= (1 - fraction) * (E_0 - E_min)``, ``E_min`` the lowest energy seen
    (``0`` when the energy never decreases)."""
    low = min(energy)
    gap = (1.0 - fraction) * (energy[0] - low)
    return next(t for t, e in enumerate(energy) if e - low <= gap)


def is_monotone(energy: Sequence[float], rtol: float = 1e-6) -> bool:
    """Whether the energy never rises by more than ``rtol`` (relative) from one step to the next."""
    return all(b <= a + rtol * max(abs(a), 1e-30) for a, b in zip(energy[:-1], energy[1:]))


def past_horizon(energy: Sequence[float], drift_T: float, move_past_T: float) -> str:
    """``"stays"``, ``"drifts"`` or ``"diverges"``: what the state does between ``T`` and the end.

    Args:
        energy: total energy at ``T`` and at the end, ``[E_T, E_end]``.
        drift_T: ``||z_T - z_0||`` (how far inference moved within the trained horizon).
        move_past_T: ``||z_end - z_T||``.
    """
    e_T, e_end = energy
    if not (math.isfinite(e_end) and math.isfinite(move_past_T)) or e_end > DIVERGE_FACTOR * e_T + 1e-12:
        return "diverges"
    if move_past_T > MOVE_THRESHOLD * max(drift_T, 1e-12):
        return "drifts"
    return "stays"


def convergence(tr: Trace, trained_steps: int, tolerance: float) -> dict[str, float | int | bool | str | None]:
    """Scalars of one trace: steps to ``tolerance``, monotonicity within ``T`` and overall, energy,
    residual and read-outs at ``0``, ``T`` and the end, and the behaviour past ``T``."""
    energy = tr.total_energy
    T, end = trained_steps, len(energy) - 1
    drift_T = math.sqrt(sum(d * d for d in tr.drift[T])) if tr.free else 0.0
    out: dict[str, float | int | bool | str | None] = {
        "steps_to_tol": steps_to_tolerance(energy, tolerance),
        "steps_to_99": steps_to_fraction(energy, 0.99),
        "monotone_T": is_monotone(energy[: T + 1]),
        "monotone_all": is_monotone(energy),
        "energy_0": energy[0], "energy_T": energy[T], "energy_end": energy[end],
        "residual_0": tr.residual[0], "residual_T": tr.residual[T], "residual_end": tr.residual[end],
        "drift_T": drift_T, "move_past_T": tr.move_past_T, "latent_move_T": tr.latent_move_T,
        "past_T": past_horizon([energy[T], energy[end]], drift_T, tr.move_past_T) if end > T else "n/a",
    }
    for key, series in (("recon_mse", tr.recon_mse), ("accuracy", tr.accuracy)):
        if series:
            out.update({f"{key}_0": series[0], f"{key}_T": series[T], f"{key}_end": series[end]})
    return out
