"""Put saved bench runs side by side: a table (with the SLOs each run's goodput counts against)
and PNG plots (``benchmarks/plots.py``)."""

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
        slo = m.get("slo") or {}
        rows.append([r["label"], r.get("rate") or f"c={r.get('concurrency')}",
                     m["completed"], m["errors"], 1e3 * m["ttft_s"]["p50"],
                     1e3 * m["ttft_s"]["p90"], 1e3 * m["tpot_s"]["p50"],
                     1e3 * m["tpot_s"]["p99"], m["request_throughput"],
                     m["output_token_throughput"], _ms(slo.get("ttft_s")),
                     _ms(slo.get("tpot_s")), m["goodput"], m["cached_token_share"]])
    return print_table(["run", "rate", "ok", "err", "TTFT p50 ms", "TTFT p90 ms",
                        "TPOT p50 ms", "TPOT p99 ms", "req/s", "out tok/s", "SLO TTFT ms",
                        "SLO TPOT ms", "goodput", "cached share"], rows)


def _ms(seconds: float | None) -> float | str:
    return "?" if seconds is None else 1e3 * seconds


def plot(runs: list[dict], out_dir: Path, say=print) -> list[Path]:
    """The PNG plots these runs can show (see ``benchmarks/plots.py``)."""
    from benchmarks import plots

    return plots.write(runs, out_dir, say)
