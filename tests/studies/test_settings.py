"""Every study validates its settings before any trial starts (one line, exit code 2)."""

from __future__ import annotations

import importlib

import pytest
from typer.testing import CliRunner

from pclab import cli
from pclab.studies import STUDIES
from pclab.studies.settings import check_settings, preflight
from pclab.train import ConfigError

PRESETS = {"a": {"epochs": 2, "lr": 0.1, "name": "x", "seeds": [0, 1], "subset": None, "inner": {"steps": 3}, "open": {"k": {"v": 1}}},
           "b": {"epochs": 5, "lr": 1e-3, "name": "y", "seeds": [0], "subset": 100, "inner": {"steps": 4}, "open": {}}}


def _check(settings, **kwargs):
    check_settings("toy", {**PRESETS["a"], **settings}, PRESETS, **kwargs)


@pytest.mark.parametrize("settings, needle", [
    ({"epoch": 2}, "toy study setting epoch: unknown (expected one of ['epochs', 'inner', 'lr', 'name', 'open', 'seeds', 'subset'])"),
    ({"inner": {"step": 2}}, "toy study setting inner.step: unknown (expected one of ['steps'])"),
    ({"epochs": True}, "toy study setting epochs: expected int, got True"),
    ({"epochs": 2.5}, "toy study setting epochs: expected int, got 2.5"),
    ({"subset": "all"}, "toy study setting subset: expected int or null, got 'all'"),
    ({"seeds": 0}, "toy study setting seeds: expected a list, got 0"),
    ({"seeds": [0, -1]}, "toy study setting seeds[1]: expected at least 0, got -1"),
    ({"seeds": [2**32]}, "toy study setting seeds[0]: expected at most 4294967295, got 4294967296"),
    ({"lr": float("nan")}, "toy study setting lr: expected a finite number, got nan"),
    ({"lr": -0.1}, "toy study setting lr: expected a number > 0, got -0.1"),
    ({"subset": -3}, "toy study setting subset: expected at least 0, got -3"),
    ({"lr": 0}, "toy study setting lr: expected a number > 0, got 0"),
    ({"epochs": 10**6}, "toy study setting epochs: expected at most 10000, got 1000000"),
    ({"inner": {"steps": "x" * 10_000}}, "toy study setting inner.steps: expected int, got 'xxxx"),
])
def test_settings_of_another_shape_than_the_presets_are_refused_in_one_line(settings, needle):
    with pytest.raises(ConfigError) as err:
        _check(settings, positive=("lr",), limits={"epochs": (1, 10_000)})
    message = str(err.value)
    assert message.startswith(needle) and "\n" not in message and len(message) < 400


def test_settings_the_presets_allow_are_accepted():
    _check({"lr": 1, "subset": None, "seeds": [], "open": {"anything": {"goes": [-1, "x"]}}}, positive=("lr",), open_keys=("open",))
    with pytest.raises(ConfigError, match="open.anything: unknown"):  # a mapping not declared open is checked
        _check({"open": {"anything": 1}})


def test_preflight_names_the_trial_and_checks_each_label_once():
    calls = []

    def bad():
        calls.append(1)
        raise ConfigError("invalid configuration (x): inference.steps: expected greater than or equal to 1, got 0")

    with pytest.raises(ConfigError, match=r"^toy study, trial pc seed 0: invalid configuration \(x\): inference.steps"):
        preflight("toy", [("ok", lambda: None), ("pc seed 0", bad), ("pc seed 0", bad)])
    assert preflight("toy", [("a", lambda: None), ("a", bad)]) == 1 and calls == [1]


# every study, one bad setting each: refused before any trial runs
BAD = {
    "clarity": [({"images": -1}, "clarity study setting images: expected at least 1, got -1"),
                ({"foo": 1}, "clarity study setting foo: unknown"),
                ({"native": {"optimizer": "foo"}}, "clarity study, trial native: invalid configuration (clarity native): optimizer: expected"),
                ({"training": {"epochs": 10**5}}, "clarity study setting training.epochs: expected at most 10000")],
    "dynamics": [({"test_batch_size": 0}, "dynamics study setting test_batch_size: expected at least 1, got 0"),
                 ({"families": {"generative": {"config": {"inference": {"lr": 0}}}}},
                  "dynamics study, trial generative/pc T 3 seed 0: invalid configuration (dynamics trial generative/pc): inference.lr: expected")],
    "tradeoff": [({"epochs": 0}, "tradeoff study setting epochs: expected at least 1, got 0"),
                 ({"datasets": ["cifar9"]}, "tradeoff study, trial cifar9 ")],
    "depth": [({"depths": [1]}, "depth study setting depths[0]: expected at least 2, got 1"),
              ({"training": {"latent_optimizer": "foo"}}, "depth study, trial tune digits mlp depth 5 bp sgd seed 0: invalid configuration")],
}


@pytest.mark.parametrize("study, overrides, needle", [(s, o, n) for s, cases in BAD.items() for o, n in cases])
def test_each_study_refuses_a_bad_setting_before_any_trial(study, overrides, needle, tmp_path, monkeypatch):
    module = importlib.import_module(STUDIES[study])
    where = importlib.import_module(module.run.__module__)

    def no_trials(*args, **kwargs):
        raise AssertionError("a trial started")

    monkeypatch.setattr(where, "run_trials", no_trials)
    with pytest.raises(ConfigError) as err:
        module.run("tiny", tmp_path / "out", executor="serial", overrides=overrides)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [
    (["clarity", "--set", "images=-1"], "error: clarity study setting images: expected at least 1, got -1"),
    (["clarity", "--set", "foo=1"], "error: clarity study setting foo: unknown"),
    (["tradeoff", "--set", "lams=[0.5, 2]"], "error: tradeoff study setting lams[1]: expected at most 1, got 2"),
])
def test_the_study_command_exits_2_with_one_line(args, needle, tmp_path):
    result = CliRunner().invoke(cli.app, ["study", *args, "--preset", "tiny", "--executor", "serial", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and result.output.startswith(needle) and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "s").exists()
