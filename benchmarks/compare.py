"""Put saved bench runs side by side: a table, and PNG plots (latency CDFs; goodput and p99
TPOT against request rate)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import print_table


def load(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        run = json.loads(Path(path).read_text())
        run.setdefault("label", Path(path).stem)
        runs.append(run)
    return runs


def table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        m = r["metrics"]
        rows.append([r["label"], r.get("rate") or f"c={r.get('concurrency')}",
                     m["completed"], m["errors"], 1e3 * m["ttft_s"]["p50"],
                     1e3 * m["ttft_s"]["p90"], 1e3 * m["tpot_s"]["p50"],
                     1e3 * m["tpot_s"]["p99"], m["request_throughput"],
                     m["output_token_throughput"], m["goodput"], m["cached_token_share"]])
    return print_table(["run", "rate", "ok", "err", "TTFT p50 ms", "TTFT p90 ms",
                        "TPOT p50 ms", "TPOT p99 ms", "req/s", "out tok/s", "goodput",
                        "cached share"], rows)


def plot(runs: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in runs:
        for ax, key in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
            values = sorted(r["samples"][key])
            if values:
                ax.plot([1e3 * v for v in values], [(i + 1) / len(values)
                                                     for i in range(len(values))],
                        label=r["label"])
    for ax, title in zip(axes, ("TTFT", "TPOT", "end-to-end"), strict=True):
        ax.set_title(f"{title} CDF")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    rated = [r for r in runs if r.get("rate")]
    if rated:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        by_system: dict[str, list[dict]] = {}
        for r in rated:
            by_system.setdefault(r.get("system") or r["label"], []).append(r)
        for system, rs in by_system.items():
            rs.sort(key=lambda r: r["rate"])
            rates = [r["rate"] for r in rs]
            axes[0].plot(rates, [r["metrics"]["goodput"] for r in rs], marker="o", label=system)
            axes[1].plot(rates, [1e3 * r["metrics"]["tpot_s"]["p99"] for r in rs], marker="o",
                         label=system)
        axes[0].set_title("goodput (req/s meeting both SLOs)")
        axes[1].set_title("TPOT p99 (ms)")
        for ax in axes:
            ax.set_xlabel("offered load (req/s)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "goodput_tpot_vs_rate.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
