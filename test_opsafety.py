"""Operator safety (issue 13): no ordinary mistake corrupts data, crosses two clusters, or leaves a
node behind.  Every test drives the real scripts in subprocesses, on ports and temporary dirs it
picked, and stops every process it started by PID.

Layout:
    helpers              run(), one_line_error(), Node (one kv_store_server.py process), wait_for
    bad usage            each script's bad flags: one line, exit 2, no traceback
    data dirs            one owner per dir (flock), standalone vs cluster identity, cluster id
    recovery             --check-data on a corrupted WAL; the corrupt-WAL start-up message
    managed cluster      (one cluster_manager cluster for the module) secrets absent from ps and
                         files; stop/kill/status on a wrong dir; wipe + restart converges with no
                         write; backup -> restore -> equal digest
    clients              wrong password reported at once by ClusterClient and the demos
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import test_cluster_manager as tcm
from kv_localcluster import call, wait_until
from kv_client import AUTH_FAILED, ClusterClient, KVError
from kv_storage import LogStorage, ReplicationLog

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "kv_store_server.py")
CM = os.path.join(HERE, "cluster_manager.py")
CLIENT = os.path.join(HERE, "example_client.py")


# ------------------------------------------------------------------------------------------ helpers
def run(script: str, *args, timeout: float = 60, cwd: str | None = None, env: dict | None = None):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env)


def one_line_error(r: subprocess.CompletedProcess, want: str | None = None) -> str:
    """Assert a usage refusal: exit 2, exactly one line on stderr with "error:", no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, tcm.out(r)
    assert "Traceback" not in r.stderr + r.stdout, tcm.out(r)
    assert len(lines) == 1 and "error:" in lines[0], tcm.out(r)
    if want is not None:
        assert want in lines[0], tcm.out(r)
    return lines[0]


