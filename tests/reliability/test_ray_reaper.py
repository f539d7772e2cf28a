"""The reaper of an embedded Ray, without Ray: a marked process and its descendants end with the
driver's pipe -- also a descendant orphaned earlier, without the mark, ignoring SIGTERM (as the
raylet's agents are once the raylet is gone) -- while other processes are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pclab

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REAPER = Path(pclab.__file__).with_name("_ray_reaper.py")
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
# a "raylet": starts an "agent" with an empty environment (no mark), then waits
PARENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], env={{}}); time.sleep(120)"


def _running(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{name}/stat").read_text() if name.isdigit() else ""
        except OSError:
            continue
        if text and int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(name))
    return found


def _until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_the_reaper_ends_marked_processes_and_their_orphaned_descendants_only(tmp_path):
    temp_dir = tmp_path / "ray-temp"
    temp_dir.mkdir()
    reaper = subprocess.Popen([sys.executable, "-I", str(REAPER), "PCLAB_RAY_OWNER=test", str(temp_dir)], stdin=subprocess.PIPE,
                              start_new_session=True)
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env={**os.environ, "PCLAB_RAY_OWNER": "test"})
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    agents: list[int] = []
    try:
        assert _until(lambda: bool(_children(parent.pid)))
        agents = _children(parent.pid)
        time.sleep(1.5)  # the reaper notes the tree (it polls every 0.5 s)
        parent.kill()  # the "raylet" dies first: the agent is orphaned
        parent.wait()
        assert _running(agents[0])
        reaper.stdin.close()  # the driver closes its pipe (or dies)
        reaper.wait(timeout=30)
        assert _until(lambda: not _running(agents[0]))
        assert _running(bystander.pid) and not temp_dir.exists()
    finally:
        for pid in agents:
            if _running(pid):
                os.kill(pid, 9)
        for process in (parent, bystander, reaper):
            process.kill()
            process.wait()
