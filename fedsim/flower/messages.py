"""Conversions between fedsim's plain values and Flower records and messages."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedsim.core.client import Action, ClientRequest
from fedsim.core.config import Config, build_config

ROUND_KEY = "fedsim.round"
CLIENT_KEY = "fedsim.client_id"
REQUEST_KEYS = {"rho": "fedsim.rho", "rank": "fedsim.rank", "client_state_dir": "fedsim.client_state"}
"""The config-record keys of a :class:`~fedsim.core.client.ClientRequest`'s optional fields (set ones only)."""


NODE_PROFILE_KEYS = ("distance-m", "device-flops")
"""Optional SuperNode node-config keys (``--node-config "... distance-m=120.0 device-flops=1e12"``):
a deployed node's own channel profile, reported at discovery. They replace the node's seeded
distance to the base station (metres) and device speed (FLOP/s); fading stays seeded per round."""


def to_array_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in state.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: arr.numpy() for name, arr in record.items()}


def config_record(cfg: Config, **extra: Any) -> ConfigRecord:
    """The whole flat configuration plus per-message extras (round, client id)."""
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_flat().items()}
    return ConfigRecord({**flat, **extra})


def request_record(cfg: Config, request: ClientRequest) -> ConfigRecord:
    """A request as its message's config record: the whole configuration, the round, the client
    id and the request's set fields (the action is the message type)."""
    extra = {key: getattr(request, name) for name, key in REQUEST_KEYS.items() if getattr(request, name) is not None}
    return config_record(cfg, **{ROUND_KEY: request.round, CLIENT_KEY: request.client_id, **extra})


def request_from_record(record: ConfigRecord, action: Action) -> ClientRequest:
    """Inverse of :func:`request_record` (the configuration aside: :func:`config_from_record`)."""
    rho, rank, state_dir = (record.get(REQUEST_KEYS[name]) for name in ("rho", "rank", "client_state_dir"))
    return ClientRequest(
        action=action,
        round=int(record[ROUND_KEY]),
        client_id=int(record[CLIENT_KEY]),
        rho=None if rho is None else float(rho),
        rank=None if rank is None else int(rank),
        client_state_dir=None if state_dir is None else str(state_dir),
    )


@lru_cache(maxsize=8)
def _cached_config(items: tuple[tuple[str, Any], ...]) -> Config:
    # The ServerApp validated everything, registries and files included; a client checks types
    # and ranges only, so a SuperNode needs no copy of the server's trace or position files.
    return build_config(dict(items))


def config_from_record(record: ConfigRecord) -> Config:
    """The run configuration carried by a message (validated once per process and cached)."""
    items = tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in record.items() if not k.startswith("fedsim."))
    )
    return _cached_config(items)
