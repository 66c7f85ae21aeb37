"""Experiment tracking: TensorBoard event files and MLflow runs, off by default.

Turned on with ``tracking.backends = "tensorboard,mlflow"`` (needs ``pip install 'fedsim[tracking]'``).
A :class:`Tracker` follows the run's reporter events (``start``, ``round``, ``end`` of
:func:`fedsim.flower.server_app.serve`), so TensorBoard shows a run while it runs and a resumed run
continues the same MLflow run; :func:`track_folder` replays a finished results folder the same way.

What is logged, under the same names in both tools:

- ``metrics/<name>``: the workload's metrics of every round (``metrics/primary_metric`` included);
- ``round/<field>``: every numeric field of the round record (``round_latency_s``,
  ``uplink_bits_total``, ``rho``, ``queue_s``, ...) and ``round/cumulative_uplink_bits``;
- TensorBoard histograms ``clients/<field>`` over the round's clients (``bandwidth_hz``,
  ``rate_bps``, ``payload_bits``, ...);
- MLflow: parameters = the resolved configuration (every ``section.key``), tags ``workload``,
  ``method``, ``seed``, ``results_dir``; at the end the results folder (without its checkpoint) as
  artifacts and the run's status.

TensorBoard writes to ``<results>/tensorboard``; MLflow to ``tracking.mlflow_uri`` (default: a
local file store ``./mlruns``), experiment ``tracking.experiment`` (default: the workload's name).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.core.config import Config, ConfigError

BACKENDS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""Backend name -> the module it needs."""
HISTOGRAM_FIELDS = (
    "bandwidth_hz",
    "rate_bps",
    "payload_bits",
    "upload_time_s",
    "compute_time_s",
    "distance_m",
    "gain_db",
    "train_loss",
)
STATE_FILE = "tracking.json"
"""In the results folder: the MLflow run a resumed run continues."""


def backends(cfg: Config) -> list[str]:
    """The backends ``cfg`` turns on, in the order given."""
    return [b.strip() for b in cfg.tracking.backends.split(",") if b.strip()]


def check_tracking(cfg: Config) -> None:
    """Each backend named must be importable; else a one-line ConfigError saying what to install."""
    for name in backends(cfg):
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise ConfigError(
                f"tracking.backends={cfg.tracking.backends!r}: {name} is not installed "
                "(pip install -c constraints-cpu.txt 'fedsim[tracking]')"
            )


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def scalars(record: dict[str, Any], cumulative_bits: int) -> dict[str, float]:
    """The scalars of one round record, by tag (``metrics/accuracy``, ``round/round_latency_s``, ...)."""
    out = {f"metrics/{k}": x for k, v in (record.get("metrics") or {}).items() if (x := _number(v)) is not None}
    for key, value in record.items():
        if key not in ("round", "metrics") and (x := _number(value)) is not None:
            out[f"round/{key}"] = x
    out["round/cumulative_uplink_bits"] = float(cumulative_bits)
    return out


