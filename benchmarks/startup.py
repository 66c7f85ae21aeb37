"""Start-up of a fedsim run: process start to the first round's messages sent, lean Ray head against the full one.

Each run is a whole ``fedsim run`` process (default workload, ``--clients 50``, one round with
no local training, 8 test samples), started by this script, which notes the wall-clock time
just before it spawns the process. Inside the process (``--child``) the same CLI runs with
three probes, written to a JSON-lines file:

- ``imported``:  ``fedsim.app.cli`` imported (the driver's own imports);
- ``ray_ready``: ``ray.init`` returned (GCS, raylet, agents up);
- ``push``:      every ``InMemoryGrid.push_messages`` call with its message type: the first
                 ``query`` is client discovery (none under ``fedsim run``, which addresses the
                 simulated nodes from the runtime's registration), the first ``train`` the
                 first round's messages.

Start-up is first ``train`` push minus spawn time (goal: <= 10 s on this machine). The two
variants run alternately in one loop (``--repeats`` each) so that they share the machine's load:

- ``lean``: the current start (``fedsim.flower.simulation._start_ray``): no autoscaler monitor,
  no log monitor, no API server, no usage statistics, ``sys.path`` inherited by the workers (so
  that ClientApp actors reuse the workers the raylet prestarts);
- ``full``: ``FEDSIM_FULL_RAY_HEAD=1``, the previous start: every Ray service and a runtime
  environment carrying ``PYTHONPATH``.

The JSON (default benchmarks/results/startup.json) has every run's phases, the medians per
variant, the ratio lean / full, the Ray processes alive at the first round, the CPU seconds
they and the driver had used by then (on a loaded machine a steadier measure of the work than
wall time) and the load average before and after.

    python benchmarks/startup.py [--repeats 3] [--clients 50] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {"lean": {}, "full": {"FEDSIM_FULL_RAY_HEAD": "1"}}
GOAL_STARTUP_S = 10.0


def child(times_file: str, argv: list[str]) -> None:
    """Run the fedsim CLI with probes on import, Ray start and the grid's pushes."""
    log = open(times_file, "a", buffering=1)  # noqa: SIM115 - open for the whole process

    def note(event: str, **extra) -> None:
        log.write(json.dumps({"event": event, "t": time.time(), **extra}) + "\n")

    import ray

    import fedsim.app.cli

    note("imported")
    ray_init = ray.init

    def init(*args, **kwargs):
        out = ray_init(*args, **kwargs)
        note("ray_ready")
        return out

    ray.init = init
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    push = InMemoryGrid.push_messages

    def push_messages(self, messages):
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else ""
        note("push", message_type=kind, count=len(messages))
        if kind.startswith("train"):
            note("ray_processes", **ray_process_cpu())
        return push(self, messages)

    InMemoryGrid.push_messages = push_messages
    fedsim.app.cli.main(argv)


def ray_process_cpu() -> dict:
    """The Ray processes under this driver, the CPU seconds they and the driver have used so far.

    Any descendant counts whose name starts with ``ray::`` or names a Ray binary, or whose command
    line runs a file of the ``ray`` package (``python -u .../ray/.../monitor.py`` included).
    """
    import psutil

    names: dict[str, int] = {}
    cpu_s = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            name, cmd, times = p.name(), p.cmdline(), p.cpu_times()
        except psutil.Error:
            continue
        script = next((Path(part).name for part in cmd if "/ray/" in part and part.endswith(".py")), None)
        if name.startswith(("ray::", "gcs_server", "raylet")):
            label = name
        elif script is not None:
            label = script
        else:
            continue
        names[label] = names.get(label, 0) + 1
        cpu_s += times.user + times.system
    driver = psutil.Process().cpu_times()
    return {"processes": names, "ray_cpu_s": cpu_s, "driver_cpu_s": driver.user + driver.system}


