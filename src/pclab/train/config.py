"""The typed, validated configuration of a training run.

A :class:`RunConfig` is plain values (YAML-able). Unknown, ill-typed or impossible fields fail
before any work starts (no data loaded, no model built), naming the field, the expected and the
received value. ``--set a.b=v`` overrides go through :func:`apply_overrides`.

Types are strict: ``true`` is not an integer, ``2.5`` is not a layer width, ``"20"`` is not a
step count. The one leniency: a float may be written as a string such as ``1e-3`` (YAML 1.1 reads
an exponent without a dot as a string).

Config files are read by a restricted YAML loader: a regular file of at most
:data:`MAX_CONFIG_BYTES`, no aliases or anchors (no expansion bombs), no duplicate keys, nesting at
most :data:`MAX_NESTING` deep. Every error is one line, and a received value is shown shortened to
about :data:`MAX_SHOWN` characters.
"""

from __future__ import annotations

import difflib
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .networks import parameter_count


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

MAX_STEPS = 10**5
"""Largest ``inference.steps``: room for the studies' longest relaxations (a few thousand steps)."""
MAX_EPOCHS = 10**4
"""Largest ``epochs``."""
MAX_SEED = 2**32 - 1
"""Largest ``seed``: every seed derived from it (``seed * 1_000_003 + epoch``) fits torch's 64-bit generator."""
MAX_LAYERS = 1000
"""Most entries of ``model.widths``."""
MAX_PARAMETERS = 10**9
"""Most parameters of a model (4 GB of float32 weights; training adds gradients and optimiser moments,
about four times that). Counted from the config without allocating (:func:`pclab.train.networks.parameter_count`)."""
MAX_NESTING = 8
"""Deepest nesting of mappings and lists read from YAML; pclab's settings nest at most 6 deep."""
MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read."""
MAX_SHOWN = 200
"""Received values in error messages are shortened to about this many characters."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 4, 12, 12, 8, 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = MAX_SHOWN, 60, MAX_SHOWN


def cut(text: str) -> str:
    """``text`` on one line, cut to :data:`MAX_SHOWN` characters."""
    text = " ".join(str(text)[: 4 * MAX_SHOWN].split())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def short(value: Any) -> str:
    """``repr(value)`` on one line, cut to :data:`MAX_SHOWN` characters (bounded work for any size or depth)."""
    try:
        return cut(_REPR.repr(value))
    except (ValueError, RecursionError):  # an int beyond Python's digit limit, a pathological object
        return f"<{type(value).__name__}>"


# Fields that change how a run is kept, never its numbers: a run may resume with other values.
OPERATIONAL = ("checkpoint_every", "checkpoint_seconds", "name")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """Which network to build (see :mod:`pclab.models`)."""

    kind: Literal["mlp", "generative_mlp", "rathjens_wiskott", "vgg", "vgg_bn", "deconv_generator"] = "mlp"
    widths: list[int] = Field(default_factory=lambda: [784, 128, 128, 10], max_length=MAX_LAYERS, description="mlp / generative_mlp widths")
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
            raise ValueError(f"model.activation: expected one of {sorted(ACTIVATIONS)}, got {short(self.activation)}")
        if self.init != "default" and self.kind != "mlp":
            raise ValueError(f"model.init: only an 'mlp' has an init choice (expected 'default'), got {self.init!r} with kind {self.kind!r}")
        if self.output_activation != "identity" and (self.kind != "mlp" or self.output != "gaussian"):
            raise ValueError(f"model.output_activation: only an 'mlp' with a 'gaussian' output has one (expected 'identity'), "
                             f"got {self.output_activation!r} with kind {self.kind!r} and output {self.output!r}")
        if self.kind in ("mlp", "generative_mlp") and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ValueError(f"model.widths: expected at least 2 positive widths, got {short(self.widths)}")
        return self


