"""Wireless physics for fedsim: geometry, path loss, shadowing, fading, rates, compute and latency.

Pure NumPy/SciPy. Nothing in this package imports torch, flwr or ray, so every model here is
tested directly against its theory and can be used without the simulator.

Components are small frozen dataclasses whose field names are the configuration keys that set
them (``channel.<field>`` or ``compute.<field>``), registered by lowercase name per kind below.
"""

from __future__ import annotations

import dataclasses

from channels.compute import DEVICE_SPEEDS
from channels.fading import FADING
from channels.geometry import DROPS, MOBILITY
from channels.pathloss import PATHLOSS
from channels.shadowing import SHADOWING

REGISTRIES: dict[str, dict[str, type]] = {
    "drop": DROPS,
    "mobility": MOBILITY,
    "pathloss": PATHLOSS,
    "shadowing": SHADOWING,
    "fading": FADING,
    "device_speed": DEVICE_SPEEDS,
}
"""Every registry by kind; the kind is also the config key that selects an entry."""


def get_component(kind: str, name: str) -> type:
    """The registered class ``name`` of ``kind``; ValueError listing the known names otherwise."""
    registry = REGISTRIES[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind} model {name!r}: known are {', '.join(registry)}")
    return registry[name]


def build_component(kind: str, name: str, params: object) -> object:
    """An instance of ``name`` with each field read from the attribute of the same name on ``params``."""
    cls = get_component(kind, name)
    return cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(cls)})
