"""The run configuration: frozen, typed, validated once at the edge.

A configuration is built from four layers, later ones winning:

1. the defaults in the dataclasses below,
2. the defaults of the workload's preset (:func:`preset_defaults`: the run shape a toy needs to
   show its paper's effect, e.g. its local epochs or its partition; :data:`PRESET_KEYS`),
3. a TOML file (``--config FILE.toml``) with one table per section,
4. ``key=value`` overrides (``--set channel.radius_m=250`` and the CLI's shortcut options).

Every key is ``section.name``. A wrong key or value raises :class:`ConfigError` whose message is
one line naming the key, the value and what is allowed. Keys that were renamed are still read under
their old names (:data:`RENAMED_KEYS`), with a one-line note (:func:`renamed_key_notes`). The flat
form (``to_flat``) is what Flower carries in its run config and messages; ``to_toml`` is what a
results folder keeps.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomli_w

from channels import REGISTRIES as CHANNEL_REGISTRIES
from fedsim.core import plugins
from fedsim.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "build_config",
    "check_preset_defaults",
    "config_from_flat",
    "load_toml",
    "parse_overrides",
]


# ----------------------------------------------------------------------------------------------
# field helpers: each field carries its check and a one-line description of what is allowed


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and low <= v <= high


def _ip_address(v: Any) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def is_ray_address(v: Any) -> bool:
    """The form of ``simulation.ray_address`` (and ``--ray-address``): '', auto, local or HOST:PORT."""
    if v in ("", "auto", "local"):
        return True
    host, sep, port = v.split("://", 1)[-1].rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda v: v in names


def _show(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _num(
    default: Any, low: float, high: float, doc: str, unit: str = "", *, integer: bool = False, open_low: bool = False
) -> Any:
    """A number in [low, high] (or (low, high] with ``open_low``); the range is part of the message.

    Every numeric key has a finite range, chosen from what the physics, the model and the machine
    allow (see docs/reliability.md): a value outside it could overflow a float
    (a power of 1e308 dBm), exhaust memory (a billion clients) or never finish.
    """

    def check(v: Any) -> bool:
        if integer and not isinstance(v, int):
            return False
        return math.isfinite(v) and (low < v if open_low else low <= v) and v <= high

    kind = "an integer" if integer else "a number"
    allowed = f"{kind} in {'(' if open_low else '['}{_show(low)}, {_show(high)}]" + (f" {unit}" if unit else "")
    return _f(default, check, allowed, doc)


MAX_CLIENTS = 100_000
"""Clients a run can hold: positions, speeds and partitions are built for every one of them."""
MAX_SEED = 2**63 - 1
"""TOML (config.toml) and the streams' entropy words hold signed 64-bit integers."""
CLIENT_TIMEOUT_MIN_S = 60
"""Shortest ``run.client_timeout_s``. The limit is wall-clock from the send, and a client's first reply
includes its start-up (imports and model build: about 8 s on a quiet 2-core machine, 18 s on a busy
one), so a shorter limit would fail healthy clients on a loaded machine."""
MAX_RANK = 4096
"""Above any adapted layer's width in the zoo; the model's own dimensions are checked when it is built."""


def _f(default: Any, check: Callable[[Any], bool] | None, allowed: str, doc: str = "") -> Any:
    return field(default=default, metadata={"check": check, "allowed": allowed, "doc": doc})


def _unit_interval(v: Any) -> bool:
    return math.isfinite(v) and 0 <= v <= 1


def _component_default(key: str) -> Any:
    """The default of configuration key ``[channel|compute].<key>``, as the ``channels`` components
    that read it declare it: defined once, there."""
    found = {
        f.default
        for registry in CHANNEL_REGISTRIES.values()
        for cls in registry.values()
        for f in dataclasses.fields(cls)
        if f.name == key
    }
    if len(found) != 1:
        raise RuntimeError(f"channels components declare {key} with defaults {sorted(found)}: one expected")
    return found.pop()


def _channel_model(kind: str, default: str, doc: str, section: str = "channel") -> Any:
    """A key naming an entry of a ``channels`` registry, built in (the allowed names listed) or
    installed (entry point ``"<kind>.<name>"`` of group ``fedsim.channels``, :mod:`fedsim.core.plugins`)."""
    names = CHANNEL_REGISTRIES[kind]

    def known(v: Any) -> bool:
        if not isinstance(v, str) or v in names:
            return v in names
        keys = {f.name for f in dataclasses.fields(SECTIONS[section])}  # SECTIONS: defined below
        return plugins.channel_component(kind, v, f"{section}.{kind}", keys)

    allowed = f"one of {', '.join(names)} or an installed component (fedsim.channels entry point {kind}.NAME)"
    return _f(default, known, allowed, doc)


