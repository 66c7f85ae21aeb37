"""The round and client records of ``rounds.jsonl``: typed, frozen, built in one place.

A :class:`RoundRecord` is what the round engine (:mod:`fedsim.core.engine`) produces once per round;
its :meth:`~RoundRecord.to_dict` is the JSON object written as one line of ``rounds.jsonl``
(the schema table of docs/results.md lists the same fields, a test keeps the two in step). Values that
are unknown are ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

CLIENT_DIAGNOSTICS = ("kept_ranks", "dropped_rank_error", "mean_abs_cos", "sparsify_time_s")
"""Per-client upload diagnostics; the round record carries their mean over the round's clients."""


@dataclass(frozen=True)
class ClientRecord:
    """One client's part in a round: its channel, its upload and its local training.

    Every sampled client has a record. One whose upload did not count has ``dropped`` and a
    ``drop_reason``, 0 Hz and no round total counts it: dropped by the deadline, it is recorded
    with what it would have sent (``upload_time_s`` and ``upload_energy_j`` null); crashed or
    timed out, with its channel and null for what only its reply could tell; erased on the uplink
    (``channel.packet_errors``), with its band and every transmission it made. ``compute_time_s``
    includes ``straggle_s``, a straggler's delay in simulated time (``faults.client_straggle_prob``).
    ``packet_error_prob`` is q of one transmission and ``transmissions`` the number made (1 and 0.0
    without packet errors). Units are in the names: distances in m, gains in dB,
    bandwidth in Hz, rates in bit/s, times in s, energies in J. ``los`` is None when the path-loss model has no LOS state;
    ``pathloss_db``, ``shadowing_db`` and ``fading_gain_db`` are None when a replayed trace does
    not carry them.
    """

    client_id: int
    dropped: bool
    drop_reason: str | None
    distance_m: float
    gain_db: float
    bandwidth_hz: float
    rate_bps: float
    payload_bits: int | None
    num_samples: int | None
    compute_time_s: float | None
    straggle_s: float
    upload_time_s: float | None
    pathloss_db: float | None
    shadowing_db: float | None
    fading_gain_db: float | None
    los: bool | None
    downlink_time_s: float | None
    upload_energy_j: float | None
    compute_energy_j: float | None
    outage: bool | None
    packet_error_prob: float | None
    transmissions: int | None
    kept_ranks: float | None
    dropped_rank_error: float | None
    mean_abs_cos: float | None
    sparsify_time_s: float | None
    train_loss: float | None
    train_wall_s: float | None

    @classmethod
    def lost(cls, client_id: int, reason: str, channel: dict[str, Any], straggle_s: float) -> ClientRecord:
        """A client whose reply never came (it crashed or timed out): its channel, and null for
        everything only its reply could tell."""
        unknown = {f.name: None for f in dataclasses.fields(cls)}
        return cls(
            **{
                **unknown,
                **channel,
                "client_id": client_id,
                "dropped": True,
                "drop_reason": reason,
                "bandwidth_hz": 0.0,
                "rate_bps": 0.0,
                "straggle_s": straggle_s,
            }
        )


@dataclass(frozen=True)
class Failure:
    """A sampled client whose upload did not count: it crashed, timed out or missed the deadline."""

    client_id: int
    reason: str


@dataclass(frozen=True)
class SchedulerOutcome:
    """The scheduler's part of a round: rho_t, the queue Q_t it decided with, and the solver's outcome."""

    rho: float
    queue_s: float
    objective: float | None
    solver_status: str
    solve_time_s: float
    fallback: bool
    deadline_dropped: int
    latency_by_rho: list = field(default_factory=list)


@dataclass(frozen=True)
class AppliedUpdate:
    """One client's update as an asynchronous server update applied it, on the simulated clock.

    The client was sent version ``base_version`` of the global adapter at ``dispatched_s`` (the
    run's ``dispatch``-th dispatch: the request's round), received it after its downlink, trained
    until ``upload_start_s`` and uploaded, sharing the band, until ``arrived_s``. ``staleness`` is
    the server updates applied since ``base_version``; ``weight`` its discount (1 + staleness)^-a.
    Times are simulated seconds from the start of the run.
    """

    client_id: int
    dispatch: int
    base_version: int
    staleness: int
    weight: float
    dispatched_s: float
    upload_start_s: float
    arrived_s: float


@dataclass(frozen=True)
class AggregationEvent:
    """An asynchronous record's server update: the mode, the global version it made (the record's
    ``round``), its simulated time, the updates it applied in arrival order, the clients in flight
    after it, and the step it took (``server_lr`` times the weighted share of the updates)."""

    mode: str
    version: int
    time_s: float
    updates: list[AppliedUpdate]
    in_flight: int
    step: float


