"""kv_localcluster.py: launch, observe and fault a local KV Store cluster from Python.

The machinery behind cluster_manager.py's CLI, the test suites and the benchmarks: spawn
kv_store_server.py processes on free ports, ask them STATUS, kill/stop/restart them by PID,
check Raft's Election Safety on every answer seen, and cut peer links through a proxy.

    from kv_localcluster import LocalCluster     # (cluster_manager re-exports every name here)
    with LocalCluster(n=3, proxied=True) as c:
        c.start(); p = c.wait_for_single_primary(); c.partition(p); c.heal()

Layout (reading order):
    errors            ClusterError and its kinds raised here: PortInUse, NodeFailed, WaitTimeout;
                      SplitBrain (an AssertionError: two primaries, one term)
    call(), probe()   one-shot line-protocol requests to a node (AUTH first when a password is set);
                      probe() is the STATUS one-shot
    FaultProxy        in-process TCP forwarder, one port per directed node pair; cuts and heals links
    NodeProcess       one node process, addressed by PID only (a child we spawned, or an adopted PID);
                      _process_matches() / _create_time() identify a PID (cluster_manager's state
                      files use them too)
    free ports        pick_free_ports(), port_in_use() (names the holder when psutil can tell)
    tail, fmt_exit    a log file's last lines; an exit code with its signal name
    wait_until()      the one deadline-wait of the tests, benchmarks and demos
    LineClient, RetryingWriter   a line-protocol connection; a writer thread that follows
                      NOT_PRIMARY hints and re-sends idempotent SETs, keeping acknowledged and
                      unknown outcomes apart
    NetnsNetwork      one network namespace per node on a private bridge; iptables link faults
    SmallDisk, CrashDisk   a tmpfs to fill up; an ext4 loop image to lose power on
    LocalCluster      the launcher: processes, observation, wait_*(), faults
    atexit hook       SIGKILLs the nodes of every LocalCluster not stop()ped or detach()ed, then
                      removes leftover namespaces and mounts

Invariant: nothing is ever signalled by name; every process is addressed by the PID this module
spawned or verified.  Only the standard library is needed; psutil (PID identity checks, the
holder of a taken port) is used when present.
"""

from __future__ import annotations

import atexit
import contextlib
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
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

try:
    import psutil
except ImportError:   # PID identity checks and the name of a port's holder degrade, nothing else does
    psutil = None

__all__ = ["LocalCluster", "FaultProxy", "NodeProcess", "ClusterError", "PortInUse", "NodeFailed",
           "WaitTimeout", "SplitBrain", "NamespaceUnavailable", "NetnsNetwork", "SmallDisk", "CrashDisk",
           "LineClient", "RetryingWriter", "total_acked", "norm_addr", "split_addr",
           "call", "probe", "wait_until", "describe_statuses", "pick_free_ports", "port_in_use", "tail",
           "fmt_exit", "SERVER_SCRIPT", "CONSOLE_LOG", "NETNS_PORT"]

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_SCRIPT = os.path.join(HERE, "kv_store_server.py")
CONSOLE_LOG = "console.log"     # a node's stdout+stderr, next to the node.log it writes itself
NETNS_PORT = 7379               # every node's port in namespace mode (each has its own address)


# ------------------------------------------------------------------------------------------ errors
class ClusterError(Exception):
    """A cluster operation failed; the message says what, where, and what to do."""


class PortInUse(ClusterError):
    """A node's port is taken by another process."""


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


