"""Ray's processes end with the study that started them, and Ray is not an open door.

A ``tiny`` study runs in a subprocess that leads a session of its own; the Ray processes it starts
inherit that session, so "no Ray process of this study remains" is checked by session id, whatever
else (other tests, other Ray clusters) runs on the machine. The cluster test starts a real head node
(``ray start --head``, token authentication on) on the loopback address and stops only that node, by
its session. Linux only (``/proc``)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import pclab

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]
pytest.importorskip("ray")

SRC = str(Path(pclab.__file__).resolve().parents[1])
RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_AUTH}
    return {**env, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent id, session id) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pids) -> list[int]:
    """The processes among ``pids`` that still run (a zombie has ended)."""
    return [p for p in pids if (s := _stat(p)) is not None and s[0] != "Z"]


def _in_session(sid: int) -> list[int]:
    return _alive(int(n) for n in os.listdir("/proc") if n.isdigit() and (s := _stat(int(n))) is not None and s[2] == sid)


def _wait_gone(pids_fn, seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := pids_fn()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _describe(pids) -> str:
    return "; ".join(f"{p}: {' '.join(_cmdline(p))[:120]}" for p in pids)


def _study(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "pclab", "study", "dynamics", "--preset", "tiny", "--out", str(out), *extra]
    return subprocess.Popen(command, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_running_ray(study: subprocess.Popen, out: Path) -> list[int]:
    """Wait until the study's Ray runs trials (Tune has started, the raylet's agents are up); return the reaper's id."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and study.poll() is None:
        agents = [p for p in _in_session(study.pid) if (_cmdline(p) or [""])[0].startswith("ray::")]
        if len(agents) >= 2 and (out / "ray").exists():
            break
        time.sleep(0.2)
    assert study.poll() is None, study.communicate()
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and (s := _stat(int(n))) and s[1] == study.pid
            and any(a.endswith("_ray_reaper.py") for a in _cmdline(int(n)))]


def _progress_line(line: str) -> bool:
    """A study's progress output (:class:`pclab.sweep.Progress`): the header or a finished trial's line."""
    return bool(re.match(r"\d+ trials to run \(|\[\d+/\d+\] ", line))


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_ends_a_study_with_exit_130_one_line_and_no_ray_process_left(tmp_path, ctrl_c):
    study = _study(tmp_path / "study")
    try:
        reapers = _wait_for_running_ray(study, tmp_path / "study")
        if ctrl_c:  # a terminal sends SIGINT to the foreground process group: the driver and Ray's own processes
            os.killpg(study.pid, signal.SIGINT)
        else:
            study.send_signal(signal.SIGTERM)
        _, err = study.communicate(timeout=120)
        assert study.returncode == 130, err
        # besides the study's progress lines (its header, one line per finished trial), exactly one line
        lines = [line for line in err.splitlines() if line.strip() and not _progress_line(line)]
        assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
        assert not (left := _wait_gone(lambda: _in_session(study.pid))), _describe(left)
        assert len(reapers) == 1 and not _wait_gone(lambda: _alive(reapers))
    finally:
        study.kill()
        study.communicate()


def test_kill_9_of_a_study_leaves_no_ray_process_of_it(tmp_path):
    study = _study(tmp_path / "study")
    try:
        reapers = _wait_for_running_ray(study, tmp_path / "study")
        temp_dir = Path(_cmdline(reapers[0])[-2])
        assert temp_dir.name.startswith("pclab-ray-") and temp_dir.exists()
        study.kill()
        study.communicate(timeout=120)
        assert study.returncode == -signal.SIGKILL
        assert not (left := _wait_gone(lambda: _in_session(study.pid))), _describe(left)
        assert not _wait_gone(lambda: _alive(reapers)) and not temp_dir.exists()
    finally:
        study.kill()
        study.communicate()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    """A Ray head node on 127.0.0.1 with token authentication, in a session of its own; yields
    ``(address, token)`` and stops that node (and only it) afterwards."""
    token, port = secrets.token_hex(32), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="pclab-head-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    log = tmp_path / "head.log"
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard=false", "--num-cpus", "2", "--disable-usage-stats"]
    with open(log, "w") as handle:
        head = subprocess.Popen(command, env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text() and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Ray runtime started" in log.read_text(), log.read_text()
        yield f"127.0.0.1:{port}", token
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in _in_session(head.pid):
            os.kill(pid, signal.SIGKILL)
        head.wait()
        _wait_gone(lambda: _in_session(head.pid))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_study_runs_on_an_authenticated_cluster_and_a_client_without_the_token_is_refused(tmp_path, head_node):
    address, token = head_node
    refused = _study(tmp_path / "refused", "--address", address)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, err
    assert err.strip().splitlines() == [err.strip()] and "requires token authentication; set RAY_AUTH_MODE=token" in err
    wrong = _study(tmp_path / "wrong", "--address", address, env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64))
    _, err = wrong.communicate(timeout=120)
    assert wrong.returncode == 2 and "refused this client's token" in err, err

    study = _study(tmp_path / "study", "--address", address, "--set", "seeds=[0]", env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    out, err = study.communicate(timeout=600)
    assert study.returncode == 0, out + err
    assert (tmp_path / "study" / "report.html").exists()
