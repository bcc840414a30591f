#!/usr/bin/env python3
"""cluster_manager.py: start, watch, drill and stop a local KV Store cluster.

    python cluster_manager.py --action start               # foreground: live table, Ctrl-C stops all
    python cluster_manager.py --action start --detach      # background; other terminals use the rest
    python cluster_manager.py --action status | health | stop
    python cluster_manager.py --action kill --node node1   # SIGKILL, for failover drills
    python cluster_manager.py --action restart [--node node2]
    python cluster_manager.py --action failover [--node node3]

Layout (reading order):
    errors            ClusterError and its kinds: PortInUse, DataDirConflict, AlreadyRunning,
                      NodeFailed, WaitTimeout; SplitBrain (an AssertionError: two primaries, one term)
    call(), probe()   one-shot line-protocol requests to a node (AUTH first when a password is set)
    FaultProxy        in-process TCP forwarder, one port per directed node pair; cuts and heals links
    NodeProcess       one node process, addressed by PID only (a child we spawned, or an adopted PID)
    LocalCluster      the launcher used by the test suites, the benchmarks and this CLI
    health_verdict()  one STATUS round -> (healthy?, one-line reason)
    table rendering   rows of the status table, colours, psutil figures
    state files       <data-dir>/cluster.json (which cluster owns the dir), cluster_state.json
                      (the running cluster: pids, ports, args, manager), manager.lock, manager.sock
    Supervisor        the manager process: sole parent of the node processes; watches, reports,
                      restarts on failure, serves other terminals over a Unix socket
    action_*()        start / status / health / stop / kill / restart / failover
    main()            command line

Process model: every node process is the child of exactly one manager (the foreground `start`, or
the background supervisor that `start --detach` leaves behind), in its own session so a terminal's
Ctrl-C reaches only the manager, which then stops the nodes in order (secondaries first).  Other
terminals ask that manager over <data-dir>/manager.sock; when no manager is alive they act by PID
from the state file, after checking that the PID still is that node's process (command line and
start time).  Nothing is ever signalled by name.

Exit codes: 0 success (healthy, for --action health); 1 the action failed or the cluster is
unhealthy; 2 bad usage or a refusal (port taken, data dir of another cluster, already running).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

try:
    import psutil
except ImportError:   # resource columns and PID identity checks degrade, nothing else does
    psutil = None
try:
    import colorama
except ImportError:   # plain output
    colorama = None

__all__ = ["LocalCluster", "FaultProxy", "NodeProcess", "ClusterError", "PortInUse", "DataDirConflict",
           "AlreadyRunning", "NodeFailed", "WaitTimeout", "SplitBrain", "call", "probe", "health_verdict",
           "main"]

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_SCRIPT = os.path.join(HERE, "kv_store_server.py")
MARKER_FILE = "cluster.json"
STATE_FILE = "cluster_state.json"
LOCK_FILE = "manager.lock"
CONTROL_SOCKET = "manager.sock"
MANAGER_LOG = "manager.log"
CONSOLE_LOG = "console.log"     # a node's stdout+stderr, next to the node.log it writes itself


# ------------------------------------------------------------------------------------------ errors
class ClusterError(Exception):
    """A cluster operation failed; the message says what, where, and what to do."""


class PortInUse(ClusterError):
    """A node's port is taken by another process."""


class DataDirConflict(ClusterError):
    """The data dir belongs to a cluster with another membership."""


class AlreadyRunning(ClusterError):
    """A cluster (or leftover nodes of one) already runs from this data dir."""


class NodeFailed(ClusterError):
    """A node process exited while it was expected to run."""


class WaitTimeout(ClusterError, TimeoutError):
    """A wait_*() deadline passed; the message shows the last thing seen."""


class SplitBrain(AssertionError):
    """Two nodes were primary in the same term: Raft's Election Safety is broken."""


# -------------------------------------------------------------------- line protocol, one-shot calls
def call(host: str, port: int, lines: list[str], *, password: str | None = None,
         timeout: float = 2.0) -> list[dict]:
    """Send request lines on one fresh connection; return one parsed JSON answer per line.

    AUTH <password> is sent first when a password is given; a refused AUTH raises ClusterError.
    Raises OSError when the node cannot be reached or stops answering within `timeout` (per I/O
    step), ValueError when an answer is not JSON."""
    reqs = ([f"AUTH {password}"] if password is not None else []) + list(lines)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall("".join(r + "\n" for r in reqs).encode())
        with s.makefile("rb") as f:
            answers = []
            for _ in reqs:
                raw = f.readline(1 << 22)
                if not raw:
                    raise ConnectionError("the node closed the connection before answering")
                answers.append(json.loads(raw))
    if password is not None:
        auth = answers.pop(0)
        if auth.get("status") != "OK":
            raise ClusterError(f"AUTH refused by {host}:{port}: {auth.get('message', auth)}")
    return answers


def probe(host: str, port: int, *, password: str | None = None,
          timeout: float = 1.0) -> tuple[dict | None, str | None]:
    """One STATUS call: (answer, None) on success, (None, reason) when the node is down or refuses."""
    try:
        ans = call(host, port, ["STATUS"], password=password, timeout=timeout)[0]
    except ConnectionRefusedError:
        return None, f"nothing listens on {host}:{port}"
    except (OSError, ValueError, ClusterError) as e:
        return None, f"{host}:{port}: {e.__class__.__name__}: {e}"
    if ans.get("status") != "OK" or "role" not in ans:
        return None, f"{host}:{port} answered {ans.get('code', '')}: {ans.get('message', ans)}"
    return ans, None


# -------------------------------------------------------------------------------------- FaultProxy
class _ProxyConn:
    """One forwarded connection: side 0 is the dialling node, side 1 the upstream node.
    pending[i] holds bytes read from socks[i] that still have to be written to socks[1 - i]."""
    __slots__ = ("pair", "socks", "pending", "eof", "mask")

    def __init__(self, pair, a: socket.socket, b: socket.socket):
        self.pair = pair
        self.socks = (a, b)
        self.pending = (bytearray(), bytearray())
        self.eof = [False, False]
        self.mask = [0, 0]


