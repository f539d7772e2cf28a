"""Render a report in headless Chromium (Debian's ``chromium``, driven by its command line) and
measure its layout: a copy of the page gets a script that, once every image has loaded, writes the
measurements into the DOM, which ``--dump-dom`` prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 1280, 800

_MEASURE = """
<script>
window.addEventListener('load', function () {
  var box = document.getElementById('findings');
  var r = box ? box.getBoundingClientRect() : null;
  var imgs = Array.prototype.slice.call(document.images).map(function (img) {
    var b = img.getBoundingClientRect();
    return {complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            top: b.top, left: b.left, width: b.width, bottom: b.bottom, right: b.right};
  });
  var out = {innerWidth: window.innerWidth, innerHeight: window.innerHeight,
             scrollWidth: document.documentElement.scrollWidth,
             findings: r ? {top: r.top, left: r.left, bottom: r.bottom, right: r.right, items: box.querySelectorAll('li').length} : null,
             images: imgs};
  var node = document.createElement('pre');
  node.id = 'pclab-measure';
  node.textContent = JSON.stringify(out);
  document.body.appendChild(node);
});
</script>
"""


def chromium() -> str | None:
    """The Chromium executable, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    exe = chromium()
    assert exe is not None
    command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": str(profile)})


def measure(page: Path, timeout: float = 90.0) -> dict[str, Any]:
    """Layout of ``page`` at 1280x800: viewport, page scroll width, the Findings box's rectangle and
    every image's load state and rectangle (CSS pixels, relative to the top of the page)."""
    page = Path(page)
    with tempfile.TemporaryDirectory() as tmp:
        probe = page.with_name(f".measure-{os.getpid()}.html")
        text = page.read_text()
        probe.write_text(text.replace("</body>", _MEASURE + "</body>", 1) if "</body>" in text else text + _MEASURE)
        try:
            done = _run(["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()], Path(tmp), timeout)
        finally:
            probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="pclab-measure">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise RuntimeError(f"chromium printed no measurements (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, target: Path, timeout: float = 90.0) -> Path:
    """A 1280x800 PNG of the first screen of ``page``."""
    target = Path(target)
    with tempfile.TemporaryDirectory() as tmp:
        done = _run(["--virtual-time-budget=10000", f"--screenshot={target.resolve()}", Path(page).resolve().as_uri()], Path(tmp), timeout)
    if not target.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return target