class InferenceConfig(_Strict):
    """How to relax (see :class:`pclab.core.Inference`)."""

    steps: int = Field(20, ge=1, le=MAX_STEPS, description="inference steps T")
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
                                              " (compiles at batch 1 or 2); other PCNs relaxed by SGD: the latent gradient;"
                                              " error parametrisation: each relaxation step of a Dense chain"))
    parametrisation: Literal["state", "error"] = Field(
        "state", description="relax the states (state-based PC) or the prediction errors (ePC: the same equilibrium in fewer steps)")

    @model_validator(mode="after")
    def _check(self) -> InferenceConfig:
        if self.optimizer in ("momentum", "nesterov") and self.momentum == 0:
            raise ValueError(f"inference.momentum: optimizer {self.optimizer!r} needs momentum > 0, got 0")
        if self.parametrisation == "error" and self.precision != "constant":
            raise ValueError(f"inference.precision: the error parametrisation takes static precisions only (expected 'constant'), "
                             f"got {self.precision!r}")
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
    frozen_layers: int = Field(0, ge=0, description="train all but the first this many weight layers (input side): a control for "
                               "rules whose bottom-layer updates vanish")
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
    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
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
        problems.append(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {short(c.device)}")
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
    if lc.warmup_epochs > c.epochs:
        problems.append(f"learning.warmup_epochs: expected at most epochs = {c.epochs} (a longer warm-up never reaches the learning rate), "
                        f"got {lc.warmup_epochs}")
    if not problems:
        problems += _size_problems(c)
    return problems


_COUNTS: dict[tuple[str, str], int] = {}
"""Parameter counts by (model section as JSON, data set): studies validate thousands of configs of a few models."""


def _size_problems(c: RunConfig) -> list[str]:
    """A model too large to allocate, found by counting its parameters on PyTorch's meta device."""
    image_shape, classes = DATA_SHAPES[c.data.dataset]
    key = (c.model.model_dump_json(), c.data.dataset)  # the shapes depend on nothing else
    try:
        if key not in _COUNTS:
            if len(_COUNTS) >= 1024:
                _COUNTS.clear()
            _COUNTS[key] = parameter_count(c.model, c.learning.rule, c.learning.lam, image_shape, classes)
        count = _COUNTS[key]
    except (ValueError, RuntimeError) as err:
        return [f"model: a {c.model.kind} cannot be built for {c.data.dataset} images {image_shape}: {cut(str(err))}"]
    if count > MAX_PARAMETERS:
        return [f"model: expected at most {MAX_PARAMETERS:.0e} parameters (4 bytes each in float32, about four times that to train), "
                f"got {count:.3g} from {c.model.kind} {short(c.model.widths) if c.model.kind.endswith('mlp') else ''}".rstrip()]
    return []


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the field, expected and received."""


def _format(err: ValidationError, source: str, most: int = 3) -> str:
    """One line: ``invalid configuration (source): field: expected ..., got ...; ...`` (the first ``most`` problems)."""
    problems = []
    errors = err.errors()
    for e in errors[:most]:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "(top level)"
        got = short(e.get("input"))
        if e["type"] == "extra_forbidden":
            known = _known_fields(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{cut(field)}: unknown field (expected one of {known}), got {got}{hint}")
        elif e["type"] == "value_error":
            problems.append(str(e.get("ctx", {}).get("error", e["msg"])))
        elif e["type"] == "literal_error":
            problems.append(f"{cut(field)}: {e['msg'].replace('Input should be', 'expected')}, got {got}")
        else:
            expected = e["msg"].replace("Input should be", "expected").replace("Value error, ", "")
            problems.append(f"{cut(field)}: {expected}, got {got}")
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return " ".join(f"invalid configuration ({cut(source)}): {'; '.join(problems)}{more}".split())


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
    """A :class:`RunConfig` from plain data, or a :class:`ConfigError` naming the bad fields (one line)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration ({source}): expected a mapping at the top level, got {type(data).__name__}")
    depth = nesting(data)
    if depth > MAX_NESTING:
        raise ConfigError(f"invalid configuration ({source}): expected settings nested at most {MAX_NESTING} deep, got deeper")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def validate_section(section: type[BaseModel], data: Any, source: str) -> BaseModel:
    """``section`` (e.g. :class:`InferenceConfig`) from plain data, or a one-line :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration ({cut(source)}): expected a mapping, got {type(data).__name__}")
    try:
        return section.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def nesting(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep mappings and lists nest in ``value`` (a scalar: 0); counting stops past ``limit``.

    Iterative, so a value nested thousands deep costs no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth <= limit:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class _Refused(yaml.YAMLError):
    """YAML that pclab does not read (an alias, an anchor, a duplicate key, too deep a nesting)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases or anchors, duplicate keys, or nesting beyond :data:`MAX_NESTING`."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"found the alias *{cut(event.anchor)}; aliases are not allowed (write the value out)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"found the anchor &{cut(event.anchor)}; anchors are not allowed (write the value out)", event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent) and self._depth >= MAX_NESTING:
            raise _Refused(f"expected settings nested at most {MAX_NESTING} deep, got deeper", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise _Refused(f"duplicate key {short(key)}; each setting may appear once", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _yaml(text: str) -> Any:
    """Plain data of YAML ``text`` read by :class:`_Loader`."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass


def _yaml_problem(err: Exception) -> str:
    """One line saying what is wrong with the YAML and where (line, column)."""
    if isinstance(err, _Refused | yaml.MarkedYAMLError):
        mark = err.mark if isinstance(err, _Refused) else (err.problem_mark or err.context_mark)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = err.problem if isinstance(err, _Refused) else " ".join(p for p in (err.context, err.problem) if p)
        return cut(where + str(what))
    return cut(str(err))


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def load(path: str | Path) -> dict[str, Any]:
    """Plain data of a YAML config file (validated later, after overrides).

    The file must be a regular file (never a FIFO or a device: it is opened without blocking and
    checked before anything is read) of at most :data:`MAX_CONFIG_BYTES`, holding a mapping."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file {cut(str(path))}: expected an existing YAML file, got no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {cut(str(path))}: expected a YAML file, got a folder") from None
    except OSError as err:
        raise ConfigError(f"config file {cut(str(path))}: expected a readable YAML file, got {err.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"config file {cut(str(path))}: expected a regular YAML file, got {_file_kind(info.st_mode)}, which is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {cut(str(path))}: expected at most {MAX_CONFIG_BYTES} bytes of YAML, got more")
    try:
        data = _yaml(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {cut(str(path))}: expected UTF-8 text, got byte {raw[err.start]:#04x} at offset {err.start}") from None
    except _Refused as err:
        raise ConfigError(f"config file {cut(str(path))}, {_yaml_problem(err)}") from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer longer than Python reads
        raise ConfigError(f"config file {cut(str(path))} is not valid YAML: {_yaml_problem(err).split(';')[0]}") from None
    if data is None:
        raise ConfigError(f"config file {cut(str(path))}: expected a mapping of settings (e.g. `epochs: 2`), got an empty file")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {cut(str(path))}: expected a mapping at the top level (settings such as `epochs: 2`), "
                          f"got {type(data).__name__}")
    return data


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a YAML scalar or list (``20``, ``1e-3``, ``true``, ``[784, 10]``, ``null``).

    Text that is not valid YAML is kept as a string; aliases, duplicate keys, nesting beyond
    :data:`MAX_NESTING` and integers too long to read raise :class:`ConfigError`."""
    try:
        value = _yaml(raw)
    except _Refused as err:
        raise ConfigError(f"--set value {short(raw)}: {_yaml_problem(err)}") from None
    except ValueError as err:
        raise ConfigError(f"--set value {short(raw)}: expected a value pclab can read, got {_yaml_problem(err).split(';')[0]}") from None
    except yaml.YAMLError:
        return raw
    return _number_string(value) if isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", value) else value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed by :func:`parse_value`) to a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {short(item)}: expected KEY=VALUE, e.g. inference.steps=20")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {short(item)}: expected a dotted key such as inference.steps, got {short(key)}")
        if len(parts) > MAX_NESTING:
            raise ConfigError(f"--set {short(item)}: expected a key at most {MAX_NESTING} deep, got {len(parts)} parts")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {short(item)}: {cut(where)} is a value, not a section (got {short(child)})")
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
