"""Input reconstruction from a layer's embedding (Badger 2022; REFERENCE 6) and its metrics.

Everything here works on plain callables and tensors, so it applies to any differentiable map
``embed: (batch, *input) -> (batch, *embedding)``: a PCN's feed-forward value of one node, or a
single ``nn.Linear`` in a test.

* :func:`invert` -- gradient descent on the input ``a`` of ``sum |embed(a_target) - embed(a)|``
  (the L1 embedding loss), optionally blurring ``a`` after each step with an annealed Gaussian.
* :func:`clarity_metrics` -- Badger's ``m_g`` (embedding distance reached), ``m_r`` (embedding
  distance of a slightly perturbed target), ``m_i`` (input distance), plus PSNR and SSIM.
* :func:`gaussian_blur`, :func:`psnr`, :func:`ssim` -- small image utilities in torch.

Image scale: the functions that compare images (:func:`psnr`, :func:`ssim`, and the input metrics
of :func:`clarity_metrics`) take images in *unit scale*, ``[0, 1]``, shape ``(N, C, H, W)``;
:func:`invert` works in whatever layout and scale ``embed`` takes (the caller converts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

Embed = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InversionConfig:
    """How to reconstruct an input from its embedding.

    Args:
        steps: gradient steps on the input (Badger: 500).
        lr: step size ``eps`` at the first step (Badger: 0.1, plain gradient descent).
        lr_final: step size at the last step; the step size is annealed linearly from ``lr``
            (``None``: constant ``lr``, Badger's setting). The L1 loss has a gradient of constant
            size, so a constant step leaves the input oscillating at a distance ~ ``lr``; annealing
            lets it settle.
        optimizer: ``"sgd"`` (plain gradient descent, Badger) or ``"adam"``.
        init_mean, init_std: the start ``a_0 ~ N(init_mean, init_std^2)`` per pixel, in *unit scale*
            (fractions of the pixel range). Badger's ``N(0.7, 1/20)`` was given for his image scale;
            expressing it as a fraction of the pixel range keeps it meaningful for MNIST in [0, 1]
            and for the hybrid models' [-1, 1] inputs alike.
        blur_start, blur_end: Gaussian blur sigma (pixels) annealed linearly over the steps and
            applied to the input after every step (Badger: 2.4 -> 0.4 for conv nets; none for small
            fully-connected nets). ``None``: no blur.
        clamp: keep the input inside the pixel range after every step.
    """

    steps: int = 500
    lr: float = 0.1
    lr_final: float | None = None
    optimizer: str = "sgd"
    init_mean: float = 0.7
    init_std: float = 0.05
    blur_start: float | None = None
    blur_end: float | None = None
    clamp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"inversion steps must be an integer >= 0, got {self.steps!r}")
        if not self.lr > 0 or (self.lr_final is not None and not self.lr_final >= 0):
            raise ValueError(f"inversion lr must be > 0 and lr_final >= 0 or None, got lr={self.lr!r}, lr_final={self.lr_final!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"inversion optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.init_std < 0:
            raise ValueError(f"inversion init_std must be >= 0, got {self.init_std!r}")
        if (self.blur_start is None) != (self.blur_end is None):
            raise ValueError(f"give both blur_start and blur_end or neither, got {self.blur_start!r}, {self.blur_end!r}")
        if self.blur_start is not None and (self.blur_start < 0 or self.blur_end < 0):  # type: ignore[operator]
            raise ValueError(f"blur sigmas must be >= 0, got {self.blur_start!r} -> {self.blur_end!r}")

    @classmethod
    def from_dict(cls, data: dict) -> InversionConfig:
        """From plain data, naming unknown keys."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown inversion settings {sorted(unknown)}; expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def step_size(self, t: int) -> float:
        """Step size at step ``t`` (0-based)."""
        if self.lr_final is None or self.steps <= 1:
            return self.lr
        return self.lr + (self.lr_final - self.lr) * t / (self.steps - 1)

    def sigma(self, t: int) -> float | None:
        """Blur sigma at step ``t`` (``None``: no blur)."""
        if self.blur_start is None:
            return None
        frac = t / max(self.steps - 1, 1)
        return self.blur_start + (self.blur_end - self.blur_start) * frac  # type: ignore[operator]


PROCEDURES = ("pclab", "badger")

BADGER = InversionConfig(steps=500, lr=0.1, lr_final=None, optimizer="sgd", init_mean=0.7, init_std=1 / 20)
"""Badger's (2022) procedure for fully-connected nets: plain gradient descent, constant step 0.1,
500 steps, start ``N(0.7, 1/20)`` with 1/20 read as the *standard deviation*: his code is PyTorch,
where ``torch.normal(mean, s)`` takes a standard deviation ``s``; read as a variance (std 0.22), a
fifth of the start pixels would fall outside [0.4, 1.0]. No blur."""

BADGER_BLUR = (2.4, 0.4)
"""Badger's blur for convolutional nets: Gaussian sigma (pixels) annealed 2.4 -> 0.4 over the steps."""


def procedure_config(procedure: str, configured: InversionConfig, convolutional: bool) -> InversionConfig:
    """The inversion settings of a named procedure: ``"pclab"`` -> ``configured`` (the study's own,
    faster settings); ``"badger"`` -> :data:`BADGER`, with the annealed blur :data:`BADGER_BLUR` when the
    embedding map is ``convolutional``."""
    if procedure == "pclab":
        return configured
    if procedure == "badger":
        return BADGER if not convolutional else replace(BADGER, blur_start=BADGER_BLUR[0], blur_end=BADGER_BLUR[1])
    raise ValueError(f"inversion procedure: expected one of {list(PROCEDURES)}, got {procedure!r}")


# ---------------------------------------------------------------------------- image utilities
def gaussian_kernel(sigma: float, radius: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normalised 1-D Gaussian ``(2 * radius + 1,)``; radius defaults to ``ceil(3 sigma)``."""
    if sigma <= 0:
        return torch.ones(1, dtype=dtype)
    radius = max(1, math.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``(N, C, H, W)`` images with a separable Gaussian of ``sigma`` pixels (reflect padding).

    ``sigma <= 0`` returns the images unchanged. The kernel is cut to the image size.
    """
    if images.dim() != 4:
        raise ValueError(f"gaussian_blur expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    if sigma <= 0:
        return images
    n, c, h, w = images.shape
    radius = min(max(1, math.ceil(3 * sigma)), h - 1, w - 1)
    if radius < 1:
        return images
    k = gaussian_kernel(sigma, radius, images.dtype).to(images.device)
    flat = images.reshape(n * c, 1, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``(N,)`` in dB: ``10 log10(range^2 / MSE)``.

    Images ``(N, ...)`` in the same scale (unit scale: ``data_range = 1``). A perfect reconstruction
    gives ``+inf``; it is capped at 100 dB so that medians stay finite.
    """
    mse = ((reconstruction - target) ** 2).reshape(len(target), -1).mean(1)
    value = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-30))
    return value.clamp_max(100.0)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image, ``(N,)``, with a Gaussian window (Wang et al. 2004).

    Args:
        x, y: images ``(N, C, H, W)`` in the same scale.
        data_range: the pixel range (1 for unit scale).
        window: window size; cut to the largest odd size that fits the image (for 8x8 images: 7).
        sigma: the window's Gaussian sigma (pixels).

    Returns:
        The mean of the SSIM map over valid window positions and channels, one value per image
        (1 for identical images).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, c, h, w = x.shape
    size = min(window, h if h % 2 else h - 1, w if w % 2 else w - 1)
    if size < 1:
        raise ValueError(f"images of {h}x{w} are too small for SSIM")
    k1 = gaussian_kernel(sigma, size // 2, x.dtype).to(x.device)
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, size, size)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).reshape(n, -1).mean(1)


# ---------------------------------------------------------------------------- inversion
def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1).norm(dim=1)


def invert(
    embed: Embed,
    target: torch.Tensor,
    start: torch.Tensor,
    config: InversionConfig,
    *,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    image_shape: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Reconstruct inputs whose embeddings match ``target`` by gradient descent on the input.

    ``a <- blur(a - eps_t * grad_a sum_j |target_j - embed(a)_j|)`` for ``config.steps`` steps,
    each sample descending its own loss (step sizes do not depend on the batch size).

    Args:
        embed: differentiable map from inputs ``(N, *input)`` to embeddings ``(N, *embedding)``;
            its parameters are not changed.
        target: the embeddings to match, ``(N, *embedding)`` (detached).
        start: the first input ``(N, *input)`` (:func:`initial_input` gives Badger's noise start).
        config: steps, step size, optimiser, blur, clamping.
        pixel_range: ``(lo, hi)`` pixel values of the input scale ``embed`` takes (for ``clamp``).
        image_shape: ``(C, H, W)`` of one input, needed for the blur when inputs are flat.

    Returns:
        The reconstructed inputs, ``(N, *input)``, detached.
    """
    target = target.detach()
    lo, hi = pixel_range
    if start.shape[0] != target.shape[0]:
        raise ValueError(f"start and target disagree on the batch size: {start.shape[0]} vs {target.shape[0]}")
    a = start.detach().clone().requires_grad_(True)
    state: dict[str, torch.Tensor] = {}
    if config.blur_start is not None and image_shape is None and a.dim() != 4:
        raise ValueError("blur needs image_shape=(C, H, W) for flat inputs")
    for t in range(config.steps):
        with torch.enable_grad():
            loss = (embed(a) - target).abs().sum()
            (grad,) = torch.autograd.grad(loss, a)
        with torch.no_grad():
            step = _update(grad, state, config, t)
            new = a - config.step_size(t) * step
            sigma = config.sigma(t)
            if sigma is not None and sigma > 0:
                shape = a.shape if a.dim() == 4 else (len(a), *image_shape)  # type: ignore[misc]
                new = gaussian_blur(new.reshape(shape), sigma).reshape(a.shape)
            if config.clamp:
                new = new.clamp(lo, hi)
        a = new.requires_grad_(True)
    return a.detach()


def initial_input(
    shape: tuple[int, ...],
    config: InversionConfig,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Badger's noise start ``N(init_mean, init_std^2)`` (unit scale) mapped to ``pixel_range``; ``shape`` = ``(N, *input)``."""
    lo, hi = pixel_range
    u = config.init_mean + config.init_std * torch.randn(shape, generator=generator, dtype=dtype)
    return lo + (hi - lo) * u


def _update(grad: torch.Tensor, state: dict[str, torch.Tensor], config: InversionConfig, t: int) -> torch.Tensor:
    """The direction of step ``t``: the gradient (sgd) or Adam's normalised moment estimate."""
    if config.optimizer == "sgd":
        return grad
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = state.get("m", torch.zeros_like(grad))
    v = state.get("v", torch.zeros_like(grad))
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    state["m"], state["v"] = m, v
    m_hat = m / (1 - beta1 ** (t + 1))
    v_hat = v / (1 - beta2 ** (t + 1))
    return m_hat / (v_hat.sqrt() + eps)


# ---------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Clarity:
    """Per-image metrics of one reconstruction, each ``(N,)``.

    Attributes:
        m_g: ``||O(a_target) - O(a_g)||_2``, the embedding distance the reconstruction reached.
        m_r: ``||O(a_target) - O(a_target + n)||_2`` for a small input perturbation ``n``.
        m_i: ``||a_g - a_target||_2`` in unit pixel scale (over all pixels).
        m_i_perturbation: ``||n||_2`` in unit scale, the input distance that produced ``m_r``.
        embedding_norm: ``||O(a_target)||_2``, for relative distances.
        psnr: dB, reconstruction clipped to [0, 1].
        ssim: reconstruction clipped to [0, 1].
    """

    m_g: torch.Tensor
    m_r: torch.Tensor
    m_i: torch.Tensor
    m_i_perturbation: torch.Tensor
    embedding_norm: torch.Tensor
    psnr: torch.Tensor
    ssim: torch.Tensor

    def as_lists(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in self.__dataclass_fields__}


def clarity_metrics(
    embed: Embed,
    target_input: torch.Tensor,
    reconstruction: torch.Tensor,
    to_unit: Callable[[torch.Tensor], torch.Tensor],
    perturbation_std: float = 0.05,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Clarity:
    """Badger's metrics and image similarity of reconstructions.

    Args:
        embed: the layer's embedding map (as given to :func:`invert`).
        target_input: the original inputs ``(N, *input)`` in the model's scale.
        reconstruction: the reconstructed inputs, same shape and scale.
        to_unit: maps model-scale inputs to unit-scale images ``(N, C, H, W)``.
        perturbation_std: standard deviation of the perturbation behind ``m_r``, in unit scale.
        pixel_range: ``(lo, hi)`` of the model's scale (the perturbation is scaled by ``hi - lo``).
        generator: random source of the perturbation.
    """
    lo, hi = pixel_range
    with torch.no_grad():
        e_target = embed(target_input)
        noise = perturbation_std * (hi - lo) * torch.randn(target_input.shape, generator=generator, dtype=target_input.dtype)
        m_g = _flat_norm(embed(reconstruction) - e_target)
        m_r = _flat_norm(embed(target_input + noise) - e_target)
        unit_target, unit_recon = to_unit(target_input), to_unit(reconstruction)
        m_i = _flat_norm(unit_recon - unit_target)
        clipped = unit_recon.clamp(0.0, 1.0)
        return Clarity(
            m_g=m_g,
            m_r=m_r,
            m_i=m_i,
            m_i_perturbation=_flat_norm(noise) / (hi - lo),
            embedding_norm=_flat_norm(e_target),
            psnr=psnr(clipped, unit_target),
            ssim=ssim(clipped, unit_target),
        )
