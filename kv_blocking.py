"""Blocking pops (BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP BZPOPMIN BZPOPMAX BZMPOP) under Raft.

A blocked client is part of the replicated state, so that serving it is deterministic and
happens inside the write that made data available, exactly as Redis serves blocked clients
right after the command (or EXEC) that pushed:

    BLOCK   ["BLOCK", wid, keys, sm_name, sm_args]  in a "CMD" entry, proposed by the primary
            for a blocking command: apply runs the non-blocking form (sm_name, sm_args) at
            once; when it finds nothing (None or NULL_ARRAY), the waiter `wid` is registered,
            FIFO per key, and the result is BLOCKED.
    UNBLOCK ["UNBLOCK", wid]  the waiter's timeout passed (or its client left): 1 if it was
            still blocked (it is removed; the client gets the timeout reply), 0 if a write
            served it first (its reply was already delivered).
    serving Any entry that creates a key somebody is blocked on (a list or sorted set appearing
            where there was none: Redis 7.0 signals a key ready when it is added) marks the key
            ready.  After the entry's commands, ready keys are served in the order they became
            ready; for each, its waiters of the key's type in the order they blocked, each
            running its non-blocking form on that one key, while the key holds elements.  A
            BLMOVE that creates its destination makes that key ready in turn.

So an element is popped by one log entry and delivered at most once, and a push that serves a
waiter pops in the same entry on every node.  Waiters belong to the term of their BLOCK entry:
the first entry of a later term drops them all (their clients were connected to the previous
primary, which told them to retry when it stepped down), so a new primary never pops for a
client it does not have.  An entry of the old term committed late may still serve one: that
client got an indefinite error, as for any write whose outcome is unknown.

Layout
    BLOCKED         the result of a BLOCK that registered its waiter
    BlockedKeys     the replicated part, one per KeyValueStore (`store.blocked`): the waiters,
                    their FIFO per key, the ready keys, snapshot state
    Waiters         the primary's part, one per node: the connections waiting for their wid,
                    run(conn, cmd) for kv_handler, deliver() called from apply
"""

from __future__ import annotations

import itertools
import logging
import secrets
import select
import socket
import threading
import time
from collections import deque

from kv_protocol import CommandError
from kv_values import NULL_ARRAY

log = logging.getLogger("kvstore")

__all__ = ["BLOCKED", "BlockedKeys", "Waiters", "is_empty"]


class _Blocked:
    __slots__ = ()

    def __repr__(self):
        return "BLOCKED"


BLOCKED = _Blocked()


def is_empty(result) -> bool:
    """A non-blocking form found nothing to pop (it answers nil)."""
    return result is None or result is NULL_ARRAY


class BlockedKeys:
    """The replicated waiters of one state machine.  waiters: wid -> [keys, sm_name, sm_args,
    key_type] in the order they blocked; on: key -> deque of wids (FIFO); term: the term of
    every registered waiter; ready: keys made ready by the entry being applied."""
    __slots__ = ("waiters", "on", "term", "ready", "on_served")

    def __init__(self):
        self.waiters: dict[str, list] = {}
        self.on: dict[str, deque] = {}
        self.term = 0
        self.ready: deque = deque()
        self.on_served = None      # (wid, result) -> None: the primary's Waiters.deliver

    def __len__(self) -> int:
        return len(self.waiters)

    def new_term(self, term: int) -> None:
        """An entry of `term` is applied: waiters of an earlier term are gone."""
        if term != self.term:
            if self.waiters:
                self.waiters.clear()
                self.on.clear()
            self.term = term

    def add(self, wid: str, keys: list, sm: str, args: list, key_type: str) -> None:
        self.waiters[wid] = [keys, sm, args, key_type]
        for k in dict.fromkeys(keys):
            q = self.on.get(k)
            if q is None:
                q = self.on[k] = deque()
            q.append(wid)

    def remove(self, wid: str) -> bool:
        w = self.waiters.pop(wid, None)
        if w is None:
            return False
        for k in dict.fromkeys(w[0]):
            q = self.on.get(k)
            if q is not None:
                q.remove(wid)
                if not q:
                    del self.on[k]
        return True

    def created(self, key: str) -> None:
        """A key appeared (kv_state calls this for every new container key)."""
        if key in self.on:
            self.ready.append(key)

    def serve(self, store, now: int) -> None:
        """Serve the waiters of the ready keys (see the module docstring).  store._exec runs a
        waiter's non-blocking form on the one ready key."""
        ready = self.ready
        served = self.on_served
        type_of = store.type_name_of
        while ready:
            key = ready.popleft()
            q = self.on.get(key)
            if not q:
                continue
            for wid in list(q):
                kt = type_of(key, now)
                if kt is None:
                    break     # emptied (and deleted) by the waiters served before
                keys, sm, args, key_type = self.waiters[wid]
                if key_type != kt:
                    continue  # a BZPOPMIN waiter stays blocked while the key is a list (7.0)
                result = store._exec(sm, _on_key(args, key), now, True)
                if is_empty(result):
                    continue
                self.remove(wid)
                if served is not None:
                    served(wid, result)

    # -- snapshots
    def state(self) -> dict | None:
        if not self.waiters:
            return None
        return {"term": self.term, "waiters": [[wid, *w] for wid, w in self.waiters.items()]}

    def restore(self, st: dict | None, encode, decode) -> None:
        self.waiters.clear()
        self.on.clear()
        self.ready.clear()
        if not st:
            self.term = 0
            return
        self.term = int(st["term"])
        for wid, keys, sm, args, key_type in st["waiters"]:
            self.add(wid, list(keys), sm, decode(args), key_type)


