"""index.html as a document a person reads: numbers, rendered definitions, and the page in a real browser.

The browser test opens the page of a twenty-method run in headless Chromium at 1400 px with
``?selftest``; the page's own script measures itself (anything cut, a sideways-scrolling page,
figures loaded and at readable size, a column that sorts) and writes the result into
``<pre id="selftest">``, which ``--dump-dom`` returns. Where no Chromium is installed (``.ci/run``
installs the Debian package) it skips, saying so.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess

import pytest
from report_fixtures import twenty_report

from wsl_bench.report import formatting as fmt
from wsl_bench.report.markup import inline, to_html
from wsl_bench.report.tables import DEFINITIONS

WIDTH = 1400


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return twenty_report(tmp_path_factory)[1]


def _browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def _visible_text(page: str) -> str:
    """The page's text without tags, scripts and styles."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


# -- numbers and Markdown -----------------------------------------------------------------------------------------
def test_numbers_have_one_format_per_kind_and_never_scientific_notation():
    assert fmt.score(0.2311) == "0.231" and fmt.score(float("nan")) == "–" and fmt.score(None) == "–"
    assert fmt.duration(3.227e-05) == "32.3 µs" and fmt.duration(0.000218433) == "218 µs"
    assert fmt.duration(0.0569026) == "56.9 ms" and fmt.duration(0.99996) == "1.00 s"
    assert fmt.duration(12.34) == "12.3 s" and fmt.duration(0) == "0 s"
    assert fmt.significant(1014.2) == "1010" and fmt.significant(0.701338) == "0.701"
    assert fmt.significant(3567162) == "3570000" and fmt.significant(9.996) == "10.0"
    assert fmt.quantity(870.75, "MB") == "871 MB" and fmt.interval(0.1, 0.25) == "[0.100, 0.250]"


def test_markdown_is_rendered_not_printed():
    assert inline("**Definitions.** *Dice* uses `tau_val` & <b>") == (
        "<strong>Definitions.</strong> <em>Dice</em> uses <code>tau_val</code> &amp; &lt;b&gt;")
    assert inline("`a*b*c` and 2*3*4") == "<code>a*b*c</code> and 2*3*4"  # code and arithmetic stay as they are
    assert to_html("- one `x`\n  more\n- two\n\npara **b**") == (
        "<ul><li>one <code>x</code> more</li><li>two</li></ul>\n<p>para <strong>b</strong></p>")
    rendered = _visible_text(to_html(DEFINITIONS))
    assert "**" not in rendered and "`" not in rendered and "Definitions." in rendered


def test_the_page_has_no_raw_markdown_no_scientific_notation_and_links_full_resolution_figures(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    text = _visible_text(page)
    assert "**" not in text and "`" not in text
    assert not re.search(r"\d\.?\d*e[-+]\d", text), re.search(r".{30}\d\.?\d*e[-+]\d.{10}", text)
    assert "http://" not in page and "https://" not in page  # self-contained: nothing from the network
    assert page.index("Summary: ranked") < page.index("id='results'") < page.index("id='figures'")
    for name in ("qualitative", "dice_vs_lesion_size", "cost_vs_dice", "dice_boxplot"):
        # the PNG itself is in the page (self-contained), linked to the full-resolution files beside it
        embedded = re.search(rf"<a href='{name}.png'><img src='data:image/png;base64,([A-Za-z0-9+/=]+)' "
                             rf"data-file='{name}.png'", page)
        assert embedded and base64.b64decode(embedded.group(1)) == (report / f"{name}.png").read_bytes()
        assert f"href='{name}.pdf'" in page and (report / f"{name}.pdf").exists()
    assert " ms<" in page and " µs<" in page  # times carry units


# -- in a real browser ----------------------------------------------------------------------------------------------
def _selftest(report, tmp_path, page=None) -> dict:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser or google-chrome): `.ci/run` installs the "
                    "Debian package `chromium`; run `apt-get install -y chromium` to run this test")
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},1000",
               "--virtual-time-budget=10000", "--dump-dom", f"{(page or report / 'index.html').as_uri()}?selftest"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="selftest">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1).strip(), f"the page wrote no self-test (exit {done.returncode}): " \
                                             f"{done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_the_page_in_chromium_at_1400px_cuts_nothing_and_sorts(report, tmp_path):
    result = _selftest(report, tmp_path)
    assert result["viewport"] == WIDTH
    # the page never scrolls sideways; whatever is wider than the window sits in a scrolling box
    assert result["page_fits"], result
    assert result["n_cut"] == 0, result["cut"]
    assert result["clipped_cells"] == []
    for table in result["tables"]:
        assert table["width"] <= table["box"] or table["scrolls"], table
    # every figure loaded, shown at its own size or the text column's, and linked to its full-resolution file
    assert len(result["images"]) >= 6
    for image in result["images"]:
        assert image["natural"] > 0, image
        assert image["shown"] >= min(image["natural"], 0.9 * image["column"]), image
        assert image["embedded"] and image["link"] == image["file"], image
    assert not result["raw_markdown"]
    # clicking a heading sorts the ranked rows (the floor stays apart): by name, then Dice down, then up
    by_name, down, up = result["sort"]["clicks"]
    assert by_name["key"] == "method" and by_name["after"] == sorted(by_name["before"])
    assert by_name["after"] != by_name["before"]
    numbers = [float(v) for v in down["after"] if v != ""]
    assert down["direction"] == "descending" and numbers == sorted(numbers, reverse=True)
    assert len(numbers) == len(down["after"]) >= 10
    assert up["direction"] == "ascending" and [float(v) for v in up["after"]] == sorted(numbers)


def test_the_page_alone_without_its_folder_still_shows_every_figure(report, tmp_path):
    """``index.html`` copied away from the PNG files (mailed, attached): the figures are in the page."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(report / "index.html", alone / "index.html")
    result = _selftest(report, tmp_path, page=alone / "index.html")
    assert len(result["images"]) >= 6 and not any((alone / i["file"]).exists() for i in result["images"])
    assert all(i["embedded"] and i["natural"] > 0 for i in result["images"]), result["images"]
