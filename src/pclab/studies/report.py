"""The report a study ends in: one self-contained ``report.html`` plus its tables as CSV.

A :class:`Report` collects sections of text, figures (embedded as PNG) and tables (written as CSV
and shown as HTML), and records the configuration, the command, the machine and the run time.
Every file is written atomically.
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

from ..io import atomic_write, write_json  # noqa: E402


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


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0}figure{margin:1em 0}figcaption{font-size:0.9em;color:#444}img{max-width:100%}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;font-size:0.85em}.summary{background:#eef5ff;padding:0.6em 1em;border-left:4px solid #4a7}
"""


class Report:
    """A study report under construction.

    Args:
        title: the report's heading.
        out: folder receiving ``report.html``, ``tables/*.csv``, ``figures/*.png``.
        config: the resolved study configuration (shown verbatim, saved as ``config.json``).
        command: the command that produced it (defaults to this process's command line).
    """

    def __init__(self, title: str, out: str | os.PathLike, config: dict[str, Any], command: str | None = None):
        self.title, self.out = title, Path(out)
        self.config, self.command = config, command or command_line()
        self.started = time.time()
        self.parts: list[str] = []
        self.summary_lines: list[str] = []
        self.out.mkdir(parents=True, exist_ok=True)

    def section(self, heading: str, text: str = "") -> None:
        """A heading and a paragraph (plain text; blank lines separate paragraphs)."""
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        for para in filter(None, (p.strip() for p in text.split("\n\n"))):
            self.parts.append(f"<p>{html.escape(para)}</p>")

    def text(self, text: str) -> None:
        """A paragraph."""
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def summary(self, lines: list[str]) -> None:
        """The written summary: sentences generated from this run's numbers."""
        self.summary_lines.extend(lines)

    def figure(self, fig: plt.Figure, name: str, caption: str) -> Path:
        """Save ``fig`` as ``figures/<name>.png`` and embed it with a caption; closes the figure."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        data = buffer.getvalue()
        path = atomic_write(self.out / "figures" / f"{name}.png", lambda h: h.write(data), binary=True)
        encoded = base64.b64encode(data).decode()
        self.parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return path

    def table(self, frame: pd.DataFrame, name: str, caption: str, max_rows: int = 60, floatfmt: str = "{:.4g}") -> Path:
        """Write ``tables/<name>.csv`` (all rows) and show up to ``max_rows`` rows."""
        path = atomic_write(self.out / "tables" / f"{name}.csv", lambda h: frame.to_csv(h, index=False))
        shown = frame.head(max_rows)
        body = shown.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, escape=True)
        more = f" (first {max_rows} of {len(frame)} rows; all in tables/{name}.csv)" if len(frame) > max_rows else f" (tables/{name}.csv)"
        self.parts.append(f"<p><b>{html.escape(caption)}</b>{html.escape(more)}</p>{body}")
        return path

    def write(self) -> Path:
        """Write ``report.html`` and ``config.json``; returns the report's path."""
        seconds = time.time() - self.started
        info = machine()
        write_json(self.out / "config.json", self.config)
        head = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>",
            f"<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} in {seconds:.0f} s on {html.escape(str(info['cpu']))} "
            f"({info['cores']} cores, torch {html.escape(info['torch'])}).</p>",
        ]
        if self.summary_lines:
            items = "".join(f"<li>{html.escape(s)}</li>" for s in self.summary_lines)
            head.append(f"<h2>Summary (from this run's numbers)</h2><div class='summary'><ul>{items}</ul></div>")
        tail = [
            "<h2>Reproduce</h2>",
            f"<pre>{html.escape(self.command)}</pre>",
            "<h2>Configuration</h2>",
            f"<pre>{html.escape(json.dumps(self.config, indent=2, sort_keys=True, default=str))}</pre>",
            "<h2>Machine</h2>",
            f"<pre>{html.escape(json.dumps(info, indent=2))}</pre>",
            f"<p>Run time: {seconds:.1f} s.</p></body></html>",
        ]
        document = "\n".join(head + self.parts + tail)
        return atomic_write(self.out / "report.html", lambda h: h.write(document))