# ----------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class RunSection:
    clients: int = _num(50, 1, MAX_CLIENTS, "number of clients (SuperNodes)", integer=True)
    rounds: int = _num(10, 1, 10**12, "federated rounds (a long run stops at once on Ctrl-C)", integer=True)
    clients_per_round: int | float = _f(
        10,
        lambda v: (isinstance(v, int) and 0 < v <= MAX_CLIENTS) or (isinstance(v, float) and 0 < v <= 1),
        f"an integer count in [1, {MAX_CLIENTS}] or a fraction in (0, 1]",
        "clients sampled each round",
    )
    seed: int = _num(0, 0, MAX_SEED, "seed of every random stream", integer=True)
    min_clients_per_round: int = _num(
        0,
        0,
        MAX_CLIENTS,
        "fewest surviving clients for a round to count (0: all sampled; 1 under tsfa.deadline_s)",
        integer=True,
    )
    client_timeout_s: float = _f(
        0.0,
        lambda v: v == 0 or (math.isfinite(v) and CLIENT_TIMEOUT_MIN_S <= v <= 1e6),
        f"0 (no limit) or a number in [{CLIENT_TIMEOUT_MIN_S}, 1e+06] s",
        "wall-clock wait for each message's replies, a client's start-up included in its first (0: no limit)",
    )
    method: str = _f("ideal", None, "a registered upload method (fedsim methods)", "upload method")
    scheduler: str = _f(
        "equal",
        None,
        "a registered scheduler (fedsim methods)",
        "equal: fixed rho, equal band; fixed: fixed rho, min-max band; tsfa: Lyapunov rho and band",
    )
    eval_every: int = _num(
        1, 1, 10**12, "evaluate the global adapter every k rounds (the final round always; others: null)", integer=True
    )
    aggregation: str = _f(
        "sync",
        _one_of("sync", "fedasync", "fedbuff"),
        "one of sync, fedasync, fedbuff",
        "sync: rounds; fedasync: apply every update on arrival; fedbuff: apply every asynchronous.buffer_size "
        "updates (asynchronous modes count run.rounds in server updates, on a simulated clock)",
    )


@dataclass(frozen=True)
class WorkloadSection:
    name: str = _f("text-classify", None, "a registered workload", "workload to fine-tune")
    preset: str = _f("tiny", None, "a preset of the workload", "size preset")
    partition: str = _f(
        "dirichlet",
        _one_of("iid", "dirichlet", "natural"),
        "one of iid, dirichlet, natural",
        "data split (natural: the workload's own per-client split)",
    )
    dirichlet_alpha: float = _num(1.0, 0, 1e6, "Dirichlet concentration over labels", open_low=True)
    samples_per_client: int = _f(
        48,
        _int_in(1, 100_000),
        "an integer in [1, 100000] (generated per client, held in memory)",
        "mean local samples",
    )
    test_samples: int = _f(
        256, _int_in(1, 1_000_000), "an integer in [1, 1000000] (evaluated every round)", "server-side test samples"
    )
    dataset: str = _f(
        "", None, "'' (generated data), a local file or folder, or a Hub name", "real data instead of generated"
    )
    text_column: str = _f("", None, "a column name ('' guesses)", "input text column of workload.dataset")
    label_column: str = _f("", None, "a column name ('' guesses)", "label or target column of workload.dataset")
    options: str = _f("", None, "key=value pairs, comma-separated", "overrides of the preset's parameters")


@dataclass(frozen=True)
class TrainSection:
    local_epochs: int = _num(1, 0, 1000, "local epochs per round (0: no training, communication only)", integer=True)
    batch_size: int = _num(16, 1, 100_000, "local batch size", integer=True)
    lr: float = _num(3e-3, 0, 10, "local AdamW learning rate", open_low=True)
    weight_decay: float = _num(0.0, 0, 10, "AdamW weight decay")


