"""End-to-end runs through Flower's Simulation Runtime and Ray (slow)."""

import json
import math

import pytest

from fedsim.core.results import read_rounds
from tests.helpers.runs import (
    CLIENT_FIELDS,
    run_args,
    run_fedsim,
)

pytestmark = pytest.mark.slow


def test_small_run_records(small_run):
    rounds = read_rounds(small_run)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert len(r["clients"]) == 3
        ids = [c["client_id"] for c in r["clients"]]
        assert ids == sorted(ids) and set(ids) <= {0, 1, 2, 3}
        for c in r["clients"]:
            assert CLIENT_FIELDS <= set(c)
            assert 10 <= c["distance_m"] <= 500 and c["rate_bps"] > 0 and not c["dropped"]
            assert math.isclose(c["upload_time_s"], c["payload_bits"] / c["rate_bps"], rel_tol=1e-9)
        assert math.isclose(r["round_latency_s"], max(c["compute_time_s"] + c["upload_time_s"] for c in r["clients"]))
        assert r["uplink_bits_total"] == sum(c["payload_bits"] for c in r["clients"])
        assert r["metrics"]["primary_metric"] == r["metrics"]["accuracy"]
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    # FedSA-LoRA: A (8 x 384) of LoRA(query, value) r=8 on 6 layers + a 384 x C (+ C bias) head, 32 bits
    # per value; B stays on the clients, one file per client and round
    from workloads.text_classify import TOPICS

    c = len(TOPICS)
    assert rounds[0]["clients"][0]["payload_bits"] == (6 * 2 * 8 * 384 + 384 * c + c) * 32
    assert all("personal_accuracy" in r["metrics"] for r in rounds)
    for r in rounds:
        for cl in r["clients"]:
            assert (
                small_run / "client_state" / f"client-{cl['client_id']:06d}" / f"round-{r['round']:06d}.safetensors"
            ).is_file()
    summary = json.loads((small_run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2
    assert summary["cumulative_uplink_bits"] == sum(r["uplink_bits_total"] for r in rounds)
    assert summary["versions"]["flwr"].startswith("1.42")
    assert summary["device"] == {"type": "cpu", "name": "cpu", "gpus_per_client": 0.0, "bf16": False}
    for png in ("metric_vs_round.png", "metric_vs_uplink_bits.png"):
        assert (small_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import tomllib

    cfg = tomllib.loads((small_run / "config.toml").read_text())
    assert cfg["run"]["clients"] == 4 and cfg["run"]["seed"] == 7 and cfg["workload"]["test_samples"] == 64


def test_notebook_executes_on_a_run(small_run, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read("notebooks/quickstart.ipynb", as_version=4)
    env_cell = nbformat.v4.new_code_cell(f"RESULTS = {str(small_run)!r}")
    nb.cells.insert(0, env_cell)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_client_exception_fails_the_run_with_one_line(tmp_path):
    out = tmp_path / "crash"
    proc = run_fedsim(run_args(3, 2, 2, "--out", str(out), "--set", "faults.client_crash_prob=1.0"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("fedsim: run failed: round 1: client ")
    assert "ClientAppException: injected client crash" in lines[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 0 and summary["failed_rounds"] == [1, 2]
    assert "injected client crash" in summary["error"]


def test_dead_actors_fail_their_rounds_and_the_run_says_so(tmp_path):
    """Every client process dies every round: Ray restarts them, each round is recorded as failed."""
    out = tmp_path / "dead"
    proc = run_fedsim(
        run_args(
            3,
            2,
            2,
            "--out",
            str(out),
            "--set",
            "faults.client_crash_prob=1.0",
            "--set",
            "faults.client_crash_mode=exit",
        )
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedsim: run failed: round 1: client ") and "process died" in last
    assert "failed rounds: 1, 2)" in last and last.endswith(f"(results in {out})")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_rounds"] == [1, 2]