class Tracker:
    """Writes one run's records to the backends ``cfg`` names; every method is a no-op without any."""

    def __init__(self, cfg: Config, out_dir: str | Path):
        self.cfg, self.out = cfg, Path(out_dir)
        self.names = backends(cfg)
        self.cum_bits = 0
        self._tb = None
        self._mlflow = None
        self._run_id: str | None = None

    def start(self, first_round: int = 1) -> None:
        """Open the writers; a resumed run (``first_round`` > 1) counts the bits of the rounds before it."""
        from fedsim.core.results import read_rounds

        if (self.out / "rounds.jsonl").is_file():
            self.cum_bits = sum(r["uplink_bits_total"] for r in read_rounds(self.out) if r["round"] < first_round)
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        if "mlflow" in self.names:
            self._start_mlflow()

    def _start_mlflow(self) -> None:
        uri = mlflow_uri(self.cfg)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.8 keeps it behind a switch
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        state_path = self.out / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state.get("mlflow_uri") == uri and state.get("mlflow_run_id"):
            self._run_id = state["mlflow_run_id"]
            client.update_run(self._run_id, status="RUNNING")
        else:
            experiment_id = _experiment_id(client, self.cfg.tracking.experiment or self.cfg.workload.name)
            run = client.create_run(
                experiment_id,
                run_name=self.out.resolve().name,
                tags={
                    "workload": self.cfg.workload.name,
                    "method": self.cfg.run.method,
                    "seed": str(self.cfg.run.seed),
                    "results_dir": str(self.out.resolve()),
                },
            )
            self._run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, _param_text(v)) for k, v in self.cfg.to_flat().items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                client.log_batch(self._run_id, params=params[i : i + 100])
            state_path.write_text(json.dumps({"mlflow_uri": uri, "mlflow_run_id": self._run_id}) + "\n")
        self._mlflow = client

    def log_round(self, record: dict[str, Any]) -> None:
        """One round: scalars to both backends, per-client histograms to TensorBoard."""
        step = int(record["round"])
        self.cum_bits += int(record.get("uplink_bits_total", 0))
        values = scalars(record, self.cum_bits)
        if self._tb is not None:
            import numpy as np

            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)
            for key in HISTOGRAM_FIELDS:
                xs = [x for c in record.get("clients", []) if (x := _number(c.get(key))) is not None]
                if xs:
                    self._tb.add_histogram(f"clients/{key}", np.asarray(xs, dtype=np.float64), step)
            self._tb.flush()
        if self._mlflow is not None:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(tag, value, now, step) for tag, value in values.items()]
            for i in range(0, len(metrics), 1000):
                self._mlflow.log_batch(self._run_id, metrics=metrics[i : i + 1000])

    def finish(self, summary: dict[str, Any] | None) -> None:
        """Close the writers; MLflow gets the results folder as artifacts and the run's status."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            for path in sorted(self.out.iterdir()):
                if path.name in ("checkpoint", STATE_FILE) or path.name.startswith("."):
                    continue
                if path.is_dir():
                    self._mlflow.log_artifacts(self._run_id, str(path), artifact_path=path.name)
                else:
                    self._mlflow.log_artifact(self._run_id, str(path))
            ok = summary is not None and summary.get("status") == "ok"
            self._mlflow.set_terminated(self._run_id, status="FINISHED" if ok else "FAILED")
            self._mlflow = None


def mlflow_uri(cfg: Config) -> str:
    """``tracking.mlflow_uri``, or a file store ``./mlruns`` (absolute) when empty."""
    return cfg.tracking.mlflow_uri or Path("mlruns").resolve().as_uri()


def _experiment_id(client: Any, name: str) -> str:
    """The experiment ``name``, created if missing (concurrent runs of a sweep may race to create it)."""
    for _ in range(5):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # created by another process meanwhile
            continue
    raise RuntimeError(f"cannot create MLflow experiment {name!r}")


def _param_text(value: Any) -> str:
    text = json.dumps(list(value)) if isinstance(value, tuple) else str(value)
    return text[:6000]


Reporter = Callable[[str, dict[str, Any]], None]


class TrackingReporter:
    """A reporter that forwards every event to ``inner`` and logs it with a :class:`Tracker`.

    A tracking failure (a full disk, an unreachable MLflow server) is reported once on stderr and
    turns tracking off; the run itself goes on.
    """

    def __init__(self, inner: Reporter, tracker: Tracker):
        self.inner, self.tracker = inner, tracker
        self._broken = False

    def __getattr__(self, name: str) -> Any:  # print_summary, context management of the inner reporter
        return getattr(self.inner, name)

    def __enter__(self) -> TrackingReporter:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.inner(event, data)
        if self._broken:
            return
        try:
            if event == "start":
                self.tracker.start(int(data.get("first_round", 1)))
            elif event == "round":
                self.tracker.log_round(data)
            elif event == "end":
                self.tracker.finish(data)
        except Exception as e:  # tracking is an observer: it never fails a run
            self._broken = True
            sys.stderr.write(f"fedsim: tracking stopped: {type(e).__name__}: {e}\n")


def tracked(reporter: Any, cfg: Config, out_dir: str | Path) -> Any:
    """``reporter`` itself when ``cfg`` tracks nothing, else wrapped in a :class:`TrackingReporter`."""
    return TrackingReporter(reporter, Tracker(cfg, out_dir)) if backends(cfg) else reporter


def track_folder(folder: str | Path, cfg: Config | None = None) -> None:
    """Replay a results folder's records into the backends of ``cfg`` (default: its own ``config.toml``).

    For runs made without tracking: ``track_folder(dir, build_config(saved, {"tracking.backends": "mlflow"}))``.
    """
    from fedsim.core.config import build_config, load_toml
    from fedsim.core.results import read_rounds

    folder = Path(folder)
    cfg = cfg or build_config(load_toml(folder / "config.toml", "results folder"))
    tracker = Tracker(cfg, folder)
    tracker.start(first_round=1)
    for record in read_rounds(folder):
        tracker.log_round(record)
    summary_path = folder / "summary.json"
    tracker.finish(json.loads(summary_path.read_text()) if summary_path.is_file() else None)