@dataclass(frozen=True)
class LoraSection:
    rank: int = _num(8, 1, MAX_RANK, "LoRA rank r (at most the adapted layers' smallest dimension)", integer=True)
    alpha: float = _num(16.0, 0, 1e6, "LoRA scaling alpha (scale alpha/r)", open_low=True)
    dropout: float = _f(0.0, lambda v: 0 <= v < 1, "a number in [0, 1)", "LoRA dropout")
    value_bits: int = _f(32, _one_of(16, 32), "16 or 32", "bits per uploaded value")
    quant_bits: int = _f(
        0,
        _int_in(0, 16),
        "an integer in [0, 16] (0: off, else bits per value)",
        "stochastic uniform quantisation of every uploaded value (b bits plus one scale per tensor)",
    )
    downlink_quant_bits: int = _f(
        0,
        _int_in(0, 16),
        "an integer in [0, 16] (0: dense, else bits per value)",
        "quantisation of the broadcast global adapter (clients train from what they decode)",
    )


@dataclass(frozen=True)
class ChannelSection:
    """The wireless link (``channels/``); ``fedsim channels`` lists the models and their keys."""

    drop: str = _channel_model("drop", "disc", "client placement (disc: uniform in the annulus)")
    radius_m: float = _num(_component_default("radius_m"), 0, 1e6, "cell radius", "m", open_low=True)
    min_distance_m: float = _num(_component_default("min_distance_m"), 0, 1e6, "min BS distance", "m")
    positions_csv: str = _f("", None, "a CSV file (client_id,x_m,y_m) or empty", "client positions (drop=csv)")
    mobility: str = _channel_model("mobility", "none", "client movement between rounds")
    mobility_step_m: float = _num(_component_default("mobility_step_m"), 0, 1e6, "distance moved per round", "m")
    pathloss: str = _channel_model("pathloss", "log-distance", "path-loss model")
    pathloss_intercept_db: float = _num(_component_default("pathloss_intercept_db"), -200, 500, "PL at 1 km", "dB")
    pathloss_slope_db: float = _num(
        _component_default("pathloss_slope_db"), 0, 200, "PL slope", "dB/decade", open_low=True
    )
    carrier_hz: float = _num(
        _component_default("carrier_hz"), 0, 1e12, "carrier (free-space, umi, uma)", "Hz", open_low=True
    )
    ut_height_m: float = _f(
        _component_default("ut_height_m"),
        lambda v: 1.5 <= v <= 22.5,
        "a number of metres in [1.5, 22.5]",
        "client antenna height (umi, uma)",
    )
    shadowing: str = _channel_model("shadowing", "none", "large-scale shadowing")
    shadowing_std_db: float = _num(_component_default("shadowing_std_db"), 0, 50, "log-normal shadowing std", "dB")
    shadowing_correlation: float = _f(
        _component_default("shadowing_correlation"),
        _unit_interval,
        "a number in [0, 1]",
        "shadowing correlation between rounds (0: i.i.d., 1: fixed)",
    )
    fading: str = _channel_model("fading", "rayleigh", "small-scale block fading")
    rician_k_linear: float = _num(
        _component_default("rician_k_linear"), 0, 1e6, "Rician K (LOS / scattered power)", "(linear)"
    )
    nakagami_m: float = _num(_component_default("nakagami_m"), 0.5, 1e6, "Nakagami shape m")
    fading_correlation: float = _f(
        0.0, _unit_interval, "a number in [0, 1]", "Gauss-Markov fading correlation between rounds (0: i.i.d.)"
    )
    trace_csv: str = _f("", None, "a channel trace CSV or empty", "replay gains from this trace instead of sampling")
    bandwidth_hz: float = _num(20e6, 0, 1e12, "total uplink band", "Hz", open_low=True)
    tx_power_dbm: float = _num(23.0, -100, 100, "client transmit power", "dBm")
    noise_psd_dbm_hz: float = _num(-174.0, -250, 0, "noise PSD N0", "dBm/Hz")
    noise_figure_db: float = _num(0.0, 0, 100, "receiver noise figure", "dB")
    downlink: str = _f("none", _one_of("none", "broadcast"), "one of none, broadcast", "downlink model")
    downlink_bandwidth_hz: float = _num(20e6, 0, 1e12, "downlink band (broadcast)", "Hz", open_low=True)
    bs_power_dbm: float = _num(43.0, -100, 100, "base-station transmit power (broadcast)", "dBm")
    outage_deadline_s: float = _num(0.0, 0, 1e9, "round deadline for outage flags (0: none)", "s")
    packet_errors: str = _f(
        "none",
        _one_of("none", "drop", "retransmit"),
        "one of none, drop, retransmit",
        "uplink packet errors q = 1 - exp(-m / SNR): an erased upload is lost (drop) or sent again (retransmit)",
    )
    packet_error_m: float = _num(0.023, 0, 1e6, "waterfall threshold m of q = 1 - exp(-m / SNR)", open_low=True)
    max_transmissions: int = _num(
        4, 1, 1000, "transmissions of one upload under packet_errors=retransmit (and tsfa.deadline_s)", integer=True
    )


