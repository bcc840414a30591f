"""The Redis ecosystem against a live 3-node cluster: Sentinel discovery, follower reads, INFO.

    Sentinel discovery      redis-py's own parsers read SENTINEL MASTERS / MASTER / REPLICAS /
                            SENTINELS / GET-MASTER-ADDR-BY-NAME on every node (RESP2 and RESP3);
                            ROLE in Redis's format; +switch-master reaches a subscriber
    failover (kill -9)      redis-py's Sentinel(...).master_for("kvstore") with redis-py's Retry
                            and no code of ours writes 2,000 keys while the primary is killed;
                            every acknowledged write reads back; replica_for reads a secondary
                            after READONLY; a plain connection to a secondary is refused
    follower reads          READONLY / READWRITE on both protocols
    INFO                    Redis's sections and field names; redis-cli --stat under
                            redis-benchmark load; redis-cli --latency

Every process started here is stopped by PID (LocalCluster for the nodes; the redis tools by
their Popen PID); waits poll with deadlines.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from kv_localcluster import LocalCluster

SERVICE = "kvstore"
# Ask each node once per discovery (redis-py's default retries a refused connection to a dead
# node 10 times with backoff before trying the next one); docs/CLUSTERING.md recommends the same.
NO_RETRY = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry": Retry(NoBackoff(), 0)}
HAVE_REDIS_TOOLS = shutil.which("redis-cli") is not None and shutil.which("redis-benchmark") is not None


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(n=3)
    try:
        c.start()
        c.wait_for_single_primary()
        yield c
    finally:
        c.cleanup()


def _rc(c: LocalCluster, node: str, **kw) -> redis.Redis:
    host, port = c.addr(node)
    return redis.Redis(host=host, port=port, socket_timeout=5, **kw)


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _secondaries(c: LocalCluster, primary: str) -> list[str]:
    return [n for n in c.ids if n != primary]


# ------------------------------------------------------------------------------ Sentinel replies
@pytest.mark.parametrize("protocol", [2, 3])
def test_sentinel_replies_parse_with_redis_py(cluster, protocol):
    p = cluster.wait_for_single_primary()
    cluster.wait_converged()
    want_master = cluster.addr(p)
    for node in cluster.ids:
        with _rc(cluster, node, protocol=protocol) as r:
            masters = r.sentinel_masters()
            assert set(masters) == {SERVICE}, masters
            m = masters[SERVICE]
            assert m["is_master"] and not m["is_sdown"] and not m["is_odown"], m
            assert (m["ip"], m["port"]) == want_master
            assert m["num-other-sentinels"] == 2 and m["num-slaves"] == 2 and m["quorum"] == 2
            one = r.sentinel_master(SERVICE)
            assert (one["ip"], one["port"]) == want_master and one["is_master"]
            ip, port = r.sentinel_get_master_addr_by_name(SERVICE)
            assert (_s(ip), port) == want_master
            reps = r.sentinel_slaves(SERVICE)
            assert sorted((x["ip"], x["port"]) for x in reps) == sorted(cluster.addr(n) for n in _secondaries(cluster, p))
            assert all(x["is_slave"] and not x["is_sdown"] for x in reps), reps
            sents = r.sentinel_sentinels(SERVICE)
            assert sorted((x["ip"], x["port"]) for x in sents) == sorted(cluster.addr(n) for n in cluster.ids if n != node)
            assert all(x["is_sentinel"] for x in sents)
            with pytest.raises(ResponseError, match="No such master with that name"):
                r.sentinel_master("nope")
            assert r.sentinel_get_master_addr_by_name("nope") is None
            assert r.execute_command("SENTINEL", "CKQUORUM", SERVICE).startswith(b"OK 3 usable")
    # the whole discovery path of redis-py
    s = Sentinel([cluster.addr(n) for n in cluster.ids], socket_timeout=2)
    assert s.discover_master(SERVICE) == want_master
    assert sorted(s.discover_slaves(SERVICE)) == sorted(cluster.addr(n) for n in _secondaries(cluster, p))


def test_role_in_redis_format(cluster):
    p = cluster.wait_for_single_primary()
    cluster.wait_converged()
    with _rc(cluster, p, protocol=2) as r:
        role = r.execute_command("ROLE")
    assert role[0] == b"master" and isinstance(role[1], int)
    assert sorted((h.decode(), int(port)) for h, port, _ in role[2]) == \
        sorted(cluster.addr(n) for n in _secondaries(cluster, p))
    for n in _secondaries(cluster, p):
        with _rc(cluster, n, protocol=2) as r:
            role = r.execute_command("ROLE")
        assert role[0] == b"slave" and (role[1].decode(), role[2]) == cluster.addr(p)
        assert role[3] == b"connected" and isinstance(role[4], int)


def test_node_without_primary_answers_as_sentinel_does_for_a_down_master():
    """A node that never learned a primary: master flagged s_down/o_down, no address."""
    c = LocalCluster(n=3)
    try:
        c.start_node("node2")                # alone: it can never win an election
        c.wait_until(lambda: c.status("node2") is not None, 10, "node2 to answer")
        with _rc(c, "node2") as r:
            m = r.sentinel_masters()[SERVICE]
            assert m["is_sdown"] and m["is_odown"] and m["is_master"], m
            assert m["num-other-sentinels"] == 0
            assert r.sentinel_get_master_addr_by_name(SERVICE) is None
            reps = r.sentinel_slaves(SERVICE)
            assert {x["port"] for x in reps if not x["is_sdown"]} == {c.port("node2")}
            role = r.execute_command("ROLE")
            assert role[0] == b"slave" and role[3] == b"connect"
            with pytest.raises(ResponseError, match="NOQUORUM"):
                r.execute_command("SENTINEL", "CKQUORUM", SERVICE)
        s = Sentinel([c.addr(n) for n in c.ids], sentinel_kwargs=NO_RETRY)
        with pytest.raises(RedisConnectionError):     # MasterNotFoundError
            s.discover_master(SERVICE)
    finally:
        c.cleanup()


def test_switch_master_reaches_a_subscriber(cluster):
    p = cluster.wait_for_single_primary()
    cluster.wait_converged()
    watcher, target = _secondaries(cluster, p)
    with _rc(cluster, watcher) as r:
        ps = r.pubsub()
        ps.subscribe("+switch-master")
        first = ps.get_message(timeout=5)
        assert first["type"] == "subscribe" and first["channel"] == b"+switch-master"
        ans = cluster.send(p, f"TRANSFER {target}")
        assert ans["status"] == "OK", ans
        deadline = time.monotonic() + 10
        msg = None
        while time.monotonic() < deadline and msg is None:
            msg = ps.get_message(timeout=1)
        assert msg is not None, "no +switch-master message"
        assert msg["type"] == "message" and msg["channel"] == b"+switch-master"
        name, o_ip, o_port, n_ip, n_port = msg["data"].decode().split()
        assert name == SERVICE
        assert (o_ip, int(o_port)) == cluster.addr(p)
        assert (n_ip, int(n_port)) == cluster.addr(target)
        ps.close()
    cluster.wait_for_single_primary()


# ------------------------------------------------------------------ the Done-when failover test
def _readonly_on_connect(conn) -> None:
    """redis-py's redis_connect_func hook: the normal handshake, then READONLY (as a Redis Cluster
    client does on a replica)."""
    conn.on_connect()
    conn.send_command("READONLY")
    assert conn.read_response() in (b"OK", "OK")


def test_redis_py_sentinel_follows_kill9_failover(cluster):
    p = cluster.wait_for_single_primary()
    cluster.wait_converged()
    # redis-py's defaults retry a refused connection to a dead sentinel 10 times with backoff:
    # ask each node once and move on to the next (documented in docs/CLUSTERING.md)
    sentinel = Sentinel([cluster.addr(n) for n in cluster.ids], sentinel_kwargs=NO_RETRY)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=100,
                  supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError))
    master = sentinel.master_for(SERVICE, socket_timeout=1.0, socket_connect_timeout=1.0, retry=retry)
    n, kill_at = 2000, 700
    acked: dict[str, str] = {}
    longest = (0.0, -1)
    killed = None
    t_start = time.monotonic()
    for i in range(n):
        if i == kill_at:
            killed = p
            cluster.kill(p)
        key, value = f"sentinel-{i}", f"v{i}"
        t0 = time.monotonic()
        assert master.set(key, value) is True
        took = time.monotonic() - t0
        acked[key] = value
        if took > longest[0]:
            longest = (took, i)
    elapsed = time.monotonic() - t_start
    new_p = cluster.wait_for_single_primary()
    assert new_p != killed
    print(f"\nredis-py Sentinel master_for: {len(acked)} writes acknowledged in {elapsed:.2f}s, "
          f"primary {killed} killed with kill -9 at write {kill_at}; longest pause "
          f"{longest[0] * 1000:.0f} ms (write {longest[1]}); new primary {new_p}")
    # every acknowledged write is readable afterwards, through the same Sentinel-managed client
    keys = list(acked)
    missing = [k for k in keys if master.get(k) != acked[k].encode()]
    assert not missing, f"{len(missing)} acknowledged writes not readable, e.g. {missing[:5]}"

    # replica_for: reads a secondary once the connection sent READONLY
    survivors = [x for x in cluster.ids if x != killed]
    cluster.wait_converged(ids=survivors)
    replica = sentinel.replica_for(SERVICE, socket_timeout=1.0, redis_connect_func=_readonly_on_connect)
    served_by = replica.execute_command("ROLE")
    assert served_by[0] == b"slave", served_by
    info = replica.info("server")
    assert info["tcp_port"] in {cluster.port(x) for x in survivors if x != new_p}
    for k in keys[::50]:
        assert replica.get(k).decode() == acked[k]
    # a plain connection to that secondary still refuses reads (linearizable by default)
    sec = next(x for x in survivors if x != new_p)
    with _rc(cluster, sec) as plain:
        with pytest.raises(ReadOnlyError):
            plain.get(keys[0])
    replica.close()
    master.close()
    cluster.restart(killed)
    cluster.wait_converged()


# ----------------------------------------------------------------------------- follower reads
class _Line:
    def __init__(self, addr):
        self.sock = socket.create_connection(addr, timeout=5)
        self.f = self.sock.makefile("rb")

    def cmd(self, line: str) -> dict:
        import json
        self.sock.sendall(line.encode() + b"\n")
        return json.loads(self.f.readline())

    def close(self):
        self.f.close()
        self.sock.close()


def test_follower_reads_opt_in_line_protocol(cluster):
    p = cluster.wait_for_single_primary()
    assert cluster.send(p, "SET fr-line 41")["status"] == "OK"
    cluster.wait_converged()
    sec = _secondaries(cluster, p)[0]
    c = _Line(cluster.addr(sec))
    try:
        r = c.cmd("GET fr-line")
        assert r["code"] == "NOT_PRIMARY" and r["definite"] is True
        assert c.cmd("READONLY")["status"] == "OK"
        assert c.cmd("GET fr-line") == {"status": "OK", "value": 41}
        assert c.cmd("EXISTS fr-line")["count"] == 1
        assert c.cmd("SET fr-line 42")["code"] == "NOT_PRIMARY"      # writes still go to the primary
        assert c.cmd("READWRITE")["status"] == "OK"
        assert c.cmd("GET fr-line")["code"] == "NOT_PRIMARY"
        role = c.cmd("ROLE")
        assert role["role"] == "slave" and role["primary"] == p
    finally:
        c.close()


def test_follower_reads_opt_in_resp_and_info_shows_lag(cluster):
    p = cluster.wait_for_single_primary()
    with _rc(cluster, p) as w:
        w.set("fr-resp", "x")
    cluster.wait_converged()
    sec = _secondaries(cluster, p)[0]
    with _rc(cluster, sec) as r:
        with pytest.raises(ReadOnlyError):
            r.get("fr-resp")
        assert r.execute_command("READONLY") in (b"OK", True)
        assert r.get("fr-resp") == b"x"
        assert r.dbsize() >= 1
        with pytest.raises(ReadOnlyError):
            r.set("fr-resp", "y")
        repl = r.info("replication")
        assert repl["role"] == "slave" and repl["master_link_status"] == "up"
        assert (repl["master_host"], repl["master_port"]) == cluster.addr(p)
        assert repl["slave_read_only"] == 1
        assert repl["slave_repl_offset"] <= repl["master_repl_offset"]
        assert repl["slave_lag_entries"] == repl["master_repl_offset"] - repl["slave_repl_offset"]
        assert "master_last_io_seconds_ago" in repl
        assert r.execute_command("READWRITE") in (b"OK", True)
        with pytest.raises(ReadOnlyError):
            r.get("fr-resp")


# ------------------------------------------------------------------------------------------ INFO
DEFAULT_SECTIONS = ["Server", "Clients", "Memory", "Persistence", "Stats", "Replication", "CPU",
                    "Keyspace", "Raft"]


def _raw(r: redis.Redis, *args) -> bytes:
    """A command's reply without redis-py's response callback (INFO's is a dict)."""
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        r.connection_pool.release(conn)


def _sections(text: str) -> list[str]:
    return re.findall(r"^# (\w+)\r$", text, re.M)


def test_info_sections_and_field_names(cluster):
    p = cluster.wait_for_single_primary()
    with _rc(cluster, p) as r:
        text = _raw(r, "INFO").decode()
        assert _sections(text) == DEFAULT_SECTIONS
        assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
        for arg in ("all", "default", "everything", "ALL"):
            assert _sections(_raw(r, "INFO", arg).decode()) == DEFAULT_SECTIONS, arg
        assert _sections(_raw(r, "INFO", "server", "CLIENTS").decode()) == ["Server", "Clients"]
        assert _raw(r, "INFO", "nosuchsection") == b""
        info = r.info()
        for field in ("redis_version", "redis_mode", "process_id", "run_id", "tcp_port", "uptime_in_seconds",
                      "connected_clients", "maxclients", "blocked_clients", "used_memory",
                      "used_memory_human", "used_memory_rss", "used_memory_peak", "maxmemory", "loading",
                      "rdb_bgsave_in_progress", "aof_enabled", "aof_rewrite_in_progress",
                      "total_connections_received", "total_commands_processed", "instantaneous_ops_per_sec",
                      "rejected_connections", "keyspace_hits", "keyspace_misses", "expired_keys",
                      "evicted_keys", "total_error_replies", "pubsub_channels", "role", "connected_slaves",
                      "master_repl_offset", "used_cpu_sys", "used_cpu_user", "raft_node_id", "raft_role",
                      "raft_current_term", "raft_leader_id", "raft_commit_index", "raft_last_applied_index"):
            assert field in info, field
        assert info["role"] == "master" and info["raft_role"] == "leader" and info["raft_node_id"] == p
        assert info["connected_slaves"] == 2 and info["tcp_port"] == cluster.port(p)


def test_info_stats_count_commands_and_keyspace_hits(cluster):
    p = cluster.wait_for_single_primary()
    with _rc(cluster, p) as r:
        r.set("hit-me", "1")
        before = r.info("stats")
        for _ in range(5):
            assert r.get("hit-me") == b"1"
        for _ in range(3):
            assert r.get("no-such-key-for-stats") is None
        with pytest.raises(ResponseError):
            r.execute_command("NOSUCHCOMMAND")
        after = r.info("stats")
    assert after["keyspace_hits"] - before["keyspace_hits"] == 5
    assert after["keyspace_misses"] - before["keyspace_misses"] == 3
    # 5 + 3 GETs, the unknown command, and the INFO that read `before`
    assert after["total_commands_processed"] - before["total_commands_processed"] >= 10
    assert after["total_error_replies"] - before["total_error_replies"] >= 1


# ------------------------------------------------------------------------------- redis-cli tools
def _read_pty_lines(fd: int, want, timeout: float) -> list[str]:
    """Lines from a pty master until want(lines) is true or the deadline passes."""
    buf = b""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want(lines):
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += [d.decode(errors="replace").rstrip("\r") for d in done]
    return lines


STAT_LINE = re.compile(r"^(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+) \(\+(\d+)\)\s+(\d+)")


@pytest.mark.skipif(not HAVE_REDIS_TOOLS, reason="redis-cli / redis-benchmark not installed (.ci/run installs them)")
def test_redis_cli_stat_shows_live_figures_under_benchmark_load(cluster):
    p = cluster.wait_for_single_primary()
    host, port = cluster.addr(p)
    bench = subprocess.Popen(["redis-benchmark", "-h", host, "-p", str(port), "-t", "set,get", "-n", "200000",
                              "-c", "8", "-r", "1000", "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    master_fd, slave_fd = pty.openpty()         # a tty: redis-cli's stdout is line-buffered
    stat = subprocess.Popen(["redis-cli", "-h", host, "-p", str(port), "--stat", "-i", "0.25"],
                            stdout=slave_fd, stderr=slave_fd, stdin=subprocess.DEVNULL)
    os.close(slave_fd)
    try:
        def busy(lines):
            rows = [m for m in map(STAT_LINE.match, lines) if m]
            return len(rows) >= 3 and int(rows[-1].group(6)) > 0 and int(rows[-2].group(6)) > 0
        lines = _read_pty_lines(master_fd, busy, timeout=30)
    finally:
        stat.kill()
        stat.wait(timeout=10)
        bench.kill()
        bench.wait(timeout=10)
        os.close(master_fd)
    assert any(l.startswith("keys") and "requests" in l and "connections" in l for l in lines), lines
    rows = [m for m in map(STAT_LINE.match, lines) if m]
    assert len(rows) >= 3, lines
    a, b = rows[-2], rows[-1]
    print(f"\nredis-cli --stat under redis-benchmark:\n  {a.group(0)}\n  {b.group(0)}")
    keys_b, clients_b = int(b.group(1)), int(b.group(3))
    req_a, req_b, delta_b = int(a.group(5)), int(b.group(5)), int(b.group(6))
    assert keys_b >= 1                              # db0:keys is read from INFO keyspace
    assert clients_b >= 8                           # the benchmark's 8 connections + redis-cli
    assert req_b > req_a and delta_b == req_b - req_a > 0
    assert int(b.group(7)) >= 9                     # total_connections_received
    assert b.group(2)[-1] in "BKMG"                 # used_memory, human-readable


@pytest.mark.skipif(not HAVE_REDIS_TOOLS, reason="redis-cli not installed (.ci/run installs them)")
def test_redis_cli_latency(cluster):
    p = cluster.wait_for_single_primary()
    host, port = cluster.addr(p)
    # Without a tty, redis-cli --latency samples for about a second, prints "min max avg count", exits.
    proc = subprocess.Popen(["redis-cli", "-h", host, "-p", str(port), "--latency"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    mn, mx, avg, count = out.split()
    assert int(count) > 0 and int(mn) <= float(avg) <= int(mx), out
