"""Checkpoints: atomic commits, corruption detection, and no trust in a half-written one."""

import errno
import json
import os

import numpy as np
import pytest

from fedsim.core import checkpoint as ck
from fedsim.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def make(round_: int) -> Checkpoint:
    state = {"a": np.full((2, 3), float(round_), np.float32), "b": np.arange(4, dtype=np.float32)}
    return Checkpoint(round_, state, [{"round": r} for r in range(1, round_ + 1)], {"queue": 0.5 * round_}, "abc")


def test_round_trip_and_pruning(tmp_path):
    save_checkpoint(tmp_path, make(1))
    save_checkpoint(tmp_path, make(2))
    got = load_checkpoint(tmp_path)
    assert got.round == 2 and got.records == [{"round": 1}, {"round": 2}] and got.scheduler == {"queue": 1.0}
    assert np.array_equal(got.state["a"], make(2).state["a"])
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["adapter-000002.safetensors", "state.json"]


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path) is None


def test_corrupt_adapter_is_refused(tmp_path):
    save_checkpoint(tmp_path, make(3))
    adapter = tmp_path / "checkpoint" / "adapter-000003.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0xFF
    adapter.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(tmp_path)


def test_corrupt_state_is_refused(tmp_path):
    save_checkpoint(tmp_path, make(1))
    (tmp_path / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)


def test_full_disk_during_commit_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, make(1))
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(ck.STATE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, make(2))
    monkeypatch.setattr(ck.os, "replace", real_replace)
    got = load_checkpoint(tmp_path)
    assert got.round == 1 and np.array_equal(got.state["a"], make(1).state["a"])
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["round"] == 1


def test_a_finished_run_reads_back_with_its_last_checkpointed_adapter(tmp_path):
    """fedsim.core.finished.load_final_model: the folder's own configuration, its last verified checkpoint
    loaded into the workload's model; round 0 (the initial adapter) without one; another workload refused."""
    from fedsim.core.checks import checked_config
    from fedsim.core.finished import load_final_model
    from fedsim.core.results import ResultsWriter
    from fedsim.core.training import initial_state
    from workloads.base import trainable_state

    cfg = checked_config({"run.clients": 2, "run.clients_per_round": 2, "workload.samples_per_client": 4})
    ResultsWriter(tmp_path, cfg)
    _, model, round_ = load_final_model(tmp_path)
    start = initial_state(cfg)
    assert round_ == 0 and all(np.array_equal(v, start[k]) for k, v in trainable_state(model).items())
    trained = {k: v + 1.0 for k, v in start.items()}
    save_checkpoint(tmp_path, Checkpoint(2, trained, [], {}, "abc"))
    workload, model, round_ = load_final_model(tmp_path, "text-classify")
    assert round_ == 2 and workload.name == "text-classify" and not model.training
    assert all(np.array_equal(v, trained[k]) for k, v in trainable_state(model).items())
    with pytest.raises(ValueError, match="a text-classify run, not dapd"):
        load_final_model(tmp_path, "dapd")
