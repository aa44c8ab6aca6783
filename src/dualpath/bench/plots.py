"""PNG figures of one run: JCT / TTFT / TPOT distributions and throughput over time.

matplotlib is imported inside the function (Agg backend), so importing this module is cheap
and works on machines without a display.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualpath.workload.metrics import TurnRecord, agent_jcts_s, throughput_timeline

log = logging.getLogger(__name__)


def _cdf(ax: Any, values: Sequence[float], xlabel: str, title: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    if n:
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)


def write_plots(
    records: Sequence[TurnRecord], out_dir: str | Path, *, title: str = ""
) -> list[Path]:
    """Write jct_cdf.png, ttft_cdf.png, tpot_cdf.png and throughput.png into out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f" ({title})" if title else ""
    series = {
        "jct_cdf.png": (list(agent_jcts_s(records).values()), "agent JCT (s)", "Agent JCT"),
        "ttft_cdf.png": ([r.ttft_s for r in records], "TTFT (s)", "TTFT per turn"),
        "tpot_cdf.png": (
            [v * 1e3 for v in (r.tpot_s for r in records) if v is not None],
            "TPOT (ms)",
            "TPOT per turn",
        ),
    }
    written: list[Path] = []
    for name, (values, xlabel, plot_title) in series.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        _cdf(ax, values, xlabel, plot_title + suffix)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    times, rates = throughput_timeline(records)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(times, rates)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("generated tok/s")
    ax.set_title("Throughput over time" + suffix)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)
    written.append(out / "throughput.png")
    log.info("wrote %d plots to %s", len(written), out)
    return written
