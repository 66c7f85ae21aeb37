"""The whole run: rounds (or asynchronous server updates) to a results folder, with no Flower.

:func:`run` drives an engine through ``run.rounds`` steps: :class:`fedsim.core.engine.RoundEngine`
for synchronous rounds, :class:`fedsim.core.asynchronous.AsyncEngine` for ``run.aggregation``
fedasync and fedbuff. After every step its record is appended to ``rounds.jsonl`` and a checkpoint
is committed; the summary is written last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core import client_state
from fedsim.core.asynchronous import AsyncEngine
from fedsim.core.checkpoint import Checkpoint, client_state_round, save_checkpoint, sha256_text
from fedsim.core.config import Config
from fedsim.core.engine import Host, PendingRound, Reporter, RoundEngine, RunFailed, Send
from fedsim.core.rank_plan import write_plan
from fedsim.core.results import ResultsWriter
from fedsim.core.wireless import WirelessModel
from fedsim.errors import ConfigError
from fedsim.tsfa import RankPlan

# ---- the whole run ------------------------------------------------------------------------------

Connect = Callable[[], tuple[Send, dict[int, dict[str, float]]]]
"""``connect() -> (send, profiles)``: reach every client (e.g. Flower's discovery) and return the
transport and each client's channel profile (:class:`~fedsim.core.wireless.WirelessModel`'s ``profiles``)."""


def run(
    cfg: Config,
    host: Host,
    connect: Connect,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    resume: Checkpoint | None = None,
    plan: RankPlan | None = None,
) -> dict[str, Any]:
    """Run the rounds of ``cfg`` (after ``resume``'s round, if given), writing the results folder.

    After every round its record is appended to rounds.jsonl and a checkpoint is committed (not
    after a diverged round: a resume continues from the last finite adapter). Returns the
    summary; raises RunFailed when the run cannot go on (connecting failed, results cannot be
    written), after writing a summary that says why.
    """
    report = reporter or (lambda event, data: None)
    t_start = time.perf_counter()
    out = Path(out_dir)
    primary = host.primary_metric(cfg)
    writer = ResultsWriter(out, cfg, records=resume.records if resume else None)
    first = resume.round + 1 if resume else 1
    report("start", {"rounds": cfg.run.rounds, "out_dir": str(out), "primary_metric": primary, "first_round": first})
    diverged = 0  # the round whose global adapter became non-finite
    try:
        send, profiles = connect()
        state_dir = out / client_state.FOLDER
        if resume is not None:  # versions of the interrupted round (fedsim.core.client_state)
            client_state.discard_after(state_dir, client_state_round(resume))
        engine_class = RoundEngine if cfg.run.aggregation == "sync" else AsyncEngine
        engine = engine_class(
            cfg, host, WirelessModel(cfg, profiles), plan=plan, resume=resume, client_state_dir=str(state_dir.resolve())
        )
        if engine.plan is not None:
            write_plan(engine.plan, out / "rank_plan.csv")
        config_sha = sha256_text(writer.write_config(engine.cfg))  # what ran: the plan's rank

        def commit(pending: PendingRound, state: dict[str, np.ndarray], scheduler: dict) -> None:
            record = pending.result().to_dict()
            writer.append(record)
            report("round", record)
            if record["status"] != "diverged":
                save_checkpoint(out, Checkpoint(record["round"], state, writer.records, scheduler, config_sha))

        committed = None  # the previous round's commit: evaluated and written while this round trains
        stop_at_once = False
        try:
            for round_ in range(first, cfg.run.rounds + 1):
                pending = engine.start_round(round_, send)
                if committed is not None:
                    committed.result()  # raises what writing the previous round raised
                committed = engine.later(commit, pending, *engine.snapshot())
                if pending.record.status == "diverged":
                    diverged = round_
                    break
        except KeyboardInterrupt:
            stop_at_once = True  # Ctrl-C, SIGTERM: the last checkpoint written is where a resume starts
            raise
        finally:
            engine.close(wait=not stop_at_once)  # else the last round is evaluated and written first
        if committed is not None:
            committed.result()
    except Exception as e:
        if isinstance(e, OSError):
            error = f"cannot write results in {out}: {e.strerror or e}"
        else:
            error = str(e) if isinstance(e, RunFailed | ConfigError) else f"{type(e).__name__}: {e}"
        summary = writer.finish(
            status="failed", error=error, primary_metric=primary, wall_s=time.perf_counter() - t_start
        )
        report("end", summary)
        if isinstance(e, RunFailed):
            raise
        raise RunFailed(error) from e
    failed = [r["round"] for r in writer.records if r["status"] == "failed"]
    summary = writer.finish(
        status="diverged" if diverged else "failed" if failed else "ok",
        error=run_error(engine.cfg, writer.records, diverged, out),
        primary_metric=primary,
        wall_s=time.perf_counter() - t_start,
        extra={
            "lora_rank": engine.cfg.lora.rank,
            "scheduler": cfg.run.scheduler,
            "latency_budget_s": cfg.tsfa.latency_budget_s,
        },
    )
    report("end", summary)
    return summary


def run_error(cfg: Config, records: list[dict[str, Any]], diverged: int, out: Path) -> str | None:
    """The summary's one-line error: divergence, or the first failed round and why (None: no error)."""
    if diverged:
        return (
            f"training diverged in round {diverged}: the global adapter has non-finite values "
            f"(null in rounds.jsonl); try a train.lr below {cfg.train.lr:g}"
            + (f", e.g. fedsim run --resume {out} --force --set train.lr=..." if diverged > 1 else "")
        )
    failed = [r["round"] for r in records if r["status"] == "failed"]
    if not failed:
        return None
    first = next(r for r in records if r["status"] == "failed")
    why = first["failures"][0] if first["failures"] else {"client_id": "-", "reason": "no clients"}
    returned = sum(not c["dropped"] for c in first["clients"])
    return (
        f"round {first['round']}: client {why['client_id']} failed: {why['reason']} "
        f"({returned} of {len(first['clients'])} clients returned, "
        f"run.min_clients_per_round={cfg.run.min_clients_per_round}; failed rounds: {', '.join(map(str, failed))})"
    )
