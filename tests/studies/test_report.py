"""The shared report: one shape for every study, the rule palette, and the index of reports."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pclab.studies.report import (  # noqa: E402
    INDEX_GENERATOR,
    MAX_FINDINGS,
    RULE_COLOURS,
    VARIANT_COLOURS,
    IndexRefused,
    Report,
    find_reports,
    rule_colour,
    rule_name,
    write_index,
)


def small_report(out, findings=("pc minus bp: +1.00 points (n=1 seed: the interval cannot be computed).",), rows=30):
    report = Report("A study", out, {"preset": "tiny", "seeds": [0]}, question="Does it work?", study="demo")
    report.methods("What was run", "Everything.\n\nTwice.")
    report.findings(list(findings))
    report.statements(["a longer statement"])
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1], [0, 1])
    report.figure(fig, "later", "a later figure")
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1], [1, 0])
    report.figure(fig, "key", "the key figure", key=True)
    report.table(pd.DataFrame({"a": range(rows), "b": [0.5] * rows}), "numbers", "Numbers")
    return report.write()


def test_report_sections_come_in_the_promised_order(tmp_path):
    page = small_report(tmp_path).read_text()
    order = ["<h1>A study</h1>", "Does it work?", "id='findings'", "Pc minus bp", 'id="fig-key"', 'id="fig-later"', "id='statements'",
             "id='tables'", "id='methods'", "What was run", "<h3>Command</h3>", "<h3>Settings</h3>", "<h3>Machine</h3>", "<p>Written "]
    positions = [page.find(needle) for needle in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions))
    assert positions == sorted(positions), dict(zip(order, positions))
    assert "<details id='methods'>" in page and "<details id='statements'>" in page
    assert "name='generator' content='pclab study report'" in page


def test_a_long_table_shows_its_first_rows_collapses_the_rest_and_links_its_csv(tmp_path):
    page = small_report(tmp_path, rows=30).read_text()
    tables = page[page.index("id='tables'"):page.index("id='methods'")]
    assert "<a href='tables/numbers.csv'>" in tables and "Show all 30 rows</summary>" in tables
    shown, collapsed = tables.split("<details>", 1)
    assert shown.count("<td>") == 2 * 8 and collapsed.count("<td>") == 2 * 30
    assert len(pd.read_csv(tmp_path / "tables" / "numbers.csv")) == 30
    page = small_report(tmp_path / "short", rows=3).read_text()
    assert "<details><summary>Show" not in page


def test_findings_box_holds_at_most_six_sentences_and_report_json_has_them(tmp_path):
    sentences = [f"claim {i}: +{i}.00 points (n=1 seed: the interval cannot be computed)." for i in range(9)]
    small_report(tmp_path, findings=sentences)
    meta = json.loads((tmp_path / "report.json").read_text())
    assert meta["findings"] == [s[0].upper() + s[1:] for s in sentences[:MAX_FINDINGS]]
    assert (meta["kind"], meta["title"], meta["question"], meta["preset"], meta["study"]) == (
        "pclab study report", "A study", "Does it work?", "tiny", "demo")
    page = (tmp_path / "report.html").read_text()
    box = page[page.index("id='findings'"):page.index("</section>", page.index("id='findings'"))]
    assert box.count("<li>") == MAX_FINDINGS
    assert "Claim 8" in page[page.index("id='statements'"):]  # the rest is not lost


def test_every_rule_has_one_colour_and_no_two_share_one():
    colours = [*RULE_COLOURS.values(), *VARIANT_COLOURS.values()]
    assert len(set(colours)) == len(colours)
    assert rule_colour("bpti") == rule_colour("bp-through-inference") and rule_colour("feed-forward") == rule_colour("bp")
    assert rule_name("bpti") == "backprop through inference" and rule_name("ipc") == "incremental PC"
    with pytest.raises(KeyError, match="no colour for training rule 'sgd'"):
        rule_colour("sgd")


def test_index_lists_every_report_and_rewrites_only_its_own_file(tmp_path):
    small_report(tmp_path / "a")
    small_report(tmp_path / "deeper" / "b", findings=("second: +2.00 points.",))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "report.json").write_text("{not json")  # damaged: skipped
    assert [p.parent.name for p, _ in find_reports(tmp_path)] == ["a", "b"]
    index = write_index(tmp_path)
    page = index.read_text()
    assert f"content='{INDEX_GENERATOR}'" in page and "href='a/report.html'" in page and "href='deeper/b/report.html'" in page
    assert "Does it work?" in page and "Second: +2.00 points." in page and "preset tiny" in page
    assert write_index(tmp_path) == index  # its own file: rewritten
    index.write_text("<html>someone's page</html>")
    with pytest.raises(IndexRefused, match="was not written by pclab") as refused:
        write_index(tmp_path)
    assert refused.value.code == 5 and index.read_text() == "<html>someone's page</html>"
    with pytest.raises(IndexRefused, match="no study report") as empty:
        write_index(tmp_path / "c")
    assert empty.value.code == 2 and not (tmp_path / "c" / "index.html").exists()
    with pytest.raises(IndexRefused, match="not a folder") as missing:
        write_index(tmp_path / "nowhere")
    assert missing.value.code == 2


def test_run_time_counts_from_the_start_of_the_study_call(tmp_path):
    import time

    Report("T", tmp_path, {"preset": "quick"}, started=time.time() - 125).write()
    page = (tmp_path / "report.html").read_text()
    assert "run time 2 min 05 s" in page or "run time 2 min 06 s" in page
    assert json.loads((tmp_path / "report.json").read_text())["seconds"] >= 125
