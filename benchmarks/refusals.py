"""What bad input costs: every refusal family of the test suite plus extra cases, as real processes.

Runs each bad command line as ``python -m fedsim ...`` (two at a time), checks the promise (exit 2,
one line, no traceback, nothing written) and records the process's own CPU time. Writes
``refusals.csv`` (one row a case) and ``refusals.json`` (counts, CPU median and the slowest ten)
into ``--out`` and prints the summary.

    python benchmarks/refusals.py --out /tmp/refusals

The cases: ``tests/test_bad_input.py`` (every configuration key, options, files, resume, sweeps),
``tests/test_bad_input_files.py`` (report, sweep, plan), ``tests/test_bad_input_workloads.py``
(every workload option, combinations, datasets) and the extra families below (output paths,
special files, environment, deployment, the other commands).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import test_bad_input as base  # noqa: E402
from tests import test_bad_input_files as files  # noqa: E402
from tests import test_bad_input_workloads as wl  # noqa: E402
from tests.helpers.refusals import Refusal, run_case  # noqa: E402


def extra_cases(tmp: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """Bad input no test family covers: (name, arguments, environment)."""
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    (tmp / "a-file").write_text("x")
    (tmp / "binary.csv").write_bytes(bytes(range(256)) * 64)
    (tmp / "empty.csv").write_text("")
    (tmp / "sweep-dir").mkdir()
    symlinked = tmp / "symlinked-resume"
    symlinked.mkdir()
    (symlinked / "config.toml").symlink_to("/etc/hostname")
    empty_home = tmp / "flwr-home"
    empty_home.mkdir()
    no_env: dict[str, str] = {}
    cases = [
        ("--out under /proc", ["--out", "/proc/fedsim"], no_env),
        ("--out is a file", ["--out", str(tmp / "a-file")], no_env),
        ("--out is /dev/null", ["--out", "/dev/null"], no_env),
        ("--config is a FIFO", ["--config", str(fifo)], no_env),
        ("--set value of 100k characters", ["--set", "run.method=" + "x" * 100_000], no_env),
        ("--set empty key", ["--set", "=1"], no_env),
        ("--seed above 2^64", ["--seed", str(2**64)], no_env),
        ("--clients negative", ["--clients", "-5"], no_env),
        ("--rounds float", ["--rounds", "1e3"], no_env),
        ("--workload empty", ["--workload", ""], no_env),
        ("--method empty", ["--method", ""], no_env),
        ("--resume is a file", ["--resume", str(tmp / "a-file")], no_env),
        ("--resume config.toml is a symlink", ["--resume", str(symlinked)], no_env),
        (
            "positions csv binary",
            ["--set", "channel.drop=csv", "--set", f"channel.positions_csv={tmp / 'binary.csv'}"],
            no_env,
        ),
        ("trace csv empty", ["--set", f"channel.trace_csv={tmp / 'empty.csv'}"], no_env),
        ("FEDSIM_CACHE is a file", ["--clients", "4"], {"FEDSIM_CACHE": str(tmp / "a-file")}),
        ("FEDSIM_CACHE inside a file", ["--clients", "4"], {"FEDSIM_CACHE": str(tmp / "a-file" / "c")}),
        (
            "sweep --jobs 0",
            ["sweep", str(REPO / "experiments" / "soft_vs_baselines.toml"), "--jobs", "0", "--dry-run"],
            no_env,
        ),
        ("sweep file is a folder", ["sweep", str(tmp / "sweep-dir")], no_env),
        ("sweep file is /dev/zero", ["sweep", "/dev/zero"], no_env),
        (
            "sweep --set unknown key",
            ["sweep", str(REPO / "experiments" / "soft_vs_baselines.toml"), "--set", "nosuch.key=1", "--dry-run"],
            no_env,
        ),
        (
            "sweep --ray-address garbage",
            ["sweep", str(REPO / "experiments" / "soft_vs_baselines.toml"), "--ray-address", "nowhere", "--dry-run"],
            no_env,
        ),
        ("report of a missing folder", ["report", str(tmp / "none")], no_env),
        ("report of a file", ["report", str(tmp / "a-file")], no_env),
        ("report --by unknown key", ["report", str(tmp / "sweep-dir"), "--by", "run.nosuch"], no_env),
        ("plan --out under /proc", ["plan", "--out", "/proc/x.csv"], no_env),
        ("plan --clients 0", ["plan", "--clients", "0"], no_env),
        ("plan --method unknown", ["plan", "--method", "nosuch"], no_env),
        (
            "channels --export-trace missing",
            ["channels", "--export-trace", str(tmp / "none"), "--out", str(tmp / "t.csv")],
            no_env,
        ),
        ("channels --export-trace without --out", ["channels", "--export-trace", str(tmp / "sweep-dir")], no_env),
        (
            "deploy run without a connection",
            ["deploy", "run", "--clients", "2", "--out", str(tmp / "d1")],
            {"FLWR_HOME": str(empty_home)},
        ),
        (
            "deploy run --fetch unknown",
            ["deploy", "run", "--fetch", "ftp", "--out", str(tmp / "d2")],
            {"FLWR_HOME": str(empty_home)},
        ),
        (
            "deploy connect --ca missing",
            ["deploy", "connect", "x", "--address", "127.0.0.1:9", "--ca", str(tmp / "none.crt")],
            {"FLWR_HOME": str(empty_home)},
        ),
        (
            "deploy register a missing key",
            ["deploy", "register", str(tmp / "none.pub"), "--address", "127.0.0.1:9", "--ca", str(tmp / "none.crt")],
            {"FLWR_HOME": str(empty_home)},
        ),
        ("workloads --options unknown", ["workloads", "--options", "nosuch"], no_env),
        ("run.client_timeout_s below start-up", ["--set", "run.client_timeout_s=1"], no_env),
        ("unknown command", ["nosuch"], no_env),
    ]
    return cases


def all_cases(tmp: Path) -> list[tuple[str, str, list[str], dict[str, str]]]:
    """(family, name, arguments, environment) for every case."""
    inputs = tmp / "inputs"
    inputs.mkdir()
    deep = tmp / "deep"
    folder = deep
    for _ in range(1500):
        folder = folder / "d"
        folder.mkdir(parents=folder.parent == deep)
    hf = tmp / "hf"
    hf.mkdir()
    wl_env = {"HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets")}
    families = [
        ("config keys", base.key_cases(), {}),
        ("options", base.option_cases(), {}),
        ("config files", base.file_cases(inputs), {}),
        ("resume", base.resume_cases(inputs), {}),
        ("sweeps", base.sweep_cases(inputs) + files.sweep_cases(inputs), {}),
        ("report", files.report_cases(inputs, deep), {}),
        ("plan and links", files.plan_cases(inputs), {}),
        ("workload options", wl.command_line_cases() + wl.other_cases(inputs), wl_env),
        ("datasets", wl.dataset_cases(inputs), wl_env),
    ]
    cases = [(family, name, args, env) for family, group, env in families for name, args in group]
    cases += [("extra", name, args, env) for name, args, env in extra_cases(inputs)]
    return cases


def remove_deep(root: Path) -> None:
    """The 1500-level tree, one level at a time (shutil.rmtree recurses)."""
    folder = root
    while (folder / "d").is_dir():
        folder = folder / "d"
    while folder != root:
        folder.rmdir()
        folder = folder.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for refusals.csv and refusals.json")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedsim-refusals-") as t:
        tmp = Path(t)
        cases = all_cases(tmp)
        work = tmp / "cwd"
        work.mkdir()

        def one(i_case) -> tuple[str, Refusal]:
            i, (family, name, argv, env) = i_case
            out = tmp / f"out{i}"
            return family, Refusal(name, tuple(argv), out, *run_case(argv, out, work, env))

        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(one, enumerate(cases)))
        written = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
        remove_deep(tmp / "deep")
    rows = [
        {
            "family": family,
            "name": r.name,
            "exit": r.code,
            "cpu_s": round(r.cpu_s, 3),
            "wall_s": round(r.wall_s, 3),
            "problems": "; ".join(r.problems(cpu_limit_s=float("inf"))),  # CPU is reported on its own
            "line": r.text.strip().splitlines()[-1][:200] if r.text.strip() else "",
        }
        for family, r in results
    ]
    with (args.out / "refusals.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    broken = [row for row in rows if row["problems"]]
    cpu = [row["cpu_s"] for row in rows]
    summary = {
        "cases": len(rows),
        "kept_the_promise": len(rows) - len(broken),
        "broke_it": [f"{row['family']}: {row['name']}: {row['problems']}" for row in broken],
        "over_1_s_cpu": sum(row["cpu_s"] > 1.0 for row in rows),
        "files_written_in_cwd": written,
        "cpu_s_median": statistics.median(cpu),
        "per_family": {
            fam: {"cases": len(c), "cpu_s_median": statistics.median(c), "cpu_s_max": max(c)}
            for fam in dict.fromkeys(row["family"] for row in rows)
            if (c := [row["cpu_s"] for row in rows if row["family"] == fam])
        },
        "slowest_ten": [
            {"family": row["family"], "name": row["name"], "cpu_s": row["cpu_s"], "line": row["line"]}
            for row in sorted(rows, key=lambda row: -row["cpu_s"])[:10]
        ],
    }
    (args.out / "refusals.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
