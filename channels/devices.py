"""Device classes: clients with their own speed, memory, power and availability.

``compute.device_speed = "classes"``: every client belongs to a class of a catalogue (a TOML file:
the shipped ``channels/device_classes.toml``, or ``compute.device_catalogue``), drawn once per run
from ``compute.device_mix`` (``"phone-low=0.3,laptop=0.2,..."``: weights, normalised) or read from
``compute.device_classes_csv`` (rows ``client_id,device_class``). A class sets

- the speed f_k, FLOP/s, as every device-speed model does: T_cmp = E |D_k| F / f_k;
- the memory M_k, GiB: a client whose training needs more (the workload's estimate of weights and
  optimizer state, :meth:`fedsim.core.training.WorkloadHost.train_memory_bytes`) is not trained,
  and is recorded as failed with both figures;
- the power P_k, W: compute energy E_cmp = P_k T_cmp (instead of the CMOS model's kappa C f_clk^2);
- availability: a two-state chain (online, offline) with exponential holding times of means
  T_on = ``mean_online_s`` and T_off = ``mean_offline_s``.

Availability per trip (a synchronous round, an asynchronous dispatch): from the client's own stream
for that trip, the device is online at the trip's start with the chain's stationary probability
pi = T_on / (T_on + T_off), and then stays online for a time L ~ Exp(T_on) (the holding time is
memoryless, so the time left in the online state has the same law). A client offline at the start,
or whose downlink + training + upload lasts longer than L, is dropped with the time it left and
its reason. Trips are independent draws of the stationary chain, not one continuous trace per
client: a client that leaves in one round can be back in the next.
"""

from __future__ import annotations

import csv
import functools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CATALOGUE = Path(__file__).with_name("device_classes.toml")
"""The shipped catalogue."""

FIELDS = ("flops", "memory_gib", "power_w", "mean_online_s", "mean_offline_s")
LIMITS = {"flops": 1e21, "memory_gib": 1e6, "power_w": 1e6, "mean_online_s": 1e12, "mean_offline_s": 1e12}


class DeviceFileError(ValueError):
    """A catalogue, mix or class file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class DeviceClass:
    """One class of the catalogue (units in the names)."""

    name: str
    flops: float
    memory_gib: float
    power_w: float
    mean_online_s: float
    mean_offline_s: float

    @property
    def online_probability(self) -> float:
        """pi = T_on / (T_on + T_off): the chain's stationary probability of being online."""
        return self.mean_online_s / (self.mean_online_s + self.mean_offline_s)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> dict[str, DeviceClass]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise DeviceFileError(f"not a TOML file ({e})") from None
    if not data:
        raise DeviceFileError("holds no device class")
    classes = {}
    for name, values in data.items():
        if not isinstance(values, dict) or sorted(values) != sorted(FIELDS):
            raise DeviceFileError(f"class {name!r} must be a table with exactly {', '.join(FIELDS)}")
        for key in FIELDS:
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v <= LIMITS[key]):
                raise DeviceFileError(f"class {name!r}: {key}={v!r} must be a number in (0, {LIMITS[key]:g}]")
        classes[name] = DeviceClass(name, *(float(values[k]) for k in FIELDS))
    return classes


def load_catalogue(path: str = "") -> dict[str, DeviceClass]:
    """The device classes of ``path`` ('' : the shipped catalogue) by name; cached while the file is
    unchanged. Raises DeviceFileError (one line) for a file that is not a catalogue, OSError when it
    cannot be read."""
    p = Path(path) if path else CATALOGUE
    st = p.stat()
    return _load(str(p.resolve()), st.st_mtime_ns, st.st_size)


def parse_mix(text: str) -> dict[str, float]:
    """``"a=0.3,b=0.7"`` as class name -> weight (positive, finite; normalised to sum 1)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        try:
            w = float(weight)
        except ValueError:
            w = math.nan
        if not sep or not name.strip() or not (math.isfinite(w) and w > 0) or name.strip() in mix:
            raise DeviceFileError(f"{part!r} must be CLASS=WEIGHT with a positive weight, each class once")
        mix[name.strip()] = w
    if not mix:
        raise DeviceFileError("names no class")
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


@functools.lru_cache(maxsize=8)
def _read_classes(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["client_id", "device_class"]:
        raise DeviceFileError("must start with the header client_id,device_class")
    found: dict[int, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip().isdigit() or not row[1].strip():
            raise DeviceFileError(f"line {i}: must be client_id,device_class (a non-negative integer and a name)")
        cid = int(row[0])
        if cid in found:
            raise DeviceFileError(f"line {i}: client {cid} appears twice")
        found[cid] = row[1].strip()
    if sorted(found) != list(range(len(found))):
        raise DeviceFileError(f"client ids must be 0..{len(found) - 1}, each once")
    return tuple(found[c] for c in range(len(found)))


def read_classes_csv(path: str) -> tuple[str, ...]:
    """Each client's class from ``client_id,device_class`` rows (ids 0..K-1), cached while unchanged."""
    p = Path(path)
    st = p.stat()
    return _read_classes(str(p.resolve()), st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class ClassDeviceSpeed:
    """Device classes (see the module docstring): each client's class, and its speed from the class."""

    device_mix: str = field(default="phone-low=0.3,phone-high=0.4,tablet=0.2,laptop=0.1", metadata={"unit": ""})
    device_classes_csv: str = field(default="", metadata={"unit": "path"})
    device_catalogue: str = field(default="", metadata={"unit": "path"})

    def catalogue(self) -> dict[str, DeviceClass]:
        return load_catalogue(self.device_catalogue)

    def assign(self, rng: np.random.Generator, num_clients: int) -> list[DeviceClass]:
        """Each client's class: from the CSV file when given, else drawn i.i.d. from the mix."""
        catalogue = self.catalogue()
        if self.device_classes_csv:
            names = read_classes_csv(self.device_classes_csv)
            if len(names) != num_clients:
                raise DeviceFileError(f"{self.device_classes_csv}: has {len(names)} clients, the run has {num_clients}")
        else:
            mix = parse_mix(self.device_mix)
            names = [str(n) for n in rng.choice(list(mix), size=num_clients, p=list(mix.values()))]
        unknown = sorted(set(names) - set(catalogue))
        if unknown:
            raise DeviceFileError(f"class {unknown[0]!r} is not in the catalogue ({', '.join(catalogue)})")
        return [catalogue[n] for n in names]

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Device speeds (num_clients,) in FLOP/s: each client's class's."""
        return np.array([c.flops for c in self.assign(rng, num_clients)])


def online_time_s(rng: np.random.Generator, device: DeviceClass) -> float:
    """How long the device stays online from a trip's start: 0 when it is offline then (probability
    1 - pi), else L ~ Exp(mean_online_s)."""
    u, e = rng.random(), rng.standard_exponential()
    return device.mean_online_s * float(e) if u < device.online_probability else 0.0
