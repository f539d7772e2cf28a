"""Running many runs (configs x seeds): a study's trials, on Ray Tune or in this process.

A *trial* is a JSON-able dict of parameters; its id is a hash of them, so the same trial run again
is recognised. :func:`run_trials` writes each finished trial to ``<out>/trials/<id>.json`` (status
``ok`` with the result, or ``failed`` with the error) the moment it finishes, so an interrupted
study loses nothing finished and, run again, skips what is already there. A failing trial is
recorded and the others go on. With a :class:`Stacking`, groups of trials run together (e.g. trained
as one stacked model); each still gets its own record, the one it would get alone.

By default Ray runs embedded on this machine (no set-up, every core used), private to the study and
ended with it (see :func:`ray_session`); ``address`` joins an existing Ray cluster instead.
``executor="serial"`` runs trials in this process (debugging, tests).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .io import own_directory, read_json, write_json

TrialFn = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Stacking:
    """Trials that run together as one (e.g. runs alike but for scalar settings, trained as one stacked model).

    ``groups`` partitions the pending trials into lists that run together (a list of one runs with the
    trial function, as without stacking); ``run`` runs one list and returns one outcome per trial, in
    order: its result or the exception that ended it. Each trial keeps its own record (the same id,
    params and fields as run alone); a failed trial does not fail its siblings.
    """

    groups: Callable[[Sequence[dict[str, Any]]], list[list[dict[str, Any]]]]
    run: Callable[[list[dict[str, Any]]], list[Any]]


STUDY_FOLDERS = ("trials", "tables", "figures")
"""The sub-folders of a study folder pclab writes (and clears of its own stale temporaries)."""


def trial_id(params: dict[str, Any]) -> str:
    """A stable 12-hex-digit id of a parameter dict."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _record(out: Path, params: dict[str, Any], fn: TrialFn, threads: int | None) -> dict[str, Any]:
    """Run one trial and persist its record (never raises)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    start = time.time()
    record: dict[str, Any] = {"id": trial_id(params), "params": params}
    try:
        record.update(status="ok", result=fn(params))
    except Exception as err:  # a failed trial is data, not a crash of the study
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    record["seconds"] = time.time() - start
    write_json(out / "trials" / f"{record['id']}.json", record)
    return record


def _record_group(out: Path, group: list[dict[str, Any]], fn: TrialFn, stacking: Stacking | None,
                  threads: int | None) -> list[dict[str, Any]]:
    """Run ``group`` -- one trial with ``fn``, or several together with ``stacking.run`` -- and persist
    one record per trial (never raises). A trial of a group gets the record it would get alone: ``ok``
    with its result, or ``failed`` with its own error; ``seconds`` is the group's wall time shared
    equally. An error of the group as a whole fails every trial of it."""
    if len(group) == 1 or stacking is None:
        return [_record(out, params, fn, threads) for params in group]
    if threads:
        import torch

        torch.set_num_threads(threads)
    start = time.time()
    try:
        outcomes = stacking.run(group)
        if len(outcomes) != len(group):
            raise RuntimeError(f"a stacked run returned {len(outcomes)} outcomes for {len(group)} trials")
    except Exception as err:  # the group failed as a whole: every trial of it is recorded as failed
        outcomes = [err] * len(group)
    records = []
    for params, outcome in zip(group, outcomes):
        record: dict[str, Any] = {"id": trial_id(params), "params": params}
        if isinstance(outcome, BaseException):
            record.update(status="failed", error=f"{type(outcome).__name__}: {outcome}",
                          traceback="".join(traceback.format_exception(outcome)))
        else:
            record.update(status="ok", result=outcome)
        record["seconds"] = (time.time() - start) / len(group)
        write_json(out / "trials" / f"{record['id']}.json", record)
        records.append(record)
    return records


def load_records(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Finished trial records under ``out/trials``, by id. A damaged record (not JSON, or not a
    record: see :func:`_record_problem`) is reported on one line and ignored (the trial reruns)."""
    records = {}
    folder = Path(out) / "trials"
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            record = read_json(path)
        except ValueError as err:
            print(f"warning: {err}")
            continue
        problem = _record_problem(record, path.stem)
        if problem:
            print(f"warning: {path}: {problem}; the record is damaged and its trial runs again")
            continue
        records[record["id"]] = record
    return records


