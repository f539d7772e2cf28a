"""Builders of common PCNs: MLPs, generative chains, the Rathjens-Wiskott hybrid family, VGG-style
conv nets and transposed-conv generators; deep networks (residual MLPs with muPC scalings, VGG with
weight-phase BatchNorm), an init that keeps deep tanh MLPs trainable and an orthogonal init."""

from .builders import conv_channels_last, deconv_generator, generative_mlp, mlp, rathjens_wiskott, vgg
from .deep import deep_mlp, lecun_init, mupc_scalings, orthogonal_init, residual_mlp, vgg_bn

__all__ = [
    "conv_channels_last", "deconv_generator", "deep_mlp", "generative_mlp", "lecun_init", "mlp", "mupc_scalings", "orthogonal_init",
    "rathjens_wiskott", "residual_mlp", "vgg", "vgg_bn",
]
