"""Redis data commands: the state machine's rules, and TTLs and WATCH/EXEC across failovers.

    python -m pytest -q test_rediscmds.py

Layout:
    state machine tests   kv_state.KeyValueStore driven with log entries directly: determinism,
                          the digest covers deadlines, snapshots carry them (and old snapshots and
                          old log entries still load), WATCH slots, active-expiry purges
    protocol tests        parsing of the new commands on both protocols
    live cluster tests    a TTL outliving a kill -9 of the primary and never coming back (even
                          after every node restarts from its snapshot and log); 8 clients racing
                          WATCH/GET/MULTI/SET/EXEC with a failover in the middle (final value ==
                          acknowledged EXECs; indefinite outcomes resolved by marker keys)
The differential test against redis-server is test_redis_diff.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import kv_protocol as P  # noqa: E402
from kv_localcluster import LocalCluster, call  # noqa: E402
from kv_state import NULL_ARRAY, KeyValueStore, Value, encode_args, now_ms  # noqa: E402
from kv_storage import ReplicationLog, SnapshotMeta, read_snapshot_file, write_snapshot_file  # noqa: E402
from test_redis_diff import Resp  # noqa: E402


# ------------------------------------------------------------------------------ state machine
class Log:
    """Builds entries the way the primary does (kv_commands.entry_value), with a chosen time."""

    def __init__(self):
        self.index = 0

    def cmd(self, t: int, *cmds, watches=None, op="CMD") -> ReplicationLog:
        self.index += 1
        value = {"t": t, "c": [[c[0], *encode_args(c[1:])] for c in cmds]}
        if watches:
            value["w"] = watches
        return ReplicationLog(self.index, 1, op, None, value)

    def set(self, key, value) -> ReplicationLog:
        self.index += 1
        return ReplicationLog(self.index, 1, "SET", key, value, "json")


def test_same_entries_same_state_and_digest_and_the_digest_covers_deadlines():
    t = 1_000_000
    lg = Log()
    entries = [lg.set("a", 1), lg.cmd(t, ["SET", "b", ("bytes", b"x"), "", 0, t + 5000]),
               lg.cmd(t + 1, ["INCRBY", "a", 41]), lg.cmd(t + 2, ["PEXPIREAT", "a", t + 9000, ""])]
    s1, s2 = KeyValueStore(), KeyValueStore()
    for e in entries:
        s1.apply(e)
        s2.apply(e)
    assert s1.digest == s2.digest and s1.data == s2.data and s1.expires == s2.expires == {"a": t + 9000, "b": t + 5000}
    s3 = KeyValueStore()
    for e in entries[:-1]:
        s3.apply(e)
    other = Log()
    other.index = entries[-1].index - 1
    s3.apply(other.cmd(t + 2, ["PEXPIREAT", "a", t + 9001, ""]))   # same values, another deadline
    assert s3.data == s1.data and s3.last_applied == s1.last_applied
    assert s3.digest != s1.digest, "a different deadline must change the digest"


def test_apply_uses_the_entry_time_never_a_clock():
    lg = Log()
    s = KeyValueStore()
    s.apply(lg.cmd(1000, ["SET", "k", ("bytes", b"v"), "", 0, 2000]))
    assert s.apply(lg.cmd(1999, ["GET", "k"])) == Value("bytes", b"v")   # entry time 1999: live
    assert s.apply(lg.cmd(2000, ["INCRBY", "k", 1])) == 1                  # expired at 2000: starts at 0
    assert "k" not in s.expires
    # time never goes backwards: an entry stamped earlier (a lagging new primary) uses clock_ms
    s.apply(lg.cmd(5000, ["SET", "j", ("bytes", b"v"), "", 0, 6000]))
    assert s.apply(lg.cmd(3000, ["TTL", "j", "ms", 0])) == 1000 and s.clock_ms == 5000


def test_purge_deletes_only_keys_past_their_deadline_at_the_entry_time():
    lg = Log()
    s = KeyValueStore()
    s.apply(lg.cmd(1000, ["MSET", "a", ("json", 1), "b", ("json", 2), "c", ("json", 3)]))
    s.apply(lg.cmd(1000, ["PEXPIREAT", "a", 1500, ""], ["PEXPIREAT", "b", 3000, ""]))
    assert s.apply(lg.cmd(2000, ["PURGE", "a", "b", "c"])) == 1
    assert sorted(s.data) == ["b", "c"] and s.expires == {"b": 3000}


def test_watch_aborts_on_write_delete_or_expiry_after_the_watch_only():
    lg = Log()
    s = KeyValueStore()
    s.apply(lg.cmd(1000, ["SET", "w", ("bytes", b"1"), "", 0, None]))
    seen = (s.last_applied, 1000)
    ok = lg.cmd(1001, ["INCRBY", "w", 1], op="EXEC", watches=[["w", *seen]])
    assert s.apply(ok) == [2]
    # a write after the watch aborts
    seen = (s.last_applied, 1002)
    s.apply(lg.cmd(1003, ["SET", "w", ("bytes", b"9"), "", 0, None]))
    assert s.apply(lg.cmd(1004, ["INCRBY", "w", 1], op="EXEC", watches=[["w", *seen]])) is NULL_ARRAY
    # a key that expires after the watch aborts, whether or not it was purged yet
    s.apply(lg.cmd(1005, ["PEXPIREAT", "w", 2000, ""]))
    seen = (s.last_applied, 1500)
    assert s.apply(lg.cmd(2100, ["GET", "w"], op="EXEC", watches=[["w", *seen]])) is NULL_ARRAY
    s.apply(lg.cmd(2100, ["PURGE", "w"]))
    assert s.apply(lg.cmd(2200, ["GET", "w"], op="EXEC", watches=[["w", *seen]])) is NULL_ARRAY
    # watched when already expired: its purge is not a change (as in Redis)
    seen = (s.last_applied, 2300)
    assert s.apply(lg.cmd(2400, ["GET", "w"], op="EXEC", watches=[["w", *seen]])) == [None]


def test_snapshot_round_trip_keeps_deadlines_clock_and_watch_slots():
    lg = Log()
    s = KeyValueStore()
    s.apply(lg.set("plain", {"x": [1, 2]}))
    s.apply(lg.cmd(now_ms(), ["SET", "t", ("bytes", b"\x00\xff"), "", 0, now_ms() + 100_000]))
    s.apply(lg.cmd(now_ms(), ["HSET", "h", [b"f\x00", b"v", b"g", b""]]))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "snap")
        write_snapshot_file(path, SnapshotMeta(s.last_applied, 1, len(s), s.digest_hex()), s.items())
        meta, items = read_snapshot_file(path)
        assert {k: t for k, t, _ in items if k is not None} == {"plain": "j", "t": "b", "h": "h"}
        for digest in (None, meta.digest):     # rehashing gives the recorded digest
            r = KeyValueStore()
            r.restore(list(read_snapshot_file(path)[1]), meta.last_index, digest)
            assert (r.data, r.expires, r.clock_ms, r.digest) == (s.data, s.expires, s.clock_ms, s.digest)
            assert r.mod == s.mod and r.gone == s.gone
            assert r.data["h"][1] is not s.data["h"][1] and r.data["h"][1].h == s.data["h"][1].h


def test_restore_names_the_key_of_a_record_it_cannot_decode():
    for records, match in [([("a", "no-such-tag", 1)], "unknown tag"), ([("a", "b", "!!")], "base64"),
                           ([("a", "h", ["Zg=="])], "hash")]:
        s = KeyValueStore()
        s.apply(Log().set("keep", 1))
        with pytest.raises(ValueError, match=match) as e:
            s.restore(iter(records), 9)
        assert "'a'" in str(e.value) and s.data == {"keep": ("json", 1)}, "nothing replaced"


def test_old_snapshots_and_old_log_entries_still_load():
    """A version 1 snapshot (no state lines) and the old fast-path ops (SETNX/SETXX/DEL)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "snap")
        # a version 1 file as it was written: a JSON chunk and a base64 chunk, no state lines
        body = (b'{"format":"kv-snapshot","version":1,"last_index":7,"last_term":1,"count":2,'
                b'"digest":"0000000000000000"}\n[{"a":1},{"b":"eA=="}]\n')
        crc = zlib.crc32(body)
        open(path, "wb").write(body + b'{"end":true,"count":2,"crc":%d}\n' % crc)
        meta, it = read_snapshot_file(path)
        s = KeyValueStore()
        s.restore(it, meta.last_index)
        assert s.data == {"a": ("json", 1), "b": ("bytes", b"x")} and s.expires == {}
        assert s.mod[0] == 7, "no slots recorded: every WATCH older than the snapshot aborts"
    for op, key, want in [("SETNX", "a", False), ("SETXX", "c", False), ("SETNX", "c", True), ("DEL", "b", True)]:
        assert s.apply(ReplicationLog(s.last_applied + 1, 1, op, key, 5)) is want
    assert s.data == {"a": ("json", 1), "c": ("json", 5)}


