"""Tests for cluster_manager.py: the CLI against real node processes, and LocalCluster.

Layout:
    helpers            run_cm() (the CLI in a subprocess), free_base_port(), gone(), wait_until()
    Env fixture        a tmp --data-dir and free --base-port per test; reaps every process whose
                       command line names that data dir, by PID, even when the test fails
    CLI tests          detach/status/health/stop; kill -> unhealthy -> healthy with another
                       primary; restart converges; failover; refusals; foreground Ctrl-C
    LocalCluster tests partition of the primary and heal; SplitBrain detection
    unit tests         FaultProxy on plain sockets; health_verdict()

Every test uses ports it chose (never 6379-6381) and a temporary data dir; waits poll with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import psutil
import pytest

import cluster_manager as cm
from kv_localcluster import RetryingWriter, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
CM = os.path.join(HERE, "cluster_manager.py")


# ------------------------------------------------------------------------------------------ helpers
def run_cm(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CM, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def free_base_port(n: int = 3, host: str = "127.0.0.1") -> int:
    """A base port with n free ports after it, below the ephemeral range, never 6379-6381."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - n)
        if all(cm.port_in_use(host, base + i) is None for i in range(n)):
            return base
    raise RuntimeError("no free port range found")


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def out(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


class Env:
    """One test's cluster directory and ports, and the CLI bound to them."""

    def __init__(self, tmp_path):
        self.data_dir = str(tmp_path / "data")
        self.base_port = free_base_port(3)
        self.args = ["--data-dir", self.data_dir, "--base-port", str(self.base_port), "--nodes", "3"]
        self.state_path = os.path.join(self.data_dir, cm.STATE_FILE)

    def cm(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_cm(*args, *self.args, timeout=timeout)

    def state(self) -> dict | None:
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def status(self) -> list[dict]:
        r = self.cm("--action", "status", "--json")
        assert r.returncode in (0, 1), out(r)
        return json.loads(r.stdout)["nodes"]

    def primary(self) -> str | None:
        prims = [row["node"] for row in self.status() if row["role"] == "primary"]
        return prims[0] if len(prims) == 1 else None

    def our_pids(self) -> list[int]:
        """Every process whose command line names this test's data dir (managers and nodes)."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if p.info["pid"] != os.getpid() and any(self.data_dir in a for a in cmd):
                found.append(p.info["pid"])
        return found

    def reap(self) -> None:
        """Teardown: SIGKILL, by PID, whatever this test left running."""
        for pid in self.our_pids():
            try:
                p = psutil.Process(pid)
                if any(self.data_dir in a for a in p.cmdline()):
                    p.kill()
            except psutil.NoSuchProcess:
                pass   # exited between the scan and the kill: nothing to do


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.reap()


def start_detached(env: Env, *extra) -> dict:
    r = env.cm("--action", "start", "--detach", *extra)
    assert r.returncode == 0, out(r)
    st = env.state()
    assert st is not None and st["phase"] == "running", st
    return st


def stop_and_check(env: Env, st: dict) -> None:
    pids = [n["pid"] for n in st["nodes"].values() if n.get("pid")] + [st["manager_pid"]]
    r = env.cm("--action", "stop")
    assert r.returncode == 0, out(r)
    wait_until(lambda: all(gone(p) for p in pids), 10, f"processes {pids} to exit")
    assert env.our_pids() == [] or all(gone(p) for p in env.our_pids())
    assert env.state() is None


# ---------------------------------------------------------------------------------------- CLI tests
def test_detach_status_health_stop_leave_no_process(env):
    st = start_detached(env)
    pids = {nid: n["pid"] for nid, n in st["nodes"].items()}
    assert len(pids) == 3 and not any(gone(p) for p in pids.values())
    assert not gone(st["manager_pid"])

    rows = env.status()
    assert [r["node"] for r in rows] == ["node1", "node2", "node3"]
    assert all(r["up"] for r in rows)
    assert sum(r["role"] == "primary" for r in rows) == 1
    for r in rows:
        assert r["pid"] == pids[r["node"]]
        assert r["rss"] and r["rss"] > 0
        assert r["address"] == f"127.0.0.1:{env.base_port + int(r['node'][4:]) - 1}"

    r = env.cm("--action", "status")
    assert r.returncode == 0 and "primary" in r.stdout and "RSS" in r.stdout, out(r)
    r = env.cm("--action", "health", "--wait", "5")
    assert r.returncode == 0 and r.stdout.startswith("healthy"), out(r)

    # refusals while it runs
    r = env.cm("--action", "start", "--detach")
    assert r.returncode == 2 and "already running" in r.stderr, out(r)
    r = run_cm("--action", "start", "--detach", "--data-dir", env.data_dir, "--base-port", str(free_base_port(3)))
    assert r.returncode == 2 and "belongs to cluster" in r.stderr, out(r)

    stop_and_check(env, st)
    r = env.cm("--action", "health")
    assert r.returncode == 1 and f"no cluster at {env.data_dir} is running" in r.stderr, out(r)


def test_kill_primary_unhealthy_then_healthy_with_another_primary(env):
    # The restart delay is the window in which the cluster is unhealthy; it is wide so a slow
    # machine still sees it, and it lets the others elect a new primary before the victim returns.
    st = start_detached(env, "--restart-on-failure", "--restart-delay", "5")
    old = env.primary()
    assert old is not None
    old_pid = st["nodes"][old]["pid"]

    r = env.cm("--action", "kill", "--node", old)
    assert r.returncode == 0 and "SIGKILL" in r.stdout, out(r)
    assert gone(old_pid)
    r = env.cm("--action", "health")
    assert r.returncode == 1 and f"{old} is down" in r.stdout, out(r)

    r = env.cm("--action", "health", "--wait", "30")
    assert r.returncode == 0, out(r)
    new = env.primary()
    assert new is not None and new != old
    assert env.state()["nodes"][old]["pid"] not in (None, old_pid)     # --restart-on-failure brought it back
    with open(os.path.join(env.data_dir, cm.MANAGER_LOG)) as f:
        log = f.read()
    assert f"{old} is DOWN" in log and f"{old} restarted" in log, log
    stop_and_check(env, env.state())


def test_restart_one_node_converges_with_auth(env):
    st = start_detached(env, "--requirepass", "pw-123", "--cluster-secret", "sec-456")
    prim = env.primary()
    host, port = "127.0.0.1", env.base_port + int(prim[4:]) - 1
    answers = cm.call(host, port, [f"SET key{i} {i}" for i in range(20)], password="pw-123", timeout=10)
    assert all(a["status"] == "OK" for a in answers), answers
    victim = "node2" if prim != "node2" else "node3"

    r = env.cm("--action", "restart", "--node", victim)
    assert r.returncode == 0 and "converged" in r.stdout, out(r)
    st2 = env.state()
    assert st2["nodes"][victim]["pid"] != st["nodes"][victim]["pid"]
    assert gone(st["nodes"][victim]["pid"])
    rows = env.status()
    assert all(r["up"] and r["keys"] == 20 and r["digest_match"] == "match" for r in rows), rows
    r = env.cm("--action", "health", "--wait", "5")
    assert r.returncode == 0, out(r)
    stop_and_check(env, st2)


def test_add_remove_replace_nodes_through_the_manager(env):
    """Membership actions (Raft §4.1) from a second terminal: add-node starts a node that joins as
    a learner and waits until it is a voter; remove-node of the primary removes it and stops it;
    replace swaps a killed node for a fresh one under a new id.  Each prints what it waits for
    and its figures; the table shows the members; the data survives every step."""
    st = start_detached(env)
    prim = env.primary()
    port = env.base_port + int(prim[4:]) - 1
    assert all(a["status"] == "OK" for a in cm.call("127.0.0.1", port, [f"SET m{i} {i}" for i in range(50)]))

    r = env.cm("--action", "add-node")
    assert r.returncode == 0, out(r)
    assert "waiting for node4 to be a learner" in r.stdout and "node4 is a voter after" in r.stdout, out(r)
    assert "add-node done in" in r.stdout and "voters node1,node2,node3,node4" in r.stdout, out(r)
    rows = env.status()
    assert [x["node"] for x in rows] == ["node1", "node2", "node3", "node4"]
    assert all(x["member"] == "voter" and x["keys"] == 50 for x in rows), rows

    r = env.cm("--action", "remove-node", "--node", prim)
    assert r.returncode == 0 and f"{prim} removed after" in r.stdout and "new_primary_s" in r.stdout, out(r)
    assert gone(st["nodes"][prim]["pid"])
    victim = next(x["node"] for x in env.status() if x["role"] == "secondary")
    r = env.cm("--action", "kill", "--node", victim)
    assert r.returncode == 0, out(r)
    r = env.cm("--action", "replace", "--node", victim)
    assert r.returncode == 0 and "node5 is a voter after" in r.stdout and "healthy after" in r.stdout, out(r)
    rows = env.status()
    assert sorted(x["node"] for x in rows) == sorted({"node1", "node2", "node3", "node4", "node5"} - {prim, victim})
    assert all(x["up"] and x["member"] == "voter" and x["keys"] == 50 and x["digest_match"] == "match"
               for x in rows), rows
    r = env.cm("--action", "health", "--wait", "5")
    assert r.returncode == 0, out(r)
    r = env.cm("--action", "remove-node", "--node", "node9")
    assert r.returncode == 1 and "not a member" in r.stderr, out(r)
    stop_and_check(env, env.state())
    # a later start brings back the current members (from the data dir), not --nodes 3
    start_detached(env)
    again = env.status()
    assert sorted(x["node"] for x in again) == sorted(x["node"] for x in rows)
    assert all(x["up"] and x["member"] == "voter" and x["keys"] == 50 for x in again), again
    stop_and_check(env, env.state())


def test_start_five_nodes_survives_two_killed(env):
    """--nodes 5: five voters; killing the primary and a secondary leaves three that elect a
    primary and keep the data."""
    env.base_port = free_base_port(5)
    env.args = ["--data-dir", env.data_dir, "--base-port", str(env.base_port), "--nodes", "5"]
    start_detached(env)
    rows = env.status()
    assert len(rows) == 5 and all(x["member"] == "voter" for x in rows), rows
    prim = env.primary()
    port = env.base_port + int(prim[4:]) - 1
    assert all(a["status"] == "OK" for a in cm.call("127.0.0.1", port, [f"SET f{i} {i}" for i in range(20)]))
    other = next(x["node"] for x in rows if x["node"] != prim)
    for nid in (prim, other):
        r = env.cm("--action", "kill", "--node", nid)
        assert r.returncode == 0, out(r)
    new = wait_until(lambda: env.primary(), 30, "a new primary among the three left")
    assert new not in (prim, other)
    port = env.base_port + int(new[4:]) - 1
    assert cm.call("127.0.0.1", port, ["GET f19", "SET after 1"]) == [
        {"status": "OK", "value": 19}, {"status": "OK", "message": "Key 'after' set"}]
    stop_and_check(env, env.state())


def test_failover_moves_the_primary_with_zero_failed_writes(env):
    st = start_detached(env)
    old = env.primary()
    stop = threading.Event()
    writer = RetryingWriter("failover-writer", [f"127.0.0.1:{env.base_port + i}" for i in range(3)],
                            lambda i: f"w{i}", stop, op_deadline=10.0)
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 20, 10, "the writer to get going")
        r = env.cm("--action", "failover")
        assert r.returncode == 0, out(r)
        assert f"primary {old}" in r.stdout and "->" in r.stdout, out(r)
        new = r.stdout.split("->")[1].split()[0]
        assert new != old and new in st["nodes"]
        assert wait_until(lambda: env.primary() == new, 5, f"{new} to stay primary")
        n = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= n + 20, 10, "writes on the new primary")

        r = env.cm("--action", "failover", "--node", old)
        assert r.returncode == 0, out(r)
        assert wait_until(lambda: env.primary() == old, 5, f"{old} to be primary again")
        n = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= n + 20, 10, "writes after the second failover")
    finally:
        stop.set()
        writer.join(timeout=25)
    # a planned failover fails no write: none given up, none with an unknown outcome
    assert writer.error is None and not writer.is_alive(), writer.error
    assert (writer.failed, writer.indefinite, writer.lost_in_flight, writer.unexpected) == (0, 0, 0, []), \
        writer.counts()
    keys = list(writer.acked)
    answers = cm.call("127.0.0.1", env.base_port + int(old[4:]) - 1, [f"GET {k}" for k in keys], timeout=10)
    lost = [k for k, a in zip(keys, answers) if a.get("value") != writer.acked[k]]
    assert lost == [], f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    stop_and_check(env, env.state())


def test_port_conflict_is_refused_clearly(env):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", env.base_port + 1))
    blocker.listen(1)
    try:
        for extra in (["--detach"], []):
            r = env.cm("--action", "start", *extra)
            assert r.returncode == 2, out(r)
            assert f"port {env.base_port + 1}" in r.stderr, out(r)
            assert f"pid {os.getpid()}" in r.stderr, out(r)
            assert env.state() is None
            assert all(gone(p) for p in env.our_pids())
    finally:
        blocker.close()


def test_health_wait_covers_a_cluster_still_starting(env, monkeypatch, capsys):
    """`health --wait` asked before the cluster exists (a second terminal right after `start`)
    waits for it, rather than answering "no cluster" at once."""
    looked = threading.Event()
    real_target = cm.Target

    def target(opts):
        looked.set()
        return real_target(opts)
    monkeypatch.setattr(cm, "Target", target)
    result = {}
    th = threading.Thread(target=lambda: result.update(code=cm.main(["--action", "health", "--wait", "30", *env.args])))
    th.start()
    try:
        assert looked.wait(10), "health never looked for the cluster"
        st = start_detached(env)
        th.join(40)
        assert result.get("code") == 0, (result, capsys.readouterr())
        assert capsys.readouterr().out.startswith("healthy")
        stop_and_check(env, st)
    finally:
        th.join(40)


def test_foreground_start_then_sigint_leaves_no_process(env, tmp_path):
    with open(tmp_path / "fg.out", "w") as log:
        p = subprocess.Popen([sys.executable, CM, "--action", "start", *env.args], stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        st = wait_until(lambda: (s := env.state()) and s["phase"] == "running" and s["manager_pid"] == p.pid and s,
                      20, "the foreground cluster to run")
        pids = [n["pid"] for n in st["nodes"].values()]
        r = env.cm("--action", "status")              # a second terminal sees it
        assert r.returncode == 0 and "primary" in r.stdout, out(r)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = (tmp_path / "fg.out").read_text()
    assert "primary is node" in text and "all nodes stopped" in text, text
    assert all(gone(pid) for pid in pids)
    assert env.state() is None


# ------------------------------------------------------------------------------- LocalCluster tests
def test_localcluster_partition_primary_then_heal(tmp_path):
    with cm.LocalCluster(n=3, proxied=True, data_dir=str(tmp_path / "lc")) as c:
        assert all(6379 > p or p > 6381 for p in map(c.port, c.ids))
        c.start(timeout=15)
        p = c.wait_for_single_primary()
        assert c.send(p, "SET before 1")["status"] == "OK"

        c.partition(p)
        q = c.wait_for_single_primary(timeout=10, exclude=[p])
        assert q != p
        assert c.send(q, "SET during 2")["status"] == "OK"
        c.wait_until(lambda: (s := c.status(p)) and s["role"] != "primary", 5, f"{p} to step down")

        c.heal()
        sts = c.wait_converged(timeout=10)
        assert len(sts) == 3 and len({s["digest"] for s in sts.values()}) == 1
        c.check_get("before", 1)
        c.check_get("during", 2)

        c.kill(q)
        assert c.exit_code(q) == -signal.SIGKILL
        c.wait_for_single_primary(timeout=10, exclude=[q])
        c.restart(q)
        c.wait_converged(timeout=10)
        pids = [c.pid(i) for i in c.ids]
        c.check_safety()
    assert all(gone(pid) for pid in pids)


class _FakeStatus(socketserver.ThreadingTCPServer):
    """A node stand-in that answers every line with a fixed STATUS."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: dict):
        self.answer = answer

        class H(socketserver.StreamRequestHandler):
            def handle(h):
                for _ in h.rfile:
                    h.wfile.write(json.dumps(self.answer).encode() + b"\n")
        super().__init__(("127.0.0.1", 0), H)


def test_two_primaries_in_one_term_fail_at_once():
    answers = [{"status": "OK", "node_id": f"node{i}", "role": "primary", "election_term": 7, "primary": f"node{i}",
                "commit_index": 1, "last_applied": 1, "digest": "0" * 16} for i in (1, 2)]
    servers = [_FakeStatus(a) for a in answers]
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with cm.LocalCluster(n=2, ports=[s.server_address[1] for s in servers]) as c:
            t0 = time.monotonic()
            with pytest.raises(cm.SplitBrain, match="term 7"):
                c.wait_for_single_primary(timeout=30)
            assert time.monotonic() - t0 < 5
            ok, why = cm.health_verdict(c.statuses())
            assert not ok and "SPLIT BRAIN" in why
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


# ---------------------------------------------------------------------------------------- unit tests
def _echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join(timeout=5)
        srv.close()
    return srv, close


def test_fault_proxy_forwards_cuts_and_heals():
    srv, close_server = _echo_server()
    proxy = cm.FaultProxy({("a", "b"): srv.getsockname(), ("b", "a"): srv.getsockname()})
    proxy.start()
    try:
        addr = ("127.0.0.1", proxy.port("a", "b"))
        s = socket.create_connection(addr, timeout=5)
        big = os.urandom(3 << 20)          # more than the proxy buffers: back-pressure path
        threading.Thread(target=s.sendall, args=(big,), daemon=True).start()
        got = bytearray()
        while len(got) < len(big):
            got.extend(s.recv(1 << 20))
        assert bytes(got) == big

        proxy.block({("a", "b")})          # the open connection is closed ...
        s.settimeout(5)
        assert s.recv(10) == b""
        s.close()
        s2 = socket.create_connection(addr, timeout=5)   # ... and a new one is refused
        assert s2.recv(10) == b""
        s2.close()
        other = socket.create_connection(("127.0.0.1", proxy.port("b", "a")), timeout=5)
        other.sendall(b"ping")
        assert other.recv(10) == b"ping"   # the other direction is untouched
        other.close()

        proxy.unblock()
        s3 = socket.create_connection(addr, timeout=5)
        s3.sendall(b"hello")
        assert s3.recv(10) == b"hello"
        s3.close()
        assert proxy.stats["cut"] >= 1 and proxy.stats["refused"] >= 1
    finally:
        proxy.stop()
        close_server()
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=1)


def _st(nid, role, term, primary, applied, digest="a" * 16, commit=None):
    return {"node_id": nid, "role": role, "election_term": term, "primary": primary, "last_applied": applied,
            "commit_index": applied if commit is None else commit, "digest": digest}


def test_health_verdict_reasons():
    good = {"node1": _st("node1", "primary", 3, "node1", 10), "node2": _st("node2", "secondary", 3, "node1", 10),
            "node3": _st("node3", "secondary", 3, "node1", 10)}
    ok, why = cm.health_verdict(good)
    assert ok and "primary node1" in why

    ok, why = cm.health_verdict({**good, "node3": None}, {"node3": "nothing listens on 127.0.0.1:7"})
    assert not ok and why.startswith("node3 is down") and "primary is node1" in why

    ok, why = cm.health_verdict({**good, "node2": _st("node2", "secondary", 3, "node1", 7)})
    assert not ok and "node2 is 3 entries behind" in why
    assert cm.health_verdict({**good, "node2": _st("node2", "secondary", 3, "node1", 7)}, max_lag=3)[0]

    ok, why = cm.health_verdict({**good, "node2": _st("node2", "secondary", 3, "node1", 10, digest="b" * 16)})
    assert not ok and "diverged" in why

    ok, why = cm.health_verdict({k: _st(k, "secondary", 4, None, 10) for k in good})
    assert not ok and why.startswith("no primary")

    ok, why = cm.health_verdict({**good, "node2": _st("node2", "primary", 2, "node2", 10)})
    assert not ok and "claim primary" in why

    ok, why = cm.health_verdict({**good, "node2": _st("node2", "primary", 3, "node2", 10)})
    assert not ok and "SPLIT BRAIN" in why


def _cpu_masks(pid: int) -> set[str]:
    """Cpus_allowed_list of every thread of a process."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                out.update(line.split()[1] for line in f if line.startswith("Cpus_allowed_list"))
        except (FileNotFoundError, ProcessLookupError):
            pass   # the thread ended meanwhile
    return out


def test_the_primary_runs_on_one_cpu_and_gives_the_others_back_when_it_steps_down():
    """--primary-cpu auto (the default): every thread of the primary's process on one CPU,
    every other node on all of them; after a TRANSFER the old primary has all of them back and
    the new one is confined.  On a 1-CPU machine there is nothing to confine: all masks equal."""
    from kv_localcluster import LocalCluster
    everything = os.sched_getaffinity(0)
    full = _cpu_masks(os.getpid())
    with LocalCluster(n=3) as c:
        c.start()
        p = c.wait_for_single_primary(20)

        def confined(nid):
            masks = _cpu_masks(c.pid(nid))   # one CPU: a bare number, not "0-1" or "0,2"
            return len(masks) == 1 and next(iter(masks)).isdigit()
        if len(everything) < 2:
            assert all(_cpu_masks(c.pid(n)) == full for n in c.ids)
            return
        wait_until(lambda: confined(p), 10, f"{p}'s threads on one CPU")
        assert all(_cpu_masks(c.pid(n)) == full for n in c.ids if n != p)
        target = next(n for n in c.ids if n != p)
        assert c.send(p, f"TRANSFER {target}", timeout=10)["status"] == "OK"
        assert c.wait_for_single_primary(20, exclude=[p]) == target
        wait_until(lambda: confined(target) and _cpu_masks(c.pid(p)) == full, 10,
                   f"{target} confined and {p} back on every CPU")
        assert c.send(target, "SET after-transfer 1")["status"] == "OK"
