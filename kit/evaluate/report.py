"""The eval report: markdown for the bundle's model card, a rich table for the terminal, a bar plot, and the
one-line headline `kit build` prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from kit.core.run_dir import RunDir


def headline(run: RunDir) -> str:
    """One line: the primary metric per target."""
    report = json.loads((run.eval / "report.json").read_text())
    metric = report["primary_metric"]
    scores = ", ".join(f"{name} {100 * t['metrics'].get(metric, 0):.1f}" for name, t in report["targets"].items())
    return f"{metric}: {scores}"


def _runtime_cells(runtime: dict[str, Any]) -> list[str]:
    latency = runtime.get("latency_ms_p50")
    speed = f"{runtime['decode_tokens_per_s']:.1f}"
    if runtime.get("parallel", 1) > 1:
        speed += f" (batch of {runtime['parallel']})"
    return ["-" if latency is None else f"{latency:.0f}", speed, f"{runtime['peak_rss_mb']:.0f}"]


def _columns(report: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for target in report["targets"].values():
        seen.update(dict.fromkeys(target["metrics"]))
    return list(seen)


def report_markdown(report: dict[str, Any]) -> str:
    columns = _columns(report)
    head = ["target", *columns, "p50 latency ms", "decode tok/s", "peak RSS MB"]
    lines = [f"# Evaluation: {report['task']} ({report['cases']} held-out cases)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, target in report["targets"].items():
        cells = [name, *(f"{100 * target['metrics'].get(c, 0):.1f}" for c in columns), *_runtime_cells(target["runtime"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Metric columns are percentages of the eval set."]
    timing = [(name, t["runtime"]) for name, t in report["targets"].items() if t["runtime"].get("batched")]
    if timing:
        lines += ["", f"Latency, decode tok/s and peak RSS: the first {timing[0][1]['timed_cases']} cases one request "
                      "at a time, as an app runs the model. Scores: every case, with several decoded together "
                      "(greedy; the batched run repeated the timed answers in "
                      + ", ".join(f"{name} {r['timed_answers_repeated']}/{r['timed_cases']}" for name, r in timing)
                      + ")."]
    if report.get("rounds"):
        lines += ["", "Failure-driven rounds (validation split; probes: held-out teacher-labelled samples):", "",
                  "| round | validation " + report["rounds"][-1]["metric"] + " | probes | failed |", "|---|---|---|---|"]
        for r in report["rounds"]:
            score = "-" if r["validation_score"] is None else f"{100 * r['validation_score']:.1f}"
            lines.append(f"| {r['round']} | {score} | {r['probed']} | {r['failed']} |")
    return "\n".join(lines) + "\n"


def report_table(report: dict[str, Any]) -> Table:
    columns = _columns(report)
    table = Table("target", *columns, "p50 ms", "tok/s", "RSS MB", title=f"eval: {report['task']}")
    for name, target in report["targets"].items():
        table.add_row(name, *(f"{100 * target['metrics'].get(c, 0):.1f}" for c in columns),
                      *_runtime_cells(target["runtime"]))
    return table


def plot_report(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report.get("primary_metric")
    names = list(report["targets"])
    values = [100 * report["targets"][n]["metrics"].get(metric, 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
    bars = ax.bar(names, values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{report['task']}: {metric} on {report['cases']} held-out cases")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
