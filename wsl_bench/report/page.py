"""``index.html``: the report as one self-contained page a person reads (no network, no dependency).

The page leads with the ranked summary per class (:mod:`wsl_bench.report.summary`), then every
column of ``results.csv`` in one table, the notes, the figures and the definitions. Tables scroll
inside their own box when they are wider than the window, so the page itself never does; every
column sorts on a click (a small inline script; missing values stay last); numbers follow
:mod:`wsl_bench.report.formatting`; Markdown sentences are rendered (:mod:`wsl_bench.report.markup`);
figures are shown at their own size or the column's width, whichever is smaller, each linked to its
full-resolution PNG and PDF. The PNGs are embedded in the page (``data:`` URIs, given ``figure_dir``),
so ``index.html`` alone, copied or mailed without its folder, still shows every figure; only the
links to the full-resolution files need the folder.

Opened with ``?selftest`` in its URL, the page measures itself in the browser (is anything cut,
does the page scroll sideways, did every figure load, does a column sort) and writes the result as
JSON into ``<pre id="selftest">``, which a headless browser's ``--dump-dom`` returns to a test.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wsl_bench.report import formatting as fmt
from wsl_bench.report.equivalence import IDENTICAL_DEFINITION, IdenticalGroup
from wsl_bench.report.families import families
from wsl_bench.report.markup import inline, to_html
from wsl_bench.report.summary import (
    FLOOR_ROW,
    NOT_MARKED,
    REFERENCE_ROW,
    SUPERVISED_DEFINITION,
    ClassSummary,
    Entry,
    reference_sentence,
)


@dataclass(frozen=True)
class FigureEntry:
    """A figure of the report: files ``name``.png and ``name``.pdf, a heading and what a reader sees."""

    name: str
    title: str = ""
    caption: str = ""


@dataclass(frozen=True)
class Column:
    """A column of an HTML table: heading, tooltip, numeric sort value and shown text of a row."""

    heading: str
    tooltip: str
    sort: Callable[[Any], Any]
    text: Callable[[Any], str]
    numeric: bool = True


STYLE = """
:root{--ink:#1d1d1f;--muted:#5f6368;--line:#d9dce0;--best:#fff3c4;--floor:#f3f4f6;--accent:#1f4e9c}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:#fff}
main{max-width:1380px;margin:0 auto;padding:8px 20px 48px}
h1{font-size:1.6em;margin:.6em 0 .2em}h2{font-size:1.3em;margin:1.6em 0 .4em;border-bottom:1px solid var(--line)}
h3{font-size:1.1em;margin:1.2em 0 .3em}
p,ul{max-width:100ch}
code{font:0.9em ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6;padding:0 3px;border-radius:3px}
nav{font-size:.95em;color:var(--muted)}nav a{margin-right:1em}
.warning{border-left:4px solid #d62728;background:#fdf0f0;padding:6px 12px}
.scroll{overflow-x:auto;max-width:100%;border:1px solid var(--line);border-radius:4px;margin:.4em 0 1em}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9em}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f8f9fa;vertical-align:bottom;white-space:normal;min-width:4.5em}
td.text,th.text{text-align:left}
thead th{cursor:pointer;user-select:none}
thead th:hover{background:#eef1f5}
thead th[aria-sort=descending]::after{content:" ▼";font-size:.75em}
thead th[aria-sort=ascending]::after{content:" ▲";font-size:.75em}
td.best{background:var(--best);font-weight:700}
tr.flagship td:first-child+td{font-weight:700}
tr.flagship-glam td:first-child+td{color:#1f4e9c}tr.flagship-gmic td:first-child+td{color:#b35f00}
tbody.floor td{background:var(--floor);color:#444}
tbody.floor td.best{background:var(--best)}
tr.group-head th{background:#e8eaed;text-align:left;font-weight:600;cursor:default}
.ci{color:var(--muted);font-size:.85em;margin-left:.3em}
td.verdict-below,td.verdict-unclear{color:#a4161a}
td.verdict-above{color:#1b7a3a}
figure{margin:1.2em 0 2em}
figure img{display:block;max-width:100%;height:auto;border:1px solid var(--line)}
figcaption{max-width:100ch;color:var(--muted);margin-top:.3em}
#results{font-size:.85em}#results td,#results th{padding:3px 6px}
#results .ci{display:block;margin-left:0}
#results td:first-child,#results th:first-child{position:sticky;left:0;z-index:1;background:#fff;text-align:left}
#results th:first-child{background:#f8f9fa}
.hint{color:var(--muted);font-size:.9em}
#selftest{display:none}
"""

SCRIPT = """
(function(){
  function value(row, i){
    var c = row.cells[i]; if(!c) return '';
    return c.hasAttribute('data-sort') ? c.getAttribute('data-sort') : c.textContent.trim();
  }
  function compare(a, b, sign, numeric){
    if(numeric){
      var x = parseFloat(a), y = parseFloat(b), mx = isNaN(x), my = isNaN(y);
      if(mx || my) return mx === my ? 0 : (mx ? 1 : -1);   /* missing values stay last */
      return sign * (x - y);
    }
    return sign * a.localeCompare(b);
  }
  function sortBy(table, th){
    var i = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var numeric = th.getAttribute('data-type') === 'num';
    var now = th.getAttribute('aria-sort');
    var dir = now === 'none' || !now ? (numeric ? 'descending' : 'ascending')
            : (now === 'descending' ? 'ascending' : 'descending');
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(h){ h.setAttribute('aria-sort', 'none'); });
    th.setAttribute('aria-sort', dir);
    var sign = dir === 'ascending' ? 1 : -1;
    Array.prototype.forEach.call(table.tBodies, function(body){   /* the floor stays apart: each body sorts alone */
      var rows = Array.prototype.filter.call(body.rows, function(r){ return !r.classList.contains('group-head'); });
      rows.sort(function(a, b){ return compare(value(a, i), value(b, i), sign, numeric); });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th){
      th.setAttribute('aria-sort', 'none'); th.tabIndex = 0;
      th.addEventListener('click', function(){ sortBy(table, th); });
      th.addEventListener('keydown', function(e){
        if(e.key === 'Enter' || e.key === ' '){ e.preventDefault(); sortBy(table, th); } });
    });
  });
  if(!/[?&]selftest/.test(location.search)) return;
  window.addEventListener('load', function(){
    var r = {viewport: window.innerWidth, page_width: document.documentElement.scrollWidth};
    r.page_fits = r.page_width <= r.viewport;
    function scrollable(el){
      for(var p = el.parentElement; p; p = p.parentElement){
        var o = getComputedStyle(p).overflowX;
        if((o === 'auto' || o === 'scroll') && p.scrollWidth > p.clientWidth) return true;
      }
      return false;
    }
    var cut = [];
    document.querySelectorAll('body *').forEach(function(el){
      var b = el.getBoundingClientRect();
      if(b.width === 0 || b.height === 0) return;
      if(b.right <= window.innerWidth + 1 && b.left >= -1) return;
      if(!scrollable(el)) cut.push(el.tagName + ': ' + el.textContent.trim().slice(0, 40));
    });
    r.cut = cut.slice(0, 20); r.n_cut = cut.length;
    var clipped = [];
    document.querySelectorAll('td, th').forEach(function(c){
      if(c.scrollWidth > c.clientWidth + 1) clipped.push(c.textContent.trim().slice(0, 40)); });
    r.clipped_cells = clipped.slice(0, 20);
    r.tables = Array.prototype.map.call(document.querySelectorAll('table'), function(t){
      var box = t.parentElement, o = getComputedStyle(box).overflowX;
      return {id: t.id, width: t.scrollWidth, box: box.clientWidth, scrolls: o === 'auto' || o === 'scroll'}; });
    r.images = Array.prototype.map.call(document.images, function(i){
      var a = i.closest('a[href]');
      return {file: i.dataset.file, embedded: i.getAttribute('src').indexOf('data:image/png;base64,') === 0,
              natural: i.naturalWidth, shown: Math.round(i.getBoundingClientRect().width),
              column: i.closest('main').clientWidth, link: a ? a.getAttribute('href') : null}; });
    r.raw_markdown = /\\*\\*|`/.test(document.querySelector('main').innerText);
    /* sorting: the ranked table by method name (a new order), then by Dice twice (down, then up) */
    var table = document.querySelector('table.sortable');
    if(table){
      var body = table.tBodies[0], clicks = [];
      var read = function(th){
        var i = Array.prototype.indexOf.call(th.parentNode.cells, th);
        return Array.prototype.filter.call(body.rows, function(row){ return !row.classList.contains('group-head'); })
          .map(function(row){ return value(row, i); }); };
      ['method', 'dice', 'dice'].forEach(function(key){
        var th = table.querySelector('th[data-key=' + key + ']');
        if(!th) return;
        var before = read(th); th.click();
        clicks.push({key: key, before: before, after: read(th), direction: th.getAttribute('aria-sort')});
      });
      r.sort = {table: table.id, clicks: clicks};
    }
    document.getElementById('selftest').textContent = JSON.stringify(r);
  });
})();
"""


def _attr(text: str) -> str:
    return html.escape(text, quote=True)


def _number(value: Any) -> str:
    """The value a numeric cell sorts by (empty when missing: it sorts last)."""
    return "" if fmt.is_missing(value) else repr(float(value))


def _cell(text: str, sort: str | None = None, classes: Sequence[str] = ()) -> str:
    attrs = f" data-sort='{_attr(sort)}'" if sort is not None else ""
    attrs += f" class='{' '.join(classes)}'" if classes else ""
    return f"<td{attrs}>{text}</td>"


def _score_with_ci(value: float, low: float, high: float, sd: Any = None) -> str:
    ci = fmt.interval(low, high)
    return fmt.score_sd(value, sd) + (f"<span class='ci'>{ci}</span>" if ci else "")


def _header(columns: Sequence[Column], keys: Sequence[str] | None = None) -> str:
    cells = []
    for i, column in enumerate(columns):
        key = f" data-key='{keys[i]}'" if keys else ""
        kind = "num" if column.numeric else "text"
        cls = "" if column.numeric else " class='text'"
        cells.append(f"<th scope='col' data-type='{kind}'{key}{cls} title='{_attr(column.tooltip)}'>"
                     f"{html.escape(column.heading)}</th>")
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


_VERDICT_CLASS = {"above the floor": "verdict-above", "does not beat the floor": "verdict-below",
                  "not distinguishable from the floor": "verdict-unclear"}

_SUMMARY_HEAD = (
    ("rank", "rank by Dice (val τ); baselines are the floor", False, "rank"),
    ("method", "identical maps share a row (≡)", False, "method"),
    ("family", "method family", False, "family"),
    ("Dice (val τ) [95% CI]", "dice_val_tau: Dice at the validation-selected threshold, test images", True, "dice"),
    ("PxAP [95% CI]", "pxap: pixel average precision", True, "pxap"),
    ("AUC", "auc: image-level ROC AUC", True, "auc"),
    ("against the floor", "see the definition above the tables", False, "verdict"),
)


def _summary_row(rank: str, entry: Entry, best: dict[str, float]) -> str:
    def mark(column: str) -> list[str]:
        value = getattr(entry, column)
        return ["best"] if not fmt.is_missing(value) and value == best[column] else []

    label = html.escape(entry.name) + (
        f" ≡ {html.escape(', '.join(entry.methods[1:]))}" if len(entry.methods) > 1 else "")
    # the flagship's name in its figure colour (GLAM blue, GMIC orange, darkened for text contrast)
    classes = ["flagship", f"flagship-{entry.name.split('.', 1)[0]}"] if entry.flagship else []
    rank_sort = "" if rank in (FLOOR_ROW, REFERENCE_ROW) else rank
    cells = [
        _cell(html.escape(rank), rank_sort, ["text"]),
        _cell(label, entry.name, ["text"]),
        _cell(html.escape(entry.family.short), None, ["text"]),
        _cell(_score_with_ci(entry.dice, entry.dice_low, entry.dice_high, entry.dice_sd), _number(entry.dice),
              mark("dice")),
        _cell(_score_with_ci(entry.pxap, entry.pxap_low, entry.pxap_high, entry.pxap_sd), _number(entry.pxap),
              mark("pxap")),
        _cell(fmt.score_sd(entry.auc, entry.auc_sd), _number(entry.auc), mark("auc")),
        _cell(html.escape(entry.verdict), None, ["text", _VERDICT_CLASS.get(entry.verdict, "")]),
    ]
    attrs = f" class='{' '.join(classes)}'" if classes else ""
    return f"<tr{attrs}>" + "".join(cells) + "</tr>"


def summary_section(summaries: Sequence[ClassSummary], groups: Sequence[IdenticalGroup], floor_definition: str,
                    shortfall: Callable[[Entry, ClassSummary], str], why: str,
                    stability: Callable[[ClassSummary], str] | None = None) -> str:
    """The ranked tables per class, the floor's definition, the shortfall lines, the rank stability over
    training seeds (``stability``, where a run has several) and the identical groups."""
    if not summaries:
        return ""
    columns = [Column(h, tip, lambda v: v, str, numeric) for h, tip, numeric, _ in _SUMMARY_HEAD]
    keys = [key for *_, key in _SUMMARY_HEAD]
    parts = ["<section id='summary'><h2>Summary: ranked on the headline metrics</h2>",
             "<p>Per class, every method other than the trivial baselines and the supervised reference points "
             "ranked by Dice (val τ), the headline, with PxAP beside it (test images; 95% bootstrap intervals in "
             "grey). Highlighted: the best value of each column, baselines included. Methods with identical maps "
             "share a row (≡). Click a column heading to sort; the supervised reference points and the floor stay "
             "apart.</p>",
             to_html(floor_definition)]
    for summary in summaries:
        best = {c: summary.best(c) for c in ("dice", "pxap", "auc")}
        table_id = f"summary-{summary.cls}"
        rows = [_summary_row(str(i), e, best) for i, e in enumerate(summary.ranked, start=1)]
        floor_rows = [_summary_row(FLOOR_ROW, e, best) for e in summary.floor_entries]
        reference_rows = [_summary_row(REFERENCE_ROW, e, NOT_MARKED) for e in summary.references]
        body = f"<tbody>{''.join(rows)}</tbody>"
        if reference_rows:  # apart like the floor, never ranked
            body += (f"<tbody class='floor'><tr class='group-head'><th colspan='{len(columns)}'>supervised reference "
                     f"points (trained with masks, not ranked)</th></tr>{''.join(reference_rows)}</tbody>")
        if floor_rows:
            body += (f"<tbody class='floor'><tr class='group-head'><th colspan='{len(columns)}'>trivial baselines "
                     f"(the floor)</th></tr>{''.join(floor_rows)}</tbody>")
        parts += [f"<h3>{html.escape(summary.cls)} lesions ({summary.n_images} test images)</h3>",
                  f"<div class='scroll'><table id='{table_id}' class='sortable'>{_header(columns, keys)}{body}"
                  "</table></div>"]
        shortfalls = summary.shortfalls()
        if shortfalls:
            items = "".join(f"<li>{inline(shortfall(e, summary))}</li>" for e in shortfalls)
            parts.append(f"<p>Not clearly above the floor ({html.escape(summary.cls)}):</p><ul>{items}</ul>")
        elif summary.ranked:
            parts.append(f"<p>Every ranked method is above the floor for {html.escape(summary.cls)} lesions.</p>")
        if summary.references:
            parts.append(f"<p>{inline(reference_sentence(summary))}</p>")
        sentence = stability(summary) if stability is not None else ""
        if sentence:
            parts.append(f"<p class='stability'>{inline(sentence)}</p>")
    if any(s.references for s in summaries):
        parts.append(to_html(SUPERVISED_DEFINITION))
    if groups:
        items = "".join(f"<li>{inline(' ≡ '.join(f'`{m}`' for m in g.methods))}: {inline(g.reason)}</li>"
                        for g in groups)
        parts.append(f"<p><strong>Identical maps</strong> ({html.escape(IDENTICAL_DEFINITION)}; one row each "
                     f"above):</p><ul>{items}</ul>")
    parts.append(to_html(why))
    parts.append("</section>")
    return "\n".join(parts)


def _results_columns(family: dict[str, Any]) -> list[Column]:
    def ci(key: str) -> Callable[[Any], str]:
        return lambda r: _score_with_ci(r.get(key), r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high"), r.get(f"{key}_sd"))

    def score(heading: str, key: str) -> Column:
        return Column(heading, key, lambda r, k=key: r.get(k), lambda r, k=key: fmt.score(r.get(k)))

    def number(heading: str, key: str, show: Callable[[Any], str]) -> Column:
        return Column(heading, key, lambda r, k=key: r.get(k), lambda r, k=key: show(r.get(k)))

    return [
        Column("method", "method", lambda r: r["method"], lambda r: html.escape(str(r["method"])), False),
        Column("class", "class", lambda r: r.get("class"), lambda r: html.escape(str(r.get("class", ""))), False),
        Column("family", "method family", lambda r: family[r["method"]].short,
               lambda r: html.escape(family[r["method"]].short), False),
        Column("Dice (val τ) [95% CI]", "dice_val_tau", lambda r: r.get("dice_val_tau"), ci("dice_val_tau")),
        score("val τ", "tau_val"),
        Column("Dice@0.5 [95% CI]", "dice_at_0_5", lambda r: r.get("dice_at_0_5"), ci("dice_at_0_5")),
        score("oracle Dice", "dice_oracle"),
        score("oracle τ", "tau_oracle"),
        Column("PxAP [95% CI]", "pxap", lambda r: r.get("pxap"), ci("pxap")),
        Column("AUC", "auc", lambda r: r.get("auc"), lambda r: fmt.score_sd(r.get("auc"), r.get("auc_sd"))),
        Column("n test, val", "n_images, n_val_images: lesion images of the class (test, validation)",
               lambda r: r.get("n_images"),
               lambda r: f"{fmt.count(r.get('n_images'))}, {fmt.count(r.get('n_val_images'))}"),
        number("time / image (median)", "time_median_s", fmt.duration),
        number("time / image (p90)", "time_p90_s", fmt.duration),
        number("end-to-end / image", "end_to_end_median_s", fmt.duration),
        number("peak memory", "peak_memory_mb", lambda v: fmt.quantity(v, "MB")),
        number("GFLOP / image", "gflops", fmt.significant),
        number("params (M)", "params_m", fmt.significant),
    ]


def results_table(results: pd.DataFrame, details: pd.DataFrame | None, manifest: dict[str, Any],
                  order: Sequence[str] | None = None) -> str:
    """Every column of ``results.csv`` (PxAP's interval from ``details.csv``), one row per method and class."""
    if results.empty or "method" not in results:
        return ""
    frame = results.copy()
    if details is not None and {"method", "class", "pxap_ci_low", "pxap_ci_high"} <= set(details.columns) \
            and "class" in frame:
        frame = frame.merge(details[["method", "class", "pxap_ci_low", "pxap_ci_high"]], on=["method", "class"],
                            how="left")
    family = families(frame["method"].unique(), manifest)
    if order:
        rank = {m: i for i, m in enumerate(order)}
        frame = frame.assign(_order=frame["method"].map(rank)).sort_values("_order", kind="stable")
    columns = _results_columns(family)
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for column in columns:
            sort = column.sort(r)
            sort_text = _number(sort) if column.numeric else None
            cells.append(_cell(column.text(r), sort_text, [] if column.numeric else ["text"]))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class='scroll'><table id='results' class='sortable'>{_header(columns)}"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def embedded_png(path: Path) -> str | None:
    """``path`` as a ``data:image/png;base64,...`` URI; ``None`` when it cannot be read."""
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def figure_block(figure: FigureEntry, figure_dir: Path | None = None) -> str:
    """One figure: its PNG embedded when ``figure_dir`` holds it (else linked by relative path), and
    links to the full-resolution PNG and PDF beside the page."""
    name = html.escape(figure.name, quote=True)
    title = html.escape(figure.title or figure.name)
    caption = inline(figure.caption) + " " if figure.caption else ""
    source = (embedded_png(figure_dir / f"{figure.name}.png") if figure_dir is not None else None) or f"{name}.png"
    return (f"<figure id='fig-{name}'><h3>{title}</h3><a href='{name}.png'><img src='{source}' "
            f"data-file='{name}.png' alt='{title}' loading='eager'></a><figcaption>{caption}Full resolution: "
            f"<a href='{name}.png'>PNG</a> · <a href='{name}.pdf'>PDF</a>.</figcaption></figure>")


def render(
    *,
    run_line: str,
    warnings: Sequence[str] = (),
    summary_html: str = "",
    results_html: str = "",
    notes_markdown: str = "",
    figures: Sequence[FigureEntry | str] = (),
    definitions: str = "",
    figure_dir: Path | None = None,
) -> str:
    """The whole page. Markdown arguments (``run_line``, ``notes_markdown``, ``definitions``) are rendered;
    the figures' PNGs are read from ``figure_dir`` and embedded (see the module docstring)."""
    entries = [f if isinstance(f, FigureEntry) else FigureEntry(f) for f in figures]
    nav = ["<a href='#summary'>Summary</a>" if summary_html else "",
           "<a href='#all-results'>All results</a>" if results_html else "",
           "<a href='#figures'>Figures</a>" if entries else "",
           "<a href='#definitions'>Definitions</a>" if definitions else ""]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>wsl-bench report</title><style>{STYLE}</style></head><body><main>",
        "<h1>wsl-bench report</h1>",
        f"<p>{inline(run_line)}</p>",
        f"<nav>{''.join(nav)}</nav>",
    ]
    for warning in warnings:
        parts.append(f"<p class='warning'><strong>Training did not converge.</strong> {inline(warning)}</p>")
    parts.append(summary_html)
    if results_html:
        parts += ["<section id='all-results'><h2>All results</h2>",
                  "<p>Every column of <code>results.csv</code> (hover a heading for its column name); one row per "
                  "method and class, methods by family. Click a heading to sort. <span class='hint'>Where the window "
                  "is narrower than the table, the table scrolls sideways; the method column stays.</span></p>",
                  results_html, "</section>"]
    if notes_markdown:
        parts.append(f"<section id='notes'>{to_html(notes_markdown)}</section>")
    if entries:
        parts.append("<section id='figures'><h2>Figures</h2>")
        parts += [figure_block(f, figure_dir) for f in entries]
        parts.append("</section>")
    if definitions:
        parts.append(f"<section id='definitions'><h2>Definitions</h2>{to_html(definitions)}</section>")
    parts += ["<pre id='selftest'></pre></main>", f"<script>{SCRIPT}</script></body></html>"]
    return "\n".join(p for p in parts if p)