class FaultProxy:
    """In-process TCP forwarder: one listening port on 127.0.0.1 per directed pair (src, dst),
    forwarding to dst's real address.  LocalCluster(proxied=True) gives each node the proxy port
    of (node, peer) as the peer's address, so a link can be cut without touching the processes.

    Invariants:
      * after start(), only the event-loop thread touches sockets; other threads post commands
        and wait until the loop has carried them out;
      * once block() returns, a blocked pair has no open forwarded connection, and each new
        connection to it is accepted and closed at once (the dialler sees its handshake fail);
      * at most BUF_LIMIT bytes wait per direction (reading pauses beyond it);
      * stop() closes every socket and joins the thread; the proxy is then inert.
    Callers use port(src, dst), block(pairs), unblock(pairs=None), blocked(), stop(), stats.
    """

    BUF_LIMIT = 1 << 20

    def __init__(self, routes: dict[tuple[str, str], tuple[str, int]]):
        self._routes = dict(routes)
        self._sel = selectors.DefaultSelector()
        self._ports: dict[tuple[str, str], int] = {}
        self._listeners: list[socket.socket] = []
        for pair in self._routes:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", 0))
            ls.listen(64)
            ls.setblocking(False)
            self._listeners.append(ls)
            self._ports[pair] = ls.getsockname()[1]
            self._sel.register(ls, selectors.EVENT_READ, ("listen", pair))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._lock = threading.Lock()
        self._cmds: list[tuple] = []
        self._blocked: set[tuple[str, str]] = set()
        self._conns: set[_ProxyConn] = set()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.stats = {"accepted": 0, "refused": 0, "cut": 0}

    def port(self, src: str, dst: str) -> int:
        return self._ports[(src, dst)]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def block(self, pairs) -> None:
        self._submit("block", set(pairs))

    def unblock(self, pairs=None) -> None:
        self._submit("unblock", None if pairs is None else set(pairs))

    def blocked(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._blocked)

    def stop(self) -> None:
        if self._thread is None or self._stopped:
            self._stopped = True
            return
        self._submit("stop", None)
        self._thread.join(timeout=5)
        self._stopped = True
        self._wake_w.close()

    # -- loop side
    def _submit(self, op: str, arg) -> None:
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._apply(op, arg)         # not running: there is nothing to close
                return
            self._cmds.append((op, arg, done))
        self._wake_w.send(b"x")
        if not done.wait(timeout=5):
            raise ClusterError(f"fault proxy did not carry out {op!r} within 5 s")

    def _apply(self, op: str, arg) -> bool:
        """Carry out one command; returns False for stop.  Called by the loop (or before start)."""
        if op == "block":
            self._blocked |= arg
            for c in [c for c in self._conns if c.pair in arg]:
                self._close(c)
                self.stats["cut"] += 1
        elif op == "unblock":
            self._blocked = set() if arg is None else self._blocked - arg
        elif op == "stop":
            return False
        return True

    def _run(self) -> None:
        stop_done: threading.Event | None = None
        try:
            while stop_done is None:
                for key, mask in self._sel.select(timeout=1.0):
                    tag = key.data
                    if tag[0] == "listen":
                        self._accept(key.fileobj, tag[1])
                    elif tag[0] == "wake":
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif tag[0] in self._conns:
                        self._on_event(tag[0], tag[1], mask)
                with self._lock:
                    cmds, self._cmds = self._cmds, []
                for op, arg, done in cmds:
                    if self._apply(op, arg):
                        done.set()
                    else:
                        stop_done = done
        finally:
            for c in list(self._conns):
                self._close(c)
            for s in self._listeners:
                self._sel.unregister(s)
                s.close()
            self._sel.unregister(self._wake_r)
            self._wake_r.close()
            self._sel.close()
            if stop_done is not None:
                stop_done.set()

    def _accept(self, ls: socket.socket, pair) -> None:
        try:
            a, _ = ls.accept()
        except (BlockingIOError, InterruptedError):
            return
        if pair in self._blocked:
            self.stats["refused"] += 1
            a.close()
            return
        try:
            b = socket.create_connection(self._routes[pair], timeout=1.0)
        except OSError:
            a.close()                      # the upstream node is down: so is this link
            return
        self.stats["accepted"] += 1
        for s in (a, b):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        conn = _ProxyConn(pair, a, b)
        self._conns.add(conn)
        self._update(conn)

    def _on_event(self, c: _ProxyConn, side: int, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                try:
                    data = c.socks[side].recv(65536)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":
                    c.eof[side] = True
                elif data:
                    c.pending[side].extend(data)
            for i in (0, 1):               # forward whatever waits, in both directions
                buf = c.pending[i]
                if buf:
                    try:
                        n = c.socks[1 - i].send(buf)
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    del buf[:n]
        except OSError:
            self._close(c)
            return
        if any(c.eof[i] and not c.pending[i] for i in (0, 1)):
            self._close(c)                 # one side is gone and everything it sent was passed on
        else:
            self._update(c)

    def _update(self, c: _ProxyConn) -> None:
        for i in (0, 1):
            m = 0
            if not c.eof[i] and len(c.pending[i]) < self.BUF_LIMIT:
                m |= selectors.EVENT_READ
            if c.pending[1 - i]:
                m |= selectors.EVENT_WRITE
            s = c.socks[i]
            if m != c.mask[i]:
                if c.mask[i] == 0:
                    self._sel.register(s, m, (c, i))
                elif m == 0:
                    self._sel.unregister(s)
                else:
                    self._sel.modify(s, m, (c, i))
                c.mask[i] = m

    def _close(self, c: _ProxyConn) -> None:
        self._conns.discard(c)
        for i in (0, 1):
            if c.mask[i]:
                self._sel.unregister(c.socks[i])
                c.mask[i] = 0
            c.socks[i].close()


# ------------------------------------------------------------------------------------- NodeProcess
def _process_matches(pid: int, node_id: str, create_time: float | None) -> bool:
    """True when pid is (still) a live kv_store_server.py process for node_id (and, when given,
    the process started at create_time: a recycled PID never matches)."""
    if psutil is None:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(p.create_time() - create_time) > 0.5:
            return False
        cmd = p.cmdline()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return create_time is not None
    if not any(os.path.basename(a) == "kv_store_server.py" for a in cmd):
        return False
    return any(a == "--node-id" and b == node_id for a, b in zip(cmd, cmd[1:])) or \
        f"--node-id={node_id}" in cmd


def _create_time(pid: int) -> float | None:
    if psutil is None:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class NodeProcess:
    """One node process, addressed by its PID only.

    Either a child this process spawned (`popen` set: we reap it and know its exit code), or a
    PID adopted from a state file (no exit code; before any signal the PID is checked to still be
    this node's kv_store_server.py process started at `create_time`).
    Invariant: never signals a PID that is not (still) this node's process."""

    def __init__(self, node_id: str, pid: int, popen: subprocess.Popen | None = None,
                 create_time: float | None = None, cmdline: list[str] | None = None):
        self.node_id = node_id
        self.pid = pid
        self.popen = popen
        self.create_time = create_time if create_time is not None else _create_time(pid)
        self.cmdline = cmdline
        self.started = time.time()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _process_matches(self.pid, self.node_id, self.create_time)

    def signal(self, sig: int) -> bool:
        """Send sig if the process still runs; False when it is already gone."""
        if not self.alive():
            return False
        try:
            if self.popen is not None:
                self.popen.send_signal(sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """Wait until the process has exited (and reap it if it is our child).  True if it did."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout=max(0.0, timeout))
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def state(self) -> dict:
        return {"pid": self.pid, "create_time": self.create_time, "cmdline": self.cmdline}


# ------------------------------------------------------------------------------------ LocalCluster
def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that are free right now, chosen below the kernel's ephemeral range (so an
    outgoing connection never takes a stopped node's port) and never 6379-6381."""
    low, high = 10000, _ephemeral_low()
    rng = random.SystemRandom()
    chosen: list[int] = []
    if high - low > 1000:
        for _ in range(50 * n):
            p = rng.randrange(low, high)
            if p not in chosen and port_in_use(host, p) is None:
                chosen.append(p)
                if len(chosen) == n:
                    return chosen
    socks = []                       # fall back to whatever the OS hands out
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(host: str, port: int) -> str | None:
    """None when host:port can be bound now; else a sentence naming the port and, when psutil can
    tell, the process that holds it."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server does
        s.bind((host, port))
        return None
    except OSError as e:
        who = _listener_of(port)
        return f"port {port} on {host} is already in use" + (f" by {who}" if who else f" ({e.strerror})")
    finally:
        s.close()


def _listener_of(port: int) -> str | None:
    if psutil is None:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            try:
                p = psutil.Process(c.pid)
                cmd = " ".join(p.cmdline()) or p.name()
            except psutil.Error:
                cmd = "?"
            if len(cmd) > 100:
                cmd = cmd[:97] + "..."
            return f"pid {c.pid} ({cmd})"
    return None


def tail(path: str, lines: int = 10) -> list[str]:
    """The last lines of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def fmt_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)


_LIVE: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()


class LocalCluster:
    """A cluster of kv_store_server.py processes on this machine: the one launcher of the tests,
    the benchmarks and the cluster_manager CLI.

        with LocalCluster(n=3, proxied=True) as c:     # free ports, fresh temp dir
            c.start()                                   # node1 with --primary; waits for a primary
            p = c.wait_for_single_primary()
            c.send(p, "SET a 1")                        # -> {"status": "OK", ...}
            c.partition(p); q = c.wait_for_single_primary(exclude=[p]); c.heal()
            c.kill(q); c.restart(q); c.wait_converged()

    Constructor: LocalCluster(n=3, base_port=None (None = free ports picked now), host="127.0.0.1",
    data_dir=None (None = fresh temp dir, removed by cleanup()), fsync="always",
    heartbeat_interval=None, election_timeout=None (None = the server's defaults), extra_args=()
    (more server flags, for every node), requirepass=None, cluster_secret=None, proxied=False,
    python=sys.executable; keyword-only: ports (explicit list, overrides base_port),
    server_script, log_level).

    Addresses: ids ["node1", ...], addr(id) -> (host, port), addresses() -> ["host:port", ...],
    pid(id), data_dir_of(id) (<data_dir>/<id>), log_path(id) (its stdout+stderr; the node writes
    node.log beside it).
    Processes: start(wait=True, timeout=10), start_node(id, primary=False, wipe=False),
    kill(id) (SIGKILL + reap), stop_node(id, timeout=10) (SIGTERM, SIGKILL after timeout),
    restart(id, primary=False, wipe=False), stop() (every node, secondaries first; no process is
    left), cleanup() (stop + remove the temp dir), running_ids(), exit_code(id), detach().
    Observation: status(id, timeout=1.0) -> dict | None, statuses(), primary() -> id | None,
    wait_for_single_primary(timeout=10, exclude=()), wait_converged(timeout=10, ids=None),
    wait_until(predicate, timeout, what), send(id, line) -> answer dict, check_get(key, want).
    Faults (proxied=True): partition(id), cut(a, b), cut_one_way(src, dst), heal().

    Invariants:
      * every process it spawns is remembered by PID and is signalled by PID only; stop(),
        cleanup() and an atexit hook (for clusters not detach()ed) leave none of them running;
      * nodes run in their own session: a Ctrl-C in the terminal does not reach them;
      * every STATUS answer seen is checked against the history of primaries per term: two nodes
        primary in one term raises SplitBrain from the next wait_*() call (or check_safety());
      * with proxied=True every peer link goes through this object's FaultProxy (127.0.0.1 only);
        clients still reach the nodes' real ports directly (but a NOT_PRIMARY hint names the
        primary by the proxy address the answering node knows it by, so it obeys the cuts).
    Thread safety: process control is serialised by an internal lock; the observation methods
    may be called from any thread.
    """

    def __init__(self, n: int = 3, base_port: int | None = None, host: str = "127.0.0.1",
                 data_dir: str | None = None, fsync: str = "always",
                 heartbeat_interval: float | None = None, election_timeout: float | None = None,
                 extra_args=(), requirepass: str | None = None, cluster_secret: str | None = None,
                 proxied: bool = False, python: str = sys.executable, *, ports=None,
                 server_script: str = SERVER_SCRIPT, log_level: str | None = None):
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.n = n
        self.host = host
        self.ids = [f"node{i}" for i in range(1, n + 1)]
        if ports is not None:
            ports = [int(p) for p in ports]
            if len(ports) != n:
                raise ValueError(f"{len(ports)} ports given for {n} nodes")
        elif base_port is None:
            ports = pick_free_ports(n, host)
        else:
            ports = [base_port + i for i in range(n)]
        self._ports = dict(zip(self.ids, ports))
        self._own_dir = data_dir is None
        self.data_dir = tempfile.mkdtemp(prefix="kvcluster-") if data_dir is None else os.path.abspath(data_dir)
        self.fsync = fsync
        self.heartbeat_interval = heartbeat_interval
        self.election_timeout = election_timeout
        self.extra_args = tuple(extra_args)
        self.requirepass = requirepass
        self.cluster_secret = cluster_secret
        self.python = python
        self.server_script = server_script
        self.log_level = log_level
        self._procs: dict[str, NodeProcess] = {}
        self._expected_exit: set[str] = set()      # stopped on purpose: not a failure
        self._lock = threading.RLock()
        self._leaders: dict[int, str] = {}          # term -> the node seen primary in it
        self._violations: list[str] = []
        self._pool: ThreadPoolExecutor | None = None
        self._detached = False
        self._closed = False
        self._proxy: FaultProxy | None = None
        if proxied and n > 1:
            target = self._dial_host()
            self._proxy = FaultProxy({(a, b): (target, self._ports[b]) for a in self.ids for b in self.ids if a != b})
            self._proxy.start()
        _LIVE.add(self)

    # -------------------------------------------------------------- addresses
    def _dial_host(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    def addr(self, node_id: str) -> tuple[str, int]:
        return self._dial_host(), self._ports[node_id]

    def addresses(self) -> list[str]:
        return [f"{h}:{p}" for h, p in map(self.addr, self.ids)]

    def port(self, node_id: str) -> int:
        return self._ports[node_id]

    def pid(self, node_id: str) -> int | None:
        p = self._procs.get(node_id)
        return p.pid if p is not None else None

    def process(self, node_id: str) -> NodeProcess | None:
        return self._procs.get(node_id)

    def data_dir_of(self, node_id: str) -> str:
        return os.path.join(self.data_dir, node_id)

    def log_path(self, node_id: str) -> str:
        return os.path.join(self.data_dir_of(node_id), CONSOLE_LOG)

    def peer_addr(self, src: str, dst: str) -> str:
        """The address src is told to reach dst on (a proxy port when proxied)."""
        if self._proxy is not None:
            return f"127.0.0.1:{self._proxy.port(src, dst)}"
        return "%s:%d" % self.addr(dst)

    def command(self, node_id: str, primary: bool = False) -> list[str]:
        """The full command line that starts node_id."""
        cmd = [self.python, self.server_script, "--node-id", node_id, "--host", self.host,
               "--port", str(self._ports[node_id]), "--data-dir", self.data_dir_of(node_id),
               "--fsync", self.fsync]
        if self.n == 1:
            cmd.append("--standalone")
        else:
            cmd += ["--peers", ",".join(f"{m}={self.peer_addr(node_id, m)}" for m in self.ids if m != node_id)]
        if self.heartbeat_interval is not None:
            cmd += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if self.election_timeout is not None:
            cmd += ["--election-timeout", str(self.election_timeout)]
        if self.requirepass is not None:
            cmd += ["--requirepass", self.requirepass]
        if self.cluster_secret is not None:
            cmd += ["--cluster-secret", self.cluster_secret]
        if self.log_level is not None:
            cmd += ["--log-level", self.log_level]
        if primary:
            cmd.append("--primary")
        return cmd + list(self.extra_args)

    # -------------------------------------------------------------- processes
    def running_ids(self) -> list[str]:
        """Nodes whose process runs (nodes this object never saw a process for count as running:
        an attached CLI cluster learns PIDs from STATUS)."""
        return [i for i in self.ids if i not in self._procs or self._procs[i].alive()]

    def exit_code(self, node_id: str) -> int | None:
        p = self._procs.get(node_id)
        return p.returncode if p is not None else None

    def expected_exit(self, node_id: str) -> bool:
        return node_id in self._expected_exit

    def check_ports(self, ids=None) -> None:
        """Raise PortInUse naming the first port (and its holder) a node to be started cannot bind."""
        for nid in ids or self.ids:
            p = self._procs.get(nid)
            if p is not None and p.alive():
                continue
            why = port_in_use(self.host, self._ports[nid])
            if why:
                raise PortInUse(f"cannot start {nid}: {why}")

    def start(self, wait: bool = True, timeout: float = 10) -> "LocalCluster":
        """Start every node not running, node1 first with --primary, all at once (waiting for node1
        to listen first measured worse: its peer-link back-off then delays its campaign).  With
        wait, return once every node answers STATUS and all agree on a single primary; raises
        NodeFailed or WaitTimeout.  Which node wins the first election is up to the nodes."""
        self.check_ports()
        for i, nid in enumerate(self.ids):
            p = self._procs.get(nid)
            if p is None or not p.alive():
                self.start_node(nid, primary=(i == 0), wait=False)
        if wait:
            self.wait_ready(timeout)
        return self

    def start_node(self, node_id: str, primary: bool = False, wipe: bool = False,
                   wait: bool = True, timeout: float = 10) -> int:
        """Spawn node_id (with --primary if asked; wipe=True empties its data dir first).
        With wait, return once it answers STATUS; raises NodeFailed (with its log tail) if it exits
        first.  Returns the PID."""
        with self._lock:
            if self._closed:
                raise ClusterError("this LocalCluster was stopped for good (cleanup)")
            old = self._procs.get(node_id)
            if old is not None and old.alive():
                raise ClusterError(f"{node_id} is already running (pid {old.pid})")
            why = port_in_use(self.host, self._ports[node_id])
            if why:
                raise PortInUse(f"cannot start {node_id}: {why}")
            ddir = self.data_dir_of(node_id)
            if wipe and os.path.isdir(ddir):
                shutil.rmtree(ddir)
            os.makedirs(ddir, exist_ok=True)
            cmd = self.command(node_id, primary)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(self.log_path(node_id), "ab") as logf:
                logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} cluster_manager starts {node_id}: "
                           f"{' '.join(cmd)}\n".encode())
                logf.flush()
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env, close_fds=True)
            self._procs[node_id] = NodeProcess(node_id, popen.pid, popen=popen, cmdline=cmd)
            self._expected_exit.discard(node_id)
        if wait:
            self.wait_until(lambda: self._answers(node_id), timeout, f"{node_id} to answer STATUS")
        return popen.pid

    def _answers(self, node_id: str) -> bool:
        self._raise_if_dead([node_id])
        return self.status(node_id, timeout=0.5) is not None

    def _raise_if_dead(self, ids) -> None:
        for nid in ids:
            p = self._procs.get(nid)
            if p is not None and not p.alive() and nid not in self._expected_exit:
                lines = "\n    ".join(tail(self.log_path(nid), 15))
                raise NodeFailed(f"{nid} (pid {p.pid}) exited with code {fmt_exit(p.returncode)}; "
                                 f"last lines of {self.log_path(nid)}:\n    {lines}")

    def kill(self, node_id: str) -> int | None:
        """SIGKILL node_id by PID and reap it; returns its exit code (None if it was not running)."""
        with self._lock:
            p = self._procs.get(node_id)
            if p is None or not p.signal(signal.SIGKILL):
                return None
            p.wait(10)
            return p.returncode

    def stop_node(self, node_id: str, timeout: float = 10, shutdown_command: bool = False) -> int | None:
        """Stop node_id gracefully: SIGTERM (or first the SHUTDOWN command), SIGKILL after timeout.
        Returns its exit code (None if it was not running or is not our child)."""
        self._stop_many([node_id], timeout, shutdown_command)
        return self.exit_code(node_id)

    def _stop_many(self, ids, timeout: float, shutdown_command: bool = False) -> None:
        """Stop several nodes at once by the same ladder.  Caller may hold self._lock."""
        with self._lock:
            procs = [(nid, self._procs[nid]) for nid in ids if nid in self._procs]
            for nid, _ in procs:
                self._expected_exit.add(nid)
            asked = set()
            if shutdown_command:
                for nid, p in procs:
                    if not p.alive():
                        continue
                    try:
                        ans = self.send(nid, "SHUTDOWN", timeout=2.0)
                        if ans.get("status") == "OK":
                            asked.add(nid)
                    except (OSError, ValueError, ClusterError):
                        pass      # no answer: SIGTERM below does the same job
            for nid, p in procs:
                if nid not in asked:
                    p.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            if asked:             # a SHUTDOWN that stalls gets SIGTERM half-way
                half = time.monotonic() + timeout / 2
                for nid, p in procs:
                    if nid in asked and not p.wait(half - time.monotonic()):
                        p.signal(signal.SIGTERM)
            for _, p in procs:
                if not p.wait(deadline - time.monotonic()):
                    p.signal(signal.SIGKILL)
                    p.wait(5)

    def restart(self, node_id: str, primary: bool = False, wipe: bool = False,
                timeout: float = 10) -> int:
        """stop_node (if running) then start_node; returns the new PID."""
        p = self._procs.get(node_id)
        if p is not None and p.alive():
            self.stop_node(node_id, timeout=timeout)
        return self.start_node(node_id, primary=primary, wipe=wipe, timeout=timeout)

    def stop(self, timeout: float = 10, graceful: bool = True, shutdown_command: bool = False,
             on_event: Callable[[str], None] | None = None) -> None:
        """Stop every node: secondaries first, then the primary (SIGTERM, or the SHUTDOWN command
        with shutdown_command=True; SIGKILL after timeout), or all at once by SIGKILL with
        graceful=False.  Stops the fault proxy.  Leaves no process this object started."""
        say = on_event or (lambda s: None)
        with self._lock:
            alive = [nid for nid, p in self._procs.items() if p.alive()]
            if alive and graceful:
                prim = self.primary(timeout=0.5)
                first = [nid for nid in alive if nid != prim]
                if first:
                    say(f"stopping {', '.join(first)}")
                    self._stop_many(first, timeout, shutdown_command)
                if prim in alive:
                    say(f"stopping {prim} (primary)")
                    self._stop_many([prim], timeout, shutdown_command)
            for nid, p in self._procs.items():
                self._expected_exit.add(nid)
                if p.signal(signal.SIGKILL):
                    p.wait(5)
            for nid in alive:
                say(f"{nid} stopped (exit code {fmt_exit(self.exit_code(nid))})")
        if self._proxy is not None:
            self._proxy.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def cleanup(self) -> None:
        """stop(), then remove the data dir if this object created it (kept when KV_KEEP_DATA=1)."""
        self.stop()
        self._closed = True
        if self._own_dir and not os.environ.get("KV_KEEP_DATA"):
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def detach(self) -> None:
        """Let the node processes outlive this object (no atexit kill): the CLI uses it."""
        self._detached = True

    def adopt(self, node_id: str, pid: int, create_time: float | None = None,
              cmdline: list[str] | None = None) -> None:
        """Track a node process started elsewhere (from a state file)."""
        self._procs[node_id] = NodeProcess(node_id, pid, create_time=create_time, cmdline=cmdline)

    def _kill_leftovers(self) -> None:
        if self._detached:
            return
        for p in self._procs.values():
            if p.popen is not None and p.signal(signal.SIGKILL):
                p.wait(5)
        if self._proxy is not None:
            self._proxy.stop()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ----------------------------------------------------------- observation
    def status(self, node_id: str, timeout: float = 1.0) -> dict | None:
        """The node's STATUS answer, or None when it does not answer."""
        host, port = self.addr(node_id)
        st, _ = probe(host, port, password=self.requirepass, timeout=timeout)
        if st is not None:
            self._record({node_id: st})
        return st

    def statuses(self, ids=None, timeout: float = 1.0) -> dict[str, dict | None]:
        """STATUS of several nodes (default all), asked concurrently: {id: answer or None}."""
        return self.probe_all(ids, timeout)[0]

    def probe_all(self, ids=None, timeout: float = 1.0) -> tuple[dict[str, dict | None], dict[str, str]]:
        """Like statuses(), plus {id: why it gave no answer} for the nodes that did not answer."""
        ids = list(self.ids if ids is None else ids)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(2, self.n), thread_name_prefix="status")
        futs = {nid: self._pool.submit(probe, *self.addr(nid), password=self.requirepass, timeout=timeout)
                for nid in ids}
        res = {nid: f.result() for nid, f in futs.items()}
        sts = {nid: r[0] for nid, r in res.items()}
        self._record(sts)
        return sts, {nid: r[1] for nid, r in res.items() if r[1]}

    def _record(self, sts: dict) -> None:
        with self._lock:
            for nid, st in sts.items():
                if st is None or st.get("role") != "primary":
                    continue
                term = st.get("election_term")
                seen = self._leaders.setdefault(term, nid)
                if seen != nid:
                    self._violations.append(f"{seen} and {nid} were both primary in term {term}")

    @property
    def leaders_by_term(self) -> dict[int, str]:
        return dict(self._leaders)

    def check_safety(self) -> None:
        """Raise SplitBrain if two nodes were ever seen primary in the same term."""
        if self._violations:
            raise SplitBrain("; ".join(self._violations))

    def primary(self, timeout: float = 1.0) -> str | None:
        """The node that reports role primary in the highest term, or None."""
        sts = self.statuses(self.running_ids(), timeout=timeout)
        prims = [(s["election_term"], nid) for nid, s in sts.items() if s and s.get("role") == "primary"]
        return max(prims)[1] if prims else None

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str,
                   interval: float = 0.03):
        """Poll predicate until it returns something truthy (returned) or timeout passes
        (WaitTimeout naming `what` and what each node reports).  Exceptions propagate."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; {self.describe()}")
            time.sleep(interval)

    def describe(self) -> str:
        """One line per node: what it reports right now (for failure messages)."""
        parts = []
        for nid, st in self.statuses(timeout=0.5).items():
            if st is None:
                p = self._procs.get(nid)
                how = "down" if p is None or not p.alive() else "running but not answering"
                if p is not None and p.returncode is not None:
                    how += f", exit code {fmt_exit(p.returncode)}"
                parts.append(f"{nid}: {how}")
            else:
                parts.append(f"{nid}: {st['role']} term {st['election_term']} primary={st.get('primary')} "
                             f"commit={st.get('commit_index')} applied={st.get('last_applied')} "
                             f"digest={st.get('digest')}")
        return " | ".join(parts)

    def ready_primary(self) -> str | None:
        """One poll: the primary's id when every running node answers and all name that one
        primary, else None.  Raises NodeFailed if a node died, SplitBrain on two primaries."""
        self._raise_if_dead(self.ids)
        sts = self.statuses(self.running_ids(), timeout=0.5)
        self.check_safety()
        if any(s is None for s in sts.values()):
            return None
        prims = [nid for nid, s in sts.items() if s["role"] == "primary"]
        if len(prims) == 1 and all(s.get("primary") == prims[0] for s in sts.values()):
            return prims[0]
        return None

    def wait_ready(self, timeout: float = 10) -> str:
        """Every running node answers and all agree on one primary; returns its id."""
        return self.wait_until(self.ready_primary, timeout, "every node up and agreeing on one primary")

    def wait_for_single_primary(self, timeout: float = 10, exclude=()) -> str:
        """Wait until exactly one node (outside `exclude`) reports role primary and a majority of
        the cluster reports it as primary in its term; returns its id.  Raises SplitBrain at once if
        two nodes report primary in the same term (now or in any earlier observation)."""
        exclude = set(exclude)
        majority = self.n // 2 + 1

        def single():
            ids = [i for i in self.running_ids() if i not in exclude]
            sts = self.statuses(ids, timeout=0.5)
            self.check_safety()
            prims = [nid for nid, s in sts.items() if s and s.get("role") == "primary"]
            if len(prims) != 1:
                return None
            p = prims[0]
            term = sts[p]["election_term"]
            agree = 1 + sum(1 for nid, s in sts.items()
                            if nid != p and s and s.get("primary") == p and s.get("election_term") == term)
            return p if agree >= majority else None
        what = "a single primary" + (f" outside {sorted(exclude)}" if exclude else "")
        return self.wait_until(single, timeout, what)

    def wait_converged(self, timeout: float = 10, ids=None) -> dict[str, dict]:
        """Wait until the nodes (default: all running) report equal last_applied, commit_index and
        digest, and exactly one running node is primary.  Returns their STATUS answers."""
        def converged():
            running = self.running_ids()
            targets = list(ids) if ids is not None else running
            sts = self.statuses(sorted(set(running) | set(targets)), timeout=0.5)
            self.check_safety()
            mine = {nid: sts.get(nid) for nid in targets}
            if any(s is None for s in mine.values()):
                return None
            for field in ("last_applied", "commit_index", "digest"):
                if len({s[field] for s in mine.values()}) != 1:
                    return None
            if sum(1 for s in sts.values() if s and s.get("role") == "primary") != 1:
                return None
            return mine
        return self.wait_until(converged, timeout, "the nodes to converge (same applied index, commit index and digest)")

    def send(self, node_id: str, line: str, timeout: float = 5.0) -> dict:
        """One line-protocol request to node_id on a fresh connection (AUTH first when the cluster
        has a password); returns the parsed answer.  Raises OSError when the node is unreachable."""
        host, port = self.addr(node_id)
        return call(host, port, [line], password=self.requirepass, timeout=timeout)[0]

    def check_get(self, key: str, want, timeout: float = 5.0) -> None:
        """GET key on the primary (following a failover until timeout); assert the value is want."""
        def get():
            p = self.wait_for_single_primary(timeout=timeout)
            ans = self.send(p, f"GET {key}")
            return None if ans.get("code") in ("NOT_PRIMARY", "NO_QUORUM") else ans
        ans = self.wait_until(get, timeout, f"GET {key} on the primary")
        if ans.get("status") != "OK" or ans.get("value") != want:
            raise AssertionError(f"GET {key}: wanted {want!r}, got {ans!r}")

    # ---------------------------------------------------------------- faults
    def _need_proxy(self) -> FaultProxy:
        if self._proxy is None:
            raise ClusterError("link faults need LocalCluster(proxied=True) with at least two nodes")
        return self._proxy

    def partition(self, node_id: str) -> None:
        """Cut every link to and from node_id (its open peer connections are closed now)."""
        self._need_proxy().block({(node_id, m) for m in self.ids if m != node_id} |
                                 {(m, node_id) for m in self.ids if m != node_id})

    def cut(self, a: str, b: str) -> None:
        """Cut the links a -> b and b -> a."""
        self._need_proxy().block({(a, b), (b, a)})

    def cut_one_way(self, src: str, dst: str) -> None:
        """Cut only src -> dst: src's messages stop reaching dst; dst's still reach src."""
        self._need_proxy().block({(src, dst)})

    def heal(self) -> None:
        """Restore every cut link (nodes reconnect on their own)."""
        self._need_proxy().unblock()

    @property
    def proxy(self) -> FaultProxy | None:
        return self._proxy


@atexit.register
def _atexit_kill_leftovers() -> None:
    for c in list(_LIVE):
        c._kill_leftovers()


# ---------------------------------------------------------------------------------- health verdict
def health_verdict(sts: dict[str, dict | None], errors: dict[str, str] | None = None,
                   max_lag: int = 0) -> tuple[bool, str]:
    """Judge one STATUS round: healthy only with every node up, exactly one primary that every
    node follows, and every node within max_lag entries of the primary's commit index with the
    same digest where the applied index is the same.  Returns (healthy, one-line reason)."""
    errors = errors or {}
    prims = sorted(((s["election_term"], nid) for nid, s in sts.items() if s and s.get("role") == "primary"),
                   reverse=True)
    terms = {}
    for t, nid in prims:
        terms.setdefault(t, []).append(nid)
    for t, nids in terms.items():
        if len(nids) > 1:
            return False, f"SPLIT BRAIN: {' and '.join(nids)} are all primary in term {t}"
    down = [nid for nid, s in sts.items() if s is None]
    if down:
        why = "; ".join(f"{nid}: {errors.get(nid, 'no answer')}" for nid in down)
        extra = f" (primary is {prims[0][1]}, term {prims[0][0]})" if prims else " (and no primary)"
        return False, f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down{extra}: {why}"
    if not prims:
        roles = ", ".join(f"{nid} {s['role']} term {s['election_term']}" for nid, s in sts.items())
        return False, f"no primary ({roles})"
    if len(prims) > 1:
        return False, (f"{len(prims)} nodes claim primary: " +
                       ", ".join(f"{nid} (term {t})" for t, nid in prims) + "; the older one should step down")
    term, p = prims[0]
    pst = sts[p]
    for nid, s in sts.items():
        if nid != p and (s.get("primary") != p or s.get("election_term") != term):
            return False, (f"{nid} follows {s.get('primary') or 'no primary'} in term {s.get('election_term')}, "
                           f"but the primary is {p} in term {term}")
    target = pst["commit_index"]
    for nid, s in sts.items():
        lag = target - s["last_applied"]
        if lag > max_lag:
            return False, (f"{nid} is {lag} entr{'y' if lag == 1 else 'ies'} behind the primary {p} "
                           f"(applied {s['last_applied']} of {target})")
    for nid, s in sts.items():
        if s["last_applied"] == pst["last_applied"] and s["digest"] != pst["digest"]:
            return False, (f"{nid}'s digest {s['digest']} differs from the primary's {pst['digest']} "
                           f"at index {s['last_applied']}: the replicas have diverged")
    return True, (f"primary {p} (term {term}); {len(sts)}/{len(sts)} nodes up and in sync at index "
                  f"{pst['last_applied']}, digest {pst['digest']}")


# ---------------------------------------------------------------------------------- table rendering
class _Colour:
    def __init__(self, enabled: bool):
        on = enabled and colorama is not None
        if on and hasattr(colorama, "just_fix_windows_console"):
            colorama.just_fix_windows_console()
        F = colorama.Fore if on else None
        S = colorama.Style if on else None
        self.green = F.GREEN if on else ""
        self.cyan = F.CYAN if on else ""
        self.yellow = F.YELLOW if on else ""
        self.red = F.RED if on else ""
        self.dim = S.DIM if on else ""
        self.bold = S.BRIGHT if on else ""
        self.reset = S.RESET_ALL if on else ""

    def __call__(self, text: str, colour: str) -> str:
        return f"{colour}{text}{self.reset}" if colour else text


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


class ProcSampler:
    """CPU % and RSS of node PIDs via psutil.  CPU % is measured between two sample() calls."""

    def __init__(self):
        self._procs: dict[int, object] = {}

    def sample(self, pids) -> dict[int, tuple[float | None, int | None]]:
        out = {}
        if psutil is None:
            return out
        for pid in pids:
            if pid is None:
                continue
            p = self._procs.get(pid)
            try:
                if p is None:
                    p = self._procs[pid] = psutil.Process(pid)
                    p.cpu_percent(None)
                    out[pid] = (None, p.memory_info().rss)
                else:
                    out[pid] = (p.cpu_percent(None), p.memory_info().rss)
            except psutil.Error:
                self._procs.pop(pid, None)
        return out


COLUMNS = [("NODE", "<"), ("ADDRESS", "<"), ("PID", ">"), ("ROLE", "<"), ("TERM", ">"),
           ("COMMIT/APPLIED", ">"), ("LAG", ">"), ("KEYS", ">"), ("DIGEST", "<"), ("UPTIME", ">"),
           ("CPU%", ">"), ("RSS", ">")]


def table_rows(cluster: LocalCluster, sts: dict, errors: dict, usage: dict,
               down_info: dict | None = None) -> list[dict]:
    """One dict per node with every column's value (also the --json output of status)."""
    down_info = down_info or {}
    prims = [(s["election_term"], nid) for nid, s in sts.items() if s and s.get("role") == "primary"]
    pst = sts[max(prims)[1]] if prims else None
    rows = []
    for nid in cluster.ids:
        s = sts.get(nid)
        proc = cluster.process(nid)
        host, port = cluster.addr(nid)
        row = {"node": nid, "address": f"{host}:{port}", "up": s is not None}
        if s is None:
            row.update(role="down", reason=down_info.get(nid) or errors.get(nid),
                       pid=proc.pid if proc is not None and proc.alive() else None)
        else:
            row.update(pid=s.get("pid"), role=s["role"], term=s["election_term"], primary=s.get("primary"),
                       commit_index=s["commit_index"], last_applied=s["last_applied"], keys=s.get("keys"),
                       digest=s.get("digest"), uptime=s.get("uptime"))
            if pst is not None:
                row["lag"] = max(0, pst["commit_index"] - s["last_applied"])
                if s["last_applied"] == pst["last_applied"]:
                    row["digest_match"] = "match" if s["digest"] == pst["digest"] else "DIFFERS"
                else:
                    row["digest_match"] = "behind" if s["last_applied"] < pst["last_applied"] else "ahead"
        cpu, rss = usage.get(row.get("pid"), (None, None))
        row.update(cpu_percent=cpu, rss=rss)
        rows.append(row)
    return rows


