"""Study "clarity": what each layer represents, by reconstructing the input from its embedding.

Badger (2022; REFERENCE 6, seed 003): reconstruct a test image from layer l's embedding by gradient
descent on the input, and measure how far the reconstruction is from the image (``m_i``) although
its embedding is close (``m_g`` vs ``m_r``). pclab adds the PCN's own route back: clamp the layer,
relax the rest of the network, read the image.

The main result is on trained networks: one architecture trained by PC learning, by backprop through
inference (relaxing from zeros) and by backprop, each with the same budget and kept at its best
validation epoch, compared layer by layer as paired differences over seeds. The gradient route runs
pclab's procedure (Adam, annealed step) or Badger's exact one (``procedure="badger"``); the width test
runs both, on untrained and trained one-hidden-layer chains.

Modules: :mod:`.inversion` (inversion, blur, metrics, PSNR/SSIM; model-agnostic), :mod:`.pcn`
(layers, embeddings and the native route of a PCN), :mod:`.trials` (the trial functions),
:mod:`.study` (presets, trials, :func:`run`), :mod:`.reporting` (tables, figures, summary).

Usage::

    from pclab.studies import clarity
    clarity.run("quick", Path("out/clarity"))                       # trains its own models
    clarity.run("quick", Path("out/clarity"), runs=[Path("runs/a")])  # study given run directories
"""

from .inversion import Clarity, InversionConfig, clarity_metrics, gaussian_blur, initial_input, invert, psnr, ssim
from .pcn import embedding_layers, forward_embedding, has_generative_path, layer_depths, native_reconstruction
from .study import PRESETS, resolve, run, trials

__all__ = [
    "PRESETS", "Clarity", "InversionConfig", "clarity_metrics", "embedding_layers", "forward_embedding",
    "gaussian_blur", "has_generative_path", "initial_input", "invert", "layer_depths", "native_reconstruction",
    "psnr", "resolve", "run", "ssim", "trials",
]