def _record_problem(record: Any, name: str) -> str | None:
    """What makes ``record`` (read from ``trials/<name>.json``) not a trial record, or None.

    A record is a mapping with ``id`` (= ``name``), ``params`` (a mapping), ``seconds``, and
    ``status`` ``"ok"`` with a mapping ``result`` or ``"failed"`` with an ``error`` message."""
    if not isinstance(record, dict):
        return f"expected a trial record (a mapping), got {type(record).__name__}"
    missing = [k for k in ("id", "params", "status", "seconds") if k not in record]
    if missing:
        return f"expected a trial record with id, params, status and seconds, got one without {', '.join(missing)}"
    if record["id"] != name or not isinstance(record["params"], dict):
        return f"expected id {name!r} and params a mapping, got id {str(record['id'])[:40]!r} and params of type {type(record['params']).__name__}"
    if record["status"] == "ok":
        if not isinstance(record.get("result"), dict):
            return f"expected the result of a finished trial to be a mapping, got {type(record.get('result')).__name__}"
    elif record["status"] != "failed" or not isinstance(record.get("error"), str):
        return f"expected status 'ok' with a result or 'failed' with an error, got status {str(record['status'])[:40]!r}"
    return None


# ------------------------------------------------------------------------------------------ progress
_VERBOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("pclab_sweep_verbose", default=False)


@contextlib.contextmanager
def verbosity(verbose: bool) -> Iterator[None]:
    """Within this block, show Ray Tune's own output (banners, status tables) when ``verbose``;
    by default it is hidden and only :class:`Progress` lines are printed."""
    token = _VERBOSE.set(bool(verbose))
    try:
        yield
    finally:
        _VERBOSE.reset(token)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _varying(trials: Sequence[dict[str, Any]]) -> list[str]:
    """The scalar parameters whose values differ between ``trials`` (what names one trial)."""
    keys: dict[str, set] = {}
    for params in trials:
        for key, value in params.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                keys.setdefault(key, set()).add(value)
    return [k for k, values in keys.items() if len(values) > 1]


class Progress:
    """One line per finished trial: ``[done/total] failed, running | elapsed, estimated remaining |
    the trial's distinguishing parameters: status, seconds``.

    The estimate is the mean wall time per finished trial so far, counted from the first trial's
    start (not from Ray's start-up), times the trials left, so it accounts for parallel workers.
    Lines go to ``stream`` (default: standard error).
    """

    def __init__(self, trials: Sequence[dict[str, Any]], stream: TextIO | None = None):
        self.total, self.done, self.failed, self.running = len(trials), 0, 0, 0
        self.keys = _varying(trials)
        self.stream = stream
        self.started: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune saves its run configuration, this object included (a callback holds it), with
        # pickle; an open stream cannot be pickled and the saved copy never prints
        return {**self.__dict__, "stream": None}

    def start(self) -> None:
        """Count a trial as started (the clock starts with the first)."""
        if self.started is None:
            self.started = time.time()
        self.running += 1

    def label(self, params: dict[str, Any]) -> str:
        """The parameters that tell this trial from the others, e.g. ``way=pc latent=2 lam=0.5``."""
        parts = [f"{k}={params[k]:g}" if isinstance(params.get(k), float) else f"{k}={params.get(k)}" for k in self.keys if k in params]
        return " ".join(parts) or trial_id(params)

    def line(self, record: dict[str, Any]) -> str:
        """Count ``record`` as finished and return its progress line."""
        if self.started is None:
            self.start()
        self.done += 1
        self.running = max(0, self.running - 1)
        self.failed += record.get("status") != "ok"
        elapsed = time.time() - (self.started or time.time())
        left = elapsed / self.done * (self.total - self.done)
        width = len(str(self.total))
        seconds = record.get("seconds")
        status = "ok" if record.get("status") == "ok" else f"FAILED ({str(record.get('error', ''))[:80]})"
        took = f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        return (f"[{self.done:>{width}}/{self.total}] {self.failed} failed, {self.running} running | {_clock(elapsed)} elapsed, "
                f"~{_clock(left)} left | {self.label(record.get('params', {}))}: {status}{took}")

    def finished(self, record: dict[str, Any]) -> None:
        """Print the line of a finished trial."""
        print(self.line(record), file=self.stream or sys.stderr, flush=True)