def render_table(rows: list[dict], col: _Colour) -> list[str]:
    role_colour = {"primary": col.green + col.bold, "secondary": col.cyan, "candidate": col.yellow,
                   "down": col.red + col.bold}
    cells = []
    for r in rows:
        if not r["up"]:
            why = r.get("reason") or ""
            c = [(r["node"], ""), (r["address"], ""), (str(r["pid"] or "-"), ""), ("down", role_colour["down"]),
                 ("-", ""), ("-", ""), ("-", ""), ("-", ""), (why[:60], col.red), ("-", ""), ("-", ""), ("-", "")]
        else:
            match = r.get("digest_match")
            mcol = {"match": col.green, "DIFFERS": col.red + col.bold}.get(match, col.yellow)
            lag = r.get("lag")
            c = [(r["node"], col.bold), (r["address"], ""), (str(r["pid"] or "-"), ""),
                 (r["role"], role_colour.get(r["role"], "")), (str(r["term"]), ""),
                 (f"{r['commit_index']}/{r['last_applied']}", ""),
                 ("-" if lag is None else str(lag), col.yellow if lag else ""),
                 (str(r.get("keys", "-")), ""),
                 (f"{(r.get('digest') or '')[:8]} {match or '-'}", mcol if match else ""),
                 (fmt_duration(r.get("uptime")), ""),
                 ("-" if r.get("cpu_percent") is None else f"{r['cpu_percent']:.1f}", ""),
                 (fmt_bytes(r.get("rss")), "")]
        cells.append(c)
    widths = [max([len(h)] + [len(c[i][0]) for c in cells]) for i, (h, _) in enumerate(COLUMNS)]
    out = ["  ".join(col(f"{h:{a}{w}}", col.dim) for (h, a), w in zip(COLUMNS, widths)).rstrip()]
    for c in cells:
        out.append("  ".join(col(f"{t:{a}{w}}", colour) for (t, colour), (_, a), w in zip(c, COLUMNS, widths)).rstrip())
    return out


