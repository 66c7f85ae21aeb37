"""The ``fedsim`` command line.

Exit codes: 0 every round completed; 1 the run failed (one line says what); 2 bad input (one
line naming the key, the value and what is allowed; nothing is written).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from fedsim.app.cli_common import (
    ClientsOption,
    ClientsPerRoundOption,
    ConfigOption,
    MethodOption,
    RoundsOption,
    SchedulerOption,
    SeedOption,
    SetOption,
    check_out_dir,
    check_out_file,
    check_ray_address,
    default_out_dir,
    fail,
    out_path,
    resolve_config,
    shortcuts,
    show_renamed_key_notes,
)
from fedsim.app.deploy import deploy_app
from fedsim.core.checks import check_config
from fedsim.core.config import (
    Config,
    ConfigError,
    build_config,
    describe_keys,
    load_toml,
    parse_json,
    parse_overrides,
    preset_default_rows,
    read_text_file,
    toml_to_flat,
)
from fedsim.core.signals import Terminated, catch_sigterm, exit_soon_after_sigterm, leave, sigterm_received

app = typer.Typer(
    name="fedsim",
    help="Wireless federated LoRA fine-tuning simulator on Flower.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def run(
    clients: ClientsOption = None,
    rounds: RoundsOption = None,
    clients_per_round: ClientsPerRoundOption = None,
    workload: Annotated[str | None, typer.Option(help="Workload name (workload.name).")] = None,
    method: MethodOption = None,
    scheduler: SchedulerOption = None,
    seed: SeedOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    out: Annotated[str | None, typer.Option(help="Results folder (default results/<time>-...).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this results folder.")] = None,
    force: Annotated[
        bool, typer.Option(help="Write into a non-empty --out; resume a finished run or with a changed config.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="Print only the results path.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Connect to an existing Ray cluster.")] = None,
) -> None:
    """Run federated LoRA fine-tuning on Flower's Simulation Runtime with wireless accounting."""
    from workloads.cache import keep_torch_cache_here

    keep_torch_cache_here()  # before torch is imported: nothing of the run in the temp folder
    keys = shortcuts(
        clients,
        rounds,
        clients_per_round,
        seed,
        **{
            "workload.name": workload,
            "run.method": method,
            "run.scheduler": scheduler,
            "simulation.ray_address": ray_address,
        },
    )
    from fedsim.core.checkpoint import CheckpointError, check_records

    try:
        if resume is not None:
            if out is not None:
                raise ConfigError(f"--out={out!r}: a resumed run continues in its own folder; drop --out or --resume")
            cfg, out_dir, checkpoint = prepare_resume(resume, config, set_ or [], keys, force)
            show_renamed_key_notes()
            if checkpoint is not None:
                check_records(out_dir, checkpoint)
            check_config(cfg)  # the values together: imports torch and the workload
        else:
            given_out = out_path(out) if out is not None else None  # before the configuration is checked
            cfg = resolve_config(config, set_ or [], keys)
            out_dir, checkpoint = given_out or default_out_dir(cfg), None
            check_out_dir(out_dir, force)
        check_ray_address(cfg.simulation.ray_address)
        from fedsim.app.tracking import check_tracking

        check_tracking(cfg)
    except (ConfigError, CheckpointError) as e:
        fail(str(e), 2)

    exit_soon_after_sigterm(lambda: interrupted_line(out_dir))  # even while Ray's start blocks the main thread
    from fedsim.app.progress import ProgressReporter
    from fedsim.core.engine import RunFailed
    from fedsim.core.results import LOCK, FolderLock
    from fedsim.core.schedulers import get_scheduler
    from fedsim.core.training import check_workload
    from fedsim.flower.simulation import run_in_simulation

    try:
        check_workload(cfg)  # the dataset's files and columns, the rank against the model
    except ConfigError as e:
        fail(str(e), 2)
    plans_rank = get_scheduler(cfg.run.scheduler).plans_rank
    plan = rank_plan_or_exit(cfg, show=not quiet, show_infeasible=False) if plans_rank else None
    if checkpoint is not None:
        try:
            check_resumed_tensors(cfg, out_dir, checkpoint, plan)
        except CheckpointError as e:
            fail(str(e), 2)
    lock = FolderLock(out_dir)  # held until this process exits: one writer per results folder
    try:
        lock.acquire()
        if resume is None and not force and {p.name for p in out_dir.iterdir()} != {LOCK}:
            raise ConfigError(f"--out={str(out_dir)!r}: another run wrote into this folder meanwhile")
    except ConfigError as e:
        fail(str(e), 2)
    from fedsim.app.tracking import tracked

    reporter = tracked(ProgressReporter(cfg, quiet=quiet), cfg, out_dir)  # TensorBoard / MLflow if configured
    t0 = time.perf_counter()
    try:
        with reporter:
            summary = run_in_simulation(cfg, out_dir, reporter, verbose=verbose, resume=checkpoint, plan=plan)
    except RunFailed as e:
        where = f" (results in {out_dir})" if (out_dir / "summary.json").is_file() else ""
        fail(f"run failed: {e}{where}", 1)
    except KeyboardInterrupt as e:
        interrupted(out_dir, 143 if isinstance(e, Terminated) else 130)
    if quiet:
        typer.echo(str(out_dir))
    else:
        reporter.print_summary(summary, out_dir, time.perf_counter() - t0)