def test_incrbyfloat_matches_redis_long_double_formatting():
    lg = Log()
    s = KeyValueStore()
    s.apply(lg.cmd(1, ["SET", "f", ("bytes", b"12345.678"), "", 0, None]))
    assert s.apply(lg.cmd(1, ["INCRBYFLOAT", "f", ("bytes", b"1.1")])) == Value("bytes", b"12346.77799999999999958")
    s.apply(lg.cmd(1, ["SET", "g", ("bytes", b"0.1"), "", 0, None]))
    assert s.apply(lg.cmd(1, ["INCRBYFLOAT", "g", ("bytes", b"0.2")])) == Value("bytes", b"0.3")


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("line,want", [
    (b"INCR n", P.DataCommand("INCRBY", ["n", 1], True, "incr")),
    (b"INCRBY n -5", P.DataCommand("INCRBY", ["n", -5], True, "incrby")),
    (b"MSET a 1 b {\"x\":2}", P.DataCommand("MSET", ["a", ("json", 1), "b", ("json", {"x": 2})], True, "mset")),
    (b"MGET a b", P.DataCommand("MGET", ["a", "b"], False, "mget")),
    (b"EXPIRE k 10", P.DataCommand("PEXPIREAT", ["k", P.RelMs(10000, "expire"), ""], True, "expire")),
    (b"TTL k", P.DataCommand("TTL", ["k", "s", 0], False, "ttl")),
    (b"PERSIST k", P.DataCommand("PERSIST", ["k"], True, "persist")),
    (b"SET k hello world EX 10", P.Set("k", "hello world", "json", ex_ms=10000)),
    (b"SET k ex 10", P.Set("k", "ex 10", "json")),
    (b"CAS k 5 {\"v\": 6}", P.DataCommand("CAS", ["k", ("json", 5), ("json", {"v": 6})], True, "cas")),
    (b"FLUSH", P.Flush()),
    (b"FLUSHDB", P.DataCommand("FLUSHDB", [], True, "flushdb")),
    (b"INCRBY n x", P.Invalid(P.BAD_REQUEST, "value is not an integer or out of range")),
])
def test_line_protocol_forms(line, want):
    assert P.parse_line(line) == want