# ------------------------------------------------------------------------------------- wait_until
def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               diag: Callable[[], str] | None = None, interval: float = 0.03, ignore: tuple = ()):
    """Poll predicate until it returns something truthy (returned) or timeout passes: then
    WaitTimeout naming `what` (and diag(), what the system shows now).  Exceptions propagate,
    except those of the types in `ignore` (a poll that failed so: named in the timeout message).
    The one deadline-wait of the tests, benchmarks and tools."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
        except ignore as e:
            value, last_exc = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"; now: {diag()}" if diag is not None else ""
            if last_exc is not None:
                extra += f" (last error: {last_exc!r})"
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def describe_statuses(sts: dict) -> str:
    """STATUS answers {id: answer or None} in one line (for failure messages)."""
    parts = []
    for nid in sorted(sts):
        s = sts[nid]
        if s is None:
            parts.append(f"{nid}: no answer")
        else:
            parts.append(f"{nid}: {s.get('role')} term {s.get('election_term')} primary={s.get('primary')} "
                         f"commit={s.get('commit_index')} applied={s.get('last_applied')} "
                         f"snap={s.get('snapshot_index')} digest={s.get('digest')}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------- line clients
def norm_addr(addr) -> str:
    if isinstance(addr, (tuple, list)):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def split_addr(addr) -> tuple[str, int]:
    host, _, port = norm_addr(addr).rpartition(":")
    return host, int(port)


class LineClient:
    """One persistent connection speaking the line protocol: a request is one line, the answer
    one JSON object per line, in order.  Raises ConnectionError when the node closes the
    connection, OSError on socket errors and timeouts."""

    def __init__(self, addr, timeout: float = 15.0):
        self.addr = norm_addr(addr)
        self.sock = socket.create_connection(split_addr(addr), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_line(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\n")

    def read_reply(self) -> dict:
        line = self.rfile.readline()
        if not line:
            raise ConnectionError(f"{self.addr} closed the connection")
        return json.loads(line)

    def request(self, line: str) -> dict:
        self.send_line(line)
        return self.read_reply()

    def pipeline(self, lines: list[str], batch: int = 250) -> list[dict]:
        """Send lines in batches (each batch in one sendall) and read the answers in order."""
        out = []
        for i in range(0, len(lines), batch):
            chunk = lines[i:i + batch]
            self.sock.sendall("".join(line + "\n" for line in chunk).encode("utf-8"))
            out.extend(self.read_reply() for _ in chunk)
        return out

    def set(self, key: str, value) -> dict:
        return self.request(f"SET {key} {json.dumps(value)}")

    def get(self, key: str) -> dict:
        return self.request(f"GET {key}")

    def delete(self, key: str) -> dict:
        return self.request(f"DELETE {key}")

    def status(self) -> dict:
        return self.request("STATUS")

    def close(self) -> None:
        for closer in (self.rfile.close, self.sock.close):
            try:
                closer()
            except OSError:
                pass   # closing a dead connection: nothing left to release

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------- load for tests
class RetryingWriter(threading.Thread):
    """Writes SET <key_for(i)> i for i = 0, 1, ... (stop, or max_ops) across the cluster.

    Follows the "primary_addr" hint of NOT_PRIMARY, else tries the next node; retries a write
    until it is acknowledged or op_deadline passes (an idempotent SET of a key only this writer
    uses, so re-sending after an unknown outcome is safe).  Records:
      acked[key]    the last acknowledged value;
      pending[key]  values sent after that ack whose outcome is unknown (connection lost after
                    sending, or an indefinite TIMEOUT/NO_QUORUM answer);
      ack_log       (monotonic time, node address, key, value) of every acknowledgement;
      counters      n_acked, not_primary, refused (could not connect/send), lost_in_flight,
                    indefinite (indefinite error answers), failed (gave up), unexpected answers.
    `abandon` makes it give up the write in hand at once (for kill -9 of every node); `pace`
    seconds pass between writes (0: as fast as the cluster answers); `timeout` bounds each
    connect and each wait for an answer (a request stuck on a paused node waits this long)."""

    def __init__(self, name: str, addrs: list[str], key_for, stop: threading.Event,
                 abandon: threading.Event | None = None, op_deadline: float = 20.0,
                 max_ops: int | None = None, pace: float = 0.0, timeout: float = 15.0):
        super().__init__(name=name, daemon=True)
        self.addrs = list(addrs)
        self.key_for = key_for
        self.stop_ev = stop
        self.abandon = abandon or threading.Event()
        self.op_deadline = op_deadline
        self.max_ops = max_ops
        self.pace = pace
        self.timeout = timeout
        self.acked: dict[str, int] = {}
        self.pending: dict[str, set] = {}
        self.ack_log: list[tuple[float, str, str, int]] = []   # (monotonic time, node address, key, value)
        self.n_acked = 0
        self.not_primary = 0
        self.refused = 0
        self.lost_in_flight = 0
        self.indefinite = 0
        self.failed = 0
        self.unexpected: list[dict] = []
        self.error: BaseException | None = None
        self._target = 0
        self._hint: str | None = None
        self._conn: LineClient | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop_ev.is_set() and (self.max_ops is None or i < self.max_ops):
                self.write(self.key_for(i), i)
                i += 1
                if self.pace:
                    self.stop_ev.wait(self.pace)
        except BaseException as e:        # reported by the test (check_writer), never swallowed
            self.error = e
        finally:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _next(self) -> None:
        self._drop()
        self._hint = None
        self._target = (self._target + 1) % len(self.addrs)

    def write(self, key: str, value: int) -> bool:
        deadline = time.monotonic() + self.op_deadline
        line = f"SET {key} {value}\n".encode()
        backoff = 0.01
        hops = 0                                  # NOT_PRIMARY hints followed without a pause
        while True:
            if self.abandon.is_set():
                self.pending.setdefault(key, set()).add(value)
                return False
            sent = False
            reply = None
            try:
                if self._conn is None:
                    self._conn = LineClient(self._hint or self.addrs[self._target], timeout=self.timeout)
                self._conn.send_raw(line)
                sent = True
                reply = self._conn.read_reply()
            except (OSError, ValueError):
                if sent:
                    self.lost_in_flight += 1
                    self.pending.setdefault(key, set()).add(value)
                else:
                    self.refused += 1
                self._next()
            pause = True
            if reply is not None:
                if reply.get("status") == "OK":
                    self.acked[key] = value
                    self.pending.pop(key, None)
                    self.n_acked += 1
                    self.ack_log.append((time.monotonic(), self._conn.addr, key, value))
                    return True
                code = reply.get("code")
                if code == "NOT_PRIMARY":
                    self.not_primary += 1
                    hint = reply.get("primary_addr")
                    if hint and hint != self._conn.addr:
                        self._drop()
                        self._hint = hint
                        hops += 1
                        pause = hops > 2              # go straight to the named primary, twice
                    else:
                        self._next()
                elif code in ("TIMEOUT", "NO_QUORUM"):
                    if not reply.get("definite", False):
                        self.indefinite += 1
                        self.pending.setdefault(key, set()).add(value)
                else:
                    self.unexpected.append(reply)
                    self.failed += 1
                    return False
            if time.monotonic() >= deadline:
                self.failed += 1
                return False
            if pause:
                self.abandon.wait(backoff)       # retry backoff (a client's, not a test wait)
                backoff = min(backoff * 2, 0.2)

    def counts(self) -> str:
        return (f"{self.name}: acked={self.n_acked} not_primary={self.not_primary} refused={self.refused} "
                f"lost_in_flight={self.lost_in_flight} indefinite={self.indefinite} failed={self.failed}")


def total_acked(writers) -> int:
    return sum(w.n_acked for w in writers)


# ----------------------------------------------------------------------- network namespaces, disks
class NamespaceUnavailable(ClusterError):
    """Network namespaces (or iptables, or a tmpfs mount) cannot be set up here: the reason."""


def _run(cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NamespaceUnavailable(f"{what}: `{' '.join(cmd)}` failed: {e}") from e
    if check and r.returncode != 0:
        raise NamespaceUnavailable(f"{what}: `{' '.join(cmd)}` exited {r.returncode}: "
                                   f"{(r.stderr or r.stdout).strip()}")
    return r


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NamespaceUnavailable(f"{what} needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN); this process "
                                   f"runs as uid {os.geteuid()}")


class NetnsNetwork:
    """One Linux network namespace per node, joined by a bridge in the root namespace.

    Layout for a run with id R (6 random hex digits, so parallel runs never collide) and a
    subnet 10.77.S.0/24 that no interface of this machine uses yet:
        bridge   kvbrR            10.77.S.254/24 in the root namespace (clients dial from here)
        node i   namespace kvR-i, a veth pair kvRhi (on the bridge) / eth0 (inside) 10.77.S.i/24
    Nodes listen on their own address with real --host/--peers; nothing is sent anywhere else.
    Link faults are iptables DROP rules in the INPUT chain of the receiving node's namespace
    (block((src, dst)) drops what src sends to dst); the bridge address is never dropped, so
    clients in the root namespace reach every node.  teardown() deletes the namespaces (their
    rules and veth pairs go with them) and the bridge; it is idempotent and runs at exit too.
    Raises NamespaceUnavailable with the reason when any step cannot be done.
    """

    def __init__(self, ids: list[str]):
        _need_root("network namespace mode")
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise NamespaceUnavailable(f"network namespace mode needs `{tool}` on PATH "
                                           f"(apt-get install {'iproute2' if tool == 'ip' else tool})")
        self.ids = list(ids)
        self.run_id = os.urandom(3).hex()
        self.bridge = f"kvbr{self.run_id}"
        self.ns = {nid: f"kv{self.run_id}-{i}" for i, nid in enumerate(self.ids, 1)}
        self._veth = {nid: f"kv{self.run_id}h{i}" for i, nid in enumerate(self.ids, 1)}
        self._lock = threading.Lock()
        self._blocked: set[tuple[str, str]] = set()
        self._made: list[tuple[str, str]] = []      # ("ns", name) / ("link", name), for teardown
        self._down = False
        _NETWORKS.add(self)
        try:
            subnet = self._free_subnet()
            self.gateway = f"10.77.{subnet}.254"
            self.ip = {nid: f"10.77.{subnet}.{i}" for i, nid in enumerate(self.ids, 1)}
            self._build()
        except BaseException:
            self.teardown()
            raise

    @staticmethod
    def _free_subnet() -> int:
        used = _run(["ip", "-4", "-o", "addr", "show"], "listing addresses").stdout
        taken = {int(part.split(".")[2]) for part in used.split() if part.startswith("10.77.")}
        free = [s for s in range(1, 254) if s not in taken]
        if not free:
            raise NamespaceUnavailable("no free 10.77.x.0/24 subnet left on this machine")
        return random.SystemRandom().choice(free)

    def _build(self) -> None:
        what = "creating the cluster's network"
        _run(["ip", "link", "add", self.bridge, "type", "bridge"], what)
        self._made.append(("link", self.bridge))
        _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge], what)
        _run(["ip", "link", "set", self.bridge, "up"], what)
        for nid in self.ids:
            ns, veth = self.ns[nid], self._veth[nid]
            _run(["ip", "netns", "add", ns], what)
            self._made.append(("ns", ns))
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "x"], what)
            self._made.append(("link", veth))
            _run(["ip", "link", "set", veth, "master", self.bridge, "up"], what)
            _run(["ip", "link", "set", veth + "x", "netns", ns], what)
            _run(["ip", "-n", ns, "link", "set", veth + "x", "name", "eth0"], what)
            _run(["ip", "-n", ns, "addr", "add", f"{self.ip[nid]}/24", "dev", "eth0"], what)
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"], what)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"], what)
            _run(["ip", "netns", "exec", ns, "iptables", "-S", "INPUT"], "iptables in a network namespace")

    def exec_prefix(self, node_id: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node_id]]

    def block(self, pairs) -> None:
        with self._lock:
            for src, dst in sorted(set(pairs) - self._blocked):
                _run(self.exec_prefix(dst) + ["iptables", "-A", "INPUT", "-s", self.ip[src], "-j", "DROP"],
                     f"cutting {src} -> {dst}")
                self._blocked.add((src, dst))

    def unblock(self, pairs=None) -> None:
        with self._lock:
            if pairs is None:
                for dst in sorted({d for _, d in self._blocked}):
                    _run(self.exec_prefix(dst) + ["iptables", "-F", "INPUT"], f"healing {dst}")
                self._blocked.clear()
                return
            for src, dst in sorted(set(pairs) & self._blocked):
                _run(self.exec_prefix(dst) + ["iptables", "-D", "INPUT", "-s", self.ip[src], "-j", "DROP"],
                     f"healing {src} -> {dst}")
                self._blocked.discard((src, dst))

    def blocked(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._blocked)

    def stop(self) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Delete every namespace and link this object made (errors are collected and raised
        once everything was tried)."""
        with self._lock:
            if self._down:
                return
            self._down = True
            errors = []
            for kind, name in reversed(self._made):
                if kind == "ns":
                    r = _run(["ip", "netns", "del", name], "teardown", check=False)
                else:
                    r = _run(["ip", "link", "del", name], "teardown", check=False)
                    if r.returncode != 0 and "Cannot find device" in r.stderr:
                        continue      # a veth goes with its namespaced peer
                if r.returncode != 0:
                    errors.append(f"{kind} {name}: {r.stderr.strip()}")
            self._made.clear()
            _NETWORKS.discard(self)
        if errors:
            raise ClusterError("network teardown left something behind: " + "; ".join(errors))


