"""The one renderer every report goes through: the number format, each block in Markdown and HTML, and
escaping of hostile text in both."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from lastpool.evaluation.render import (
    CSP,
    Block,
    BulletList,
    Code,
    CodeBlock,
    Document,
    Figure,
    Heading,
    Para,
    Strong,
    Table,
    fmt,
    md_code,
    md_text,
    render_html,
    render_markdown,
)

HOSTILE = '<script>alert("x")</script> & a | b'


def _md(*blocks: Block, title: str = "T") -> str:
    """The Markdown of ``blocks`` without the title line every document opens with."""
    return render_markdown(Document(title, list(blocks))).split("\n\n", 1)[1]


def _body(*blocks: Block, title: str = "T") -> str:
    """The HTML of ``blocks`` between the title heading and the end of the body."""
    page = render_html(Document(title, list(blocks)))
    return page.split("</h1>\n", 1)[1].split("\n</body>", 1)[0]


# ----------------------------------------------------------------------------- fmt
@pytest.mark.parametrize(("value", "digits", "shown"), [
    (3, 4, "3"), (0, 4, "0"), (np.int64(7), 4, "7"), (True, 4, "True"),
    (0.123456, 4, "0.1235"), (2.0, 4, "2.0000"), (3.25, 1, "3.2"), (np.float32(0.5), 3, "0.500"),
    (None, 4, "n/a"), (float("nan"), 4, "n/a"), (np.nan, 2, "n/a"), (-0.5, 2, "-0.50"),
])
def test_fmt(value: object, digits: int, shown: str) -> None:
    assert fmt(value, digits) == shown


# ----------------------------------------------------------------------------- Markdown
def test_markdown_document_opens_with_the_title_and_ends_with_one_newline() -> None:
    md = render_markdown(Document("A <b> title", [Heading(2, "Part"), Para(["x"])]))
    assert md == "# A \\<b\\> title\n\n## Part\n\nx\n"


def test_markdown_inline_parts() -> None:
    assert _md(Para(["see ", Code("a`b"), " and ", Strong("win_ner"), "."])) == "see ``a`b`` and **win\\_ner**.\n"


def test_markdown_bullet_list() -> None:
    assert _md(BulletList([["one ", Code("x")], ["two # not a heading"]])) == "- one `x`\n- two \\# not a heading\n"


def test_markdown_table_alignment_and_hostile_cells() -> None:
    md = _md(Table(["name", "", "n"], [[HOSTILE, "line one\nline two", "3"]], [False, False, True]))
    lines = md.splitlines()
    assert lines[0] == "| name |   | n |"  # an empty header cell stays a cell
    assert lines[1] == "|---|---|---:|"
    assert lines[2].count(" | ") == 2, "a | or a newline in a cell must not add a cell or a row"
    assert "<script>" not in md and "\\<script\\>" in md and "a \\| b" in md and "line one<br>line two" in md
    assert len(lines) == 3


def test_markdown_figure_links_to_its_path() -> None:
    md = _md(Figure("Loss [per epoch]", "plots/a b.png", b"png"))
    assert md == "![Loss \\[per epoch\\]](plots/a%20b.png)\n"


def test_markdown_code_block_fence_outlasts_the_text() -> None:
    assert _md(CodeBlock("a: 1\n", "yaml")) == "```yaml\na: 1\n```\n"
    assert _md(CodeBlock("no newline")) == "```\nno newline\n```\n"
    md = _md(CodeBlock('prompt: "``` {text}"\n', "yaml"))
    assert md.startswith("````yaml\n") and md.endswith("\n````\n")  # the inner ``` cannot close the block


def test_md_text_and_md_code() -> None:
    assert md_text("a|b\r\nc") == "a\\|b<br>c"
    assert md_code("x") == "`x`" and md_code("`x`") == "`` `x` ``" and md_code("a\nb") == "`a\\nb`"


# ----------------------------------------------------------------------------- HTML
def test_html_page_head_and_title() -> None:
    page = render_html(Document("R & D <1>", [Para(["x"])]))
    assert page.startswith("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert "<title>R &amp; D &lt;1&gt;</title>" in page and "<h1>R &amp; D &lt;1&gt;</h1>" in page
    assert "<style>" in page and "<script" not in page and "<link" not in page
    assert page.endswith("</body>\n</html>\n")


def test_html_page_without_csp_names_no_http() -> None:
    page = render_html(Document("T", [Para(["x"])]), csp=False)
    assert "Content-Security-Policy" not in page and "http" not in page


def test_html_heading_para_and_inline() -> None:
    body = _body(Heading(2, "A <h>"), Para(["a\nb ", Code("<x>"), " ", Strong("w&n")]))
    assert body == "<h2>A &lt;h&gt;</h2>\n<p>a<br>b <code>&lt;x&gt;</code> <strong>w&amp;n</strong></p>"


def test_html_bullet_list() -> None:
    assert _body(BulletList([["a ", Code("b")], ["<c>"]])) == "<ul><li>a <code>b</code></li><li>&lt;c&gt;</li></ul>"


def test_html_table_cells_classes_and_marked_rows() -> None:
    long = "word " * 10
    body = _body(Table(["k", "v"], [["a", "1"], [long, "2"], [HOSTILE, "3\n4"]], [False, True], frozenset({1})))
    assert body.startswith("<table><thead><tr><th>k</th><th>v</th></tr></thead><tbody>")
    assert '<tr><td>a</td><td class="num">1</td></tr>' in body
    assert f'<tr class="marked"><td class="text">{long}</td>' in body
    assert "<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a | b</td>" in body
    assert '<td class="num">3<br>4</td>' in body and "<script" not in body


def test_html_figure_inlines_the_png() -> None:
    body = _body(Figure('A "quoted" <plot>', "plots/p.png", b"\x89PNG", id="plot-p"))
    src = re.search(r'src="data:image/png;base64,([^"]+)"', body)
    assert src is not None and base64.b64decode(src.group(1)) == b"\x89PNG"
    assert '<img class="plot" id="plot-p" alt="A &quot;quoted&quot; &lt;plot&gt;" src=' in body
    assert "<figcaption>A &quot;quoted&quot; &lt;plot&gt;</figcaption>" in body and "plots/p.png" not in body
    assert " id=" not in _body(Figure("a", "p.png", b"x"))


def test_html_code_block_is_escaped_verbatim() -> None:
    assert _body(CodeBlock("a: <b>\n  c: '&'\n", "yaml")) == "<pre>a: &lt;b&gt;\n  c: &#x27;&amp;&#x27;\n</pre>"


def test_hostile_text_never_becomes_markup() -> None:
    """The same hostile string in every place text can go: no tag, no script, in either format."""
    doc = Document(HOSTILE, [Heading(2, HOSTILE), Para([HOSTILE, Code(HOSTILE), Strong(HOSTILE)]),
                             BulletList([[HOSTILE]]), Table([HOSTILE], [[HOSTILE]], [False]),
                             Figure(HOSTILE, "p.png", b"x"), CodeBlock(HOSTILE)])
    page = render_html(doc)
    # title, h1, h2, three inline parts, the item, two cells, the alt text and caption, the pre block
    assert "<script" not in page and page.count("&lt;script&gt;") == 12
    md = render_markdown(doc)
    outside_code = re.sub(r"`+[^`]*`+|```\n.*?\n```", "", md, flags=re.DOTALL)
    assert "<script>" not in outside_code


# ----------------------------------------------------------------------------- the model refuses nonsense
def test_ragged_tables_and_odd_languages_are_refused() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        Table(["a", "b"], [["1"]], [False, True])
    with pytest.raises(ValueError, match="2 cells"):
        Table(["a", "b"], [], [False])
    with pytest.raises(ValueError, match="language"):
        CodeBlock("x", "yaml\n# evil")


# ----------------------------------------------------------------------------- the reports build through it
def test_run_report_is_one_document_rendered_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """report.md and report.html are exactly the two renderings of report_document's Document."""
    from lastpool.evaluation import report as run_report
    from tests.test_report import synthetic_report

    pngs = {"confusion_matrix": b"\x89PNG cm", "reliability": b"\x89PNG rel"}  # no matplotlib needed
    monkeypatch.setattr(run_report, "report_plots", lambda report: pngs)
    report = synthetic_report()
    run_report.write_report(tmp_path, report)
    doc = run_report.report_document(report, pngs)
    assert doc.title == report.title
    assert [b.id for b in doc.blocks if isinstance(b, Figure)] == ["plot-confusion_matrix", "plot-reliability"]
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == render_markdown(doc)
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == render_html(doc)


