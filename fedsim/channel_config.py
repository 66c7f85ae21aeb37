"""From the ``[channel]`` and ``[compute]`` configuration to channel components, and back.

- :func:`build_link` / :func:`build_device_speed`: the components a run uses. A component's
  dataclass fields are named after the keys that set them, so building is generic.
- :func:`check_channel_config`: the checks that need more than one key or a file (positions,
  device speeds, channel traces); called from ``fedsim.config._check_cross``, so a bad file is a
  one-line ConfigError before anything runs.
- :func:`describe_components`: what ``fedsim channels`` prints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from channels import REGISTRIES, build_component
from channels.compute import SpeedFileError, read_speeds_csv
from channels.fading import GaussMarkov
from channels.geometry import PositionsFileError, distance_m, read_positions_csv
from channels.link import LinkBudget
from channels.trace import TraceError, check_trace, read_trace
from fedsim.errors import ConfigError

SECTION_OF_KIND = {
    "drop": "channel",
    "mobility": "channel",
    "pathloss": "channel",
    "shadowing": "channel",
    "fading": "channel",
    "device_speed": "compute",
}

TR38901 = ("umi", "uma")
TR38901_CARRIER_HZ = (0.5e9, 100e9)  # TR 38.901 covers 0.5-100 GHz
TR38901_DISTANCE_M = (10.0, 5000.0)  # Table 7.4.1-1 validity of d_2D
UMA_MAX_UT_HEIGHT_M = 13.0  # above it the standard draws h_E at random (Note 1), which is not modelled

OTHER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "fading time correlation (gauss-markov)": ("channel.fading_correlation",),
    "noise and FDMA Shannon rate": (
        "channel.bandwidth_hz",
        "channel.tx_power_dbm",
        "channel.noise_psd_dbm_hz",
        "channel.noise_figure_db",
        "channel.allocation",
    ),
    "downlink (none, broadcast)": ("channel.downlink", "channel.downlink_bandwidth_hz", "channel.bs_power_dbm"),
    "outage": ("channel.outage_deadline_s",),
    "channel trace replay": ("channel.trace_csv",),
    "energy (recorded only)": ("channel.tx_power_dbm", "compute.flops_per_cycle", "compute.kappa"),
}
"""Parameters of the link that are not registry entries, for ``fedsim channels``."""


def build_link(channel: Any) -> LinkBudget:
    """The link budget of a ``ChannelSection``."""
    return LinkBudget(
        drop=build_component("drop", channel.drop, channel),
        pathloss=build_component("pathloss", channel.pathloss, channel),
        fading=build_component("fading", channel.fading, channel),
        shadowing=build_component("shadowing", channel.shadowing, channel),
        mobility=build_component("mobility", channel.mobility, channel),
        time_correlation=GaussMarkov(channel.fading_correlation),
    )


def build_device_speed(compute: Any) -> Any:
    """The device-speed model of a ``ComputeSection``."""
    return build_component("device_speed", compute.device_speed, compute)


def _file_error(key: str, path: str, e: Exception) -> ConfigError:
    if isinstance(e, FileNotFoundError):
        return ConfigError(f"{key}={path!r}: file not found")
    if isinstance(e, OSError):
        return ConfigError(f"{key}={path!r}: cannot read ({e.strerror or e})")
    if isinstance(e, UnicodeDecodeError):
        return ConfigError(f"{key}={path!r}: not a text CSV file")
    return ConfigError(f"{key}={path!r}: {e}")


def check_channel_config(cfg: Any) -> None:
    """Cross-key and file checks of ``[channel]`` and ``[compute]``; ConfigError with one line."""
    c, k = cfg.channel, cfg.run.clients

    if c.pathloss in TR38901:
        lo, hi = TR38901_CARRIER_HZ
        if not lo <= c.carrier_hz <= hi:
            raise ConfigError(
                f"channel.carrier_hz={c.carrier_hz!r}: channel.pathloss={c.pathloss} (TR 38.901) needs a carrier "
                f"in [{lo:g}, {hi:g}] Hz"
            )
        if c.pathloss == "uma" and c.ut_height_m > UMA_MAX_UT_HEIGHT_M:
            raise ConfigError(
                f"channel.ut_height_m={c.ut_height_m!r}: channel.pathloss=uma supports client heights up to "
                f"{UMA_MAX_UT_HEIGHT_M:g} m (above, TR 38.901 draws the environment height at random)"
            )
        dlo, dhi = TR38901_DISTANCE_M
        if c.drop == "disc" and (c.min_distance_m < dlo or c.radius_m > dhi):
            raise ConfigError(
                f"channel.min_distance_m={c.min_distance_m!r}, channel.radius_m={c.radius_m!r}: "
                f"channel.pathloss={c.pathloss} (TR 38.901) is valid for distances in [{dlo:g}, {dhi:g}] m"
            )

    if c.drop != "csv" and c.positions_csv:
        raise ConfigError(f"channel.positions_csv={c.positions_csv!r}: only used with channel.drop=csv")
    if c.drop == "csv":
        if not c.positions_csv:
            raise ConfigError("channel.positions_csv='': channel.drop=csv needs a CSV file (client_id,x_m,y_m)")
        try:
            pos = read_positions_csv(c.positions_csv)
        except (OSError, UnicodeDecodeError, PositionsFileError) as e:
            raise _file_error("channel.positions_csv", c.positions_csv, e) from None
        if len(pos) != k:
            raise ConfigError(f"channel.positions_csv={c.positions_csv!r}: has {len(pos)} clients, run.clients is {k}")
        d = distance_m(pos)
        if c.pathloss in TR38901 and (d.min() < TR38901_DISTANCE_M[0] or d.max() > TR38901_DISTANCE_M[1]):
            raise ConfigError(
                f"channel.positions_csv={c.positions_csv!r}: distances {d.min():.1f}..{d.max():.1f} m, "
                f"channel.pathloss={c.pathloss} (TR 38.901) is valid in [10, 5000] m"
            )
        if c.mobility != "none" and (d.min() < c.min_distance_m or d.max() > c.radius_m):
            raise ConfigError(
                f"channel.positions_csv={c.positions_csv!r}: distances {d.min():.1f}..{d.max():.1f} m must lie in "
                f"[channel.min_distance_m, channel.radius_m] = [{c.min_distance_m:g}, {c.radius_m:g}] m "
                f"when clients move (channel.mobility={c.mobility})"
            )

    if c.trace_csv:
        _check_trace_file(cfg)

    comp = cfg.compute
    if comp.device_speed != "csv" and comp.device_speed_csv:
        raise ConfigError(
            f"compute.device_speed_csv={comp.device_speed_csv!r}: only used with compute.device_speed=csv"
        )
    if comp.device_speed == "csv":
        if not comp.device_speed_csv:
            raise ConfigError(
                "compute.device_speed_csv='': compute.device_speed=csv needs a CSV file (client_id,device_flops)"
            )
        try:
            speeds = read_speeds_csv(comp.device_speed_csv)
        except (OSError, UnicodeDecodeError, SpeedFileError) as e:
            raise _file_error("compute.device_speed_csv", comp.device_speed_csv, e) from None
        if len(speeds) != k:
            raise ConfigError(
                f"compute.device_speed_csv={comp.device_speed_csv!r}: has {len(speeds)} clients, run.clients is {k}"
            )


def _check_trace_file(cfg: Any) -> None:
    from fedsim.rounds import sample_clients

    path = cfg.channel.trace_csv
    try:
        trace = read_trace(path)
        check_trace(trace, cfg.run.rounds, cfg.run.clients)
    except (OSError, UnicodeDecodeError, TraceError) as e:
        raise _file_error("channel.trace_csv", path, e) from None
    for round_ in range(1, cfg.run.rounds + 1):
        needed = sample_clients(cfg.run.seed, round_, cfg.run.clients, cfg.num_sampled)
        missing = sorted(set(needed) - trace.clients(round_))
        if missing:
            raise ConfigError(
                f"channel.trace_csv={path!r}: round {round_} has no row for sampled clients {missing[:8]} "
                "(a trace needs every client a run samples; WirelessModel.export_trace writes all clients)"
            )


# ----------------------------------------------------------------------------------------------
# fedsim channels


def _config_fields() -> dict[str, dataclasses.Field]:
    from fedsim.config import SECTIONS

    return {f"{name}.{f.name}": f for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def describe_components() -> list[dict[str, Any]]:
    """One entry per registered component and per other link parameter group.

    Each entry: ``kind``, ``name``, ``summary`` (first docstring line), ``selector`` (the key that
    picks it, or None) and ``parameters``: a list of (key, default, unit or allowed values).
    """
    fields = _config_fields()

    def param(key: str, unit: str | None) -> tuple[str, Any, str]:
        f = fields[key]
        return key, f.default, unit or f.metadata["allowed"]

    out = []
    for kind, registry in REGISTRIES.items():
        section = SECTION_OF_KIND[kind]
        for name, cls in registry.items():
            doc = (cls.__doc__ or "").strip().splitlines()
            params = [param(f"{section}.{f.name}", f.metadata.get("unit")) for f in dataclasses.fields(cls)]
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "summary": doc[0] if doc else "",
                    "selector": f"{section}.{kind}={name}",
                    "parameters": params,
                }
            )
    for group, keys in OTHER_PARAMETERS.items():
        out.append(
            {
                "kind": "link",
                "name": group,
                "summary": "",
                "selector": None,
                "parameters": [param(key, None) for key in keys],
            }
        )
    return out


def export_trace_from_results(results_dir: str | Path, out_csv: str | Path) -> int:
    """Write the per-round, per-client channel of a results folder's ``rounds.jsonl`` as a trace CSV."""
    from channels.trace import rows_from_round_records, write_trace
    from fedsim.results import read_rounds

    try:
        rows = rows_from_round_records(read_rounds(results_dir))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"--export-trace={str(results_dir)!r}: rounds.jsonl does not hold fedsim round records ({type(e).__name__})"
        ) from None
    return write_trace(out_csv, rows)