@dataclass(frozen=True)
class ComputeSection:
    device_speed: str = _channel_model("device_speed", "uniform", "device-speed model", "compute")
    device_flops_min: float = _num(
        _component_default("device_flops_min"), 0, 1e21, "slowest device speed", "FLOP/s", open_low=True
    )
    device_flops_max: float = _num(
        _component_default("device_flops_max"), 0, 1e21, "fastest device speed", "FLOP/s", open_low=True
    )
    device_flops: float = _num(
        _component_default("device_flops"), 0, 1e21, "median (lognormal) or speed (fixed)", "FLOP/s", open_low=True
    )
    device_flops_log_std: float = _num(
        _component_default("device_flops_log_std"), 0, 10, "lognormal spread", "(std of ln FLOP/s)"
    )
    device_speed_csv: str = _f("", None, "a CSV file (client_id,device_flops) or empty", "speeds (device_speed=csv)")
    device_mix: str = _f(
        _component_default("device_mix"),
        None,
        "CLASS=WEIGHT pairs, comma-separated, of classes of the catalogue",
        "device classes drawn per client (device_speed=classes)",
    )
    device_classes_csv: str = _f(
        "", None, "a CSV file (client_id,device_class) or empty", "each client's class instead of the mix (classes)"
    )
    device_catalogue: str = _f(
        "", None, "a TOML catalogue of device classes ('' : the shipped one)", "device classes (classes)"
    )
    flops_per_cycle: float = _num(1000.0, 0, 1e9, "clock = FLOP/s / this", "FLOP/cycle", open_low=True)
    kappa: float = _num(1e-28, 0, 1, "switched capacitance (compute energy)", "J s^2/cycle^3")


@dataclass(frozen=True)
class SimulationSection:
    cpus_per_client: float = _num(
        1.0, 0, 4096, "Ray CPUs per ClientApp actor (a local Ray has this machine's CPUs)", open_low=True
    )
    ray_address: str = _f(
        "", is_ray_address, "'' (start one), auto, or HOST:PORT of a Ray cluster's head", "existing Ray cluster"
    )
    max_concurrent_clients: int = _num(
        0, 0, 4096, "ClientApps run at once (0: as many as the CPUs allow)", integer=True
    )
    ray_node_ip: str = _f(
        "127.0.0.1",
        _ip_address,
        "an IPv4 or IPv6 address",
        "address of a locally started Ray (127.0.0.1: every Ray server listens on loopback only)",
    )
    gpus_per_client: float = _num(0.0, 0, 64, "Ray GPUs per ClientApp actor (0: CPU; a fraction shares a GPU)")
    bf16: bool = _f(False, None, "true or false", "bfloat16 autocast in training and evaluation")
    overlap_eval: bool = _f(
        True,
        None,
        "true or false",
        "evaluate the global adapter while the next round's clients train (records unchanged)",
    )


@dataclass(frozen=True)
class MethodSection:
    """The upload method's parameters; each method declares the ones it reads
    (:attr:`fedsim.core.methods.UploadMethod.config_keys`, listed by ``fedsim methods``)."""

    rho: float = _f(
        0.5, lambda v: 0 <= v < 1, "a number in [0, 1)", "fraction of LoRA ranks dropped (methods that sparsify)"
    )
    lambda_orth: float = _num(0.1, 0, 1e6, "orthogonality regulariser weight (regularised methods: soft, soft-ef)")


@dataclass(frozen=True)
class FaultsSection:
    client_crash_prob: float = _f(
        0.0, lambda v: 0 <= v <= 1, "a probability in [0, 1]", "chance a ClientApp raises during a round"
    )
    client_straggle_prob: float = _f(
        0.0,
        lambda v: 0 <= v <= 1,
        "a probability in [0, 1]",
        "chance a client's local compute takes straggle_delay_s longer (simulated time)",
    )
    straggle_delay_s: float = _num(30.0, 0, 1e6, "a straggler's extra compute time (simulated)", "s")
    client_crash_mode: str = _f(
        "exception",
        _one_of("exception", "exit"),
        "one of exception, exit",
        "how an injected crash happens: an exception, or the client process dies",
    )