# ------------------------------------------------------------------------------------- state files
def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot read {path}: {e}") from e


def write_json_atomic(path: str, obj: dict) -> None:
    """Write obj to path atomically (temp file, fsync, rename), readable by the owner only."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def membership(opts) -> dict[str, str]:
    return {f"node{i}": f"{opts.host}:{opts.base_port + i - 1}" for i in range(1, opts.nodes + 1)}


def _manager_alive(state: dict) -> bool:
    pid = state.get("manager_pid")
    if not pid or psutil is None:
        return bool(pid) and _pid_exists(pid)
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        ct = state.get("manager_create_time")
        if ct is not None and abs(p.create_time() - ct) > 0.5:
            return False
        return any(os.path.basename(a) == "cluster_manager.py" for a in p.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_nodes(state: dict) -> dict[str, int]:
    """{node: pid} of the state file's nodes whose process still runs."""
    return {nid: n["pid"] for nid, n in (state.get("nodes") or {}).items()
            if n.get("pid") and _process_matches(n["pid"], nid, n.get("create_time"))}


def check_data_dir(opts) -> dict:
    """Refuse a data dir that belongs to another cluster; returns the marker to (re)write."""
    path = os.path.join(opts.data_dir, MARKER_FILE)
    marker = read_json(path)
    want = membership(opts)
    if marker is None:
        return {"cluster_id": uuid.uuid4().hex[:12], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "nodes": want}
    if marker.get("nodes") != want:
        have = ", ".join(f"{k}={v}" for k, v in (marker.get("nodes") or {}).items())
        raise DataDirConflict(
            f"data dir {opts.data_dir} belongs to cluster {marker.get('cluster_id')} ({have}); this start "
            f"asks for {', '.join(f'{k}={v}' for k, v in want.items())}. Use another --data-dir, or the "
            f"same --nodes/--base-port/--host as that cluster.")
    return marker


