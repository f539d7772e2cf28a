"""Accelerators of the PC core: faster ways to compute exactly what the reference code computes.

:func:`~pclab.core.relax.relax` and the learning rules are the reference; :mod:`.dispatch` is the
only door through which they reach anything here, and :func:`path` tells which accelerator (or
``"reference"``) a given model, inference and rule take. Each accelerator is tested equal to the
reference in ``tests/fast``.

Read in this order: :mod:`.dispatch` (which runs when), :mod:`.chain` (Dense chains: relaxation, PC
weight gradients, incremental PC), :mod:`.chain_adjoint` (bp-through-inference's hand-derived
reverse pass) and :mod:`.differentiable` (that pass as an autograd Function), :mod:`.compiled` and
:mod:`.compiled_adjoint` (the same under ``torch.compile``), :mod:`.error_chain` (a step of the error
parametrisation, ePC, on a Dense chain, compiled).
"""

from .dispatch import ACCELERATORS, anchored, path

__all__ = ["ACCELERATORS", "anchored", "path"]
