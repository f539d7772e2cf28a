"""The typed, validated configuration of a training run.

A :class:`RunConfig` is plain values (YAML-able). Unknown or ill-typed fields fail before any work
starts, naming the field, the expected and the received value. ``--set a.b=v`` overrides go
through :func:`apply_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Which network to build (see :mod:`pclab.models`)."""

    kind: Literal["mlp", "generative_mlp", "rathjens_wiskott", "vgg", "deconv_generator"] = "mlp"
    widths: list[int] = Field(default_factory=lambda: [784, 128, 128, 10], description="mlp / generative_mlp widths")
    activation: str = "tanh"
    output: Literal["gaussian", "ce"] = "gaussian"
    complexity: Literal["small", "medium", "large"] = "small"
    latent: int = Field(4, ge=1)
    depth: int = Field(5, ge=2, description="vgg weight layers")
    width: int = Field(32, ge=1, description="vgg first-block channels / deconv channels")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        from ..core.layers import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation: expected one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.kind in ("mlp", "generative_mlp") and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ValueError(f"model.widths: expected at least 2 positive widths, got {self.widths}")
        return self


class InferenceConfig(_Strict):
    """How to relax (see :class:`pclab.core.Inference`)."""

    steps: int = Field(20, ge=0)
    optimizer: Literal["sgd", "momentum", "nesterov", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    init: Literal["forward", "zeros", "random"] = "forward"
    precision: Literal["constant", "spiking", "decaying"] = "constant"
    alpha: float = Field(1e-3, ge=0, le=1, description="spiking: precision off the spike")
    decay: float = Field(1.0, ge=0, description="decaying: rate k")
    tolerance: float | None = Field(None, gt=0)
    method: Literal["auto", "manual", "autograd"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> InferenceConfig:
        if self.optimizer in ("momentum", "nesterov") and self.momentum == 0:
            raise ValueError(f"inference.momentum: optimizer {self.optimizer!r} needs momentum > 0, got 0")
        return self


class LearningConfig(_Strict):
    """How the parameters learn."""

    rule: Literal["pc", "ipc", "bp-through-inference", "bp"] = "pc"
    forward_update: bool = False
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    lam: float = Field(1.0, ge=0, le=1, description="hybrid models: weight of classification vs reconstruction")
    truncate: int | None = Field(None, ge=1)
    checkpoint: bool = False


class DataConfig(_Strict):
    """Which data, how much of it, in what batches."""

    dataset: Literal["mnist", "fashion-mnist", "digits", "cifar10", "synthetic"] = "mnist"
    batch_size: int = Field(64, ge=1)
    train_subset: int | None = Field(None, ge=1, description="use only this many training samples")
    test_subset: int | None = Field(None, ge=1)
    root: str | None = Field(None, description="data folder (default: $PCLAB_DATA or the user cache)")


class RunConfig(_Strict):
    """Everything a training run needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    epochs: int = Field(1, ge=1)
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    telemetry: bool = Field(False, description="record per-step, per-node energies of training batches (Parquet)")
    telemetry_every: int = Field(50, ge=1, description="record telemetry every this many batches")
    eval_inference: bool = Field(True, description="also report accuracy of the relaxed read-out (label released)")
    name: str = ""


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the field, expected and received."""


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field (got {got!r})")
        else:
            lines.append(f"  {field}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A :class:`RunConfig` from plain data, or a :class:`ConfigError` naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration ({source}): expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load(path: str | Path) -> dict[str, Any]:
    """Plain data of a YAML config file (validated later, after overrides)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML scalars/lists) to a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. inference.steps=20")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key segment")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain data of a config (round-trips through :func:`validate`)."""
    return config.model_dump(mode="json")
