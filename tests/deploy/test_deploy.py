"""fedsim on Flower's Deployment Engine: a real federation of local processes on 127.0.0.1 (slow).

The docker-compose.yml topology without Docker (see federation.py): TLS from docker/certs.sh,
SuperNode authentication, the ServerApp in its own SuperExec, three SuperNodes with node-config
partitions and channel profiles, and ``fedsim deploy run`` as the submit path. One federation
serves both runs: a 2-round FedSA-LoRA run, then a run during which a SuperNode is killed and restarted.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from fedsim.checks import checked_config
from fedsim.config import describe_keys
from fedsim.results import read_rounds
from fedsim.wireless import WirelessModel
from tests.deploy.federation import Federation
from tests.helpers.runs import CLIENT_FIELDS, SMALL

pytestmark = pytest.mark.slow

PROFILE_2 = {"distance-m": 123.0, "device-flops": 1.5e12}  # supernode-2 holds partition 1
NODE_STATE = {n: f"node-{n}-state" for n in (1, 2, 3)}  # each supernode keeps client state on its own disk


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


def test_deployed_run_records_and_client_state_on_the_supernodes(federation, tmp_path):
    """A FedSA-LoRA run: the records, supernode-2's channel profile, TensorBoard replayed on this
    side, and each client's B kept between rounds on its own SuperNode, under the node-config
    ``state-dir``, never where the server's message says (a node without one refuses: tested in
    tests/test_client_state.py)."""
    out = tmp_path / "deployed"
    t0 = time.monotonic()
    proc = federation.submit(
        ["--clients", "3", "--rounds", "2", "--clients-per-round", "3", "--seed", "7", *SMALL]
        + ["--set", "run.method=fedsa", "--set", "tracking.backends=tensorboard"],
        out,
    )
    assert _finish(federation, proc, 420) == str(out)
    print(f"deployed 2-round run: {time.monotonic() - t0:.0f} s")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2, summary
    seeded = WirelessModel(checked_config({"run.clients": 3, "run.clients_per_round": 3, "run.seed": 7}))
    rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert [c["client_id"] for c in r["clients"]] == [0, 1, 2]
        for c in r["clients"]:
            assert CLIENT_FIELDS <= set(c), CLIENT_FIELDS - set(c)
            assert c["rate_bps"] > 0 and c["payload_bits"] > 0 and not c["dropped"]
            assert math.isclose(c["upload_time_s"], c["payload_bits"] / c["rate_bps"], rel_tol=1e-9)
        assert math.isclose(r["round_latency_s"], max(c["compute_time_s"] + c["upload_time_s"] for c in r["clients"]))
        assert r["uplink_bits_total"] == sum(c["payload_bits"] for c in r["clients"])
        # supernode-2's node config put client 1 at 123 m with a 1.5 TFLOP/s device; the others keep
        # the seeded drop and speed: FLOPs per sample = compute_time_s * device_flops / num_samples
        # must then be one number for all three clients
        c1 = r["clients"][1]
        assert math.isclose(c1["distance_m"], PROFILE_2["distance-m"])
        speeds = {0: seeded.device_flops[0], 1: PROFILE_2["device-flops"], 2: seeded.device_flops[2]}
        per_sample = [c["compute_time_s"] * speeds[c["client_id"]] / c["num_samples"] for c in r["clients"]]
        assert all(math.isclose(f, per_sample[0], rel_tol=1e-9) for f in per_sample), per_sample
        assert not math.isclose(r["clients"][0]["distance_m"], PROFILE_2["distance-m"])
    for png in ("metric_vs_round.png", "metric_vs_uplink_bits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.toml").is_file()
    # tracking: the fetched records were replayed into TensorBoard on this side
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("metrics/primary_metric")]
    assert steps == [1, 2], steps
    # client state: on each supernode's own disk, nothing where the server said
    assert all(r["status"] == "ok" and not r["failures"] and "personal_accuracy" in r["metrics"] for r in rounds)
    for node, client in ((1, 0), (2, 1), (3, 2)):
        kept = sorted((federation.root / NODE_STATE[node]).glob(f"*/client-{client:06d}/round-*.safetensors"))
        assert [p.name for p in kept] == ["round-000001.safetensors", "round-000002.safetensors"]
    assert not list(federation.server_results.glob("*/client_state/client-*/round-*"))


def _nodes(fed: Federation) -> dict[str, str]:
    """Every node the SuperLink knows (``flwr supernode ls``): node id -> status."""
    proc = fed.fedsim_flwr(["supernode", "ls", "test", "--format", "json"])
    text = proc.stdout[proc.stdout.find("{") :]
    assert proc.returncode == 0 and text, f"flwr supernode ls failed\n{proc.stdout}\n{proc.stderr}"
    return {n["node-id"]: n["status"] for n in json.loads(text).get("nodes", [])}


def _online_nodes(fed: Federation) -> set[str]:
    return {node for node, status in _nodes(fed).items() if status == "online"}


def test_supernode_killed_and_restarted(federation, tmp_path):
    """SuperNode 2 is SIGKILLed after round 1 and restarted: round 2 goes on without it and says so.

    With SuperNode authentication the SuperLink keeps one node id per registered public key and
    activates the restarted SuperNode under it (flwr's Fleet ActivateNode looks the id up by key),
    so the same three node ids are online afterwards and no stale id is left behind; the
    partition id, hence the fedsim client id, comes from the node config and stays as well.
    """
    if "run.min_clients_per_round" not in {k for k, *_ in describe_keys()}:
        pytest.skip("needs run.min_clients_per_round (rounds that go on without a lost client)")
    nodes_before = _online_nodes(federation)
    assert len(nodes_before) == 3 and set(_nodes(federation)) == nodes_before
    node_2 = federation.activated_node_id(2, timeout_s=60)  # what supernode-2 logged at its first start
    assert str(node_2) in nodes_before
    out = tmp_path / "fault"
    earlier = set(federation.server_results.glob("*/rounds.jsonl"))
    t0 = time.monotonic()
    proc = federation.submit(
        ["--clients", "3", "--rounds", "2", "--clients-per-round", "3", "--seed", "7"]
        + ["--set", "run.min_clients_per_round=2", *SMALL],
        out,
    )
    deadline = time.monotonic() + 300
    rounds_file = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(set(federation.server_results.glob("*/rounds.jsonl")) - earlier)
        rounds_file = found[0] if found else None
        if rounds_file and rounds_file.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert rounds_file is not None and proc.poll() is None, f"round 1 never finished\n{federation.log_tail()}"
    federation.kill("supernode-2")  # SIGKILL: the node, its SuperExec and its ClientApp die without a goodbye
    took, node_2_again, refused = federation.restart_node(2)
    # activated under the id of its registered key; the attempts before that were refused (exit 305)
    assert node_2_again == node_2
    assert set(refused) <= {305}, refused
    _finish(federation, proc, 420)
    print(
        f"fault run: {time.monotonic() - t0:.0f} s; supernode-2 activated again under the same node id "
        f"{took:.0f} s after the kill, after {len(refused)} refused start(s)"
    )

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2, summary
    r1, r2 = read_rounds(out)
    assert [c["client_id"] for c in r1["clients"]] == [0, 1, 2] and not r1["failures"]
    # Which of two things happens depends on timing, and the records must say which: either the
    # SuperLink marked node 2 offline before it came back (round 2 goes on with the two live nodes,
    # run.min_clients_per_round=2, and records the lost one), or the restarted node re-activated
    # in time and answered round 2's pending message itself.
    assert r2["status"] == "ok"
    if [c["client_id"] for c in r2["clients"] if not c["dropped"]] == [0, 2]:
        assert [f["client_id"] for f in r2["failures"]] == [1], r2["failures"]
        assert "Node Unavailable" in r2["failures"][0]["reason"]
    else:
        assert [c["client_id"] for c in r2["clients"] if not c["dropped"]] == [0, 1, 2] and not r2["failures"], r2
    # the same three node ids are online, and they are all the SuperLink knows: no id was left behind
    assert federation.procs["supernode-2"].poll() is None, "the restarted supernode-2 exited"
    assert _nodes(federation) == dict.fromkeys(nodes_before, "online")
