"""Tests for example_client.py and the kv_client.py library it re-exports: the library, the demos and the REPL.

Layout:
    FakeNode, fake_cluster     a tiny in-process line-protocol node (enough of DESIGN §3.1) that can
                               drop connections, answer TIMEOUT, play secondary: exercises the retry
                               rules deterministically, without a real cluster
    test_fake_*                KVStoreClient / Pipeline / ClusterClient rules against FakeNodes
    cluster (fixture)          a real 3-node LocalCluster (cluster_manager.py) on free ports
    test_live_*                round trips, pipeline, NOT_PRIMARY, each demo as a subprocess, the
                               REPL through a pipe and a pty, and -- last, since they kill the
                               primary -- failover under a write loop, the REPL across a failover,
                               and the failover demo.

No fixed sleeps: every wait polls a condition until a deadline.  Every process started here is
stopped by PID (LocalCluster.stop() for the nodes, Popen.kill()/waitpid for the clients).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

import example_client as ec
import kv_client
from kv_localcluster import wait_until
from example_client import (ClusterClient, ClusterUnavailable, ConnectFailed, ConnectionLost,
                            KeyNotFound, KVError, KVStoreClient, NotPrimary)

HERE = Path(__file__).resolve().parent
CLIENT = str(HERE / "example_client.py")


# =============================================================================================
# A fake node
# =============================================================================================
class FakeNode:
    """Speaks the line protocol from one thread per connection.  `store` may be shared between
    fakes (the "replicated" state).  `faults` is a deque of (command, action) consumed by the
    first matching request:
        "drop_before"  close the connection without executing (client: connection lost)
        "drop_after"   execute, then close without answering (indefinite for the client)
        "timeout"      execute, then answer TIMEOUT with definite false
        "no_quorum"    do not execute, answer NO_QUORUM with definite true
        "disk_full"    do not execute, answer DISK_FULL (definite)
    """

    def __init__(self, node_id: str, store: dict | None = None, primary: bool = True):
        self.node_id = node_id
        self.store = {} if store is None else store
        self.primary = primary
        self.primary_ref: FakeNode | None = None      # who a secondary names as primary
        self.faults: deque = deque()
        self.requests: list[str] = []
        self.accepted = 0
        self.password: str | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        node = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with node._lock:
                    node.accepted += 1
                    node._conns.add(self.connection)
                authed = node.password is None
                try:
                    while True:
                        line = self.rfile.readline()
                        if not line:
                            return
                        text = line.decode().rstrip("\r\n")
                        if not text.strip():
                            continue
                        node.requests.append(text)
                        answer, authed = node.answer(text, authed)
                        if answer is None:
                            return                  # drop the connection
                        self.wfile.write((json.dumps(answer) + "\n").encode())
                except OSError:
                    return
                finally:
                    with node._lock:
                        node._conns.discard(self.connection)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = "%s:%d" % self.server.server_address
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name=f"fake-{node_id}")
        self.thread.start()

    def _fault(self, cmd: str) -> str | None:
        for i, (c, action) in enumerate(self.faults):
            if c == cmd:
                del self.faults[i]
                return action
        return None

    def answer(self, text: str, authed: bool):
        parts = text.split(None, 1)
        cmd = parts[0].upper()
        rest = parts[1] if len(parts) > 1 else ""
        if cmd == "AUTH":
            if rest == self.password:
                return {"status": "OK", "message": "Authenticated"}, True
            return {"status": "ERROR", "code": "AUTH_FAILED", "message": "invalid password", "definite": True}, False
        if not authed and cmd not in ("PING",):
            return {"status": "ERROR", "code": "AUTH_REQUIRED", "message": "Authentication required",
                    "definite": True}, authed
        if cmd == "PING":
            return {"status": "OK", "message": "PONG"}, authed
        if cmd == "STATUS":
            return self.status(), authed
        if not self.primary:
            p = self.primary_ref
            msg = "This node is not primary" + (f"; primary is {p.node_id} at {p.addr}" if p else "")
            return {"status": "ERROR", "code": "NOT_PRIMARY", "message": msg, "definite": True,
                    "primary": p.node_id if p else None, "primary_addr": p.addr if p else None}, authed
        action = self._fault(cmd)
        if action == "drop_before":
            return None, authed
        if action == "no_quorum":
            return {"status": "ERROR", "code": "NO_QUORUM", "message": "no majority", "definite": True}, authed
        if action == "disk_full":
            return {"status": "ERROR", "code": "DISK_FULL", "message": "This node cannot persist writes",
                    "definite": True}, authed
        result = self.execute(cmd, rest)
        if action == "drop_after":
            return None, authed
        if action == "timeout":
            return {"status": "ERROR", "code": "TIMEOUT", "message": "not committed in time; it may or "
                    "may not be applied", "definite": False}, authed
        return result, authed

    def execute(self, cmd: str, rest: str) -> dict:
        store = self.store
        args = rest.split()
        if cmd == "SET":
            key, raw = rest.split(None, 1)
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
            store[key] = value
            return {"status": "OK", "message": f"Key '{key}' set"}
        if cmd == "GET":
            if args[0] not in store:
                return {"status": "ERROR", "code": "NOT_FOUND", "message": f"Key '{args[0]}' not found",
                        "definite": True}
            return {"status": "OK", "value": store[args[0]]}
        if cmd in ("DEL", "DELETE"):
            if args[0] not in store:
                return {"status": "ERROR", "code": "NOT_FOUND", "message": f"Key '{args[0]}' not found",
                        "definite": True}
            del store[args[0]]
            return {"status": "OK", "message": f"Key '{args[0]}' deleted"}
        if cmd == "EXISTS":
            n = sum(1 for k in args if k in store)
            return {"status": "OK", "exists": n > 0, "count": n}
        if cmd == "KEYS":
            import fnmatch
            pat = args[0] if args else "*"
            keys = sorted(k for k in store if fnmatch.fnmatchcase(k, pat))
            return {"status": "OK", "keys": keys, "count": len(keys)}
        return {"status": "ERROR", "code": "UNKNOWN_COMMAND", "message": f"Unknown command '{cmd}'",
                "definite": True}

    def status(self) -> dict:
        p = self if self.primary else self.primary_ref
        return {"status": "OK", "node_id": self.node_id, "role": "primary" if self.primary else "secondary",
                "election_term": 1, "primary": p.node_id if p else None, "primary_addr": p.addr if p else None,
                "commit_index": len(self.requests), "last_applied": len(self.requests), "keys": len(self.store),
                "digest": "0" * 16, "peers": {}, "pid": os.getpid(), "address": self.addr}

    def drop_connections(self) -> None:
        """Close every live client connection (like a node restart, seen from the client)."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass        # already gone
            s.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.drop_connections()


