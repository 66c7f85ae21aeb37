"""fedsim on Flower's Deployment Engine: a real federation of local processes on 127.0.0.1 (slow).

The docker-compose.yml topology without Docker (see federation.py): TLS from docker/certs.sh,
SuperNode authentication, the ServerApp in its own SuperExec, three SuperNodes with node-config
partitions and channel profiles, and ``fedsim deploy run`` as the submit path. One run covers
the deployment: a 2-round FedSA-LoRA run (client state on each SuperNode's disk) during which the
SuperLink is killed and restarted (round 1) and then a SuperNode (round 2).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from fedsim.core.checks import checked_config
from fedsim.core.results import read_rounds
from fedsim.core.wireless import WirelessModel
from tests.deploy.federation import Federation
from tests.helpers.runs import CLIENT_FIELDS, SMALL

pytestmark = pytest.mark.slow

PROFILE_2 = {"distance-m": 123.0, "device-flops": 1.5e12}  # supernode-2 holds partition 1
NODE_STATE = {n: f"node-{n}-state" for n in (1, 2, 3)}  # each supernode keeps client state on its own disk
# A SuperNode killed after taking its message and activated again before the SuperLink answers that
# message for the dead node leaves it unanswered for ever (Flower 1.42): only a reply timeout ends
# the wait. Long enough for a first reply's start-up on a loaded machine.
CLIENT_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("docker/certs.sh needs openssl")
    root = tmp_path_factory.mktemp("federation")
    profiles = {n: f'state-dir="{root / d}"' for n, d in NODE_STATE.items()}
    profiles[2] = f"distance-m=123.0 device-flops=1.5e12 {profiles[2]}"
    fed = Federation(root, nodes=3, profiles=profiles)
    try:
        yield fed.start()
    except BaseException:
        print(fed.log_tail())
        raise
    finally:
        fed.stop()


def _finish(fed: Federation, proc, timeout: float) -> str:
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except Exception:
        fed.kill(f"deploy-{Path(proc.args[proc.args.index('--out') + 1]).name}")
        raise
    assert proc.returncode == 0, f"fedsim deploy run exited {proc.returncode}\n{fed.log_tail()}"
    return stdout.strip()


def _nodes(fed: Federation) -> dict[str, str]:
    """Every node the SuperLink knows (``flwr supernode ls``): node id -> status."""
    proc = fed.fedsim_flwr(["supernode", "ls", "test", "--format", "json"])
    text = proc.stdout[proc.stdout.find("{") :]
    assert proc.returncode == 0 and text, f"flwr supernode ls failed\n{proc.stdout}\n{proc.stderr}"
    return {n["node-id"]: n["status"] for n in json.loads(text).get("nodes", [])}


def _online_nodes(fed: Federation) -> set[str]:
    return {node for node, status in _nodes(fed).items() if status == "online"}


def _wait_for_round(fed: Federation, proc, earlier: set[Path], timeout_s: float, rounds: int = 1) -> Path:
    """The new run's rounds.jsonl on the server side, once it holds ``rounds`` rounds."""
    deadline = time.monotonic() + timeout_s
    rounds_file = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(set(fed.server_results.glob("*/rounds.jsonl")) - earlier)
        rounds_file = found[0] if found else None
        if rounds_file and rounds_file.read_text().count("\n") >= rounds:
            return rounds_file
        time.sleep(0.2)
    raise AssertionError(f"round {rounds} never finished\n{fed.log_tail()}")


