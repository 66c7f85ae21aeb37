"""Experiment tracking: events and runs read back with TensorBoard's and MLflow's own readers.

Skipped when the ``tracking`` extra is not installed (the ``test`` extra installs it).
"""

from __future__ import annotations

import json

import pytest

from fedsim.app.tracking import Tracker, TrackingReporter, check_tracking, track_folder, tracked
from fedsim.core.config import ConfigError, build_config
from fedsim.core.results import read_rounds
from tests.helpers.synthetic import write_run


def test_tracking_is_off_by_default_and_checked():
    cfg = build_config()
    assert cfg.tracking.backends == ""
    sentinel = object()
    assert tracked(sentinel, cfg, "unused") is sentinel
    with pytest.raises(ConfigError, match=r"tracking.backends='wandb': must be '' or a comma-separated list"):
        build_config({"tracking.backends": "wandb"})
    check_tracking(build_config({"tracking.backends": ""}))


def test_missing_backend_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"mlflow is not installed \(pip install .*fedsim\[tracking\]"):
        check_tracking(build_config({"tracking.backends": "tensorboard, mlflow"}))


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = write_run(
        tmp_path / "run", {"run.method": "soft", "run.scheduler": "tsfa", "tracking.backends": "tensorboard"}, 0.6
    )
    records = read_rounds(folder)
    calls = []
    reporter = tracked(
        lambda event, data: calls.append(event),
        build_config({"tracking.backends": "tensorboard", "run.clients": 4, "run.clients_per_round": 4}),
        folder,
    )
    assert isinstance(reporter, TrackingReporter)
    reporter("start", {"first_round": 1})
    for r in records:
        reporter("round", r)
    reporter("end", json.loads((folder / "summary.json").read_text()))
    assert calls == ["start", "round", "round", "round", "end"]

    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"metrics/primary_metric", "metrics/accuracy", "round/round_latency_s", "round/uplink_bits_total"} <= set(
        tags["scalars"]
    )
    assert {"round/rho", "round/queue_s", "round/cumulative_uplink_bits"} <= set(tags["scalars"])
    values = [(e.step, e.value) for e in acc.Scalars("metrics/primary_metric")]
    assert values == [(r["round"], pytest.approx(r["metrics"]["primary_metric"])) for r in records]
    cum = [e.value for e in acc.Scalars("round/cumulative_uplink_bits")]
    assert cum == pytest.approx([sum(r["uplink_bits_total"] for r in records[: i + 1]) for i in range(3)])
    queue = [e.value for e in acc.Scalars("round/queue_s")]
    assert queue == pytest.approx([r["queue_s"] for r in records])
    hist = acc.Histograms("clients/bandwidth_hz")
    assert [h.step for h in hist] == [1, 2, 3]
    first = hist[0].histogram_value
    bands = [c["bandwidth_hz"] for c in records[0]["clients"]]
    assert first.num == 4 and first.min == pytest.approx(min(bands)) and first.max == pytest.approx(max(bands))
    assert first.sum == pytest.approx(sum(bands))


def test_mlflow_run_read_back_and_resumed(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns
    folder = write_run(tmp_path / "run-a", {"run.seed": 3}, 0.6)
    records = read_rounds(folder)
    cfg = build_config(
        {"run.clients": 4, "run.clients_per_round": 4, "run.seed": 3, "run.rounds": 3, "tracking.backends": "mlflow"}
    )
    tracker = Tracker(cfg, folder)
    tracker.start(first_round=1)
    tracker.log_round(records[0])
    # the process dies here; a resumed run continues the same MLflow run
    tracker = Tracker(cfg, folder)
    tracker.start(first_round=2)
    for r in records[1:]:
        tracker.log_round(r)
    tracker.finish(json.loads((folder / "summary.json").read_text()))

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("text-classify")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a"
    assert run.data.params["run.seed"] == "3" and run.data.params["tsfa.rho_grid"] == "[0.0, 0.25, 0.5, 0.75]"
    assert len(run.data.params) == len(cfg.to_flat())
    assert run.data.tags["results_dir"] == str(folder.resolve())
    history = client.get_metric_history(run.info.run_id, "metrics/primary_metric")
    assert [(m.step, m.value) for m in history] == [
        (r["round"], pytest.approx(r["metrics"]["primary_metric"])) for r in records
    ]
    cum = client.get_metric_history(run.info.run_id, "round/cumulative_uplink_bits")
    assert [m.value for m in cum][-1] == sum(r["uplink_bits_total"] for r in records)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "rounds.jsonl", "summary.json", "metric_vs_round.png"} <= artifacts
    assert "tracking.json" not in artifacts


def test_track_folder_replays_a_finished_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    folder = write_run(tmp_path / "old", {}, 0.4, status="failed")
    uri = (tmp_path / "store").as_uri()
    cfg = build_config(
        {
            "run.clients": 4,
            "run.clients_per_round": 4,
            "run.rounds": 3,
            "tracking.backends": "mlflow",
            "tracking.mlflow_uri": uri,
            "tracking.experiment": "replay",
        }
    )
    track_folder(folder, cfg)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("replay").experiment_id])
    assert run.info.status == "FAILED"
    assert len(client.get_metric_history(run.info.run_id, "round/round_latency_s")) == 3