@dataclass(frozen=True)
class RoundRecord:
    """One line of ``rounds.jsonl``: everything that happened in round ``round``.

    ``status`` is ``ok``; ``failed`` when fewer than ``run.min_clients_per_round`` clients
    survived (the adapter is then unchanged); ``diverged`` when the aggregated adapter became
    non-finite (the run stops there). ``downlink_bits`` is the round's broadcast of the global
    adapter (sent every round, whatever happens after), ``downlink_s`` its time to the round's
    sampled clients at the weakest one's rate (0 when ``channel.downlink`` is ``none``).
    """

    round: int
    status: str
    clients: list[ClientRecord]
    failures: list[Failure]
    round_latency_s: float
    uplink_bits_total: int
    downlink_bits: int
    downlink_s: float
    metrics: dict[str, Any] | None
    """The workload's evaluation of the global adapter; None in rounds ``run.eval_every`` skips."""
    kept_ranks: float
    dropped_rank_error: float
    mean_abs_cos: float
    sparsify_time_s: float
    covariance_norm: float
    scheduler: SchedulerOutcome
    wall_s: float
    aggregation: AggregationEvent | None = None
    """The server update of an asynchronous run (``run.aggregation`` fedasync or fedbuff); absent
    from the JSON of a synchronous round."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``rounds.jsonl`` (the scheduler's fields inline, in schema order)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "aggregation":
                if value is not None:
                    out[f.name] = dataclasses.asdict(value)
            elif f.name == "scheduler":
                out.update(dataclasses.asdict(value))
            elif f.name in ("clients", "failures"):
                out[f.name] = [dataclasses.asdict(v) for v in value]
            else:
                out[f.name] = value
        return out


def round_record_keys() -> list[str]:
    """The top-level keys of a ``rounds.jsonl`` record, in order."""
    keys = [f.name for f in dataclasses.fields(RoundRecord) if f.name not in ("scheduler", "wall_s", "aggregation")]
    return [*keys, *(f.name for f in dataclasses.fields(SchedulerOutcome)), "wall_s", "aggregation"]


def client_record_keys() -> list[str]:
    """The keys of one per-client record, in order."""
    return [f.name for f in dataclasses.fields(ClientRecord)]


def json_problem(value: Any, cls: type = RoundRecord, where: str = "") -> str | None:
    """Why ``value`` is not the JSON form of a ``cls`` record, or None when it is.

    The fields and their types are those of the dataclasses above (:func:`typing.get_type_hints`),
    in the form :meth:`RoundRecord.to_dict` writes: a record-typed field inline (the scheduler's
    outcome), a list of records as a list of objects. Every field must be present (but one that
    defaults to None, ``aggregation``, may be absent) and no other; a ``float`` may be ``null``, as :func:`fedsim.core.results.to_json` writes a non-finite number.

    Parameters
    ----------
    value : parsed JSON, e.g. one line of ``rounds.jsonl``.
    cls : the record type (:class:`RoundRecord`, :class:`ClientRecord`, :class:`Failure`).
    where : how the returned phrase names ``value`` (empty: the phrase starts with the field).

    Returns
    -------
    None, or a short phrase naming the first field that is missing, unknown or of the wrong type,
    e.g. ``"clients[2].gain_db is 'x', not float"``.
    """
    if not isinstance(value, dict):
        return f"{where or 'the record'} is {_show(value)}, not an object"
    fields = _json_fields(cls)
    within = f"{where} " if where else ""
    for name in [*fields, *value]:
        if name not in fields:
            return f"{within}has an unknown field {_show(name)}"
        if name not in value:
            if name in _omittable(cls):
                continue
            return f"{within}lacks the field {name!r}"
        problem = _type_problem(value[name], fields[name], f"{where}.{name}" if where else name)
        if problem is not None:
            return problem
    return None


def _omittable(cls: type) -> set[str]:
    """The fields of ``cls`` whose JSON may leave them out: those that default to None."""
    return {f.name for f in dataclasses.fields(cls) if f.default is None} if dataclasses.is_dataclass(cls) else set()


def _json_fields(cls: type) -> dict[str, Any]:
    """Field name -> type in a record's JSON object (a record-typed field inline, as ``to_dict`` writes it)."""
    out: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        out.update(_json_fields(hint) if dataclasses.is_dataclass(hint) else {name: hint})
    return out


_JSON_TYPES = {
    Any: lambda v: True,
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)),
    str: lambda v: isinstance(v, str),
    dict: lambda v: isinstance(v, dict),
}
"""What a parsed JSON value of each field type may be (``float``: also null, a non-finite number)."""


def _type_problem(value: Any, hint: Any, where: str) -> str | None:
    """None when parsed JSON ``value`` has the type ``hint``, else a phrase naming ``where`` and what is wrong."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, h, where) for h in args]
        return None if None in problems else problems[0]
    if dataclasses.is_dataclass(hint):
        return json_problem(value, hint, where)
    if (origin or hint) is list:
        if not isinstance(value, list):
            return f"{where} is {_show(value)}, not a list"
        problems = (_type_problem(item, args[0], f"{where}[{i}]") for i, item in enumerate(value) if args)
        return next(filter(None, problems), None)
    return None if _JSON_TYPES[origin or hint](value) else f"{where} is {_show(value)}, not {hint.__name__}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