def check_resumed_tensors(cfg: Config, out_dir: Path, checkpoint, plan) -> None:
    """The checkpoint's adapter (and client state) against the adapter this configuration builds.

    At the rank the run trains with (the plan's, under TSFA), as the engine builds it; raises
    CheckpointError naming the first tensor whose name, shape or dtype differs.
    """
    from dataclasses import replace

    from fedsim.core.checkpoint import check_tensors
    from fedsim.core.methods import get_method
    from fedsim.core.training import initial_state

    built = initial_state(cfg if plan is None else replace(cfg, lora=replace(cfg.lora, rank=plan.chosen_rank)))
    check_tensors(out_dir, checkpoint, built, get_method(cfg.run.method).needs_client_state)


def interrupted(out_dir: Path, code: int = 130) -> None:
    """Ctrl-C (exit 130) or SIGTERM (exit 143): the last completed round is already checkpointed;
    say how to resume and leave now.

    Leaves with os._exit (:func:`fedsim.core.signals.leave`), because the ServerApp thread may still be
    waiting on clients and would hold a normal interpreter exit; every file it writes is replaced
    atomically, so nothing is torn. Ray is still running here (see
    :func:`fedsim.flower.simulation.run_in_simulation`): the reaper stops its processes once this
    process has gone.
    """
    leave(interrupted_line(out_dir), code)


def interrupted_line(out_dir: Path) -> str:
    """What a stopped run says: the round it can resume after, or that there is nothing to resume."""
    from fedsim.core.checkpoint import CheckpointError, load_checkpoint

    if not (out_dir / "config.toml").is_file():  # the folder holds at most the lock: nothing was written
        return f"interrupted before the run started; nothing to resume: run the same command again ({out_dir})"
    try:
        ckpt = load_checkpoint(out_dir)
        done = f"after round {ckpt.round}" if ckpt else "before the first round completed"
    except CheckpointError:
        done = "(checkpoint unreadable)"
    return f"interrupted {done}; resume with: fedsim run --resume {out_dir}"


