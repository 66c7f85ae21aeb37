"""fedsim sweep end to end: real fedsim runs through Flower and Ray (slow)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fedsim.core.results import read_rounds
from tests.helpers.runs import run_fedsim, two_node_ray_cluster

pytestmark = pytest.mark.slow

SWEEP = """
[sweep]
name = "tiny"
seeds = {seeds}

[run]
clients = 4
rounds = {rounds}
clients_per_round = 2

[workload]
samples_per_client = 16
test_samples = 64

[faults]
client_straggle_prob = {straggle}
straggle_delay_s = 2.0

[tracking]
backends = "{tracking}"
"""


def _sweep_file(tmp_path, rounds=2, straggle=0.0, tracking="", seeds=(0, 1)):
    path = tmp_path / "tiny.toml"
    text = SWEEP.format(rounds=rounds, straggle=straggle, tracking=tracking, seeds=list(seeds))
    path.write_text(textwrap.dedent(text))
    return path


def test_sweep_killed_halfway_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    """One run at a time; SIGINT once the second run has checkpointed a round; the same command finishes."""
    tracking = "tensorboard,mlflow" if _has("tensorboard") and _has("mlflow") else ""
    path = _sweep_file(tmp_path, rounds=2, straggle=1.0, tracking=tracking)  # every round >= 2 s
    out = tmp_path / "sw"
    args = [sys.executable, "-m", "fedsim", "sweep", str(path), "--out", str(out), "--jobs", "1", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = out / "runs" / "seed-1" / "checkpoint" / "state.json"
    deadline = time.time() + 600
    while not second.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert second.is_file(), proc.communicate()[1][-3000:] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert f"fedsim sweep {path} --out {out}" in err
    index = {r["name"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert index["seed-0"]["status"] == "done" and index["seed-1"]["status"] == "interrupted"
    first_summary = (out / "runs" / "seed-0" / "summary.json").stat().st_mtime_ns

    again = run_fedsim(["sweep", str(path), "--out", str(out), "--quiet"], timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == str(out)
    assert (out / "runs" / "seed-0" / "summary.json").stat().st_mtime_ns == first_summary  # not redone
    assert "--resume" in (out / "logs" / "seed-1.log").read_text()
    assert [r["round"] for r in read_rounds(out / "runs" / "seed-1")] == [1, 2]
    index = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in index["runs"]] == ["done", "done"]
    assert (out / "sweep.csv").read_text().splitlines()[1].startswith("seed-0,done,0,")

    report = run_fedsim(["report", str(out)], timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    page = (out / "report" / "report.md").read_text()
    assert "2 finished runs of 2" in page and "| n | final accuracy | uplink (Mbit) |" in page
    assert (out / "report" / "figures" / "metric_vs_uplink_bits.svg").is_file()
    if "tensorboard" in tracking:
        assert any((out / "runs" / "seed-1" / "tensorboard").iterdir())
    if "mlflow" in tracking:
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.8 reads file stores only with it
        client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["seed-0", "seed-1"]  # the resumed run kept its MLflow run
        resumed = next(r for r in runs if r.info.run_name == "seed-1")
        assert resumed.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "metrics/primary_metric")]
        assert steps == [1, 2]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(shutil.which("ray") is None, reason="ray CLI not installed")
def test_sweep_on_a_two_node_ray_cluster(tmp_path):
    """A head and a second node on loopback; the sweep's runs reach them with --ray-address (this is
    also the test of ``fedsim run --ray-address``: a sweep runs each of its runs with it)."""
    with two_node_ray_cluster("127.0.0.3") as address:
        path = _sweep_file(tmp_path, rounds=1, seeds=(0,))  # one run shows the way to the cluster
        out = tmp_path / "cluster"
        proc = run_fedsim(["sweep", str(path), "--out", str(out), "--quiet", "--ray-address", address], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        folder = out / "runs" / "seed-0"
        assert json.loads((folder / "summary.json").read_text())["status"] == "ok"
        assert [r["round"] for r in read_rounds(folder)] == [1]
        assert f'ray_address = "{address}"' in (folder / "config.toml").read_text()
        assert json.loads((out / "sweep.json").read_text())["jobs"] == 1
