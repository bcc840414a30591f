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
def _links_up(c: LocalCluster) -> bool:
    sts = c.statuses()
    return all(st is not None and all(d["reachable"] for d in st["peers"].values()) for st in sts.values())


@pytest.mark.parametrize("protocol", [2, 3])
def test_sentinel_replies_parse_with_redis_py(cluster, protocol):
    p = cluster.wait_for_single_primary()
    cluster.wait_converged()
    cluster.wait_until(lambda: _links_up(cluster), 10, "every peer link up (num-other-sentinels)")
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
    # what JedisSentinelPool and go-redis listen to: +switch-master on a surviving node
    listener = _rc(cluster, _secondaries(cluster, p)[0])
    events = listener.pubsub()
    events.subscribe("+switch-master")
    assert events.get_message(timeout=5)["type"] == "subscribe"
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
    heard = []          # every primary this node announced; the last one is the one that leads
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not heard or heard[-1] != cluster.addr(new_p)):
        msg = events.get_message(timeout=1)
        if msg is not None and msg["type"] == "message":
            name, _, _, n_ip, n_port = msg["data"].decode().split()
            assert name == SERVICE
            heard.append((n_ip, int(n_port)))
    assert heard and heard[-1] == cluster.addr(new_p), heard
    events.close()
    listener.close()
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


def test_redis_py_sentinel_follows_a_partitioned_primary():
    """The old primary stays alive but is cut off from its peers: it steps down (CheckQuorum) and
    closes its Redis clients' connections, so redis-py asks the nodes again.  Only the write in
    flight at the cut may fail, with an indefinite error (it may or may not have happened).
    The reply leaves with the connection's FIN (TCP_CORK), so redis-py sees the connection closed
    before its next command.  Should a command still reach a node that is not primary,
    redis-py 8's Retry reconnects to that same address after -READONLY (redis/redis-py#3874)
    and fails with "The previous master is now a slave" once its retries are spent; such a
    write was never applied.  At most two writes may fail either way; none acknowledged is lost."""
    c = LocalCluster(n=3, proxied=True)
    try:
        c.start()
        p = c.wait_for_single_primary()
        sentinel = Sentinel([c.addr(n) for n in c.ids], sentinel_kwargs=NO_RETRY)
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=20,
                      supported_errors=(RedisConnectionError, RedisTimeoutError))
        master = sentinel.master_for(SERVICE, socket_timeout=1.0, retry=retry)
        acked, unknown, refused, longest = {}, [], [], 0.0
        for i in range(1000):
            if i == 300:
                c.partition(p)
            t0 = time.monotonic()
            try:
                assert master.set(f"part-{i}", i) is True
                acked[f"part-{i}"] = str(i).encode()
            except ResponseError as e:            # indefinite only: NOQUORUM / TIMEOUT
                assert str(e).startswith(("NOQUORUM", "TIMEOUT")) and "may or may not" in str(e), e
                unknown.append(i)
            except RedisConnectionError as e:     # redis-py#3874, see above
                assert "previous master is now a slave" in str(e), e
                refused.append(i)
            longest = max(longest, time.monotonic() - t0)
        new_p = c.wait_for_single_primary(exclude=[p])
        print(f"\nredis-py Sentinel master_for, primary {p} partitioned at write 300: {len(acked)} "
              f"acknowledged, {len(unknown)} indefinite {unknown}, {len(refused)} refused after redis-py's "
              f"retries {refused}, longest pause {longest * 1000:.0f} ms; new primary {new_p}")
        assert len(unknown) + len(refused) <= 2
        missing = [k for k, v in acked.items() if master.get(k) != v]
        assert not missing, missing[:5]
        master.close()
    finally:
        c.heal()
        c.cleanup()


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
    cluster.wait_until(lambda: _links_up(cluster), 10, "every peer link up (connected_slaves)")
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


