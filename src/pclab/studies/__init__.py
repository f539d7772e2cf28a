"""Studies: sets of runs that end in a report.

Each study is a module ``pclab.studies.<name>`` exposing

* ``PRESETS: dict[str, dict]`` -- at least ``"tiny"`` (seconds, synthetic data; for tests),
  ``"quick"`` (under 10 minutes on 2 CPU cores) and ``"full"`` (the one to cite);
* ``run(preset: str, out: Path, address: str | None = None, executor: str = "ray",
  overrides: dict | None = None) -> Path`` -- runs (skipping finished trials) and returns the path
  of ``report.html``.
"""

STUDIES = {
    "dynamics": "pclab.studies.dynamics",
    "tradeoff": "pclab.studies.tradeoff",
    "depth": "pclab.studies.depth",
    "clarity": "pclab.studies.clarity",
}