def test_model_card_is_front_matter_then_its_document() -> None:
    """README.md is the Hub metadata followed by model_card_document's Markdown; hostile labels stay text."""
    from lastpool.evaluation.model_card import model_card, model_card_document
    from tests.test_report import _spec, synthetic_report

    report = synthetic_report()
    spec = {**_spec({"type": "scratch", "config": {"d_model": 8}}), "labels": ["<script>", "a|b"]}
    card = model_card(spec, report.data, report.val, report.calibration)
    doc = model_card_document(spec, report.data, report.val, report.calibration)
    front, markdown = card.split("\n---\n\n", 1)
    assert front.startswith("---\nlibrary_name: lastpool") and markdown == render_markdown(doc)
    assert doc.title == "Text classifier: <script> / a|b"
    assert markdown.startswith("# Text classifier: \\<script\\> / a\\|b\n")
    assert "`<script>`, `a|b`" in markdown  # inline code shows labels verbatim
    assert "<script" not in render_html(doc) and "&lt;script&gt;" in render_html(doc)  # HTML works too


def _summary(n: int = 4) -> dict[str, float]:
    return {"n": n, "mean": 0.805, "std": 0.005, "ci95_low": 0.79, "ci95_high": 0.82}


def test_cv_report_is_one_document_rendered_twice() -> None:
    """Both cv files come from cv_document; a hostile metric name stays in its cell and NaN shows as n/a."""
    from lastpool.evaluation.crossval_report import cv_document, cv_html, cv_markdown

    runs = [{"seed": 0, "fold": f, "n_train": 8, "n_test": 2, "best_epoch": 1,
             "scores": {"accuracy": 0.8, "f1[<b>|x]": float("nan")}} for f in range(2)]
    result = {"folds": 2, "seeds": [0], "runs": runs, "summary": {"accuracy": _summary(), "f1[<b>|x]": _summary()}}
    title, config = "Cross-validation: d.csv", 'prompt: "``` {text}"\n'
    doc = cv_document(result, title, config)
    md, page = cv_markdown(result, title, config), cv_html(result, title, config)
    assert md == render_markdown(doc) and page == render_html(doc, csp=False)
    assert "| 0 | 1 | 8 | 2 | 1 | 0.8000 | n/a |" in md and "f1\\[\\<b\\>\\|x\\]" in md
    assert md.count("\n````") == 2  # the config's own ``` cannot end its block
    assert "<b>" not in page and "f1[&lt;b&gt;|x]" in page and "http" not in page


