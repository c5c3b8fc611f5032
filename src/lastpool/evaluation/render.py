"""One renderer for every report: a small document model, one number format, Markdown and HTML out.

The run report, the model card and the cv/compare reports only build a ``Document`` from their data;
this module is the one place that formats a number for display, escapes text for Markdown or HTML,
and says what an HTML page's head holds. Every string in a document is plain text: it is escaped for
the format it goes into, so a label such as ``<script>`` or ``a|b`` shows as itself and never becomes
markup, a link or a second table cell.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# ----------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Code:
    """Inline code (a path, a label, a prompt, a command): shown verbatim."""

    text: str


@dataclass(frozen=True)
class Strong:
    """Inline emphasis, for the one word a reader must not miss (the winner of a comparison)."""

    text: str


Inline = str | Code | Strong


@dataclass(frozen=True)
class Heading:
    """A section heading; level 2 and below (the document's title is its level 1)."""

    level: int
    text: str


@dataclass(frozen=True)
class Para:
    """A paragraph of plain text and inline code."""

    parts: list[Inline]


@dataclass(frozen=True)
class BulletList:
    """An unordered list; each item is a run of inline parts, like a paragraph."""

    items: list[list[Inline]]


@dataclass(frozen=True)
class Table:
    """A table of plain-text cells; ``numeric`` columns are right-aligned, ``marked`` rows stand out in HTML."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    marked: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        """A ragged table would silently shift cells into the wrong column, so refuse one here."""
        width = len(self.header)
        if len(self.numeric) != width or any(len(row) != width for row in self.rows):
            raise ValueError(f"every row and the alignment list need {width} cells, like the header")


@dataclass(frozen=True)
class Figure:
    """A PNG image: Markdown links to ``path`` (written beside it), HTML inlines ``png`` as a data URI."""

    alt: str
    path: str
    png: bytes
    id: str = ""


@dataclass(frozen=True)
class CodeBlock:
    """Preformatted text (a config file, a shell example) shown verbatim, optionally tagged with a language."""

    text: str
    language: str = ""

    def __post_init__(self) -> None:
        """The language goes unescaped after a Markdown fence, so only a plain word is allowed."""
        if not re.fullmatch(r"[\w+-]*", self.language):
            raise ValueError(f"not a language name: {self.language!r}")


Block = Heading | Para | BulletList | Table | Figure | CodeBlock


@dataclass(frozen=True)
class Document:
    """A titled list of blocks; both outputs open with the title as the level-1 heading."""

    title: str
    blocks: list[Block]


# ----------------------------------------------------------------------------- numbers


def fmt(value: Any, digits: int = 4) -> str:
    """A number for display: counts as integers, measurements to ``digits`` decimals, and ``n/a`` where
    nothing was measured (None or NaN), so every report shows a missing score the same way."""
    if value is None:
        return "n/a"
    if isinstance(value, numbers.Integral):  # bool and numpy integers too
        return str(value)
    number = float(value)
    return "n/a" if math.isnan(number) else f"{number:.{digits}f}"


# ----------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&~!])")
_NEWLINE = re.compile(r"\r\n|\r|\n")


def md_text(text: str) -> str:
    """Plain text for Markdown: punctuation that could start markup or raw HTML is backslash-escaped and
    line breaks become ``<br>``, so a table cell stays one cell and a ``<script>`` stays text."""
    return _NEWLINE.sub("<br>", _MD_SPECIAL.sub(r"\\\1", text))


def md_code(text: str) -> str:
    """An inline code span that shows ``text`` verbatim, whatever backticks it holds (newlines shown as ``\\n``)."""
    flat = _NEWLINE.sub(r"\\n", text)
    fence = "`" * (_longest_backtick_run(flat) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat.strip() else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _md_inline(parts: list[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Code):
            out.append(md_code(part.text))
        elif isinstance(part, Strong):
            out.append(f"**{md_text(part.text)}**")
        else:
            out.append(md_text(part))
    return "".join(out)


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(md_text(h) or " " for h in table.header) + " |",
             "|" + "|".join("---:" if right else "---" for right in table.numeric) + "|"]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_code_block(block: CodeBlock) -> str:
    """A fenced block whose fence is longer than any backtick run inside, so the text cannot close it."""
    fence = "`" * max(3, _longest_backtick_run(block.text) + 1)
    body = block.text if block.text.endswith("\n") else block.text + "\n"
    return f"{fence}{block.language}\n{body}{fence}"


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {md_text(block.text)}"
    if isinstance(block, Para):
        return _md_inline(block.parts)
    if isinstance(block, BulletList):
        return "\n".join(f"- {_md_inline(item)}" for item in block.items)
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Figure):
        return f"![{md_text(block.alt)}]({quote(block.path)})"
    return _md_code_block(block)


def render_markdown(doc: Document) -> str:
    """The document as Markdown; figures are referenced by path, so their files must be written beside it."""
    chunks = [f"# {md_text(doc.title)}", *(_md_block(block) for block in doc.blocks)]
    return "\n\n".join(chunks) + "\n"


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 36rem; overflow-wrap: anywhere; }
tr.marked td { font-weight: bold; background: #e8f5e9; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; white-space: pre-wrap; }
pre { background: #f6f8fa; padding: .6rem .8rem; border-radius: 4px; overflow-x: auto; }
figure { margin: 1rem 0; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .9rem; }
"""

# Nothing but inline styles and data: images may load, so the file provably stands alone.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _html_text(text: str) -> str:
    """Plain text for HTML: escaped (quotes too, so it is safe in attributes), line breaks kept as ``<br>``."""
    return _NEWLINE.sub("<br>", html.escape(text))


def _html_inline(parts: list[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Code):
            out.append(f"<code>{html.escape(part.text)}</code>")
        elif isinstance(part, Strong):
            out.append(f"<strong>{_html_text(part.text)}</strong>")
        else:
            out.append(_html_text(part))
    return "".join(out)


def _html_cell(text: str, numeric: bool) -> str:
    """A cell; long text gets a class that lets it wrap anywhere, so one long word cannot widen the page."""
    css = "num" if numeric else ("text" if len(text) > 40 else "")
    body = _html_text(text)
    return f'<td class="{css}">{body}</td>' if css else f"<td>{body}</td>"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_html_text(h)}</th>" for h in table.header)
    rows = "".join(
        ('<tr class="marked">' if i in table.marked else "<tr>")
        + "".join(_html_cell(cell, right) for cell, right in zip(row, table.numeric, strict=True)) + "</tr>"
        for i, row in enumerate(table.rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    alt = html.escape(figure.alt)
    ident = f' id="{html.escape(figure.id)}"' if figure.id else ""
    return (f'<figure><img class="plot"{ident} alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{alt}</figcaption></figure>")


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_html_text(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f"<p>{_html_inline(block.parts)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_figure(block)
    return f"<pre>{html.escape(block.text)}</pre>"


def render_html(doc: Document, *, csp: bool = True) -> str:
    """One self-contained HTML page: figures as base64 ``data:`` URIs, inline CSS, no scripts, no links.

    ``csp`` adds a Content-Security-Policy that lets nothing but those load. The cv and compare pages
    leave it out: they hold no figures, and their check that the page names no ``http`` at all would
    read the policy's ``http-equiv`` attribute as a link.
    """
    head = ['<meta charset="utf-8">']
    if csp:
        head.append(f'<meta http-equiv="Content-Security-Policy" content="{CSP}">')
    head += ['<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(doc.title)}</title>", f"<style>{CSS}</style>"]
    body = [f"<h1>{_html_text(doc.title)}</h1>", *(_html_block(block) for block in doc.blocks)]
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n' + "\n".join(head) + "\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
