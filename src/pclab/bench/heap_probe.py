"""Run as ``python -m pclab.bench.heap_probe '[algorithm, steps, batch, widths]'``: one training step's
peak memory in this fresh process (Linux, glibc), printed as one JSON line ``{"heap": MiB, "rss": MiB}``.

``heap``: the peak of live heap bytes (``mallinfo2``, sampled after every tensor operation) over
their level before the step; ``rss``: the peak resident size (``VmHWM``, reset before the step)
over the size before it (includes allocator slack). One thread: one malloc arena, which
``mallinfo2`` sees. Used by :func:`pclab.bench.peak_memory.peak_memory_mib`.
"""

from __future__ import annotations

import ctypes
import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .models import mlp_pcn
from .steps import make_algorithm
from .timing import data


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def live() -> int:
    """Bytes in use on the heap (small blocks) plus mmapped blocks."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def rss_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS:``, ``VmHWM:``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class Peak(TorchDispatchMode):
    """Samples the heap after every tensor operation."""

    peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        Peak.peak = max(Peak.peak, live())
        return out


def main(argument: str) -> dict[str, float]:
    algorithm, steps, batch, widths = json.loads(argument)
    torch.set_num_threads(1)  # one thread: one malloc arena, which mallinfo2 sees
    model = mlp_pcn(widths)
    (x, y), = data(batch, 1, (widths[0],), classes=widths[-1])
    step = make_algorithm(algorithm, model, steps)
    step(x, y)  # warm up: optimiser state, lazy initialisation
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the resident peak (VmHWM) to the current size
    rss_before, heap_before = rss_kib("VmRSS:"), live()
    Peak.peak = heap_before
    with Peak():
        step(x, y)
    return {"heap": (Peak.peak - heap_before) / 2**20, "rss": (rss_kib("VmHWM:") - rss_before) / 1024}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
