"""Nothing trusted that can be checked (issue 27): a resume checks a checkpoint's folders, records and
tensors against what the checkpoint does not attest itself, and a run leaves nothing in the temp folder.

A results folder here is what the round engine writes with stub clients (real records, real
checkpoint, milliseconds); the refusals run as real ``fedsim`` processes (tests/helpers/refusals.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedsim.core import client_state
from fedsim.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_folders,
    check_records,
    check_tensors,
    load_checkpoint,
    save_checkpoint,
)
from fedsim.core.config import build_config, load_toml
from fedsim.core.methods import get_method
from fedsim.core.records import ClientRecord, json_problem
from fedsim.core.results import LOCK
from fedsim.core.runner import run
from tests.helpers.engine import HEAD, A, B, InProcessClients, StubHost, make_cfg
from tests.helpers.refusals import run_case

SMALL_WORKLOAD = {"workload.samples_per_client": 16, "workload.test_samples": 64}


def interrupted_run(folder: Path, rounds: int = 2, **overrides) -> Path:
    """A results folder as a run killed after ``rounds`` rounds leaves it (no summary.json)."""
    tsfa = {"tsfa.latency_budget_s": 50.0, "tsfa.plan_samples": 5}
    cfg = make_cfg(**{"run.rounds": rounds, **SMALL_WORKLOAD, **tsfa, **overrides})
    run(cfg, StubHost(), lambda: (InProcessClients(), {}), folder)
    (folder / "summary.json").unlink()
    return folder


def contents(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with its SHA-256 (files) or link target: equal when nothing was written."""

    def what(p: Path) -> str:
        if p.is_symlink():
            return f"-> {os.readlink(p)}"
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"

    return {str(p.relative_to(folder)): what(p) for p in sorted(folder.rglob("*"))}


def edit_state(folder: Path, edit) -> None:
    """Rewrite checkpoint/state.json through ``edit(meta)`` (what a hand or a script can do)."""
    path = folder / "checkpoint" / "state.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def built_adapter(folder: Path) -> dict[str, np.ndarray]:
    """The stub workload's adapter of the run's configuration (config.toml: the rank plan's rank)."""
    return StubHost().initial_state(build_config(load_toml(folder / "config.toml")))


def refuse(folder: Path, fragment: str, tmp_path: Path, cpu_limit_s: float) -> None:
    """``fedsim run --resume folder`` as a real process: exit 2, one line with ``fragment``, no
    traceback, the folder unchanged (no lock file), nothing in the temp folder, within ``cpu_limit_s``."""
    before = contents(folder)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    code, text, _, cpu_s = run_case(["--resume", str(folder)], None, tmp_path, {"TMPDIR": str(tmp)})
    if cpu_s > cpu_limit_s:  # CPU time is noisy on a shared machine: the better of two measurements
        cpu_s = min(cpu_s, run_case(["--resume", str(folder)], None, tmp_path, {"TMPDIR": str(tmp)})[3])
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fedsim: ") and fragment in lines[0], text
    assert "Traceback" not in text
    assert contents(folder) == before and not (folder / LOCK).exists()
    assert list(tmp.iterdir()) == []  # no Ray session folder, no torch cache: nothing started
    assert cpu_s <= cpu_limit_s, f"{cpu_s:.2f} s CPU"


# ---- records: the typed record of fedsim.core.records is the schema --------------------------------------