@pytest.mark.parametrize("args,want", [
    ([b"EXPIRE", b"k", b"10", b"NX", b"XX"], "ERR NX and XX, GT or LT options at the same time are not compatible"),
    ([b"EXPIRE", b"k", b"10", b"GT", b"LT"], "ERR GT and LT options at the same time are not compatible"),
    ([b"EXPIRE", b"k", b"10", b"FOO"], "ERR Unsupported option FOO"),
    ([b"SCAN", b"x"], "ERR invalid cursor"),
    ([b"SET", b"k", b"v", b"NX", b"XX"], "ERR syntax error"),
    ([b"COPY", b"a", b"b", b"DB", b"1"], "ERR DB index is out of range"),
    ([b"FLUSHALL", b"NOW"], "ERR syntax error"),
])
def test_resp_errors(args, want):
    cmd = P.parse_resp(args)
    assert type(cmd) is P.Invalid and cmd.message == want


# ------------------------------------------------------------------------------ live cluster
@pytest.fixture(scope="module")
def cluster():
    # the old defaults (heartbeat 50 ms, election timeout 0.3 s): the TTL test must see a new
    # primary well inside the key's 2 s, whatever detection path the failover takes
    c = LocalCluster(n=3, heartbeat_interval=0.05, election_timeout=0.3)
    try:
        c.start()
        c.wait_for_single_primary(timeout=15)
        yield c
    finally:
        c.cleanup()


def _resp(cluster, node_id) -> Resp:
    return Resp(cluster.port(node_id))