class DataDirLock:
    """An exclusive flock on <data-dir>/manager.lock, held by the one manager of a data dir for its
    whole life (the kernel drops it when the manager dies, however it dies)."""

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def control_socket_path(data_dir: str) -> str:
    path = os.path.join(data_dir, CONTROL_SOCKET)
    if len(path) > 100:   # AF_UNIX paths are limited to ~108 bytes
        digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
        path = os.path.join(tempfile.gettempdir(), f"kvcm-{digest}.sock")
    return path


def control_request(path: str, req: dict, timeout: float) -> dict:
    """One JSON request to a manager over its Unix socket; raises OSError if it cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        with s.makefile("rb") as f:
            raw = f.readline()
    if not raw:
        raise ConnectionError("the manager closed the connection without answering")
    return json.loads(raw)


def check_not_running(opts) -> None:
    """Refuse when a manager or leftover nodes of an earlier run use this data dir."""
    lock = DataDirLock(opts.data_dir)
    if not lock.acquire():
        raise AlreadyRunning(f"a cluster is already running from {opts.data_dir} (manager pid {lock.holder()}); "
                             f"see it with --action status, stop it with --action stop")
    lock.release()
    state = read_json(os.path.join(opts.data_dir, STATE_FILE))
    if state is not None:
        alive = live_nodes(state)
        if alive:
            raise AlreadyRunning(
                f"nodes of a cluster started earlier from {opts.data_dir} are still running without a manager "
                f"({', '.join(f'{k} pid {v}' for k, v in alive.items())}); stop them with --action stop")


# --------------------------------------------------------------------------------------- Supervisor
class Supervisor:
    """The manager of one running cluster: the only parent of its node processes.

    Holds the data dir's lock for its whole life, writes cluster_state.json whenever a PID changes
    (and removes it on a clean stop), reports node deaths at once with exit code and log tail,
    restarts failed nodes when asked to (with back-off), and serves other terminals on a Unix
    socket: {"op": "ping" | "kill" | "restart" | "stop", "node": id?} -> {"ok": bool, ...}.
    In the foreground it also draws the live table.  Invariant: every node mutation (kill, start,
    stop) happens under self.lock, so a watched death is never confused with a requested one.
    """

    def __init__(self, opts, foreground: bool):
        self.opts = opts
        self.fg = foreground
        self.col = _Colour(foreground and sys.stdout.isatty() and not opts.no_color
                           and not os.environ.get("NO_COLOR"))
        self.tty = foreground and sys.stdout.isatty()
        self.cluster = LocalCluster(
            n=opts.nodes, base_port=opts.base_port, host=opts.host, data_dir=opts.data_dir, fsync=opts.fsync,
            heartbeat_interval=opts.heartbeat_interval, election_timeout=opts.election_timeout,
            extra_args=opts.server_arg or (), requirepass=opts.requirepass, cluster_secret=opts.cluster_secret,
            log_level=opts.log_level, server_script=opts.server_script)
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.hurry = False
        self.data_lock = DataDirLock(opts.data_dir)
        self.sock_path = control_socket_path(opts.data_dir)
        self.state_path = os.path.join(opts.data_dir, STATE_FILE)
        self.marker: dict = {}
        self.down: dict[str, float] = {}          # node -> when its death was reported
        self.restart_at: dict[str, float] = {}
        self.crashes: dict[str, int] = {}
        self.sampler = ProcSampler()
        self.table_lines = 0
        self.last_primary: tuple | None = None
        self.started = time.time()

    # -- output
    def say(self, msg: str, colour: str = "") -> None:
        stamp = time.strftime("%H:%M:%S")
        self._write(f"{self.col(stamp, self.col.dim)} {self.col(msg, colour)}\n")

    def _write(self, text: str, table_lines: int = 0) -> None:
        """Print above the live table (erasing it first).  Output is best effort: a closed
        terminal (SIGHUP) must not keep the manager from stopping the nodes."""
        if self.tty and self.table_lines:
            text = f"\x1b[{self.table_lines}F\x1b[J" + text
        self.table_lines = table_lines
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError:
            pass   # the terminal is gone; the events are in the node logs as well

    def _erase_table(self) -> None:
        if self.tty and self.table_lines:
            self._write("")

    def draw(self, lines: list[str]) -> None:
        self._write("".join(line + "\x1b[K\n" for line in lines), table_lines=len(lines))

    # -- state file
    def write_state(self, phase: str) -> None:
        c = self.cluster
        nodes = {}
        for nid in c.ids:
            p = c.process(nid)
            nodes[nid] = {"addr": "%s:%d" % c.addr(nid), "port": c.port(nid), "data_dir": c.data_dir_of(nid),
                          "log": c.log_path(nid), **(p.state() if p is not None and p.alive() else {"pid": None})}
        o = self.opts
        write_json_atomic(self.state_path, {
            "version": 1, "cluster_id": self.marker.get("cluster_id"), "phase": phase,
            "mode": "foreground" if self.fg else "detached",
            "manager_pid": os.getpid(), "manager_create_time": _create_time(os.getpid()),
            "control_socket": self.sock_path, "started": self.started, "data_dir": os.path.abspath(o.data_dir),
            "host": o.host, "base_port": o.base_port, "nodes": nodes,
            "args": {"nodes": o.nodes, "fsync": o.fsync, "heartbeat_interval": o.heartbeat_interval,
                     "election_timeout": o.election_timeout, "requirepass": o.requirepass,
                     "cluster_secret": o.cluster_secret, "restart_on_failure": o.restart_on_failure,
                     "log_level": o.log_level, "server_arg": o.server_arg or [],
                     "server_script": o.server_script},
        })

    # -- life
    def run(self) -> int:
        o = self.opts
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        os.makedirs(o.data_dir, exist_ok=True)
        try:
            if not self.data_lock.acquire():
                raise AlreadyRunning(f"a cluster is already running from {o.data_dir} (manager pid "
                                     f"{self.data_lock.holder()}); see it with --action status")
            self.marker = check_data_dir(o)
            state = read_json(self.state_path)
            if state is not None and live_nodes(state):
                raise AlreadyRunning(f"nodes of an earlier run from {o.data_dir} are still running "
                                     f"({', '.join(f'{k} pid {v}' for k, v in live_nodes(state).items())}); "
                                     f"stop them with --action stop")
            self.cluster.check_ports()
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            self.data_lock.release()
            self.cluster.stop()
            return 2
        write_json_atomic(os.path.join(o.data_dir, MARKER_FILE), self.marker)
        ctl = threading.Thread(target=self._serve_control, name="control", daemon=True)
        ctl.start()
        code = 0
        try:
            code = self._start_and_watch()
        finally:
            self.stop_event.set()
            self._erase_table()
            self.say("stopping the cluster (secondaries first)")
            with self.lock:
                self.cluster.stop(timeout=1.0 if self.hurry else o.timeout, graceful=not self.hurry,
                                  shutdown_command=True, on_event=self.say)
            left = [nid for nid in self.cluster.ids if self.cluster.process(nid) and self.cluster.process(nid).alive()]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)
            ctl.join(timeout=2)
            self.data_lock.release()
            if left:
                self.say(f"could not stop {', '.join(left)}", self.col.red)
                code = 1
            else:
                self.say("all nodes stopped")
        return code

    def _on_signal(self, signum, frame) -> None:
        if self.stop_event.is_set() and not self.hurry:
            self.hurry = True            # a second Ctrl-C: no more waiting for graceful shutdowns
            for nid in self.cluster.ids:
                p = self.cluster.process(nid)
                if p is not None:
                    p.signal(signal.SIGKILL)
        self.stop_event.set()

    def _start_and_watch(self) -> int:
        o = self.opts
        c = self.cluster
        t0 = time.monotonic()
        with self.lock:
            for i, nid in enumerate(c.ids):
                c.start_node(nid, primary=(i == 0), wait=False)
                self.say(f"started {nid} on {'%s:%d' % c.addr(nid)} (pid {c.pid(nid)})")
            self.write_state("starting")
        deadline = t0 + o.timeout
        primary = None
        while not self.stop_event.is_set():
            try:
                primary = c.ready_primary()
            except NodeFailed as e:
                self.say(f"error: {e}", self.col.red)
                return 1
            except SplitBrain as e:
                self.say(f"error: split brain: {e}", self.col.red)
                return 1
            if primary:
                break
            if time.monotonic() >= deadline:
                self.say(f"error: no primary within {o.timeout:g}s: {c.describe()}", self.col.red)
                return 1
            self.stop_event.wait(0.05)
        if primary is None:
            return 0
        st = c.status(primary) or {}
        self.say(f"primary is {primary} (term {st.get('election_term')}), elected "
                 f"{time.monotonic() - t0:.2f}s after start", self.col.green)
        self.last_primary = (primary, st.get("election_term"))
        with self.lock:
            self.write_state("running")
        if self.fg:
            hint = "Ctrl-C stops the cluster" if self.tty else "SIGINT stops the cluster"
            self.say(f"cluster of {c.n} running from {o.data_dir}; {hint}; from another terminal: "
                     f"python cluster_manager.py --action status --data-dir {o.data_dir}")
        self._watch()
        return 0

    def _watch(self) -> None:
        next_view = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            with self.lock:
                self._check_processes(now)
            if now >= next_view:
                self._observe()
                next_view = now + self.opts.refresh
            self.stop_event.wait(0.1)

    def _check_processes(self, now: float) -> None:
        """Caller holds self.lock."""
        c = self.cluster
        changed = False
        for nid in c.ids:
            p = c.process(nid)
            if p is None:
                continue
            if p.alive():
                self.down.pop(nid, None)
                continue
            if nid not in self.down and not c.expected_exit(nid):
                self.down[nid] = now
                lived = time.time() - p.started
                self.say(f"{nid} is DOWN: pid {p.pid} exited with code {fmt_exit(p.returncode)} "
                         f"after {fmt_duration(lived)}; last lines of {c.log_path(nid)}:", self.col.red)
                for line in tail(c.log_path(nid), 8):
                    print(f"    {line}", flush=True)
                changed = True
                if self.opts.restart_on_failure:
                    self.crashes[nid] = self.crashes.get(nid, 0) + 1 if lived < 10 else 1
                    delay = min(self.opts.restart_delay * 2 ** (self.crashes[nid] - 1), 30.0)
                    self.restart_at[nid] = now + delay
                    self.say(f"{nid} will be restarted in {delay:.1f}s (--restart-on-failure)", self.col.yellow)
            if nid in self.restart_at and now >= self.restart_at[nid]:
                del self.restart_at[nid]
                try:
                    pid = c.start_node(nid, wait=False)
                    self.down.pop(nid, None)
                    self.say(f"{nid} restarted (pid {pid})", self.col.yellow)
                    changed = True
                except ClusterError as e:
                    self.say(f"cannot restart {nid}: {e}", self.col.red)
        if changed:
            self.write_state("running")

    def _observe(self) -> None:
        c = self.cluster
        sts, errors = c.probe_all(timeout=0.5)
        prims = sorted(((s["election_term"], nid) for nid, s in sts.items() if s and s["role"] == "primary"),
                       reverse=True)
        terms = [t for t, _ in prims]
        if len(terms) != len(set(terms)):
            self.say(f"SPLIT BRAIN: {prims}", self.col.red + self.col.bold)
        if prims and (prims[0][1], prims[0][0]) != self.last_primary:
            was = self.last_primary[0] if self.last_primary else None
            self.say(f"primary is now {prims[0][1]} (term {prims[0][0]})" + (f", was {was}" if was else ""),
                     self.col.green)
            self.last_primary = (prims[0][1], prims[0][0])
        if not self.fg:
            return
        down_info = {}
        for nid in c.ids:
            p = c.process(nid)
            if sts.get(nid) is None and p is not None and not p.alive():
                down_info[nid] = f"exit code {fmt_exit(p.returncode)}" + \
                    (" - restarting" if nid in self.restart_at else "")
        usage = self.sampler.sample([s.get("pid") for s in sts.values() if s])
        rows = table_rows(c, sts, errors, usage, down_info)
        ok, why = health_verdict(sts, errors, max_lag=self.opts.max_lag)
        head = (f"KV Store cluster {self.marker.get('cluster_id')}  {self.opts.data_dir}  "
                f"{time.strftime('%H:%M:%S')}  ")
        head += self.col("healthy" if ok else "unhealthy: " + why, self.col.green if ok else self.col.yellow)
        lines = [head] + render_table(rows, self.col)
        if self.tty:
            self.draw(lines)
        else:
            key = [(r["node"], r["role"], r.get("term")) for r in rows]
            if key != getattr(self, "_last_key", None):   # a pipe gets the table only when it changes
                self._last_key = key
                for line in lines:
                    print(line, flush=True)

    # -- control socket
    def _serve_control(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            srv.bind(self.sock_path)
            os.chmod(self.sock_path, 0o600)
            srv.listen(8)
            srv.settimeout(0.2)
            while not self.stop_event.is_set():
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.settimeout(5)
                    try:
                        with conn.makefile("rb") as f:
                            req = json.loads(f.readline() or b"{}")
                        ans = self._handle(req)
                    except (OSError, ValueError) as e:
                        ans = {"ok": False, "message": f"bad request: {e}"}
                    with contextlib.suppress(OSError):
                        conn.settimeout(max(5.0, self.opts.timeout))
                        conn.sendall(json.dumps(ans).encode() + b"\n")
        except OSError as e:
            self.say(f"control socket {self.sock_path} failed: {e}; other terminals will act by PID",
                     self.col.yellow)
        finally:
            srv.close()

    def _handle(self, req: dict) -> dict:
        op = req.get("op")
        c = self.cluster
        nid = req.get("node")
        if nid is not None and nid not in c.ids:
            return {"ok": False, "message": f"unknown node {nid!r} (nodes: {', '.join(c.ids)})"}
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "stop":
            self.say("stop requested from another terminal")
            self.stop_event.set()
            return {"ok": True, "message": "stopping"}
        if op == "kill":
            with self.lock:
                p = c.process(nid)
                if p is None or not p.alive():
                    return {"ok": False, "message": f"{nid} is not running"}
                pid = p.pid
                code = c.kill(nid)
                self.say(f"{nid} (pid {pid}) killed with SIGKILL on request", self.col.yellow)
            return {"ok": True, "pid": pid, "exit_code": code}
        if op == "restart":
            t0 = time.monotonic()
            ids = [nid] if nid else self._rolling_order()
            done = {}
            try:
                for x in ids:
                    with self.lock:
                        self.restart_at.pop(x, None)
                        p = c.process(x)
                        if p is not None and p.alive():
                            self.say(f"restarting {x} (pid {p.pid})")
                            c.stop_node(x, timeout=self.opts.timeout, shutdown_command=False)
                        done[x] = c.start_node(x, wait=True, timeout=self.opts.timeout)
                        self.down.pop(x, None)
                        self.crashes.pop(x, None)
                        self.write_state("running")
                        self.say(f"{x} restarted (pid {done[x]})", self.col.yellow)
                    if len(ids) > 1:
                        c.wait_converged(timeout=self.opts.timeout)
            except ClusterError as e:
                return {"ok": False, "message": str(e), "pids": done}
            return {"ok": True, "pids": done, "seconds": round(time.monotonic() - t0, 3)}
        return {"ok": False, "message": f"unknown op {op!r}"}

    def _rolling_order(self) -> list[str]:
        prim = self.cluster.primary(timeout=0.5)
        return [x for x in self.cluster.ids if x != prim] + ([prim] if prim else [])


# ------------------------------------------------------------------------------------------ actions
class Target:
    """What a second-terminal action works on: the running cluster recorded in --data-dir, or else
    the membership the flags describe (nodes started by hand).  PIDs come from the state file, or
    from the nodes' own STATUS answers, and are verified before use."""

    def __init__(self, opts):
        self.opts = opts
        self.state_path = os.path.join(opts.data_dir, STATE_FILE)
        self.state = read_json(self.state_path)
        s = self.state
        if s is not None:
            nodes = s["nodes"]
            ids = sorted(nodes, key=lambda x: int(x[4:]) if x[4:].isdigit() else x)
            args = s.get("args", {})
            self.cluster = LocalCluster(
                n=len(ids), host=s.get("host", opts.host), data_dir=s["data_dir"],
                ports=[nodes[i]["port"] for i in ids], fsync=args.get("fsync", "always"),
                heartbeat_interval=args.get("heartbeat_interval"), election_timeout=args.get("election_timeout"),
                requirepass=opts.requirepass if opts.requirepass is not None else args.get("requirepass"),
                cluster_secret=args.get("cluster_secret"), log_level=args.get("log_level"),
                extra_args=args.get("server_arg") or (), server_script=args.get("server_script", SERVER_SCRIPT))
            for nid in ids:
                n = nodes[nid]
                if n.get("pid") and _process_matches(n["pid"], nid, n.get("create_time")):
                    self.cluster.adopt(nid, n["pid"], n.get("create_time"), n.get("cmdline"))
        else:
            self.cluster = LocalCluster(n=opts.nodes, base_port=opts.base_port, host=opts.host,
                                        data_dir=opts.data_dir, requirepass=opts.requirepass)
        self.cluster.detach()

    @property
    def recorded(self) -> bool:
        return self.state is not None

    def manager(self) -> str | None:
        """The control socket of a live manager, or None."""
        s = self.state
        if s is None or not _manager_alive(s):
            return None
        path = s.get("control_socket")
        try:
            if path and control_request(path, {"op": "ping"}, timeout=2).get("ok"):
                return path
        except (OSError, ValueError):
            return None
        return None

    def adopt_from_status(self, sts: dict) -> None:
        """Track nodes the state file does not know, by the PID they report (verified)."""
        c = self.cluster
        for nid, st in sts.items():
            if st and c.process(nid) is None and st.get("pid") and _process_matches(st["pid"], nid, None):
                c.adopt(nid, st["pid"])

    def where(self) -> str:
        return ", ".join(self.cluster.addresses())


