"""The Markdown the report writes, as HTML: just the subset its texts use, with no dependency.

Blocks: paragraphs (separated by blank lines, lines joined), ``- `` / ``* `` lists, ``#`` headings.
Inline: ```code```, ``**bold**``, ``*italic*``. Everything else is text, HTML-escaped. The report's
sentences (definitions, notes, verdicts) are written once, in Markdown, for ``results.md``; the page
shows them through :func:`to_html` instead of printing the asterisks and backticks.
"""

from __future__ import annotations

import html
import re

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])")
_ITEM = re.compile(r"^\s*[-*]\s+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def inline(text: str) -> str:
    """One line or paragraph of Markdown text → HTML (escaped; code spans are left unformatted)."""
    codes: list[str] = []

    def keep(match: re.Match[str]) -> str:
        codes.append(f"<code>{html.escape(match.group(1), quote=False)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    text = html.escape(_CODE.sub(keep, text), quote=False)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _ITALIC.sub(r"<em>\1</em>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], text)


def to_html(markdown: str, heading_offset: int = 0) -> str:
    """Blocks of Markdown → HTML; ``heading_offset`` demotes headings (``#`` → ``<h2>`` with 1)."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        heading = _HEADING.match(lines[0])
        if heading and len(lines) == 1:
            level = min(len(heading.group(1)) + heading_offset, 6)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif all(_ITEM.match(line) or line.startswith("  ") for line in lines) and _ITEM.match(lines[0]):
            items: list[str] = []
            for line in lines:  # an indented line continues the item above it
                if _ITEM.match(line):
                    items.append(_ITEM.sub("", line))
                else:
                    items[-1] += " " + line.strip()
            out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
        else:
            out.append(f"<p>{inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)