def one_run(variant: str, clients: int, tmp: Path, index: int) -> dict:
    times_file = tmp / f"{variant}-{index}.jsonl"
    out = tmp / f"{variant}-{index}"
    argv = ["run", "--clients", str(clients), "--rounds", "1", "--clients-per-round", "10"]
    argv += ["--set", "train.local_epochs=0", "--set", "workload.test_samples=8", "--out", str(out), "--quiet"]
    env = {**os.environ, **VARIANTS[variant]}
    if variant != "full":
        env.pop("FEDSIM_FULL_RAY_HEAD", None)
    t_spawn = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(times_file), "--", *argv], env=env, capture_output=True, text=True
    )
    t_end = time.time()
    if proc.returncode != 0:  # recorded, not fatal: one flaky start must not lose the other runs
        return {"variant": variant, "failed": True, "returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    events = [json.loads(line) for line in times_file.read_text().splitlines() if line.strip()]

    def first(event: str, prefix: str = "") -> dict | None:
        return next(
            (e for e in events if e["event"] == event and e.get("message_type", "").startswith(prefix)),
            None,
        )

    train = first("push", "train")
    query = first("push", "query")
    procs = first("ray_processes") or {}
    return {
        "variant": variant,
        "imported_s": first("imported")["t"] - t_spawn,
        "ray_ready_s": first("ray_ready")["t"] - t_spawn,
        "discovery_sent_s": query["t"] - t_spawn if query else None,
        "startup_s": train["t"] - t_spawn,
        "total_s": t_end - t_spawn,
        "ray_processes": procs.get("processes"),
        "ray_cpu_s_at_first_round": procs.get("ray_cpu_s"),
        "driver_cpu_s_at_first_round": procs.get("driver_cpu_s"),
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _median(values: list) -> float | None:
    """The median of the values that exist (None: no run had one, e.g. no discovery under simulation)."""
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (alternating)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(args.child, rest[1:] if rest[:1] == ["--"] else rest)
        return

    tmp = Path(tempfile.mkdtemp(prefix="fedsim-startup-"))
    load_before = os.getloadavg()
    runs = []
    order = list(VARIANTS)
    for i in range(args.repeats):
        for variant in order if i % 2 == 0 else order[::-1]:
            row = one_run(variant, args.clients, tmp, i)
            runs.append(row)
            if row.get("failed"):
                print(f"{variant:>5} #{i}: FAILED ({row['returncode']}): {row['stderr_tail'][-300:]}", flush=True)
                continue
            print(
                f"{variant:>5} #{i}: imports {row['imported_s']:.1f} s, Ray ready {row['ray_ready_s']:.1f} s, "
                f"discovery {_s(row['discovery_sent_s'])}, first round sent {row['startup_s']:.1f} s, "
                f"exit {row['total_s']:.1f} s; CPU to the first round: driver {row['driver_cpu_s_at_first_round']:.1f} s, "
                f"Ray {row['ray_cpu_s_at_first_round']:.1f} s in {row['ray_processes']}",
                flush=True,
            )
    load_after = os.getloadavg()

    keys = ("imported_s", "ray_ready_s", "discovery_sent_s", "startup_s", "total_s")
    keys += ("ray_cpu_s_at_first_round", "driver_cpu_s_at_first_round")
    ok = [r for r in runs if not r.get("failed")]
    medians = {v: {k: _median([r[k] for r in ok if r["variant"] == v]) for k in keys} for v in VARIANTS}
    ratios = {k: medians["lean"][k] / medians["full"][k] if medians["full"][k] else None for k in keys}
    report = {
        "benchmark": "fedsim start-up: process start to the first round's messages sent",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": load_after,
        },
        "settings": {"clients": args.clients, "repeats": args.repeats, "variants": VARIANTS},
        "runs": runs,
        "failed_runs": {v: sum(1 for r in runs if r["variant"] == v and r.get("failed")) for v in VARIANTS},
        "median": medians,
        "ratio_lean_to_full": ratios,
        "goal": {
            "startup_at_most_s": GOAL_STARTUP_S,
            "met_lean": bool(medians["lean"]["startup_s"] <= GOAL_STARTUP_S),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"load average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    for v in VARIANTS:
        m = medians[v]
        print(
            f"median {v:>5}: first round sent {m['startup_s']:.1f} s (Ray ready {m['ray_ready_s']:.1f} s), "
            f"exit {m['total_s']:.1f} s, CPU driver {m['driver_cpu_s_at_first_round']:.1f} s, "
            f"Ray {m['ray_cpu_s_at_first_round']:.1f} s"
        )
    print(
        f"lean / full: start-up {ratios['startup_s']:.2f}, Ray ready {ratios['ray_ready_s']:.2f}, "
        f"Ray CPU {ratios['ray_cpu_s_at_first_round']:.2f}, driver CPU {ratios['driver_cpu_s_at_first_round']:.2f}"
    )
    print(f"goal start-up <= {GOAL_STARTUP_S:g} s: {'met' if report['goal']['met_lean'] else 'NOT met'} (lean)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
