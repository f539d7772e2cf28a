"""Validation of a study's settings, shared by every study, run before any trial starts.

A study's settings are its preset with ``--set`` overrides merged in. Two checks, each failing with
one :class:`~pclab.train.ConfigError` line (the CLI's exit code 2):

* :func:`check_settings` -- the *shape* of the settings is the shape of the study's presets: a
  setting must exist in at least one preset, and have a type one of the presets gives it (an integer
  is accepted where a float is; ``true`` is not an integer), list elements likewise; every number is
  finite and non-negative (unless the study names it ``signed``), settings the study names
  ``positive`` are > 0, and ``limits`` give stated ranges (counts, steps, epochs, seeds).
* :func:`preflight` -- every run configuration the trials will train is built and validated
  (:func:`pclab.train.validate`) up front, so a setting that only a trial would reject (a learning
  rate of a rule, widths that do not fit the data) is named before the first trial runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..train.config import MAX_EPOCHS, MAX_SEED, MAX_STEPS, ConfigError, cut, short

__all__ = ["MAX_EPOCHS", "MAX_SEED", "MAX_STEPS", "check_settings", "preflight"]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _shapes(presets: Mapping[str, Mapping[str, Any]], open_keys: Iterable[str]) -> dict[str, set[str]]:
    """``path -> kinds`` over every preset; list elements are ``path[]``; ``open_keys`` are not entered."""
    shapes: dict[str, set[str]] = {}
    opened = set(open_keys)
    stack = [(key, value) for preset in presets.values() for key, value in preset.items()]
    while stack:
        path, value = stack.pop()
        shapes.setdefault(path, set()).add(_kind(value))
        if path in opened:
            continue
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[]", v) for v in value)
    return shapes


def check_settings(
    study: str,
    settings: Mapping[str, Any],
    presets: Mapping[str, Mapping[str, Any]],
    *,
    positive: Iterable[str] = (),
    signed: Iterable[str] = (),
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    open_keys: Iterable[str] = (),
) -> None:
    """Raise :class:`ConfigError` (one line) if ``settings`` does not have the shape of ``presets``.

    Paths name settings as ``training.epochs`` and list elements as ``seeds[]``. ``positive``:
    numbers that must be > 0; ``signed``: numbers that may be negative; ``limits``: ``path -> (lowest,
    highest)`` (inclusive, None = unbounded); ``open_keys``: mappings whose content the study checks
    itself (e.g. named architectures, validated as run configurations by :func:`preflight`).
    Every ``seeds[]`` is bounded by ``0 .. MAX_SEED`` unless ``limits`` says otherwise.
    """
    opened = set(open_keys)
    shapes = _shapes(presets, opened)
    bounds = {path: (0, MAX_SEED) for path in shapes if path.endswith("seeds[]") or path.endswith("seed")}
    bounds.update(limits or {})
    positives, signs = set(positive), set(signed)
    stack = [(key, key, value) for key, value in settings.items()]
    while stack:
        path, shown, value = stack.pop()
        allowed = shapes.get(path)
        if allowed is None:
            prefix = path.rsplit(".", 1)[0] + "." if "." in path else ""
            known = sorted(p[len(prefix):] for p in shapes if p.startswith(prefix) and not set(p[len(prefix):]) & set(".["))
            raise ConfigError(f"{study} study setting {cut(shown)}: unknown (expected one of {cut(str(known))})")
        kind = _kind(value)
        if kind not in allowed and not (kind == "int" and "float" in allowed):
            expected = " or ".join(sorted(allowed)).replace("mapping", "a mapping").replace("list", "a list")
            raise ConfigError(f"{study} study setting {cut(shown)}: expected {expected}, got {short(value)}")
        if kind in ("int", "float"):
            _check_number(study, path, shown, value, path in positives, path in signs, bounds.get(path))
        if path in opened:
            continue
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", f"{shown}.{k}", v) for k, v in value.items())
        elif isinstance(value, list | tuple) and f"{path}[]" in shapes:
            stack.extend((f"{path}[]", f"{shown}[{i}]", v) for i, v in enumerate(value))


def _check_number(study: str, path: str, shown: str, value: float, positive: bool, signed: bool,
                  bound: tuple[float | None, float | None] | None) -> None:
    where = f"{study} study setting {cut(shown)}"
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    low, high = bound if bound is not None else (None, None)
    if low is None and not signed:
        low = 0
    if positive and value <= 0 and (low is None or low <= 0):
        raise ConfigError(f"{where}: expected a number > 0, got {short(value)}")
    if low is not None and value < low:
        raise ConfigError(f"{where}: expected at least {low}, got {short(value)}")
    if high is not None and value > high:
        raise ConfigError(f"{where}: expected at most {high}, got {short(value)}")


def preflight(study: str, items: Iterable[tuple[str, Callable[[], Any]]]) -> int:
    """Run each ``(label, check)`` of a study's trials before any trial starts; return how many ran.

    ``check`` builds what its trial would build first (typically a validated
    :class:`~pclab.train.RunConfig`); a :class:`ConfigError` or ``ValueError`` becomes one
    :class:`ConfigError` line naming the study and the trial's ``label``. Identical labels are checked once.
    """
    done: set[str] = set()
    for label, check in items:
        if label in done:
            continue
        done.add(label)
        try:
            check()
        except (ConfigError, ValueError, TypeError, KeyError) as err:
            message = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {cut(str(err))}"
            raise ConfigError(f"{study} study, trial {cut(label)}: {message}") from None
    return len(done)