def run_trials(
    fn: TrialFn,
    trials: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    address: str | None = None,
    executor: str = "ray",
    cpus_per_trial: int = 1,
    retry_failed: bool = False,
    stacking: Stacking | None = None,
) -> list[dict[str, Any]]:
    """Run every trial not finished yet; return the records of all trials, in ``trials`` order.

    Args:
        fn: ``params -> result dict`` (JSON-able). Must be importable by Ray workers (a module-level
            function).
        trials: parameter dicts.
        out: study folder; records go to ``out/trials``.
        address: Ray cluster address (``None``: an embedded local Ray).
        executor: ``"ray"`` or ``"serial"``.
        cpus_per_trial: CPUs Ray reserves per trial (also torch's thread count in the trial).
        retry_failed: run trials recorded as failed again.
        stacking: run groups of pending trials together (:class:`Stacking`); each still gets its own record.

    Raises:
        RunDirError: ``out`` is not a directory, or another pclab process writes it (a lock is
            held while the trials run).
    """
    if executor not in ("ray", "serial"):
        raise ValueError(f"executor must be 'ray' or 'serial', got {executor!r}")
    with own_directory(out, STUDY_FOLDERS):
        return _run_pending(fn, trials, Path(out), address, executor, cpus_per_trial, retry_failed, stacking)


