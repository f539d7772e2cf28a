"""Property-based fuzzing: configs and API inputs either work or fail with a clear, typed error --
never an unhandled exception, never silent acceptance of nonsense."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pclab.core import relax
from pclab.data import DataError
from pclab.train import ConfigError, RunConfig, build_inference, build_model, make_batch, preset, to_dict, validate

SECTIONS = {name: list(field.annotation.model_fields) for name, field in RunConfig.model_fields.items()
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")}
TOP = [n for n in RunConfig.model_fields if n not in SECTIONS]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["mnist", "synthetic", "pc", "bp", "sgd", "adam", "ce", "gaussian", "1e-3", "cpu", "cuda"]),
)
values = st.one_of(scalars, st.lists(st.integers(-5, 1000), max_size=5), st.lists(scalars, max_size=3))
keys = st.one_of(st.sampled_from(TOP), st.text(min_size=1, max_size=6))


@st.composite
def configs(draw):
    """A tiny preset with a few fields replaced, added or mistyped."""
    data = preset("tiny")
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            section = draw(st.sampled_from(sorted(SECTIONS)))
            key = draw(st.one_of(st.sampled_from(SECTIONS[section]), st.text(min_size=1, max_size=6)))
            data.setdefault(section, {})[key] = draw(values)
        else:
            data[draw(keys)] = draw(st.one_of(values, st.dictionaries(st.text(max_size=4), scalars, max_size=2)))
    return data


def _leaves(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fuzzed_configs_validate_or_fail_with_a_config_error(data):
    try:
        config = validate(data, "fuzz")
    except ConfigError as err:
        message = str(err)
        assert message.startswith("invalid configuration (fuzz): ") and "\n" not in message and len(message) < 1500
        return
    # accepted: every given value survives unchanged (no silent coercion of bools, strings, NaN)
    resolved = dict(_leaves(to_dict(config)))
    for key, value in _leaves(data):
        assert key in resolved, f"{key} accepted but dropped"
        if isinstance(value, float) and isinstance(resolved[key], float):
            assert math.isfinite(value) and resolved[key] == value
        elif isinstance(value, str) and isinstance(resolved[key], float):
            assert float(value) == resolved[key]  # "1e-3"
        else:
            assert type(resolved[key]) is type(value) or isinstance(value, int) and isinstance(resolved[key], float), key
            assert resolved[key] == value


TINY = validate(preset("tiny"))
MODEL = build_model(TINY, (1, 8, 8), 10)
INFERENCE = build_inference(TINY.inference)

shapes = st.lists(st.integers(0, 70), min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16, torch.bool])


@settings(max_examples=150, deadline=None)
@given(shapes, dtypes, st.sampled_from(["x", "y", "h1", "q"]))
def test_fuzzed_clamps_relax_or_fail_with_value_or_type_error(shape, dtype, node):
    value = torch.zeros(shape, dtype=dtype)
    try:
        relaxed = relax(MODEL, {node: value}, INFERENCE)
    except (ValueError, TypeError):
        return
    # accepted only when it fits the node: (batch, *node shape), the model's dtype
    assert dtype == torch.float32 and shape[1:] == MODEL.nodes[node].shape
    assert all(v.shape[0] == shape[0] for v in relaxed.values.values())


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5]), st.integers(-3, 12))
def test_fuzzed_batches_are_checked_at_the_training_boundary(n, pixel, label):
    images = torch.full((n, 1, 8, 8), 0.5)
    images[n // 2, 0, 0, 0] = pixel
    labels = torch.full((n,), label, dtype=torch.int64)
    try:
        batch = make_batch(TINY, images, labels, 10)
    except DataError:
        assert not math.isfinite(pixel)
        return
    except ValueError as err:
        assert "labels must be in 0..9" in str(err) and not 0 <= label <= 9
        return
    assert math.isfinite(pixel) and 0 <= label <= 9 and batch["x"].shape == (n, 64)


def test_an_unknown_section_is_named():
    with pytest.raises(ConfigError, match="infrence: unknown field"):
        validate({**preset("tiny"), "infrence": {"steps": 3}})