def prepare_resume(
    folder: Path, config_file: Path | None, sets: list[str], shortcuts: dict[str, Any], force: bool
) -> tuple[Config, Path, Any]:
    """The configuration and checkpoint to continue ``folder`` with, or a one-line error.

    Refused without ``--force``: new values given on this command line, a ``config.toml`` edited
    since the last checkpoint (its SHA-256 differs from the one the checkpoint recorded), and a
    finished run. Refused always: a link in ``checkpoint/`` or ``client_state/``
    (:func:`~fedsim.core.checkpoint.check_folders`) and a checkpoint that does not load.

    Nothing here imports torch or a workload, so these refusals cost well under a second: each
    key's value is checked, but not the values together; the caller runs
    :func:`~fedsim.core.checks.check_config` on the returned configuration (after
    :func:`~fedsim.core.checkpoint.check_records`, which is as cheap).
    """
    from fedsim.core.checkpoint import check_folders, load_checkpoint, sha256_text

    if not (folder / "config.toml").is_file():
        raise ConfigError(f"--resume={str(folder)!r}: not a fedsim results folder (no config.toml)")
    saved_text = read_text_file(folder / "config.toml", "--resume")
    saved = build_config(toml_to_flat(saved_text, f"{folder / 'config.toml'}"))
    check_folders(folder)
    checkpoint = load_checkpoint(folder)
    if checkpoint is not None and sha256_text(saved_text) != checkpoint.config_sha256 and not force:
        raise ConfigError(
            f"--resume={str(folder)!r}: config.toml was edited after round {checkpoint.round} was checkpointed; "
            "pass --force to continue with the edited values"
        )
    layers = [saved.to_flat(), *([load_toml(config_file)] if config_file else [])]
    layers += [{k: v for k, v in shortcuts.items() if v is not None}, parse_overrides(sets)]
    cfg = build_config(*layers)
    changed = [k for k, v in cfg.to_flat().items() if saved.to_flat()[k] != v]
    if changed and not force:
        raise ConfigError(
            f"--resume={str(folder)!r}: configuration differs from the run's ({', '.join(changed)}); "
            "pass --force to continue with the new values"
        )
    summary = folder / "summary.json"
    if summary.exists():
        text = read_text_file(summary, "--resume")
        try:
            status = parse_json(text, "summary.json").get("status")
        except (ConfigError, AttributeError):
            raise ConfigError(f"--resume={str(folder)!r}: summary.json is not a JSON object") from None
        if status == "ok" and not force:
            raise ConfigError(f"--resume={str(folder)!r}: the run is finished; pass --force to continue it anyway")
    return cfg, folder, checkpoint


def rank_plan_or_exit(cfg: Config, show: bool, show_infeasible: bool = True):
    """TSFA's offline stage before any Flower work; an infeasible budget is bad input (exit 2).

    ``show``: print the plan's table. ``show_infeasible``: print the table of an infeasible plan
    before the refusal (``fedsim plan``, which exists to show it); ``fedsim run`` refuses in one line.
    """
    from fedsim.core.rank_plan import plan_for
    from fedsim.core.training import WorkloadHost
    from fedsim.core.wireless import WirelessModel
    from fedsim.tsfa import InfeasibleBudgetError

    try:
        plan = plan_for(cfg, WirelessModel(cfg), WorkloadHost())
    except (InfeasibleBudgetError, ValueError) as e:
        rows = getattr(e, "rows", None)
        if show and show_infeasible and rows:
            print_plan(rows, None, cfg.tsfa.latency_budget_s, cfg.tsfa.deadline_s)
        fail(" ".join(str(e).split()), 2)
    if show:
        print_plan(plan.rows, plan.chosen_rank, cfg.tsfa.latency_budget_s, cfg.tsfa.deadline_s)
    return plan


