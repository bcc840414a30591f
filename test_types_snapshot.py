"""Every value type survives a snapshot, kill -9 of every node and restart, and the catch-up of
a wiped node by InstallSnapshot: the same contents on the primary and equal digests on every
node (the digest covers every element of every container).

The per-type table below must cover every type kv_registry registers: adding a type without a
row here fails test_every_registered_type_is_covered.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kv_registry  # noqa: E402
from kv_localcluster import LocalCluster  # noqa: E402
from test_redis_diff import Resp  # noqa: E402


def _pairs(flat: list) -> list:
    return sorted(zip(flat[0::2], flat[1::2]))


# type name -> (writes(key, n) -> [command, ...], dump command(key), normalise(reply value))
TYPES = {
    "string": (lambda k, n: [["SET", k, b"\x00\xff" * n], ["APPEND", k, b"-tail"],
                             ["SET", k + b"-ttl", b"v", "EX", "100000"]],
               lambda k: ["GET", k], lambda v: v),
    "hash": (lambda k, n: [["HSET", k, *[x for i in range(n) for x in (b"f%d" % i, b"v\x00%d" % i)]],
                           ["HDEL", k, b"f0"], ["HSET", k + b"-ttl", b"a", b"1"],
                           ["EXPIRE", k + b"-ttl", "100000"]],
             lambda k: ["HGETALL", k], lambda v: _pairs(v)),
    "list": (lambda k, n: [["RPUSH", k, *[b"e%d" % i for i in range(n)]], ["LPUSH", k, b"head"],
                           ["RPOP", k], ["LSET", k, "1", b"changed"]],
             lambda k: ["LRANGE", k, "0", "-1"], lambda v: v),
    "set": (lambda k, n: [["SADD", k, *[b"m%d" % i for i in range(n)]], ["SREM", k, b"m1"]],
            lambda k: ["SMEMBERS", k], lambda v: sorted(v)),
    "zset": (lambda k, n: [["ZADD", k, *[x for i in range(n) for x in (str(i * 0.5), b"z%d" % i)]],
                           ["ZADD", k, "-inf", b"low", "+inf", b"high"], ["ZINCRBY", k, "2.25", b"z3"],
                           ["ZREM", k, b"z2"]],
             lambda k: ["ZRANGE", k, "0", "-1", "WITHSCORES"], lambda v: v),
}


def registered_types() -> list[str]:
    return sorted(set(kv_registry.TYPE_NAMES.values()))


def test_every_registered_type_is_covered():
    assert set(registered_types()) <= set(TYPES), \
        f"types without a snapshot test row: {set(registered_types()) - set(TYPES)}"


def _ok(reply, what):
    """The reply's value with the RESP types stripped (nested arrays too); fails on an error."""
    assert reply[0] != "-", f"{what}: {reply}"
    return _plain(reply)


def _plain(reply):
    t, v = reply
    return [_plain(x) for x in v] if t == "*" and v is not None else v


def write_all(port: int, phase: str) -> None:
    c = Resp(port)
    try:
        for t in registered_types():
            writes = TYPES[t][0]
            for i, n in enumerate((3, 50, 2000)):
                k = f"{phase}:{t}:{i}".encode()
                for cmd in writes(k, n):
                    _ok(c.call(*cmd), cmd[:2])
    finally:
        c.close()


def dump_all(port: int) -> dict:
    """Every key of the test, read back by its type's own commands (plus its TTL)."""
    c = Resp(port)
    try:
        out = {}
        keys = _ok(c.call("KEYS", "*"), "KEYS")
        assert keys, "no keys"
        for k in sorted(keys):
            t = _ok(c.call("TYPE", k), "TYPE")
            _, dump, norm = TYPES[t]
            ttl = _ok(c.call("TTL", k), "TTL")
            out[k] = (t, norm(_ok(c.call(*dump(k)), dump(k))), ttl > 0)
        return out
    finally:
        c.close()


def digests(c: LocalCluster, ids) -> dict:
    sts = c.wait_converged(timeout=30, ids=ids)
    return {n: (s["digest"], s["keys"]) for n, s in sts.items()}


@pytest.fixture
def cluster():
    c = LocalCluster(n=3)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


def test_every_type_survives_snapshot_restart_and_wiped_node_catch_up(cluster):
    c = cluster
    p = c.wait_for_single_primary(timeout=15)
    write_all(c.port(p), "A")
    c.wait_converged(timeout=30)
    for nid in c.running_ids():            # the A keys go into every node's snapshot ...
        assert c.send(nid, "SNAPSHOT", timeout=30)["status"] == "OK"
    write_all(c.port(p), "B")              # ... the B keys stay in the log after it
    want = dump_all(c.port(p))
    assert {v[0] for v in want.values()} == set(registered_types())
    before = digests(c, c.ids)
    assert len({d for d, _ in before.values()}) == 1, before

    for nid in list(c.running_ids()):      # kill -9 of every node, then restart
        c.kill(nid)
    for nid in c.ids:
        c.start_node(nid)
    p = c.wait_for_single_primary(timeout=20)
    after = digests(c, c.ids)
    assert after == before, (before, after)
    assert dump_all(c.port(p)) == want

    # a secondary loses its disk; the primary has compacted its log, so the wiped node can only
    # catch up through InstallSnapshot of every type's records
    s = next(n for n in c.ids if n != p)
    c.stop_node(s)
    shutil.rmtree(c.data_dir_of(s))
    os.makedirs(c.data_dir_of(s))
    write_all(c.port(p), "C")
    c.wait_converged(timeout=30)
    applied = c.status(p)["last_applied"]
    for nid in c.running_ids():        # whichever of them leads when s comes back has compacted
        assert c.send(nid, "SNAPSHOT", timeout=30)["status"] == "OK"
        c.wait_until(lambda: (c.status(nid) or {}).get("snapshot_index", 0) >= applied, 30,
                     f"{nid}'s snapshot (and log compaction) to reach index {applied}")
    want = dump_all(c.port(p))
    c.start_node(s)
    final = digests(c, c.ids)
    assert len(set(final.values())) == 1, final
    # (the node logs the install just after its state changed: wait for the line)
    c.wait_until(lambda: "snapshot installed" in c.log_text(s), 10,
                 f"{s}'s log to show it caught up by installing a snapshot")
    p = c.wait_for_single_primary(timeout=15)
    assert dump_all(c.port(p)) == want
    # and the wiped node serves the same contents once it is primary
    if p != s:
        assert c.send(p, f"TRANSFER {s}", timeout=30)["status"] == "OK"
        c.wait_until(lambda: c.primary() == s, 15, f"{s} to take over")
    assert dump_all(c.port(s)) == want