def _rho_grid(v: tuple) -> bool:
    return 0 < len(v) <= 64 and all(0 <= x < 1 for x in v)


@dataclass(frozen=True)
class TsfaSection:
    latency_budget_s: float = _num(0.3, 0, 1e9, "long-term average latency T_avg", "s", open_low=True)
    v: float = _num(0.05, 0, 1e12, "Lyapunov trade-off V (penalty weight)", "s^2")
    rho_grid: tuple[float, ...] = _f(
        (0.0, 0.25, 0.5, 0.75), _rho_grid, "a list of 1 to 64 numbers in [0, 1)", "rho values TSFA chooses from"
    )
    penalty: str = _f(
        "dropped_error", _one_of("dropped_error", "rho"), "one of dropped_error, rho", "Pen(rho) of the objective"
    )
    deadline_s: float = _num(0.0, 0, 1e9, "per-round hard deadline (0: none)", "s")
    candidate_ranks: tuple[int, ...] = _f(
        (2, 4, 8, 16, 32),
        lambda v: 0 < len(v) <= 64 and all(0 < x <= MAX_RANK for x in v),
        f"a list of 1 to 64 integers in [1, {MAX_RANK}]",
        "LoRA ranks the offline stage chooses from",
    )
    nominal_rho: float = _f(0.5, lambda v: 0 <= v < 1, "a number in [0, 1)", "rho of the offline rank plan")
    plan_samples: int = _f(
        200,
        _int_in(1, 10_000),
        "an integer in [1, 10000] (each draw is one allocation per candidate rank)",
        "Monte-Carlo channel draws per rank",
    )


def _backends(v: str) -> bool:
    return all(b in ("tensorboard", "mlflow") for b in filter(None, (x.strip() for x in v.split(","))))


@dataclass(frozen=True)
class TrackingSection:
    """Experiment tracking (``fedsim.app.tracking``); off by default, needs ``pip install 'fedsim[tracking]'``."""

    backends: str = _f(
        "",
        _backends,
        "'' or a comma-separated list of tensorboard, mlflow",
        "write TensorBoard events (<out>/tensorboard) and/or an MLflow run",
    )
    mlflow_uri: str = _f("", None, "an MLflow tracking URI ('' : file store ./mlruns)", "where MLflow runs go")
    experiment: str = _f("", None, "an MLflow experiment name ('' : the workload's name)", "MLflow experiment")


@dataclass(frozen=True)
class AsynchronousSection:
    """Asynchronous aggregation (``run.aggregation`` fedasync or fedbuff; :mod:`fedsim.core.asynchronous`)."""

    concurrency: int = _num(
        0, 0, MAX_CLIENTS, "clients training or uploading at any time (0: run.clients_per_round's count)", integer=True
    )
    buffer_size: int = _num(5, 1, MAX_CLIENTS, "fedbuff: arrived updates per server update (K)", integer=True)
    staleness_exponent: float = _num(0.5, 0, 10, "an update s server updates old weighs (1 + s)^-a (0: no discount)")
    server_lr: float = _num(
        1.0, 0, 10, "server step eta: the global adapter moves eta x the weighted mean update", open_low=True
    )
    idle_s: float = _num(0.0, 0, 1e6, "simulated time a client rests after its upload before it can be drawn", "s")
    fading_block_s: float = _num(
        1.0, 0, 1e6, "simulated time of one fading block (and one mobility step)", "s", open_low=True
    )


def _rank_levels(v: tuple) -> bool:
    return 0 < len(v) <= 16 and all(0 < x <= MAX_RANK for x in v) and list(v) == sorted(set(v))