def print_plan(rows, chosen: int | None, budget_s: float, deadline_s: float = 0.0) -> None:
    from rich.console import Console
    from rich.table import Table

    within = f", clients that cannot meet d = {deadline_s:g} s dropped" if deadline_s else ""
    table = Table(title=f"TSFA offline rank plan (T_avg = {budget_s:g} s{within})")
    columns = ["rank", "payload per client (Mbit)", "expected latency (s)", "95% CI (s)"]
    columns += ["dropped by the deadline"] if deadline_s else []
    for col in (*columns, "feasible"):
        table.add_column(col)
    for r in rows:
        mark = " <- chosen" if r.rank == chosen else ""
        cells = [
            str(r.rank),
            f"{r.payload_bits_per_client_mean / 1e6:.3f}",
            f"{r.expected_latency_s:.4f}",
            f"+-{r.latency_ci95_s:.4f}",
        ]
        cells += [f"{r.dropped_share:.1%}"] if deadline_s else []
        table.add_row(*cells, f"{'yes' if r.feasible else 'no'}{mark}")
    Console(stderr=True).print(table)
    if not deadline_s:
        Console(stderr=True).print(
            "without tsfa.deadline_s, fading makes upload times heavy-tailed (under Rayleigh fading the mean "
            "latency is infinite): the estimate is of a finite sample; set a deadline for a bounded plan",
            style="dim",
        )


@app.command()
def plan(
    config: ConfigOption = None,
    set_: SetOption = None,
    clients: ClientsOption = None,
    clients_per_round: ClientsPerRoundOption = None,
    seed: SeedOption = None,
    method: MethodOption = None,
    out: Annotated[Path | None, typer.Option(help="Also write the table to this CSV file.")] = None,
) -> None:
    """TSFA offline stage: expected round latency of each candidate LoRA rank, and the rank it picks."""
    try:
        keys = shortcuts(clients, None, clients_per_round, seed, **{"run.method": method or "soft"})
        cfg = resolve_config(config, set_ or [], keys)
        if out is not None:
            check_out_file(out)
    except ConfigError as e:
        fail(str(e), 2)
    result = rank_plan_or_exit(cfg, show=True)
    typer.echo(f"structural rank: {result.chosen_rank}")
    if out is not None:
        from fedsim.core.rank_plan import write_plan

        write_plan(result, out)


@app.command("config")
def show_config() -> None:
    """List every configuration key with its default and what it accepts."""
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "default", "allowed", "meaning")
    for key, default, allowed, doc in describe_keys():
        table.add_row(key, repr(default), allowed, doc)
    Console().print(table)


