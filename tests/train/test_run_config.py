"""The configuration fails before any work, naming the field, the expected and the received value."""

from __future__ import annotations

import pytest
import torch

from pclab.train import PRESETS, ConfigError, apply_overrides, preset, validate
from pclab.train.config import load, same_run, to_dict


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    config = validate(preset(name), name)
    assert validate(to_dict(config)) == config  # round trip


def _error(data) -> str:
    with pytest.raises(ConfigError) as err:
        validate(data, "test")
    return str(err.value)


def test_unknown_key_names_the_field_the_known_ones_and_a_suggestion():
    message = _error({"inference": {"stepz": 3}})
    assert "inference.stepz: unknown field" in message
    assert "'steps'" in message and "got 3" in message and "did you mean 'steps'" in message


@pytest.mark.parametrize(
    "data, field, received",
    [
        ({"epochs": True}, "epochs", "True"),  # a bool is not an integer
        ({"epochs": 2.5}, "epochs", "2.5"),
        ({"model": {"widths": [64, 32.5, 10]}}, "model.widths[1]", "32.5"),
        ({"learning": {"lr": "fast"}}, "learning.lr", "'fast'"),
        ({"inference": {"optimizer": "adamx"}}, "inference.optimizer", "'adamx'"),
        ({"inference": {"lr": float("nan")}}, "inference.lr", "nan"),
        ({"data": {"batch_size": "64"}}, "data.batch_size", "'64'"),
    ],
)
def test_wrong_type_names_field_expected_and_received(data, field, received):
    message = _error(data)
    assert f"{field}: expected" in message and f"got {received}" in message


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"inference": {"steps": 0}}, "inference.steps: expected greater than or equal to 1, got 0"),
        ({"data": {"dataset": "digits"}}, "model.widths[0]: expected the 64 pixels of digits (1x8x8), got 784"),
        ({"model": {"widths": [784, 128, 7]}}, "model.widths[-1]: expected the 10 classes of mnist, got 7"),
        ({"model": {"kind": "generative_mlp", "widths": [8, 784], "output": "ce"}}, "model.output: a 'ce' energy needs a label node"),
        ({"inference": {"optimizer": "momentum"}}, "inference.momentum: optimizer 'momentum' needs momentum > 0, got 0"),
        ({"learning": {"truncate": 50}, "inference": {"steps": 5}}, "learning.truncate"),
        ({"device": "gpu"}, "device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
        ({"learning": {"rule": "bp", "forward_update": True}}, "learning.forward_update"),
    ],
)
def test_impossible_values_are_refused(data, needle):
    assert needle in _error(data)


def test_a_float_written_with_an_exponent_is_a_float():
    assert validate({"learning": {"lr": "1e-3"}}).learning.lr == 1e-3


def test_overrides_parse_yaml_values_into_nested_fields():
    data = apply_overrides(preset("tiny"), ["inference.steps=7", "learning.lr=1e-3", "model.widths=[64, 16, 10]", "data.test_subset=null"])
    config = validate(data)
    assert config.inference.steps == 7 and config.learning.lr == 1e-3
    assert config.model.widths == [64, 16, 10] and config.data.test_subset is None


@pytest.mark.parametrize("item, needle", [("inference.steps", "expected KEY=VALUE"), ("epochs.x=1", "epochs is a value, not a section"),
                                          ("a..b=1", "expected a dotted key")])
def test_bad_override_is_named(item, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides(preset("tiny"), [item])


def test_config_files_missing_invalid_or_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"expected a mapping at the top level \(settings such as `epochs: 2`\), got list"):
        load(tmp_path / "list.yaml")


def test_checkpoint_settings_do_not_change_the_run():
    a = to_dict(validate(preset("tiny")))
    b = to_dict(validate(apply_overrides(preset("tiny"), ["checkpoint_every=3"])))
    c = to_dict(validate(apply_overrides(preset("tiny"), ["seed=1"])))
    assert same_run(a, b) and not same_run(a, c)


def test_a_run_written_before_a_field_existed_still_matches_its_config():
    today = to_dict(validate(preset("tiny")))
    older = {**today, "model": {k: v for k, v in today["model"].items() if k != "init"},
             "inference": {k: v for k, v in today["inference"].items() if k != "compile"}}
    assert same_run(older, today)
    changed = {**older, "model": {**older["model"], "activation": "relu"}}
    assert not same_run(changed, today)


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_runs_use_the_fused_optimiser_where_it_applies(name):
    import torch

    from pclab.train.build import _optimizer, build_model

    config = validate(apply_overrides(preset("tiny"), [f"learning.optimizer={name}"]))
    model = build_model(config, (1, 8, 8), 10)
    assert _optimizer(config, model).defaults["fused"] is True
    assert _optimizer(config, model.to(torch.float64)).defaults["fused"] is True
    complex_model = build_model(config, (1, 8, 8), 10).to(torch.complex64)  # no fused kernel: PyTorch's default
    assert not _optimizer(config, complex_model).defaults["fused"]


# --- hostile files and values: refused in one line, before any work --------------------------------------------------


