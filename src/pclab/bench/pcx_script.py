"""PCX (JAX) timing of the same PC problem as pclab's speed target: a standalone script.

It imports only JAX, optax and PCX, never pclab: :func:`pclab.bench.pcx.pcx_comparison` creates a
separate virtual environment with ``pcx`` 0.6 (JAX CPU) and runs this file there with that
environment's Python. Printed result: one JSON object.

Problem (as pclab's ``target``): MLP 784-128-128-10 tanh, Gaussian (squared-error) energies,
batch 64, ``T`` latent SGD steps (lr 0.1) from a feed-forward initialisation with the label
clamped, then one Adam step (lr 1e-3) on the batch-mean weight gradient; random data of MNIST's
shape. Also a plain JAX backprop loop (MSE, Adam) on the same MLP, for PCX's own PC/BP ratio.
Compilation (the first call of each jitted function) is timed apart.

Usage (with the PCX environment's Python)::

    python src/pclab/bench/pcx_script.py --batches 200 --steps 20 --batch 64

With ``--serve`` it times on request instead (:class:`pclab.bench.pcx.PcxWorker`, which interleaves PCX's
chunks with pclab's in one timing loop): after setting up and compiling it prints one JSON line
(versions, compile times), then answers each JSON line ``{"what": "pc" | "bp", "start": k, "count": m}``
on standard input with ``{"seconds": s}``, the wall time of ``m`` training steps on batches ``k, k + 1,
...`` (cyclically), until standard input closes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--widths", default="784,128,128,10")
    parser.add_argument("--threads", type=int, default=None, help="1: single-threaded XLA (default: all cores)")
    parser.add_argument("--serve", action="store_true", help="time chunks on request (see the module docstring)")
    args = parser.parse_args()
    if args.threads == 1:
        import os

        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import pcx as px
    import pcx.functional as pxf
    import pcx.nn as pxnn
    import pcx.predictive_coding as pxc
    import pcx.utils as pxu

    widths = [int(w) for w in args.widths.split(",")]
    px.RKG.seed(0)

    class MLP(pxc.EnergyModule):
        def __init__(self, widths):
            super().__init__()
            self.act_fn = px.static(jax.nn.tanh)
            self.layers = [pxnn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
            self.vodes = [pxc.Vode() for _ in widths[1:]]
            self.vodes[-1].h.frozen = True  # the label stays clamped

        def __call__(self, x, y):
            for vode, layer in zip(self.vodes[:-1], self.layers[:-1]):
                x = vode(self.act_fn(layer(x)))
            x = self.vodes[-1](self.layers[-1](x))
            if y is not None:
                self.vodes[-1].set("h", y)
            return self.vodes[-1].get("u")

    @pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0, 0), out_axes=0)
    def forward(x, y, *, model):
        return model(x, y)

    @pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0,), out_axes=(None, 0), axis_name="batch")
    def energy(x, *, model):
        y_ = model(x, None)
        return jax.lax.psum(model.energy(), "batch"), y_  # sum over the batch: per-sample latent gradients

    @pxf.jit(static_argnums=0)
    def train_on_batch(T, x, y, *, model, optim_w, optim_h):
        model.train()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(x, y, model=model)
        optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
        for _ in range(T):
            with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                _, g = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]), has_aux=True)(energy)(x, model=model)
            optim_h.step(model, g["model"])
        optim_h.clear()
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(x, model=model)
        optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])  # batch mean

    model = MLP(widths)
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(jnp.zeros((args.batch, widths[0])), None, model=model)
    optim_h = pxu.Optim(lambda: optax.sgd(0.1))
    optim_w = pxu.Optim(lambda: optax.adam(1e-3), pxu.M(pxnn.LayerParam)(model))

    rng = np.random.default_rng(0)
    n = args.batches
    xs = rng.random((n, args.batch, widths[0]), dtype=np.float32)
    ys = np.eye(widths[-1], dtype=np.float32)[rng.integers(0, widths[-1], (n, args.batch))]
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)

    def sync():
        jax.block_until_ready(jax.tree_util.tree_leaves(model.layers[-1]))

    start = time.perf_counter()
    train_on_batch(args.steps, xs[0], ys[0], model=model, optim_w=optim_w, optim_h=optim_h)
    sync()
    pc_compile = time.perf_counter() - start

    # plain JAX backprop on the same MLP (own parameters), MSE loss, Adam
    keys = jax.random.split(jax.random.PRNGKey(0), len(widths) - 1)
    params = [
        (jax.random.uniform(k, (b, a), minval=-1 / math.sqrt(a), maxval=1 / math.sqrt(a)), jnp.zeros((b,)))
        for k, a, b in zip(keys, widths[:-1], widths[1:])
    ]
    adam = optax.adam(1e-3)
    opt_state = adam.init(params)

    def loss_fn(p, x, y):
        for w, b in p[:-1]:
            x = jnp.tanh(x @ w.T + b)
        w, b = p[-1]
        return jnp.mean((x @ w.T + b - y) ** 2)

    @jax.jit
    def bp_step(p, s, x, y):
        g = jax.grad(loss_fn)(p, x, y)
        updates, s = adam.update(g, s, p)
        return optax.apply_updates(p, updates), s

    start = time.perf_counter()
    params, opt_state = bp_step(params, opt_state, xs[0], ys[0])
    jax.block_until_ready(params)
    bp_compile = time.perf_counter() - start

    info = {
        "pcx_version": getattr(px, "__version__", None) or _version("pcx"),
        "jax_version": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "widths": widths, "batch": args.batch, "steps": args.steps, "threads": args.threads,
        "pc_compile_s": pc_compile, "bp_compile_s": bp_compile,
    }

    def run(what: str, start_index: int, count: int) -> float:
        """Seconds for ``count`` training steps of ``what`` on batches from ``start_index`` on."""
        nonlocal params, opt_state
        start = time.perf_counter()
        for i in range(start_index, start_index + count):
            if what == "pc":
                train_on_batch(args.steps, xs[i % n], ys[i % n], model=model, optim_w=optim_w, optim_h=optim_h)
            else:
                params, opt_state = bp_step(params, opt_state, xs[i % n], ys[i % n])
        if what == "pc":
            sync()
        else:
            jax.block_until_ready(params)
        return time.perf_counter() - start

    if args.serve:
        print(json.dumps({"ready": True, "batches": n, **info}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("what") not in ("pc", "bp"):
                raise SystemExit(f"pcx_script --serve: expected what 'pc' or 'bp', got {request.get('what')!r}")
            print(json.dumps({"seconds": run(request["what"], int(request["start"]), int(request["count"]))}), flush=True)
        return

    pc_chunks, bp_chunks = [], []
    k = 0
    while k < n:
        m = min(args.chunk, n - k)
        pc_chunks.append(run("pc", k, m) / m)
        bp_chunks.append(run("bp", k, m) / m)
        k += m

    epoch_batches = math.ceil(60000 / args.batch)
    pc, bp = statistics.median(pc_chunks), statistics.median(bp_chunks)
    print(json.dumps({
        **info, "batches_timed": n,
        "pc_batch_ms": 1e3 * pc, "pc_batch_ms_best": 1e3 * min(pc_chunks),
        "bp_batch_ms": 1e3 * bp, "bp_batch_ms_best": 1e3 * min(bp_chunks),
        "pc_epoch_s": pc * epoch_batches, "bp_epoch_s": bp * epoch_batches,
        "pc_over_bp": pc / bp,
    }))


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