@app.command("channels")
def show_channels(
    export_trace: Annotated[
        Path | None, typer.Option(help="Write the channel of this results folder's rounds as a trace CSV.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Trace CSV to write (with --export-trace).")] = None,
) -> None:
    """List the channel components (names, parameters, defaults, units), or export a run's channel trace."""
    from fedsim.core.wireless import describe_components, export_trace_from_results

    if export_trace is not None:
        if out is None:
            fail("--export-trace needs --out FILE.csv", 2)
        if not (export_trace / "rounds.jsonl").is_file():
            fail(f"--export-trace={str(export_trace)!r}: not a results folder (no rounds.jsonl)", 2)
        try:
            check_out_file(out)
            n = export_trace_from_results(export_trace, out)
        except ConfigError as e:
            fail(str(e), 2)
        typer.echo(f"{n} rows written to {out}; replay with --set channel.trace_csv={out}")
        return

    def show(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else repr(value)

    kind = None
    for entry in describe_components():
        if entry["kind"] != kind:
            kind = entry["kind"]
            typer.echo(f"\n{kind}" + (f"  (--set {entry['selector'].split('=')[0]}=NAME)" if entry["selector"] else ""))
        typer.echo(f"  {entry['name']:<18} {entry['summary'].replace('``', '')}".rstrip())
        for key, default, unit in entry["parameters"]:
            typer.echo(f"  {'':<18}   {key} = {show(default)}  [{unit}]")


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors become one line and exit code 2."""
    command = typer.main.get_command(app)
    catch_sigterm()  # a SIGTERM at any moment stops the command as Ctrl-C does (exit 143, not 15 or a kill)
    try:
        code = command.main(args=argv if argv is not None else sys.argv[1:], prog_name="fedsim", standalone_mode=False)
    except click.exceptions.UsageError as e:
        typer.echo(f"fedsim: {e.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        typer.echo("fedsim: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    if code == 130:  # Typer's answer to a KeyboardInterrupt outside a run's own handling (see `run`)
        if sigterm_received():
            leave("terminated", 143)
        leave("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


app.add_typer(deploy_app, name="deploy")  # the same app on Flower's Deployment Engine (fedsim/app/deploy.py)


@app.command("methods")
def list_methods() -> None:
    """List the upload methods (run.method) and the schedulers (run.scheduler), installed ones included."""
    from fedsim.core.methods import get_method, method_names
    from fedsim.core.schedulers import get_scheduler, scheduler_names

    typer.echo("upload methods (--method / run.method):")
    for name in method_names():
        try:
            m = get_method(name)
        except ConfigError as e:  # a broken plug-in is listed, not fatal
            typer.echo(f"  {name:<12} unusable: {str(e).partition(': ')[2]}")
            continue
        flags = ", ".join((["client state"] if m.needs_client_state else []) + list(m.config_keys))
        typer.echo(f"  {m.name:<12} {m.description}" + (f" [{flags}]" if flags else ""))
    typer.echo("schedulers (--scheduler / run.scheduler):")
    for name in scheduler_names():
        try:
            typer.echo(f"  {name:<12} {get_scheduler(name).description}")
        except ConfigError as e:
            typer.echo(f"  {name:<12} unusable: {str(e).partition(': ')[2]}")


@app.command("workloads")
def list_workloads(
    options: Annotated[
        str | None, typer.Option(help="List this workload's options: default, allowed values and meaning.")
    ] = None,
) -> None:
    """List the registered workloads (built-in and installed): presets, metric and what each is;
    ``--options NAME``: one workload's options."""
    from rich.console import Console
    from rich.table import Table

    from workloads import declaration, get_workload_class, registry

    width = None if sys.stdout.isatty() else 200  # piped: do not wrap to 80
    if options is not None:
        if options not in registry():
            fail(f"--options={options!r}: must be a workload, one of {', '.join(sorted(registry()))}", 2)
        table = Table(
            "option", "default", "allowed", "meaning", title=f'{options}: workload.options = "key=value, ..."'
        )
        for row in [*declaration(options).rows(), *preset_default_rows(options)]:
            table.add_row(*row)
        Console(width=width).print(table)
        return
    table = Table("name", "presets", "primary metric", "description")
    for name, target in sorted(registry().items()):
        try:
            wl = get_workload_class(name)
        except Exception as e:  # a broken plug-in is listed with its error, not fatal to the listing
            table.add_row(name, "", "", f"cannot load {target}: {type(e).__name__}: {e}")
            continue
        metric = f"{wl.primary_metric} ({'higher' if wl.higher_is_better else 'lower'} is better)"
        table.add_row(name, ", ".join(wl.presets), metric, wl.description)
    Console(width=width).print(table)


# ---- fedsim sweep / report: campaigns of runs (fedsim/app/sweep.py, fedsim/app/report.py) --------
@app.command("sweep")
def sweep_command(
    file: Annotated[Path, typer.Argument(help="Sweep file: a config TOML with a [sweep] table of axes.")],
    out: Annotated[str | None, typer.Option(help="Sweep folder (default sweeps/<sweep name>).")] = None,
    jobs: Annotated[
        int | None, typer.Option(help="Runs at once (default: cores / simulation.cpus_per_client).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key of every run: section.key=value.")
    ] = None,
    ray_address: Annotated[str | None, typer.Option(help="Run every run on this existing Ray cluster.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and list the runs; run nothing, write nothing.")] = False,
    quiet: Annotated[bool, typer.Option(help="Print only the sweep folder.")] = False,
) -> None:
    """Run a campaign: every combination of the sweep file's axes as a `fedsim run`, several at a time.

    Re-running the same command skips finished runs and resumes interrupted or failed ones.
    """
    from fedsim.app import sweep as sw

    try:
        if jobs is not None and jobs < 1:  # the options first: resolving the runs costs seconds
            raise ConfigError(f"--jobs={jobs}: must be a positive integer")
        given_out = out_path(out) if out is not None else None
        if ray_address:
            check_ray_address(ray_address)
        spec = sw.load_sweep(file, parse_overrides(set_ or []))
        folder = given_out or Path("sweeps") / spec.name
        if not dry_run:
            sw.check_folder(spec, folder)
        sw.check_rank_plans(spec)  # TSFA budgets no rank meets, as `fedsim run` would refuse them
    except ConfigError as e:
        fail(str(e), 2)
    n_jobs = jobs or (1 if ray_address else sw.default_jobs(spec.runs[0].config))
    n_jobs = min(n_jobs, len(spec.runs))
    if dry_run:
        for run_spec in spec.runs:
            typer.echo(f"{run_spec.name}\t{sw.run_state(folder / 'runs' / run_spec.name)}")
        typer.echo(f"{len(spec.runs)} runs, {n_jobs} at a time, in {folder}")
        return
    from fedsim.app.progress import SweepDisplay
    from fedsim.core.results import FolderLock

    lock = FolderLock(folder)  # held until this process exits: one sweep per sweep folder
    try:
        lock.acquire()
    except ConfigError as e:
        fail(str(e), 2)
    display = SweepDisplay(spec.name, folder, quiet=quiet)
    try:
        with display:
            index = sw.execute(spec, folder, n_jobs, ray_address=ray_address, display=display)
    except sw.Interrupted as e:
        typer.echo(
            f"fedsim: sweep interrupted; finished runs are kept, the others resume from their checkpoints with: "
            f"fedsim sweep {file} --out {folder}",
            err=True,
        )
        raise typer.Exit(e.code) from None
    counts = index.counts()
    if quiet:
        typer.echo(str(folder))
    else:
        display.print_summary(index)
    if counts["failed"]:
        fail(f"{counts['failed']} of {len(spec.runs)} runs failed (see {folder / 'sweep.csv'} and logs/)", 1)


@app.command("report")
def report_command(
    dirs: Annotated[list[Path], typer.Argument(help="Sweep folders, results folders, or folders holding them.")],
    out: Annotated[str | None, typer.Option(help="Report folder (default <first DIR>/report).")] = None,
    by: Annotated[
        list[str] | None, typer.Option(help="Group by this config key (repeatable; default: the sweep axes).")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help="Metric to tabulate (repeatable): a final-round metric or a summary.json field; A-B: the "
            "difference of two within each run."
        ),
    ] = None,
    paired: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=A,B: also the per-seed differences A - B with their interval (repeatable), "
            "e.g. run.method=soft,topk."
        ),
    ] = None,
    into: Annotated[
        Path | None,
        typer.Option(
            help="Also replace the table block of the sweep's file on this Markdown page "
            "(<!-- table: experiments/x.toml --> ... <!-- /table -->)."
        ),
    ] = None,
) -> None:
    """Tables (mean and 95% interval over seeds) and figures of many runs, on one Markdown page.

    With --into, the summary table (and the --paired tables) also fill the block of the sweep's
    experiments file on a docs page.
    """
    from fedsim.app.report import DEFAULT_METRICS, write_report
    from fedsim.core.config import describe_keys

    try:
        folder = out_path(out) if out is not None else dirs[0] / "report"
        known = {k for k, *_ in describe_keys()}
        for key in by or []:
            if key not in known:
                raise ConfigError(f"--by={key!r}: not a config key (see fedsim config)")
        metrics = metric or DEFAULT_METRICS
        page = write_report(
            dirs, folder, by=by, metrics=metrics, paired=paired or (), into=into
        )  # checks, reads, writes
    except ConfigError as e:
        fail(str(e), 2)
    typer.echo(str(page))
