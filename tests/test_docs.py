"""The documentation site builds without a single warning (``mkdocs build --strict``), as CI builds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_docs_build_strictly_with_the_api_reference(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -c constraints.txt -e '.[docs]'")
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "core" / "index.html").read_text()
    for module in ("energy", "graph", "relax", "learning", "precision", "optim", "readout"):
        assert f"pclab.core.{module}" in api, module
    assert ":class:`" not in api and ":func:`" not in api  # docstrings' Sphinx roles became Markdown code
    assert (site / "benchmarks" / "index.html").is_file() and (site / "studies" / "depth" / "index.html").is_file()