def test_line_protocol_transactions_cross_protocol_rules_and_flush_vs_flushdb(cluster):
    """MULTI/EXEC/WATCH over the line protocol; a JSON number set by line is INCRed over RESP and
    reads back as a number; a RESP value that is not JSON reads back as a string; FLUSH (fsync)
    deletes nothing, FLUSHDB deletes everything."""
    p = cluster.wait_for_single_primary(timeout=15)
    host, port = cluster.addr(p)
    a = call(host, port, ["SET lx:n 41", "MULTI", "INCR lx:n", "GET lx:n", "EXEC"])
    assert [x["status"] for x in a] == ["OK"] * 5 and a[2]["message"] == "QUEUED"
    assert a[4] == {"status": "OK", "aborted": False, "results": [42, 42]}
    r = _resp(cluster, p)
    assert r.call(b"INCR", b"lx:n") == (":", 43)
    assert r.call(b"SET", b"lx:b", b"not json \xc3\xa9") == ("+", "OK")
    got = call(host, port, ["GET lx:n", "GET lx:b", "MGET lx:n lx:b"])
    assert got[0]["value"] == 43 and got[1]["value"] == "not json \u00e9"
    assert got[2]["values"] == [43, "not json \u00e9"]
    # WATCH on the line protocol: another client's write aborts the EXEC
    with socket.create_connection((host, port), timeout=5) as s, s.makefile("rb") as f:
        def line(req):
            s.sendall(req.encode() + b"\n")
            return json.loads(f.readline())
        assert line("WATCH lx:n")["status"] == "OK"
        assert r.call(b"SET", b"lx:n", b"0") == ("+", "OK")
        assert line("MULTI")["status"] == "OK" and line("INCR lx:n")["message"] == "QUEUED"
        assert line("EXEC") == {"status": "OK", "aborted": True, "results": None}
    assert r.call(b"GET", b"lx:n") == ("$", b"0")
    assert call(host, port, ["FLUSH"])[0]["status"] == "OK"
    assert r.call(b"EXISTS", b"lx:n", b"lx:b") == (":", 2), "FLUSH is an fsync: it deletes nothing"
    assert r.call(b"FLUSHDB", b"ASYNC") == ("+", "OK")
    assert r.call(b"DBSIZE") == (":", 0)
    r.close()
    st = cluster.wait_converged(timeout=20)
    assert all(x["keys"] == 0 for x in st.values()), "FLUSHDB replicated"