@pytest.fixture
def fakes():
    """Three fakes sharing one store: f[0] primary, f[1], f[2] secondaries pointing at it."""
    store: dict = {}
    nodes = [FakeNode("node1", store, True), FakeNode("node2", store, False), FakeNode("node3", store, False)]
    for n in nodes[1:]:
        n.primary_ref = nodes[0]
    yield nodes
    for n in nodes:
        n.stop()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# =============================================================================================
# Library against fakes
# =============================================================================================
def test_fake_kvstoreclient_round_trips(fakes):
    host, port = ec.split_addr(fakes[0].addr)
    with KVStoreClient(host, port) as c:
        assert c.ping() == {"status": "OK", "message": "PONG"}
        assert c.set("k", "hello world")["status"] == "OK"
        assert c.get("k") == {"status": "OK", "value": "hello world"}
        for value in ec.TYPE_SAMPLES:
            c.set("t", value[1])
            assert ec.same(c.get("t")["value"], value[1]), value
        assert c.exists("k")["exists"] is True
        assert c.keys("k*")["keys"] == ["k"]
        assert c.delete("k")["status"] == "OK"
        assert c.get("k")["code"] == "NOT_FOUND"
        assert c.status()["node_id"] == "node1"
        assert c.send_command("PING") == {"status": "OK", "message": "PONG"}
    assert fakes[0].requests[1] == 'SET k "hello world"'      # every value is json.dumps'ed


def test_fake_values_are_json_on_the_wire(fakes):
    host, port = ec.split_addr(fakes[0].addr)
    with KVStoreClient(host, port) as c:
        for s in ("42", "true", "null", "[1]", "", " x "):
            c.set("s", s)
            assert c.get("s")["value"] == s and isinstance(c.get("s")["value"], str)
        with pytest.raises(ValueError):
            c.set("n", float("nan"))
        with pytest.raises(ValueError):
            c.set("a b", 1)                    # would silently become key "a"
        with pytest.raises(ValueError):
            c.get("a\nSET b 2")
        with pytest.raises(ValueError):
            c.send_command("PING\nPING")


def test_fake_pipeline_answers_in_order(fakes):
    host, port = ec.split_addr(fakes[0].addr)
    with KVStoreClient(host, port) as c:
        pipe = c.pipeline()
        for i in range(200):
            pipe.set(f"p{i}", i)
        pipe.get("p7").get("missing").ping()
        assert len(pipe) == 203
        answers = pipe.execute()
        assert len(answers) == 203 and len(pipe) == 0
        assert all(a["status"] == "OK" for a in answers[:200])
        assert answers[200]["value"] == 7
        assert answers[201]["code"] == "NOT_FOUND"
        assert answers[202]["message"] == "PONG"
        assert c.pipeline().execute() == []
        assert c.get("p199")["value"] == 199     # the stream is still in step