def _on_key(args: list, key: str) -> list:
    """A waiter's arguments narrowed to the ready key: the key list of BLPOP/BLMPOP/BZMPOP
    forms becomes [key] (Redis 7.0 pops from the key that became ready); BLMOVE's single
    source key stays."""
    if args and type(args[0]) is list:
        return [[key], *args[1:]]
    return args


# ---------------------------------------------------------------------------------------------
class _Slot:
    __slots__ = ("event", "result", "blocked")

    def __init__(self):
        self.event = threading.Event()
        self.result = None
        self.blocked = False    # its BLOCK entry registered it (INFO blocked_clients)


POLL = 0.1    # how often a blocked connection checks its role, deadline and socket


class Waiters:
    """The primary's blocked connections.  run() is the handler of a Blocking command (on the
    connection's own thread, which waits as the client does); deliver() is store.blocked's
    on_served, called from apply on the manager thread (it only sets an event)."""

    def __init__(self, node):
        self.node = node
        self.slots: dict[str, _Slot] = {}
        self._ids = itertools.count(1)
        self._boot = secrets.token_hex(4)
        self.lock = threading.Lock()

    def deliver(self, wid: str, result) -> None:
        slot = self.slots.get(wid)
        if slot is not None:
            slot.result = result
            slot.event.set()

    def blocked_count(self) -> int:
        return sum(1 for s in list(self.slots.values()) if s.blocked and not s.event.is_set())

    def run(self, c, cmd, resolve, entry_value, reply):
        """Run one blocking command for connection c.  resolve/entry_value/reply are
        kv_commands' (passed in: kv_commands imports this module)."""
        node = c.node
        if node.role != "primary":
            raise node.not_primary()
        name_args, _ = resolve(cmd.command, node.clock_ms())
        name = name_args[0]
        wid = f"{node.node_id}.{self._boot}.{next(self._ids)}"
        slot = _Slot()
        self.slots[wid] = slot
        c.blocking = True
        try:
            result = node.write("CMD", None, entry_value([["BLOCK", wid, list(cmd.keys), name, name_args[1:]]]),
                                "json")
            if result is not BLOCKED:
                return reply(c, name, result)
            slot.blocked = True
            deadline = time.monotonic() + cmd.timeout if cmd.timeout > 0 else None
            watch_sock = True
            while True:
                wait = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
                if slot.event.wait(wait):
                    return reply(c, name, slot.result)
                if node.role != "primary":
                    raise self._unblocked(node)
                gone = False
                if watch_sock:
                    state = _peer_state(c.sock)
                    gone = state == "closed"
                    watch_sock = state == "idle"   # data pipelined behind: stop polling it
                if gone or (deadline is not None and time.monotonic() >= deadline):
                    try:
                        r = node.write("CMD", None, entry_value([["UNBLOCK", wid]]), "json")
                    except CommandError as e:
                        if slot.event.is_set():
                            return reply(c, name, slot.result)
                        raise self._unblocked(node) if e.code == "NOT_PRIMARY" else e
                    if r == 1:
                        return reply(c, name, cmd.empty)
                    if slot.event.wait(5.0):   # served by an entry before UNBLOCK: already set
                        return reply(c, name, slot.result)
                    raise CommandError("TIMEOUT", "blocked client was served but its reply was lost",
                                       definite=False)
        finally:
            c.blocking = False
            del self.slots[wid]

    @staticmethod
    def _unblocked(node) -> CommandError:
        """The error of a client blocked on a node that stopped being primary: NOT_PRIMARY (RESP
        READONLY, and the connection is closed: Sentinel clients rediscover the primary and
        retry), indefinite - a write of the old term may still have served it."""
        e = node.not_primary("UNBLOCKED force unblock from blocking operation, instance state changed "
                             "(master -> replica?)")
        e.definite = False
        return e


def _peer_state(sock) -> str:
    """"idle" (nothing to read), "data" (the client pipelined more), or "closed"."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return "idle"
        return "data" if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) else "closed"
    except BlockingIOError:
        return "idle"
    except (OSError, ValueError):
        return "closed"
