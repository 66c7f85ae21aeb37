"""fedsim sweep: expansion, validation of sweep files, and execution with a stand-in for ``fedsim run``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedsim.app.cli import main
from fedsim.app.sweep import check_folder, execute, expand, load_sweep, run_config_text, run_name, run_state
from fedsim.core.config import ConfigError
from tests.helpers.synthetic import write_run


def test_expand_grid_zip_seeds():
    runs = expand({"a.x": [1, 2], "a.y": ["p", "q"]}, [{"b.u": [0.1, 0.2], "b.v": [3, 4]}], [0, 1])
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0] == {"a.x": 1, "a.y": "p", "b.u": 0.1, "b.v": 3, "run.seed": 0}
    assert runs[1] == {"a.x": 1, "a.y": "p", "b.u": 0.1, "b.v": 3, "run.seed": 1}  # seeds innermost
    assert runs[2]["b.u"] == 0.2 and runs[2]["b.v"] == 4  # zipped keys move together
    assert {(r["b.u"], r["b.v"]) for r in runs} == {(0.1, 3), (0.2, 4)}
    assert runs[-1] == {"a.x": 2, "a.y": "q", "b.u": 0.2, "b.v": 4, "run.seed": 1}
    assert expand({}, [], None) == [{}]
    assert expand({}, [], [3, 4]) == [{"run.seed": 3}, {"run.seed": 4}]


def test_run_names():
    assert run_name({"run.method": "soft", "method.rho": 0.25, "run.seed": 0}) == "method-soft_rho-0.25_seed-0"
    assert run_name({"a.rho": 1, "b.rho": 2}) == "a-rho-1_b-rho-2"  # same last part: full keys
    assert run_name({"tsfa.rho_grid": [0.0, 0.5]}) == "rho_grid-0-0.5"
    assert run_name({"workload.options": "a=1, b/c"}) == "options-a-1--b-c"
    assert run_name({}) == "base"


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_sweep_resolves_every_run(tmp_path):
    (tmp_path / "base.toml").write_text("[train]\nlr = 0.001\n[run]\nrounds = 7\n")
    path = _write(
        tmp_path,
        """
        [sweep]
        name = "m"
        config = "base.toml"
        seeds = [0, 1]
        [sweep.grid.run]
        method = ["soft", "topk"]
        [[sweep.zip]]
        "method.rho" = [0.25, 0.5]
        "lora.rank" = [4, 8]
        [run]
        clients = 4
        rounds = 2
        """,
    )
    sweep = load_sweep(path, {"train.batch_size": 8})
    assert sweep.name == "m" and len(sweep.runs) == 8
    assert sweep.axes == ["run.method", "method.rho", "lora.rank", "run.seed"]
    first = sweep.runs[0]
    assert first.name == "method-soft_rho-0.25_rank-4_seed-0"
    cfg = first.config
    assert (cfg.train.lr, cfg.run.rounds, cfg.run.clients, cfg.train.batch_size) == (0.001, 2, 4, 8)
    assert cfg.run.clients_per_round == 4  # as `fedsim run --clients 4` resolves it
    assert {(r.config.method.rho, r.config.lora.rank) for r in sweep.runs} == {(0.25, 4), (0.5, 8)}


def test_a_sweep_written_with_renamed_keys_runs_the_same_runs(tmp_path):
    """Old key names in axes and tables mean the new keys: same axes, run names and configurations."""
    head = '[sweep]\nseeds = [0]\n[[sweep.zip]]\n"run.method" = ["ideal", "soft"]\n'
    old_text = head + '"soft.rho" = [0.0, 0.25]\n[run]\nclients = 4\nrounds = 2\n[tsfa]\nscheduler = "fixed"\n'
    new_text = head + '"method.rho" = [0.0, 0.25]\n[run]\nclients = 4\nrounds = 2\nscheduler = "fixed"\n'
    old, new = (
        load_sweep(_write(tmp_path, text, name)) for text, name in ((old_text, "old.toml"), (new_text, "new.toml"))
    )
    assert old.axes == new.axes == ["run.method", "method.rho", "run.seed"]
    names = ["method-ideal_rho-0_seed-0", "method-soft_rho-0.25_seed-0"]
    assert [r.name for r in old.runs] == [r.name for r in new.runs] == names
    assert [r.config for r in old.runs] == [r.config for r in new.runs]
    assert old.runs[1].config.run.scheduler == "fixed"


BAD_SWEEPS = [
    ('[sweep.grid]\n"run.methd" = ["soft"]\n', "'run.methd'"),
    ('[sweep.grid]\n"run.method" = []\n', "axis 'run.method' is empty"),
    ("[sweep]\nseeds = []\n", "axis 'sweep.seeds' is empty"),
    ('[sweep.grid]\n"run.method" = ["soft", "sft"]\n', "axis 'run.method' value 'sft'"),
    ('[sweep.grid]\n"method.rho" = [0.5, 1.5]\n', "axis 'method.rho' value 1.5"),
    ('[sweep.grid]\n"run.rounds" = [2, "x"]\n', "axis 'run.rounds' value 'x'"),
    ('[sweep.grid]\n"run.rounds" = 3\n', "axis 'run.rounds'=3: must be a list"),
    ('[[sweep.zip]]\n"method.rho" = [0.1, 0.2]\n"lora.rank" = [4]\n', "equal lengths"),
    ('[sweep]\nseeds = [0]\n[sweep.grid]\n"run.seed" = [1]\n', "axis 'run.seed' is given more than once"),
    ("[sweep]\nrepeat = 3\n", "unknown key 'sweep.repeat'"),
    ('[sweep.grid]\n"run.scheduler" = ["tsfa"]\n', "axis 'run.scheduler' value 'tsfa'"),
    ('[sweep.grid]\n"run.clients" = [4]\n[run]\nclients_per_round = 8\n', "run with run.clients=4"),
    ('[sweep.grid]\n"workload.name" = ["no-such-workload"]\n', "axis 'workload.name' value 'no-such-workload'"),
    ('[sweep]\nname = "a b"\n', "sweep.name='a b'"),
    ("[sweep\n", "not valid TOML"),
    ("[run]\nrounds = 0\n[sweep]\nseeds = [0]\n", "base configuration: run.rounds=0"),
    ('[sweep]\nconfig = "missing.toml"\n', "file not found"),
    ('[[sweep.zip]]\n"soft.rho" = [0.1]\n"method.rho" = [0.2]\n', "soft.rho: sweep file"),
    ('[sweep.grid]\n"tracking.backends" = ["wandb"]\n', "axis 'tracking.backends' value 'wandb'"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SWEEPS)
def test_bad_sweep_file_exit_2_one_line_nothing_written(tmp_path, capsys, text, expected):
    path = _write(tmp_path, text)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(path), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedsim: ") and "Traceback" not in err, err
    assert expected in err, err
    assert not out.exists()


TSFA_SWEEP = """
[sweep]
seeds = [0, 1]
[sweep.grid]
"tsfa.latency_budget_s" = [{budgets}]
[run]
method = "soft"
scheduler = "tsfa"
clients = 4
clients_per_round = 2
[tsfa]
plan_samples = 20
[workload]
samples_per_client = 16
test_samples = 64
"""


def test_sweep_refuses_a_budget_no_rank_meets_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(_write(tmp_path, TSFA_SWEEP.format(budgets="10.0, 0.0001"))), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "run 'latency_budget_s-0.0001_seed-0': tsfa.latency_budget_s=0.0001: no candidate rank meets it" in err
    assert "smallest feasible budget is" in err
    assert not out.exists()
    # the feasible budget alone passes the same check: the dry run lists its runs, writes nothing
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(_write(tmp_path, TSFA_SWEEP.format(budgets="10.0"))), "--out", str(out), "--dry-run"])
    assert e.value.code == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[:2] == ["latency_budget_s-10_seed-0\tpending", "latency_budget_s-10_seed-1\tpending"]
    assert not out.exists()


def test_sweep_refuses_other_folders(tmp_path, capsys):
    path = _write(tmp_path, "[sweep]\nseeds = [0]\n[run]\nclients = 4\nrounds = 2\n")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(path), "--out", str(tmp_path / "busy")])
    assert e.value.code == 2 and "holds no sweep" in capsys.readouterr().err
    # a run folder there made with other values: refused before anything runs
    sweep = load_sweep(path)
    out = tmp_path / "sw"
    (out / "runs").mkdir(parents=True)
    (out / "sweep.json").write_text("{}")
    write_run(out / "runs" / "seed-0", {"run.seed": 0, "run.rounds": 3}, 0.5)
    with pytest.raises(ConfigError, match="run 'seed-0' there was made with other values of run.rounds"):
        check_folder(sweep, out)


def test_a_second_sweep_on_a_folder_in_use_is_refused(tmp_path, capsys, monkeypatch):
    """One sweep per sweep folder: two would start the same runs and overwrite each other's index."""
    from fedsim.core.results import FolderLock

    path = _write(tmp_path, "[sweep]\nseeds = [0]\n[run]\nclients = 4\nrounds = 2\n")
    out = tmp_path / "sw"
    monkeypatch.setattr("fedsim.app.sweep.execute", lambda *a, **k: pytest.fail("the second sweep ran"))
    with FolderLock(out):  # as a sweep running on it holds it (the lock is taken per open file)
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(SystemExit) as e:
            main(["sweep", str(path), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "another fedsim process" in err, err
        assert sorted(p.name for p in out.iterdir()) == before == [".fedsim.lock"]
    check_folder(load_sweep(path), out)  # a folder holding only the lock counts as empty


def test_sweep_compares_the_configuration_a_run_was_started_with(tmp_path):
    """A TSFA run records its planned lora.rank in its config.toml: the same sweep again is accepted,
    a changed one is still refused."""
    path = _write(
        tmp_path, '[sweep]\nseeds = [0]\n[run]\nmethod = "soft"\nscheduler = "tsfa"\nclients = 4\nrounds = 3\n'
    )
    sweep = load_sweep(path)
    out = tmp_path / "sw"
    (out / "configs").mkdir(parents=True)
    (out / "sweep.json").write_text("{}")
    (out / "configs" / "seed-0.toml").write_text(run_config_text(sweep.runs[0], 1, None, out=out))
    write_run(
        out / "runs" / "seed-0", {"run.seed": 0, "run.method": "soft", "run.scheduler": "tsfa", "lora.rank": 4}, 0.5
    )
    check_folder(sweep, out)  # the rank the run planned is not a change of the sweep
    changed = load_sweep(_write(tmp_path, path.read_text().replace("rounds = 3", "rounds = 5")))
    with pytest.raises(ConfigError, match="other values of run.rounds"):
        check_folder(changed, out)


def test_run_state(tmp_path):
    assert run_state(tmp_path / "none") == "pending"
    assert run_state(write_run(tmp_path / "ok", {}, 0.5)) == "done"
    assert run_state(write_run(tmp_path / "bad", {}, 0.5, status="failed")) == "failed"
    half = write_run(tmp_path / "half", {}, 0.5)
    (half / "summary.json").unlink()
    assert run_state(half) == "pending"
    (half / "checkpoint").mkdir()
    (half / "checkpoint" / "state.json").write_text("{}")
    assert run_state(half) == "interrupted"


def test_concurrent_runs_share_the_cores(tmp_path):
    path = _write(tmp_path, "[sweep]\nseeds = [0]\n[run]\nclients = 4\nrounds = 2\n")
    spec = load_sweep(path).runs[0]
    assert "max_concurrent_clients = 4" in run_config_text(spec, jobs=2, ray_address=None, cpus=8)
    assert "max_concurrent_clients = 1" in run_config_text(spec, jobs=4, ray_address=None, cpus=2)
    text = run_config_text(spec, jobs=4, ray_address="127.0.0.2:6379", cpus=2)
    assert 'ray_address = "127.0.0.2:6379"' in text and "max_concurrent_clients = 0" in text


FAKE_RUN = """
import json, os, signal, sys, time, tomllib
from pathlib import Path
args = sys.argv[2:]  # after "run"
STOP_EXIT = int(os.environ.get("FAKE_STOP_EXIT", "130"))  # fedsim run's; Ray can make it 1
if os.environ.get("FAKE_OWN_SIGINT", "1") == "1":
    signal.signal(signal.SIGINT, lambda *a: sys.exit(STOP_EXIT))
if "--resume" in args:
    out = Path(args[args.index("--resume") + 1])
    cfg = tomllib.loads((out / "config.toml").read_text())
    (out / "resumed").write_text("yes")
else:
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    text = Path(args[args.index("--config") + 1]).read_text()
    (out / "config.toml").write_text(text)
    cfg = tomllib.loads(text)
    (out / "rounds.jsonl").write_text("")
log = Path(os.environ["FAKE_LOG"])
with log.open("a") as f:
    f.write(f"{out.name} {time.time()}\\n")
try:
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.3")))
except KeyboardInterrupt:  # as fedsim run: Python's own SIGINT handler, then exit 130
    sys.exit(STOP_EXIT)
with log.open("a") as f:
    f.write(f"{out.name} {time.time()}\\n")
if cfg["run"]["seed"] == 13 and "--resume" not in args:
    sys.stderr.write("fedsim: run failed: synthetic crash\\n")
    (out / "checkpoint").mkdir(exist_ok=True)
    (out / "checkpoint" / "state.json").write_text("{}")
    sys.exit(1)
(out / "summary.json").write_text(json.dumps({"status": "ok"}))
"""


@pytest.fixture
def fake_sweep(tmp_path, monkeypatch):
    script = tmp_path / "fake_fedsim.py"
    script.write_text(FAKE_RUN)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log.txt"))
    path = _write(tmp_path, "[sweep]\nseeds = [1, 13, 2, 3]\n[run]\nclients = 4\nrounds = 2\n")
    return load_sweep(path), [sys.executable, str(script)], tmp_path


def test_execute_runs_in_parallel_records_failures_and_skips_finished(fake_sweep):
    sweep, command, tmp = fake_sweep
    out = tmp / "sw"
    events = []
    index = execute(sweep, out, jobs=2, display=lambda e, d: events.append((e, d)), command=command, poll_s=0.05)
    status = {name: row.status for name, row in index.rows.items()}
    assert status == {"seed-1": "done", "seed-13": "failed", "seed-2": "done", "seed-3": "done"}
    assert index.rows["seed-13"].error == "fedsim: run failed: synthetic crash"
    saved = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in saved["runs"]] == ["done", "failed", "done", "done"]
    assert saved["runs"][1]["overrides"] == {"run.seed": 13} and saved["axes"] == ["run.seed"]
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert csv_lines[0] == "name,status,returncode,wall_s,run.seed,error" and csv_lines[2].startswith(
        "seed-13,failed,1,"
    )
    assert (out / "sweep.toml").read_text() == sweep.text
    # two at a time: some run started before another ended
    times: dict[str, list[float]] = {}
    for line in (tmp / "log.txt").read_text().split("\n"):
        if line:
            times.setdefault(line.split()[0], []).append(float(line.split()[1]))
    spans = sorted(times.values())
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert ("start", {"total": 4, "skipped": 0, "jobs": 2}) in events
    assert any(e == "run" and d["status"] == "failed" for e, d in events)

    # again: the three finished runs are skipped, the failed one resumes from its checkpoint
    (tmp / "log.txt").unlink()
    index = execute(sweep, out, jobs=2, command=command, poll_s=0.05)
    assert {row.action for name, row in index.rows.items() if name != "seed-13"} == {"skip"}
    assert index.rows["seed-13"].action == "resume" and index.rows["seed-13"].status == "done"
    assert (out / "runs" / "seed-13" / "resumed").is_file()
    assert {line.split()[0] for line in (tmp / "log.txt").read_text().splitlines()} == {"seed-13"}


@pytest.mark.parametrize(
    "background, stop_exit",
    [(False, 130), (True, 130), (False, 1)],
    ids=["ctrl-c", "sigterm-to-background-sweep", "a-stopped-run-exits-1"],
)
def test_ctrl_c_stops_the_runs_and_keeps_the_index(fake_sweep, background, stop_exit):
    """Ctrl-C, and SIGTERM to a sweep started in the background (SIGINT ignored, as ``nohup ... &``
    leaves it): every run stops at once with its own exit 130, not after the grace period. A run
    the sweep stopped is interrupted, not failed, also when it exits 1 (as Ray can make it)."""
    sweep, command, tmp = fake_sweep
    out = tmp / "sw"
    # the sweep is rebuilt without the registries' checks: this process only needs to start quickly
    specs = [(r.name, r.overrides, r.config.to_flat()) for r in sweep.runs]
    code = f"""
import sys
from pathlib import Path
from fedsim.core.config import build_config
from fedsim.app.sweep import Interrupted, RunSpec, Sweep, execute
runs = [RunSpec(n, o, build_config(flat)) for n, o, flat in {specs!r}]
sweep = Sweep("s", Path({str(sweep.source)!r}), "", ["run.seed"], runs)
try:
    execute(sweep, Path({str(out)!r}), 2, command={command!r}, poll_s=0.05, stop_grace_s=60)
except Interrupted as e:
    sys.exit(e.code)
"""
    env = {**os.environ, "FAKE_SLEEP": "90", "FAKE_OWN_SIGINT": "0" if background else "1"}
    env["FAKE_STOP_EXIT"] = str(stop_exit)

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-c", code], env=env, preexec_fn=ignore_sigint if background else None)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (tmp / "log.txt").is_file() and len((tmp / "log.txt").read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM if background else signal.SIGINT)
    assert proc.wait(timeout=50) == (143 if background else 130)
    assert time.monotonic() - t0 < 40  # the runs stopped themselves: no grace period, no SIGKILL
    rows = {r["name"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert sorted(r["status"] for r in rows.values()) == ["interrupted", "interrupted", "pending", "pending"]
    assert all(rows[n]["returncode"] == stop_exit for n in rows if rows[n]["status"] == "interrupted")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml")), ids=str)
def test_experiment_sweep_files_are_valid(path):
    sweep = load_sweep(path)
    assert sweep.runs and sweep.name == path.stem
    assert len({r.name for r in sweep.runs}) == len(sweep.runs)


def test_example_sweep_file_is_valid():
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "examples" / "sweep.toml")
    assert [r.name for r in sweep.runs] == [
        "method-ideal_seed-0",
        "method-ideal_seed-1",
        "method-soft_seed-0",
        "method-soft_seed-1",
    ]


def test_a_grid_over_the_maximum_is_refused_before_it_is_built(tmp_path, monkeypatch):
    import fedsim.app.sweep as sw

    def never(*args, **kwargs):
        raise AssertionError("the grid was built")

    monkeypatch.setattr(sw, "expand", never)
    values = ", ".join(str(i) for i in range(1, 1001))
    path = _write(tmp_path, f'[sweep]\nseeds = [0, 1]\n[sweep.grid]\n"run.rounds" = [{values}]\n')
    with pytest.raises(ConfigError, match=f"1000 x 2 = 2000 runs, more than the {sw.MAX_RUNS} a sweep may have"):
        load_sweep(path)


def test_runs_that_would_share_a_folder_are_refused():
    from fedsim.app.sweep import check_run_names

    check_run_names([{"method.rho": 0.25}, {"method.rho": 0.5}], "sweep file 's.toml'")
    for values in (["a=1", "a/1"], ["Soft", "soft"]):
        with pytest.raises(ConfigError, match="would share one run folder"):
            check_run_names([{"workload.options": v} for v in values], "sweep file 's.toml'")


def test_runs_sharing_a_folder_are_refused_before_any_run_is_resolved(tmp_path, monkeypatch):
    """Resolving a run imports torch and the workload (seconds): the names are compared first."""

    def never(*args, **kwargs):
        raise AssertionError("a run was resolved")

    monkeypatch.setattr("fedsim.app.cli_common.resolve_config", never)
    path = _write(tmp_path, '[sweep.grid]\n"method.rho" = [0.1234561, 0.1234562]\n')
    with pytest.raises(ConfigError, match="runs 'rho-0.123456' and 'rho-0.123456' would share one run folder"):
        load_sweep(path)


def test_run_state_of_an_unreadable_summary_is_pending(tmp_path):
    for name, content in (("latin", b'{"status": "\xe9"}'), ("deep", b"[" * 100_000), ("garbage", b"{")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_bytes(content)
        assert run_state(tmp_path / name) == "pending", name
