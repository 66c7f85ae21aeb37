"""TSFA wired into a real run: offline rank plan, two-message rounds, every decision recorded."""

import csv
import json

import numpy as np
import pytest

from tests.helpers.runs import SMALL, run_fedsim

pytestmark = pytest.mark.slow

TSFA = ["--method", "soft", "--scheduler", "tsfa", "--set", "tsfa.plan_samples=40", *SMALL]


def test_tsfa_run_records_every_decision(tmp_path):
    out = tmp_path / "tsfa"
    proc = run_fedsim(
        [
            "run",
            "--clients",
            "5",
            "--rounds",
            "2",
            "--clients-per-round",
            "4",
            "--out",
            str(out),
            "--quiet",
            *TSFA,
            "--set",
            "tsfa.latency_budget_s=0.2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = list(csv.DictReader((out / "rank_plan.csv").open()))
    feasible = [int(r["rank"]) for r in plan if r["feasible"] == "True"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lora_rank"] == max(feasible) and summary["scheduler"] == "tsfa"
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    queue = 0.0
    for r in records:
        for key in ("rho", "queue_s", "round_latency_s", "objective", "solver_status", "solve_time_s", "fallback"):
            assert key in r
        assert r["rho"] in (0.0, 0.25, 0.5, 0.75)
        assert r["queue_s"] == pytest.approx(queue)  # Q_t used for the decision
        queue = max(queue + r["round_latency_s"] - 0.2, 0.0)  # Q_{t+1} = max(Q_t + T_t - T_avg, 0)
        bands = np.array([c["bandwidth_hz"] for c in r["clients"]])
        assert bands.sum() == pytest.approx(20e6, rel=1e-6)
        assert {c["payload_bits"] for c in r["clients"]} == {r["uplink_bits_total"] // len(r["clients"])}
        rank, k = summary["lora_rank"], r["kept_ranks"]
        assert k == max(1, int(np.ceil((1 - r["rho"]) * rank - 1e-9)))
        # the chosen rho minimises the drift-plus-penalty objective over the grid it reports
        assert [rho for rho, _ in r["latency_by_rho"]] == [0.0, 0.25, 0.5, 0.75]


def test_infeasible_budget_names_the_smallest_feasible_one(tmp_path):
    proc = run_fedsim(
        [
            "run",
            "--clients",
            "4",
            "--clients-per-round",
            "2",
            "--out",
            str(tmp_path / "x"),
            *TSFA,
            "--set",
            "tsfa.latency_budget_s=0.0001",
        ]
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedsim: ") and "smallest feasible" in last
    assert not (tmp_path / "x").exists()
