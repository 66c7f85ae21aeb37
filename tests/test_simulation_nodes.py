"""The Simulation Runtime hooks of fedsim.flower.simulation: the message injector polls only the
nodes the ServerApp is waiting on, and sees every message sent to them."""

import queue
import threading
import time

from fedsim.flower.simulation import _SimulatedNodes


class FakeState:
    """A LinkState's ``get_message_ins``: one pending message per node in ``pending``."""

    def __init__(self):
        self.asked: list[int] = []
        self.pending: dict[int, list[str]] = {}
        self.lock = threading.Lock()

    def get_message_ins(self, node_id, limit):
        with self.lock:
            self.asked.append(node_id)
            waiting = self.pending.get(node_id, [])
            return [waiting.pop(0)] if waiting else []


class FakeGrid:
    def __init__(self, state):
        self.state = state

    def get_node_ids(self):
        return [1, 2, 3]

    def send_and_receive(self, messages, *, timeout=None):
        with self.state.lock:
            for m in messages:
                self.state.pending.setdefault(m.metadata.dst_node_id, []).append(f"to-{m.metadata.dst_node_id}")
        deadline = time.monotonic() + 10
        while any(self.state.pending.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return ["reply"] * len(messages)


class Msg:
    def __init__(self, node_id):
        self.metadata = type("Metadata", (), {"dst_node_id": node_id})()


def test_the_injector_asks_only_for_the_nodes_in_flight_and_delivers_their_messages():
    nodes, state, delivered, stop = _SimulatedNodes(), FakeState(), queue.Queue(), threading.Event()
    mapping = {n: n for n in range(10_000)}  # what Flower's own injector would poll every 0.1 s
    injector = threading.Thread(target=nodes._inject, args=(state, delivered, mapping, stop), daemon=True)
    injector.start()
    try:
        grid = nodes.watched(FakeGrid(state))
        assert grid.get_node_ids() == [1, 2, 3]  # everything else passes through
        replies = grid.send_and_receive([Msg(7), Msg(4242)], timeout=None)
        assert replies == ["reply", "reply"]
        got = sorted(delivered.get(timeout=5) for _ in range(2))
        assert got == ["to-4242", "to-7"]
        time.sleep(0.3)  # a few idle polls after the send has returned
        with state.lock:
            asked = set(state.asked)
        assert asked == {7, 4242}  # never the other 9,998 nodes
        assert nodes._addressed == {}
    finally:
        stop.set()
        injector.join(timeout=5)
