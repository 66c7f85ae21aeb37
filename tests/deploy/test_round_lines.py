"""``fedsim deploy run``'s round lines: a rounds.jsonl as the round engine writes it, followed as it grows (fast)."""

from __future__ import annotations

from pathlib import Path

from fedsim.app.deploy import RoundFollower, local_reader
from fedsim.app.progress import RoundText
from fedsim.core.runner import run
from tests.helpers.engine import InProcessClients, StubHost, make_cfg


def _recorded(tmp_path: Path) -> list[bytes]:
    """The lines of a real rounds.jsonl: 3 rounds, 3 of 6 clients each; in round 2 client 5 crashes."""
    cfg = make_cfg(**{"run.min_clients_per_round": 1})
    clients = InProcessClients(crash=[(2, 5)])  # round 2 samples clients 0, 1 and 5
    run(cfg, StubHost(), lambda: (clients, {}), tmp_path / "run")
    lines = (tmp_path / "run" / "rounds.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    return lines


def test_round_lines_follow_the_file_as_it_grows_and_name_the_failures(tmp_path):
    lines = _recorded(tmp_path)
    live = tmp_path / "live" / "rounds.jsonl"  # the ServerApp's file, seen while it is being written
    shown: list[str] = []
    follower = RoundFollower(local_reader(live), RoundText(3, "score", True), shown.append)
    follower.poll()  # no file yet
    live.parent.mkdir()
    live.write_bytes(lines[0] + lines[1][:40])  # round 2 half written
    follower.poll()
    assert len(shown) == 1 and shown[0].startswith("round 1/3 | score ")
    with open(live, "ab") as f:
        f.write(lines[1][40:] + lines[2])
    follower.poll()
    follower.poll()  # nothing new: nothing shown twice
    assert [s.split(" | ")[0] for s in shown] == ["round 1/3", "round 2/3", "round 3/3"], shown
    import json

    records = [json.loads(x) for x in lines]
    assert [bool(r["failures"]) for r in records] == [False, True, False]  # the crash was sampled
    for line, record in zip(shown, records, strict=True):
        assert f"T {record['round_latency_s']:.3f} s" in line
        n = len(record["clients"])
        if record["failures"]:
            assert [f["client_id"] for f in record["failures"]] == [5]
            assert f"{n - 1}/{n} clients answered, 1 failed (client 5: RuntimeError: injected)" in line, line
        else:
            assert line.endswith(f"| {n}/{n} clients answered"), line
    # the best so far, in the metric's direction; the cumulative uplink
    best = max(r["metrics"]["primary_metric"] for r in records)
    assert f"best {best:.4f}, higher is better" in shown[-1]
    assert f"{sum(r['uplink_bits_total'] for r in records) / 1e6:.1f} Mbit" in shown[-1]


def test_a_rewritten_file_shows_no_round_twice(tmp_path):
    """A ServerApp that resumes rewrites rounds.jsonl from the start: rounds already shown stay shown once."""
    lines = _recorded(tmp_path)
    live = tmp_path / "rounds.jsonl"
    live.write_bytes(lines[0] + lines[1])
    shown: list[str] = []
    follower = RoundFollower(local_reader(live), RoundText(3), shown.append)
    follower.poll()
    follower.offset = 0  # as if the file had been replaced
    live.write_bytes(b"".join(lines))
    follower.poll()
    assert [s.split(" | ")[0] for s in shown] == ["round 1/3", "round 2/3", "round 3/3"]


def test_a_failed_round_says_so():
    record = {
        "round": 2,
        "status": "failed",
        "clients": [{"dropped": True}, {"dropped": True}],
        "failures": [{"client_id": 0, "reason": "x" * 200}, {"client_id": 1, "reason": "Node Unavailable"}],
        "round_latency_s": 0.0,
        "uplink_bits_total": 0,
        "metrics": None,
    }
    line = RoundText(5, "accuracy").line(record)
    assert line.startswith("round 2/5 FAILED | accuracy - (higher is better)")
    assert "0/2 clients answered, 2 failed (client 0: " + "x" * 77 + "... and 1 more)" in line
