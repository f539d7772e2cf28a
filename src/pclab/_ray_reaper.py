"""Ends an embedded Ray's processes once the process that started them is gone, even after SIGKILL.

Run by :mod:`pclab.sweep` as ``python -I _ray_reaper.py NAME=VALUE TEMP_DIR`` (Linux) in a session of
its own, with a pipe from the driver as stdin. Ray kills its GCS and raylet with the driver (the kernel's
parent-death signal), but the raylet's agents and a stray worker outlive it and ignore SIGTERM. The
driver starts Ray with ``NAME=VALUE`` in its environment, which every Ray process inherits; when stdin
reaches end of file (the driver closed it after ``ray.shutdown()``, or died), every process of this user
whose environment holds ``NAME=VALUE`` gets SIGTERM, then SIGKILL one second later, and Ray's private
temporary folder ``TEMP_DIR`` is removed. Standard library only: this file runs outside the package.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

GRACE_SECONDS = 1.0


def marked(entry: bytes, skip: set[int]) -> list[int]:
    """Ids of the processes (other than ``skip``) whose environment holds ``entry`` (``b"NAME=VALUE"``)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if entry in handle.read().split(b"\0"):
                    found.append(int(name))
        except OSError:  # gone, or another user's process
            continue
    return found


def reap(entry: bytes, skip: set[int]) -> None:
    """SIGTERM the marked processes; SIGKILL those still there after :data:`GRACE_SECONDS`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked(entry, skip)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not pids:
            return
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + GRACE_SECONDS
            while time.monotonic() < deadline and marked(entry, skip):
                time.sleep(0.05)


def main(argv: list[str]) -> None:
    entry, temp_dir = argv[0].encode(), argv[1]
    skip = {os.getpid(), os.getppid()}  # the driver, if it only closed the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass
    reap(entry, skip)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
