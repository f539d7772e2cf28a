"""The typed, validated configuration of a training run.

A :class:`RunConfig` is plain values (YAML-able). Unknown, ill-typed or impossible fields fail
before any work starts (no data loaded, no model built), naming the field, the expected and the
received value. ``--set a.b=v`` overrides go through :func:`apply_overrides`.

Types are strict: ``true`` is not an integer, ``2.5`` is not a layer width, ``"20"`` is not a
step count. The one leniency: a float may be written as a string such as ``1e-3`` (YAML 1.1 reads
an exponent without a dot as a string).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator


def _number_string(value: Any) -> Any:
    """``"1e-3"`` -> ``0.001``; anything else unchanged (and judged by the field's type)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Real = Annotated[float, BeforeValidator(_number_string)]

# (C, H, W) and classes of every data set (checked again against the loaded data).
DATA_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "synthetic": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10),
}

# Fields that change how a run is kept, never its numbers: a run may resume with other values.
OPERATIONAL = ("checkpoint_every", "checkpoint_seconds", "name")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """Which network to build (see :mod:`pclab.models`)."""

    kind: Literal["mlp", "generative_mlp", "rathjens_wiskott", "vgg", "vgg_bn", "deconv_generator"] = "mlp"
    widths: list[int] = Field(default_factory=lambda: [784, 128, 128, 10], description="mlp / generative_mlp widths")
    activation: str = "tanh"
    output: Literal["gaussian", "ce"] = "gaussian"
    complexity: Literal["small", "medium", "large"] = "small"
    latent: int = Field(4, ge=1)
    layered: bool = Field(False, description="rathjens_wiskott: hidden decoder/head layers as value nodes")
    depth: int = Field(5, ge=2, description="vgg / vgg_bn weight layers")
    width: int = Field(32, ge=1, description="vgg / vgg_bn first-block channels / deconv channels")
    init: Literal["default", "lecun", "orthogonal"] = Field(
        "default", description="mlp weights: PyTorch's default, N(0, 1/fan_in) or orthogonal with ReLU's gain sqrt(2); zero biases")
    output_activation: Literal["identity", "sigmoid"] = Field("identity", description="mlp: nonlinearity of the label prediction")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        from ..core.layers import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation: expected one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.init != "default" and self.kind != "mlp":
            raise ValueError(f"model.init: only an 'mlp' has an init choice (expected 'default'), got {self.init!r} with kind {self.kind!r}")
        if self.output_activation != "identity" and (self.kind != "mlp" or self.output != "gaussian"):
            raise ValueError(f"model.output_activation: only an 'mlp' with a 'gaussian' output has one (expected 'identity'), "
                             f"got {self.output_activation!r} with kind {self.kind!r} and output {self.output!r}")
        if self.kind in ("mlp", "generative_mlp") and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ValueError(f"model.widths: expected at least 2 positive widths, got {self.widths}")
        return self


class InferenceConfig(_Strict):
    """How to relax (see :class:`pclab.core.Inference`)."""

    steps: int = Field(20, ge=1, description="inference steps T")
    optimizer: Literal["sgd", "momentum", "nesterov", "adam"] = "sgd"
    lr: Real = Field(0.1, gt=0, description="latent step size")
    momentum: Real = Field(0.0, ge=0, lt=1)
    init: Literal["forward", "zeros", "random"] = "forward"
    precision: Literal["constant", "spiking", "decaying"] = "constant"
    alpha: Real = Field(1e-3, ge=0, le=1, description="spiking: precision off the spike")
    decay: Real = Field(1.0, ge=0, description="decaying: rate k")
    tolerance: Real | None = Field(None, gt=0)
    method: Literal["auto", "manual", "autograd"] = "auto"
    compile: bool = Field(False, description=("run the Dense-chain fast path (PC, iPC, bp-through-inference) under torch.compile"
                                              " (compiles at batch 1 or 2); other PCNs relaxed by SGD: the latent gradient"))
    parametrisation: Literal["state", "error"] = Field(
        "state", description="relax the states (state-based PC) or the prediction errors (ePC: the same equilibrium in fewer steps)")

    @model_validator(mode="after")
    def _check(self) -> InferenceConfig:
        if self.optimizer in ("momentum", "nesterov") and self.momentum == 0:
            raise ValueError(f"inference.momentum: optimizer {self.optimizer!r} needs momentum > 0, got 0")
        if self.parametrisation == "error" and self.precision != "constant":
            raise ValueError(f"inference.precision: the error parametrisation takes static precisions only (expected 'constant'), "
                             f"got {self.precision!r}")
        if self.parametrisation == "error" and self.compile:
            raise ValueError("inference.compile: the error parametrisation runs eagerly (expected false), got true")
        return self


