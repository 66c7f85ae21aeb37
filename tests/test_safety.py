"""Data safety and hostile input: nothing fedsim did not create is deleted, tampered or odd files
are refused with one line (exit 2, nothing written), and records are strict JSON."""

import json
import math
import os
import time

import numpy as np
import pytest

from fedsim.app.cli import main
from fedsim.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint, sha256_text
from fedsim.core.checks import checked_config
from fedsim.core.results import finite_or_null, to_json


def run_in_process(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


def assert_one_line_exit_2(code, err, fragment):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


def results_folder(path, round_=2, seed=3):
    """A results folder as a run leaves it after ``round_`` rounds: config.toml, rounds.jsonl, checkpoint."""
    cfg = checked_config({"run.clients": 4, "run.clients_per_round": 2, "run.rounds": 5, "run.seed": seed})
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(cfg.to_toml())
    records = [{"round": r, "status": "ok"} for r in range(1, round_ + 1)]
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    state = {"a": np.ones((2, 2), np.float32)}
    save_checkpoint(path, Checkpoint(round_, state, records, {}, sha256_text(cfg.to_toml())))
    return path


# ---- fedsim deploy: a run goes into a new folder (the fetch itself: tests/deploy/test_deploy_safety.py) ---


def test_deploy_run_refuses_a_foreign_out_before_submitting(tmp_path, capsys):
    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "sentinel.txt").write_text("keep me")
    code, err = run_in_process(["deploy", "run", "--out", str(mine), "--fetch", "local"], capsys)
    assert_one_line_exit_2(code, err, "folder exists and is not empty")
    assert (mine / "sentinel.txt").read_text() == "keep me"


