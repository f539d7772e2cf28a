"""The report a study ends in: one self-contained ``report.html`` in one shape for every study,
its tables as CSV, and ``report.json`` (title, question, preset, Findings) for the index.

The shape, top to bottom: the title and the one-sentence question; a *Findings* box of a few
sentences generated from the run's numbers (:mod:`.stats` words them); the key figures; the other
figures; the longer list of statements from the numbers (collapsed); the tables (first rows shown,
the full table collapsed, a CSV link); methods, settings, command, machine, date and run time
(collapsed). Figures are embedded as PNG and scale to the page width. :data:`RULE_COLOURS` gives
every training rule one colour in every study. :func:`write_index` lists the reports under a
folder. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ..io import atomic_write, read_json, write_json  # noqa: E402

# ------------------------------------------------------------------------------------------ palette
RULE_COLOURS: dict[str, str] = {
    "pc": "#1f77b4",                    # PC learning: blue
    "bp-through-inference": "#ff7f0e",  # backprop through inference: orange
    "bp": "#2ca02c",                    # backprop (the feed-forward model / path): green
    "epc": "#9467bd",                   # ePC: purple
    "ipc": "#17becf",                   # incremental PC: cyan
    "untrained": "#7f7f7f",             # initial weights: grey
}
"""One colour per training rule, the same in every study's figures."""

RULE_NAMES: dict[str, str] = {
    "pc": "PC learning", "bp-through-inference": "backprop through inference", "bp": "backprop",
    "epc": "ePC", "ipc": "incremental PC", "untrained": "untrained",
}
"""How a rule is named in Findings and legends."""

_ALIASES = {"bpti": "bp-through-inference", "feed-forward": "bp", "backprop": "bp", "incremental": "ipc"}

VARIANT_COLOURS: dict[str, str] = {
    "pc+fu": "#aec7e8", "spiking": "#d62728", "spiking+fu": "#ff9896", "decaying": "#8c564b", "decaying+fu": "#c49c94",
}
"""Colours of the PC-learning variants of the depth toolbox (precision schedules, forward update):
distinct from every :data:`RULE_COLOURS` entry, so plain ``pc`` and ``bp`` keep theirs."""


def rule_colour(rule: str) -> str:
    """The colour of a training rule (or depth variant); aliases ``bpti``, ``feed-forward`` are understood."""
    key = _ALIASES.get(rule, rule)
    if key in RULE_COLOURS:
        return RULE_COLOURS[key]
    if key in VARIANT_COLOURS:
        return VARIANT_COLOURS[key]
    raise KeyError(f"no colour for training rule {rule!r}; known: {sorted([*RULE_COLOURS, *VARIANT_COLOURS, *_ALIASES])}")


def rule_name(rule: str) -> str:
    """The readable name of a training rule (the key itself when unknown)."""
    return RULE_NAMES.get(_ALIASES.get(rule, rule), rule)


# ------------------------------------------------------------------------------------------ machine
def machine() -> dict[str, Any]:
    """What the run ran on: CPU model, cores, memory, Python, torch, device."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def command_line() -> str:
    """The command that started this process, as typed."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


# ------------------------------------------------------------------------------------------ report
GENERATOR = "pclab study report"
"""Content of the ``<meta name="generator">`` tag of a report (and ``kind`` in ``report.json``)."""

MAX_FINDINGS = 6
"""The Findings box holds at most this many sentences; the rest go to the statements list."""