def test_engine_records_are_round_records_and_each_wrong_field_is_named(tmp_path):
    folder = interrupted_run(tmp_path / "run", **{"run.method": "topk-ef", "run.scheduler": "tsfa"})
    record = json.loads((folder / "rounds.jsonl").read_text().splitlines()[0])
    assert json_problem(record) is None
    assert json_problem(record["clients"][0], ClientRecord) is None
    cases = [
        (lambda r: r.pop("wall_s"), "lacks the field 'wall_s'"),
        (lambda r: r.update(extra=1), "has an unknown field 'extra'"),
        (lambda r: r.update(round=True), "round is True, not int"),
        (lambda r: r["clients"][1].update(gain_db="x"), "clients[1].gain_db is 'x', not float"),
        (lambda r: r["clients"][0].pop("los"), "clients[0] lacks the field 'los'"),
        (lambda r: r.update(failures=[{"client_id": 1}]), "failures[0] lacks the field 'reason'"),
        (lambda r: r.update(metrics=[1]), "metrics is [1], not dict"),
        (lambda r: r.update(objective="x"), "objective is 'x', not float"),
    ]
    for edit, phrase in cases:
        bad = json.loads(json.dumps(record))
        edit(bad)
        assert json_problem(bad) == phrase
    assert json_problem({**record, "mean_abs_cos": None}) is None  # a non-finite float is written as null


@pytest.mark.parametrize(("method", "scheduler"), [("soft", "equal"), ("fedsa", "fixed"), ("soft-ef", "tsfa")])
def test_a_run_s_own_folder_passes_every_check(tmp_path, method, scheduler):
    folder = interrupted_run(tmp_path / "run", **{"run.method": method, "run.scheduler": scheduler})
    with (folder / "rounds.jsonl").open("a") as f:
        f.write('{"round": 3, "status": "half-writ')  # the round a crash interrupted: not checked
    check_folders(folder)
    ckpt = load_checkpoint(folder)
    check_records(folder, ckpt)
    check_tensors(folder, ckpt, built_adapter(folder), get_method(method).needs_client_state)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m["records"].pop(), "records of rounds [1], not 1 to 2"),
        (lambda m: m["records"][1].update(round=3), "records of rounds [1, 3], not 1 to 2"),
        (lambda m: m["records"][0]["clients"][0].update(rate_bps="fast"), "round 1 clients[0].rate_bps is 'fast'"),
        (lambda m: m["records"][1].pop("status"), "round 2 lacks the field 'status'"),
        (lambda m: m["records"][1].update(uplink_bits_total=1), "round 2 differs from its record"),
    ],
)
def test_records_that_are_not_the_run_s_are_refused(tmp_path, edit, fragment):
    folder = interrupted_run(tmp_path / "run")
    edit_state(folder, edit)
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        check_records(folder, load_checkpoint(folder))


def test_rounds_jsonl_that_lost_a_round_is_refused(tmp_path):
    folder = interrupted_run(tmp_path / "run")
    rounds = folder / "rounds.jsonl"
    rounds.write_text(rounds.read_text().splitlines(keepends=True)[0])
    with pytest.raises(CheckpointError, match="holds 1 rounds; checkpoint .* holds 2"):
        check_records(folder, load_checkpoint(folder))
    rounds.unlink()  # no rounds.jsonl: the checkpoint's records alone
    check_records(folder, load_checkpoint(folder))


# ---- folders: no link out of the results folder --------------------------------------------------------


@pytest.mark.parametrize("link", ["checkpoint", "client_state", "client_state/client-000000"])
def test_a_link_in_checkpoint_or_client_state_is_refused(tmp_path, link):
    folder = interrupted_run(tmp_path / "run", **{"run.method": "topk-ef"})
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder / link, elsewhere)
    (folder / link).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match="is a symbolic link"):
        check_folders(folder)


# ---- tensors: against the adapter the configuration builds --------------------------------------------


def test_adapter_tensors_are_checked_by_name_shape_and_dtype(tmp_path):
    folder = interrupted_run(tmp_path / "run")
    built = built_adapter(folder)
    ckpt = load_checkpoint(folder)
    for state, fragment in [
        ({**built, A: np.zeros((4, 6), np.float32)}, f"tensor '{A}' has shape (4, 6); the configuration builds (8, 6)"),
        ({**built, B: built[B].astype(np.float64)}, f"tensor '{B}' is float64; the configuration builds float32"),
        ({**built, "extra": built[A]}, "has tensor 'extra', which the configuration does not build"),
        ({k: v for k, v in built.items() if k != HEAD}, f"lacks tensor '{HEAD}', which the configuration builds"),
    ]:
        with pytest.raises(CheckpointError, match="adapter-000002.safetensors.*" + re.escape(fragment)):
            check_tensors(folder, Checkpoint(2, state, ckpt.records, ckpt.scheduler, ckpt.config_sha256), built, False)


