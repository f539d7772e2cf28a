"""How much class and image information a frozen latent holds: two closed-form probes.

Both are ridge regressions solved exactly (no optimiser, no epochs, deterministic), fitted on the
latents of training images and scored on the latents of test images. Latents are standardised
with the training mean and standard deviation first.

* :func:`linear_probe_accuracy` -- a linear read-out ``[z, 1] -> one-hot label`` (least squares,
  ridge ``1e-3 * N``); accuracy of its argmax. Class information *linearly* available in ``z``.
* :func:`decoder_probe_mse` -- a fresh decoder ``z -> image``: ridge regression on ``z`` plus
  ``features`` random ReLU features ``relu(z W + b)`` (``W`` Gaussian, fixed seed), i.e. a
  one-hidden-layer decoder whose hidden layer is random and whose output layer is solved exactly.
  Mean squared pixel error on the test latents, in the image's own scale ([-1, 1] here).
"""

from __future__ import annotations

import torch


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _ridge(features: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """Weights ``(F + 1, K)`` minimising ``||[features, 1] W - targets||^2 + ridge ||W[:F]||^2``."""
    design = torch.cat([features, torch.ones_like(features[:, :1])], 1).double()
    gram = design.T @ design
    penalty = torch.full((design.shape[1],), float(ridge), dtype=gram.dtype)
    penalty[-1] = 0.0  # the bias is not shrunk
    gram = gram + torch.diag(penalty)
    return torch.linalg.solve(gram, design.T @ targets.double())


def _apply(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    design = torch.cat([features, torch.ones_like(features[:, :1])], 1).double()
    return design @ weights


def _check(z_train: torch.Tensor, z_test: torch.Tensor, n_train: int, n_test: int) -> None:
    if z_train.ndim != 2 or z_test.ndim != 2 or z_train.shape[1] != z_test.shape[1]:
        raise ValueError(f"latents must be (N, d) with equal d; got {tuple(z_train.shape)} and {tuple(z_test.shape)}")
    if z_train.shape[0] != n_train or z_test.shape[0] != n_test:
        raise ValueError(f"latents and targets disagree on N: {z_train.shape[0]} vs {n_train}, {z_test.shape[0]} vs {n_test}")
    if not (torch.isfinite(z_train).all() and torch.isfinite(z_test).all()):
        raise ValueError("latents contain NaN or Inf; the run diverged")


def linear_probe_accuracy(
    z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor, ridge: float = 1e-3
) -> float:
    """Test accuracy of a least-squares linear classifier on frozen latents.

    Args:
        z_train: ``(N, d)`` training latents; y_train: ``(N,)`` class indices.
        z_test: ``(M, d)`` test latents; y_test: ``(M,)`` class indices.
        ridge: penalty per training sample (the solver uses ``ridge * N``).

    Returns: accuracy in [0, 1].
    """
    _check(z_train, z_test, len(y_train), len(y_test))
    classes = int(max(y_train.max(), y_test.max())) + 1
    a, b = _standardise(z_train.float(), z_test.float())
    targets = torch.nn.functional.one_hot(y_train, classes).double()
    weights = _ridge(a, targets, ridge * len(a))
    predicted = _apply(weights, b).argmax(1)
    return float((predicted == y_test).double().mean())


def random_relu_features(z: torch.Tensor, features: int, seed: int) -> torch.Tensor:
    """``[z, relu(z W + b)]`` with ``W ~ N(0, 1/d)`` ``(d, features)``, ``b ~ N(0, 1)`` from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    d = z.shape[1]
    w = torch.randn(d, features, generator=generator) / d**0.5
    b = torch.randn(features, generator=generator)
    return torch.cat([z, torch.relu(z @ w + b)], 1)


def decoder_probe_mse(
    z_train: torch.Tensor,
    x_train: torch.Tensor,
    z_test: torch.Tensor,
    x_test: torch.Tensor,
    features: int = 1024,
    ridge: float = 1e-3,
    seed: int = 0,
) -> float:
    """Test MSE of a fresh decoder fitted in closed form on frozen latents.

    Args:
        z_train: ``(N, d)`` training latents; x_train: ``(N, P)`` their images (flattened).
        z_test: ``(M, d)``; x_test: ``(M, P)``.
        features: random ReLU features of the decoder's hidden layer.
        ridge: penalty per training sample.
        seed: seed of the random features.

    Returns: mean squared error per pixel (units of the images' scale squared).
    """
    _check(z_train, z_test, len(x_train), len(x_test))
    a, b = _standardise(z_train.float(), z_test.float())
    fa = random_relu_features(a, features, seed)
    fb = random_relu_features(b, features, seed)
    weights = _ridge(fa, x_train.reshape(len(x_train), -1), ridge * len(fa))
    predicted = _apply(weights, fb)
    return float(((predicted - x_test.reshape(len(x_test), -1).double()) ** 2).mean())
