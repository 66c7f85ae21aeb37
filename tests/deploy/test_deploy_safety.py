"""``fedsim deploy`` without a federation (fast): what it refuses before Flower's CLI runs, and the fetch.

- A run goes into a new folder: ``--out`` must be absent or empty; an existing results folder, with
  a user's notes in it, is refused before anything is submitted and is left as it was. The fetch
  fills an empty folder without replacing it, and a failed fetch leaves ``--out`` as it was.
- No SuperLink connection, or Flower's local one: ``flwr`` would start a detached
  ``flower-superlink --simulation`` that outlives fedsim. Refused (exit 2, one line) before ``flwr``
  runs; no Flower process is left and ``$FLWR_HOME`` is not written. The staged app carries no
  federations for ``flwr run`` to migrate, and ``flwr log --stream`` is killed if SIGTERM does not end it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import tomli_w

import fedsim.app.deploy as deploy
from fedsim.app.deploy import DeployError, fetch_results
from tests.helpers.refusals import Refusal, run_case, snapshot

FLOWER_COMMANDS = ("flower-superlink", "flower-superexec", "flwr")


def results_folder(path: Path, rounds: int = 2) -> Path:
    """What a finished run leaves: config.toml, rounds.jsonl, summary.json, a subfolder."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text("[run]\nseed = 7\n")
    (path / "rounds.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in range(1, rounds + 1)))
    (path / "summary.json").write_text(json.dumps({"status": "ok", "rounds_completed": rounds}))
    (path / "tensorboard").mkdir()
    (path / "tensorboard" / "events").write_text("e")
    return path


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its text (folders as '/')."""
    return {str(p.relative_to(root)): "/" if p.is_dir() else p.read_text() for p in sorted(root.rglob("*"))}


# ---- item 1: a run goes into a new folder; nothing of the user's is replaced or deleted -------------


def test_fetch_refuses_an_existing_results_folder_and_keeps_the_users_notes(tmp_path):
    remote = results_folder(tmp_path / "remote", rounds=3)
    mine = results_folder(tmp_path / "mine", rounds=1)
    (mine / "notes.txt").write_text("my notes")
    before = tree(mine)
    with pytest.raises(DeployError, match="folder exists and is not empty"):
        fetch_results("local", str(remote), mine, None)
    assert tree(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "remote"]


def test_fetch_into_an_empty_folder_keeps_the_folder_and_moves_the_files_in(tmp_path):
    remote = results_folder(tmp_path / "remote")
    out = tmp_path / "empty"
    out.mkdir()
    inode = out.stat().st_ino
    fetch_results("local", str(remote), out, None)
    assert out.stat().st_ino == inode  # the same folder, not a new one renamed over it
    assert tree(out) == tree(remote)  # the results and nothing else (no staging folder left)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "remote"]


def test_fetch_into_an_absent_folder_creates_it(tmp_path):
    remote = results_folder(tmp_path / "remote")
    out = tmp_path / "new" / "run"
    fetch_results("local", str(remote), out, None)
    assert tree(out) == tree(remote)


@pytest.mark.parametrize("existed", [False, True], ids=["absent", "empty"])
def test_failed_fetch_leaves_out_as_it_was(tmp_path, existed):
    out = tmp_path / "out"
    if existed:
        out.mkdir()
    with pytest.raises(DeployError, match="no results folder"):
        fetch_results("local", str(tmp_path / "missing"), out, None)
    assert out.is_dir() == existed
    assert not existed or list(out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if existed else [])


def test_fetch_overwrites_nothing_that_appeared_in_out_meanwhile(tmp_path, monkeypatch):
    """A file that someone wrote into the empty ``--out`` while the copy ran stops the fetch; the
    files already moved go back, so ``--out`` holds that file alone, unchanged."""
    remote = results_folder(tmp_path / "remote")
    out = tmp_path / "out"
    out.mkdir()
    copy = deploy._copy_results

    def copy_then_someone_writes(mode, remote_dir, dest, container):
        copy(mode, remote_dir, dest, container)
        (out / "summary.json").write_text("theirs")  # sorted after config.toml and rounds.jsonl

    monkeypatch.setattr(deploy, "_copy_results", copy_then_someone_writes)
    with pytest.raises(DeployError, match="summary.json appeared there during the fetch") as e:
        fetch_results("local", str(remote), out, None)
    assert e.value.code == 1 and str(remote) in str(e.value)
    assert tree(out) == {"summary.json": "theirs"}


def test_default_out_never_names_an_existing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert deploy.default_out("deploy-x") == Path("results/deploy-x")
    results_folder(tmp_path / "results" / "deploy-x")
    (tmp_path / "results" / "deploy-x-2").mkdir()  # even an empty one: another run may be fetching into it
    assert deploy.default_out("deploy-x") == Path("results/deploy-x-3")


# ---- item 2: no SuperLink connection, or Flower's local one: refused before `flwr` runs -------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_processes(home: Path) -> dict[int, str]:
    """Flower processes (flwr, flower-superlink, flower-superexec) started with ``FLWR_HOME=home``.

    A SuperLink that ``flwr`` starts for its local connection inherits its environment, so the
    test's own ``FLWR_HOME`` tells its processes from those of anyone else on this machine.
    """
    found = {}
    for p in psutil.process_iter(["cmdline", "environ"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(name in cmd for name in FLOWER_COMMANDS) and (p.info["environ"] or {}).get("FLWR_HOME") == str(home):
            found[p.pid] = cmd
    return found


def kill_tree(pid: int) -> None:
    """Kill a process that this test's command left behind, and what it started."""
    try:
        proc = psutil.Process(pid)
        for p in [*proc.children(recursive=True), proc]:
            p.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass


CONNECTION = {"address": "127.0.0.1:9", "insecure": True}  # a SuperLink address (nothing listens: fails fast)
CONFIGS = {
    "no config.toml": None,  # flwr writes its default one, whose default is the local connection
    "flower's default config": {
        "superlink": {"default": "local", "local": {"address": ":local:"}, "supergrid": {"address": "api.flower.ai"}}
    },
    "in-memory local default": {"superlink": {"default": "mem", "mem": {"address": ":local-in-memory:"}}},
    "options without address": {"superlink": {"default": "sim", "sim": {"options": {"num-supernodes": 2}}}},
    "no [superlink] table": {"other": {"x": 1}},
    "no default": {"superlink": {"prod": CONNECTION}},
    "default names no connection": {"superlink": {"default": "gone", "prod": CONNECTION}},
}
CASES = [
    ("no config.toml", [], "no SuperLink connection: "),
    ("flower's default config", [], "SuperLink connection 'local'"),
    ("in-memory local default", [], "address ':local-in-memory:'"),
    ("options without address", [], "SuperLink connection 'sim'"),
    ("no [superlink] table", [], "no --superlink and no [superlink] default"),
    ("no default", [], "no --superlink and no [superlink] default"),
    ("default names no connection", [], "no SuperLink connection 'gone'"),
    ("no default", ["--superlink", "nosuch"], "no SuperLink connection 'nosuch'"),
    ("flower's default config", ["--superlink", "local"], "address ':local:'"),
]


def flwr_home(root: Path, config: dict | None) -> Path:
    home = root / "flwr-home"
    home.mkdir()
    if config is not None:
        (home / "config.toml").write_text(tomli_w.dumps(config))
    return home


def refused(root: Path, args: list[str], home: Path, out: Path | None) -> Refusal:
    """Run ``python -m fedsim ARGS`` with ``FLWR_HOME=home``; fail if it left a Flower process behind.

    Flower's local SuperLink ports are moved to free ones, so that a regression starts its own
    SuperLink (found and killed here) rather than finding one that is already running.
    """
    env = {
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    work = root / "cwd"
    work.mkdir(exist_ok=True)
    before = flower_processes(home)
    result = Refusal(" ".join(args), tuple(args), out, *run_case(args, out, work, env))
    time.sleep(0.5)  # a detached SuperLink outlives the command that started it
    left = {pid: cmd for pid, cmd in flower_processes(home).items() if pid not in before}
    for pid in left:
        kill_tree(pid)
    assert not left, f"Flower processes left behind: {left}\n{result.text}"
    assert not list(work.iterdir()), result.text
    return result


@pytest.mark.parametrize("case, args, fragment", CASES, ids=[f"{c} {' '.join(a)}".strip() for c, a, _ in CASES])
def test_deploy_run_without_a_superlink_is_refused_before_flower_runs(tmp_path, case, args, fragment):
    home = flwr_home(tmp_path, CONFIGS[case])
    written = snapshot(home)
    out = tmp_path / "out"
    # --fetch none --timeout 5: should the refusal ever break, the run it submits ends soon
    cmd = ["deploy", "run", "--out", str(out), "--fetch", "none", "--timeout", "5", *args]
    result = refused(tmp_path, cmd, home, out)
    assert result.problems() == [], result.text
    assert fragment in result.text and "fedsim deploy connect" in result.text, result.text
    assert snapshot(home) == written  # flwr would have written its default config.toml


def test_deploy_register_without_a_superlink_is_refused_before_flower_runs(tmp_path):
    home = flwr_home(tmp_path, None)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "supernode-1.pub"  # a valid key: flwr checks it before it resolves the connection
    key.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    result = refused(tmp_path, ["deploy", "register", str(key)], home, None)
    assert result.problems() == [], result.text
    assert "no SuperLink connection" in result.text
    assert list(home.iterdir()) == []


def test_deploy_run_refuses_an_existing_results_folder_before_submitting(tmp_path):
    """Given a SuperLink connection, ``--out`` naming an earlier run's folder (with the user's notes in
    it) is refused before anything is submitted; the folder is left exactly as it was."""
    home = flwr_home(tmp_path, {"superlink": {"default": "prod", "prod": CONNECTION}})
    mine = results_folder(tmp_path / "earlier")
    (mine / "notes.txt").write_text("my notes")
    before = tree(mine)
    result = refused(tmp_path, ["deploy", "run", "--out", str(mine), "--fetch", "local", "--timeout", "5"], home, None)
    assert result.problems() == [], result.text
    assert f"--out={str(mine)!r}: folder exists and is not empty" in result.text
    assert "choose another --out or omit it" in result.text
    assert tree(mine) == before


def test_a_superlink_with_an_address_passes_the_connection_check(tmp_path):
    home = flwr_home(tmp_path, {"superlink": {"default": "prod", "prod": CONNECTION, "local": {"address": ":local:"}}})
    deploy.check_connection(home, None)
    deploy.check_connection(home, "prod")
    with pytest.raises(DeployError, match="'local'"):
        deploy.check_connection(home, "local")


def test_the_stream_process_is_killed_when_it_ignores_sigterm():
    """``flwr log --stream`` is ended with SIGTERM, then SIGKILL: it never outlives ``deploy run``."""
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=subprocess.PIPE)
    assert proc.stdout.readline()  # its handler is in place
    deploy._end(proc, grace_s=1)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_staged_app_carries_no_federations_for_flwr_to_migrate(tmp_path):
    """``flwr run`` migrates a pyproject's ``[tool.flwr.federations]`` (a local simulation one, and its
    default) into ``$FLWR_HOME/config.toml`` after the connection check; the staged app has none."""
    app = tmp_path / "app"
    for pkg in deploy.APP_PACKAGES:
        (app / pkg).mkdir(parents=True)
    federations = {"default": "local-sim", "local-sim": {"options": {"num-supernodes": 3}}}
    project = {"tool": {"flwr": {"app": {"config": {}}, "federations": federations}}}
    (app / "pyproject.toml").write_text(tomli_w.dumps(project))
    staged = deploy.stage_app(app, {"run.rounds": 2}, tmp_path / "staged")
    flwr = tomllib.loads((staged / "pyproject.toml").read_text())["tool"]["flwr"]
    assert flwr == {"app": {"config": {"run.rounds": 2}}}