def walk(script: str, cases, cwd: str | None = None) -> None:
    """Run each (args, expected text) bad-usage case (a few at a time) and check its refusal."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run(script, *c[0], cwd=cwd), cases))
    for (args, want), r in zip(cases, results):
        try:
            one_line_error(r, want)
        except AssertionError as e:
            raise AssertionError(f"{os.path.basename(script)} {args}: {e}") from None


def free_port() -> int:
    return tcm.free_base_port(1)


class Node:
    """One kv_store_server.py process; stop() by PID (SIGTERM, SIGKILL after a deadline)."""

    def __init__(self, *args, env: dict | None = None, cwd: str | None = None, port: int | None = None):
        self.port = port or free_port()
        self.args = ["--port", str(self.port), *args]
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Node":
        self.proc = subprocess.Popen([sys.executable, SERVER, *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self.env, cwd=self.cwd)
        if wait:
            wait_until(self.listening, 15, f"node on port {self.port} to listen")
        return self

    def listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}: {self.proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def request(self, *lines: str, password: str | None = None) -> list[dict]:
        return call("127.0.0.1", self.port, list(lines), password=password, timeout=10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture
def nodes():
    started: list[Node] = []
    yield started
    for n in started:                    # SIGTERM to all first: they shut down side by side
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    for n in started:
        n.stop()


# ---------------------------------------------------------------------------------------- bad usage
def test_server_bad_usage_one_line_exit_2(tmp_path):
    """Every bad flag of kv_store_server.py: one line, exit 2, no traceback."""
    d = str(tmp_path)
    a_file = os.path.join(d, "a-file")
    open(a_file, "w").close()
    if os.geteuid() == 0:
        unwritable = "/proc/1"            # root may write anywhere else; nobody creates files here
    else:
        unwritable = os.path.join(d, "ro")
        os.mkdir(unwritable, 0o555)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    taken = held.getsockname()[1]
    dd = ["--data-dir", os.path.join(d, "n")]
    cases = [
        (["--peers", ""], "--peers is empty"),
        (["--peers", "node2=127.0.0.1:7001;node3=127.0.0.1:7002"], "','"),
        (["--peers", "node2=127.0.0.1:99999"], "out of range"),
        (["--peers", "node2=127.0.0.1:0"], "out of range"),
        (["--peers", "node2 =127.0.0.1:7001"], "not valid"),
        (["--peers", "node2=127.0.0.1:7001,node2=127.0.0.1:7002"], "twice"),
        (["--peers", "node2=127.0.0.1:7001,node3=127.0.0.1:7001"], "same address"),
        (["--peers", "node1=127.0.0.1:7001"], "lists this node"),
        (["--peers", "node2=127.0.0.1"], "host:port"),
        (["--peers", "node2=127.0.0.1:x"], "not a number"),
        (["--peers", "node2=127.0.0.1:7001,"], "empty entry"),
        (["--standalone", "--peers", "node2=127.0.0.1:7001"], "--standalone"),
        (["--node-id", "node 1"], "not valid"),
        (["--node-id", "node9"], "default cluster"),
        (["--host", "no-such-host.invalid"], "does not resolve"),
        (["--port", "70000"], "out of range"),
        (["--port", "abc"], "not a port"),
        (["--port", "0", "--node-id", "node2"], "only works with --standalone"),
        (["--standalone", "--port", str(taken)], "not available"),
        (["--heartbeat-interval", "0"], "more than 0"),
        (["--election-timeout", "0.05"], "more than twice"),
        (["--snapshot-threshold", "-1"], "negative"),
        (["--max-clients", "0"], "at least 1"),
        (["--fsync", "sometimes"], "invalid choice"),
        (["--no-such-flag"], "unrecognized"),
        (["--cluster-file", os.path.join(d, "missing.json")], "cannot read"),
        (["--cluster-file", a_file], "not JSON"),
        (["--standalone", "--requirepass-file", os.path.join(d, "missing")], "cannot read"),
        (["--standalone", "--requirepass", "a", "--requirepass-file", a_file], "not both"),
        (["--standalone", "--requirepass", "two words"], "white space"),
        (["--standalone", "--data-dir", os.path.join(d, "no", "parent")], "does not exist"),
        (["--standalone", "--data-dir", a_file], "not a directory"),
        (["--standalone", "--data-dir", os.path.join(unwritable, "x") if unwritable != "/proc/1" else unwritable],
         "not writable" if unwritable == "/proc/1" else "cannot create"),
        (["--standalone", *dd, "--min-free-mb", "1e12"], "full file system"),
        (["--check-data", os.path.join(d, "nothing-here")], "no such directory"),
    ]
    try:
        walk(SERVER, [(args if "--port" in args else ["--port", str(free_port()), *args], want)
                      for args, want in cases], cwd=d)
    finally:
        held.close()


def test_even_cluster_size_warns_why_odd_is_better(tmp_path, nodes):
    peers = ",".join(f"node{i}=127.0.0.1:{free_port()}" for i in (2, 3, 4))
    n = Node("--node-id", "node1", "--peers", peers, "--data-dir", str(tmp_path / "n1"))
    nodes.append(n.start())
    n.stop()
    err = n.proc.stderr.read()
    assert "cluster of 4 nodes" in err and "odd size" in err, err


def test_cluster_manager_bad_usage_one_line_exit_2(tmp_path):
    d = str(tmp_path)
    a_file = os.path.join(d, "a-file")
    open(a_file, "w").close()
    dd = ["--data-dir", os.path.join(d, "c")]
    cases = [
        (["--action", "start", "--nodes", "0", *dd], "at least 1"),
        (["--action", "start", "--base-port", "70000", *dd], "out of range"),
        (["--action", "start", "--base-port", "65535", "--nodes", "3", *dd], "past port 65535"),
        (["--action", "start", "--host", "no-such-host.invalid", *dd], "does not resolve"),
        (["--action", "start", "--data-dir", a_file], "not a directory"),
        (["--action", "start", "--data-dir", os.path.join(d, "no", "parent")], "does not exist"),
        (["--action", "start", "--heartbeat-interval", "0.2", "--election-timeout", "0.3", *dd], "more than twice"),
        (["--action", "start", "--timeout", "-1", *dd], "more than 0"),
        (["--action", "kill", "--node", "node 1", *dd], "not valid"),
        (["--action", "status", "--wipe", *dd], "--wipe goes with"),
        (["--action", "status", "--to", d, *dd], "--to goes with"),
        (["--action", "reboot", *dd], "invalid choice"),
        ([*dd], "required"),
        (["--action", "start", "--requirepass-file", os.path.join(d, "missing"), *dd], "cannot read"),
        (["--action", "backup", *dd], None),          # no --to
        (["--action", "backup", "--to", os.path.join(d, "no", "parent"), *dd], "choose another --to"),
        (["--action", "restore", *dd], None),         # no --from
        (["--action", "restore", "--from", d, *dd], "not a backup"),
    ]
    walk(CM, cases)


def test_example_client_bad_usage_one_line_exit_2():
    cases = [
        (["--nodes", "nonsense"], "host:port"),
        (["--nodes", "127.0.0.1:99999"], "out of range"),
        (["--deadline", "0"], "more than 0"),
        (["--deadline", "soon"], "not a number"),
        (["--demo", "nope"], "invalid choice"),
        (["--failover-writes", "0"], "at least 1"),
        (["--cluster-manager-args", '"unclosed'], "--cluster-manager-args"),
        (["--bogus"], "unrecognized"),
    ]
    walk(CLIENT, cases)


# ---------------------------------------------------------------------------------------- data dirs
def test_two_nodes_on_one_data_dir_second_refused_naming_the_holder(tmp_path, nodes):
    d = str(tmp_path / "one")
    first = Node("--standalone", "--data-dir", d)
    nodes.append(first.start())
    r = run(SERVER, "--standalone", "--port", str(free_port()), "--data-dir", d)
    one_line_error(r, f"in use by another node process (pid {first.proc.pid})")
    assert first.request("SET k 1")[0]["status"] == "OK"      # the owner is unharmed
    assert first.stop() == 0
    second = Node("--standalone", "--data-dir", d)               # once it is gone, the dir is free
    nodes.append(second.start())
    assert second.request("GET k")[0] == {"status": "OK", "value": 1}


def test_standalone_and_cluster_dirs_refuse_each_other(tmp_path, nodes):
    cdir, sdir = str(tmp_path / "member"), str(tmp_path / "alone")
    peers = f"node2=127.0.0.1:{free_port()},node3=127.0.0.1:{free_port()}"
    member = Node("--node-id", "node1", "--peers", peers, "--data-dir", cdir, "--cluster-id", "c0ffee")
    nodes.append(member.start())
    member.stop()
    alone = Node("--standalone", "--data-dir", sdir)
    nodes.append(alone.start())
    alone.stop()
    with open(os.path.join(cdir, "identity.json")) as f:
        assert json.load(f)["cluster_id"] == "c0ffee"

    one_line_error(run(SERVER, "--standalone", "--port", str(free_port()), "--data-dir", cdir),
                   "belongs to cluster c0ffee")
    one_line_error(run(SERVER, "--node-id", "node1", "--peers", peers, "--port", str(free_port()),
                       "--data-dir", sdir), "standalone node's data")
    one_line_error(run(SERVER, "--node-id", "node1", "--peers", peers, "--port", str(free_port()),
                       "--data-dir", cdir, "--cluster-id", "beef"), "not to cluster beef")


def test_standalone_defaults_to_its_own_data_dir(tmp_path, nodes):
    n = Node("--standalone", cwd=str(tmp_path))
    nodes.append(n.start())
    assert n.request("SET a 1")[0]["status"] == "OK"
    n.stop()
    with open(tmp_path / "data" / "standalone" / "identity.json") as f:
        assert json.load(f)["mode"] == "standalone"
    assert not (tmp_path / "data" / "node1").exists()


# ----------------------------------------------------------------------------------------- recovery
def _write_log(d: str, n: int) -> None:
    s = LogStorage(d)
    s.load()
    s.append([ReplicationLog(i, 1, "SET", f"k{i}", i) for i in range(1, n + 1)])
    s.sync()
    s.close()


def test_check_data_reports_a_corrupted_wal_with_file_and_offset(tmp_path):
    d = str(tmp_path / "n")
    os.mkdir(d)
    _write_log(d, 50)
    r = run(SERVER, "--check-data", d)
    assert r.returncode == 0 and r.stdout.startswith("OK") and "log 1..50" in r.stdout, tcm.out(r)
    seg = os.path.join(d, "wal-00000000000000000001.log")
    with open(seg, "r+b") as f:              # flip one byte inside record 10's payload
        f.seek(10 * 33 + 20)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x5A]))
    r = run(SERVER, "--check-data", d)
    assert r.returncode == 1, tcm.out(r)
    problems = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBLEM")]
    assert len(problems) == 1 and seg in problems[0] and "at offset" in problems[0], tcm.out(r)
    assert "--wipe" in r.stdout, tcm.out(r)
    # the node refuses to start on it, and says how to recover
    r = run(SERVER, "--node-id", "node2", "--port", str(free_port()), "--data-dir", d,
            "--peers", f"node1=127.0.0.1:{free_port()},node3=127.0.0.1:{free_port()}")
    assert r.returncode == 4 and "corrupt WAL record" in r.stderr, tcm.out(r)
    assert "--action restart --node node2 --wipe" in r.stderr and "Traceback" not in r.stderr, tcm.out(r)


# --------------------------------------------------------------------------------- managed cluster
@pytest.fixture(scope="module")
def managed(tmp_path_factory):
    """One detached cluster_manager cluster with a password (from a file) and a cluster secret
    (from the environment), for the tests below.  Stopped, and every process reaped, at the end."""
    env = tcm.Env(tmp_path_factory.mktemp("managed"))
    secrets_dir = tmp_path_factory.mktemp("secrets")
    pw_file = os.path.join(secrets_dir, "pw")
    with open(pw_file, "w") as f:
        f.write("pw-Zq81x\n")
    envvars = dict(os.environ, KV_CLUSTER_SECRET="cs-Yk27w")
    r = subprocess.run([sys.executable, CM, "--action", "start", "--detach", *env.args, "--requirepass-file", pw_file],
                       capture_output=True, text=True, timeout=60, env=envvars, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, tcm.out(r)
    env.password = "pw-Zq81x"
    env.secret = "cs-Yk27w"
    env.addrs = [f"127.0.0.1:{env.base_port + i}" for i in range(3)]
    try:
        yield env
    finally:
        env.cm("--action", "stop")
        env.reap()


def _digests(env) -> set:
    return {(row["digest"], row["last_applied"]) for row in env.status() if row["up"]}


def test_secrets_absent_from_ps_state_and_logs(managed):
    env = managed
    cc = ClusterClient(env.addrs, password=env.password, deadline=20)
    cc.set("secret-check", 1)
    cc.close()
    leaks = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if env.password in cmd or env.secret in cmd:
            leaks.append(f"pid {p.info['pid']}: {cmd}")
    ours = [p for p in env.our_pids()]
    assert len(ours) >= 4, ours          # the manager and three nodes were looked at
    assert not leaks, leaks
    for root, _, files in os.walk(env.data_dir):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".secret") or name.endswith(".sock") or name.startswith("wal-"):
                continue
            with open(path, "rb") as f:
                data = f.read()
            assert env.password.encode() not in data and env.secret.encode() not in data, path
    for name in ("requirepass.secret", "cluster_secret.secret"):
        assert os.stat(os.path.join(env.data_dir, name)).st_mode & 0o077 == 0, name


def test_stop_kill_status_on_a_dir_with_no_cluster_touch_nothing(managed, tmp_path):
    env = managed
    before = {row["node"]: row["pid"] for row in env.status()}
    other = str(tmp_path / "elsewhere")
    os.mkdir(other)
    same_ports = ["--base-port", str(env.base_port), "--nodes", "3"]   # the running cluster's very ports
    for action in (["--action", "stop"], ["--action", "kill", "--node", "node1"], ["--action", "status"],
                   ["--action", "restart"], ["--action", "health"]):
        r = run(CM, *action, "--data-dir", other, *same_ports)
        assert r.returncode == 1 and f"no cluster at {other}" in r.stderr, tcm.out(r)
        r = run(CM, *action, "--data-dir", str(tmp_path / "missing"), *same_ports)
        assert r.returncode == 1 and "no cluster at" in r.stderr, tcm.out(r)
    after = {row["node"]: row["pid"] for row in env.status()}
    assert after == before and all(after.values()), (before, after)
    r = env.cm("--action", "health", "--wait", "10")
    assert r.returncode == 0, tcm.out(r)


def test_wiped_node_restarted_while_idle_converges_with_no_write(managed):
    """Wipe + restart + converge with no write (the leader notices the empty follower from its
    heartbeat replies)."""
    env = managed
    cc = ClusterClient(env.addrs, password=env.password, deadline=20)
    for i in range(30):
        cc.set(f"w{i}", i)
    prim = cc.primary().node_id
    cc.close()
    r = env.cm("--action", "health", "--wait", "10")
    assert r.returncode == 0, tcm.out(r)
    victim = "node2" if prim != "node2" else "node3"
    before = {row["node"]: row for row in env.status()}
    r = env.cm("--action", "restart", "--node", victim, "--wipe")
    assert r.returncode == 0 and "converged" in r.stdout, tcm.out(r)
    assert os.path.isdir(r.stdout.split("data dir to ")[1].split()[0])      # the old dir was kept aside
    rows = {row["node"]: row for row in env.status()}
    assert rows[victim]["keys"] == before[prim]["keys"] >= 30, rows
    assert len(_digests(env)) == 1 and rows[victim]["last_applied"] == before[prim]["last_applied"], rows


def test_backup_restore_seeds_a_new_cluster_with_equal_digest(managed, tmp_path):
    env = managed
    cc = ClusterClient(env.addrs, password=env.password, deadline=20)
    for i in range(40):
        cc.set(f"b{i}", {"i": i})
    cc.close()
    r = env.cm("--action", "health", "--wait", "10")
    assert r.returncode == 0, tcm.out(r)
    (digest, _), = _digests(env)
    bdir = str(tmp_path / "backup")
    r = env.cm("--action", "backup", "--to", bdir)
    assert r.returncode == 0 and digest in r.stdout, tcm.out(r)

    (tmp_path / "restored").mkdir()
    new = tcm.Env(tmp_path / "restored")
    try:
        r = new.cm("--action", "restore", "--from", bdir, "--detach", "--requirepass", env.password)
        assert r.returncode == 0, tcm.out(r)
        r = new.cm("--action", "health", "--wait", "15")
        assert r.returncode == 0, tcm.out(r)
        rows = new.status()
        assert {row["digest"] for row in rows} == {digest}, rows
        with open(os.path.join(new.data_dir, "cluster.json")) as f, \
                open(os.path.join(env.data_dir, "cluster.json")) as g:
            assert json.load(f)["cluster_id"] != json.load(g)["cluster_id"]   # a NEW cluster
        r = new.cm("--action", "restore", "--from", bdir)       # never over an existing cluster
        assert r.returncode == 2 and "already holds a cluster" in r.stderr, tcm.out(r)
    finally:
        new.cm("--action", "stop")
        new.reap()


# ------------------------------------------------------------------------------------------ clients
def test_wrong_password_is_reported_at_once(tmp_path, nodes):
    n = Node("--standalone", "--data-dir", str(tmp_path / "n"), env=dict(os.environ, KV_REQUIREPASS="right-pw"))
    nodes.append(n.start())
    dead = f"127.0.0.1:{free_port()}"           # a down node first: the search must not wait it out
    cc = ClusterClient([dead, f"127.0.0.1:{n.port}"], password="wrong-pw", deadline=60)
    with pytest.raises(KVError) as ei:
        cc.set("k", 1)
    assert ei.value.code == AUTH_FAILED and ei.value.definite, ei.value
    with pytest.raises(KVError) as ei:
        cc.primary()
    assert ei.value.code == AUTH_FAILED, ei.value
    cc.close()
    r = run(CLIENT, "--demo", "all", "--nodes", f"{dead},127.0.0.1:{n.port}", "--password", "wrong-pw",
            "--deadline", "60", "--no-cluster-manager")
    assert r.returncode == 2 and "AUTH_FAILED" in r.stdout and "retrying cannot help" in r.stderr, tcm.out(r)
    assert "cluster unavailable" not in r.stdout, tcm.out(r)


# ------------------------------------------------------------------- start-up and elections, as seen
def test_standalone_set_right_after_start_and_get_right_after_restart(tmp_path, nodes):
    """The first request a script sends once the port accepts succeeds: the node was primary
    before it accepted it (3 rounds: the bug reproduced 3 of 3)."""
    d = str(tmp_path / "s")
    for i in range(3):
        n = Node("--standalone", "--data-dir", d)
        nodes.append(n.start())
        if i:
            assert n.request(f"GET k{i - 1}")[0] == {"status": "OK", "value": i - 1}
        assert n.request(f"SET k{i} {i}")[0]["status"] == "OK"
        assert n.stop() == 0


def _resp(port: int, *args: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
        return s.recv(4096)


def test_no_primary_known_answers_the_election_variant_over_both_protocols(tmp_path, nodes):
    """A node that cannot find a primary holds the request, then answers a retryable NOT_PRIMARY
    that says an election is in progress ("election": true, no primary), and -TRYAGAIN to
    redis-cli users."""
    peers = f"node2=127.0.0.1:{free_port()},node3=127.0.0.1:{free_port()}"     # never started
    n = Node("--node-id", "node1", "--peers", peers, "--data-dir", str(tmp_path / "n1"))
    nodes.append(n.start())
    for line in ("SET a 1", "GET a"):
        ans = n.request(line)[0]
        assert ans["code"] == "NOT_PRIMARY" and ans["election"] is True and ans["primary"] is None, ans
        assert ans["definite"] is True and "election is in progress" in ans["message"], ans
    raw = _resp(n.port, "SET", "a", "1")
    assert raw.startswith(b"-TRYAGAIN ") and b"election is in progress" in raw, raw


def test_requests_during_a_first_election_never_get_a_bare_not_primary(tmp_path, nodes):
    """Requests sent while a fresh cluster elects its first primary are held: a NOT_PRIMARY
    answer names the primary, or (the hold ran out) is the election variant - never NOT_PRIMARY
    with a null primary and nothing said.  (A brand-new primary may also answer NO_QUORUM or
    TIMEOUT under load: those are not what this test is about.)"""
    ports = [free_port() for _ in range(3)]
    ids = ["node1", "node2", "node3"]
    procs = []
    for i, nid in enumerate(ids):
        peers = ",".join(f"{m}=127.0.0.1:{p}" for m, p in zip(ids, ports) if m != nid)
        n = Node("--node-id", nid, "--peers", peers, "--data-dir", str(tmp_path / nid),
                 *(["--primary"] if i == 0 else []), port=ports[i])
        procs.append(n)
        nodes.append(n)
    for n in procs:
        n.start(wait=False)
    for n in procs:
        wait_until(n.listening, 15, "listen")
    answers = [n.request("SET early 1")[0] for n in procs]
    assert any(a["status"] == "OK" or a.get("code") == "NOT_PRIMARY" for a in answers), answers
    for ans in answers:
        if ans.get("code") == "NOT_PRIMARY" and ans.get("primary") is None:
            assert ans.get("election") is True and "election is in progress" in ans["message"], answers


# ------------------------------------------------------------------------------ cluster identity
def test_nodes_of_different_clusters_refuse_each_other(tmp_path, nodes):
    p1, p2 = free_port(), free_port()
    a = Node("--node-id", "node1", "--peers", f"node2=127.0.0.1:{p2}", "--data-dir", str(tmp_path / "a"),
             "--cluster-id", "aaaa", "--primary", port=p1)
    b = Node("--node-id", "node2", "--peers", f"node1=127.0.0.1:{p1}", "--data-dir", str(tmp_path / "b"),
             "--cluster-id", "bbbb", port=p2)
    for n in (a, b):
        nodes.append(n.start())

    def refused(path, other):
        with open(path) as f:
            text = f.read()
        return "belongs to cluster" in text and other in text
    wait_until(lambda: refused(str(tmp_path / "a" / "node.log"), "bbbb"), 15, "node1 to refuse node2")
    wait_until(lambda: refused(str(tmp_path / "b" / "node.log"), "aaaa"), 15, "node2 to refuse node1")
    for n in (a, b):
        st = n.request("STATUS")[0]
        assert st["role"] != "primary" and not any(p["reachable"] for p in st["peers"].values()), st


def test_fresh_member_learns_the_cluster_id_and_keeps_it(tmp_path, nodes):
    p1, p2 = free_port(), free_port()
    a = Node("--node-id", "node1", "--peers", f"node2=127.0.0.1:{p2}", "--data-dir", str(tmp_path / "a"),
             "--primary", port=p1)
    b = Node("--node-id", "node2", "--peers", f"node1=127.0.0.1:{p1}", "--data-dir", str(tmp_path / "b"), port=p2)
    for n in (a, b):
        nodes.append(n.start())
    cid = a.request("STATUS")[0]["cluster_id"]
    assert cid                                           # --primary on a fresh dir bootstraps an id
    wait_until(lambda: b.request("STATUS")[0]["cluster_id"] == cid, 15, "node2 to learn the cluster id")
    with open(tmp_path / "b" / "identity.json") as f:
        assert json.load(f)["cluster_id"] == cid


# ------------------------------------------------------------------------------------------ secrets
def _handshake(port: int, sender: str, proof: str) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(json.dumps({"type": "HELLO", "from": sender, "to": "node1"}).encode() + b"\n")
        ch = json.loads(f.readline())
        if ch.get("type") != "CHALLENGE":
            return ch
        s.sendall(json.dumps({"type": "PROOF", "proof": proof}).encode() + b"\n")
        return json.loads(f.readline())


def test_secret_mismatch_is_logged_once_per_peer_and_says_which_side_to_check(tmp_path, nodes):
    p1, p2, p3 = free_port(), free_port(), free_port()
    a = Node("--node-id", "node1", "--peers", f"node2=127.0.0.1:{p2},node3=127.0.0.1:{p3}",
             "--data-dir", str(tmp_path / "a"), env=dict(os.environ, KV_CLUSTER_SECRET="right-secret"), port=p1)
    nodes.append(a.start())
    for _ in range(20):                                  # a peer retrying with the wrong secret
        ans = _handshake(p1, "node2", "not-the-proof")
        assert ans.get("reason") == "secret", ans
    for _ in range(5):
        assert _handshake(p1, "node9", "x").get("reason") == "member"
    b = Node("--node-id", "node2", "--peers", f"node1=127.0.0.1:{p1},node3=127.0.0.1:{p3}",
             "--data-dir", str(tmp_path / "b"), env=dict(os.environ, KV_CLUSTER_SECRET="wrong-secret"), port=p2)
    nodes.append(b.start())

    def sender_logged():
        with open(tmp_path / "b" / "node.log") as f:
            return [ln for ln in f if "refused this node's cluster secret" in ln]
    lines = wait_until(sender_logged, 15, "node2 to log the refused secret")
    assert "check --cluster-secret" in lines[0] and "node1" in lines[0], lines
    with open(tmp_path / "a" / "node.log") as f:
        text = f.read()
    secret_lines = [ln for ln in text.splitlines() if "did not prove the cluster secret" in ln]
    assert len(secret_lines) == 1, secret_lines          # 20+ refusals of node2, one line a minute
    assert "check --cluster-secret" in secret_lines[0] and "node2" in secret_lines[0], secret_lines
    assert len([ln for ln in text.splitlines() if "'node9' is not a member" in ln]) == 1, text
    assert "right-secret" not in text and "wrong-secret" not in text