def test_fake_lazy_reconnect_after_the_node_closed(fakes, monkeypatch):
    monkeypatch.setattr(kv_client, "_IDLE_CHECK_S", 0.0)   # the library lives in kv_client
    host, port = ec.split_addr(fakes[0].addr)
    c = KVStoreClient(host, port)
    assert c.set("x", 1)["status"] == "OK"
    fakes[0].drop_connections()
    wait_until(lambda: c._stale(), 2, "the client to see the close")
    assert c.get("x")["value"] == 1              # stale connection detected, request on a new one
    assert fakes[0].accepted == 2
    c.close()


def test_fake_transport_errors_are_connection_errors(fakes):
    c = KVStoreClient("127.0.0.1", free_port(), timeout=1)
    with pytest.raises(ConnectFailed) as ei:
        c.ping()
    assert isinstance(ei.value, ConnectionError) and ei.value.definite
    host, port = ec.split_addr(fakes[0].addr)
    c = KVStoreClient(host, port)
    fakes[0].faults.append(("SET", "drop_after"))
    with pytest.raises(ConnectionLost) as ei:
        c.set("y", 1)
    assert ei.value.sent and not ei.value.definite
    assert c.get("y")["value"] == 1              # reconnected lazily; the write had happened
    c.close()


def test_fake_auth(fakes):
    fakes[0].password = "s3cret"
    host, port = ec.split_addr(fakes[0].addr)
    c = KVStoreClient(host, port)
    assert c.get("k")["code"] == "AUTH_REQUIRED"
    assert c.auth("wrong")["code"] == "AUTH_FAILED"
    assert c.auth("s3cret")["status"] == "OK"
    assert c.set("k", 1)["status"] == "OK"
    c.close()
    with KVStoreClient(host, port, password="s3cret") as c2:
        assert c2.get("k")["value"] == 1
    with pytest.raises(KVError) as ei:
        KVStoreClient(host, port, password="nope").connect()
    assert ei.value.code == "AUTH_FAILED"


def test_fake_cluster_client_follows_not_primary_hint(fakes):
    cc = ClusterClient([fakes[2].addr], deadline=2)
    assert cc.set("a", {"x": [1, 2]}) is True
    assert cc.primary_hint == fakes[0].addr
    assert cc.get("a") == {"x": [1, 2]}
    assert cc.known_nodes()["node1"] == fakes[0].addr
    assert cc.primary() == ec.PrimaryInfo("node1", fakes[0].addr, 1)
    assert cc.status()["node_id"] == "node1"
    assert cc.status("node1")["role"] == "primary"
    assert set(cc.cluster_status()) == {fakes[2].addr, fakes[0].addr}
    cc.close()


def test_fake_each_member_listed_once(fakes, monkeypatch):
    """Nodes given as localhost:P while peers report 127.0.0.1:P: one entry per node id."""
    for n in fakes:
        plain = n.status
        monkeypatch.setattr(n, "status", lambda n=n, plain=plain: {
            **plain(), "peers": {m.node_id: {"addr": m.addr} for m in fakes if m is not n}})
    given = [n.addr.replace("127.0.0.1", "localhost") for n in fakes]
    cc = ClusterClient(given, deadline=2)
    assert list(cc.cluster_status()) == given
    assert sorted(cc.known_nodes().values()) == sorted(given)
    cc.close()
    cc = ClusterClient(given[1:2], deadline=2)              # the others are learned from peers
    sts = cc.cluster_status()
    assert sorted(s["node_id"] for s in sts.values()) == ["node1", "node2", "node3"]
    cc.close()


def test_fake_not_primary_as_exception(fakes):
    host, port = ec.split_addr(fakes[1].addr)
    with KVStoreClient(host, port) as c:
        answer = c.set("k", 1)
    with pytest.raises(NotPrimary) as ei:
        ec.check_answer(answer)
    assert ei.value.primary == "node1" and ei.value.primary_addr == fakes[0].addr
    assert ei.value.definite and ei.value.code == "NOT_PRIMARY"


def test_fake_get_missing_raises_or_defaults(fakes):
    cc = ClusterClient([f.addr for f in fakes], deadline=2)
    with pytest.raises(KeyNotFound) as ei:
        cc.get("nope")
    assert isinstance(ei.value, KeyError) and ei.value.code == "NOT_FOUND"
    assert "nope" in str(ei.value)
    assert cc.get("nope", None) is None
    cc.set("null", None)
    assert cc.get("null") is None and cc.exists("null") is True
    assert cc.delete("null") is True and cc.delete("null") is False
    cc.close()


def test_fake_idempotent_ops_retry_after_indefinite_failures(fakes):
    f = fakes[0]
    cc = ClusterClient([x.addr for x in fakes], deadline=3)
    f.faults.extend([("SET", "drop_after"), ("SET", "timeout"), ("SET", "drop_before"), ("SET", "no_quorum")])
    assert cc.set("k", "v") is True
    assert cc.retries >= 4 and not f.faults
    # DELETE: the first attempt removes the key but the answer is lost; the retry answers
    # NOT_FOUND, which counts as success after an indefinite failure.
    f.faults.append(("DELETE", "drop_after"))
    assert cc.delete("k") is True
    assert "k" not in f.store
    f.faults.append(("DELETE", "timeout"))
    cc.set("k2", 1)
    assert cc.delete("k2") is True
    cc.close()


