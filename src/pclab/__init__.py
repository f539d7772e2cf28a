"""pclab: predictive coding networks in PyTorch, learned three ways, and a laboratory to study them."""

from . import core  # noqa: F401  (pclab.core by name, too)
from .core import *  # noqa: F401,F403  (the core is the public API)

__version__ = "0.1.0"
