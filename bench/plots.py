"""Draw the PNG plots that bench/REPORT.md embeds, from bench/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"forwarder": "tab:blue", "redbeat": "tab:red"}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _color(label: str) -> str:
    if label.startswith("forwarder"):
        return COLORS["forwarder"]
    return "tab:orange" if "1 s" in label else COLORS["redbeat"]


def _cdf(
    ax: Any, samples: list[float], label: str, scale: float = 1000.0, color: str | None = ""
) -> None:
    if not samples:
        return
    xs = sorted(max(s * scale, 1e-3) for s in samples)
    ys = [(k + 1) / len(xs) for k in range(len(xs))]
    ax.step(
        xs,
        ys,
        where="post",
        label=f"{label} (n={len(xs)})",
        color=_color(label) if color == "" else color,
    )


def burst() -> None:
    data = _load("burst")
    if not data:
        return
    sizes = sorted({p["n"] for p in data["passes"]})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 4 * len(sizes)), squeeze=False)
    for row, n in enumerate(sizes):
        for col, with_worker in enumerate((False, True)):
            ax = axes[row][col]
            labelled: set[str] = set()
            if not any(p["n"] == n and p["with_worker"] == with_worker for p in data["passes"]):
                # N = 100,000 has no pass with a worker (burst.CAPPED_N): say so, not an
                # empty frame.
                ax.set_title(f"N={n}: not run with a worker pool")
                ax.axis("off")
                continue
            for p in data["passes"]:
                if p["n"] != n or p["with_worker"] != with_worker:
                    continue
                xs = [t for t, _ in p["curve"]]
                ys = [v for _, v in p["curve"]]
                name = p["scheduler"]
                ax.step(
                    xs,
                    ys,
                    where="post",
                    label=None if name in labelled else f"{name} (each repeat)",
                    color=_color(name),
                    alpha=0.7,
                )
                labelled.add(name)
            what = "ran by a noop worker pool" if with_worker else "published (queue length)"
            ax.set_title(f"N={n}: entries {what}")
            ax.set_xlabel("seconds after the common due instant")
            ax.set_ylabel("entries")
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "burst.png", dpi=90)
    plt.close(fig)


def precision() -> None:
    data = _load("precision")
    if not data:
        return
    sizes = sorted({r["n"] for r in data["results"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 4.5), squeeze=False)
    for col, n in enumerate(sizes):
        ax = axes[0][col]
        for r in data["results"]:
            if r["n"] == n:
                _cdf(ax, r["lateness_samples"], r["scheduler"])
        # Issue 22's target at 100,000 (about 1,700 firings a second) is 100 ms; 50 ms below.
        target = 100 if n >= 100_000 else 50
        ax.axvline(
            target, color="grey", linestyle="--", linewidth=1, label=f"target p99 ({target} ms)"
        )
        ax.set_xscale("log")
        # redbeat's own due time is estimated from its previous landing, so a few of its
        # firings come out at or below zero: shown at the left edge.
        ax.set_xlim(left=1)
        ax.set_title(f"Firing lateness, N={n}, {data['minutes']} min")
        ax.set_xlabel("publish time - due time (ms, log)")
        ax.set_ylabel("fraction of firings")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "precision.png", dpi=90)
    plt.close(fig)


def arming() -> None:
    data = _load("arming")
    if not data:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in data["results"]:
        _cdf(ax, r["latency_samples"], r["scheduler"])
    create = data.get("from_resource_create", {})
    if create.get("measured"):
        _cdf(ax, create["latency_samples"], "forwarder: resource create", color="tab:green")
        ax.axvline(500, color="green", linestyle=":", linewidth=1, label="target p99 (500 ms)")
    ax.axvline(100, color="grey", linestyle="--", linewidth=1, label="target p99 (100 ms)")
    ax.set_xscale("log")
    ax.set_title("Arming latency: store write -> first publish")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of trials")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "arming.png", dpi=90)
    plt.close(fig)


def memory() -> None:
    data = _load("memory")
    if not data:
        return
    figures = [r["figure"] for r in data["rows"]]
    anchor = [r["anchor"] for r in data["rows"]]
    ours = [r["forwarder"] for r in data["rows"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ys = range(len(figures))
    ax.barh([y + 0.2 for y in ys], anchor, height=0.4, label="redbeat", color=COLORS["redbeat"])
    ax.barh([y - 0.2 for y in ys], ours, height=0.4, label="forwarder", color=COLORS["forwarder"])
    ax.set_yticks(list(ys), figures)
    ax.set_xlabel("bytes per schedule entry")
    ax.set_title("Redis memory per schedule entry")
    ax.legend()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(RESULTS / "memory.png", dpi=90)
    plt.close(fig)


def roundtrip() -> None:
    data = _load("roundtrip")
    if not data or not data.get("results"):
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in data["results"]:
        _cdf(ax, r["latency_samples"], f"{r['path']} x{r['clients']}", color=None)
    ax.set_xscale("log")
    ax.set_title("Interactive round trip")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "roundtrip.png", dpi=90)
    plt.close(fig)


def summary() -> None:
    """bench/results/SUMMARY.md: every benchmark's side-by-side rows as Markdown tables."""
    lines = ["# Benchmark results (generated by bench/run.py; read bench/REPORT.md)", ""]
    for name in (
        "burst",
        "precision",
        "arming",
        "roundtrip",
        "memory",
        "operator_scale",
        "worker_throughput",
    ):
        data = _load(name)
        if data is None:
            continue
        machine = data["machine"]
        lines += [
            f"## {name}",
            "",
            f"{data['when_utc']}, {data.get('mode', '')} mode, {machine['cpu_count']} x "
            f"{machine['cpu_model']}, load {machine['load_avg_at_start'][0]:.1f}, "
            f"Python {machine['python']}",
            "",
        ]
        if data.get("measured") is False:
            lines += [f"Not measured: {data['why']}", ""]
            continue
        if "rows" in data:
            lines += ["| figure | anchor | forwarder | ratio (>1: forwarder better) |"]
            lines += ["|---|---:|---:|---:|"]
            for row in data["rows"]:
                unit = row["unit"]
                lines.append(
                    f"| {row['figure']} | {row['anchor']:.4g} {unit} | "
                    f"{row['forwarder']:.4g} {unit} | {row['ratio']:.2f}x |"
                )
            lines.append("")
        if name == "operator_scale":
            for r in data["results"]:
                shown = {k: v for k, v in r.items() if not k.startswith("curve")}
                lines += [f"- N={r['n']}: `{json.dumps(shown)}`"]
            lines.append("")
        if name == "arming" and data.get("from_resource_create", {}).get("measured"):
            got = data["from_resource_create"]["latency_s"]
            lines += [
                f"Resource create -> publish (operator): p50 {got['p50'] * 1000:.1f} ms, "
                f"p99 {got['p99'] * 1000:.1f} ms, max {got['max'] * 1000:.1f} ms",
                "",
            ]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines))


def operator_scale() -> None:
    data = _load("operator_scale")
    if not data or not data.get("measured"):
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in data["results"]:
        if "curve_seconds_stored_ready" not in r:
            continue
        curve = r["curve_seconds_stored_ready"]
        ts = [c[0] for c in curve]
        ax.plot(ts, [c[1] for c in curve], label=f"N={r['n']}: entries stored")
        ax.plot(ts, [c[2] for c in curve], linestyle="--", label=f"N={r['n']}: status Ready")
    ax.set_title("Operator start -> entries stored and resources Ready (kube-apiserver and etcd)")
    ax.set_xlabel("seconds after operator start")
    ax.set_ylabel("resources")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "operator_scale.png", dpi=90)
    plt.close(fig)


def draw_all() -> None:
    """Redraw every plot whose results exist, and the summary tables."""
    for draw in (burst, precision, arming, memory, roundtrip, operator_scale):
        draw()
    summary()


if __name__ == "__main__":
    draw_all()
