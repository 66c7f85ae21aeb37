"""Named random streams: every draw in a run comes from ``(seed, round, client_id, purpose)``.

A stream depends only on those four values, never on the order in which Ray happens to run
clients, so a run is reproducible whatever the scheduling. Library code never seeds globals.
"""

from __future__ import annotations

import zlib

import numpy as np

SERVER = -1
"""``client_id`` of streams that belong to the server (sampling, channel draws for all clients)."""


def stream_key(seed: int, round_: int, client_id: int, purpose: str) -> list[int]:
    """The entropy words of a stream; the purpose string enters through a stable CRC32."""
    return [seed, round_ + 1, client_id + 2, zlib.crc32(purpose.encode())]


def rng(seed: int, round_: int, client_id: int, purpose: str) -> np.random.Generator:
    """A NumPy generator for one stream. ``round_`` is 0 for run-level draws (client drops)."""
    return np.random.default_rng(np.random.SeedSequence(stream_key(seed, round_, client_id, purpose)))


def torch_seed(seed: int, round_: int, client_id: int, purpose: str) -> int:
    """A 63-bit integer seed for a ``torch.Generator`` of the same stream."""
    return int(
        np.random.SeedSequence(stream_key(seed, round_, client_id, purpose)).generate_state(1, np.uint64)[0] >> 1
    )


def sample_clients(seed: int, round_: int, num_clients: int, num_sampled: int) -> list[int]:
    """Sorted ids of the clients taking part in ``round_``, drawn without replacement from the
    server's own stream for the round (Flower's own sampling draws node ids from os.urandom)."""
    chosen = rng(seed, round_, SERVER, "sample-clients").choice(num_clients, size=num_sampled, replace=False)
    return sorted(int(c) for c in chosen)