def _run_pending(fn: TrialFn, trials: Sequence[dict[str, Any]], out: Path, address: str | None, executor: str,
                 cpus_per_trial: int, retry_failed: bool, stacking: Stacking | None = None) -> list[dict[str, Any]]:
    """:func:`run_trials` in a study folder this process owns."""
    ids = [trial_id(p) for p in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("two trials have identical parameters; add a distinguishing field (e.g. seed)")
    done = load_records(out)
    pending = [p for p, i in zip(trials, ids) if i not in done or (retry_failed and done[i]["status"] != "ok")]
    if pending:
        progress = Progress(pending)
        header = (f"{len(pending)} trials to run ({len(trials) - len(pending)} finished already, skipped); records in "
                  f"{out / 'trials'}")
        groups = stacking.groups(pending) if stacking is not None else [[params] for params in pending]
        if sorted(trial_id(p) for group in groups for p in group) != sorted(trial_id(p) for p in pending):
            raise ValueError("stacking.groups must partition the pending trials")
        if len(groups) < len(pending):
            header += f"; they run in {len(groups)} groups of trials trained together"
        if executor == "serial":
            print(header, file=sys.stderr, flush=True)
            for group in groups:
                for _ in group:
                    progress.start()
                for record in _record_group(out, group, fn, stacking, None):
                    progress.finished(record)
        else:
            _run_on_ray(fn, groups, out, address, cpus_per_trial, progress, header, stacking)
    done = load_records(out)
    missing = [i for i in ids if i not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} trials left no record in {out / 'trials'} (ids {missing[:5]}...)")
    return [done[i] for i in ids]


class RayClusterError(RuntimeError):
    """The Ray cluster at ``address`` cannot be joined: nothing answers there, or it refuses this
    client's authentication token. The message says what to set."""


_OWNER = "PCLAB_RAY_OWNER"  # set in the environment of an embedded Ray's processes, which the reaper ends
AUTH_HINT = ("set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it) "
             "or in a file named by RAY_AUTH_TOKEN_PATH")


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for the length of a ``with`` block: an embedded local Ray (``address=None``) or the cluster
    at ``address`` (``HOST:PORT``; ``None`` and ``RAY_ADDRESS`` set: that one, as in ``ray.init``).
    Nothing is started if Ray is initialised already.

    The embedded Ray is private to this process: its own temporary folder, token authentication with
    a random token (unless ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` names one), no dashboard, and
    on Linux a reaper process that ends every Ray process it started when this process ends, also by
    SIGKILL. Ray's GCS and raylet listen on all of the machine's addresses (Ray offers no loopback-only
    mode), so the token is what keeps other users out. The caller's SIGTERM handler is kept (``ray.init``
    replaces it) and Tune's own SIGINT handler is off: Ctrl-C raises KeyboardInterrupt, as elsewhere.

    Raises :class:`RayClusterError` if ``address`` cannot be joined.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    import ray

    if ray.is_initialized():
        yield
        return
    source = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    reaper = None
    if address is None:
        reaper = _start_embedded()
    else:
        _join(address, source)
    try:
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.stdin.close()
            reaper.wait(timeout=60)


@contextmanager
def _keep_sigterm() -> Iterator[None]:
    """Run ``ray.init`` in the block without it changing this process's SIGTERM handling.

    ``ray.init`` installs a handler that exits with status 15 and, in Ray's native code, one that
    prints a stack dump (off: ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``); the previous handler is put back
    after the block, and a SIGTERM that arrives during it is passed on to that handler (pclab's
    command raises KeyboardInterrupt: exit 130, one line).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as err:
        if err.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_embedded() -> subprocess.Popen | None:
    """Start the embedded Ray (see :func:`ray_session`); return its reaper process (Linux) or None."""
    import ray

    # workers of the embedded Ray must import this very pclab, installed or not
    here = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *[str(Path(p).resolve()) for p in paths if p != here]])
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        del os.environ["RAY_AUTH_MODE"]  # unset, ray.init turns token authentication on (and refreshes its config)
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # never written to disk, kept for this process's life
    # a folder of its own: no other Ray finds this one through /tmp/ray, and its sockets stay short
    temp_dir = tempfile.mkdtemp(prefix="pclab-ray-", dir=os.environ.get("RAY_TMPDIR") or ("/tmp" if os.name == "posix" else None))
    marker = secrets.token_hex(8)
    reaper = None
    if sys.platform.startswith("linux"):
        reaper = subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("_ray_reaper.py")), f"{_OWNER}={marker}", temp_dir],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.environ[_OWNER] = marker  # inherited by the GCS, the raylet and through it every worker and agent
    try:
        with _keep_sigterm():
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=True, _temp_dir=temp_dir)
    except BaseException:
        ray.shutdown()
        if reaper is not None:
            reaper.stdin.close()
            reaper.wait(timeout=60)
        raise
    finally:
        del os.environ[_OWNER]
    return reaper


def _join(address: str, source: str = "--address") -> None:
    """Connect to the Ray cluster at ``address`` (given by ``source``), or raise :class:`RayClusterError`
    in one line."""
    import ray

    if "://" not in address and address != "auto":
        _check_reachable(address, source)
    try:
        with _keep_sigterm():
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except ConnectionError as err:
        raise RayClusterError(f"{source} {address}: cannot join the Ray cluster there ({err})") from err


def _check_reachable(address: str, source: str = "--address") -> None:
    """Fail fast, in one line, if nothing listens at ``address`` or its GCS refuses this client's token."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"{source}: expected HOST:PORT of a Ray head node, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as err:
        raise RayClusterError(f"{source} {address}: no Ray head node answers there ({err.strerror or err}); "
                              f"start one with `ray start --head --port {port}`") from None
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray layout: ray.init reports what it finds
        return
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    try:
        with _quiet_stderr():  # Ray's C++ client logs the refusal on stderr as well
            GcsClient(address=address)
    except AuthenticationError:
        what = "refused this client's token" if token_mode else "requires token authentication"
        raise RayClusterError(f"{source} {address}: the Ray cluster {what}; {AUTH_HINT}") from None
    except Exception:  # anything else: ray.init reports it
        return
    if not token_mode:
        print(f"warning: the Ray cluster at {address} accepts clients without a token: whoever reaches it can run code "
              "there; start its nodes with RAY_AUTH_MODE=token", file=sys.stderr)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (native code's stderr too) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _progress_callback(progress: Progress, out: Path) -> Any:
    """A Ray Tune callback (runs in this process) printing ``progress``'s line as each trial ends."""
    from ray.tune import Callback

    class _Lines(Callback):
        def _report(self, trial: Any) -> None:
            for params in _group_of(trial.config):
                path = out / "trials" / f"{trial_id(params)}.json"
                try:
                    record = read_json(path)
                except (OSError, ValueError):  # the worker died before writing it (recorded after the run)
                    record = {"params": params, "status": "failed", "error": "no record (worker crashed)"}
                progress.finished(record)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            for _ in _group_of(trial.config):
                progress.start()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._report(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._report(trial)

    return _Lines()


def _group_of(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The trials a Ray Tune trial's config runs: ``{"trial": params}`` or ``{"trial": [params, ...]}``."""
    unit = (config or {}).get("trial", {})
    return list(unit) if isinstance(unit, list) else [unit]


def _run_on_ray(fn: TrialFn, pending: list[list[dict[str, Any]]], out: Path, address: str | None, cpus: int,
                progress: Progress | None = None, header: str | None = None, stacking: Stacking | None = None) -> None:
    """Run the groups of trials ``pending`` on Ray Tune, one Tune trial per group."""
    from ray import tune

    out_abs = out.resolve()

    def trainable(config: dict[str, Any]) -> None:
        records = _record_group(out_abs, _group_of(config), fn, stacking, cpus)
        tune.report({"ok": all(record["status"] == "ok" for record in records)})

    with ray_session(address):
        if header:  # printed once Ray is up: an unusable --address is the only line then
            print(header, file=sys.stderr, flush=True)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": cpus}),
            # a group of one is {"trial": params}, as without stacking; a larger one {"trial": [params, ...]}
            param_space={"trial": tune.grid_search([g[0] if len(g) == 1 else g for g in pending])},
            # one worker process per concurrent trial, reused: a new process per trial (Tune's default
            # here) imports torch and pclab again, seconds a trial; reuse gives results bit for bit the
            # same (each trial sets its seeds and torch's thread count)
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(
                name="ray", storage_path=str(out_abs / "ray"), verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[_progress_callback(progress, out_abs)] if progress is not None else None,
            ),
        )
        with _quiet_tune():
            grid = tuner.fit()
        _record_crashes(out_abs, grid)


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Hide Ray Tune's own printed output (its experiment banner, "View detailed results here", the
    TensorBoard hint) and its INFO logs unless :func:`verbosity` asked for them. Progress lines are
    unaffected: they go to the stream :class:`Progress` captured."""
    if _VERBOSE.get():
        yield
        return
    import logging

    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        logger.setLevel(level)


def _record_crashes(out: Path, grid: Any) -> None:
    """A trial whose worker died (out of memory, killed) left no record: write its failure."""
    for result in grid:
        if result.error is None:
            continue
        for params in _group_of(result.config):
            if not params:
                continue
            path = out / "trials" / f"{trial_id(params)}.json"
            if not path.exists():
                write_json(path, {"id": trial_id(params), "params": params, "status": "failed",
                                  "error": f"worker crashed: {type(result.error).__name__}: {result.error}", "seconds": None})


def records_frame(records: Sequence[dict[str, Any]]):
    """A tidy table: one row per finished ``ok`` trial, parameters and result columns side by side."""
    import pandas as pd

    rows = [{**r["params"], **r["result"], "seconds": r["seconds"]} for r in records if r["status"] == "ok"]
    return pd.DataFrame(rows)


def failures(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed records (id, params, error)."""
    return [{"id": r["id"], "params": r["params"], "error": r["error"]} for r in records if r["status"] != "ok"]


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (table columns)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------------- hyper-parameter search

# The PC-sensitive settings: latent step size, inference steps T, weight learning rate.
DEFAULT_SPACE: dict[str, tuple[str, float, float]] = {
    "inference.lr": ("log", 1e-3, 0.5),
    "inference.steps": ("int", 2, 30),
    "learning.lr": ("log", 1e-5, 1e-2),
}


def _optuna_distributions(space: dict[str, tuple[str, float, float]]) -> dict[str, Any]:
    import optuna

    dists: dict[str, Any] = {}
    for key, (kind, low, high) in space.items():
        if kind == "log":
            dists[key] = optuna.distributions.FloatDistribution(low, high, log=True)
        elif kind == "float":
            dists[key] = optuna.distributions.FloatDistribution(low, high)
        elif kind == "int":
            dists[key] = optuna.distributions.IntDistribution(int(low), int(high))
        else:
            raise ValueError(f"search space {key!r}: kind must be 'log', 'float' or 'int', got {kind!r}")
    return dists


def tune_trial(params: dict[str, Any]) -> dict[str, Any]:
    """One search trial: train ``params["config"]`` with ``params["overrides"]`` (``key.path -> value``)."""
    from .train import apply_overrides, train, validate

    sets = [f"{k}={json.dumps(v)}" for k, v in params["overrides"].items()]
    config = validate(apply_overrides(params["config"], sets), "search trial")
    result = train(config, out=None, progress=False)
    return {k: v for k, v in result.items() if k not in ("history", "config")}


def search(
    config: dict[str, Any],
    out: str | os.PathLike,
    samples: int = 20,
    space: dict[str, tuple[str, float, float]] | None = None,
    metric: str = "test_accuracy",
    mode: str = "max",
    address: str | None = None,
    executor: str = "ray",
    seed: int = 0,
    cpus_per_trial: int = 1,
) -> dict[str, Any]:
    """Hyper-parameter search with Optuna (TPE), on Ray Tune (``OptunaSearch``) or serially.

    Args:
        config: plain data of the base :class:`~pclab.train.RunConfig` (a preset, a YAML file).
        out: folder; every finished trial is recorded in ``out/trials/<id>.json`` the moment it
            ends, the best in ``out/best.json``. These records are the search's state: run again,
            finished trials are fed back to the sampler and only the missing ``samples`` are run, so
            a rerun with more ``samples`` extends the search (and an interrupted one resumes).
        samples: total number of trials.
        space: ``config key -> (kind, low, high)``, kind ``"log"``, ``"float"`` or ``"int"``;
            default :data:`DEFAULT_SPACE` (latent lr, T, weight lr).
        metric, mode: what to optimise (a key of the run's results) and ``"max"`` or ``"min"``.
        address, executor, cpus_per_trial: as in :func:`run_trials`.
        seed: sampler seed. A run that starts from ``n`` recorded trials seeds its sampler with
            ``seed + n``: seeded alike, the sampler would propose the first points again and their
            records would be overwritten instead of new trials added.

    Returns ``{"best": record or None, "records": [...]}``; a failed trial (e.g. diverged) is
    recorded with its error and the search goes on.
    """
    from .train import validate

    validate(config, "search base config")  # fail before any trial
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    space = dict(space or DEFAULT_SPACE)
    dists = _optuna_distributions(space)
    out = Path(out)
    done = [r for r in load_records(out).values() if r["params"].get("config") == config]
    remaining = samples - len(done)
    if remaining > 0:
        if executor == "serial":
            _search_serial(config, out, remaining, dists, metric, mode, seed, done)
        elif executor == "ray":
            _search_ray(config, out, remaining, dists, metric, mode, seed, done, address, cpus_per_trial)
        else:
            raise ValueError(f"executor must be 'ray' or 'serial', got {executor!r}")
    records = [r for r in load_records(out).values() if r["params"].get("config") == config]
    scored = [r for r in records if r["status"] == "ok" and isinstance(r["result"].get(metric), (int, float))]
    best = (max if mode == "max" else min)(scored, key=lambda r: r["result"][metric]) if scored else None
    summary = {"metric": metric, "mode": mode, "samples": len(records), "failed": len(records) - len(scored),
               "best": None if best is None else {"overrides": best["params"]["overrides"], metric: best["result"][metric], "id": best["id"]}}
    write_json(out / "best.json", summary)
    return {"best": best, "records": records, "summary": summary}


def _value(record: dict[str, Any], metric: str, mode: str) -> float:
    """A finished trial's objective; a failed trial counts as the worst value."""
    if record["status"] == "ok" and isinstance(record["result"].get(metric), (int, float)):
        return float(record["result"][metric])
    return float("-inf") if mode == "max" else float("inf")


def _search_serial(config, out, remaining, dists, metric, mode, seed, done) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed + len(done)))
    for record in done:
        value = _value(record, metric, mode)
        if math.isfinite(value):
            study.add_trial(optuna.trial.create_trial(params=record["params"]["overrides"], distributions=dists, value=value))
    for _ in range(remaining):
        trial = study.ask(dists)
        record = _record(out, {"config": config, "overrides": dict(trial.params)}, tune_trial, None)
        value = _value(record, metric, mode)
        if math.isfinite(value):
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _search_ray(config, out, remaining, dists, metric, mode, seed, done, address, cpus) -> None:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    out_abs = out.resolve()
    keys = list(dists)
    finished = [r for r in done if math.isfinite(_value(r, metric, mode))]
    searcher = OptunaSearch(
        space={k.replace(".", "__"): d for k, d in dists.items()}, metric="objective", mode=mode, seed=seed + len(done),
        points_to_evaluate=[{k.replace(".", "__"): r["params"]["overrides"][k] for k in keys} for r in finished] or None,
        evaluated_rewards=[_value(r, metric, mode) for r in finished] or None,
    )

    def trainable(sampled: dict[str, Any]) -> None:
        overrides = {k: sampled[k.replace(".", "__")] for k in keys}
        record = _record(out_abs, {"config": config, "overrides": overrides}, tune_trial, cpus)
        value = _value(record, metric, mode)
        tune.report({"objective": value if math.isfinite(value) else (-1e30 if mode == "max" else 1e30)})

    with ray_session(address):
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": cpus}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, reuse_actors=True),
            run_config=tune.RunConfig(name="search", storage_path=str(out_abs / "ray"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        with _quiet_tune():
            tuner.fit()