def test_fake_non_idempotent_command_not_resent_after_indefinite_failure(fakes):
    f = fakes[0]
    cc = ClusterClient([fakes[1].addr, f.addr], deadline=3)
    f.faults.append(("SET", "drop_after"))
    before = len(f.requests)
    with pytest.raises(ConnectionLost):
        cc.execute_command("SET once 1")
    assert len(f.requests) == before + 1         # sent exactly once
    f.faults.append(("SET", "timeout"))
    with pytest.raises(KVError) as ei:
        cc.execute_command("SET once 2")
    assert ei.value.code == "TIMEOUT" and not ei.value.definite
    # definite failures are re-sent even for non-idempotent commands
    f.faults.append(("SET", "no_quorum"))
    assert cc.execute_command("SET once 3")["status"] == "OK"
    assert f.store["once"] == 3
    f.faults.append(("SET", "disk_full"))            # DISK_FULL: definite, so re-sent, once
    n = len(f.requests)
    assert cc.execute_command("SET once 4")["status"] == "OK"
    assert f.store["once"] == 4 and len([r for r in f.requests[n:] if r.startswith("SET once 4")]) == 2
    assert cc.execute_command("SET twice 1", idempotent=True)["status"] == "OK"
    cc2 = ClusterClient([fakes[1].addr], deadline=3)
    assert cc2.execute_command("PING")["message"] == "PONG" and cc2.primary_hint is None
    cc2.close()
    with pytest.raises(KVError) as ei:
        cc.execute_command("BOGUS")
    assert ei.value.code == "UNKNOWN_COMMAND"
    cc.close()


def test_fake_cluster_unavailable_after_deadline(fakes):
    fakes[0].stop()                             # secondaries still name it; nobody accepts writes
    cc = ClusterClient([f.addr for f in fakes], deadline=0.6)
    t0 = time.monotonic()
    with pytest.raises(ClusterUnavailable) as ei:
        cc.set("k", 1)
    took = time.monotonic() - t0
    assert took >= 0.6                          # kept trying until the deadline (and then stopped)
    e = ei.value
    assert isinstance(e, ConnectionError) and e.definite and e.attempts > 3
    assert "cluster unavailable" in str(e) and "SET" in str(e) and e.last_error
    dead = ClusterClient([f"127.0.0.1:{free_port()}"], deadline=0.3)
    with pytest.raises(ClusterUnavailable, match="connect"):
        dead.get("k")
    with pytest.raises(ClusterUnavailable):
        dead.primary()


def test_fake_backoff_is_bounded_and_jittered(fakes, monkeypatch):
    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(kv_client.time, "sleep", lambda s: (sleeps.append(s), real_sleep(min(s, 0.001))))
    fakes[0].stop()
    cc = ClusterClient([fakes[1].addr], deadline=1.5, backoff_initial=0.02, backoff_max=0.5)
    with pytest.raises(ClusterUnavailable):
        cc.set("k", 1)
    assert sleeps and sleeps[0] <= 0.02 and max(sleeps) <= 0.5
    assert any(s > 0.2 for s in sleeps)          # it did grow


def test_fake_one_connection_per_thread(fakes):
    cc = ClusterClient([fakes[0].addr], deadline=3)
    errors = []

    def work(t):
        try:
            for i in range(50):
                cc.set(f"t{t}:{i}", i)
                assert cc.get(f"t{t}:{i}") == i
        except (AssertionError, ConnectionError, KVError) as e:
            errors.append(e)

    ths = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert not errors
    assert fakes[0].accepted == 8
    cc.close()


def test_parse_value_like_the_server():
    assert ec.parse_value("1") == 1
    assert ec.parse_value("hello world") == "hello world"
    assert ec.parse_value('"1"') == "1"
    assert ec.parse_value("[1, {\"a\": null}]") == [1, {"a": None}]
    assert ec.parse_value("NaN") == "NaN" and ec.parse_value("1e400") == "1e400"
    assert ec.parse_value("  7") == 7
    assert ec.parse_nodes("a:1, b:2,a:1") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        ec.parse_nodes("nope")


def run_repl(nodes: list[str], script: str, timeout: float = 30, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CLIENT, "--demo", "interactive", "--nodes", ",".join(nodes),
                           "--deadline", "5"], input=script, capture_output=True, text=True,
                          timeout=timeout, env=env or repl_env())


def repl_env(home: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)
    if home:
        env["HOME"] = home
    env["KV_STORE_HISTORY"] = os.path.join(home or os.environ.get("TMPDIR", "/tmp"), "kv_test_history")
    return env