def _fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _statuses_with_errors(c: LocalCluster, timeout: float = 1.0) -> tuple[dict, dict]:
    return c.probe_all(timeout=timeout)


def action_start(opts) -> int:
    if not opts.detach and not opts.supervise:
        return Supervisor(opts, foreground=True).run()
    if opts.supervise:
        return Supervisor(opts, foreground=False).run()
    # --detach: check here, so a refusal reaches this terminal; then leave a supervisor behind.
    os.makedirs(opts.data_dir, exist_ok=True)
    try:
        check_data_dir(opts)
        check_not_running(opts)
        LocalCluster(n=opts.nodes, base_port=opts.base_port, host=opts.host, data_dir=opts.data_dir).check_ports()
    except ClusterError as e:
        return _fail(str(e), 2)
    log_path = os.path.join(opts.data_dir, MANAGER_LOG)
    cmd = [sys.executable, os.path.abspath(__file__), "--action", "start", "--supervise"] + _pass_through(opts)
    with open(log_path, "ab") as logf:
        logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
    state_path = os.path.join(opts.data_dir, STATE_FILE)
    deadline = time.monotonic() + opts.timeout + 10
    while True:
        if child.poll() is not None:
            lines = "\n    ".join(tail(log_path, 15))
            return _fail(f"the cluster manager exited with code {fmt_exit(child.returncode)}; {log_path}:\n    {lines}",
                         2 if child.returncode == 2 else 1)
        with contextlib.suppress(ClusterError):
            st = read_json(state_path)
            if st and st.get("manager_pid") == child.pid and st.get("phase") == "running":
                break
        if time.monotonic() >= deadline:
            child.terminate()
            return _fail(f"the cluster did not come up within {opts.timeout:g}s; see {log_path}")
        time.sleep(0.05)
    print(f"cluster started in the background (manager pid {child.pid}, log {log_path})")
    _print_status(opts, Target(opts))
    print(f"stop it with: python cluster_manager.py --action stop --data-dir {opts.data_dir}")
    return 0