def test_info_counts_rejected_connections():
    c = LocalCluster(n=1, extra_args=["--max-clients", "2"])
    held = []
    try:
        c.start()
        host, port = c.addr("node1")
        r = redis.Redis(host=host, port=port, socket_timeout=5, single_connection_client=True)
        held.append(r)
        before = r.info("stats")
        extra = socket.create_connection((host, port), timeout=5)      # the second allowed one
        held.append(extra)
        refused = socket.create_connection((host, port), timeout=5)
        refused.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert refused.recv(100).startswith(b"-ERR max number of clients reached")
        refused.close()
        after = r.info("stats")
        assert after["rejected_connections"] - before["rejected_connections"] == 1
        assert after["total_connections_received"] - before["total_connections_received"] == 1
        assert r.info("clients")["connected_clients"] == 2
    finally:
        for h in held:
            h.close()
        c.cleanup()


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
        with _rc(cluster, p) as r:        # the same load, as INFO's own rate shows it
            ops = r.info("stats")["instantaneous_ops_per_sec"]
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
    assert ops > 0, ops                             # instantaneous_ops_per_sec under the same load


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


# ------------------------------------------------------------------------------------------ docs
def test_clustering_doc_redis_py_example_runs(cluster, capsys):
    """The redis-py example of docs/CLUSTERING.md, run as written against this cluster."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "docs", "CLUSTERING.md")) as f:
        doc = f.read()
    section = doc[doc.index("### redis-py"):]
    start = section.index("```python runnable\n") + len("```python runnable\n")
    code = section[start:section.index("\n```", start)]
    addrs = ", ".join(f'("{h}", {p})' for h, p in map(cluster.addr, cluster.ids))
    code, n = re.subn(r"^SENTINELS = \[.*\]$", f"SENTINELS = [{addrs}]", code, flags=re.M)
    assert n == 1, "the example must define SENTINELS on one line"
    cluster.wait_for_single_primary()
    exec(compile(code, "docs/CLUSTERING.md#redis-py", "exec"), {"__name__": "doc_example"})
    printed = capsys.readouterr().out.split("\n")
    assert printed[0] == "b'hello'"
    assert printed[1] in ("b'hello' b'slave'", "None b'slave'"), printed


# ------------------------------------------------------------------------- units (no cluster)
import kv_info  # noqa: E402
import kv_protocol as P  # noqa: E402
import kv_sentinel as S  # noqa: E402


def _status(role="secondary", primary="node1", reach=(True, True), match=(None, None)) -> dict:
    peers = {}
    me = "node2" if role != "primary" else "node1"
    others = [n for n in ("node1", "node2", "node3") if n != me]
    for (n, r, m) in zip(others, reach, match):
        peers[n] = {"addr": f"10.0.0.{n[-1]}:700{n[-1]}", "reachable": r, "match_index": m,
                    "lag": None if m is None else 9 - m}
    return {"node_id": me, "address": f"10.0.0.{me[-1]}:700{me[-1]}", "role": role, "election_term": 4,
            "primary": primary, "primary_addr": f"10.0.0.{primary[-1]}:700{primary[-1]}" if primary else None,
            "commit_index": 9, "last_applied": 8, "last_log_index": 9, "snapshot_index": 0, "keys": 3,
            "digest": "00ff", "peers": peers, "fsync": "always", "voted_for": "node1"}


def test_parse_ecosystem_commands():
    R = P.parse_resp
    assert R([b"sentinel", b"slaves", b"kvstore"]) == P.Sentinel("REPLICAS", "kvstore")
    assert R([b"SENTINEL", b"masters"]) == P.Sentinel("MASTERS")
    assert R([b"SENTINEL", b"get-master-addr-by-name", b"x"]) == P.Sentinel("GET-MASTER-ADDR-BY-NAME", "x")
    assert R([b"SENTINEL", b"MONITOR", b"m", b"h", b"1", b"2"]) == P.Sentinel("MONITOR", None, ("m", "h", "1", "2"))
    assert isinstance(R([b"SENTINEL", b"MASTER"]), P.Invalid)
    assert isinstance(R([b"SENTINEL", b"MASTERS", b"extra"]), P.Invalid)
    assert R([b"SENTINEL", b"nope"]).message == "ERR Unknown sentinel subcommand 'nope'"
    assert R([b"ROLE"]) == P.Role() and R([b"readonly"]) == P.ReadOnly() and R([b"READWRITE"]) == P.ReadWrite()
    assert isinstance(R([b"ROLE", b"x"]), P.Invalid)
    assert R([b"SUBSCRIBE", b"a", b"b"]) == P.Subscribe(("a", "b"))
    assert R([b"PSUBSCRIBE", b"*"]) == P.Subscribe(("*",), True)
    assert R([b"UNSUBSCRIBE"]) == P.Unsubscribe() and R([b"PUNSUBSCRIBE", b"x"]) == P.Unsubscribe(("x",), True)
    assert isinstance(R([b"SUBSCRIBE"]), P.Invalid)
    L = P.parse_line
    assert L(b"READONLY") == P.ReadOnly() and L(b"readwrite") == P.ReadWrite() and L(b"ROLE") == P.Role()
    assert isinstance(L(b"READONLY now"), P.Invalid)
    assert L(b"SENTINEL masters").code == P.UNKNOWN_COMMAND          # RESP only


def test_sentinel_view_primary_known_and_down():
    v = S.ClusterView.from_status(_status(), "kvstore")
    m = S.master(v, "kvstore")
    d = dict(m)
    assert (d["ip"], d["port"], d["flags"], d["num-other-sentinels"], d["quorum"]) == \
        ("10.0.0.1", "7001", "master", "2", "2")
    assert S.get_master_addr(v, "kvstore") == ["10.0.0.1", "7001"]
    assert [dict(r)["port"] for r in S.replicas(v, "kvstore")] == ["7002", "7003"]
    with pytest.raises(P.CommandError) as e:
        S.master(v, "other")
    assert e.value.resp() == b"-ERR No such master with that name\r\n"
    assert S.get_master_addr(v, "other") is None
    # no primary now: the last one known, flagged down
    down = S.ClusterView.from_status(_status(primary=None, reach=(False, True)), "kvstore", last_primary="node1")
    d = dict(S.masters(down)[0])
    assert d["flags"] == "s_down,o_down,master" and d["ip"] == "10.0.0.1" and d["num-other-sentinels"] == "1"
    assert S.get_master_addr(down, "kvstore") == ["10.0.0.1", "7001"]
    reps = {dict(r)["port"]: dict(r)["flags"] for r in S.replicas(down, "kvstore")}
    assert reps == {"7002": "slave", "7003": "slave"}
    sents = {dict(r)["port"]: dict(r)["flags"] for r in S.sentinels(down, "kvstore")}
    assert sents == {"7001": "s_down,sentinel,disconnected", "7003": "sentinel"}
    assert S.role_reply(down) == ["slave", "10.0.0.1", 7001, "connect", 8]
    never = S.ClusterView.from_status(_status(primary=None), "kvstore")
    assert S.get_master_addr(never, "kvstore") is None
    # the primary's own view
    pv = S.ClusterView.from_status(_status(role="primary", reach=(True, False), match=(9, 5)), "kvstore")
    assert S.role_reply(pv) == ["master", 9, [["10.0.0.2", "7002", "9"]]]
    reps = {dict(r)["port"]: (dict(r)["flags"], dict(r)["slave-repl-offset"]) for r in S.replicas(pv, "kvstore")}
    assert reps == {"7002": ("slave", "9"), "7003": ("s_down,slave,disconnected", "5")}
    assert S.ckquorum(pv, "kvstore").startswith("OK 2 usable")


def test_sentinel_replies_encode_as_sentinel_sends_them():
    m = {"name": "kvstore", "port": "7001"}
    enc = P.encode_resp_value
    assert enc([m], 2) == b"*1\r\n*4\r\n$4\r\nname\r\n$7\r\nkvstore\r\n$4\r\nport\r\n$4\r\n7001\r\n"
    assert enc([m], 3) == b"*1\r\n%2\r\n$4\r\nname\r\n$7\r\nkvstore\r\n$4\r\nport\r\n$4\r\n7001\r\n"
    assert enc(["slave", "h", 1], 2) == b"*3\r\n$5\r\nslave\r\n$1\r\nh\r\n:1\r\n"
    down = S.ClusterView.from_status(_status(primary=None, reach=(False, False)), "kvstore")
    with pytest.raises(P.CommandError) as e:
        S.ckquorum(down, "kvstore")
    assert e.value.resp().startswith(b"-NOQUORUM 1 usable Sentinels")


def test_event_hub_publishes_switch_master_once_per_new_primary():
    now = [0.0]
    hub = S.EventHub("kvstore", lambda: (None, None), clock=lambda: now[0])
    got, pgot = [], []
    a = S.Subscriber(got.append, 2)
    b = S.Subscriber(pgot.append, 3)
    assert hub.subscribe(a, ("+switch-master", "other"), False) == [1, 2]
    assert hub.subscribe(b, ("+switch*",), True) == [1]
    hub.observe("node1", "10.0.0.1:7001")
    hub.observe("node1", "10.0.0.1:7001")
    hub.observe(None, None)
    now[0] = 2.5
    assert hub.since_ms() == 2500
    hub.observe("node1", "10.0.0.1:7001")          # the same primary again: no event
    hub.observe("node2", "10.0.0.2:7002")
    msg1 = "kvstore 10.0.0.1 7001 10.0.0.1 7001"
    msg2 = "kvstore 10.0.0.1 7001 10.0.0.2 7002"
    assert got == [P.resp_array(["message", "+switch-master", msg1]),
                   P.resp_array(["message", "+switch-master", msg2])]
    assert pgot == [b">" + P.resp_array(["pmessage", "+switch*", "+switch-master", m])[1:] for m in (msg1, msg2)]
    assert hub.subscriber_count() == (2, 1, 2)
    assert hub.unsubscribe(a, (), False) == [("+switch-master", 1), ("other", 0)]
    assert hub.subscriber_count() == (0, 1, 1)

    def broken(data):
        raise BrokenPipeError("gone")
    c = S.Subscriber(broken, 2)
    hub.subscribe(c, ("+switch-master",), False)
    assert hub.publish("+switch-master", "x") == 1          # b only; c is dropped
    assert hub.subscriber_count() == (0, 1, 1)


def test_info_text_sections_and_format():
    stats = kv_info.ServerStats()
    cs = stats.opened()
    cs.commands += 7
    cs.hits += 2
    gone = stats.opened()
    gone.commands += 3
    gone.misses += 1
    stats.closed(gone)
    stats.closed(gone)                                      # idempotent
    stats.rejected()
    t = stats.totals()
    assert (t["total_commands_processed"], t["keyspace_hits"], t["keyspace_misses"],
            t["total_connections_received"], t["rejected_connections"], stats.connected) == (10, 2, 1, 2, 1, 1)
    facts = {"status": _status(role="primary", match=(9, 5)), "stats": t, "proc": kv_info.process_facts(),
             "run_id": "ab" * 20, "port": 7001, "maxclients": 100, "connected_clients": 1, "started": 0,
             "service": "kvstore", "pubsub": (0, 0, 0), "replid": "cd" * 20,
             "peer_heard_ago": {"node2": 0.2, "node3": None}}
    text = kv_info.info_text(facts, None)
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    assert _sections(text) == DEFAULT_SECTIONS
    assert "db0:keys=3,expires=0,avg_ttl=0\r\n" in text
    assert "slave1:ip=10.0.0.3,port=7003,state=online,offset=5,lag=-1,lag_entries=4,id=node3\r\n" in text
    assert "slave0:ip=10.0.0.2,port=7002,state=online,offset=9,lag=0,lag_entries=0,id=node2\r\n" in text
    assert kv_info.info_text(facts, "nosuch") == ""
    assert _sections(kv_info.info_text(facts, "raft server")) == ["Server", "Raft"]
    assert kv_info.select_sections("EVERYTHING") == list(kv_info.SECTIONS)
    assert kv_info.human_bytes(1023) == "1023B" and kv_info.human_bytes(1536) == "1.50K"
    for now, total in ((0.0, 0), (0.1, 100), (0.2, 300)):
        stats._clock = lambda now=now: now
        cs.commands = total
        stats.sample()
    assert stats.instantaneous_ops() == 1500


class _FakeConn:
    def __init__(self, resp=True, readonly=False, subscribed=False, blocking=False):
        self.session = type("S", (), {"resp": resp, "readonly": readonly,
                                      "sub": object() if subscribed else None})()
        self.blocking = blocking
        self.killed = False

    def kill(self):
        self.killed = True


def test_demotion_watch_closes_what_sentinel_would():
    primary = [False]
    normal, replica, sub, line = _FakeConn(), _FakeConn(readonly=True), _FakeConn(subscribed=True), \
        _FakeConn(resp=False)
    blocked = _FakeConn(blocking=True)     # kv_blocking answers it UNBLOCKED, then closes it
    conns = [normal, replica, sub, line, blocked]
    watch = S.DemotionWatch("n1", lambda: primary[0], lambda: conns)
    assert watch() == 0                          # starts as a secondary: nothing to do
    primary[0] = True
    assert watch() == 1 and replica.killed and not normal.killed      # promoted: replica clients go
    assert watch() == 0
    primary[0] = False
    assert watch() == 1 and normal.killed and not sub.killed and not line.killed   # demoted
    assert not blocked.killed
