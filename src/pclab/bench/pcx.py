"""PCX (JAX) on the target problem, in its own virtual environment: the installer, a one-shot run and
a worker process timed in the target's rounds. Runs :mod:`pclab.bench.pcx_script` there (a script
that imports JAX, optax and PCX, never pclab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .timing import ChunkTimer

SCRIPT = Path(__file__).with_name("pcx_script.py")
"""The PCX side, run by the PCX environment's Python."""


PCX_REQUIREMENT = "pcx>=0.6,<0.7"


def default_pcx_venv() -> Path:
    """Where the PCX comparison keeps its own virtual environment: ``$PCLAB_PCX_VENV`` or
    ``<user cache>/pclab/pcx-venv`` (outside any repository)."""
    env = os.environ.get("PCLAB_PCX_VENV")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("pclab", appauthor=False) / "pcx-venv"


def ensure_pcx_venv(venv: Path) -> Path:
    """The Python of a virtual environment with PCX 0.6 (JAX CPU), created with ``venv`` and
    ``pip install pcx`` if it does not exist yet."""
    python = venv / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import pcx, jax, optax"], capture_output=True, text=True)
        if check.returncode == 0:
            return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", PCX_REQUIREMENT], check=True)
    return python


def pcx_comparison(venv: Path | None = None, batches: int = 200, chunk: int = 20, steps: int = 20, batch: int = 64,
                   threads: int | None = None) -> dict[str, Any]:
    """Time PCX on the target problem (:data:`SCRIPT` in the PCX environment): PC and a plain
    JAX backprop loop, per batch, compile time apart."""
    python = ensure_pcx_venv(Path(venv) if venv is not None else default_pcx_venv())
    cmd = [str(python), str(SCRIPT), "--batches", str(batches), "--chunk", str(chunk), "--steps", str(steps), "--batch", str(batch)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"PCX benchmark failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return {"command": " ".join(cmd), **json.loads(out.stdout.strip().splitlines()[-1])}


def pcx_from_target(worker: PcxWorker, target_result: dict[str, Any]) -> dict[str, Any]:
    """The ``pcx`` result of a target run that timed PCX in its rounds (:func:`target` with ``pcx``)."""
    rows = {r["algorithm"]: r for r in target_result["rows"]}
    pc, bp = rows["pcx-pc"], rows["pcx-bp"]
    out = {k: v for k, v in worker.info.items() if k != "ready"}
    out.update({
        "command": " ".join(worker.command), "interleaved_with_target": True, "device": "cpu",
        "pc_batch_ms": pc["batch_ms"], "pc_batch_ms_best": pc["batch_ms_best"], "bp_batch_ms": bp["batch_ms"],
        "bp_batch_ms_best": bp["batch_ms_best"], "pc_epoch_s": pc["epoch_s"], "bp_epoch_s": bp["epoch_s"],
        "pc_over_bp": pc["batch_ms"] / bp["batch_ms"],
    })
    for name, ratio in target_result["ratio_to_pcx_pc"].items():
        out[f"pclab_{name}_over_pcx_pc"] = ratio["median"]
        out[f"pclab_{name}_over_pcx_pc_paired"] = ratio["paired"]
    return out


class PcxWorker:
    """``pcx_script.py --serve`` running in the PCX environment: PCX's PC and backprop steps on the
    target problem, timed chunk by chunk on request (:meth:`timer`), compiled once at the start
    (``info["pc_compile_s"]``). A context manager; the process ends when it closes."""

    def __init__(self, command: Sequence[str]):
        self.command = list(command)
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"PCX worker did not start ({' '.join(self.command)}): {self.info}")

    @classmethod
    def start(cls, venv: Path | None = None, batches: int = 938, steps: int = 20, batch: int = 64,
              threads: int | None = None) -> PcxWorker:
        """The worker in ``venv`` (default :func:`default_pcx_venv`, created if missing) with its
        own ``batches`` random batches."""
        python = ensure_pcx_venv(Path(venv) if venv is not None else default_pcx_venv())
        command = [str(python), str(SCRIPT), "--serve", "--batches", str(batches), "--steps", str(steps), "--batch", str(batch)]
        return cls(command + (["--threads", str(threads)] if threads is not None else []))

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            error = self.process.stderr.read() if self.process.stderr is not None else ""
            raise RuntimeError(f"PCX worker ended ({' '.join(self.command)}):\n{error[-3000:]}")
        return json.loads(line)

    def time(self, what: str, start: int, count: int) -> float:
        """Seconds for ``count`` PCX steps of ``what`` (``"pc"`` or ``"bp"``) on its batches from ``start``."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"what": what, "start": start, "count": count}) + "\n")
        self.process.stdin.flush()
        return float(self._read()["seconds"])

    def timer(self, what: str) -> ChunkTimer:
        """``what``'s steps as a :class:`ChunkTimer` for :func:`interleaved`."""
        worker = self

        class _Timer(ChunkTimer):
            def time(self, start: int, count: int) -> float:
                return worker.time(what, start, count)

        return _Timer()

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> PcxWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