def test_client_state_versions_the_resume_keeps_are_checked(tmp_path):
    folder = interrupted_run(tmp_path / "run", **{"run.method": "topk-ef"})
    built = built_adapter(folder)
    ckpt = load_checkpoint(folder)
    root = folder / client_state.FOLDER
    (root / "client-000001").mkdir(exist_ok=True)
    (root / "client-000001" / "round-000003.safetensors").write_bytes(b"the interrupted round: discarded")
    check_tensors(folder, ckpt, built, with_client_state=True)
    for state, fragment in [
        ({A: np.zeros((2, 6), np.float32)}, f"tensor '{A}' has shape (2, 6); the configuration builds (8, 6)"),
        ({"x": np.zeros(3, np.float32)}, "has tensor 'x', which the configuration does not build"),
    ]:
        client_state.save(root, 1, 2, state, read_round=0)
        with pytest.raises(
            CheckpointError, match="client state .*client-000001/round-000002.safetensors.*" + re.escape(fragment)
        ):
            check_tensors(folder, ckpt, built, with_client_state=True)
    (root / "client-000001" / "round-000002.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(CheckpointError, match="round-000002.safetensors does not load"):
        check_tensors(folder, ckpt, built, with_client_state=True)
    check_tensors(folder, ckpt, built, with_client_state=False)  # a method without client state reads none


# ---- the promise, as a user meets it: one line, exit 2, nothing written, cheap ---------------------------


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        ("checkpoint link", "checkpoint is a symbolic link"),
        ("client link", "client-000000 is a symbolic link"),
        ("record type", "the record of round 2 clients[0].gain_db is 'near', not float"),
        ("rounds.jsonl", "rounds.jsonl: round 1 differs from its record"),
    ],
)
def test_resume_refuses_untrusted_folders_before_importing_torch(tamper, fragment, tmp_path):
    folder = interrupted_run(tmp_path / "run", **{"run.method": "topk-ef"})
    if tamper.endswith("link"):
        link = folder / ("checkpoint" if tamper == "checkpoint link" else "client_state/client-000000")
        shutil.move(link, tmp_path / "elsewhere")
        link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    elif tamper == "record type":
        edit_state(folder, lambda m: m["records"][1]["clients"][0].update(gain_db="near"))
    else:
        rounds = folder / "rounds.jsonl"
        first, *rest = rounds.read_text().splitlines(keepends=True)
        rounds.write_text("".join([json.dumps({**json.loads(first), "status": "failed"}) + "\n", *rest]))
    # Importing torch alone costs more than 2 s of CPU; the refusal itself measured 0.9-1.05 s here
    # (numpy, imported by the channel models that fedsim.core.config reads, is 0.33 s of it).
    refuse(folder, fragment, tmp_path, cpu_limit_s=1.5)


@pytest.mark.slow  # a real process that builds the model; test_trust checks check_tensors in process above
def test_resume_refuses_an_adapter_swapped_with_its_sha256_recomputed(tmp_path, monkeypatch):
    """The attack of issue 27: other tensors in the adapter file, state.json's SHA-256 rewritten to match."""
    from fedsim.core.training import initial_state

    folder = interrupted_run(tmp_path / "run")
    ckpt = load_checkpoint(folder)
    built = initial_state(make_cfg(**SMALL_WORKLOAD))
    name = sorted(k for k in built if "lora_A" in k)[0]
    rank, width = built[name].shape
    swapped = {**built, name: np.zeros((2 * rank, width), built[name].dtype)}
    save_checkpoint(folder, Checkpoint(ckpt.round, swapped, ckpt.records, ckpt.scheduler, ckpt.config_sha256))
    fragment = f"tensor {name!r} has shape ({2 * rank}, {width}); the configuration builds ({rank}, {width})"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # torch set it in this process
    refuse(folder, fragment, tmp_path, cpu_limit_s=30.0)