# ---- results folders and resume ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--out", ""], "--out='': must name a folder"),
        (["run", "--out", "x" * 5000], "not a usable path"),
        (["deploy", "run", "--out", ""], "--out='': must name a folder"),
    ],
)
def test_unusable_out_is_refused(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(args, capsys)
    assert_one_line_exit_2(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_resume_with_out_is_refused(tmp_path, capsys):
    run = results_folder(tmp_path / "run")
    code, err = run_in_process(["run", "--resume", str(run), "--out", str(tmp_path / "other")], capsys)
    assert_one_line_exit_2(code, err, "--out=")
    assert not (tmp_path / "other").exists()


def test_resume_after_config_toml_was_edited_is_refused_unless_forced(tmp_path, capsys):
    from fedsim.app.cli import prepare_resume

    run = results_folder(tmp_path / "run", seed=3)
    toml = run / "config.toml"
    toml.write_text(toml.read_text().replace("seed = 3", "seed = 5"))
    code, err = run_in_process(["run", "--resume", str(run)], capsys)
    assert_one_line_exit_2(code, err, "config.toml was edited after round 2")
    cfg, _, ckpt = prepare_resume(run, None, [], {}, force=True)
    assert cfg.run.seed == 5 and ckpt.round == 2


@pytest.mark.parametrize(
    "tamper, fragment",
    [
        (lambda m: {**m, "adapter": "../../../../etc/hostname"}, "only adapter-000002.safetensors"),
        (lambda m: {**m, "adapter": "adapter-000001.safetensors"}, "only adapter-000002.safetensors"),
        (lambda m: {**m, "round": "abc"}, "wrong type"),
        (lambda m: {**m, "round": True}, "wrong type"),
        (lambda m: {k: v for k, v in m.items() if k != "records"}, "corrupt"),
        (lambda m: {**m, "records": "x"}, "wrong type"),
        (lambda m: [m], "corrupt"),
    ],
)
def test_tampered_state_json_is_refused(tamper, fragment, tmp_path, capsys):
    run = results_folder(tmp_path / "run")
    state = run / "checkpoint" / "state.json"
    state.write_text(json.dumps(tamper(json.loads(state.read_text()))))
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(run)
    code, err = run_in_process(["run", "--resume", str(run)], capsys)
    assert_one_line_exit_2(code, err, "checkpoint")


def test_symlinked_adapter_and_state_folder_are_refused(tmp_path, capsys):
    run = results_folder(tmp_path / "run")
    adapter = run / "checkpoint" / "adapter-000002.safetensors"
    (tmp_path / "elsewhere.safetensors").write_bytes(adapter.read_bytes())
    adapter.unlink()
    adapter.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(run)
    state = run / "checkpoint" / "state.json"
    state.unlink()
    state.mkdir()
    code, err = run_in_process(["run", "--resume", str(run)], capsys)
    assert_one_line_exit_2(code, err, "not a regular file")


def test_summary_that_is_not_json_is_refused(tmp_path, capsys):
    run = results_folder(tmp_path / "run")
    (run / "summary.json").write_text("{broken")
    code, err = run_in_process(["run", "--resume", str(run)], capsys)
    assert_one_line_exit_2(code, err, "summary.json is not a JSON object")


# ---- strict JSON --------------------------------------------------------------------------------------


def test_non_finite_numbers_are_written_as_null():
    record = {"train_loss": float("nan"), "m": {"x": [1.0, float("inf"), -float("inf")]}, "n": 3, "s": "NaN"}
    text = to_json(record)
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert back == {"train_loss": None, "m": {"x": [1.0, None, None]}, "n": 3, "s": "NaN"}
    assert finite_or_null(2.5) == 2.5 and math.isnan(record["train_loss"])  # the input is not changed


# ---- files that are not what they seem ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_config_that_is_not_a_regular_file_is_refused_at_once(kind, tmp_path, capsys):
    path = {"dev-zero": "/dev/zero", "fifo": str(tmp_path / "fifo"), "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    t0 = time.monotonic()
    code, err = run_in_process(["run", "--config", path, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_exit_2(code, err, "not a regular file")
    assert time.monotonic() - t0 < 30  # reading /dev/zero or waiting on a FIFO would not end
    assert not (tmp_path / "o").exists()


def test_oversized_config_is_refused(tmp_path, capsys):
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 500_000)
    code, err = run_in_process(["run", "--config", str(big), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_exit_2(code, err, "too large")


def test_bad_toml_value_is_reported_even_when_a_shortcut_overrides_it(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nclients = "x"\n')
    code, err = run_in_process(["run", "--config", str(cfg), "--clients", "4", "--out", str(tmp_path / "o")], capsys)
    assert_one_line_exit_2(code, err, "run.clients='x'")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "tsfa.plan_samples=1000000000"], "tsfa.plan_samples=1000000000: must be an integer in [1, 10000]"),
        (["--set", "workload.samples_per_client=1000000000"], "workload.samples_per_client=1000000000"),
        (["--set", "workload.dataset=https://example.org/data.csv"], "URLs are not accepted"),
        (["--set", "workload.dataset=data/missing.csv"], "no such file or folder"),
        (["--ray-address", "127.0.0.1:1"], "no Ray cluster reachable there"),
        (["--ray-address", "nonsense"], "HOST:PORT of a Ray cluster"),
    ],
)
def test_values_that_would_hang_or_misread_are_refused_fast(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    code, err = run_in_process(["run", *args, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_exit_2(code, err, fragment)
    assert time.monotonic() - t0 < 30
    assert list(tmp_path.iterdir()) == []


def test_plan_out_that_cannot_be_written_is_refused_before_planning(tmp_path, capsys):
    for target, fragment in ((tmp_path, "is a folder"), (tmp_path / "missing" / "plan.csv", "cannot write there")):
        code, err = run_in_process(["plan", "--clients", "20", "--out", str(target)], capsys)
        assert_one_line_exit_2(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_export_trace_of_a_broken_results_folder_or_to_proc_is_refused(tmp_path, capsys):
    run = results_folder(tmp_path / "run")
    code, err = run_in_process(["channels", "--export-trace", str(run), "--out", "/proc/x.csv"], capsys)
    assert_one_line_exit_2(code, err, "cannot write there")
    (run / "rounds.jsonl").write_text("{not json\n")
    code, err = run_in_process(["channels", "--export-trace", str(run), "--out", str(tmp_path / "t.csv")], capsys)
    assert_one_line_exit_2(code, err, "does not hold fedsim round records")
    assert not (tmp_path / "t.csv").exists()


# ---- a deployed run writes only inside the ServerApp's results root ----------------------------------


def test_results_dir_is_confined_to_the_results_root(tmp_path, monkeypatch):
    from fedsim.core.config import ConfigError
    from fedsim.flower.server_app import confined_results_dir

    root = tmp_path / "results"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    monkeypatch.setenv("FEDSIM_RESULTS_ROOT", str(root))
    assert confined_results_dir(str(root / "run-1"), 7) == root / "run-1"
    assert confined_results_dir("", 7) == root / "flwr-run-7"
    for escape in ("/etc/cron.d/x", str(root / ".." / "elsewhere"), str(root / "link" / "x"), str(root), "/"):
        with pytest.raises(ConfigError, match="must be a folder inside"):
            confined_results_dir(escape, 7)
    monkeypatch.delenv("FEDSIM_RESULTS_ROOT")
    monkeypatch.chdir(tmp_path)
    assert confined_results_dir("results/flwr-run-3", 3) == root / "flwr-run-3"  # default root: ./results


def test_image_confines_results_to_the_volume_that_deploy_fetches_from():
    import re
    from pathlib import Path

    import yaml

    from fedsim.app.deploy import IMAGE_RESULTS_ROOT

    repo = Path(__file__).parents[1]
    dockerfile = (repo / "docker" / "Dockerfile").read_text()
    assert re.search(rf"FEDSIM_RESULTS_ROOT={re.escape(IMAGE_RESULTS_ROOT)}\b", dockerfile)
    # the folder is the `serverapp` service's named volume (the image declares no VOLUME)
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    assert f"results:{IMAGE_RESULTS_ROOT}" in compose["services"]["serverapp"]["volumes"]
    assert "results" in compose["volumes"]


def test_default_clients_per_round_follows_a_small_client_count(tmp_path):
    from fedsim.app.cli import resolve_config

    assert resolve_config(None, [], {"run.clients": 5}).num_sampled == 5
    assert resolve_config(None, [], {"run.clients": 50}).num_sampled == 10
    toml = tmp_path / "c.toml"
    toml.write_text("[run]\nclients = 3\n")
    assert resolve_config(toml, [], {}).num_sampled == 3
    with pytest.raises(Exception, match="run.clients_per_round=6"):  # given explicitly: checked as given
        resolve_config(None, ["run.clients_per_round=6"], {"run.clients": 5})