class LearningConfig(_Strict):
    """How the parameters learn."""

    rule: Literal["pc", "ipc", "bp-through-inference", "bp"] = "pc"
    forward_update: bool = False
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Real = Field(1e-3, gt=0, description="weight learning rate")
    weight_decay: Real = Field(0.0, ge=0)
    momentum: Real = Field(0.0, ge=0, lt=1)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: Real = Field(0.0, ge=0)
    lam: Real = Field(0.5, ge=0, le=1, description="hybrid models: weight of classification (lam) vs reconstruction (1 - lam)")
    truncate: int | None = Field(None, ge=1)
    checkpoint: bool | Annotated[int, Field(ge=1)] = Field(
        False, description="bp-through-inference: true recomputes each step in the backward pass; "
        "an integer is binomial checkpointing with that many stored states (memory independent of the steps)")


class DataConfig(_Strict):
    """Which data, how much of it, in what batches."""

    dataset: Literal["mnist", "fashion-mnist", "digits", "cifar10", "synthetic"] = "mnist"
    batch_size: int = Field(64, ge=1)
    train_subset: int | None = Field(None, ge=1, description="use only this many training samples")
    test_subset: int | None = Field(None, ge=1)
    root: str | None = Field(None, description="data folder (default: $PCLAB_DATA or the user cache)")


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