_NETWORKS: "set[NetnsNetwork]" = set()


class SmallDisk:
    """A tmpfs of `mb` MiB mounted on a directory (a node's data dir), to fill up on purpose:
    fill() writes a filler file until the disk is full, free() deletes it; unmount() at the end
    (and at exit).  Needs root; raises NamespaceUnavailable with the reason otherwise."""

    FILLER = "disk-filler.bin"

    def __init__(self, path: str, mb: int):
        _need_root("a small tmpfs data dir")
        self.path = path
        os.makedirs(path, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", f"size={int(mb)}m,mode=0755", f"kvtmpfs-{os.getpid()}", path],
             f"mounting a {mb} MiB tmpfs on {path}")
        self.mounted = True
        _DISKS.add(self)

    def fill(self) -> int:
        """Write the filler until ENOSPC; returns the bytes written."""
        import errno as _errno
        n = 0
        with open(os.path.join(self.path, self.FILLER), "ab", buffering=0) as f:
            for chunk in (1 << 20, 4096, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        f.write(block)
                    except OSError as e:
                        if e.errno != _errno.ENOSPC:
                            raise
                        break
                    n += chunk
        return n

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, self.FILLER))

    def unmount(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        _DISKS.discard(self)
        r = _run(["umount", self.path], "unmounting", check=False)
        if r.returncode != 0:       # still busy (a process we could not reap): detach it lazily
            _run(["umount", "-l", self.path], f"unmounting {self.path}")


class CrashDisk:
    """An ext4 file system in a loop-mounted image under a node's data dir, to emulate a power
    loss of the machine, which kill -9 does not (the page cache survives a process).

    crash() (the node's process must be dead) copies the image as the loop device holds it
    (what the file system wrote back: everything fsynced, plus whatever the kernel flushed on
    its own: ext4 commits its journal every 5 s and writes back dirty pages after 30 s), throws
    the live file system away (unmounting it flushes into the image that is then replaced) and
    mounts the copy in its place (ext4 replays its journal, as after a power cut).  Needs root,
    mkfs.ext4 and loop devices; raises NamespaceUnavailable with the reason otherwise."""

    def __init__(self, path: str, mb: int):
        _need_root("a power-loss disk")
        if shutil.which("mkfs.ext4") is None:
            raise NamespaceUnavailable("a power-loss disk needs mkfs.ext4 (apt-get install e2fsprogs)")
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._dir = tempfile.mkdtemp(prefix="kvcrashdisk-")
        self.image = os.path.join(self._dir, "disk.img")
        with open(self.image, "wb") as f:
            f.truncate(int(mb) << 20)
        _run(["mkfs.ext4", "-q", "-F", self.image], "making an ext4 image")
        self.mounted = False
        _DISKS.add(self)
        self._mount()

    def _mount(self) -> None:
        _run(["mount", "-o", "loop", self.image, self.path], f"loop-mounting {self.image} on {self.path}")
        self.mounted = True

    def crash(self) -> None:
        snap = self.image + ".crash"
        shutil.copyfile(self.image, snap)
        self.unmount(keep_image=True)
        os.replace(snap, self.image)
        _DISKS.add(self)
        self._mount()

    def free(self) -> None:
        """(Nothing to free: a CrashDisk is never filled.)"""

    def unmount(self, keep_image: bool = False) -> None:
        if self.mounted:
            self.mounted = False
            r = _run(["umount", self.path], "unmounting", check=False)
            if r.returncode != 0:
                _run(["umount", "-l", self.path], f"unmounting {self.path}")
        _DISKS.discard(self)
        if not keep_image:
            shutil.rmtree(self._dir, ignore_errors=True)


_DISKS: "set[SmallDisk | CrashDisk]" = set()


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
    wait_for_single_primary(timeout=15, exclude=(), ids=None, min_term=0),
    wait_converged(timeout=30, ids=None, min_applied=0), wait_until(predicate, timeout, what),
    send(id, line) -> answer dict, check_get(key, want), check_safety(), describe(),
    log_text(id), restore() (heal, resume, free disks, restart what is down, wait for
    convergence; returns the nodes that crashed on their own).
    Faults (Jepsen's verbs): kill(id), kill_all(), pause(id) / resume(id) (SIGSTOP/SIGCONT),
    partition(groups) / isolate(id) / cut(a, b) / cut_one_way(src, dst) / heal() (with
    proxied=True or netns=True), fill_disk(id) / free_disk(id) (small_disks={id: MiB}: a tmpfs
    under the node's data dir), power_loss() (crash_disks=MiB: ext4 images on loop devices).
    Modes: proxied=True (links through an in-process FaultProxy on 127.0.0.1); netns=True (each
    node in its own network namespace, real --host/--peers, iptables DROP rules: NetnsNetwork;
    needs root); LocalCluster.attach("host:port,...") (a running cluster: observation only).
    Membership (Raft §4.1, CLUSTER ADD/REMOVE; unproxied clusters): add_node(id=None) (a new
    process with an empty data dir and --join; waits until it is a voter), remove_node(id)
    (CLUSTER REMOVE, then stops the process), replace_node(id) (remove the dead node first, then
    add a fresh one under a new id), members() (CLUSTER MEMBERS), cluster_command(line),
    forget_node(id) (after a CLUSTER REMOVE sent by hand).
    `ids` is the current membership as this object changed it; every verb takes a `say`
    callback for progress lines and returns figures (seconds).

    Invariants:
      * every process it spawns is remembered by PID and is signalled by PID only; stop(),
        cleanup() and an atexit hook (for clusters not detach()ed) leave none of them running;
      * nodes run in their own session: a Ctrl-C in the terminal does not reach them;
      * every STATUS answer seen is checked against the history of primaries per term: two nodes
        primary in one term raises SplitBrain from the next wait_*() call (or check_safety());
      * namespaces, links, rules and mounts it made are removed by cleanup() and at exit, also
        after an error half-way through making them;
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
                 server_script: str = SERVER_SCRIPT, log_level: str | None = None,
                 ids=None, boot_ids=None, joiners: dict | None = None, known_ports: dict | None = None,
                 netns: bool = False, small_disks: dict[str, int] | None = None,
                 crash_disks: int | None = None, attached: dict[str, tuple[str, int]] | None = None,
                 cluster_file: bool = False):
        if attached is not None:
            n = len(attached)
            ids = sorted(attached)
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        if netns and proxied:
            raise ValueError("netns and proxied are two ways of cutting links: choose one")
        self.n = n
        self.host = host
        # ids/boot_ids/joiners: a cluster whose membership changed (the CLI's state file)
        self.ids = list(ids) if ids is not None else [f"node{i}" for i in range(1, n + 1)]
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids given for {n} nodes")
        self.boot_ids = list(boot_ids) if boot_ids is not None else list(self.ids)   # --peers bootstrap
        self._joiners: dict[str, str] = dict(joiners or {})   # node added later -> where it joined
        self._hosts: dict[str, str] = {}
        self.attached = attached is not None
        if attached is not None:
            self._hosts = {nid: h for nid, (h, _) in attached.items()}
            ports = [attached[nid][1] for nid in self.ids]
        elif netns:
            ports = [NETNS_PORT] * n
        if ports is not None:
            ports = [int(p) for p in ports]
            if len(ports) != n:
                raise ValueError(f"{len(ports)} ports given for {n} nodes")
        elif base_port is None:
            ports = pick_free_ports(n, host)
        else:
            ports = [base_port + i for i in range(n)]
        self._ports = {**(known_ports or {}), **dict(zip(self.ids, ports))}   # known: removed boot nodes
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
        self.cluster_file = cluster_file   # bootstrap from one shared --cluster-file, not --peers
        self._procs: dict[str, NodeProcess] = {}
        self._expected_exit: set[str] = set()      # stopped on purpose: not a failure
        self._lock = threading.RLock()
        self._leaders: dict[int, str] = {}          # term -> the node seen primary in it
        self._violations: list[str] = []
        self._pool: ThreadPoolExecutor | None = None
        self._detached = False
        self._closed = False
        self._proxy: FaultProxy | None = None
        self._net: NetnsNetwork | None = None
        self._disks: dict[str, SmallDisk] = {}
        self._paused: set[str] = set()
        self._killed: set[str] = set()               # killed on purpose (not a crash for restore())
        self._starts: dict[str, int] = {}            # processes started per node
        _LIVE.add(self)
        if proxied and n > 1:
            target = self._dial_host()
            self._proxy = FaultProxy({(a, b): (target, self._ports[b]) for a in self.ids for b in self.ids if a != b})
            self._proxy.start()
        try:
            if netns:
                self._net = NetnsNetwork(self.ids)
                self._hosts = dict(self._net.ip)
            for nid, mb in (small_disks or {}).items():
                self._disks[nid] = SmallDisk(self.data_dir_of(nid), mb)
            if crash_disks:
                for nid in self.ids:
                    self._disks[nid] = CrashDisk(self.data_dir_of(nid), crash_disks)
        except BaseException:
            self.cleanup()
            raise

    @classmethod
    def attach(cls, spec) -> "LocalCluster":
        """A LocalCluster over a running cluster this process did not start ("host:port,..." or a
        list of addresses; ids come from each node's STATUS).  Observation and checks work;
        process control and faults raise ClusterError (the test suites skip those tests)."""
        addrs = [a.strip() for a in (spec.split(",") if isinstance(spec, str) else spec) if a.strip()]
        by_id: dict[str, tuple[str, int]] = {}
        for a in addrs:
            host, _, port = a.rpartition(":")
            st, why = probe(host, int(port), timeout=3.0)
            if st is None:
                raise ClusterError(f"cannot attach to {a}: {why}")
            by_id[st["node_id"]] = (host, int(port))
        if not by_id:
            raise ClusterError(f"no node address in {spec!r}")
        return cls(attached=by_id)

    # -------------------------------------------------------------- addresses
    def _dial_host(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    def addr(self, node_id: str) -> tuple[str, int]:
        return self._hosts.get(node_id) or self._dial_host(), self._ports[node_id]

    def address(self, node_id: str) -> str:
        """addr() as "host:port"."""
        return "%s:%d" % self.addr(node_id)

    def addresses(self) -> list[str]:
        return [self.address(nid) for nid in self.ids]

    @property
    def fresh(self) -> bool:
        """No node was restarted (or killed) since the cluster started."""
        return not self._killed and all(v <= 1 for v in self._starts.values())

    @property
    def owned(self) -> bool:
        """True when this object starts the processes (not attach()ed to a running cluster)."""
        return not self.attached

    @property
    def netns(self) -> NetnsNetwork | None:
        return self._net

    def port(self, node_id: str) -> int:
        return self._ports[node_id]

    def pid(self, node_id: str) -> int | None:
        p = self._procs.get(node_id)
        return p.pid if p is not None else None

    def process(self, node_id: str) -> NodeProcess | None:
        return self._procs.get(node_id)

    def data_dir_of(self, node_id: str) -> str:
        return os.path.join(self.data_dir, node_id)

    def _no_log(self, node_id: str) -> bool:
        """node_id's data dir holds no term record, snapshot or WAL segment (new or wiped)."""
        try:
            names = os.listdir(self.data_dir_of(node_id))
        except FileNotFoundError:
            return True
        return not any(n in ("raft_state.json", "snapshot.dat") or n.startswith("wal-") for n in names)

    def log_path(self, node_id: str) -> str:
        return os.path.join(self.data_dir_of(node_id), CONSOLE_LOG)

    def peer_addr(self, src: str, dst: str) -> str:
        """The address src is told to reach dst on (a proxy port when proxied)."""
        if self._proxy is not None:
            return f"127.0.0.1:{self._proxy.port(src, dst)}"
        return self.address(dst)

    def cluster_file_path(self) -> str:
        """<data dir>/cluster-file.json: {"nodes": {id: "host:port"}} of the bootstrap nodes, written
        on first use (cluster_file=True; not with a fault proxy, whose addresses differ per pair)."""
        if self._proxy is not None:
            raise ValueError("cluster_file and proxied: each node must see the others at its own proxy ports")
        path = os.path.join(self.data_dir, "cluster-file.json")
        if not os.path.exists(path):
            os.makedirs(self.data_dir, exist_ok=True)
            with open(path, "w") as f:
                json.dump({"nodes": {m: self.address(m) for m in self.boot_ids}}, f)
        return path

    def command(self, node_id: str, primary: bool = False) -> list[str]:
        """The full command line that starts node_id (secrets travel in the environment,
        KV_REQUIREPASS / KV_CLUSTER_SECRET, never on it)."""
        cmd = [self.python, self.server_script, "--node-id", node_id, "--host", self._hosts.get(node_id, self.host),
               "--port", str(self._ports[node_id]), "--data-dir", self.data_dir_of(node_id),
               "--fsync", self.fsync]
        if node_id in self._joiners:
            cmd += ["--join", self._joiners[node_id]]     # its configuration comes from the cluster
        elif len(self.boot_ids) == 1:
            cmd.append("--standalone")
        elif self.cluster_file:   # one file for every node, as on separate machines
            cmd += ["--cluster-file", self.cluster_file_path()]
        else:   # bootstrap only: once a node has a configuration on disk, that one wins.  A node
            # with no log (a first start, or wiped) starts from the current members: from the
            # bootstrap set it would refuse a primary that joined later, and never catch up.
            members = self.ids if self._no_log(node_id) else self.boot_ids
            cmd += ["--peers", ",".join(f"{m}={self.peer_addr(node_id, m)}" for m in members if m != node_id)]
        if self.heartbeat_interval is not None:
            cmd += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if self.election_timeout is not None:
            cmd += ["--election-timeout", str(self.election_timeout)]
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
        if self._net is not None:
            return        # each node has a network stack of its own
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
        self._need_owned("start a node")
        with self._lock:
            if self._closed:
                raise ClusterError("this LocalCluster was stopped for good (cleanup)")
            old = self._procs.get(node_id)
            if old is not None and old.alive():
                raise ClusterError(f"{node_id} is already running (pid {old.pid})")
            why = None if self._net is not None else port_in_use(self.host, self._ports[node_id])
            if why:
                raise PortInUse(f"cannot start {node_id}: {why}")
            ddir = self.data_dir_of(node_id)
            if wipe and os.path.isdir(ddir):
                for name in os.listdir(ddir):      # (the dir itself may be a mount point)
                    path = os.path.join(ddir, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
            os.makedirs(ddir, exist_ok=True)
            cmd = self.command(node_id, primary)
            if self._net is not None:
                cmd = self._net.exec_prefix(node_id) + cmd
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.pop("KV_REQUIREPASS", None)
            env.pop("KV_CLUSTER_SECRET", None)
            if self.requirepass is not None:     # secrets by environment: argv shows in ps
                env["KV_REQUIREPASS"] = self.requirepass
            if self.cluster_secret is not None:
                env["KV_CLUSTER_SECRET"] = self.cluster_secret
            with open(self.log_path(node_id), "ab") as logf:
                logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} cluster_manager starts {node_id}: "
                           f"{' '.join(cmd)}\n".encode())
                logf.flush()
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env, close_fds=True)
            self._procs[node_id] = NodeProcess(node_id, popen.pid, popen=popen, cmdline=cmd)
            self._expected_exit.discard(node_id)
            self._paused.discard(node_id)
            self._killed.discard(node_id)
            self._starts[node_id] = self._starts.get(node_id, 0) + 1
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

    def _need_owned(self, what: str) -> None:
        if self.attached:
            raise ClusterError(f"cannot {what}: this cluster was attached (KV_CLUSTER), not started here")

    def kill(self, node_id: str) -> int | None:
        """SIGKILL node_id by PID and reap it; returns its exit code (None if it was not running)."""
        self._need_owned("kill a node")
        with self._lock:
            p = self._procs.get(node_id)
            self._killed.add(node_id)
            if p is None or not p.signal(signal.SIGKILL):
                return None
            p.wait(10)
            self._paused.discard(node_id)
            return p.returncode

    def kill_all(self) -> None:
        """SIGKILL every running node at once (crash-all), then reap them."""
        self._need_owned("kill nodes")
        with self._lock:
            procs = [(nid, p) for nid, p in self._procs.items() if p.alive()]
            for nid, p in procs:
                self._killed.add(nid)
                p.signal(signal.SIGKILL)
            for nid, p in procs:
                p.wait(10)
                self._paused.discard(nid)

    def power_loss(self) -> None:
        """Crash the machine: SIGKILL every node and drop every write the kernel had not yet
        put on disk (LocalCluster(crash_disks=MiB): see CrashDisk).  restart() the nodes after."""
        disks = [d for d in self._disks.values() if isinstance(d, CrashDisk)]
        if len(disks) != self.n:
            raise ClusterError("power_loss() needs LocalCluster(crash_disks=MiB)")
        self.kill_all()
        for d in disks:
            d.crash()

    def pause(self, node_id: str) -> None:
        """SIGSTOP node_id: it keeps its sockets but answers nothing until resume()."""
        self._need_owned("pause a node")
        with self._lock:
            p = self._procs.get(node_id)
            if p is None or not p.signal(signal.SIGSTOP):
                raise ClusterError(f"cannot pause {node_id}: it is not running")
            self._paused.add(node_id)

    def resume(self, node_id: str) -> None:
        """SIGCONT a paused node."""
        with self._lock:
            p = self._procs.get(node_id)
            self._paused.discard(node_id)
            if p is not None:
                p.signal(signal.SIGCONT)

    def paused(self) -> set[str]:
        return set(self._paused)

    def mark_down(self, node_id: str) -> None:
        """The caller stopped node_id by other means (the SHUTDOWN command): not a crash."""
        self._expected_exit.add(node_id)

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
                if nid in self._paused:
                    self.resume(nid)
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
        self._need_owned("restart a node")
        p = self._procs.get(node_id)
        if p is not None and p.alive():
            self.stop_node(node_id, timeout=timeout)
        return self.start_node(node_id, primary=primary, wipe=wipe, timeout=timeout)

    # -------------------------------------------------------------- membership
    def cluster_command(self, line: str, timeout: float = 30, say=None) -> dict:
        """Send a CLUSTER request to the primary, as an operator would: follow NOT_PRIMARY, wait
        out CHANGE_IN_PROGRESS, a missing primary or a definite NO_QUORUM, until `timeout`.
        Returns the OK answer; raises ClusterError for a definite refusal (BAD_REQUEST...) and
        WaitTimeout at the deadline (with the last answer)."""
        say = say or (lambda m: None)
        deadline = time.monotonic() + timeout
        last = None
        while True:
            prim = self.primary(timeout=0.5)
            if prim is not None:
                try:
                    ans = call(*self.addr(prim), [line], password=self.requirepass,
                               timeout=max(2.0, min(10.0, deadline - time.monotonic())))[0]
                except (OSError, ValueError) as e:
                    ans = {"status": "ERROR", "code": "UNREACHABLE", "message": str(e), "definite": False}
                if ans.get("status") == "OK":
                    return ans
                code = ans.get("code")
                if code not in ("NOT_PRIMARY", "CHANGE_IN_PROGRESS", "NO_QUORUM", "TIMEOUT", "UNREACHABLE"):
                    raise ClusterError(f"{line!r} refused by {prim}: {code}: {ans.get('message')}")
                if not ans.get("definite", True) and code != "UNREACHABLE":
                    # the change may have been appended: the caller's wait decides (idempotent check)
                    return ans
                if (code, ans.get("message")) != last:
                    say(f"  {prim}: {code}: {ans.get('message')} - retrying")
                    last = (code, ans.get("message"))
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s sending {line!r} (last answer: {last}); "
                                  f"{self.describe()}")
            time.sleep(0.1)

    @property
    def boot_ports(self) -> dict[str, int]:
        """Ports of the bootstrap nodes (the --peers of a restarted boot node names them all)."""
        return {nid: self._ports[nid] for nid in self.boot_ids if nid in self._ports}

    @property
    def joiners(self) -> dict[str, str]:
        """Nodes added after the bootstrap -> the address they joined through (--join)."""
        return dict(self._joiners)

    def members(self, timeout: float = 10) -> dict:
        """CLUSTER MEMBERS from the primary: voters, learners, config_index, progress."""
        return self.cluster_command("CLUSTER MEMBERS", timeout)

    def _config_has(self, pred, committed: bool = True):
        """A poll: the primary's STATUS when its configuration satisfies pred (and is committed)."""
        prim = self.primary(timeout=0.5)
        st = self.status(prim, timeout=0.5) if prim else None
        if st and st.get("role") == "primary" and pred(st) and (st.get("config_committed") or not committed):
            return st
        return None

    def add_node(self, node_id: str | None = None, timeout: float = 60, wait_voter: bool = True,
                 say=None) -> dict:
        """Start a new node (free port, empty data dir) with --join through the primary, and wait
        until the primary lists it as a learner, then (wait_voter) as a voter in a committed
        configuration.  Returns {"node": id, "learner_s", "voter_s", "pid"}."""
        say = say or (lambda m: None)
        if self._proxy is not None:
            raise ClusterError("membership changes need an unproxied cluster (the proxy routes fixed pairs)")
        with self._lock:
            if node_id is None:
                k = len(self._ports) + 1
                while f"node{k}" in self._ports:
                    k += 1
                node_id = f"node{k}"
            if node_id in self.ids:
                raise ClusterError(f"{node_id} is already a member")
            prim = self.primary(timeout=0.5) or self.wait_for_single_primary(timeout=min(timeout, 10))
            self._ports.setdefault(node_id, pick_free_ports(1, self.host)[0])
            self._joiners[node_id] = "%s:%d" % self.addr(prim)
        t0 = time.monotonic()
        say(f"starting {node_id} on port {self._ports[node_id]} with an empty data dir, joining through {prim}")
        pid = self.start_node(node_id, wipe=True, timeout=min(timeout, 10))
        with self._lock:
            self.ids.append(node_id)
            self.n = len(self.ids)
        say(f"waiting for {node_id} to be a learner (CLUSTER ADD by --join)")
        self.wait_until(lambda: self._config_has(lambda st: node_id in st.get("learners", {})
                                                 or node_id in st.get("voters", {}), committed=False),
                        timeout, f"{node_id} to be added")
        learner_s = time.monotonic() - t0
        out = {"node": node_id, "pid": pid, "learner_s": round(learner_s, 3), "voter_s": None}
        if wait_voter:
            say(f"{node_id} is a learner after {learner_s:.2f}s; waiting until it has caught up and is promoted to voter")

            def promoted():
                st = self._config_has(lambda st: node_id in st.get("voters", {}))
                if st is None:
                    lag = (self._config_has(lambda st: True, committed=False) or {}).get("peers", {}).get(node_id, {}).get("lag")
                    if lag is not None:
                        say(f"  {node_id} lag {lag} entries")
                return st
            self.wait_until(promoted, timeout, f"{node_id} to be promoted to voter", interval=0.1)
            out["voter_s"] = round(time.monotonic() - t0, 3)
            say(f"{node_id} is a voter after {out['voter_s']:.2f}s")
        return out

    def remove_node(self, node_id: str, timeout: float = 60, stop: bool = True, say=None) -> dict:
        """CLUSTER REMOVE node_id on the primary, wait until a primary (maybe a new one: removing
        the primary hands leadership over) has the configuration without it committed, then stop
        its process (stop=True).  Returns {"node", "removed_s", "primary", "new_primary_s"}."""
        say = say or (lambda m: None)
        if node_id not in self.ids:
            raise ClusterError(f"{node_id} is not a member")
        t0 = time.monotonic()
        before = self.primary(timeout=0.5)
        say(f"removing {node_id}{' (the primary: it hands leadership over once the change commits)' if node_id == before else ''}")
        self.cluster_command(f"CLUSTER REMOVE {node_id}", timeout, say)
        say(f"waiting for a committed configuration without {node_id}")
        st = self.wait_until(lambda: self._config_has(lambda st: node_id not in st.get("voters", {})
                                                      and node_id not in st.get("learners", {})
                                                      and st["node_id"] != node_id),
                             timeout, f"{node_id} to be removed")
        removed_s = time.monotonic() - t0
        self.forget_node(node_id)
        if stop:
            p = self._procs.get(node_id)
            if p is not None and p.alive():
                say(f"stopping {node_id} (pid {p.pid})")
                self.stop_node(node_id, timeout=10)
        out = {"node": node_id, "removed_s": round(removed_s, 3), "primary": st["node_id"],
               "new_primary_s": round(removed_s, 3) if before == node_id else None}
        say(f"{node_id} removed after {removed_s:.2f}s; primary {st['node_id']}, voters "
            f"{','.join(st['voters'])}{'; learners ' + ','.join(st['learners']) if st['learners'] else ''}")
        return out

    def forget_node(self, node_id: str) -> None:
        """Stop counting node_id as a member (it was removed by a CLUSTER REMOVE sent by hand);
        its process, if any, is left running for the caller to stop."""
        with self._lock:
            self.ids.remove(node_id)
            self.n = len(self.ids)
            self._expected_exit.add(node_id)

    def replace_node(self, node_id: str, new_id: str | None = None, timeout: float = 60, say=None) -> dict:
        """Swap node_id (dead, or to be retired) for a fresh node with an empty data dir under a
        new id: stop it if it runs, remove it first (the survivors commit that), then add the new
        one and wait until it is a voter and every member has converged.
        Returns {"old", "new", "removed_s", "voter_s", "healthy_s"}."""
        say = say or (lambda m: None)
        t0 = time.monotonic()
        p = self._procs.get(node_id)
        if p is not None and p.alive():
            say(f"stopping {node_id} (pid {p.pid})")
            self.kill(node_id)
        self._expected_exit.add(node_id)
        rm = self.remove_node(node_id, timeout, stop=False, say=say)
        add = self.add_node(new_id, timeout, say=say)
        say("waiting for every member to converge (same applied index and digest)")
        self.wait_converged(timeout)
        healthy = time.monotonic() - t0
        say(f"replaced {node_id} by {add['node']}: healthy after {healthy:.2f}s")
        return {"old": node_id, "new": add["node"], "removed_s": rm["removed_s"], "voter_s": add["voter_s"],
                "healthy_s": round(healthy, 3)}

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
        """stop(), tear down the namespaces and small disks, then remove the data dir if this
        object created it (kept when KV_KEEP_DATA=1)."""
        try:
            self.stop()
        finally:
            self._closed = True
            self._teardown()
        if self._own_dir and not os.environ.get("KV_KEEP_DATA"):
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _teardown(self) -> None:
        """Unmount the small disks and delete the network (processes must be gone first)."""
        errors = []
        for d in list(self._disks.values()):
            try:
                d.unmount()
            except ClusterError as e:
                errors.append(str(e))
        if self._net is not None:
            try:
                self._net.teardown()
            except ClusterError as e:
                errors.append(str(e))
        if errors:
            raise ClusterError("; ".join(errors))

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
        self._teardown()

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
        """wait_until() with what each node reports in the timeout message."""
        return wait_until(predicate, timeout, what, diag=self.describe, interval=interval)

    def describe(self) -> str:
        """One line per node: what it reports right now (for failure messages)."""
        parts = []
        for nid, st in sorted(self.statuses(timeout=0.5).items()):
            if st is None:
                p = self._procs.get(nid)
                how = "down" if p is None or not p.alive() else "running but not answering"
                if p is not None and p.returncode is not None:
                    how += f", exit code {fmt_exit(p.returncode)}"
                parts.append(f"{nid}: {how}")
            else:
                parts.append(describe_statuses({nid: st}))
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

    def wait_for_single_primary(self, timeout: float = 15, exclude=(), ids=None, min_term: int = 0) -> str:
        """Wait until exactly one node (among `ids`, default the running ones, outside `exclude`)
        reports role primary at a term >= min_term, every other of them that answers names it as
        primary in that term, and with it they are a majority of the cluster; returns its id.
        Raises SplitBrain at once if two nodes report primary in the same term (now or in any
        earlier observation)."""
        exclude = set(exclude)
        majority = self.n // 2 + 1
        among = list(ids) if ids is not None else None

        def single():
            ids = [i for i in (among if among is not None else self.running_ids()) if i not in exclude]
            sts = self.statuses(ids, timeout=0.5)
            self.check_safety()
            prims = [nid for nid, s in sts.items() if s and s.get("role") == "primary"]
            if len(prims) != 1:
                return None
            p = prims[0]
            term = sts[p]["election_term"]
            if term < min_term:
                return None
            up = [s for nid, s in sts.items() if s is not None and nid != p]
            if any(s.get("primary") != p or s.get("election_term") != term for s in up):
                return None
            return p if 1 + len(up) >= majority else None
        what = "a single primary" + (f" outside {sorted(exclude)}" if exclude else "")
        return self.wait_until(single, timeout, what)

    def wait_converged(self, timeout: float = 30, ids=None, min_applied: int = 0) -> dict[str, dict]:
        """Wait until the nodes (default: all running) report equal last_applied (>= min_applied),
        commit_index and digest, and exactly one running node is primary.  Returns their STATUS
        answers."""
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
            if next(iter(mine.values()))["last_applied"] < min_applied:
                return None
            if sum(1 for s in sts.values() if s and s.get("role") == "primary") != 1:
                return None
            return mine
        return self.wait_until(converged, timeout, "the nodes to converge (same applied index, commit index and digest)")

    def restore(self, timeout: float = 30) -> list[str]:
        """Heal every cut, resume paused nodes, free filled disks, restart every node that is not
        running, then wait for one primary and convergence.  Returns the nodes that had died
        without being stopped or killed on purpose (a crash the caller should report)."""
        if self.attached:
            return []
        if self._proxy is not None or self._net is not None:
            self.heal()
        for nid in list(self._paused):
            self.resume(nid)
        for d in self._disks.values():
            d.free()
        crashed = []
        for nid in self.ids:
            p = self._procs.get(nid)
            if p is None or not p.alive():
                if p is not None and nid not in self._expected_exit and nid not in self._killed:
                    crashed.append(nid)
                self.start_node(nid, timeout=timeout)
        self.wait_for_single_primary(timeout)
        self.wait_converged(timeout)
        return crashed

    def log_text(self, node_id: str) -> str:
        """The node's own node.log plus its console log (stdout+stderr)."""
        out = []
        for path in (os.path.join(self.data_dir_of(node_id), "node.log"), self.log_path(node_id)):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    out.append(f.read())
            except FileNotFoundError:
                continue
        return "\n".join(out)

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
    def _links(self):
        if self._proxy is not None:
            return self._proxy
        if self._net is not None:
            return self._net
        self._need_owned("cut links")
        raise ClusterError("link faults need LocalCluster(proxied=True) or LocalCluster(netns=True), "
                           "with at least two nodes")

    def partition(self, groups) -> None:
        """Cut every link between nodes of different groups (a list of lists of ids; nodes in no
        group form one more group), on top of any cut already made.  partition("node1") is
        isolate("node1").  Open peer connections across the cut are closed (proxied) or their
        packets dropped (netns)."""
        if isinstance(groups, str):
            groups = [[groups]]
        side = {}
        for g, members in enumerate(groups):
            for nid in members:
                if nid not in self.ids:
                    raise ValueError(f"unknown node {nid!r}")
                side[nid] = g
        rest = len(groups)
        pairs = {(a, b) for a in self.ids for b in self.ids
                 if a != b and side.get(a, rest) != side.get(b, rest)}
        self._links().block(pairs)

    def isolate(self, node_id: str) -> None:
        """Cut every link to and from node_id (clients still reach it)."""
        self.partition([[node_id]])

    def cut(self, a: str, b: str) -> None:
        """Cut the links a -> b and b -> a."""
        self._links().block({(a, b), (b, a)})

    def cut_one_way(self, src: str, dst: str) -> None:
        """Cut only src -> dst: src's messages stop reaching dst; dst's still reach src."""
        self._links().block({(src, dst)})

    def heal(self) -> None:
        """Restore every cut link (nodes reconnect on their own)."""
        self._links().unblock()

    def blocked(self) -> set[tuple[str, str]]:
        return self._links().blocked()

    def disk(self, node_id: str) -> SmallDisk:
        """The small tmpfs under node_id's data dir (LocalCluster(small_disks={id: MiB}))."""
        if not isinstance(self._disks.get(node_id), SmallDisk):
            raise ClusterError(f"{node_id} has no small disk: pass small_disks={{{node_id!r}: MiB}}")
        return self._disks[node_id]

    def fill_disk(self, node_id: str) -> int:
        """Fill node_id's small disk to the last byte; returns the bytes written."""
        return self.disk(node_id).fill()

    def free_disk(self, node_id: str) -> None:
        self.disk(node_id).free()

    @property
    def proxy(self) -> FaultProxy | None:
        return self._proxy


@atexit.register
def _atexit_kill_leftovers() -> None:
    for c in list(_LIVE):
        c._kill_leftovers()
    for d in list(_DISKS):
        d.unmount()
    for net in list(_NETWORKS):
        net.teardown()
