"""Blocking pops under Raft (kv_blocking): served FIFO inside the write that makes data
available, on every node alike; a waiter survives snapshot/restore; a timeout, a client that
leaves and a primary that steps down each end the wait the way the docs say; and a queue drained
by BRPOP consumers through two kill -9s of the primary delivers every acknowledged push exactly
once or leaves it in the list (the only unknown pops are the ones whose clients got an error).

The Redis-visible order of serving (who gets which element, BLMOVE chains, MULTI) is compared
with a real redis-server by test_redis_diff.py's blocking family.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import pytest
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kv_blocking import BLOCKED  # noqa: E402
from kv_localcluster import LocalCluster, wait_until  # noqa: E402
from kv_state import KeyValueStore, decode_args  # noqa: E402
from test_redis_diff import Resp  # noqa: E402


class _E:
    """A log entry as apply() sees it."""
    def __init__(self, index, term, cmds, t=1_000):
        self.index, self.term, self.op, self.key, self.kind = index, term, "CMD", None, "json"
        self.value = {"t": t, "c": cmds}


def _apply_all(stores, entries):
    return [[s.apply(e) for e in entries] for s in stores]


def _served(store):
    got = []
    store.blocked.on_served = lambda wid, result: got.append((wid, result))
    return got


def test_waiters_are_served_fifo_in_the_pushing_entry_and_survive_a_snapshot():
    a = KeyValueStore()
    got_a = _served(a)
    log = [
        _E(1, 1, [["BLOCK", "w1", ["q"], "BLPOP", [["q"], "R"]]]),
        _E(2, 1, [["BLOCK", "w2", ["q", "r"], "BLPOP", [["q", "r"], "L"]]]),
        _E(3, 1, [["BLOCK", "w3", ["q"], "LMOVE", ["q", "d", "LEFT", "LEFT"]]]),
    ]
    assert [a.apply(e) for e in log] == [BLOCKED] * 3
    # a restored copy of the state with the three waiters behaves identically from here on
    b = KeyValueStore()
    items = list(a.items())
    b.restore(items, a.last_applied)
    got_b = _served(b)
    push = _E(4, 1, [["RPUSH", "q", [{"r": "YQ=="}, {"r": "Yg=="}]]])      # a, b
    for s in (a, b):
        assert s.apply(push) == 2
    # w1 (first) pops from the right, w2 from the left; w3 still waits, q is gone
    want = [("w1", ["q", b"b"]), ("w2", ["q", b"a"])]
    assert got_a == want and got_b == want
    assert len(a.blocked) == len(b.blocked) == 1 and "q" not in a.data
    assert a.digest_hex() == b.digest_hex()
    # the next push serves w3 (LMOVE into d); a timeout for it afterwards finds it gone
    for s in (a, b):
        s.apply(_E(5, 1, [["LPUSH", "q", [{"r": "Yw=="}]]]))
        assert s.apply(_E(6, 1, [["UNBLOCK", "w3"]])) == 0
    assert got_a[-1] == ("w3", b"c") == got_b[-1]
    assert a.data["d"][1].h == b.data["d"][1].h and len(a.blocked) == 0


def test_a_later_term_drops_the_waiters_and_unblock_removes_one():
    s = KeyValueStore()
    got = _served(s)
    s.apply(_E(1, 3, [["BLOCK", "w1", ["q"], "BLPOP", [["q"], "L"]]]))
    s.apply(_E(2, 3, [["BLOCK", "w2", ["q"], "BLPOP", [["q"], "L"]]]))
    assert s.apply(_E(3, 3, [["UNBLOCK", "w1"]])) == 1 and len(s.blocked) == 1
    # a new primary's entry: w2's client belonged to the old one; the push stays in the list
    s.apply(_E(4, 4, [["RPUSH", "q", [{"r": "eA=="}]]]))
    assert got == [] and len(s.blocked) == 0 and len(s.data["q"][1]) == 1


def test_block_answers_at_once_when_there_is_data_or_a_wrong_type():
    s = KeyValueStore()
    s.apply(_E(1, 1, [["RPUSH", "q", [{"r": "eA=="}]]]))
    assert s.apply(_E(2, 1, [["BLOCK", "w", ["q"], "BLPOP", [["q"], "L"]]])) == ["q", b"x"]
    s.apply(_E(3, 1, [["SET", "str", ("bytes", b"v"), "", 0, None]]))
    r = s.apply(_E(4, 1, [["BLOCK", "w", ["str"], "BLPOP", [["str"], "L"]]]))
    assert getattr(r, "message", "").startswith("WRONGTYPE") and len(s.blocked) == 0
    assert decode_args([{"r": "eA=="}]) == [b"x"]
    assert s.apply(_E(5, 1, [["BLOCK", "w", ["q"], "LMPOP", [["q"], "L", 1]]])) is BLOCKED


# --------------------------------------------------------------------------------- live cluster
@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n=3) as c:     # stops every node it started, by PID, on the way out
        c.start()
        c.wait_for_single_primary()
        yield c


def _client(c, node, **kw) -> redis.Redis:
    host, port = c.addr(node)
    return redis.Redis(host=host, port=port, socket_timeout=30, **kw)


def _blocked(r) -> int:
    return r.info("clients")["blocked_clients"]


def test_served_on_every_node_and_timeout_and_a_client_that_leaves(cluster):
    c = cluster
    p = c.wait_for_single_primary()
    r = _client(c, p)
    r.delete("bq", "bdst")
    out = {}

    def waiter(name, *args):
        out[name] = _client(c, p).execute_command(*args)

    t1 = threading.Thread(target=waiter, args=("pop", "BRPOP", "bq", "0"))
    t1.start()
    wait_until(lambda: _blocked(r) == 1, 10, "BRPOP to block")
    t2 = threading.Thread(target=waiter, args=("move", "BLMOVE", "bq", "bdst", "LEFT", "RIGHT", "0"))
    t2.start()
    wait_until(lambda: _blocked(r) == 2, 10, "BLMOVE to block")
    assert r.rpush("bq", "x", "y") == 2
    t1.join(10)
    t2.join(10)
    assert out == {"pop": (b"bq", b"y"), "move": b"x"}   # redis-py makes BRPOP a tuple
    sts = c.wait_converged()
    assert len({s["digest"] for s in sts.values()}) == 1
    for n in c.ids:   # the pops happened on the secondaries too: their state, not the reply
        sec = _client(c, n)
        sec.execute_command("READONLY")
        assert sec.lrange("bdst", 0, -1) == [b"x"] and sec.exists("bq") == 0
    # a timeout answers nil
    assert r.execute_command("BLPOP", "bq", "0.2") is None
    # a client that goes away stops waiting: the next push stays in the list
    gone = _client(c, p)
    gone_conn = gone.connection_pool.get_connection()
    gone_conn.send_command("BLPOP", "bq", "0")
    wait_until(lambda: _blocked(r) == 1, 10, "the leaving client to block")
    gone_conn.disconnect()
    wait_until(lambda: _blocked(r) == 0, 10, "the node to notice the client left")
    assert r.rpush("bq", "kept") == 1
    c.wait_converged()
    assert r.lrange("bq", 0, -1) == [b"kept"]


def test_a_primary_that_steps_down_unblocks_its_clients_with_a_retry_error(cluster):
    c = cluster
    p = c.wait_for_single_primary()
    r = _client(c, p)
    r.delete("sq")
    waiting = [Resp(c.port(p)) for _ in range(2)]
    for w in waiting:
        w.sock.sendall(b"*3\r\n$5\r\nBLPOP\r\n$2\r\nsq\r\n$1\r\n0\r\n")
    wait_until(lambda: _blocked(r) == 2, 10, "two clients to block")
    target = next(n for n in c.ids if n != p)
    assert c.send(p, f"TRANSFER {target}")["status"] == "OK"
    for w in waiting:
        w.sock.settimeout(15)
        kind, msg = w._read()     # within the timeout, not a hang
        # READONLY: what Sentinel-aware clients (redis-py's among them) take as "reconnect"
        assert kind == "-" and msg.startswith("READONLY ") and "UNBLOCKED" in msg, (kind, msg)
        assert w.f.read() == b"", "the connection stays open after the unblock error"
        w.close()
    q = c.wait_for_single_primary()
    assert q == target
    # the new primary serves nobody of the old term: a push stays
    rq = _client(c, q)
    assert rq.rpush("sq", "v") == 1 and rq.lrange("sq", 0, -1) == [b"v"]


# --------------------------------------------------------------------------------- the queue
ITEMS = 10_000
PRODUCERS = 2
CONSUMERS = 4


class Queue:
    """Producers LPUSH distinct items, consumers BRPOP them, both through failovers: every
    client re-finds the primary after an error and records each outcome as acknowledged or
    unknown (an error after sending: the push or pop may or may not have happened)."""

    def __init__(self, c: LocalCluster, deadline: float):
        self.c = c
        self.deadline = deadline
        self.lock = threading.Lock()
        self.pushed: list = []          # acknowledged pushes
        self.push_unknown: list = []
        self.popped: list = []          # acknowledged pops (may hold duplicates: checked)
        self.pop_unknown = 0
        self.producing = PRODUCERS
        self.errors: list = []

    def connect(self) -> redis.Redis:
        while time.monotonic() < self.deadline:
            for n in self.c.ids:
                try:
                    r = _client(self.c, n, socket_connect_timeout=1)
                    if r.execute_command("ROLE")[0] == b"master":
                        return r
                except (redis.RedisError, OSError):
                    continue
            time.sleep(0.05)
        raise AssertionError("no primary to connect to before the deadline")

    def produce(self, pid: int) -> None:
        try:
            r = self.connect()
            for i in range(ITEMS // PRODUCERS):
                item = f"p{pid}-{i:05d}"
                try:
                    r.lpush("queue", item)
                    with self.lock:
                        self.pushed.append(item)
                except (redis.RedisError, OSError) as e:
                    with self.lock:
                        self.push_unknown.append((item, repr(e)))
                    r = self.connect()
        except Exception as e:  # noqa: BLE001 - recorded and asserted on by the test
            self.errors.append(repr(e))
        finally:
            with self.lock:
                self.producing -= 1

    def consume(self) -> None:
        try:
            r = self.connect()
            while time.monotonic() < self.deadline:
                try:
                    got = r.brpop(["queue"], timeout=1)
                except (redis.RedisError, OSError):
                    with self.lock:
                        self.pop_unknown += 1
                    r = self.connect()
                    continue
                if got is not None:
                    with self.lock:
                        self.popped.append(got[1].decode())
                elif self.producing == 0:
                    try:
                        if r.llen("queue") == 0:
                            return
                    except (redis.RedisError, OSError):
                        r = self.connect()
        except Exception as e:  # noqa: BLE001 - recorded and asserted on by the test
            self.errors.append(repr(e))


def test_queue_through_two_primary_kills_loses_and_repeats_nothing():
    with LocalCluster(n=3) as c:
        c.start()
        c.wait_for_single_primary()
        q = Queue(c, time.monotonic() + 240)
        threads = [threading.Thread(target=q.produce, args=(i,)) for i in range(PRODUCERS)] + \
                  [threading.Thread(target=q.consume) for _ in range(CONSUMERS)]
        for t in threads:
            t.start()
        kills = []
        for at in (ITEMS // 3, 2 * ITEMS // 3):
            wait_until(lambda: len(q.pushed) + len(q.push_unknown) >= at or q.producing == 0, 120,
                       f"{at} pushes")
            p = c.wait_for_single_primary()
            c.kill(p)
            kills.append((p, len(q.pushed), len(q.popped)))
            c.wait_for_single_primary(exclude=[p])
            c.restart(p)
        for t in threads:
            t.join(max(1.0, q.deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a producer or consumer did not finish in time"
        assert not q.errors, q.errors
        p = c.wait_for_single_primary()
        remaining = [x.decode() for x in _client(c, p).lrange("queue", 0, -1)]
        c.wait_converged()
        pushed, unknown = set(q.pushed), {i for i, _ in q.push_unknown}
        dup = [x for x, n in Counter(q.popped + remaining).items() if n > 1]
        assert not dup, f"delivered twice (or popped and still queued): {dup[:10]}"
        delivered = set(q.popped) | set(remaining)
        invented = delivered - pushed - unknown
        assert not invented, f"items nobody pushed: {sorted(invented)[:10]}"
        lost = pushed - delivered
        # an acknowledged push is delivered or still queued, unless an unknown pop took it
        assert len(lost) <= q.pop_unknown, \
            f"{len(lost)} acknowledged pushes lost, only {q.pop_unknown} pops had an unknown outcome: " \
            f"{sorted(lost)[:10]}"
        landed_unknown = len(delivered & unknown)
        print(f"\n  [queue] {len(q.pushed)} pushes acknowledged, {len(q.push_unknown)} unknown "
              f"({landed_unknown} of them landed); {len(q.popped)} pops acknowledged, "
              f"{q.pop_unknown} unknown; {len(remaining)} left; {len(lost)} acknowledged pushes "
              f"taken by unknown pops; kills (node, pushes, pops): {kills}", flush=True)
        # exact: acknowledged pushes = acknowledged pops + unknown pops' share + what remains
        assert len(q.pushed) == len(pushed & set(q.popped)) + len(lost) + len(pushed & set(remaining))