def _pass_through(opts) -> list[str]:
    out = ["--nodes", str(opts.nodes), "--base-port", str(opts.base_port), "--host", opts.host,
           "--data-dir", opts.data_dir, "--fsync", opts.fsync, "--timeout", str(opts.timeout),
           "--restart-delay", str(opts.restart_delay), "--refresh", str(opts.refresh),
           "--max-lag", str(opts.max_lag), "--server-script", opts.server_script]
    for flag, v in (("--heartbeat-interval", opts.heartbeat_interval), ("--election-timeout", opts.election_timeout),
                    ("--requirepass", opts.requirepass), ("--cluster-secret", opts.cluster_secret),
                    ("--log-level", opts.log_level)):
        if v is not None:
            out += [flag, str(v)]
    if opts.restart_on_failure:
        out.append("--restart-on-failure")
    for a in opts.server_arg or ():
        out.append(f"--server-arg={a}")
    return out


def _print_status(opts, t: Target) -> tuple[dict, dict]:
    c = t.cluster
    sampler = ProcSampler()
    sts, errors = _statuses_with_errors(c)
    t.adopt_from_status(sts)
    pids = [s.get("pid") for s in sts.values() if s]
    sampler.sample(pids)
    time.sleep(0.2)          # the CPU % window
    usage = sampler.sample(pids)
    rows = table_rows(c, sts, errors, usage)
    if opts.json:
        print(json.dumps({"data_dir": opts.data_dir, "recorded": t.recorded,
                          "manager_pid": (t.state or {}).get("manager_pid"), "nodes": rows}, indent=2))
    else:
        col = _Colour(sys.stdout.isatty() and not opts.no_color and not os.environ.get("NO_COLOR"))
        ok, why = health_verdict(sts, errors, opts.max_lag)
        cid = (t.state or {}).get("cluster_id")
        print(f"cluster {cid or '(not started by cluster_manager)'} in {opts.data_dir}: " +
              col("healthy" if ok else "unhealthy: " + why, col.green if ok else col.yellow))
        for line in render_table(rows, col):
            print(line)
    return sts, errors


def action_status(opts) -> int:
    t = Target(opts)
    sts, _ = _print_status(opts, t)
    if not any(sts.values()):
        print(f"no node answers on {t.where()}", file=sys.stderr)
        return 1
    return 0


def action_health(opts) -> int:
    t = Target(opts)
    deadline = time.monotonic() + opts.wait
    while True:
        sts, errors = _statuses_with_errors(t.cluster, timeout=min(1.0, max(0.3, opts.wait)))
        ok, why = health_verdict(sts, errors, opts.max_lag)
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


