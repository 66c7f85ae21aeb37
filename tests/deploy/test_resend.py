"""ResendingGrid: what a SuperLink restart loses is sent again (fast, against a scripted SuperLink)."""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedsim.flower.resend import RETRY_LOG_PREFIX, ResendingGrid


class ScriptedSuperLink:
    """A Grid's push and pull over a dict of messages, with the failures of a restart on cue.

    ``fail_push``: pushes that raise (a lost push session); ``lose``: node ids whose first message
    is taken and never answered (a reply the SuperNode could not push); ``retry_log_at_pull``: the
    pull at which Flower's HTTP client logs a retried connection; ``error_first``: node ids whose first
    message gets the SuperLink's error reply (a node marked offline while the SuperLink was away).
    """

    def __init__(self, fail_push=0, lose=(), retry_log_at_pull=None, error_first=()):
        self.fail_push, self.lose, self.retry_log_at_pull = fail_push, set(lose), retry_log_at_pull
        self.error_first = set(error_first)
        self.pushed: list[Message] = []
        self.pulls = 0

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        if self.fail_push:
            self.fail_push -= 1
            raise RuntimeError("ObjectPushError: the push session may have expired")
        self.pushed += messages
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls == self.retry_log_at_pull:
            logging.getLogger("flwr").warning(f"{RETRY_LOG_PREFIX}, retrying in 0.50 seconds")
        out = []
        for m in list(self.pushed):
            if m.metadata.message_id not in ids:
                continue
            node = m.metadata.dst_node_id
            if node in self.lose:
                self.lose.discard(node)
                self.pushed.remove(m)
                continue
            if node in self.error_first:
                self.error_first.discard(node)
                reply = Message(Error(code=0, reason="Node Unavailable"), reply_to=m)
            else:
                # the client's reply depends only on the request: the same for every copy
                reply = Message(RecordDict({"r": ConfigRecord({"x": int(m.content["q"]["x"]) * 2})}), reply_to=m)
            out.append(reply)
        return out


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What the ServerApp process has set when it builds messages (Flower's TaskIdentity)."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


def _messages(n=3):
    return [
        Message(RecordDict({"q": ConfigRecord({"x": i})}), dst_node_id=100 + i, message_type="train") for i in range(n)
    ]


def _answers(grid, msgs):
    replies = grid.send_and_receive(msgs, timeout=None)
    by_id = {m.metadata.message_id: i for i, m in enumerate(msgs)}
    return {
        by_id[r.metadata.reply_to_message_id]: (r.content["r"]["x"] if not r.has_error() else "error") for r in replies
    }


@pytest.mark.parametrize(
    ("link", "resent"),
    [
        (ScriptedSuperLink(), 0),
        (ScriptedSuperLink(fail_push=1), 3),  # the first push failed: all three sent as new messages
        (ScriptedSuperLink(lose=[101], retry_log_at_pull=1), 1),  # a lost reply, noticed by the retry
        (ScriptedSuperLink(error_first=[102], retry_log_at_pull=1), 1),  # offline while the SuperLink was away
    ],
    ids=["uninterrupted", "push-lost", "reply-lost", "node-unavailable-then-back"],
)
def test_every_request_is_answered_once_whatever_the_restart_lost(link, resent):
    grid = ResendingGrid(link, say=lambda _line: None, interval_s=0.01)
    msgs = _messages()
    assert _answers(grid, msgs) == {0: 0, 1: 2, 2: 4}
    assert grid.resent == resent


def test_an_error_counts_when_no_copy_answers_otherwise():
    link = ScriptedSuperLink(error_first=[101])  # no sign of a restart: the error is the answer
    grid = ResendingGrid(link, say=lambda _line: None, interval_s=0.01)
    assert _answers(grid, _messages()) == {0: 0, 1: "error", 2: 4}
    assert grid.resent == 0


def test_a_superlink_that_stays_away_fails_the_run():
    from fedsim.core.engine import RunFailed

    grid = ResendingGrid(ScriptedSuperLink(fail_push=10**6), say=lambda _line: None, away_s=0.05, interval_s=0.01)
    with pytest.raises(RunFailed, match="did not take messages for 0.05 s"):
        grid.send_and_receive(_messages(), timeout=None)


def test_a_timeout_returns_what_came():
    link = ScriptedSuperLink(lose=[100])  # lost, and nothing says the SuperLink was away
    grid = ResendingGrid(link, say=lambda _line: None, interval_s=0.01)
    replies = grid.send_and_receive(_messages(), timeout=0.1)
    assert len(replies) == 2


def test_messages_the_superlink_refuses_as_too_large_fail_the_run_at_once():
    from fedsim.core.engine import RunFailed

    class TooLarge(ScriptedSuperLink):
        def push_messages(self, messages):
            return []  # what Flower's Grid returns for HTTP 413

    grid = ResendingGrid(TooLarge(), say=lambda _line: None, interval_s=0.01)
    with pytest.raises(RunFailed, match="payload too large"):
        grid.send_and_receive(_messages(), timeout=None)