def test_deployed_run_through_a_superlink_and_a_supernode_restart(federation, tmp_path):
    """A 2-round FedSA-LoRA run on three SuperNodes. Once every SuperNode has taken its round-1
    message the SuperLink is SIGKILLed and started again with its database (as Docker restarts it);
    once round 1 is recorded, supernode-2 is SIGKILLed and started again.

    The SuperLink restart loses what was in flight in round 1 (replies the SuperNodes were pushing,
    the ServerApp's push session); the ServerApp sends those messages again (fedsim/flower/resend.py),
    and a client answers a request it gets twice the same way, so round 1 is recorded as in an
    uninterrupted run: every client answered, no failure, one record per round, the same node ids.

    Checked: the records, supernode-2's channel profile, TensorBoard replayed on this side, and each
    client's B kept between rounds on its own SuperNode under the node-config ``state-dir``, never
    where the server's message says (a node without one refuses: tests/test_client_state.py). With
    SuperNode authentication the SuperLink keeps one node id per registered public key and activates
    the restarted SuperNode under it (flwr's Fleet ActivateNode looks the id up by key), so the same
    three node ids are online afterwards and no stale id is left behind; the partition id, hence the
    fedsim client id, comes from the node config and stays as well.
    """
    nodes_before = _online_nodes(federation)
    assert len(nodes_before) == 3 and set(_nodes(federation)) == nodes_before
    node_2 = federation.activated_node_id(2, timeout_s=60)  # what supernode-2 logged at its first start
    assert str(node_2) in nodes_before
    out = tmp_path / "deployed"
    earlier = set(federation.server_results.glob("*/rounds.jsonl"))
    t0 = time.monotonic()
    proc = federation.submit(
        ["--clients", "3", "--rounds", "2", "--clients-per-round", "3", "--seed", "7", *SMALL]
        + ["--set", "run.method=fedsa", "--set", "tracking.backends=tensorboard"]
        + ["--set", "run.min_clients_per_round=2", "--set", f"run.client_timeout_s={CLIENT_TIMEOUT_S}"],
        out,
        quiet=False,
    )
    for i in (1, 2, 3):  # each SuperNode is training round 1: its reply is yet to be pushed
        federation.wait_for_log(f"supernode-{i}", "Receiving: train message", proc, 420)
    back = federation.restart_superlink()
    _wait_for_round(federation, proc, earlier, 420)
    federation.kill("supernode-2")  # SIGKILL: the node, its SuperExec and its ClientApp die without a goodbye
    took, node_2_again, refused = federation.restart_node(2)
    # activated under the id of its registered key; the attempts before that were refused (exit 305)
    assert node_2_again == node_2
    assert set(refused) <= {305}, refused
    printed = _finish(federation, proc, 600).splitlines()
    print(
        f"deployed run: {time.monotonic() - t0:.0f} s; the SuperLink served again {back:.0f} s after its kill; "
        f"supernode-2 activated again under the same node id {took:.0f} s after the kill, after "
        f"{len(refused)} refused start(s)"
    )

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2, summary
    # stdout: one progress line per round while the run went on (as `fedsim run` words it), then the outcome
    assert [line.split(" | ")[0] for line in printed[:2]] == ["round 1/2", "round 2/2"], printed
    final = f"{summary['primary_metric']} {summary['final_metrics']['primary_metric']:.4f}"
    assert len(printed) == 3 and printed[2].endswith(f" completed: 2 rounds, {final}; results in {out}"), printed
    assert printed[0].endswith(" | 3/3 clients answered"), printed[0]  # nothing lost in the SuperLink restart
    seeded = WirelessModel(checked_config({"run.clients": 3, "run.clients_per_round": 3, "run.seed": 7}))
    r1, r2 = rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    # round 1 went through the SuperLink restart as if there had been none
    assert [c["client_id"] for c in r1["clients"] if not c["dropped"]] == [0, 1, 2] and not r1["failures"], r1
    # the ServerApp said what it sent again (its log, through the restarted SuperLink's database)
    run_id = printed[2].split()[1]
    logged = federation.fedsim_flwr(["log", run_id, "test", "--show"], timeout=120)
    assert "[fedsim] the SuperLink" in logged.stdout + logged.stderr, (logged.stdout + logged.stderr)[-3000:]
    for r in rounds:
        answered = [c for c in r["clients"] if not c["dropped"]]
        for c in answered:
            assert CLIENT_FIELDS <= set(c), CLIENT_FIELDS - set(c)
            assert c["rate_bps"] > 0 and c["payload_bits"] > 0
            assert math.isclose(c["upload_time_s"], c["payload_bits"] / c["rate_bps"], rel_tol=1e-9)
        assert math.isclose(r["round_latency_s"], max(c["compute_time_s"] + c["upload_time_s"] for c in answered))
        assert r["uplink_bits_total"] == sum(c["payload_bits"] for c in answered)
        assert r["status"] == "ok" and "personal_accuracy" in r["metrics"]
    # supernode-2's node config put client 1 at 123 m with a 1.5 TFLOP/s device; the others keep the
    # seeded drop and speed: FLOPs per sample = compute_time_s * device_flops / num_samples must then
    # be one number for all three clients
    c1 = r1["clients"][1]
    assert math.isclose(c1["distance_m"], PROFILE_2["distance-m"])
    speeds = {0: seeded.device_flops[0], 1: PROFILE_2["device-flops"], 2: seeded.device_flops[2]}
    per_sample = [c["compute_time_s"] * speeds[c["client_id"]] / c["num_samples"] for c in r1["clients"]]
    assert all(math.isclose(f, per_sample[0], rel_tol=1e-9) for f in per_sample), per_sample
    assert not math.isclose(r1["clients"][0]["distance_m"], PROFILE_2["distance-m"])
    # Round 2: which of three things happened depends on timing, and the records must say which.
    # The SuperLink marked node 2 offline before it came back, and round 2 went on with the two live
    # nodes (run.min_clients_per_round=2) recording the lost one; or the killed node had already
    # taken round 2's message and the restarted one was activated before the SuperLink answered it
    # for the dead one, so the message is lost and run.client_timeout_s ends the wait; or the
    # restarted node re-activated in time and answered round 2's message itself.
    if [c["client_id"] for c in r2["clients"] if not c["dropped"]] == [0, 2]:
        assert [f["client_id"] for f in r2["failures"]] == [1], r2["failures"]
        reason = r2["failures"][0]["reason"]
        assert "Node Unavailable" in reason or f"no reply within run.client_timeout_s={CLIENT_TIMEOUT_S}" in reason
        answered_2 = False
        assert " | 2/3 clients answered, 1 failed (client 1: " in printed[1], printed[1]
    else:
        assert [c["client_id"] for c in r2["clients"] if not c["dropped"]] == [0, 1, 2] and not r2["failures"], r2
        answered_2 = True
        assert printed[1].endswith(" | 3/3 clients answered"), printed[1]
    for png in ("metric_vs_round.png", "metric_vs_uplink_bits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.toml").is_file()
    # tracking: the fetched records were replayed into TensorBoard on this side
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("metrics/primary_metric")]
    assert steps == [1, 2], steps
    # client state: on each supernode's own disk (supernode-2's survived its kill), nothing where the server said
    for node, client in ((1, 0), (2, 1), (3, 2)):
        kept = sorted((federation.root / NODE_STATE[node]).glob(f"*/client-{client:06d}/round-*.safetensors"))
        names = [p.name for p in kept]
        both = ["round-000001.safetensors", "round-000002.safetensors"]
        # a node killed after writing round 2's state but before replying keeps it
        assert names == both or (node == 2 and not answered_2 and names == both[:1]), names
    assert not list(federation.server_results.glob("*/client_state/client-*/round-*"))
    # the same three node ids are online, and they are all the SuperLink knows: no id was left behind
    assert federation.procs["supernode-2"].poll() is None, "the restarted supernode-2 exited"
    assert _nodes(federation) == dict.fromkeys(nodes_before, "online")