def action_stop(opts) -> int:
    t = Target(opts)
    c = t.cluster
    ctl = t.manager()
    if ctl is None and t.state is not None and _manager_alive(t.state):
        # alive but deaf: SIGTERM makes it stop the cluster itself (it would restart what we stop)
        print(f"the cluster manager (pid {t.state['manager_pid']}) does not answer; sending it SIGTERM")
        with contextlib.suppress(ProcessLookupError):
            os.kill(t.state["manager_pid"], signal.SIGTERM)
        ctl = "signalled"
    elif ctl is not None:
        mpid = t.state["manager_pid"]
        print(f"asking the cluster manager (pid {mpid}) to stop the cluster")
        try:
            control_request(ctl, {"op": "stop"}, timeout=5)
        except (OSError, ValueError) as e:
            print(f"the manager did not answer ({e}); stopping the nodes by PID")
    if ctl is not None:
        deadline = time.monotonic() + opts.timeout * 2 + 5
        while time.monotonic() < deadline:
            busy = _manager_alive(t.state) or any(c.process(n) is not None and c.process(n).alive() for n in c.ids)
            if not busy:
                break
            time.sleep(0.05)
    sts, _ = _statuses_with_errors(c, timeout=0.5)
    t.adopt_from_status(sts)
    alive = [nid for nid in c.ids if c.process(nid) is not None and c.process(nid).alive()]
    if alive:
        prim = next((nid for nid, s in sts.items() if s and s.get("role") == "primary"), None)
        for group in ([x for x in alive if x != prim], [x for x in alive if x == prim]):
            for nid in group:
                print(f"stopping {nid} (pid {c.pid(nid)}{', primary' if nid == prim else ''})")
            if group:
                c._stop_many(group, opts.timeout, shutdown_command=True)
    left = [nid for nid in c.ids if c.process(nid) is not None and c.process(nid).alive()]
    answering = [nid for nid, s in _statuses_with_errors(c, timeout=0.5)[0].items() if s]
    if left or answering:
        return _fail(f"still running: {', '.join(sorted(set(left) | set(answering)))}")
    if t.state is not None and not _manager_alive(t.state):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(t.state_path)
    if ctl is None and not alive:
        print(f"no cluster running in {opts.data_dir} (nothing answers on {t.where()})")
    else:
        print("cluster stopped; no node process left")
    return 0


def _update_state_pids(t: Target) -> None:
    if t.state is None:
        return
    for nid in t.cluster.ids:
        p = t.cluster.process(nid)
        t.state["nodes"][nid].update(p.state() if p is not None and p.alive() else {"pid": None})
    t.state["manager_pid"] = t.state.get("manager_pid") if _manager_alive(t.state) else None
    write_json_atomic(t.state_path, t.state)


def action_kill(opts) -> int:
    t = Target(opts)
    c = t.cluster
    if opts.node not in c.ids:
        return _fail(f"--action kill needs --node, one of {', '.join(c.ids)}", 2)
    st = c.status(opts.node, timeout=0.5)
    was = f", was {st['role']} in term {st['election_term']}" if st else ""
    ctl = t.manager()
    if ctl is not None:
        ans = control_request(ctl, {"op": "kill", "node": opts.node}, timeout=15)
        if not ans.get("ok"):
            return _fail(ans.get("message", "kill failed"))
        print(f"killed {opts.node} (pid {ans['pid']}{was}) with SIGKILL")
        return 0
    if st is not None:
        t.adopt_from_status({opts.node: st})
    p = c.process(opts.node)
    if p is None or not p.alive():
        return _fail(f"{opts.node} is not running")
    pid = p.pid
    c.kill(opts.node)
    _update_state_pids(t)
    print(f"killed {opts.node} (pid {pid}{was}) with SIGKILL")
    return 0


def action_restart(opts) -> int:
    t = Target(opts)
    c = t.cluster
    if opts.node is not None and opts.node not in c.ids:
        return _fail(f"unknown node {opts.node!r} (nodes: {', '.join(c.ids)})", 2)
    ctl = t.manager()
    t0 = time.monotonic()
    if ctl is not None:
        ans = control_request(ctl, {"op": "restart", "node": opts.node}, timeout=opts.timeout * (c.n + 1) + 30)
        if not ans.get("ok"):
            return _fail(ans.get("message", "restart failed"))
        for nid, pid in ans["pids"].items():
            print(f"restarted {nid} (pid {pid})")
        c = Target(opts).cluster          # the new PIDs
    else:
        if t.state is None:
            return _fail(f"no cluster recorded in {opts.data_dir}; start one with --action start", 2)
        sts, _ = _statuses_with_errors(c, timeout=0.5)
        prim = next((nid for nid, s in sts.items() if s and s.get("role") == "primary"), None)
        ids = [opts.node] if opts.node else [x for x in c.ids if x != prim] + ([prim] if prim else [])
        try:
            for nid in ids:
                if c.process(nid) is not None and c.process(nid).alive():
                    c.stop_node(nid, timeout=opts.timeout)
                pid = c.start_node(nid, timeout=opts.timeout)
                _update_state_pids(t)
                print(f"restarted {nid} (pid {pid}; no manager is running, so nothing watches it)")
                if len(ids) > 1:
                    c.wait_converged(timeout=opts.timeout)
        except ClusterError as e:
            return _fail(str(e))
    try:
        conv = c.wait_converged(timeout=opts.timeout)
    except ClusterError as e:
        return _fail(f"restarted, but the cluster did not converge: {e}")
    any_st = next(iter(conv.values()))
    prim = c.primary(timeout=0.5)
    print(f"converged after {time.monotonic() - t0:.2f}s: primary {prim}, all at index {any_st['last_applied']}, "
          f"digest {any_st['digest']}")
    return 0


def action_failover(opts) -> int:
    t = Target(opts)
    c = t.cluster
    if opts.node is not None and opts.node not in c.ids:
        return _fail(f"unknown node {opts.node!r} (nodes: {', '.join(c.ids)})", 2)
    try:
        old = c.wait_for_single_primary(timeout=max(opts.wait, 0.5))
    except (ClusterError, SplitBrain) as e:
        return _fail(f"no single primary to fail over from: {e}")
    if opts.node == old:
        return _fail(f"{old} already is the primary")
    old_term = (c.status(old) or {}).get("election_term")
    t0 = time.monotonic()
    try:
        ans = c.send(old, "TRANSFER" + (f" {opts.node}" if opts.node else ""), timeout=opts.timeout)
    except OSError as e:
        return _fail(f"{old} did not answer TRANSFER: {e}")
    if ans.get("status") != "OK":
        return _fail(f"{old} refused TRANSFER: {ans.get('code')}: {ans.get('message')}")
    new = ans.get("primary")
    try:
        seen = c.wait_for_single_primary(timeout=opts.timeout, exclude=())
    except (ClusterError, SplitBrain) as e:
        return _fail(f"TRANSFER answered {ans}, but then: {e}")
    took = time.monotonic() - t0
    term = (c.status(seen) or {}).get("election_term")
    if seen == old:
        return _fail(f"{old} answered OK ({ans}) but is still the primary")
    if new and new != seen:
        print(f"note: TRANSFER named {new}, the cluster now follows {seen}")
    print(f"failover: primary {old} (term {old_term}) -> {seen} (term {term}) in {took:.3f}s")
    return 0


ACTIONS = {"start": action_start, "status": action_status, "health": action_health, "stop": action_stop,
           "kill": action_kill, "restart": action_restart, "failover": action_failover}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cluster_manager.py",
        description="Start, watch, drill and stop a local KV Store cluster (node1 on --base-port with "
                    "--primary, node2 on the next port, ...). Every action except start works from a "
                    "second terminal against the cluster recorded in --data-dir.",
        epilog="Exit codes: 0 success (health: healthy), 1 failed or unhealthy, 2 bad usage or refused "
               "(port taken, data dir of another cluster, cluster already running).")
    p.add_argument("--action", required=True, choices=list(ACTIONS),
                   help="start: spawn the nodes and watch them (foreground unless --detach); status: table of "
                        "every node; health: exit 0 only with one primary and every node up and in sync; stop: "
                        "graceful, secondaries first; kill: SIGKILL --node; restart: --node, or all one by one; "
                        "failover: planned leadership transfer (to --node, or the most caught-up secondary)")
    p.add_argument("--node", default=None, help="node id for kill / restart / failover (e.g. node2)")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--base-port", type=int, default=6379, help="port of node1; nodeN gets base-port+N-1 (default 6379)")
    p.add_argument("--host", default="127.0.0.1", help="address the nodes bind and are reached on (default 127.0.0.1)")
    p.add_argument("--data-dir", default="./data", help="cluster directory: one sub-dir per node, state file, logs (default ./data)")
    p.add_argument("--fsync", choices=["always", "everysec", "no"], default="always", help="node WAL fsync policy (default always)")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="seconds (default: the server's)")
    p.add_argument("--election-timeout", type=float, default=None, help="seconds (default: the server's)")
    p.add_argument("--requirepass", default=None, help="clients must AUTH (the manager does)")
    p.add_argument("--cluster-secret", default=None, help="peers must prove this secret")
    p.add_argument("--log-level", choices=["debug", "info", "warning"], default=None, help="node log level (default: the server's)")
    p.add_argument("--server-arg", action="append", metavar="ARG",
                   help="extra kv_store_server.py argument for every node, e.g. --server-arg=--snapshot-threshold=1000")
    p.add_argument("--detach", action="store_true", help="start: run the cluster in the background and return")
    p.add_argument("--restart-on-failure", action="store_true", help="start: restart a node that dies")
    p.add_argument("--restart-delay", type=float, default=0.5, help="seconds before such a restart, doubling on repeated crashes (default 0.5)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="start: seconds to wait for a primary; stop: seconds before SIGKILL; restart/failover: seconds to "
                        "converge (default 10)")
    p.add_argument("--wait", type=float, default=0.0, help="health: keep polling up to this many seconds for a healthy cluster (default 0)")
    p.add_argument("--max-lag", type=int, default=0, help="health: entries a node may trail the primary's commit index (default 0)")
    p.add_argument("--refresh", type=float, default=0.5, help="start: seconds between table refreshes (default 0.5)")
    p.add_argument("--json", action="store_true", help="status: print JSON instead of a table")
    p.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set or not a terminal)")
    p.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)   # the detached manager itself
    p.add_argument("--server-script", default=SERVER_SCRIPT, help=argparse.SUPPRESS)  # another node program
    return p


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.nodes < 1:
        return _fail("--nodes must be at least 1", 2)
    try:
        return ACTIONS[opts.action](opts)
    except (ClusterError, SplitBrain) as e:
        return _fail(str(e), 2 if isinstance(e, (PortInUse, DataDirConflict, AlreadyRunning)) else 1)


if __name__ == "__main__":
    sys.exit(main())
