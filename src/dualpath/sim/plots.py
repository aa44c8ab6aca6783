"""PNG figures of simulator runs: JCT per system (the ablation bars), NIC utilization over
time, the TTFT breakdown, and a sweep's JCT curve. matplotlib is imported lazily (Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_jct_bars(reports: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["system"] for r in reports]
    jcts = [r["jct_s"] for r in reports]
    bars = ax.bar(names, jcts, color="#4477aa")
    base = jcts[0] if jcts else 0.0
    for b, j in zip(bars, jcts, strict=True):
        label = f"{j:.0f} s" + (f"\n{(j / base - 1) * 100:+.1f}%" if base else "")
        ax.annotate(label, (b.get_x() + b.get_width() / 2, j), ha="center", va="bottom", fontsize=8)
    r0 = reports[0] if reports else {}
    ax.set_ylabel("job completion time (s)")
    ax.set_title(f"JCT per system: {r0.get('model', '')} {r0.get('pd', '')}, {r0.get('num_agents', '')} agents")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_nic_utilization(report: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    tl = report.get("timeline") or {}
    bin_s = tl.get("bin_s", 1.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("snic_pe_utilization", "SNIC, prefill nodes"),
                       ("snic_de_utilization", "SNIC, decode nodes"),
                       ("cnic_rx_utilization", "CNIC (rx), all GPUs")):
        ys = tl.get(key) or []
        ax.plot([i * bin_s for i in range(len(ys))], ys, label=label)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("utilization (of goodput)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"NIC utilization: {report.get('system', '')}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ttft_breakdown(reports: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["system"] for r in reports]
    bottom = [0.0] * len(reports)
    for key, label in (("ttft_queue_s_mean", "queueing"), ("ttft_read_s_mean", "reading"),
                       ("ttft_prefill_s_mean", "prefill")):
        vals = [float(r.get(key, 0.0)) for r in reports]
        ax.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("mean TTFT (s)")
    ax.set_title("TTFT breakdown")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(points: Sequence[dict[str, Any]], key: str, path: Path) -> Path:
    """points: {"value", "system", "jct_s"} rows; one line per system."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    systems = sorted({p["system"] for p in points}, key=[p["system"] for p in points].index)
    for s in systems:
        rows = [p for p in points if p["system"] == s]
        ax.plot([str(p["value"]) for p in rows], [p["jct_s"] for p in rows], marker="o", label=s)
    ax.set_xlabel(key)
    ax.set_ylabel("job completion time (s)")
    ax.set_title(f"sweep over {key}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ladder_vs_paper(simulated: dict[str, float], paper: dict[str, float], path: Path,
                         tolerance_points: float = 5.0) -> Path:
    """The ablation ladder (JCT change vs basic, %) next to the paper's, with its ± band."""
    plt = _plt()
    rungs = list(paper)
    xs = range(len(rungs))
    fig, ax = plt.subplots(figsize=(7, 4))
    sim = [simulated.get(r, float("nan")) * 100 for r in rungs]
    pap = [paper[r] * 100 for r in rungs]
    ax.bar([x - 0.2 for x in xs], sim, width=0.4, label="simulated", color="#4477aa")
    ax.bar([x + 0.2 for x in xs], pap, width=0.4, label="paper", color="#cc6677")
    ax.errorbar([x + 0.2 for x in xs], pap, yerr=tolerance_points, fmt="none", ecolor="black",
                capsize=4, label=f"paper ± {tolerance_points:g} points")
    for x, v in zip(xs, sim, strict=True):
        ax.annotate(f"{v:+.1f}%", (x - 0.2, v), ha="center", va="top", fontsize=8)
    ax.set_xticks(list(xs), rungs)
    ax.set_ylabel("JCT vs basic (%)")
    ax.set_title("ablation ladder: simulated vs paper")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
