"""Per-batch training cost of the depth study's ``full``-preset VGG-BN trials, for its run-time estimate.

One thread (as a study trial runs), batch and width of the preset, Fashion-MNIST: 3 warm-up batches, then
``--batches`` timed ones per depth and variant; ``--compile`` sets ``inference.compile`` (the PC variants' latent
gradient as a compiled graph; compilation happens in the warm-up batches). Usage::

    python bench/depth_vgg_timing.py --json bench/results/depth-vgg/full_preset_batch_ms.json
"""

from __future__ import annotations

import argparse
import time

import torch

from pclab.io import write_json
from pclab.studies import depth as study
from pclab.train import load_data, make_batch, prepare


def batch_ms(depth: int, variant: str, batches: int, compile: bool = False) -> float:
    """Mean wall milliseconds of one training step of a full-preset VGG-BN trial (``compile``: with
    ``inference.compile``)."""
    full = study.PRESETS["full"]
    trial = {"kind": "accuracy", "epochs": 1, "train_subset": 32 * (batches + 3), "test_subset": 256,
             "training": full["training"], "dataset": "fashion-mnist", "model": "vgg-bn", "depth": depth,
             "variant": variant, "seed": 0, "vgg_width": full["vgg_width"]}
    config = study._config(trial, 784, 10)
    config = config.model_copy(update={"inference": config.inference.model_copy(update={"compile": compile})})
    data = load_data(config)
    run = prepare(config, data)
    size, train = config.data.batch_size, data[0]
    steps = [make_batch(config, train.images[i * size:(i + 1) * size], train.labels[i * size:(i + 1) * size], train.classes)
             for i in range(batches + 3)]
    for b in steps[:3]:
        run.rule.step(b)
    start = time.perf_counter()
    for b in steps[3:]:
        run.rule.step(b)
    return (time.perf_counter() - start) / batches * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=37, help="timed batches per depth and variant")
    parser.add_argument("--compile", action="store_true", help="with inference.compile")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {}
    for depth in study.PRESETS["full"]["vgg_depths"]:
        for variant in ("pc", "spiking+fu", "decaying+fu", "bp"):
            out[f"vgg{depth}/{variant}"] = batch_ms(depth, variant, args.batches, args.compile)
            print(f"VGG-BN depth {depth} {variant}: {out[f'vgg{depth}/{variant}']:.1f} ms per batch", flush=True)
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