def _load_error(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("text, needle", [
    ("a: &a [1, 2]\nb: *a\n", "line 1, column 4: found the anchor &a; anchors are not allowed"),
    ("b: *a\n", "found the alias *a; aliases are not allowed"),
    ("epochs: 1\nseed: 2\nepochs: 3\n", "line 3, column 1: duplicate key 'epochs'; each setting may appear once"),
    ("model: " + "[" * 9 + "]" * 9 + "\n", "expected settings nested at most 8 deep, got deeper"),
    ("model: " + "[" * 5000 + "]" * 5000 + "\n", "expected settings nested at most 8 deep, got deeper"),
    ("", "expected a mapping of settings (e.g. `epochs: 2`), got an empty file"),
    ("# defaults, please\n", "expected a mapping of settings (e.g. `epochs: 2`), got an empty file"),
    ("seed: " + "1" * 5000 + "\n", "is not valid YAML: Exceeds the limit (4300 digits)"),
    ("x: !!python/object/apply:os.system ['true']\n", "is not valid YAML: line 1, column 4: could not determine a constructor for the tag"),
])
def test_restricted_yaml(tmp_path, text, needle):
    assert needle in _load_error(tmp_path, text)


def test_an_oversized_config_file_is_not_read(tmp_path):
    assert "expected at most 1048576 bytes of YAML, got more" in _load_error(tmp_path, "name: " + "x" * (1 << 20) + "\n")


def test_nesting_up_to_the_limit_is_read_and_judged_by_the_schema(tmp_path):
    (tmp_path / "ok.yaml").write_text("model:\n  widths: " + "[" * 6 + "]" * 6 + "\n")  # 8 deep in all
    data = load(tmp_path / "ok.yaml")
    with pytest.raises(ConfigError, match=r"model.widths\[0\]: expected a valid integer, got \[\[\[\[\[\]\]\]\]\]"):
        validate(data)


def test_deep_python_data_is_refused_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigError, match="expected settings nested at most 8 deep"):
        validate({"model": {"widths": deep}})


def test_received_values_are_shown_shortened():
    message = _error({"name": 5, "model": {"widths": list(range(10**5))}})
    assert len(message) < 700 and "..." in message


@pytest.mark.parametrize("overrides, needle", [
    (["seed=4294967296"], "seed: expected less than or equal to 4294967295"),
    (["inference.steps=100001"], "inference.steps: expected less than or equal to 100000"),
    (["epochs=10001"], "epochs: expected less than or equal to 10000"),
    (["epochs=2", "learning.warmup_epochs=2.5"], "learning.warmup_epochs: expected at most epochs = 2"),
    (["model.widths=[64,1000000000000,10]"], "model: expected at most 1e+09 parameters"),
    (["model.kind=vgg", "model.width=4096", "model.depth=50", "data.dataset=cifar10", "model.widths=[3072, 10]"],
     "model: expected at most 1e+09 parameters (4 bytes each in float32, about four times that to train), got 4.41e+11"),
])
def test_stated_limits(overrides, needle):
    assert needle in _error(apply_overrides(preset("tiny"), overrides))


def test_the_limits_leave_room():
    config = validate(apply_overrides(preset("tiny"), ["seed=4294967295", "inference.steps=100000", "epochs=10000", "learning.warmup_epochs=10000"]))
    assert config.seed == 2**32 - 1


def test_a_model_that_does_not_fit_in_memory_is_refused_before_allocating(monkeypatch):
    from pclab.train import build

    config = validate(apply_overrides(preset("tiny"), ["model.widths=[64, 4096, 4096, 10]"]))
    monkeypatch.setattr(build, "available_memory", lambda device: 10**6)
    with pytest.raises(ConfigError, match=r"model: expected to fit in the 0.001 GB available on cpu, got 1.71e\+07 parameters needing at least"):
        build.build_model(config, (1, 8, 8), 10)


def test_a_run_directory_config_is_read_by_the_restricted_loader(tmp_path):
    from pclab.train import load_run
    from pclab.train.loop import RunDirError

    (tmp_path / "config.yaml").write_text("a: &a [1]\nb: *a\n")
    with pytest.raises(RunDirError, match="anchors are not allowed"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"inference": {"parametrisation": "errors"}}, "inference.parametrisation: expected 'state' or 'error', got 'errors'"),
        ({"inference": {"parametrisation": "error", "precision": "spiking"}}, "static precisions only (expected 'constant'), got 'spiking'"),
        ({"inference": {"parametrisation": "error"}, "learning": {"rule": "ipc"}}, "expected 'state' with rule 'ipc'), got 'error'"),
        ({"model": {"init": "orthogonal", "kind": "vgg"}, "data": {"dataset": "digits"}}, "only an 'mlp' has an init choice"),
        ({"model": {"output_activation": "sigmoid", "output": "ce"}}, "only an 'mlp' with a 'gaussian' output has one"),
        ({"model": {"output_activation": "tanh"}}, "model.output_activation: expected 'identity' or 'sigmoid', got 'tanh'"),
    ],
)
def test_error_parametrisation_and_its_model_options_are_validated(data, needle):
    assert needle in _error(data)


def test_the_error_parametrisation_compiles(tiny):
    from pclab.train.build import build_inference

    inference = build_inference(tiny("inference.parametrisation=error", "inference.compile=true", "inference.optimizer=nesterov",
                                      "inference.momentum=0.5").inference)
    assert inference.parametrisation == "error" and inference.compile and inference.accelerators is None


def test_the_error_parametrisation_reaches_the_built_inference_and_model(tiny):
    from pclab.train.build import build_inference, build_model

    config = tiny("inference.parametrisation=error", "model.init=orthogonal", "model.output_activation=sigmoid")
    assert build_inference(config.inference).parametrisation == "error"
    model = build_model(config, (1, 8, 8), 10)
    weight = model.module("x", "h1").linear.weight.detach().double()
    gram = weight @ weight.T  # orthogonal rows (32 x 64) times ReLU's gain sqrt(2)
    assert torch.allclose(gram, 2.0 * torch.eye(32, dtype=torch.float64), atol=1e-5)
    assert model.module("h1", "y").activation == "sigmoid"
