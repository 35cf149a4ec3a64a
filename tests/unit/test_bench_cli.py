"""`pdserve bench` as a user meets it: fresh prompts each run, the SLOs in its table, plots
that one run can show, and a working command without matplotlib."""

import argparse
import json
import subprocess
import sys

import pytest

from benchmarks import cli_bench, compare, plots
from benchmarks.serving_metrics import RequestRecord
from tests.cluster_helpers import ROOT


def parse(*argv):
    parser = argparse.ArgumentParser()
    cli_bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def records(n=6, rate_s=0.5):
    """Completed requests sent every ``rate_s`` seconds: TTFT 0.2 s, 4 tokens 50 ms apart."""
    out = []
    for i in range(n):
        sent = 100.0 + rate_s * i
        chunks = [sent + 0.2 + 0.05 * k for k in range(4)]
        out.append(RequestRecord(sent, 64, 4, chunk_times=chunks, chunk_tokens=[1] * 4,
                                 done_at=chunks[-1], output_tokens=4))
    return out


def result(*argv, n=6):
    args = parse(*argv)
    seed, workload = cli_bench.plan(args)
    return cli_bench.make_result(args, workload, "demo", seed, records(n), 5.0)


def test_each_run_draws_fresh_prompts_and_prints_its_seed(capsys):
    first_seed, first = cli_bench.plan(parse("--workload", "random", "--num-requests", "4"))
    second_seed, second = cli_bench.plan(parse("--workload", "random", "--num-requests", "4"))
    printed = capsys.readouterr().out
    assert first_seed != second_seed and first.sessions != second.sessions
    assert f"seed {first_seed}" in printed and f"--seed {second_seed}" in printed
    again_seed, again = cli_bench.plan(parse("--workload", "random", "--num-requests", "4",
                                             "--seed", str(first_seed)))
    assert again_seed == first_seed and again.sessions == first.sessions  # a run repeated
    assert result("--seed", "11")["seed"] == 11


def test_the_table_shows_the_slos_goodput_counts_against(capsys):
    text = compare.table([result("--slo-ttft", "1.5", "--slo-tpot", "0.08")])
    header, _, row = text.splitlines()
    cells = dict(zip([h.strip() for h in header.split("|")], [c.strip() for c in row.split("|")],
                     strict=True))
    assert cells["SLO TTFT ms"] == "1500" and cells["SLO TPOT ms"] == "80"
    assert float(cells["goodput"]) == pytest.approx(6 / 5.0)  # all 6 within the SLOs, over 5 s


def test_one_run_plots_latencies_and_their_course_not_a_single_rate_dot(tmp_path):
    pytest.importorskip("matplotlib")
    one = result("--rate", "2")
    assert one["timeline"]["sent_s"] == pytest.approx([0.5 * i for i in range(6)])
    written = {p.name for p in plots.write([one], tmp_path / "one")}
    assert written == {"latency_cdf.png", "over_time.png"}
    assert all((tmp_path / "one" / name).stat().st_size > 0 for name in written)
    # Two rates of one system make a curve; runs at one rate each get goodput per run.
    low, high = result("--rate", "1", "--system", "s"), result("--rate", "2", "--system", "s")
    assert "goodput_tpot_vs_rate.png" in {p.name for p in plots.write([low, high],
                                                                      tmp_path / "sweep")}
    other = result("--rate", "1", "--label", "other")
    assert "goodput_by_run.png" in {p.name for p in plots.write([low, other], tmp_path / "two")}


def test_without_matplotlib_the_json_is_saved_and_plots_are_skipped(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as after `pip install '.[nixl]'`
    out = tmp_path / "run.json"
    assert cli_bench.save_and_plot(result(), out, None) == []
    assert json.loads(out.read_text())["metrics"]["completed"] == 6
    printed = capsys.readouterr().out
    assert plots.MISSING_MATPLOTLIB in printed and "pdserve[bench]" in printed
    assert not (tmp_path / "run-plots").exists()


def test_compare_without_matplotlib_exits_zero(tmp_path):
    saved = tmp_path / "a.json"
    saved.write_text(json.dumps(result(), default=str))
    hide = ("import sys; sys.modules['matplotlib'] = None; from deploy.cli import main; "
            f"sys.exit(main(['bench', '--compare', {str(saved)!r}]))")
    run = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SLO TTFT ms" in run.stdout and plots.MISSING_MATPLOTLIB in run.stdout


def test_help_says_where_compare_writes_its_plots(tmp_path):
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "bench", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    assert "compare-plots/" in " ".join(run.stdout.split())
    assert cli_bench.compare_plot_dir([tmp_path / "runs" / "a.json"]) == (
        tmp_path / "runs" / "compare-plots")