@dataclass(frozen=True)
class HeteroSection:
    """Heterogeneous LoRA ranks (``fedsim.core.hetero``): each client trains and uploads at its own rank."""

    rank_rule: str = _f(
        "none",
        _one_of("none", "compute", "channel"),
        "one of none, compute, channel",
        "what a client's LoRA rank follows: device speed, the round's channel gain, or nothing (lora.rank)",
    )
    rank_levels: tuple[int, ...] = _f(
        (2, 4, 8),
        _rank_levels,
        f"a strictly increasing list of 1 to 16 integers in [1, {MAX_RANK}]",
        "client ranks from the weakest clients to the strongest (equal-size groups)",
    )
    aggregation: str = _f(
        "zero-pad",
        _one_of("zero-pad", "flexlora"),
        "one of zero-pad, flexlora",
        "mixed ranks: zero-padding (HetLoRA) or SVD of the averaged product (FlexLoRA)",
    )


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "workload": WorkloadSection,
    "train": TrainSection,
    "lora": LoraSection,
    "channel": ChannelSection,
    "compute": ComputeSection,
    "simulation": SimulationSection,
    "method": MethodSection,
    "faults": FaultsSection,
    "tsfa": TsfaSection,
    "tracking": TrackingSection,
    "hetero": HeteroSection,
    "asynchronous": AsynchronousSection,
}


