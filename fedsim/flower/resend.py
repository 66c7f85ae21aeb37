"""A Grid for the Deployment Engine that carries a run through a SuperLink restart.

Flower 1.42's SuperLink keeps runs, nodes and messages in its ``--database`` (SQLite), so a
restarted SuperLink knows the run, its ServerApp and its SuperNodes again, and Flower's HTTP
clients retry a SuperLink that is away without limit. What a restart still loses (read in
``flwr/superlink/grid/http_grid.py`` and ``flwr/supernode/start_client_internal.py``):

- messages the ServerApp was pushing: their object-push session lives in the SuperLink's memory,
  so the push ends in ``ObjectPushError`` ("The push session may have expired or been replaced"),
  and the ServerApp would fail the run;
- replies a SuperNode was pushing: the SuperNode logs "Failed to send message" and drops the
  reply, so the ServerApp would wait for it for ever (or until ``run.client_timeout_s``);
- messages a SuperNode had taken but not yet fetched in full.

:class:`ResendingGrid` wraps the ServerApp's Grid: its ``send_and_receive`` pushes and pulls itself
and, after any sign that the SuperLink was away (a push or pull that raised, or Flower's HTTP client
retrying a connection), sends each message whose reply has not come yet again, as a new message.
Each client thus answers at least once; the first reply per original message is returned, with
``reply_to_message_id`` naming the original, so callers match replies as with Flower's own Grid.
A client computes the same reply to a request however often it gets it (every random stream is
keyed on seed, round, client and purpose), so the round's records are those of an uninterrupted
run; only wall-clock fields differ. An error reply (say the SuperLink's "node unavailable" for a
node that missed its heartbeats while the SuperLink was away) counts only once every copy of a
message has been answered and none with a result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from fedsim.core.engine import RunFailed

PULL_INTERVAL_S = 1.0
"""Seconds between pulls while replies are outstanding (Flower's own Grid waits 3 s)."""

SUPERLINK_AWAY_S = 900.0
"""How long a push or pull may keep failing (the SuperLink away, or refusing) before the run fails."""

# What flwr's HTTP retry invoker logs (flwr/supercore/retry/http_retry.py) when a call to the
# SuperLink failed and is retried: the SuperLink was unreachable at that moment.
RETRY_LOG_PREFIX = "Connection attempt failed"


class _RetryWatch(logging.Handler):
    """Counts Flower's "Connection attempt failed" warnings (logger ``flwr``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(RETRY_LOG_PREFIX):
            with self._lock:
                self.count += 1


class ResendingGrid:
    """``grid`` whose ``send_and_receive`` survives a SuperLink restart (see the module docstring).

    Every other attribute is ``grid``'s own. ``say`` receives one line per event worth a log line
    (the ServerApp's log: ``flwr log``).
    """

    def __init__(self, grid: Any, say=print, away_s: float = SUPERLINK_AWAY_S, interval_s: float = PULL_INTERVAL_S):
        self._grid = grid
        self._say = say
        self._away_s = away_s
        self._interval_s = interval_s
        self._watch = _RetryWatch()
        logging.getLogger("flwr").addHandler(self._watch)
        self.resent = 0
        """Messages sent again so far (for tests and logs)."""

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        originals = list(messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        origin: dict[str, int] = {}  # message id sent -> index into originals
        copies: dict[int, set[str]] = {i: set() for i in range(len(originals))}
        answered: dict[str, Message] = {}  # message id -> its reply
        done: dict[int, Message] = {}  # index -> the reply returned for it
        to_send = set(range(len(originals)))
        fresh: set[int] = set()  # pushed since the SuperLink was last seen away: an error reply is final
        first = True
        away_since: float | None = None
        while True:
            retries_before = self._watch.count
            try:
                if to_send:
                    order = sorted(to_send)
                    batch = originals if first else [_copy(originals[i]) for i in order]
                    ids = list(self._grid.push_messages(batch))
                    if len(ids) != len(batch):  # Flower returns [] for a payload the SuperLink refuses as too large
                        raise RunFailed(f"the SuperLink refused {len(batch)} message(s) (payload too large?)")
                    if not first:
                        self.resent += len(order)
                    first = False  # the callers read the originals' ids once pushed
                    for i, mid in zip(order, ids, strict=True):
                        if mid:
                            origin[mid] = i
                            copies[i].add(mid)
                            fresh.add(i)
                    to_send = {i for i, mid in zip(order, ids, strict=True) if not mid}
                waiting = [mid for mid, i in origin.items() if i not in done and mid not in answered]
                replies = list(self._grid.pull_messages(waiting)) if waiting else []
            except RunFailed:
                raise
            except Exception as e:  # a push session lost with the SuperLink, a refusal while it starts, ...
                now = time.monotonic()
                away_since = away_since or now
                if now - away_since > self._away_s:
                    raise RunFailed(
                        f"the SuperLink did not take messages for {self._away_s:g} s: {type(e).__name__}: {e}"
                    ) from e
                if away_since == now:
                    self._say(f"[fedsim] the SuperLink did not take the messages ({type(e).__name__}); sending again")
                first = False  # the originals' ids may be known to the SuperLink already: new messages
                fresh.clear()
                to_send = {i for i in range(len(originals)) if i not in done}
                time.sleep(self._interval_s * 3)
                continue
            away_since = None
            away = self._watch.count > retries_before  # Flower retried a call: the SuperLink was away
            if away:
                fresh.clear()
            for reply in replies:
                mid = reply.metadata.reply_to_message_id
                i = origin.get(mid)
                if i is None or i in done:
                    continue
                answered[mid] = reply
                if not reply.has_error():
                    done[i] = reply
                elif i in fresh and copies[i] <= set(answered):  # every copy answered, all with errors
                    done[i] = reply
            if away:
                again = {i for i in range(len(originals)) if i not in done}
                if again:
                    self._say(
                        f"[fedsim] the SuperLink was unreachable; sending {len(again)} message(s) whose reply "
                        "has not come again"
                    )
                    to_send |= again
            if len(done) == len(originals) or (deadline is not None and time.monotonic() > deadline):
                break
            if not to_send:
                time.sleep(self._interval_s)
        out = []
        for i, reply in sorted(done.items()):
            reply.metadata.__dict__["_reply_to_message_id"] = originals[i].metadata.message_id
            out.append(reply)
        return out


def _copy(message: Message) -> Message:
    """The same request as a new message (a new id: created now)."""
    meta = message.metadata
    return Message(
        message.content, dst_node_id=meta.dst_node_id, message_type=meta.message_type, group_id=meta.group_id
    )
