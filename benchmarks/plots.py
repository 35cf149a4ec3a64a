"""PNG plots of bench runs: what the runs given can show.

- every run: TTFT / TPOT / end-to-end latency CDFs (``latency_cdf.png``);
- runs that saved a per-request timeline: TTFT and TPOT of each request against the time it
  was sent, with the SLOs drawn (``over_time.png``): one run's warm-up, queueing, drift;
- a system measured at two or more request rates: goodput and p99 TPOT against the rate
  (``goodput_tpot_vs_rate.png``); several runs otherwise: goodput per run
  (``goodput_by_run.png``). One rate is a single dot, so no rate plot for it.

matplotlib is optional (the ``bench`` extra): without it ``write`` says so in one line and
returns no paths; the JSON results do not depend on it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MISSING_MATPLOTLIB = ("[bench] plots skipped: matplotlib is not installed "
                      "(pip install 'pdserve[bench]'; in a checkout: pip install -e '.[bench]')")


def available() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules (how tests hide it)
        return False


def write(runs: list[dict], out_dir: Path, say=print) -> list[Path]:
    """Write the plots ``runs`` can show into ``out_dir``; the paths written."""
    if not available():
        say(MISSING_MATPLOTLIB)
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw, wanted in (("latency_cdf.png", _latency_cdfs, True),
                               ("over_time.png", _over_time,
                                any(r.get("timeline") for r in runs)),
                               ("goodput_tpot_vs_rate.png", _versus_rate, _rate_sweeps(runs)),
                               ("goodput_by_run.png", _goodput_by_run,
                                len(runs) > 1 and not _rate_sweeps(runs))):
        if wanted:
            fig = draw(plt, runs)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=110)
            plt.close(fig)
            written.append(out_dir / name)
    return written


def _rate_sweeps(runs: list[dict]) -> dict[str, list[dict]]:
    """Systems with runs at two or more request rates, their runs by rate."""
    by_system: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("rate"):
            by_system.setdefault(r.get("system") or r["label"], []).append(r)
    return {s: sorted(rs, key=lambda r: r["rate"]) for s, rs in by_system.items()
            if len({r["rate"] for r in rs}) >= 2}


def _latency_cdfs(plt, runs):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in runs:
        for ax, key in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
            values = sorted(r["samples"][key])
            if values:
                ax.plot([1e3 * v for v in values],
                        [(i + 1) / len(values) for i in range(len(values))], label=r["label"])
    for ax, title in zip(axes, ("TTFT", "TPOT", "end-to-end"), strict=True):
        ax.set_title(f"{title} CDF")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def _over_time(plt, runs):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for r in runs:
        t = r.get("timeline")
        if not t:
            continue
        axes[0].scatter(t["sent_s"], [1e3 * v for v in t["ttft_s"]], s=10, label=r["label"])
        points = [(s, v) for s, v in zip(t["sent_s"], t["tpot_s"], strict=True) if v is not None]
        axes[1].scatter([s for s, _ in points], [1e3 * v for _, v in points], s=10,
                        label=r["label"])
    for ax, title, key in ((axes[0], "TTFT", "ttft_s"), (axes[1], "TPOT", "tpot_s")):
        for slo in sorted({r["metrics"].get("slo", {}).get(key) for r in runs} - {None}):
            ax.axhline(1e3 * slo, color="red", linestyle="--", linewidth=1,
                       label=f"SLO {1e3 * slo:g} ms")
        ax.set_title(f"{title} per request")
        ax.set_xlabel("sent at (s since the first request)")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _versus_rate(plt, runs):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for system, rs in _rate_sweeps(runs).items():
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
    return fig


def _goodput_by_run(plt, runs):
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 4))
    labels = [r["label"] for r in runs]
    ax.bar(labels, [r["metrics"]["goodput"] for r in runs])
    ax.set_title("goodput (req/s meeting both SLOs)")
    ax.set_ylabel("req/s")
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3, axis="y")
    return fig
