"""``fedsim deploy``: run fedsim on a Flower federation (Deployment Engine) and fetch its results.

A federation is one SuperLink and N SuperNodes (``docker-compose.yml``, or the processes of
``tests/deploy``). These commands drive it through Flower's own CLI (``flwr``), with the SuperLink
connections of ``$FLWR_HOME/config.toml`` (default ``~/.flwr``):

- ``fedsim deploy connect NAME --address HOST:PORT --ca ca.crt``: add a SuperLink connection;
- ``fedsim deploy register KEY.pub ...``: register SuperNode public keys (SuperNode auth);
- ``fedsim deploy run``: resolve and validate the configuration as ``fedsim run`` does, submit the
  app with that configuration (``flwr run``), wait for the run's real outcome (``flwr run`` returns
  once a run is submitted, whatever happens to it), copy the results folder here into a new folder,
  and exit 0 only if Flower reports the run completed and ``summary.json`` says ``ok`` (1 otherwise,
  2 for bad input).
  With ``tracking.backends`` set, the fetched records go into this machine's TensorBoard / MLflow
  (:func:`fedsim.app.tracking.track_folder`), as ``fedsim run`` logs its own.

``flwr run --run-config`` only accepts keys that the app's pyproject.toml declares, so ``run``
submits a staged copy of the app whose ``[tool.flwr.app.config]`` holds the whole resolved
configuration (every ``section.key``) and ``results-dir``.

Flower's CLI starts a SuperLink of its own on this machine (``flower-superlink --insecure
--simulation``, detached, still running after fedsim exits) when the connection it resolves is
its local one; :func:`check_connection` refuses every such case before ``flwr`` is called.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer

from fedsim.app.cli_common import (
    ClientsPerRoundOption,
    ConfigOption,
    RoundsOption,
    SeedOption,
    SetOption,
    fail,
    out_path,
    resolve_config,
    results_name,
    shortcuts,
)
from fedsim.app.tracking import backends, check_tracking, track_folder
from fedsim.core.config import ConfigError

APP_PACKAGES = ("fedsim", "channels", "workloads")
IMAGE_RESULTS_ROOT = "/work/results"  # the results volume of the compose `serverapp` service
RUN_POLL_S = 3.0

deploy_app = typer.Typer(
    help="Run fedsim on a Flower federation (SuperLink + SuperNodes): connect, register, run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class DeployError(RuntimeError):
    """One line saying what went wrong; ``code`` is the exit status (1 run failed, 2 bad input)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---- Flower's CLI ------------------------------------------------------------------------------


def flwr_home() -> Path:
    """Flower's home folder: ``$FLWR_HOME`` or ``~/.flwr`` (connections, installed apps)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


# Flower 1.42 (flwr/cli/constant.py, local_superlink.py): a connection with one of these addresses, or
# with no address but simulation ``options``, makes every ``flwr`` command start a local SuperLink
LOCAL_ADDRESSES = (":local:", ":local-in-memory:")


def check_connection(home: Path, name: str | None) -> None:
    """Refuse a SuperLink connection for which Flower's CLI would start a SuperLink on this machine.

    ``flwr`` resolves ``name`` (else ``[superlink] default``) in ``<home>/config.toml``. Where that
    file is missing it writes Flower's default one, whose default connection is the local one; a
    connection whose address is ``:local:`` / ``:local-in-memory:``, or that has no address, also
    means local. In each of these cases ``flwr`` starts a detached ``flower-superlink --simulation``
    that outlives fedsim, so each is refused here (exit 2), before ``flwr`` runs, with tomllib alone.
    A name or default that the file lacks is refused too, with the same advice.
    """
    path = home / "config.toml"
    advice = f"run `fedsim deploy connect {name or 'NAME'} --address HOST:PORT --ca ca.crt` first"
    if not path.is_file():
        raise DeployError(f"no SuperLink connection: {path} does not exist; {advice}", 2)
    try:
        links = tomllib.loads(path.read_text()).get("superlink")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise DeployError(f"{path}: not readable as TOML ({e}); {advice}", 2) from None
    links = links if isinstance(links, dict) else {}
    if name is None:
        name = links.get("default")
        if not isinstance(name, str):
            raise DeployError(
                f"no SuperLink connection: no --superlink and no [superlink] default in {path}; "
                f"{advice} (with --default) or pass --superlink NAME",
                2,
            )
        advice = f"run `fedsim deploy connect {name} --address HOST:PORT --ca ca.crt` first"
    conn = links.get(name)
    if name == "default" or not isinstance(conn, dict):
        raise DeployError(f"no SuperLink connection {name!r} in {path}; {advice}", 2)
    address = conn.get("address")
    if not isinstance(address, str) or address in ("", *LOCAL_ADDRESSES):
        what = f"address {address!r}" if isinstance(address, str) else "no address"
        raise DeployError(
            f"SuperLink connection {name!r} in {path} has {what}, which is no SuperLink to deploy to "
            f"(Flower would start a local simulation SuperLink); {advice}",
            2,
        )


def _flwr_exe() -> str:
    beside = Path(sys.executable).with_name("flwr")
    found = str(beside) if beside.exists() else shutil.which("flwr")
    if not found:
        raise DeployError("the `flwr` command (Flower's CLI) is not installed beside this Python", 2)
    return found


def flwr(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Flower's CLI in a subprocess; never installs app dependencies at run time."""
    full_env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [_flwr_exe(), *args], capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL
    )