@pytest.mark.parametrize("winner", [True, False])
def test_compare_report_marks_the_winner_only_when_there_is_one(winner: bool) -> None:
    from lastpool.evaluation.crossval_report import compare_document, compare_html, compare_markdown, verdict_text

    verdict = {"metric": "accuracy", "best": "pooling=last", "runner_up": "pooling=mean", "mean_difference": 0.02,
               "pairs": 4, "p_value": 0.01 if winner else 0.4, "winner": "pooling=last" if winner else None}
    result = {"metric": "accuracy", "verdict": verdict,
              "results": [{"name": "pooling=last", "summary": {"accuracy": _summary(), "macro_f1": _summary()}},
                          {"name": "pooling=mean", "summary": {"accuracy": _summary()}}]}
    doc = compare_document(result, "Comparison", "a: 1\n")
    table = next(b for b in doc.blocks if isinstance(b, Table))
    assert table.marked == (frozenset({0}) if winner else frozenset())
    md, page = compare_markdown(result, "Comparison", "a: 1\n"), compare_html(result, "Comparison", "a: 1\n")
    assert md == render_markdown(doc) and page == render_html(doc, csp=False)
    assert ("pooling=last (winner)" in md) == winner and ("**pooling=last**" in md) == winner
    assert ('<tr class="marked">' in page) == winner and ("<strong>pooling=last</strong>" in page) == winner
    assert ("Winner: **pooling=last** (p < 0.05)." in verdict_text(result)) == winner
