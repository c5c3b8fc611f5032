"""The tune report's figures (matplotlib Figures, never pyplot: see evaluation/plots.py)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from lastpool.evaluation.metrics import metric_title
from lastpool.evaluation.plots import HEIGHT, WIDTH, figure_png


def history_png(rows: list[dict[str, Any]], metric: str) -> bytes:
    """Each finished trial's value in trial order, pruned trials at their last reported epoch's place
    marked apart, and the best so far as a step line."""
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    ax = fig.subplots()
    done = [(r["trial"], r["value"]) for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if done:
        ax.plot([t for t, _ in done], [v for _, v in done], "o", color="tab:blue", label="complete")
        best, line = float("-inf"), []
        for trial, value in done:
            best = max(best, value)
            line.append((trial, best))
        ax.step([t for t, _ in line], [v for _, v in line], where="post", color="tab:red", label="best so far")
    pruned = [r["trial"] for r in rows if r["state"] == "PRUNED"]
    if pruned:
        for trial in pruned:
            ax.axvline(trial, color="tab:gray", alpha=0.3, linewidth=3)
        ax.plot([], [], color="tab:gray", alpha=0.3, linewidth=3, label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric_title(metric)}")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize="small")
    return figure_png(fig)


def importance_png(weights: dict[str, float]) -> bytes:
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    ax = fig.subplots()
    names = sorted(weights, key=lambda k: weights[k])
    ax.barh(names, [weights[k] for k in names], color="tab:blue")
    ax.set_xlabel("share of the objective's variance (fANOVA)")
    ax.set_title("parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return figure_png(fig)