class RunConfig(_Strict):
    """Everything a training run needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    epochs: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    telemetry: bool = Field(False, description="record per-step, per-node energies of training batches (Parquet)")
    telemetry_every: int = Field(50, ge=1, description="record telemetry every this many batches")
    eval_inference: bool = Field(True, description="also report accuracy of the relaxed read-out (label released)")
    checkpoint_every: int | None = Field(None, ge=1, description="also checkpoint every this many batches")
    checkpoint_seconds: Real | None = Field(300.0, gt=0, description="also checkpoint mid-epoch when this long has passed")
    max_energy: Real = Field(1e10, gt=0, description="an energy, loss or |weight| above this counts as divergence")
    name: str = ""

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        for problem in _cross_field_problems(self):
            raise ValueError(problem)
        return self


def _cross_field_problems(c: RunConfig) -> list[str]:
    """Combinations that cannot run: widths that do not fit the data, energies without classes, ..."""
    problems = []
    if not _DEVICE.match(c.device):
        problems.append(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {c.device!r}")
    (channels, height, width), classes = DATA_SHAPES[c.data.dataset]
    pixels = channels * height * width
    m, lc = c.model, c.learning
    if m.kind == "mlp":
        if m.widths[0] != pixels:
            problems.append(f"model.widths[0]: expected the {pixels} pixels of {c.data.dataset} ({channels}x{height}x{width}), got {m.widths[0]}")
        if m.widths[-1] != classes:
            problems.append(f"model.widths[-1]: expected the {classes} classes of {c.data.dataset}, got {m.widths[-1]}")
    if m.kind == "generative_mlp" and m.widths[-1] != pixels:
        problems.append(f"model.widths[-1]: expected the {pixels} pixels of {c.data.dataset} ({channels}x{height}x{width}), got {m.widths[-1]}")
    if m.output == "ce" and m.kind in ("generative_mlp", "deconv_generator"):
        problems.append(f"model.output: a 'ce' energy needs a label node with classes; a {m.kind} has none (expected 'gaussian'), got 'ce'")
    if m.kind == "deconv_generator" and (height % 4 or width % 4):
        problems.append(f"model.kind: deconv_generator expects image height and width divisible by 4, got {height}x{width} ({c.data.dataset})")
    if m.kind in ("generative_mlp", "deconv_generator") and lc.rule == "bp":
        problems.append(f"learning.rule: 'bp' needs a feed-forward path from the image; a {m.kind} has none "
                        "(expected 'pc', 'ipc' or 'bp-through-inference'), got 'bp'")
    if m.kind == "vgg_bn" and lc.rule not in ("pc", "bp"):
        problems.append(f"learning.rule: a vgg_bn's BatchNorm statistics move only in the weight phase of 'pc' or the forward pass "
                        f"of 'bp' (expected one of those), got {lc.rule!r}")
    if lc.forward_update and lc.rule != "pc":
        problems.append(f"learning.forward_update: only the 'pc' rule has a forward update (expected false), got true with rule {lc.rule!r}")
    if lc.rule != "bp-through-inference" and (lc.truncate is not None or lc.checkpoint):
        problems.append(f"learning.truncate / learning.checkpoint: only for rule 'bp-through-inference', got rule {lc.rule!r}")
    if lc.truncate is not None and lc.truncate > c.inference.steps:
        problems.append(f"learning.truncate: expected at most inference.steps = {c.inference.steps}, got {lc.truncate}")
    if c.inference.parametrisation == "error" and lc.rule == "ipc":
        problems.append("inference.parametrisation: incremental PC takes its weight steps inside a state-based relaxation "
                        "(expected 'state' with rule 'ipc'), got 'error'")
    if c.telemetry and lc.rule == "bp":
        problems.append("telemetry: records inference steps, and rule 'bp' trains without inference (expected false), got true")
    return problems


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the field, expected and received."""


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "(top level)"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            known = _known_fields(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {field}: unknown field (expected one of {known}), got {got!r}{hint}")
        elif e["type"] == "value_error":
            message = str(e.get("ctx", {}).get("error", e["msg"]))
            lines.append(f"  {message}")
        elif e["type"] == "literal_error":
            lines.append(f"  {field}: {e['msg'].replace('Input should be', 'expected')}, got {got!r}")
        else:
            expected = e["msg"].replace("Input should be", "expected").replace("Value error, ", "")
            lines.append(f"  {field}: {expected}, got {got!r}")
    return "\n".join(lines)


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (e.g. ``("inference",)``)."""
    cls: type[BaseModel] = RunConfig
    for part in loc:
        annotation = cls.model_fields[str(part)].annotation if str(part) in cls.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return list(cls.model_fields)


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
    if not path.is_file():
        raise ConfigError(f"config file {path}: expected an existing YAML file, got {'a folder' if path.exists() else 'no such file'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a YAML scalar or list (``20``, ``1e-3``, ``true``, ``[784, 10]``, ``null``)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return _number_string(value) if isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", value) else value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed by :func:`parse_value`) to a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. inference.steps=20")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: expected a dotted key such as inference.steps, got {key!r}")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {where} is a value, not a section (got {child!r})")
            node = child
        node[parts[-1]] = parse_value(raw)
    return data


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain data of a config (round-trips through :func:`validate`)."""
    return config.model_dump(mode="json")


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True if two config dicts give the same numbers (they may differ in :data:`OPERATIONAL` fields).

    Both are first completed with today's defaults, so a run written before a field was added
    (with that field's default meaning) still matches."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        try:
            d = to_dict(RunConfig.model_validate(d))
        except ValidationError:
            pass  # not a valid config today: compare as stored
        return {k: v for k, v in d.items() if k not in OPERATIONAL}

    return strip(a) == strip(b)
