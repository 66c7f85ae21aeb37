"""What ``fedsim run``, ``fedsim plan`` and ``fedsim deploy run`` share: their options, the
layering of a configuration from the command line, and the checks of paths named on it.

Every check here runs before anything is started or written; a failure is a one-line
ConfigError that the commands turn into exit code 2.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from fedsim.core.checks import checked_config
from fedsim.core.config import (
    Config,
    ConfigError,
    RunSection,
    load_toml,
    parse_overrides,
    parse_value,
    renamed_key_notes,
)
from fedsim.core.results import holds_more_than_the_lock

ClientsOption = Annotated[int | None, typer.Option(help="Number of clients (run.clients).")]
RoundsOption = Annotated[int | None, typer.Option(help="Federated rounds (run.rounds).")]
ClientsPerRoundOption = Annotated[
    str | None, typer.Option(help="Clients per round: a count (10) or a fraction (0.2) (run.clients_per_round).")
]
SeedOption = Annotated[int | None, typer.Option(help="Seed of every random stream (run.seed).")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML file with one [section] table per section.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override any key: section.key=value.")]
MethodOption = Annotated[str | None, typer.Option(help="Upload method (run.method; fedsim methods lists them).")]
SchedulerOption = Annotated[
    str | None, typer.Option(help="rho and bandwidth scheduler (run.scheduler; fedsim methods lists them).")
]


def fail(message: str, code: int) -> None:
    """Print ``fedsim: message`` on stderr and exit with ``code``; renamed keys read under their old
    names are named in the same line (the message names the new ones)."""
    notes = renamed_key_notes()
    typer.echo(f"fedsim: {message}" + "".join(f" ({note})" for note in notes), err=True)
    raise typer.Exit(code)


def shortcuts(
    clients: int | None = None,
    rounds: int | None = None,
    clients_per_round: str | None = None,
    seed: int | None = None,
    **keys: Any,
) -> dict[str, Any]:
    """The configuration keys set by the shortcut options (``--clients 5`` is ``run.clients=5``)."""
    return {
        "run.clients": clients,
        "run.rounds": rounds,
        "run.seed": seed,
        "run.clients_per_round": None if clients_per_round is None else parse_value(clients_per_round),
        **keys,
    }


def results_name(cfg: Config, prefix: str = "") -> str:
    """The default name of a results folder: ``[prefix-]<time>-<workload>-<method>-seed<seed>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}-{cfg.workload.name}-{cfg.run.method}-seed{cfg.run.seed}"


def resolve_config(config_file: Path | None, sets: list[str], shortcuts: dict[str, Any]) -> Config:
    """Defaults < the workload preset's train.* defaults < TOML file < CLI shortcut options < --set overrides.

    ``run.clients_per_round`` left at its default samples at most ``run.clients`` clients
    (``--clients 5`` alone samples all 5); a value given anywhere is checked as given.
    """
    layers = [load_toml(config_file)] if config_file else []
    layers.append({k: v for k, v in shortcuts.items() if v is not None})
    layers.append(parse_overrides(sets))
    given = {k: v for layer in layers for k, v in layer.items()}
    clients, default = given.get("run.clients"), RunSection().clients_per_round
    if "run.clients_per_round" not in given and type(clients) is int and 0 < clients < default:
        layers.append({"run.clients_per_round": clients})
    cfg = checked_config(*layers)
    show_renamed_key_notes()
    return cfg


def show_renamed_key_notes() -> None:
    """One line on stderr for each renamed key read under its old name (:data:`fedsim.core.config.RENAMED_KEYS`)."""
    for line in renamed_key_notes():
        typer.echo(f"fedsim: {line}", err=True)


def out_path(text: str, option: str = "--out") -> Path:
    """A folder path given on the command line; '' (which would mean the current folder) and names
    the file system cannot hold are one-line errors."""
    if not text.strip():
        raise ConfigError(f"{option}={text!r}: must name a folder (use {option}=. for the current folder)")
    path = Path(text)
    try:
        path.exists()
    except OSError as e:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise ConfigError(f"{option}={shown!r}: not a usable path ({e.strerror or e})") from None
    return path


def check_out_file(path: Path, option: str = "--out") -> None:
    """Refuse a file path that cannot be written (a folder, a missing or read-only folder, /proc, ...).

    Probed before any work is done: an existing file is opened for appending (not truncated), a new
    one is created and removed again, so nothing is left behind.
    """
    if path.is_dir():
        raise ConfigError(f"{option}={str(path)!r}: is a folder; name a file")
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as e:
        raise ConfigError(f"{option}={str(path)[:200]!r}: cannot write there ({e.strerror or e})") from None
    if not existed:
        path.unlink()


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """An existing Ray cluster must answer at ``host:port`` within ``timeout_s`` (else Ray retries for minutes).

    ``auto`` (Ray's own discovery) is left to Ray.
    """
    import socket

    from fedsim.core.config import is_ray_address

    if not is_ray_address(address):
        raise ConfigError(f"--ray-address={address!r}: must be auto, local or HOST:PORT of a Ray cluster's head")
    if address in ("", "auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            f"simulation.ray_address={address!r}: no Ray cluster reachable there within {timeout_s:g} s ({why})"
        ) from None


def default_out_dir(cfg: Config) -> Path:
    return Path("results") / results_name(cfg)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder (unless --force) and one that cannot be written; creates nothing.

    A folder that holds only fedsim's lock file (a run stopped before it wrote anything) counts as
    empty: the run takes the lock again, and refuses if another process holds it.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={str(out)!r}: exists and is not a folder")
    if out.is_dir() and holds_more_than_the_lock(out) and not force:
        raise ConfigError(f"--out={str(out)!r}: folder exists and is not empty (choose another or pass --force)")
    created = [p for p in (out, *out.parents) if not p.exists()]
    probe = out / ".fedsim-write-probe"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out={str(out)!r}: cannot write there ({e.strerror or e})") from None
    finally:
        for p in created:  # leave nothing behind: the run creates the folder when it starts
            if p.exists() and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