_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:0.6em 1em 2em;color:#222;line-height:1.4;overflow-wrap:anywhere}
h1{font-size:1.45em;margin:0.2em 0}h2{font-size:1.15em;border-bottom:1px solid #bbb;margin-top:1.6em}h3{font-size:1em}
.question{font-size:1.05em;margin:0.2em 0 0.3em}.meta{color:#555;font-size:0.85em;margin:0 0 0.6em}
.findings{background:#eef5ff;border-left:4px solid #1f77b4;padding:0.3em 1em 0.4em;margin:0.4em 0 0.8em;font-size:0.95em}
.findings h2{border:0;margin:0.2em 0;font-size:1.1em}.findings ul{margin:0.2em 0;padding-left:1.2em}.findings li{margin:0.15em 0}
figure{margin:0.6em 0}figure img{max-width:100%;height:auto;display:block}figcaption{font-size:0.88em;color:#444}
.tablewrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:0.8em;margin:0.3em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0}details{margin:0.6em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;font-size:0.8em;white-space:pre-wrap}
"""


def _paragraphs(text: str) -> list[str]:
    return [f"<p>{html.escape(p)}</p>" for p in filter(None, (p.strip() for p in text.split("\n\n")))]


class Report:
    """A study report under construction (see the module docstring for its shape).

    Args:
        title: the report's heading.
        out: folder receiving ``report.html``, ``report.json``, ``config.json``, ``tables/*.csv``, ``figures/*.png``.
        config: the resolved study configuration (shown verbatim, saved as ``config.json``).
        question: the one sentence the study answers.
        study, preset: the study's name and preset (for the index; ``preset`` defaults to ``config["preset"]``).
        command: the command that produced it (defaults to this process's command line).
        started: when the study call began (``time.time()``), so that the run time shown covers its
            trials; defaults to now.
    """

    def __init__(self, title: str, out: str | os.PathLike, config: dict[str, Any], question: str = "", study: str | None = None,
                 preset: str | None = None, command: str | None = None, started: float | None = None):
        self.title, self.out, self.question = title, Path(out), question
        self.study, self.preset = study, preset if preset is not None else config.get("preset")
        self.config, self.command = config, command or command_line()
        self.started = time.time() if started is None else started
        self.finding_lines: list[str] = []
        self.statement_lines: list[str] = []
        self.key_parts: list[str] = []
        self.parts: list[str] = []
        self.table_parts: list[str] = []
        self.method_parts: list[str] = []
        self.out.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- content
    def findings(self, sentences: list[str]) -> None:
        """The Findings box: claims with their number and interval, generated from this run's numbers.
        Beyond :data:`MAX_FINDINGS` sentences the rest are listed with the statements."""
        for sentence in sentences:
            sentence = sentence[:1].upper() + sentence[1:]
            (self.finding_lines if len(self.finding_lines) < MAX_FINDINGS else self.statement_lines).append(sentence)

    def statements(self, lines: list[str]) -> None:
        """The longer list of sentences from this run's numbers (shown collapsed below the figures)."""
        self.statement_lines.extend(lines)

    def section(self, heading: str, text: str = "") -> None:
        """A heading and paragraphs (plain text; blank lines separate paragraphs) among the figures."""
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        self.parts.extend(_paragraphs(text))

    def text(self, text: str) -> None:
        """A paragraph among the figures."""
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def methods(self, heading: str, text: str) -> None:
        """A part of the collapsed methods section (what was run, definitions, choices)."""
        self.method_parts.append(f"<h3>{html.escape(heading)}</h3>")
        self.method_parts.extend(_paragraphs(text))

    def figure(self, fig: plt.Figure, name: str, caption: str, key: bool = False) -> Path:
        """Save ``fig`` as ``figures/<name>.png`` and embed it with a caption; closes the figure.

        ``key``: show it right below the Findings (the figure a reader came for) instead of in order.
        """
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        data = buffer.getvalue()
        path = atomic_write(self.out / "figures" / f"{name}.png", lambda h: h.write(data), binary=True)
        encoded = base64.b64encode(data).decode()
        (self.key_parts if key else self.parts).append(
            f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return path

    def table(self, frame: pd.DataFrame, name: str, caption: str, rows: int = 8, max_rows: int = 400, floatfmt: str = "{:.4g}") -> Path:
        """Write ``tables/<name>.csv`` (all rows); show the first ``rows`` rows and, collapsed, up to
        ``max_rows`` (all of them in the CSV)."""
        path = atomic_write(self.out / "tables" / f"{name}.csv", lambda h: frame.to_csv(h, index=False))

        def render(part: pd.DataFrame) -> str:
            body = part.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, escape=True)
            return f"<div class='tablewrap'>{body}</div>"

        link = f"<a href='tables/{html.escape(name)}.csv'>tables/{html.escape(name)}.csv</a>"
        count = f"{len(frame)} row{'s' if len(frame) != 1 else ''}"
        head = f"<h3 id='table-{html.escape(name)}'>{html.escape(caption)}</h3><p class='meta'>{count}; CSV: {link}</p>"
        if len(frame) <= rows:
            self.table_parts.append(head + render(frame))
        else:
            shown = min(len(frame), max_rows)
            more = f"all {len(frame)} rows" if shown == len(frame) else f"the first {shown} of {len(frame)} rows (all in the CSV)"
            self.table_parts.append(head + render(frame.head(rows))
                                    + f"<details><summary>Show {more}</summary>{render(frame.head(shown))}</details>")
        return path

    # ----------------------------------------------------------------------------------- output
    def meta(self, seconds: float) -> dict[str, Any]:
        """What :func:`write_index` reads: ``report.json``'s content."""
        return {"kind": GENERATOR, "title": self.title, "question": self.question, "study": self.study, "preset": self.preset,
                "findings": self.finding_lines, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(seconds, 1),
                "command": self.command}

    def write(self) -> Path:
        """Write ``report.html``, ``report.json`` and ``config.json``; returns the report's path."""
        seconds = time.time() - self.started
        info = machine()
        meta = self.meta(seconds)
        write_json(self.out / "config.json", self.config)
        preset = f"preset {html.escape(str(self.preset))} · " if self.preset else ""
        head = [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<meta name='generator' content='{GENERATOR}'><title>{html.escape(self.title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<header><h1>{html.escape(self.title)}</h1>",
            f"<p class='question'>{html.escape(self.question)}</p>" if self.question else "",
            f"<p class='meta'>{preset}{html.escape(meta['created'])} · run time {_duration(seconds)} · "
            f"{html.escape(str(info['cpu']))}, {info['cores']} cores · methods and settings at the end</p></header>",
            "<section id='findings' class='findings'><h2>Findings</h2><ul>",
            *(f"<li>{html.escape(s)}</li>" for s in (self.finding_lines or ["Nothing finished; no finding."])),
            "</ul></section>",
        ]
        body = ["<main>", *self.key_parts, *self.parts]
        if self.statement_lines:
            body += [f"<details id='statements'><summary>All {len(self.statement_lines)} statements generated from this run's numbers"
                     "</summary><ul>", *(f"<li>{html.escape(s)}</li>" for s in self.statement_lines), "</ul></details>"]
        if self.table_parts:
            body += ["<section id='tables'><h2>Tables</h2>", *self.table_parts, "</section>"]
        body.append("</main>")
        tail = [
            "<details id='methods'><summary>Methods, settings, command, machine, date and run time</summary>",
            *self.method_parts,
            "<h3>Command</h3>", f"<pre>{html.escape(self.command)}</pre>",
            "<h3>Settings</h3>", f"<pre>{html.escape(json.dumps(self.config, indent=2, sort_keys=True, default=str))}</pre>",
            "<h3>Machine</h3>", f"<pre>{html.escape(json.dumps(info, indent=2))}</pre>",
            f"<p>Written {html.escape(meta['created'])}; run time {seconds:.1f} s (this call: trials not already finished, "
            "plus the report).</p></details></body></html>",
        ]
        document = "\n".join(head + body + tail)
        path = atomic_write(self.out / "report.html", lambda h: h.write(document))
        write_json(self.out / "report.json", meta)
        return path


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ------------------------------------------------------------------------------------------ index
INDEX_GENERATOR = "pclab report index"
"""Content of the ``<meta name="generator">`` tag marking an index pclab wrote (and may rewrite)."""


class IndexRefused(Exception):
    """:func:`write_index` will not write; ``code`` 2: nothing to index, 5: ``index.html`` is not pclab's."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def find_reports(folder: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """``(report.html path, report.json content)`` of every study report under ``folder``, sorted by path.
    A ``report.json`` that is damaged or not a pclab report is skipped."""
    found = []
    for meta_path in sorted(Path(folder).rglob("report.json")):
        page = meta_path.with_name("report.html")
        try:
            meta = read_json(meta_path)
        except (ValueError, OSError):
            continue
        if isinstance(meta, dict) and meta.get("kind") == GENERATOR and page.exists():
            found.append((page, meta))
    return found


def write_index(folder: str | os.PathLike) -> Path:
    """Write ``folder/index.html`` listing the study reports under ``folder`` (question, preset,
    Findings, a link each); returns its path.

    Raises :class:`IndexRefused` when ``folder`` is not a folder or holds no report (code 2), or when
    ``folder/index.html`` exists and was not written by this function (code 5: never overwritten).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexRefused(f"report index: expected a folder holding study reports, got {str(folder)!r} (not a folder)", 2)
    target = folder / "index.html"
    if target.exists() and f"<meta name='generator' content='{INDEX_GENERATOR}'>" not in target.read_text(errors="replace")[:2000]:
        raise IndexRefused(f"report index: {target} exists and was not written by pclab; not overwriting it "
                           "(move it away or choose another folder)", 5)
    reports = find_reports(folder)
    if not reports:
        raise IndexRefused(f"report index: no study report (report.html with report.json) under {folder}", 2)
    items = []
    for page, meta in reports:
        link = page.relative_to(folder).as_posix()
        findings = "".join(f"<li>{html.escape(s)}</li>" for s in meta.get("findings", []))
        items.append(
            f"<section class='entry'><h2><a href='{html.escape(link)}'>{html.escape(str(meta.get('title', link)))}</a></h2>"
            f"<p class='question'>{html.escape(str(meta.get('question', '')))}</p>"
            f"<p class='meta'>study {html.escape(str(meta.get('study')))} · preset {html.escape(str(meta.get('preset')))} · "
            f"{html.escape(str(meta.get('created', '')))} · {html.escape(link)}</p>"
            f"<div class='findings'><ul>{findings}</ul></div></section>"
        )
    document = "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<meta name='generator' content='{INDEX_GENERATOR}'><title>pclab study reports</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>pclab study reports</h1><p class='meta'>{len(reports)} report{'s' if len(reports) != 1 else ''} under "
        f"{html.escape(str(folder.resolve()))}; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by pclab report index</p>",
        *items, "</body></html>",
    ])
    return atomic_write(target, lambda h: h.write(document))
