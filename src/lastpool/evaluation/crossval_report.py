"""Markdown and self-contained HTML reports for ``lastpool cv`` and ``lastpool compare``.

Each report is one ``render.Document`` built from the result JSON, rendered twice, so the two files
say the same thing; ``render`` does the escaping, the number format and the page.
"""

from __future__ import annotations

from typing import Any

from lastpool.evaluation.render import (
    Block,
    CodeBlock,
    Document,
    Heading,
    Inline,
    Para,
    Strong,
    Table,
    fmt,
    render_html,
    render_markdown,
)


def _interval(s: dict[str, float]) -> str:
    return f"{fmt(s['mean'])} ± {fmt(s['std'])} [{fmt(s['ci95_low'])}, {fmt(s['ci95_high'])}]"


def cv_tables(result: dict[str, Any]) -> tuple[Table, Table]:
    """The summary (one row per metric) and every run's scores."""
    names = list(result["summary"])
    summary = Table(["metric", "mean ± std [95% CI]", "runs"],
                    [[name, _interval(s), fmt(s["n"])] for name, s in result["summary"].items()],
                    [False, True, True])
    runs = Table(["seed", "fold", "train", "test", "best epoch", *names],
                 [[fmt(r["seed"]), fmt(r["fold"]), fmt(r["n_train"]), fmt(r["n_test"]), fmt(r["best_epoch"]),
                   *(fmt(r["scores"][n]) for n in names)] for r in result["runs"]],
                 [True] * (5 + len(names)))
    return summary, runs


def cv_document(result: dict[str, Any], title: str, config_yaml: str) -> Document:
    summary, runs = cv_tables(result)
    scheme = f"stratified {result['folds']}-fold" if result["folds"] > 1 else "stratified hold-out"
    return Document(title, [
        Para([f"{scheme}, seeds {', '.join(map(str, result['seeds']))}: {len(result['runs'])} models, each scored "
              "on data it never saw (epoch choice and calibration use a split inside its training folds). The 95% "
              "interval is a t-interval for the mean over runs."]),
        Heading(2, "Summary"), summary,
        Heading(2, "Per run"), runs,
        Heading(2, "Configuration"), CodeBlock(config_yaml, "yaml"),
    ])


def cv_markdown(result: dict[str, Any], title: str, config_yaml: str) -> str:
    return render_markdown(cv_document(result, title, config_yaml))


def cv_html(result: dict[str, Any], title: str, config_yaml: str) -> str:
    """The page without a CSP meta tag: it has no figures to allow, and it must name no ``http`` at all."""
    return render_html(cv_document(result, title, config_yaml), csp=False)


def compare_table(result: dict[str, Any]) -> Table:
    """One row per setting, ranked; the winner's row is named and marked."""
    metric = result["metric"]
    rows, marked = [], set()
    for i, r in enumerate(result["results"]):
        s, f1 = r["summary"][metric], r["summary"].get("macro_f1")
        winner = result["verdict"].get("winner") == r["name"]
        if winner:
            marked.add(i)
        rows.append([r["name"] + (" (winner)" if winner else ""), _interval(s),
                     f"{fmt(f1['mean'])} ± {fmt(f1['std'])}" if f1 else "-", fmt(s["n"])])
    return Table(["setting", f"{metric} mean ± std [95% CI]", "macro_f1 mean ± std", "runs"], rows,
                 [False, True, True, True], frozenset(marked))


def verdict_parts(result: dict[str, Any]) -> list[Inline]:
    """Which setting is best, and whether it beats the runner-up beyond the noise (the winner emphasised)."""
    v = result["verdict"]
    if "runner_up" not in v:
        return [f"Only one setting: {v['best']}."]
    base = (f"Best by mean {v['metric']}: {v['best']}; runner-up {v['runner_up']}; paired difference "
            f"{v['mean_difference']:+.4f} over {v['pairs']} (seed, fold) pairs, paired t-test p = {v['p_value']:.3g}.")
    if v["winner"]:
        return [base, " Winner: ", Strong(v["winner"]), " (p < 0.05)."]
    return [base + " No winner: the difference is within the noise (p >= 0.05)."]


def verdict_text(result: dict[str, Any]) -> str:
    """The verdict as one line of text for the terminal, the winner between ``**``."""
    return "".join(p if isinstance(p, str) else f"**{p.text}**" if isinstance(p, Strong) else p.text
                   for p in verdict_parts(result))


def compare_document(result: dict[str, Any], title: str, config_yaml: str) -> Document:
    blocks: list[Block] = [Para(["Every setting ran on the same folds and seeds."]), compare_table(result),
                           Para(verdict_parts(result)),
                           Heading(2, "Configuration (shared)"), CodeBlock(config_yaml, "yaml")]
    return Document(title, blocks)


def compare_markdown(result: dict[str, Any], title: str, config_yaml: str) -> str:
    return render_markdown(compare_document(result, title, config_yaml))


def compare_html(result: dict[str, Any], title: str, config_yaml: str) -> str:
    """Without a CSP meta tag, like the cv page."""
    return render_html(compare_document(result, title, config_yaml), csp=False)
