"""Markdown and self-contained HTML reports for ``lastpool cv`` and ``lastpool compare``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
         "th:first-child,td:first-child{text-align:left}.winner{font-weight:bold;background:#e8f5e9}")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], marked: set[int] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    winner = ' class="winner"'
    body = "".join(
        f"<tr{winner if marked and i in marked else ''}>"
        + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _interval(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['ci95_low']:.4f}, {s['ci95_high']:.4f}]"


def cv_tables(result: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str], list[list[Any]]]:
    summary_rows = [[name, _interval(s), s["n"]] for name, s in result["summary"].items()]
    names = list(result["summary"])
    run_rows = [[r["seed"], r["fold"], r["n_train"], r["n_test"], r["best_epoch"],
                 *(r["scores"][n] for n in names)] for r in result["runs"]]
    return (["metric", "mean ± std [95% CI]", "runs"], summary_rows,
            ["seed", "fold", "train", "test", "best epoch", *names], run_rows)


def cv_markdown(result: dict[str, Any], title: str, config_yaml: str) -> str:
    sh, sr, rh, rr = cv_tables(result)
    scheme = (f"stratified {result['folds']}-fold" if result["folds"] > 1 else "stratified hold-out")
    return "\n\n".join([
        f"# {title}",
        f"{scheme}, seeds {', '.join(map(str, result['seeds']))}: {len(result['runs'])} models, each scored on data "
        "it never saw (epoch choice and calibration use a split inside its training folds). The 95% interval is a "
        "t-interval for the mean over runs.",
        "## Summary", markdown_table(sh, sr),
        "## Per run", markdown_table(rh, rr),
        "## Configuration", f"```yaml\n{config_yaml}```",
    ]) + "\n"


def cv_html(result: dict[str, Any], title: str, config_yaml: str) -> str:
    sh, sr, rh, rr = cv_tables(result)
    return _page(title, [f"<h1>{html.escape(title)}</h1>",
                         f"<p>{len(result['runs'])} models; folds {result['folds']}, seeds "
                         f"{html.escape(', '.join(map(str, result['seeds'])))}. 95% t-interval for the mean.</p>",
                         "<h2>Summary</h2>", html_table(sh, sr), "<h2>Per run</h2>", html_table(rh, rr),
                         "<h2>Configuration</h2>", f"<pre>{html.escape(config_yaml)}</pre>"])


def compare_tables(result: dict[str, Any]) -> tuple[list[str], list[list[Any]], set[int]]:
    metric = result["metric"]
    headers = ["setting", f"{metric} mean ± std [95% CI]", "macro_f1 mean ± std", "runs"]
    rows, marked = [], set()
    for i, r in enumerate(result["results"]):
        s, f1 = r["summary"][metric], r["summary"].get("macro_f1")
        winner = result["verdict"].get("winner") == r["name"]
        if winner:
            marked.add(i)
        rows.append([r["name"] + (" (winner)" if winner else ""), _interval(s),
                     f"{f1['mean']:.4f} ± {f1['std']:.4f}" if f1 else "-", s["n"]])
    return headers, rows, marked


def verdict_text(result: dict[str, Any]) -> str:
    v = result["verdict"]
    if "runner_up" not in v:
        return f"Only one setting: {v['best']}."
    base = (f"Best by mean {v['metric']}: {v['best']}; runner-up {v['runner_up']}; paired difference "
            f"{v['mean_difference']:+.4f} over {v['pairs']} (seed, fold) pairs, paired t-test p = {v['p_value']:.3g}.")
    if v["winner"]:
        return base + f" Winner: **{v['winner']}** (p < 0.05)."
    return base + " No winner: the difference is within the noise (p >= 0.05)."


def compare_markdown(result: dict[str, Any], title: str, config_yaml: str) -> str:
    headers, rows, _ = compare_tables(result)
    return "\n\n".join([f"# {title}", "Every setting ran on the same folds and seeds.",
                        markdown_table(headers, rows), verdict_text(result),
                        "## Configuration (shared)", f"```yaml\n{config_yaml}```"]) + "\n"


def compare_html(result: dict[str, Any], title: str, config_yaml: str) -> str:
    headers, rows, marked = compare_tables(result)
    verdict = html.escape(verdict_text(result)).replace("**", "")
    return _page(title, [f"<h1>{html.escape(title)}</h1>", "<p>Every setting ran on the same folds and seeds.</p>",
                         html_table(headers, rows, marked), f"<p>{verdict}</p>",
                         "<h2>Configuration (shared)</h2>", f"<pre>{html.escape(config_yaml)}</pre>"])


def _page(title: str, parts: list[str]) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