def test_fake_repl_through_a_pipe(fakes, tmp_path):
    r = run_repl([f.addr for f in fakes], "set a 1\nget a\nset b hello world\nGET b\nset c \"1\"\nget c\n"
                 "exists a\nkeys\ndelete a\nget a\nset x\nfrobnicate\nuse node2\nget b\nuse auto\n"
                 "cluster\nhelp\nquit\nget b\n", env=repl_env(str(tmp_path)))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert fakes[0].store.get("b") == "hello world" and fakes[0].store.get("c") == "1"
    lines = out.splitlines()
    assert lines[0] == "kv:node1> OK"
    assert lines[1] == "kv:node1> 1"
    assert 'kv:node1> "hello world"' in out
    assert 'kv:node1> "1"' in out
    assert "true" in out and "2) b" in out and "deleted" in out
    assert "(not found)" in out
    assert "usage: set <key> <value>" in out
    assert "unknown command 'frobnicate'" in out
    assert "NOT_PRIMARY" in out and "primary is node1" in out
    assert "node1" in out and "primary" in out                  # cluster table
    assert "set <key> <value>" in out                           # help
    # one prompt per line up to and including `quit`; the `get b` after it is never read
    assert out.count("kv:") + out.count("kv@") == 18 and "Traceback" not in r.stderr
    assert out.endswith("kv:node1> ")


def test_fake_repl_eof_exits_cleanly(fakes, tmp_path):
    r = run_repl([fakes[0].addr], "set k v\n", env=repl_env(str(tmp_path)))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert r.stdout.startswith("kv:node1> OK")
    r = run_repl([fakes[0].addr], "", env=repl_env(str(tmp_path)))
    assert r.returncode == 0 and r.stderr == ""