def test_redis_benchmark_set_get_incr_mset_without_error(cluster):
    """redis-benchmark's SET, GET, INCR and MSET run against the primary with no error reply, and
    the secondaries end with the same state."""
    bench = shutil.which("redis-benchmark")
    if bench is None:
        pytest.skip("redis-benchmark is not installed (apt-get install redis-tools; .ci/run installs it)")
    p = cluster.wait_for_single_primary(timeout=15)
    r = _resp(cluster, p)
    r.call(b"DEL", b"counter:__rand_int__")     # the key redis-benchmark's INCR uses
    out = subprocess.run([bench, "-p", str(cluster.port(p)), "-t", "set,get,incr,mset", "-n", "2000",
                          "-c", "10", "-q", "--csv"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith('"')]
    tests = {row.split(",")[0].strip('"').split(" ")[0] for row in rows[1:]}
    assert {"SET", "GET", "INCR", "MSET"} <= tests, out.stdout
    assert "ERR" not in out.stdout + out.stderr and "error" not in (out.stdout + out.stderr).lower(), out.stdout
    assert r.call(b"GET", b"counter:__rand_int__") == ("$", b"2000")   # every INCR applied once
    r.close()
    st = cluster.wait_converged(timeout=20)
    assert len({x["digest"] for x in st.values()}) == 1


def test_active_expiry_purges_many_keys_through_the_log(cluster):
    """2,000 keys set with PX 100 in one transaction are all deleted by the primary's expire
    cycle (several batched PURGE entries) on every node; a renewed key survives."""
    p = cluster.wait_for_single_primary(timeout=15)
    base = {nid: s["keys"] for nid, s in cluster.wait_converged(timeout=20).items()}
    r = _resp(cluster, p)
    assert r.call(b"MULTI") == ("+", "OK")
    for i in range(2000):
        assert r.call(b"SET", b"ax:%d" % i, b"v", b"PX", b"100") == ("+", "QUEUED")
    assert r.call(b"SET", b"ax:keep", b"v", b"PX", b"100") == ("+", "QUEUED")
    assert r.call(b"PERSIST", b"ax:keep") == ("+", "QUEUED")
    res = r.call(b"EXEC")
    assert res[0] == "*" and len(res[1]) == 2002

    def purged():   # only ax:keep is left of the 2,001 keys
        sts = cluster.statuses(cluster.running_ids())
        return all(s and s["keys"] == base[nid] + 1 for nid, s in sts.items())
    cluster.wait_until(purged, 20, "the 2,000 expired keys purged on every node")
    assert r.call(b"EXISTS", b"ax:0", b"ax:1999", b"ax:keep") == (":", 1)
    assert r.call(b"DEL", b"ax:keep") == (":", 1)
    r.close()
    st = cluster.wait_converged(timeout=20)
    assert len({x["digest"] for x in st.values()}) == 1


def test_ttl_outlives_a_failover_and_never_comes_back(cluster):
    """SET k v EX 2 on the primary, kill -9 it in the key's first second: the new primary still
    has k until 2 s after the SET, then never again - not after the purge replicates, not after
    the old primary rejoins, not after every node restarts from its snapshot and log."""
    p = cluster.wait_for_single_primary(timeout=15)
    c = _resp(cluster, p)
    assert c.call(b"SET", b"long", b"kept", b"EX", b"1000") == ("+", "OK")
    t0 = time.monotonic()
    assert c.call(b"SET", b"ttl-k", b"v", b"EX", b"2") == ("+", "OK")
    c.close()
    cluster.kill(p)
    assert time.monotonic() - t0 < 1.0, "the primary was not killed within the key's first second"
    q = cluster.wait_for_single_primary(timeout=15, exclude=[p])
    c = _resp(cluster, q)
    got = c.call(b"GET", b"ttl-k")
    elapsed = time.monotonic() - t0
    assert elapsed < 1.9, f"failover took {elapsed:.2f}s: too slow to observe the key alive"
    assert got == ("$", b"v"), got
    ttl = c.call(b"PTTL", b"ttl-k")
    assert ttl[0] == ":" and 0 < ttl[1] <= 2000 - int(elapsed * 1000) + 50, ttl
    cluster.wait_until(lambda: time.monotonic() - t0 > 2.05, 5, "2 s after the SET")
    assert c.call(b"GET", b"ttl-k") == ("$", None)
    assert c.call(b"EXISTS", b"ttl-k") == (":", 0)
    # the primary's active expiry deletes it through the log: every node drops it
    cluster.wait_until(lambda: all(s and s.get("keys_with_ttl") == 1 for s in
                                   cluster.statuses(cluster.running_ids()).values()), 10,
                       "the purge of ttl-k on every running node")
    c.close()
    cluster.start_node(p)
    cluster.wait_converged(timeout=20)
    for nid in cluster.running_ids():              # snapshots carry the deadline of "long"
        assert cluster.send(nid, "SNAPSHOT")["status"] == "OK"
    for nid in list(cluster.running_ids()):
        cluster.kill(nid)
    for nid in cluster.ids:
        cluster.start_node(nid)
    q = cluster.wait_for_single_primary(timeout=15)
    cluster.wait_converged(timeout=20)
    c = _resp(cluster, q)
    assert c.call(b"GET", b"ttl-k") == ("$", None)
    assert c.call(b"GET", b"long") == ("$", b"kept")
    ttl = c.call(b"TTL", b"long")
    assert ttl[0] == ":" and 990 <= ttl[1] <= 1000, ttl
    c.close()
    st = cluster.wait_converged(timeout=20)
    assert all(s["keys_with_ttl"] == 1 for s in st.values()), st


class Racer(threading.Thread):
    """A WATCH/GET/MULTI/SET/EXEC increment loop that follows the primary.  Each attempt also
    sets a marker key, so an indefinite outcome can be resolved afterwards."""

    def __init__(self, cluster, cid: int, stop: threading.Event, key: bytes):
        super().__init__(daemon=True, name=f"racer-{cid}")
        self.cluster, self.cid, self.stop_ev, self.key = cluster, cid, stop, key
        self.acked: list[bytes] = []          # markers of acknowledged EXECs
        self.indefinite: list[bytes] = []     # markers of EXECs with an unknown outcome
        self.aborts = 0
        self.errors: list[str] = []
        self.conn: Resp | None = None

    def _connect(self) -> Resp:
        while not self.stop_ev.is_set():
            p = self.cluster.primary(timeout=0.5)
            if p is not None:
                try:
                    return Resp(self.cluster.port(p), timeout=10)
                except OSError:
                    pass    # that primary just died: look again
            time.sleep(0.05)
        raise InterruptedError

    def run(self) -> None:
        attempt = 0
        try:
            while not self.stop_ev.is_set():
                if self.conn is None:
                    self.conn = self._connect()
                c = self.conn
                attempt += 1
                marker = b"marker:%d:%d" % (self.cid, attempt)
                sent_exec = False
                try:
                    if c.call(b"WATCH", self.key)[0] == "-":
                        raise ConnectionError("WATCH refused")
                    cur = c.call(b"GET", self.key)
                    if cur[0] == "-":
                        raise ConnectionError(cur[1])
                    n = int(cur[1] or b"0")
                    for args in ([b"MULTI"], [b"SET", self.key, b"%d" % (n + 1)], [b"SET", marker, b"1"]):
                        r = c.call(*args)
                        if r[0] == "-":
                            raise ConnectionError(r[1])
                    sent_exec = True
                    r = c.call(b"EXEC")
                except (OSError, ConnectionError, ValueError):
                    if sent_exec:
                        self.indefinite.append(marker)      # the EXEC may or may not have applied
                    self._drop()
                    continue
                if r == ("*", None):
                    self.aborts += 1
                elif r[0] == "*":
                    self.acked.append(marker)
                elif r[0] == "-" and r[1].split(" ", 1)[0] in ("READONLY",):
                    self._drop()                            # definite: not applied
                elif r[0] == "-":
                    self.indefinite.append(marker)          # TIMEOUT / NOQUORUM: unknown
                    self._drop()
                else:
                    self.errors.append(f"unexpected EXEC reply {r}")
                    return
        except InterruptedError:
            pass
        finally:
            self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass        # already broken: nothing left to close
            self.conn = None


def test_watch_exec_counter_race_across_a_failover(cluster):
    """8 clients increment one key with WATCH/GET/MULTI/SET/EXEC; the primary is killed in the
    middle.  The final value is the number of acknowledged EXECs plus the indefinite ones that
    did apply (their markers exist); every acknowledged EXEC's marker exists; no increment is
    lost or doubled."""
    cluster.wait_for_single_primary(timeout=15)
    key = b"race:%d" % random.randrange(1 << 30)
    stop = threading.Event()
    racers = [Racer(cluster, i, stop, key) for i in range(8)]
    for r in racers:
        r.start()
    acked = lambda: sum(len(r.acked) for r in racers)  # noqa: E731
    cluster.wait_until(lambda: acked() >= 60, 30, "60 acknowledged EXECs before the failover")
    victim = cluster.wait_for_single_primary(timeout=15)
    cluster.kill(victim)
    cluster.wait_for_single_primary(timeout=15, exclude=[victim])
    before = acked()
    cluster.wait_until(lambda: acked() >= before + 60, 30, "60 more acknowledged EXECs after the failover")
    stop.set()
    for r in racers:
        r.join(timeout=30)
        assert not r.is_alive()
    errors = [e for r in racers for e in r.errors]
    assert not errors, errors
    cluster.start_node(victim)
    cluster.wait_converged(timeout=20)
    p = cluster.wait_for_single_primary(timeout=15)
    c = _resp(cluster, p)
    final = int(c.call(b"GET", key)[1])
    acked_markers = [m for r in racers for m in r.acked]
    unknown = [m for r in racers for m in r.indefinite]
    got = c.call(b"MGET", *acked_markers)[1] if acked_markers else []
    assert all(x == ("$", b"1") for x in got), "an acknowledged EXEC is missing"
    applied_unknown = sum(1 for x in (c.call(b"MGET", *unknown)[1] if unknown else []) if x == ("$", b"1"))
    c.close()
    print(f"WATCH race: {len(acked_markers)} acknowledged, {len(unknown)} indefinite "
          f"({applied_unknown} of them applied), {sum(r.aborts for r in racers)} WATCH aborts, final {final}")
    assert final == len(acked_markers) + applied_unknown
    assert len(acked_markers) >= 120