def _json_out(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """The JSON object that ``flwr ... --format json`` printed (the last one on stdout)."""
    text = proc.stdout.strip()
    start = text.find("{")
    if start < 0:
        return {}
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return {}


def _one_line(text: str) -> str:
    lines = [ln.strip(" │╭╮╰╯─") for ln in text.splitlines()]
    return " ".join(ln for ln in lines if ln and not ln.startswith("Using SuperLink"))[:400]


def _flwr_error(proc: subprocess.CompletedProcess) -> str:
    data = _json_out(proc)
    return str(
        data.get("error-message") or data.get("error") or _one_line(proc.stderr + proc.stdout) or proc.returncode
    )


def write_connection(
    home: Path, name: str, address: str, ca: Path | None, insecure: bool = False, default: bool = False
) -> Path:
    """Add or replace ``[superlink.<name>]`` in ``<home>/config.toml``; returns the file."""
    if not insecure and ca is None:
        raise DeployError("a SuperLink connection needs --ca (the deployment's ca.crt) or --insecure", 2)
    if ca is not None and not ca.is_file():
        raise DeployError(f"--ca={str(ca)!r}: file not found", 2)
    path = home / "config.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    links = data.setdefault("superlink", {})
    links[name] = (
        {"address": address, "insecure": True}
        if insecure
        else {
            "address": address,
            "root-certificates": str(ca.resolve()),
        }
    )
    if default or "default" not in links:
        links["default"] = name
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


# ---- staging the app with the resolved configuration ----------------------------------------------


def find_app_dir(app: Path | None) -> Path:
    """The fedsim Flower App: ``app``, else the source tree fedsim was installed from, else the cwd."""
    import fedsim

    candidates = [app] if app else [Path(fedsim.__file__).resolve().parents[1], Path.cwd()]
    for c in candidates:
        if (c / "pyproject.toml").is_file() and all((c / p).is_dir() for p in APP_PACKAGES):
            return c
    where = str(app) if app else "the fedsim source tree or the current folder"
    raise DeployError(f"--app: no fedsim app (pyproject.toml and {', '.join(APP_PACKAGES)}/) in {where}", 2)


def stage_app(app_dir: Path, flat_config: dict[str, Any], dest: Path) -> Path:
    """Copy the app into ``dest`` with ``flat_config`` as its whole ``[tool.flwr.app.config]``.

    A legacy ``[tool.flwr.federations]`` table is left out: ``flwr run`` would migrate it into
    ``$FLWR_HOME/config.toml`` (and its default with it) after :func:`check_connection`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in APP_PACKAGES:
        shutil.copytree(app_dir / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    project = tomllib.loads((app_dir / "pyproject.toml").read_text())
    project["tool"]["flwr"]["app"]["config"] = dict(flat_config)
    project["tool"]["flwr"].pop("federations", None)
    (dest / "pyproject.toml").write_text(tomli_w.dumps(project))
    if (app_dir / "README.md").is_file():
        shutil.copy(app_dir / "README.md", dest / "README.md")
    return dest


def run_config(cfg) -> dict[str, Any]:
    """The flat configuration as Flower's run config, which holds only bool, int, float and str.

    A list-valued key left at its default is omitted (the ServerApp rebuilds it from the
    defaults); a list-valued key set to anything else cannot be carried and is an input error.
    """
    from fedsim.core.config import build_config

    defaults = build_config().to_flat()
    flat = {}
    for key, value in cfg.to_flat().items():
        if isinstance(value, bool | int | float | str):
            flat[key] = value
        elif value != defaults.get(key):
            raise DeployError(
                f"{key}={value!r}: Flower's run config holds only numbers, booleans and strings, "
                "so a deployed run keeps this key's default",
                2,
            )
    return flat


# ---- submit, wait, fetch ------------------------------------------------------------------------------


def submit(stage: Path, superlink: str | None) -> int:
    proc = flwr(["run", str(stage), *([superlink] if superlink else []), "--format", "json"])
    data = _json_out(proc)
    if proc.returncode != 0 or not data.get("success") or not data.get("run-id"):
        raise DeployError(f"flwr run could not submit the app: {_flwr_error(proc)}")
    return int(data["run-id"])


def run_status(run_id: int, superlink: str | None) -> dict[str, Any]:
    """Flower's record of one run (``flwr ls --run-id``): status, status-details, elapsed, ..."""
    proc = flwr(["ls", *([superlink] if superlink else []), "--run-id", str(run_id), "--format", "json"])
    runs = _json_out(proc).get("runs") or []
    if proc.returncode != 0 or not runs:
        raise DeployError(f"flwr ls --run-id {run_id}: {_flwr_error(proc)}")
    return runs[0]


def wait_for_run(run_id: int, superlink: str | None, timeout_s: float, on_change=None, on_poll=None) -> dict[str, Any]:
    """Poll until Flower reports the run finished (``finished:completed|failed|stopped``).

    ``on_change(info)`` is called when the run's status changes, ``on_poll()`` at every poll.
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        if on_poll:
            on_poll()
        try:
            info = run_status(run_id, superlink)
        except (DeployError, subprocess.TimeoutExpired):
            info = {"status": "unknown"}  # the SuperLink may be restarting; keep polling until the deadline
        if info["status"] != last and on_change:
            on_change(info)
        last = info["status"]
        if str(info["status"]).startswith("finished"):
            return info
        if time.monotonic() > deadline:
            stopped = flwr(["stop", str(run_id), *([superlink] if superlink else [])])
            note = "stopped it" if stopped.returncode == 0 else f"could not stop it: {_flwr_error(stopped)}"
            raise DeployError(f"run {run_id} did not finish within --timeout={timeout_s:g} s ({note})")
        time.sleep(RUN_POLL_S)


class RoundFollower:
    """Round lines of a deployed run, from the ServerApp's ``rounds.jsonl`` as it grows.

    ``read(offset)`` returns the file's bytes from ``offset`` on (b"" while it does not exist);
    each :meth:`poll` turns the complete lines added since into :class:`~fedsim.app.progress.RoundText`
    lines, passed to ``emit``. A round already shown is not shown again (a ServerApp that resumes
    a run rewrites rounds already recorded).
    """

    def __init__(self, read, text, emit):
        self.read, self.text, self.emit = read, text, emit
        self.offset = 0
        self.shown = 0

    def poll(self) -> None:
        try:
            data = self.read(self.offset)
        except (OSError, subprocess.SubprocessError):
            return  # the file or its container is not there (yet): the next poll tries again
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for raw in complete.splitlines():
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("round"), int) and record["round"] > self.shown:
                self.shown = record["round"]
                self.emit(self.text.line(record))


def local_reader(path: Path):
    """``read(offset)`` for :class:`RoundFollower` on this machine's disk."""

    def read(offset: int) -> bytes:
        if not path.is_file():
            return b""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()

    return read


def container_reader(container: str, path: str):
    """``read(offset)`` for :class:`RoundFollower` inside a container (``docker exec ... tail -c``)."""

    def read(offset: int) -> bytes:
        proc = subprocess.run(
            ["docker", "exec", container, "tail", "-c", f"+{offset + 1}", path],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        return proc.stdout if proc.returncode == 0 else b""

    return read


def serverapp_container(container: str | None) -> str:
    """``container``, or the one running compose service ``serverapp`` (DeployError if not exactly one)."""
    if container:
        return container
    ps = subprocess.run(
        ["docker", "ps", "-q", "--filter", "label=com.docker.compose.service=serverapp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ids = ps.stdout.split()
    if ps.returncode != 0 or len(ids) != 1:
        found = "none" if not ids else f"{len(ids)}"
        raise DeployError(f"--fetch docker: found {found} running `serverapp` containers; name one with --container")
    return ids[0]


def check_fetch_target(out: Path) -> None:
    """``--out`` must not exist or be an empty folder: deploy writes each run into a new folder.

    Checked before anything is submitted (exit 2) and again at the fetch; creates nothing.
    """
    advice = "deploy writes each run into a new folder: choose another --out or omit it"
    if out.exists() and not out.is_dir():
        raise DeployError(f"--out={str(out)!r}: exists and is not a folder; {advice}", 2)
    if out.is_dir() and any(out.iterdir()):
        raise DeployError(f"--out={str(out)!r}: folder exists and is not empty; {advice}", 2)


def default_out(name: str) -> Path:
    """``results/<name>``, or ``results/<name>-2``, ``-3``, ... where that exists (a run in the same second)."""
    out, n = Path("results") / name, 1
    while out.exists() or out.is_symlink():
        n += 1
        out = Path("results") / f"{name}-{n}"
    return out


def fetch_results(mode: str, remote_dir: str, out: Path, container: str | None) -> None:
    """Copy the ServerApp's results folder into ``out`` ('local': same file system; 'docker': docker cp).

    ``out`` must be absent (it is created) or an empty folder (it is kept and the files go into it):
    :func:`check_fetch_target`. The copy lands in a hidden folder inside ``out``, and its files are
    moved next to it only once it is complete; a name that appeared in ``out`` meanwhile stops the
    fetch. A failed fetch removes only what it created (the files it moved, and ``out`` if it created
    it), so ``out`` is left as it was; nothing else is ever replaced or deleted.
    """
    kept = f"nothing was overwritten; the results stay in {remote_dir} on the ServerApp's machine"
    try:
        check_fetch_target(out)
    except DeployError as e:  # something appeared at --out during the run: exit 1, the run is over
        raise DeployError(f"{e} ({kept})") from None
    created = not out.is_dir()
    try:
        out.mkdir(parents=True, exist_ok=not created)  # FileExistsError: someone made it since the check
        staging = Path(tempfile.mkdtemp(prefix=".fedsim-fetch-", dir=out))  # ours alone
    except OSError as e:
        raise DeployError(f"fetching the results into {out}: {e}") from None
    fetched = staging / "results"
    moved: list[Path] = []
    done = False
    try:
        _copy_results(mode, remote_dir, fetched, container)
        for entry in sorted(fetched.iterdir()):
            target = out / entry.name
            if target.exists() or target.is_symlink():
                raise DeployError(f"--out={str(out)!r}: {entry.name} appeared there during the fetch ({kept})")
            os.rename(entry, target)
            moved.append(target)
        done = True
    except OSError as e:
        raise DeployError(f"fetching the results into {out}: {e}") from None
    finally:
        if not done:
            for target in moved:  # back into the staging folder, removed below
                os.rename(target, fetched / target.name)
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            with contextlib.suppress(OSError):  # still holds what someone else put there meanwhile
                out.rmdir()


def _copy_results(mode: str, remote_dir: str, dest: Path, container: str | None) -> None:
    """Copy ``remote_dir`` to the new path ``dest``."""
    if mode == "local":
        if not Path(remote_dir).is_dir():
            raise DeployError(
                f"no results folder at {remote_dir} (is the ServerApp on another machine? use --fetch docker)"
            )
        shutil.copytree(remote_dir, dest)
        return
    container = serverapp_container(container)
    cp = subprocess.run(
        ["docker", "cp", f"{container}:{remote_dir}", str(dest)], capture_output=True, text=True, timeout=300
    )
    if cp.returncode != 0:
        raise DeployError(f"docker cp {container}:{remote_dir}: {_one_line(cp.stderr)}")


def _end(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def deploy_run(
    cfg,
    *,
    superlink: str | None,
    app_dir: Path,
    remote_dir: str,
    out: Path | None,
    fetch: str,
    container: str | None,
    timeout_s: float,
    stream: bool,
    say=print,
    show_round=None,
) -> dict[str, Any]:
    """Submit ``cfg`` to the federation, wait, fetch; returns the outcome or raises DeployError.

    ``show_round(line)``, when given, receives one progress line per round as the ServerApp records
    it (its ``rounds.jsonl``, read where ``fetch`` reads the results: this disk or the container).
    """
    with tempfile.TemporaryDirectory(prefix="fedsim-app-") as tmp:
        stage = stage_app(app_dir, {"results-dir": remote_dir, **run_config(cfg)}, Path(tmp) / "app")
        run_id = submit(stage, superlink)
    say(f"submitted run {run_id} to SuperLink '{superlink or 'default'}'; the ServerApp writes {remote_dir}")
    logs = None
    if stream:
        logs = subprocess.Popen(
            [_flwr_exe(), "log", str(run_id), *([superlink] if superlink else []), "--stream"],
            stdin=subprocess.DEVNULL,
        )
    follower = None
    if show_round is not None and fetch != "none":
        from fedsim.app.progress import RoundText

        if fetch == "local":
            read = local_reader(Path(remote_dir) / "rounds.jsonl")
        else:
            try:
                read = container_reader(serverapp_container(container), f"{remote_dir}/rounds.jsonl")
            except DeployError as e:  # the fetch will say it again, and fail
                say(f"no round lines: {e}")
                read = None
        follower = RoundFollower(read, RoundText.for_config(cfg), show_round) if read else None
    try:
        info = wait_for_run(
            run_id,
            superlink,
            timeout_s,
            lambda i: say(f"run {run_id}: {i['status']}"),
            follower.poll if follower else None,
        )
        if follower:
            follower.poll()  # the rounds recorded since the last poll
    finally:
        if logs is not None:
            _end(logs)
    outcome: dict[str, Any] = {"run_id": run_id, "flwr_status": info["status"], "details": info.get("status-details")}
    summary = None
    fetched = fetch != "none" and out is not None
    if fetched:
        fetch_results(fetch, remote_dir, out, container)
        summary_path = out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    outcome["summary"] = summary
    where = f" (results in {out})" if fetched else ""
    if info["status"] != "finished:completed":
        detail = (summary or {}).get("error") or info.get("status-details") or info["status"]
        raise DeployError(f"run {run_id} {info['status']}: {detail}{where}")
    if fetched and (summary is None or summary.get("status") != "ok"):
        detail = (summary or {}).get("error") or "no summary.json in the results folder"
        raise DeployError(f"run {run_id} failed: {detail}{where}")
    return outcome


# ---- commands ---------------------------------------------------------------------------------------


@deploy_app.command("connect")
def connect_cmd(
    name: Annotated[str, typer.Argument(help="Name of the connection (used as SUPERLINK by flwr and fedsim).")],
    address: Annotated[str, typer.Option(help="SuperLink HOST:PORT (its single HTTP port, 8000 by default).")],
    ca: Annotated[Path | None, typer.Option(help="CA certificate that signed the SuperLink's (ca.crt).")] = None,
    insecure: Annotated[bool, typer.Option(help="Plain HTTP (only with docker-compose.insecure.yml).")] = False,
    default: Annotated[bool, typer.Option(help="Make it the default connection.")] = False,
) -> None:
    """Add a SuperLink connection to $FLWR_HOME/config.toml (what `flwr` and `fedsim deploy` use)."""
    try:
        path = write_connection(flwr_home(), name, address, ca, insecure, default)
    except DeployError as e:
        fail(str(e), e.code)
    typer.echo(f"SuperLink connection '{name}' -> {address} written to {path}")


@deploy_app.command("register")
def register_cmd(
    keys: Annotated[list[Path], typer.Argument(help="SuperNode public keys (supernode-<i>.pub from docker/certs.sh).")],
    superlink: Annotated[str | None, typer.Option(help="Connection name in $FLWR_HOME/config.toml.")] = None,
    address: Annotated[str | None, typer.Option(help="Or the SuperLink HOST:PORT directly (with --ca).")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate, with --address.")] = None,
    wait: Annotated[float, typer.Option(help="Retry for this many seconds while the SuperLink is unreachable.")] = 0,
) -> None:
    """Register SuperNode public keys with a SuperLink started with --enable-supernode-auth.

    Without --address the connection (--superlink, else the default) must name a SuperLink with an
    address: Flower's local simulation one is refused, as by `fedsim deploy run`.

    A key that is already registered is fine (the SuperLink keeps its node id across restarts).
    """
    env: dict[str, str] = {}
    tmp = None
    try:
        if address:
            tmp = tempfile.TemporaryDirectory(prefix="fedsim-flwr-")
            write_connection(Path(tmp.name), "fedsim", address, ca, default=True)
            env["FLWR_HOME"] = tmp.name
            superlink = "fedsim"
        else:
            check_connection(flwr_home(), superlink)  # else `flwr supernode register` may start a SuperLink here
        for key in keys:
            if not key.is_file():
                raise DeployError(f"{key}: public key file not found", 2)
            deadline = time.monotonic() + wait
            while True:
                proc = flwr(["supernode", "register", str(key), *([superlink] if superlink else [])], env=env)
                text = proc.stdout + proc.stderr
                if proc.returncode == 0:
                    typer.echo(f"{key.name}: {_one_line(proc.stdout)}")
                    break
                if "already in use" in text:
                    typer.echo(f"{key.name}: already registered")
                    break
                if time.monotonic() > deadline:
                    raise DeployError(f"{key.name}: flwr supernode register failed: {_flwr_error(proc)}")
                time.sleep(2)
    except DeployError as e:
        fail(str(e), e.code)
    finally:
        if tmp is not None:
            tmp.cleanup()


@deploy_app.command("run")
def run_cmd(
    superlink: Annotated[str | None, typer.Option(help="Connection name in $FLWR_HOME/config.toml.")] = None,
    clients: Annotated[int | None, typer.Option(help="Number of clients: the number of SuperNodes.")] = None,
    rounds: RoundsOption = None,
    clients_per_round: ClientsPerRoundOption = None,
    seed: SeedOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    out: Annotated[
        str | None, typer.Option(help="New local results folder, absent or empty (default results/deploy-<time>-...).")
    ] = None,
    remote_root: Annotated[
        str, typer.Option(help="Folder where the ServerApp writes results (on the ServerApp's machine).")
    ] = IMAGE_RESULTS_ROOT,
    fetch: Annotated[
        str, typer.Option(help="How to copy the results here: docker (docker cp), local (same disk), none.")
    ] = "docker",
    container: Annotated[str | None, typer.Option(help="With --fetch docker: the ServerApp's container.")] = None,
    app: Annotated[
        Path | None, typer.Option(help="The fedsim app folder (default: the installed source tree).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up (and stop the run) after this many seconds.")] = 3600,
    stream: Annotated[bool, typer.Option(help="Stream the run's logs (flwr log --stream).")] = False,
    quiet: Annotated[
        bool, typer.Option(help="Print only the results path (the run id with --fetch none): for scripts.")
    ] = False,
) -> None:
    """Submit fedsim to a federation, wait for its real outcome, fetch the results into a new folder.

    While the run goes on, one line per round (as `fedsim run` shows it: metric, round latency,
    uplink bits, clients answered and failed), read from the ServerApp's rounds.jsonl where --fetch
    reads the results (none with --fetch none); --quiet prints only the results path.

    --out must not exist or be an empty folder. The SuperLink connection (--superlink, else the
    default) must name a SuperLink with an address: Flower's local simulation one is refused.
    Exit codes: 0 the run completed and summary.json says ok; 1 it failed, was stopped or timed
    out (one line says why); 2 bad input.
    """
    if fetch not in ("docker", "local", "none"):
        fail(f"--fetch={fetch!r}: must be one of docker, local, none", 2)
    try:
        cfg = resolve_config(config, set_ or [], shortcuts(clients, rounds, clients_per_round, seed))
        app_dir = find_app_dir(app)
        name = results_name(cfg, "deploy-")
        out_dir = out_path(out) if out is not None else default_out(name)
        if fetch != "none":
            check_fetch_target(out_dir)  # before anything is submitted
        check_connection(flwr_home(), superlink)  # else `flwr run` may start a SuperLink here
        check_tracking(cfg)
    except ConfigError as e:
        fail(str(e), 2)
    except DeployError as e:
        fail(str(e), e.code)
    remote_dir = f"{remote_root.rstrip('/')}/{name}"
    say = (lambda _msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    try:
        outcome = deploy_run(
            cfg,
            superlink=superlink,
            app_dir=app_dir,
            remote_dir=remote_dir,
            out=out_dir,
            fetch=fetch,
            container=container,
            timeout_s=timeout,
            stream=stream,
            say=say,
            show_round=None if quiet else typer.echo,
        )
    except DeployError as e:
        fail(str(e), e.code)
    except subprocess.TimeoutExpired as e:
        fail(f"{' '.join(map(str, e.cmd[:3]))} did not answer in {e.timeout:g} s", 1)
    if fetch != "none" and backends(cfg):
        track_folder(out_dir, cfg)  # the fetched records, into this machine's TensorBoard / MLflow
    summary = outcome["summary"] or {}
    if quiet:
        typer.echo(str(out_dir) if fetch != "none" else str(outcome["run_id"]))
        return
    final = summary.get("final_metrics", {}).get("primary_metric")
    typer.echo(
        f"run {outcome['run_id']} completed: {summary.get('rounds_completed', '?')} rounds"
        + (f", {summary.get('primary_metric')} {final:.4f}" if isinstance(final, float) else "")
        + (f"; results in {out_dir}" if fetch != "none" else "")
    )