# =============================================================================================
# Live cluster (LocalCluster from cluster_manager.py)
# =============================================================================================
def consecutive_free_ports(n: int) -> int:
    """A base port such that base..base+n-1 are all free right now (so `cluster_manager.py
    --base-port` can name the cluster), below the ephemeral range, never 6379-6381."""
    import random
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(12000, 30000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 nodes on consecutive free ports (`.cm_args` names them to cluster_manager.py's CLI,
    which refuses to act on them: they are not a cluster it recorded)."""
    cm = pytest.importorskip("cluster_manager")
    data_dir = str(tmp_path_factory.mktemp("kvclient"))
    base = consecutive_free_ports(3)
    c = cm.LocalCluster(n=3, base_port=base, data_dir=data_dir)
    c.cm_args = f"--base-port {base} --nodes 3 --data-dir {data_dir}"
    c.start()
    try:
        c.wait_for_single_primary(timeout=15)
        yield c
    finally:
        c.stop()


def node_addrs(cluster) -> list[str]:
    addrs = cluster.addresses()
    if isinstance(addrs, dict):
        addrs = list(addrs.values())
    return [a if isinstance(a, str) else "%s:%d" % tuple(a) for a in addrs]


def primary_of(cluster) -> tuple[str, str, int]:
    """(node_id, addr, pid) of the current primary, asked over the wire."""
    cc = ClusterClient(node_addrs(cluster), deadline=15)
    try:
        info, st = cc._find_primary()
        return info.node_id, info.addr, st["pid"]
    finally:
        cc.close()


def ensure_all_up(cluster) -> None:
    """Bring back any node a previous test killed, and wait until all agree."""
    cc = ClusterClient(node_addrs(cluster), deadline=15)
    try:
        for addr, st in cc.cluster_status(1.0).items():
            if st.get("status") != "OK":
                ids = {a: i for i, a in cluster_node_ids(cluster).items()}
                cluster.restart(ids[addr])
        cluster.wait_for_single_primary(timeout=15)
        cluster.wait_converged(timeout=20)
    finally:
        cc.close()


def cluster_node_ids(cluster) -> dict[str, str]:
    addrs = cluster.addresses()
    if isinstance(addrs, dict):
        return {i: (a if isinstance(a, str) else "%s:%d" % tuple(a)) for i, a in addrs.items()}
    return {f"node{i + 1}": a for i, a in enumerate(node_addrs(cluster))}


def test_live_round_trips_and_pipeline(cluster):
    _, addr, _ = primary_of(cluster)
    host, port = ec.split_addr(addr)
    with KVStoreClient(host, port) as c:
        assert c.ping()["message"] == "PONG"
        for label, value in ec.TYPE_SAMPLES:
            assert c.set("live:t", value)["status"] == "OK", label
            got = c.get("live:t")
            assert ec.same(got["value"], value), (label, got)
        assert c.delete("live:t")["status"] == "OK"
        assert c.get("live:t")["code"] == "NOT_FOUND"
        assert c.exists("live:t")["exists"] is False
        answers = c.pipeline().set("live:p1", 1).set("live:p2", [2]).get("live:p1").get("live:p2") \
            .keys("live:p*").delete("live:p1").delete("live:p2").execute()
        assert [a["status"] for a in answers] == ["OK"] * 7
        assert answers[2]["value"] == 1 and answers[3]["value"] == [2]
        assert answers[4]["keys"] == ["live:p1", "live:p2"]
        st = c.status()
        assert st["role"] == "primary" and isinstance(st["pid"], int) and len(st["digest"]) == 16


def test_live_cluster_client(cluster):
    cc = ClusterClient(node_addrs(cluster), deadline=10)
    try:
        assert cc.set("live:cc", {"a": [1, None, True]}) is True
        assert cc.get("live:cc") == {"a": [1, None, True]}
        assert cc.exists("live:cc") and "live:cc" in cc.keys("live:*")
        assert cc.delete("live:cc") is True and cc.delete("live:cc") is False
        with pytest.raises(KeyNotFound):
            cc.get("live:cc")
        sts = cc.cluster_status()
        assert len(sts) == 3 and all(s["status"] == "OK" for s in sts.values())
        assert sorted(s["role"] for s in sts.values()) == ["primary", "secondary", "secondary"]
        assert set(cc.known_nodes()) == {s["node_id"] for s in sts.values()}
    finally:
        cc.close()


def test_live_not_primary_on_a_secondary(cluster):
    pid_, paddr, _ = primary_of(cluster)
    secondary = next(a for a in node_addrs(cluster) if a != paddr)
    host, port = ec.split_addr(secondary)
    with KVStoreClient(host, port) as c:
        for answer in (c.set("live:np", 1), c.get("live:np"), c.delete("live:np")):
            with pytest.raises(NotPrimary) as ei:
                ec.check_answer(answer, secondary)
            assert ei.value.primary == pid_ and ei.value.primary_addr == paddr
            assert "This node is not primary" in ei.value.message and ei.value.definite
    only = ClusterClient([secondary], deadline=10)
    try:
        only.set("live:np", "via hint")
        assert only.primary_hint == paddr and only.get("live:np") == "via hint"
        only.delete("live:np")
    finally:
        only.close()


def run_demo(cluster, demo: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, CLIENT, "--demo", demo, "--nodes", ",".join(node_addrs(cluster)),
                        "--no-color", *extra], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"--demo {demo} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "✗" not in r.stdout and "0 failed" in r.stdout
    return r


@pytest.mark.parametrize("demo", ["basic", "replication", "types", "restrictions", "secondary", "concurrent"])
def test_live_demo(cluster, demo):
    r = run_demo(cluster, demo)
    assert "✓" in r.stdout


def test_live_repl_through_a_pipe(cluster, tmp_path):
    r = run_repl(node_addrs(cluster), "set a 1\nget a\ncluster\nquit\n", env=repl_env(str(tmp_path)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("> OK") and lines[1].endswith("> 1")
    table = r.stdout
    assert table.count("secondary") == 2 and table.count("primary") >= 1
    r = run_repl(node_addrs(cluster), "get a\n", env=repl_env(str(tmp_path)))   # EOF
    assert r.returncode == 0 and r.stdout.splitlines()[0].endswith("> 1") and not r.stderr


def _read_until(fd: int, want: bytes, timeout: float, buf: bytearray) -> bytes:
    deadline = time.monotonic() + timeout
    while want not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"pty: {want!r} not seen within {timeout}s; got {bytes(buf)[-500:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:          # EIO: the child closed the pty
                chunk = b""
            if not chunk:
                raise AssertionError(f"pty closed before {want!r}; got {bytes(buf)[-500:]!r}")
            buf += chunk
    out = bytes(buf)
    del buf[: buf.index(want) + len(want)]
    return out


def _pty_session(nodes: list[str], home: str):
    import pty
    pid, fd = pty.fork()
    if pid == 0:                                   # child: become the REPL
        env = repl_env(home)
        env["TERM"] = "xterm"
        os.execve(sys.executable, [sys.executable, CLIENT, "--demo", "interactive", "--nodes",
                                   ",".join(nodes), "--no-color"], env)
    return pid, fd


def _pty_finish(pid: int, fd: int, timeout: float = 10, resend: bytes | None = None) -> int:
    """Wait for the REPL to exit (draining its output); its exit code.  With `resend`, write it
    again every 0.5 s: CPython's readline notices a SIGINT that lands between drawing the prompt
    and blocking in select() only at the next key, so a Ctrl-C may need repeating (as by hand)."""
    deadline = time.monotonic() + timeout
    next_send = time.monotonic() + 0.5
    try:
        while time.monotonic() < deadline:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                return os.waitstatus_to_exitcode(status)
            if resend and time.monotonic() >= next_send:
                os.write(fd, resend)
                next_send = time.monotonic() + 0.5
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                try:
                    os.read(fd, 4096)
                except OSError:
                    pass                           # EIO once the child is gone
        raise AssertionError("REPL did not exit")
    finally:
        os.close(fd)
        _reap(pid)


def _reap(pid: int) -> None:
    """SIGKILL and wait for a child that is still there (no-op once it was waited for)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass                                       # already reaped


def test_live_repl_tab_completion_through_a_pty(cluster, tmp_path):
    nodes = node_addrs(cluster)
    ids = sorted(cluster_node_ids(cluster))
    pid, fd = _pty_session(nodes, str(tmp_path))
    buf = bytearray()
    try:
        _read_until(fd, b"> ", 15, buf)                         # prompt after the banner
        os.write(fd, b"clu\t")
        _read_until(fd, b"cluster", 5, buf)                      # completed in place
        os.write(fd, b"\n")
        _read_until(fd, b"secondary", 10, buf)
        _read_until(fd, b"> ", 5, buf)
        os.write(fd, b"use " + ids[0][:-1].encode() + b"\t\t")   # ambiguous: lists node ids
        out = _read_until(fd, ids[-1].encode(), 5, buf)
        assert all(i.encode() in out for i in ids)
        os.write(fd, b"\x15")                                  # Ctrl-U: clear the line
        os.write(fd, b"set k 1\n")
        _read_until(fd, b"OK", 10, buf)
        _read_until(fd, b"> ", 5, buf)                         # (keys typed before it would go to the tty's cooked mode)
        os.write(fd, b"\x04")                                  # Ctrl-D at an empty prompt
        code = _pty_finish(pid, fd)
    finally:
        _reap(pid)
    assert code == 0
    history = (tmp_path / "kv_test_history").read_text()
    assert "cluster" in history and "set k 1" in history


def test_live_repl_ctrl_c_exits_cleanly(cluster, tmp_path):
    pid, fd = _pty_session(node_addrs(cluster), str(tmp_path))
    buf = bytearray()
    try:
        _read_until(fd, b"> ", 15, buf)
        os.write(fd, b"\x03")
        code = _pty_finish(pid, fd, resend=b"\x03")
    finally:
        _reap(pid)
    assert code == 0


# -- destructive tests last: each kills the primary, then brings the cluster back -------------
def test_live_failover_in_the_middle_of_2000_writes(cluster):
    ensure_all_up(cluster)
    nodes = node_addrs(cluster)
    ids = {a: i for i, a in cluster_node_ids(cluster).items()}
    old_id, old_addr, _ = primary_of(cluster)
    cc = ClusterClient(nodes, deadline=15)
    acked = {}
    killed_at = None
    try:
        for i in range(2000):
            if i == 700:
                cluster.kill(ids[old_addr])                  # kill -9
                killed_at = i
            cc.set(f"live:fo:{i}", i)                          # no exception may reach us
            acked[f"live:fo:{i}"] = i
        assert killed_at == 700 and len(acked) == 2000
        new = cc.primary()
        assert new.addr != old_addr
        assert cc.retries > 0
        host, port = ec.split_addr(new.addr)
        with KVStoreClient(host, port) as c:                 # read everything back in one pipeline
            pipe = c.pipeline()
            for k in acked:
                pipe.get(k)
            answers = pipe.execute()
        lost = [k for (k, v), a in zip(acked.items(), answers) if a.get("value") != v]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    finally:
        cc.close()
    ensure_all_up(cluster)


def test_live_repl_follows_a_failover(cluster, tmp_path):
    ensure_all_up(cluster)
    ids = {a: i for i, a in cluster_node_ids(cluster).items()}
    old_id, old_addr, _ = primary_of(cluster)
    proc = subprocess.Popen([sys.executable, CLIENT, "--demo", "interactive", "--nodes",
                             ",".join(node_addrs(cluster)), "--deadline", "15"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1, env=repl_env(str(tmp_path)))
    with proc:                                                    # closes the pipes
        out, err = _drive_repl_across_failover(cluster, proc, ids[old_addr], old_id)
    assert proc.returncode == 0 and not err, err
    lines = out.splitlines()
    assert lines[0] == f"kv:{old_id}> 1", out                   # answered by the new primary...
    assert lines[1].startswith("(primary is now "), out          # ...and the REPL says which
    new_id = lines[1].split()[3]
    assert new_id != old_id and lines[2].startswith(f"kv:{new_id}> node")
    assert f"{old_id} " in out and "down" in out                 # the table shows the dead node
    ensure_all_up(cluster)


def _drive_repl_across_failover(cluster, proc, old_node: str, old_id: str) -> tuple[str, str]:
    """`set a 1`, `get a`; kill -9 the primary; `get a`, `cluster`, `quit` -> (stdout, stderr)."""
    try:
        proc.stdin.write("set a 1\nget a\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == f"kv:{old_id}> OK\n"
        assert proc.stdout.readline() == f"kv:{old_id}> 1\n"
        cluster.kill(old_node)                                   # kill -9 the primary
        proc.stdin.write("get a\ncluster\nquit\n")
        proc.stdin.close()
        # read through the same buffered file as readline() above (communicate() would skip
        # whatever that buffer already holds, e.g. the next prompt)
        outs: list[str] = []
        reader = threading.Thread(target=lambda: outs.append(proc.stdout.read()), daemon=True)
        reader.start()
        proc.wait(timeout=30)
        reader.join(timeout=10)
        return outs[0], proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_live_failover_demo(cluster):
    ensure_all_up(cluster)
    # cluster_manager.py acts only on a cluster its data dir records, and this LocalCluster was
    # not started by it: the CLI refuses ("no cluster at DIR", nothing done) and the demo falls
    # back to SIGKILL of the pid the node reports.  Restart through LocalCluster (ensure_all_up)
    # so every node process stays this test's child, stopped by PID.
    r = run_demo(cluster, "failover", "--no-restart", "--failover-writes", "600",
                 "--cluster-manager-args", cluster.cm_args, timeout=90)
    assert "via SIGKILL to pid" in r.stdout and "no cluster at" in r.stdout, r.stdout
    assert "new primary is" in r.stdout and "acknowledged writes are on the new primary" in r.stdout
    ensure_all_up(cluster)


def test_live_commands_demo(cluster):
    """The data-commands demo: counters, MSET/MGET, CAS, a raced WATCH/EXEC counter and a TTL
    outliving a kill -9 of the primary (through cluster_manager.py)."""
    ensure_all_up(cluster)
    r = run_demo(cluster, "commands", "--no-restart", "--cluster-manager-args", cluster.cm_args, timeout=90)
    assert "WATCH/EXEC increments: counter = 100 (want 100)" in r.stdout, r.stdout
    assert "still has it" in r.stdout and "gone " in r.stdout, r.stdout
    ensure_all_up(cluster)


def test_live_repl_data_commands(cluster, tmp_path):
    script = ("incr rc:n\nincr rc:n 5\ndecr rc:n\nmset rc:x 1 rc:y [2]\nmget rc:x rc:y rc:none\n"
              "set rc:s hi ex 100\nttl rc:s\npersist rc:s\nttl rc:s\ncas rc:x 1 9\nget rc:x\n"
              "redis EXISTS rc:x rc:y\nquit\n")
    r = run_repl(node_addrs(cluster), script, env=repl_env(str(tmp_path)))
    assert r.returncode == 0, r.stderr
    out = [line.split("> ", 1)[-1] for line in r.stdout.splitlines()]
    assert out[:3] == ["1", "6", "5"], out
    assert out[3] == "OK (2 keys)" and out[4:7] == ["1) rc:x = 1", "2) rc:y = [2]", "3) rc:none = (not found)"], out
    assert out[7] == "OK" and out[8] in ("100 s", "99 s") and out[9] == "TTL removed" and out[10] == "(no TTL)", out
    assert out[11] == "swapped" and out[12] == "9" and out[13:15] == ["exists: true", "count: 2"], out
    ClusterClient(node_addrs(cluster)).execute_command("DEL rc:n rc:x rc:y rc:s")


def test_client_data_commands(cluster):
    with ClusterClient(node_addrs(cluster), deadline=10) as cc:
        assert cc.incr("cc:n") == 1 and cc.incr("cc:n", -3) == -2
        assert cc.mset({"cc:a": "x", "cc:b": None}) and cc.mget_found(["cc:a", "cc:b", "cc:c"]) == \
            [("x", True), (None, True), (None, False)]
        assert cc.set_ex("cc:t", 1, 50) and 49 <= cc.ttl("cc:t") <= 50
        assert cc.expire("cc:a", 10) and not cc.expire("cc:none", 10) and cc.persist("cc:a")
        assert cc.cas("cc:a", "x", "y") and not cc.cas("cc:a", "x", "z") and cc.get("cc:a") == "y"
        assert cc.watch_update("cc:n", lambda v: v * 10) == (-20, 1)
        cc.execute_command("DEL cc:n cc:a cc:b cc:t")


def test_repl_completes_and_documents_the_data_commands():
    repl = ec.Repl(ClusterClient(["127.0.0.1:1"], deadline=0.1), ec.Colours(False), out=open(os.devnull, "w"),
                   interactive=False)
    assert repl.candidates("in", "in") == ["incr "]
    assert set(repl.candidates("", "")) >= {"mget ", "mset ", "expire ", "ttl ", "persist ", "cas ", "redis "}
    repl.seen_keys.update({"session:1", "other"})
    assert repl.candidates("ttl ", "se") == ["session:1 "] and repl.candidates("cas ", "") == ["other ", "session:1 "]
    documented = " ".join(usage for usage, _ in ec.REPL_HELP)
    for cmd in ("incr", "mget", "mset", "expire", "cas", "redis", "ex <s>"):
        assert cmd in documented, cmd
