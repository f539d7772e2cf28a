"""Speed benchmarks (issue 8): ``python bench/speed.py [target algorithms scaling memory] [--with-pcx]``.

A thin front end to :func:`pclab.bench.run_speed_benchmark` (the ``pclab bench`` command calls the
same function). Writes ``bench/results/speed.json`` unless ``--json`` says otherwise.

Examples::

    python bench/speed.py target                       # issue 2's PC/BP epoch ratio (~2 min)
    python bench/speed.py target --with-pcx --pcx-venv /work/pcx-venv
    python bench/speed.py algorithms scaling memory    # the full table (~15 min on 2 cores)
    python bench/speed.py target algorithms scaling memory --device cuda --json bench/results/speed_cuda.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pclab.bench import script_main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--json" not in argv:
        argv += ["--json", str(Path(__file__).parent / "results" / "speed.json")]
    script_main(argv)
