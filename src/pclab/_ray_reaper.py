"""Ends an embedded Ray's processes once the process that started them is gone, even after SIGKILL.

Run by :mod:`pclab.sweep` as ``python -I _ray_reaper.py NAME=VALUE TEMP_DIR`` (Linux) in a session of
its own, with a pipe from the driver as stdin. Ray kills its GCS and raylet with the driver (the kernel's
parent-death signal), but the raylet's agents outlive it and ignore SIGTERM. The driver starts Ray with
``NAME=VALUE`` in its environment, which the Ray processes inherit. While the driver runs, this process
notes every Ray process every :data:`POLL_SECONDS`: those whose environment holds ``NAME=VALUE`` and,
as a process title may overwrite the start of that environment, every descendant of one of them. When
stdin reaches end of file (the driver closed it after ``ray.shutdown()``, or died), the Ray processes
still running get SIGTERM, then SIGKILL one second later, and Ray's private temporary folder
``TEMP_DIR`` is removed. Standard library only: this file runs outside the package.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 1.0


def processes() -> dict[int, tuple[int, str]]:
    """``pid -> (parent pid, start time)`` of every running process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z":
            table[int(name)] = (int(fields[1]), fields[19])
    return table


def has_entry(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return entry in handle.read().split(b"\0")
    except OSError:  # gone, or another user's process
        return False


def ray_processes(entry: bytes, known: dict[int, str], skip: set[int], others: set[tuple[int, str]]) -> dict[int, str]:
    """``pid -> start time`` of the Ray processes now running: the ``known`` ones still there, those
    whose environment holds ``entry``, and their descendants. ``others`` collects the processes found
    without ``entry`` (an environment does not change: each is read once)."""
    table = processes()
    found = {pid: start for pid, start in known.items() if table.get(pid, (0, None))[1] == start}
    for pid, (_, start) in table.items():
        if pid in skip or pid in found or (pid, start) in others:
            continue
        if has_entry(pid, entry):
            found[pid] = start
        else:
            others.add((pid, start))
    grew = True
    while grew:
        grew = False
        for pid, (parent, start) in table.items():
            if parent in found and pid not in found and pid not in skip:
                found[pid] = start
                grew = True
    return found


def reap(entry: bytes, known: dict[int, str], skip: set[int], others: set[tuple[int, str]]) -> None:
    """SIGTERM the Ray processes; SIGKILL those still there after :data:`GRACE_SECONDS`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        known = ray_processes(entry, known, skip, others)
        for pid in known:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not known:
            return
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + GRACE_SECONDS
            while time.monotonic() < deadline and ray_processes(entry, known, skip, others):
                time.sleep(0.05)


def main(argv: list[str]) -> None:
    entry, temp_dir = argv[0].encode(), argv[1]
    skip = {os.getpid(), os.getppid()}  # the driver, if it only closed the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    known: dict[int, str] = {}
    others: set[tuple[int, str]] = set()
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], POLL_SECONDS)
        if ready and not os.read(stdin, 65536):
            break
        known = ray_processes(entry, known, skip, others)
    reap(entry, known, skip, others)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
