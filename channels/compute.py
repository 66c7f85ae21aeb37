"""Local computation: device speeds, compute time and compute energy.

Time and energy follow the computation model of Yang et al., "Energy Efficient Federated
Learning Over Wireless Communication Networks", IEEE Trans. Wireless Commun. 20(3), 2021, with
work counted in FLOPs:

    T_cmp_k = E * |D_k| * F / f_k                                   [s]

with E local epochs, |D_k| local samples, F training FLOPs per sample and f_k the device's
sustained speed in FLOP/s, drawn once per client from a device-speed model.

Energy (CMOS dynamic power P = kappa f_clk^3, Burd & Brodersen 1996):

    E_cmp_k = kappa * C_k * f_clk,k^2                               [J]

with C_k = E |D_k| F / c the clock cycles, f_clk,k = f_k / c the clock in Hz, c FLOPs per
cycle and kappa the effective switched capacitance in J s^2 / cycle^3 (1e-28 is the usual value).
Energy is recorded only; nothing optimises it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from channels.csvfile import cached_while_unchanged, read_client_table
from channels.devices import ClassDeviceSpeed

DEVICE_FLOPS = 1.0e12
"""Default device speed (the fixed speed and the lognormal median), FLOP/s."""


@dataclass(frozen=True)
class UniformDeviceSpeed:
    """Device speeds uniform in [device_flops_min, device_flops_max] FLOP/s."""

    device_flops_min: float = field(default=0.5e12, metadata={"unit": "FLOP/s"})
    device_flops_max: float = field(default=2.0e12, metadata={"unit": "FLOP/s"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Device speeds (num_clients,) in FLOP/s."""
        return rng.uniform(self.device_flops_min, self.device_flops_max, num_clients)


@dataclass(frozen=True)
class LogNormalDeviceSpeed:
    """Log-normal device speeds: ln f ~ N(ln device_flops, device_flops_log_std^2) (median device_flops)."""

    device_flops: float = field(default=DEVICE_FLOPS, metadata={"unit": "FLOP/s"})
    device_flops_log_std: float = field(default=0.5, metadata={"unit": "std of ln(FLOP/s)"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """f = median * exp(sigma N(0, 1)), shape (num_clients,), FLOP/s."""
        return self.device_flops * np.exp(self.device_flops_log_std * rng.standard_normal(num_clients))


@dataclass(frozen=True)
class FixedDeviceSpeed:
    """Every device runs at ``device_flops`` FLOP/s."""

    device_flops: float = field(default=DEVICE_FLOPS, metadata={"unit": "FLOP/s"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        return np.full(num_clients, float(self.device_flops))


class SpeedFileError(ValueError):
    """A device-speed CSV that cannot be used; the message is one line."""


@cached_while_unchanged()
def read_speeds_csv(path: str) -> np.ndarray:
    """Device speeds (K,) in FLOP/s from ``client_id,device_flops`` rows; cached while the file is unchanged."""

    def problem(v: np.ndarray) -> str | None:
        ok = np.isfinite(v[0]) and v[0] > 0
        return None if ok else f"device_flops must be a positive FLOP/s, got {float(v[0])!r}"

    speeds = read_client_table(path, ("device_flops",), SpeedFileError, problem)[:, 0]
    speeds.setflags(write=False)
    return speeds


@dataclass(frozen=True)
class CsvDeviceSpeed:
    """Device speeds from a trace file with columns ``client_id,device_flops`` (FLOP/s)."""

    device_speed_csv: str = field(default="", metadata={"unit": "path"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        speeds = read_speeds_csv(self.device_speed_csv)
        if len(speeds) != num_clients:
            raise SpeedFileError(f"{self.device_speed_csv}: has {len(speeds)} clients, the run has {num_clients}")
        return np.array(speeds)


DEVICE_SPEEDS: dict[str, type] = {
    "uniform": UniformDeviceSpeed,
    "lognormal": LogNormalDeviceSpeed,
    "fixed": FixedDeviceSpeed,
    "csv": CsvDeviceSpeed,
    "classes": ClassDeviceSpeed,
}
"""Device-speed models by ``compute.device_speed`` name."""


def compute_time_s(epochs: int, num_samples: ArrayLike, flops_per_sample: float, device_flops: ArrayLike) -> np.ndarray:
    """T_cmp = E |D| F / f in seconds, element-wise over clients."""
    return epochs * np.asarray(num_samples, dtype=float) * flops_per_sample / np.asarray(device_flops, dtype=float)


def compute_energy_j(
    epochs: int,
    num_samples: ArrayLike,
    flops_per_sample: float,
    device_flops: ArrayLike,
    flops_per_cycle: float,
    kappa: float,
) -> np.ndarray:
    """E_cmp = kappa * cycles * f_clk^2 in joules, with cycles = E |D| F / c and f_clk = f / c (Hz)."""
    cycles = epochs * np.asarray(num_samples, dtype=float) * flops_per_sample / flops_per_cycle
    clock_hz = np.asarray(device_flops, dtype=float) / flops_per_cycle
    return kappa * cycles * clock_hz**2