@dataclass(frozen=True)
class Config:
    """The whole run configuration. Build it with :func:`build_config`, never field by field."""

    run: RunSection = field(default_factory=RunSection)
    workload: WorkloadSection = field(default_factory=WorkloadSection)
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)
    channel: ChannelSection = field(default_factory=ChannelSection)
    compute: ComputeSection = field(default_factory=ComputeSection)
    simulation: SimulationSection = field(default_factory=SimulationSection)
    method: MethodSection = field(default_factory=MethodSection)
    faults: FaultsSection = field(default_factory=FaultsSection)
    tsfa: TsfaSection = field(default_factory=TsfaSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    hetero: HeteroSection = field(default_factory=HeteroSection)
    asynchronous: AsynchronousSection = field(default_factory=AsynchronousSection)

    @property
    def concurrency(self) -> int:
        """Clients in flight at once in an asynchronous mode: ``asynchronous.concurrency``, or
        ``run.clients_per_round``'s count when it is 0."""
        return self.asynchronous.concurrency or self.num_sampled

    @property
    def num_sampled(self) -> int:
        """Clients sampled per round, resolved from a count or a fraction."""
        cpr = self.run.clients_per_round
        if isinstance(cpr, float):
            return max(1, round(cpr * self.run.clients))
        return cpr

    def to_flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key, in declaration order."""
        return {
            f"{name}.{f.name}": getattr(getattr(self, name), f.name)
            for name, cls in SECTIONS.items()
            for f in dataclasses.fields(cls)
        }

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def describe_keys() -> list[tuple[str, Any, str, str]]:
    """(key, default, allowed, description) for every configuration key."""
    return [
        (f"{name}.{f.name}", f.default, f.metadata["allowed"], f.metadata["doc"])
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    ]


# ----------------------------------------------------------------------------------------------
# renamed keys

RENAMED_KEYS: dict[str, str] = {
    "soft.rho": "method.rho",
    "soft.lambda_orth": "method.lambda_orth",
    "tsfa.scheduler": "run.scheduler",
}
"""Old name -> new name of every renamed key. The old names are read wherever a key is (files,
``--set``, sweep axes, results folders written before the rename) and mean the new key; giving
both names of one key is an error."""

_renamed_seen: set[str] = set()


def canonical_keys(flat: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``flat`` with every renamed key under its new name (:data:`RENAMED_KEYS`)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        new = RENAMED_KEYS.get(key)
        if new is None:
            out[key] = value
            continue
        if new in flat:
            raise ConfigError(f"{key}: {where} also gives {new}, its new name; keep only {new}")
        _renamed_seen.add(key)
        out[new] = value
    return out


def renamed_key_notes() -> list[str]:
    """One line per old key name read since the last call (and forget them)."""
    notes = [f"note: {old} is now {RENAMED_KEYS[old]} (the old name still works)" for old in sorted(_renamed_seen)]
    _renamed_seen.clear()
    return notes


# ----------------------------------------------------------------------------------------------
# parsing and validation


MAX_TOML_DEPTH = 16
"""Deepest nesting of tables, dotted keys and arrays in a TOML file or ``--set`` value. A sweep file
needs 5 (``[sweep.grid.tsfa]`` ``rho_grid = [[0.0, 0.5]]``); deeper input would only exhaust the
parser's or a later repr's recursion."""


def nesting_depth(value: Any) -> int:
    """How deep tables (dicts) and arrays (lists) nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads_toml(text: str, where: str) -> dict[str, Any]:
    """fedsim's one TOML parser: ``text`` as a table nested at most :data:`MAX_TOML_DEPTH` deep.

    Bad syntax raises ``tomllib.TOMLDecodeError``; deeper nesting is a one-line ConfigError naming
    ``where`` (tomllib recurses once per array level, so a 10^5-deep array exhausts Python's stack).
    """
    try:
        data = tomllib.loads(text)
    except RecursionError:
        data = None
    if data is None or nesting_depth(data) > MAX_TOML_DEPTH:
        raise ConfigError(f"{where}: nested more than {MAX_TOML_DEPTH} levels deep (tables, dotted keys or arrays)")
    return data


def parse_value(text: str, where: str = "value") -> Any:
    """A CLI value as TOML would read it (``3``, ``0.5``, ``true``, ``[0, 0.5]``), else a string; nested
    deeper than :data:`MAX_TOML_DEPTH`, a ConfigError naming ``where``."""
    try:
        return loads_toml(f"v = {text}", where)["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check the value's type against the field's annotation; an int widens to a float field.

    ``tuple[float, ...]`` / ``tuple[int, ...]`` fields take a list (TOML array) of such numbers.
    """
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r}: expected a list of {item.__name__}, got {type(value).__name__}")
        return tuple(_coerce(key, v, item) for v in value)
    allowed = get_args(hint) or (hint,)
    accepted = allowed + ((int,) if float in allowed else ())
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, accepted):
        kind = " or ".join(t.__name__ for t in allowed)
        raise ConfigError(f"{key}={value!r}: expected {kind}, got {type(value).__name__}")
    if allowed == (float,):
        return float(value)
    return value


def _check_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    checked = {}
    for key, value in values.items():
        if key not in by_name:
            raise ConfigError(
                f"unknown config key {f'{name}.{key}'!r}: allowed keys in [{name}] are {', '.join(by_name)}"
            )
        f = by_name[key]
        value = _coerce(f"{name}.{key}", value, hints[key])
        check = f.metadata["check"]
        try:
            ok = check is None or bool(check(value))
        except ConfigError:  # its own line (a broken plug-in: fedsim.core.plugins)
            raise
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{name}.{key}={value!r}: must be {f.metadata['allowed']}")
        checked[key] = value
    return cls(**checked)


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(
                f"unknown config key {key!r}: keys are section.name with section one of {', '.join(SECTIONS)}"
            )
        nested.setdefault(section, {})[name] = value
    return nested


CONFIG_MAX_BYTES = 4 << 20  # a configuration file is a few kB; this bounds what a wrong path can cost


MAX_JSON_DEPTH = 16
"""Deepest JSON fedsim reads (a results folder's files, a checkpoint's state): its own are at most 6."""


def parse_json(text: str, where: str) -> Any:
    """JSON text nested at most :data:`MAX_JSON_DEPTH` deep, or a one-line ConfigError naming ``where``."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else f"nested more than {MAX_JSON_DEPTH} levels deep"
        raise ConfigError(f"{where}: not valid JSON ({why})") from None
    if nesting_depth(value) > MAX_JSON_DEPTH:
        raise ConfigError(f"{where}: not valid JSON (nested more than {MAX_JSON_DEPTH} levels deep)")
    return value


def read_text_file(path: str | Path, what: str, max_bytes: int = CONFIG_MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``, or a one-line ConfigError.

    A FIFO, a device (``/dev/zero``) or a folder is refused before anything is read, so a wrong
    path can neither block nor fill memory.
    """
    p = Path(path)
    try:
        if not p.exists():
            raise ConfigError(f"{what}={str(p)!r}: file not found")
        if not p.is_file():
            raise ConfigError(f"{what}={str(p)!r}: not a regular file")
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"{what}={str(p)[:200]!r}: cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what}={str(p)!r}: larger than {max_bytes} bytes, too large for a fedsim file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what}={str(p)!r}: not UTF-8 text") from None


def load_toml(path: str | Path, what: str = "--config") -> dict[str, Any]:
    """Read a TOML config file into flat ``section.key`` form; a file that does not parse is an error."""
    return toml_to_flat(read_text_file(path, what), f"{what}={str(path)!r}")


def toml_to_flat(text: str, where: str) -> dict[str, Any]:
    """TOML text with one table per section -> ``{"section.key": value}``; ``where`` names it in errors."""
    try:
        data = loads_toml(text, where)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML ({e})") from None
    flat: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"config key '{section}' in {where}: top-level entries must be tables, one of {', '.join(SECTIONS)}"
            )
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return canonical_keys(flat, where)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}``; an item without ``=`` is an error."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, for example run.rounds=5")
        shown = text if len(text) <= 40 else text[:40] + "..."
        out[key] = parse_value(text, f"--set {key}={shown}")
    return canonical_keys(out, "--set")


PRESET_KEYS = frozenset(
    [f"train.{f.name}" for f in dataclasses.fields(TrainSection)]
    + ["workload.partition", "workload.dirichlet_alpha", "workload.samples_per_client", "workload.test_samples"]
    + ["run.rounds", "run.clients_per_round", "run.eval_every"]
)
"""The keys a workload preset may give defaults for: the training and run shape its effect needs."""


def check_preset_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.local_epochs": 40, "workload.partition": "natural"}`` checked against those keys' own
    types and ranges (values coerced); an unknown key, a key outside :data:`PRESET_KEYS` or a wrong
    value raises a one-line ConfigError."""
    out: dict[str, Any] = {}
    for name, given in _nest(values).items():
        checked = _check_section(name, SECTIONS[name], given)
        out.update({f"{name}.{key}": getattr(checked, key) for key in given})
    if outside := sorted(out.keys() - PRESET_KEYS):
        others = ", ".join(sorted(k for k in PRESET_KEYS if not k.startswith("train.")))
        raise ConfigError(f"{outside[0]}: a preset gives defaults only for train.* and {others}")
    return out


def preset_defaults(name: str, preset: str) -> dict[str, Any]:
    """The flat defaults that workload ``name``'s ``preset`` declares, checked by
    :func:`check_preset_defaults` (``{}`` for none, or for a name or preset that is not registered:
    :func:`fedsim.core.checks.check_config` refuses those). A wrong one is a one-line ConfigError naming
    the workload and the preset.

    A built-in workload's declaration is read without importing torch (:func:`workloads.declaration`).
    """
    from workloads import declaration

    try:
        declared = declaration(name).defaults_of(preset)
    except ConfigError:  # not a registered workload
        return {}
    try:
        return check_preset_defaults(declared)
    except ConfigError as e:
        raise ConfigError(f"workload {name!r}, preset {preset!r}, declares a default {e}") from None


def preset_default_rows(name: str) -> list[tuple[str, str, str, str]]:
    """(key, defaults by preset, allowed values, meaning) of each configuration key that a preset of
    workload ``name`` sets (a preset that does not: the built-in default), for ``fedsim workloads
    --options`` after the workload's own options."""
    from workloads import declaration
    from workloads.options import by_preset_text

    presets = declaration(name).preset_overrides
    defaults = {preset: preset_defaults(name, preset) for preset in presets}
    keys = {key: (default, allowed, doc) for key, default, allowed, doc in describe_keys()}
    rows = []
    for key in dict.fromkeys(k for values in defaults.values() for k in values):
        built_in, allowed, doc = keys[key]
        by_preset = {preset: defaults[preset].get(key, built_in) for preset in presets}
        rows.append((key, by_preset_text(by_preset), allowed, f"{doc} (this workload's default; --set overrides it)"))
    return rows


def build_config(*layers: Mapping[str, Any]) -> Config:
    """Merge flat layers over the defaults, validate every key, and return a frozen Config.

    Under the layers lie the defaults of the workload preset they name (:func:`preset_defaults`),
    so any layer that gives such a key overrides it. Each key is
    checked on its own (type, range); the checks that involve several keys, the registries or
    files are :func:`fedsim.core.checks.check_config`, one layer up.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        layer = canonical_keys(layer, "the configuration")
        for name, values in _nest(layer).items():  # a bad value is reported even if a later layer overrides it
            _check_section(name, SECTIONS[name], values)
        merged.update(layer)
    workload = WorkloadSection()
    preset = {}
    if not PRESET_KEYS <= merged.keys():  # a whole configuration (carried, saved) needs no look-up
        preset = preset_defaults(
            merged.get("workload.name", workload.name), merged.get("workload.preset", workload.preset)
        )
    nested = _nest({**preset, **merged})
    sections = {name: _check_section(name, SECTIONS[name], nested.get(name, {})) for name in SECTIONS}
    return Config(**sections)


def config_from_flat(flat: Mapping[str, Any]) -> Config:
    """Rebuild a Config from its flat form (as carried by Flower run configs and messages)."""
    return build_config(flat)
