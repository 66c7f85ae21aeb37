"""What fedsim costs on top of Flower, and how close the default run gets to its compute.

(a) ``fedsim run`` with 50 clients on the default workload with no local training
    (``train.local_epochs=0``, 8 test samples) against a plain Flower app (ServerApp/ClientApp
    in this file, no fedsim code) that moves the same message sizes: each round the same number
    of sampled clients receive and return the dense adapter arrays. Both are whole processes,
    timed from start to exit, on the same Ray settings (1 CPU per client).
(b) the default ``fedsim run --clients 50`` wall time against the sum of its clients' training
    time measured in-process (``fedsim.training.client_update`` for every sampled client of every
    round, one after another, no Flower), divided by the cores the run uses.

Goals reported: (a) fedsim / plain <= 1.10; (b) wall <= 1.3 x compute / cores.
Writes benchmarks/results/overhead.json.

    python benchmarks/overhead.py [--rounds 10] [--skip-b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


# ---- the plain Flower baseline (run in a subprocess with --plain) ---------------------------------


def plain_flower(num_clients: int, rounds: int, per_round: int, shapes_file: str) -> None:
    from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    shapes = json.loads(Path(shapes_file).read_text())
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        rng = np.random.default_rng(0)
        arrays = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in shapes.items()})
        nodes = sorted(grid.get_node_ids())
        for _ in range(rounds):
            chosen = [nodes[i] for i in rng.choice(len(nodes), size=per_round, replace=False)]  # ids exceed int64
            msgs = [
                Message(RecordDict({"arrays": arrays}), dst_node_id=n, message_type=MessageType.TRAIN) for n in chosen
            ]
            replies = list(grid.send_and_receive(msgs))
            assert len(replies) == per_round and not any(r.has_error() for r in replies)

    import warnings

    warnings.simplefilter("ignore")
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": os.cpu_count(),
                "logging_level": "ERROR",
                "log_to_driver": False,
                "_node_ip_address": "127.0.0.2",
            },
        },
    )


def adapter_shapes(cfg) -> dict[str, list[int]]:
    from fedsim.training import initial_state

    return {k: list(v.shape) for k, v in initial_state(cfg).items()}


def in_process_compute_s(cfg) -> tuple[float, int]:
    """Sum of client_update wall time over every sampled client of every round, one process."""
    import torch

    from fedsim.seeding import sample_clients
    from fedsim.training import client_update, initial_state, load_workload

    torch.set_num_threads(int(cfg.simulation.cpus_per_client))
    load_workload(cfg)
    state = initial_state(cfg)
    total, calls = 0.0, 0
    for r in range(1, cfg.run.rounds + 1):
        for cid in sample_clients(cfg.run.seed, r, cfg.run.clients, cfg.num_sampled):
            t0 = time.perf_counter()
            client_update(cfg, cid, r, state)
            total += time.perf_counter() - t0
            calls += 1
    return total, calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--plain", nargs=4, metavar=("CLIENTS", "ROUNDS", "PER_ROUND", "SHAPES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        plain_flower(int(args.plain[0]), int(args.plain[1]), int(args.plain[2]), args.plain[3])
        return

    from fedsim.config import build_config

    tmp = Path(tempfile.mkdtemp(prefix="fedsim-overhead-"))
    common = ["--clients", str(args.clients), "--rounds", str(args.rounds), "--clients-per-round", str(args.per_round)]
    nocompute = [*common, "--set", "train.local_epochs=0", "--set", "workload.test_samples=8"]
    cfg0 = build_config(
        {
            "run.clients": args.clients,
            "run.rounds": args.rounds,
            "run.clients_per_round": args.per_round,
            "train.local_epochs": 0,
        }
    )
    shapes = tmp / "shapes.json"
    shapes.write_text(json.dumps(adapter_shapes(cfg0)))
    result: dict = {
        "cores": os.cpu_count(),
        "clients": args.clients,
        "rounds": args.rounds,
        "per_round": args.per_round,
    }

    plain_s = timed(
        [sys.executable, __file__, "--plain", str(args.clients), str(args.rounds), str(args.per_round), str(shapes)]
    )
    fedsim_s = timed([sys.executable, "-m", "fedsim", "run", *nocompute, "--out", str(tmp / "nocompute"), "--quiet"])
    result["a"] = {
        "plain_flower_s": plain_s,
        "fedsim_no_training_s": fedsim_s,
        "ratio": fedsim_s / plain_s,
        "goal_ratio_at_most": 1.10,
    }
    print(json.dumps(result["a"], indent=2), flush=True)

    if not args.skip_b:
        cfg = build_config(
            {"run.clients": args.clients, "run.rounds": args.rounds, "run.clients_per_round": args.per_round}
        )
        wall_s = timed([sys.executable, "-m", "fedsim", "run", *common, "--out", str(tmp / "default"), "--quiet"])
        compute_s, calls = in_process_compute_s(cfg)
        cores = min(os.cpu_count() or 1, cfg.num_sampled)
        result["b"] = {
            "default_run_wall_s": wall_s,
            "clients_compute_in_process_s": compute_s,
            "client_calls": calls,
            "cores_used": cores,
            "ratio_wall_to_compute_per_core": wall_s / (compute_s / cores),
            "goal_ratio_at_most": 1.3,
        }
        print(json.dumps(result["b"], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
