"""A lower-is-better primary metric (workload ``higher_is_better = False``) in the summary, plots and progress."""

import json
from pathlib import Path

from fedsim.app.progress import ProgressReporter
from fedsim.core.checks import checked_config
from fedsim.core.results import ResultsWriter, best_round, metric_higher_is_better


def record(round_: int, value: float | None, status: str = "ok") -> dict:
    return {
        "round": round_,
        "status": status,
        "metrics": {"primary_metric": value},
        "uplink_bits_total": 1000,
        "round_latency_s": 0.5,
    }


RECORDS = [record(1, 0.50), record(2, 0.20), record(3, 0.05, status="failed"), record(4, 0.30), record(5, None)]


def test_best_round_follows_the_direction():
    assert best_round(RECORDS, higher_is_better=True) == (1, 0.50)
    assert best_round(RECORDS, higher_is_better=False) == (2, 0.20)  # the failed round 3 does not count
    assert best_round([record(1, 0.2), record(2, 0.2)], higher_is_better=False) == (1, 0.2)
    assert best_round([record(1, None)], higher_is_better=False) is None


def test_workload_flags_are_read():
    assert metric_higher_is_better("clip-memorisation") is False
    assert metric_higher_is_better("text-classify") is True
    assert metric_higher_is_better("no-such-workload") is True


def test_summary_reports_the_minimum_for_a_lower_is_better_workload(tmp_path):
    cfg = checked_config({"workload.name": "clip-memorisation", "run.rounds": 5})
    writer = ResultsWriter(tmp_path / "run", cfg)
    for r in RECORDS:
        writer.append(r)
    summary = writer.finish(status="ok", error=None, primary_metric="memorisation_rate", wall_s=1.0)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["higher_is_better"] is False and on_disk["higher_is_better"] is False
    assert (on_disk["best_round"], on_disk["best_metric"]) == (2, 0.20)
    assert (tmp_path / "run" / "metric_vs_round.png").stat().st_size > 0

    cfg_up = checked_config({"workload.name": "text-classify", "run.rounds": 5})
    up = ResultsWriter(tmp_path / "up", cfg_up)
    for r in RECORDS:
        up.append(r)
    assert up.finish(status="ok", error=None, primary_metric="accuracy", wall_s=1.0)["best_round"] == 1


def test_progress_tracks_the_best_in_the_metric_direction(capsys):
    cfg = checked_config({"workload.name": "clip-memorisation", "run.rounds": 5})
    rep = ProgressReporter(cfg, quiet=True)
    rep("start", {"primary_metric": "memorisation_rate"})
    for r in RECORDS:
        rep("round", r)
    assert rep.best == 0.20
    text = rep.metric_text(0.3)
    assert "best 0.2000" in text and "lower is better" in text
    summary = {
        "workload": "clip-memorisation",
        "method": "ideal",
        "rounds_completed": 4,
        "rounds_planned": 5,
        "primary_metric": "memorisation_rate",
        "higher_is_better": False,
        "best_round": 2,
        "best_metric": 0.2,
        "final_metrics": {"primary_metric": None, "memorisation_rate": None, "mem_sim_none": 0.1},
        "cumulative_uplink_bits": 5000,
        "mean_round_latency_s": 0.5,
        "total_latency_s": 2.5,
    }
    rep.print_summary(summary, Path("out"), 1.0)
    printed = capsys.readouterr().out
    assert "best memorisation_rate" in printed and "round 2, lower is better" in printed, printed
