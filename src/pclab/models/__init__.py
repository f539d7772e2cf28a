"""Builders of common PCNs: MLPs, generative chains, the Rathjens-Wiskott hybrid family, VGG-style
conv nets and transposed-conv generators."""

from .builders import deconv_generator, generative_mlp, mlp, rathjens_wiskott, vgg

__all__ = ["deconv_generator", "generative_mlp", "mlp", "rathjens_wiskott", "vgg"]
