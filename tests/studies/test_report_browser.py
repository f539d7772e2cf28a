"""Every study's ``tiny`` report in a real browser (headless Chromium, Debian's ``chromium``): every
image loads, the Findings box lies within the first 1280x800 screen, nothing scrolls sideways. The
screenshot of the first screen is written under pytest's tmp_path and its path printed.

Without Chromium the tests skip with one line; on CI (env ``CI`` set) a missing Chromium fails."""

from __future__ import annotations

import importlib
import os

import pytest
from browser import HEIGHT, WIDTH, chromium, measure, screenshot
from test_report import small_report

from pclab.studies import STUDIES


@pytest.fixture
def browser():
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser test (.ci/run installs it with apt-get)")
        pytest.skip("chromium not installed (Debian: apt-get install chromium); the browser test needs it")


def check_layout(page, shot) -> dict:
    """Assert the promised layout of ``page`` and write its first screen to ``shot``."""
    got = measure(page)
    assert got["innerWidth"] == WIDTH, got["innerWidth"]
    assert got["scrollWidth"] <= WIDTH, f"the page scrolls sideways: {got['scrollWidth']} px wide"
    box = got["findings"]
    assert box is not None and box["items"] >= 1, "no Findings box"
    assert 0 <= box["top"] and box["bottom"] <= HEIGHT and box["right"] <= WIDTH, f"Findings box outside the first screen: {box}"
    assert got["images"], "no figure"
    for i, image in enumerate(got["images"]):
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, f"image {i} did not load: {image}"
        assert image["right"] <= WIDTH, f"image {i} is wider than the screen: {image}"
    screenshot(page, shot)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    return got


def test_a_report_renders_with_its_findings_on_the_first_screen(tmp_path, browser):
    page = small_report(tmp_path / "report")
    got = check_layout(page, tmp_path / "report.png")
    assert got["images"][0]["top"] < HEIGHT  # the key figure starts on the first screen


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_each_studys_tiny_report_renders_in_chromium(study, tmp_path, browser):
    module = importlib.import_module(STUDIES[study])
    page = module.run("tiny", tmp_path / study, executor="serial")
    got = check_layout(page, tmp_path / f"{study}-tiny.png")
    assert got["images"][0]["top"] < HEIGHT, f"the key figure starts below the first screen: {got['images'][0]}"
