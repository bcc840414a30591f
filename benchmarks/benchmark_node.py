#!/usr/bin/env python3
"""benchmark_node.py: throughput and latency of ONE KV Store node, beside Redis, in one run.

    python benchmarks/benchmark_node.py                       # fsync always, 3 repetitions
    python benchmarks/benchmark_node.py --fsync everysec --reps 5 --duration 4
    python benchmarks/benchmark_node.py --no-redis --no-redis-benchmark   # our node only

What it does (every process it starts is stopped by PID before it returns):
  1. starts `kv_store_server.py --standalone` on a free 127.0.0.1 port in a temp data dir, and
     (unless --no-redis) `redis-server --appendonly yes --appendfsync <same policy> --save ''`;
  2. its own load generator (LoadSpec/run_load): N connections spread over W worker processes,
     each worker drives its connections with a selectors loop, one request in flight per
     connection (no pipelining), and times every request;
     configurations: SET and GET x 1 and 50 connections x line protocol and RESP against our
     node, and the RESP ones against Redis; each configuration runs --duration seconds after
     --warmup seconds, and the whole set is repeated --reps times, interleaved (rep 1 of every
     configuration, then rep 2 ...), so a burst of noise on this shared 2-core machine hits all
     configurations alike; the tables quote medians over the repetitions;
  3. `redis-benchmark -p P -t set,get -n 100000 -c 50 -q` against our node and against Redis
     (when redis-benchmark is installed), also --reps times interleaved, ops/s + "no error";
  4. prints the tables and writes benchmarks/results/benchmark_node.json.

The load generator lives here and benchmark_cluster.py imports it.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from kv_localcluster import LocalCluster, wait_until  # noqa: E402

RESULTS_DIR = os.path.join(HERE, "results")
HOST = "127.0.0.1"


# ----------------------------------------------------------------------------- small helpers
def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def line_call(port: int, line: str, timeout: float = 1.0, host: str = HOST) -> dict | None:
    """One line-protocol request on a fresh connection; the JSON answer or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(line.encode() + b"\n")
            buf = b""
            deadline = time.monotonic() + timeout
            while not buf.endswith(b"\n") and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf) if buf.endswith(b"\n") else None
    except (OSError, ValueError):
        return None


def stop_pid(popen: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the process by PID, SIGKILL after timeout; returns its exit code."""
    if popen.poll() is None:
        try:
            os.kill(popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(popen.pid, signal.SIGKILL)
            popen.wait(5)
    return popen.returncode


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------- servers
class KVNodeProc:
    """One standalone kv_store_server.py: a LocalCluster of one node (free port, temp data dir,
    stopped by PID), with the .port / .pid / stop() this file uses."""

    def __init__(self, fsync: str = "always", extra_args=()):
        self.cluster = LocalCluster(n=1, fsync=fsync, extra_args=tuple(extra_args))
        self.port = self.cluster.port("node1")

    def start(self, timeout: float = 20) -> "KVNodeProc":
        self.cluster.start(wait=True, timeout=timeout)
        return self

    @property
    def pid(self):
        return self.cluster.pid("node1")

    def stop(self) -> None:
        self.cluster.cleanup()


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProc:
    """redis-server on a free port and temp dir with AOF (appendfsync like our --fsync), by PID.
    replicaof=(host, port) makes it a replica."""

    def __init__(self, appendfsync: str = "always", replicaof: tuple[str, int] | None = None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kvbench-redis-")
        self.cmd = ["redis-server", "--port", str(self.port), "--bind", HOST, "--appendonly", "yes",
                    "--appendfsync", appendfsync, "--save", "", "--dir", self.dir, "--daemonize", "no",
                    "--logfile", os.path.join(self.dir, "redis.log")]
        if replicaof:
            self.cmd += ["--replicaof", replicaof[0], str(replicaof[1])]
        self.popen: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> "RedisProc":
        self.popen = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)

        def ready():
            if self.popen.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.popen.returncode}; see {self.dir}/redis.log")
            return redis_ping(self.port)
        wait_until(ready, timeout, "redis-server to answer PING", interval=0.05)
        return self

    def info(self, section: str = "replication") -> str:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                sec = section.encode()
                s.sendall(b"*2\r\n$4\r\nINFO\r\n$%d\r\n%s\r\n" % (len(sec), sec))
                buf = b""
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    buf += s.recv(65536)
                    m = re.match(rb"\$(\d+)\r\n", buf)
                    if m and len(buf) >= m.end() + int(m.group(1)) + 2:
                        return buf[m.end():m.end() + int(m.group(1))].decode()
        except OSError:
            pass
        return ""

    def stop(self) -> None:
        if self.popen is not None:
            stop_pid(self.popen)
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- load generator
@dataclass
class LoadSpec:
    port: int
    op: str = "SET"              # SET | GET
    proto: str = "line"          # line | resp
    conns: int = 50
    workers: int = 2             # processes; connections are spread over them
    duration: float = 3.0        # measured seconds
    warmup: float = 0.5          # seconds run but not measured
    keyspace: int = 1000         # keys key:000000 .. key:<keyspace-1>
    value_size: int = 3          # like redis-benchmark's default -d 3
    host: str = HOST
    key_prefix: str = "key:"


def _requests(spec: LoadSpec, seed: int) -> list[bytes]:
    """Pre-encoded requests over the keyspace in a random order (no per-request encoding cost)."""
    value = b"x" * spec.value_size
    keys = [f"{spec.key_prefix}{i:06d}".encode() for i in range(spec.keyspace)]
    random.Random(seed).shuffle(keys)
    out = []
    for k in keys:
        if spec.proto == "line":
            out.append(b"SET %s %s\n" % (k, value) if spec.op == "SET" else b"GET %s\n" % k)
        else:
            if spec.op == "SET":
                out.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(value), value))
            else:
                out.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
    return out


def _reply_end(buf: bytes, proto: str) -> int:
    """Length of the first complete reply in buf, or 0 if it is not complete yet."""
    if proto == "line":
        i = buf.find(b"\n")
        return i + 1 if i >= 0 else 0
    i = buf.find(b"\r\n")
    if i < 0:
        return 0
    if buf[:1] == b"$":
        n = int(buf[1:i])
        if n < 0:
            return i + 2
        end = i + 2 + n + 2
        return end if len(buf) >= end else 0
    return i + 2      # +OK / -ERR / :n / _


def _reply_ok(reply: bytes, proto: str) -> bool:
    if proto == "line":
        return reply.startswith(b'{"status": "OK"')
    return reply[:1] in (b"+", b"$", b":") and not reply.startswith(b"$-1")


class _Conn:
    __slots__ = ("sock", "reqs", "pos", "buf", "t0")

    def __init__(self, sock, reqs, pos):
        self.sock, self.reqs, self.pos, self.buf, self.t0 = sock, reqs, pos, b"", 0.0


def _worker(spec: LoadSpec, n_conns: int, wid: int, start_at: float, out_q) -> None:
    """One load process: n_conns connections, one request in flight on each, until the end time.
    Puts (ok_count, err_count, first_error, latencies_bytes, window) on out_q."""
    res = {"ok": 0, "err": 0, "first_error": None, "lat": b"", "conn_errors": 0}
    socks = []
    try:
        reqs = _requests(spec, seed=wid)
        for _ in range(n_conns):
            s = socket.create_connection((spec.host, spec.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        lat = array.array("d")
        measure_from = start_at + spec.warmup
        end = measure_from + spec.duration
        proto = spec.proto
        mono = time.monotonic
        nreq = len(reqs)
        while mono() < start_at:
            time.sleep(min(0.005, max(0.0, start_at - mono())))
        if n_conns == 1:
            # blocking loop: the lowest-overhead way to time a single client
            s = socks[0]
            pos = 0
            while True:
                t0 = mono()
                if t0 >= end:
                    break
                s.sendall(reqs[pos])
                pos = (pos + 1) % nreq
                buf = s.recv(65536)
                while not _reply_end(buf, proto):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    buf += chunk
                t1 = mono()
                if t0 >= measure_from and t1 <= end:
                    if _reply_ok(buf, proto):
                        res["ok"] += 1
                        lat.append(t1 - t0)
                    else:
                        res["err"] += 1
                        res["first_error"] = res["first_error"] or buf[:200].decode("utf-8", "replace")
        else:
            sel = selectors.DefaultSelector()
            conns = []
            for i, s in enumerate(socks):
                s.setblocking(False)
                c = _Conn(s, reqs, (i * 7919) % nreq)
                conns.append(c)
                sel.register(s, selectors.EVENT_READ, c)
            for c in conns:
                c.t0 = mono()
                c.sock.send(c.reqs[c.pos])
            inflight = len(conns)
            while inflight:
                now = mono()
                if now >= end + 5.0:      # a stuck reply: give up on it
                    break
                for key, _ in sel.select(timeout=0.2):
                    c = key.data
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    c.buf += chunk
                    n = _reply_end(c.buf, proto)
                    if not n:
                        continue
                    t1 = mono()
                    reply, c.buf = c.buf[:n], c.buf[n:]
                    if c.t0 >= measure_from and t1 <= end:
                        if _reply_ok(reply, proto):
                            res["ok"] += 1
                            lat.append(t1 - c.t0)
                        else:
                            res["err"] += 1
                            res["first_error"] = res["first_error"] or reply[:200].decode("utf-8", "replace")
                    if t1 >= end:
                        sel.unregister(c.sock)
                        inflight -= 1
                        continue
                    c.pos = (c.pos + 1) % nreq
                    c.t0 = t1
                    c.sock.send(c.reqs[c.pos])
            sel.close()
        res["lat"] = lat.tobytes()
    except (OSError, ValueError) as e:
        res["conn_errors"] += 1
        res["first_error"] = res["first_error"] or f"{type(e).__name__}: {e}"
    finally:
        for s in socks:
            s.close()
        out_q.put(res)


def run_load(spec: LoadSpec) -> dict:
    """Run one configuration; returns ops/s and latency percentiles (ms) over the measured window."""
    ctx = multiprocessing.get_context("fork")
    workers = max(1, min(spec.workers, spec.conns))
    share = [spec.conns // workers + (1 if i < spec.conns % workers else 0) for i in range(workers)]
    q = ctx.Queue()
    start_at = time.monotonic() + 0.3 + 0.02 * spec.conns / workers   # time to fork and connect
    procs = [ctx.Process(target=_worker, args=(spec, n, i, start_at, q), daemon=True)
             for i, n in enumerate(share)]
    for p in procs:
        p.start()
    results = []
    deadline = start_at + spec.warmup + spec.duration + 30
    try:
        for _ in procs:
            results.append(q.get(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():          # our own child, by PID
                os.kill(p.pid, signal.SIGKILL)
                p.join(5)
    lat = array.array("d")
    ok = err = conn_errors = 0
    first_error = None
    for r in results:
        ok += r["ok"]
        err += r["err"]
        conn_errors += r["conn_errors"]
        first_error = first_error or r["first_error"]
        a = array.array("d")
        a.frombytes(r["lat"])
        lat.extend(a)
    lat = sorted(lat)

    def pct(p):
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1000, 3)
    return {"op": spec.op, "proto": spec.proto, "conns": spec.conns, "workers": workers,
            "ops": ok, "ops_per_s": round(ok / spec.duration, 1), "errors": err + conn_errors,
            "first_error": first_error, "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
            "mean_ms": round(statistics.fmean(lat) * 1000, 3) if lat else None,
            "max_ms": round(lat[-1] * 1000, 3) if lat else None}


def populate(port: int, proto: str, keyspace: int, value_size: int = 3, key_prefix: str = "key:",
             conns: int = 50) -> None:
    """SET every key of the keyspace once (so GETs hit), from `conns` threads in one process."""
    import threading
    value = b"x" * value_size
    errors = []

    def fill(part):
        try:
            with socket.create_connection((HOST, port), timeout=30) as s:
                for i in part:
                    k = f"{key_prefix}{i:06d}".encode()
                    if proto == "line":
                        s.sendall(b"SET %s %s\n" % (k, value))
                    else:
                        s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(value), value))
                    buf = b""
                    while not _reply_end(buf, proto):
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed")
                        buf += chunk
                    if not _reply_ok(buf, proto):
                        errors.append(buf[:200])
                        return
        except OSError as e:
            errors.append(repr(e))
    parts = [range(i, keyspace, conns) for i in range(conns)]
    ts = [threading.Thread(target=fill, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    if errors:
        raise RuntimeError(f"populating port {port} failed: {errors[0]!r}")


# ----------------------------------------------------------------------------- redis-benchmark
_RB_LINE = re.compile(r"^(SET|GET): ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?", re.M)


def run_redis_benchmark(port: int, n: int = 100_000, c: int = 50, tests: str = "set,get",
                        timeout: float = 600) -> dict:
    """Run `redis-benchmark -p port -t tests -n n -c c -q`; ops/s per test and whether it finished
    with no error (exit 0, no 'Error' text, a result line for every test)."""
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(port), "-t", tests, "-n", str(n), "-c", str(c), "-q"]
    t0 = time.monotonic()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out = cp.stdout.replace("\r", "\n")
        rc = cp.returncode
        err_text = cp.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, err_text = None, f"timed out after {timeout}s"
    res = {"command": " ".join(cmd), "exit_code": rc, "seconds": round(time.monotonic() - t0, 1)}
    for m in _RB_LINE.finditer(out):
        res[m.group(1)] = {"ops_per_s": float(m.group(2)), "p50_ms": float(m.group(3)) if m.group(3) else None}
    errors = [ln for ln in (out + "\n" + err_text).splitlines() if "rror" in ln or "WARNING" in ln]
    want = [t.upper() for t in tests.split(",")]
    res["no_error"] = rc == 0 and not errors and all(t in res for t in want)
    res["error_lines"] = errors[:5]
    return res


def have_redis_benchmark() -> bool:
    return shutil.which("redis-benchmark") is not None


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


# ----------------------------------------------------------------------------- reporting
def fmt(x, nd=0):
    if x is None:
        return "-"
    if isinstance(x, float) and nd:
        return f"{x:,.{nd}f}"
    return f"{x:,.0f}" if isinstance(x, (int, float)) and abs(x) >= 100 else f"{x}"


def render(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(re.fullmatch(r"[-\d.,/ ]+", r[i]) for r in cells[1:]) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w[i]) if numeric[i] else c.ljust(w[i]) for i, c in enumerate(r)) + " |"
    sep = "|" + "|".join("-" * (x + 2) for x in w) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def summarize(runs: list[dict]) -> dict:
    """Median over repetitions of one configuration."""
    return {"ops_per_s": median([r["ops_per_s"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "reps_ops_per_s": [r["ops_per_s"] for r in runs],
            "errors": sum(r["errors"] for r in runs),
            "first_error": next((r["first_error"] for r in runs if r["first_error"]), None)}


def environment() -> dict:
    redis_v = None
    if have_redis_server():
        try:
            redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            redis_v = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "redis": redis_v,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "server_code": server_fingerprint()}


def server_fingerprint() -> dict:
    """Which server code was measured: the git commit and whether the node's files differ from it."""
    out: dict = {}
    try:
        out["commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "*.py"], capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
        out["modified_py_files"] = sorted(ln[3:] for ln in dirty if ln.strip() and not ln[3:].startswith("benchmarks/"))
    except (OSError, subprocess.TimeoutExpired) as e:
        out["error"] = str(e)
    return out


def write_json(name: str, obj: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def throughput_tables(summary: dict, targets_50: dict | None = None) -> str:
    """summary: {"kv": {cfg: s}, "redis": {cfg: s}} with cfg "SET/resp/50"; -> markdown tables."""
    rows = []
    for cfg, s in summary["kv"].items():
        op, proto, conns = cfg.split("/")
        r = summary.get("redis", {}).get(cfg)
        ratio = (s["ops_per_s"] / r["ops_per_s"]) if r and r["ops_per_s"] and s["ops_per_s"] else None
        rows.append([op, proto, conns, fmt(s["ops_per_s"]), fmt(s["p50_ms"]), fmt(s["p99_ms"]),
                     fmt(r["ops_per_s"]) if r else "-", fmt(r["p50_ms"]) if r else "-",
                     fmt(r["p99_ms"]) if r else "-", f"{ratio:.2f}" if ratio else "-",
                     str(s["errors"] + (r["errors"] if r else 0)),
                     " ".join(fmt(x) for x in s["reps_ops_per_s"])])
    return render(["op", "proto", "conns", "KV ops/s", "KV p50 ms", "KV p99 ms", "Redis ops/s",
                   "Redis p50 ms", "Redis p99 ms", "KV/Redis", "errors", "KV ops/s per rep"], rows)


def rb_table(rb: dict) -> str:
    rows = []
    for op in ("SET", "GET"):
        kv = [r.get(op, {}).get("ops_per_s") for r in rb.get("kv", [])]
        rd = [r.get(op, {}).get("ops_per_s") for r in rb.get("redis", [])]
        kvp = [r.get(op, {}).get("p50_ms") for r in rb.get("kv", [])]
        rdp = [r.get(op, {}).get("p50_ms") for r in rb.get("redis", [])]
        mk, mr = median(kv), median(rd)
        rows.append([op, fmt(mk), fmt(median(kvp)), fmt(mr), fmt(median(rdp)),
                     f"{mk / mr:.2f}" if mk and mr else "-",
                     "yes" if rb.get("kv") and all(r["no_error"] for r in rb["kv"]) else "NO",
                     " ".join(fmt(x) for x in kv)])
    return render(["op", "KV ops/s", "KV p50 ms", "Redis ops/s", "Redis p50 ms", "KV/Redis",
                   "KV finished with no error", "KV ops/s per rep"], rows)


# ----------------------------------------------------------------------------- main
def configurations(protos=("line", "resp"), ops=("SET", "GET"), conns=(1, 50)) -> list[tuple[str, str, int]]:
    return [(op, proto, c) for c in conns for op in ops for proto in protos]


def measure_interleaved(targets: dict, cfgs: list, args, on_result=None) -> dict:
    """targets: {"kv": (port, protos), "redis": (port, protos)}.  Every rep runs every
    configuration on every target, alternating targets; returns {target: {cfg: [run, ...]}}."""
    raw: dict = {t: {} for t in targets}
    for rep in range(args.reps):
        for op, proto, c in cfgs:
            for tname, (port, protos) in targets.items():
                if proto not in protos:
                    continue
                spec = LoadSpec(port=port, op=op, proto=proto, conns=c, workers=args.workers,
                                duration=args.duration, warmup=args.warmup, keyspace=args.keyspace,
                                value_size=args.value_size)
                r = run_load(spec)
                r["rep"] = rep + 1
                raw[tname].setdefault(f"{op}/{proto}/{c}", []).append(r)
                if on_result:
                    on_result(tname, r)
    return raw


def progress(tname: str, r: dict) -> None:
    print(f"  rep {r['rep']} {tname:5s} {r['op']} {r['proto']:4s} {r['conns']:3d} conns: "
          f"{r['ops_per_s']:9,.0f} ops/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
          + (f"  errors {r['errors']} ({r['first_error']})" if r["errors"] else ""), flush=True)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fsync", choices=["always", "everysec", "no"], default="always",
                   help="our WAL fsync policy, and Redis' appendfsync (default always)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of every configuration (default 3)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per run (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run (default 0.5)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes (default 2)")
    p.add_argument("--keyspace", type=int, default=1000, help="distinct keys (default 1000)")
    p.add_argument("--value-size", type=int, default=3, help="value bytes (default 3, like redis-benchmark)")
    p.add_argument("--conns", default="1,50", help="connection counts (default 1,50)")
    p.add_argument("--rb-requests", type=int, default=100_000, help="redis-benchmark -n (default 100000)")
    p.add_argument("--rb-clients", type=int, default=50, help="redis-benchmark -c (default 50)")
    p.add_argument("--no-redis", action="store_true", help="do not start redis-server")
    p.add_argument("--no-redis-benchmark", action="store_true", help="do not run redis-benchmark")
    p.add_argument("--json", default=None, help="result file name in benchmarks/results/")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    args = p.parse_args(argv)
    conns = tuple(int(x) for x in args.conns.split(","))
    cfgs = configurations(conns=conns)
    use_redis = not args.no_redis and have_redis_server()
    use_rb = not args.no_redis_benchmark and have_redis_benchmark()
    env = environment()
    env["loadavg_start"] = loadavg()
    print(f"benchmark_node: standalone KV node, fsync {args.fsync}, {args.reps} reps x "
          f"{len(cfgs)} configs x {args.duration}s, {args.workers} load processes; loadavg {env['loadavg_start']}",
          flush=True)
    node = redis = None
    rb: dict = {"kv": [], "redis": []}
    try:
        node = KVNodeProc(fsync=args.fsync).start()
        print(f"  KV node pid {node.pid} on {HOST}:{node.port}", flush=True)
        targets = {"kv": (node.port, ("line", "resp"))}
        if use_redis:
            redis = RedisProc(appendfsync=args.fsync).start()
            print(f"  redis-server pid {redis.popen.pid} on {HOST}:{redis.port} (appendfsync {args.fsync})", flush=True)
            targets["redis"] = (redis.port, ("resp",))
        populate(node.port, "line", args.keyspace, args.value_size)
        if redis:
            populate(redis.port, "resp", args.keyspace, args.value_size)
        t0 = time.monotonic()
        raw = measure_interleaved(targets, cfgs, args, progress)
        if use_rb:
            for rep in range(args.reps):
                for tname, port in (("kv", node.port), ("redis", redis.port if redis else None)):
                    if port is None:
                        continue
                    r = run_redis_benchmark(port, args.rb_requests, args.rb_clients)
                    r["rep"] = rep + 1
                    rb[tname].append(r)
                    print(f"  rep {rep + 1} {tname:5s} redis-benchmark: SET {r.get('SET', {}).get('ops_per_s')} "
                          f"GET {r.get('GET', {}).get('ops_per_s')} ops/s, no error: {r['no_error']} "
                          f"({r['seconds']}s){'  ' + str(r['error_lines']) if r['error_lines'] else ''}", flush=True)
        st = line_call(node.port, "STATUS")
        node_alive = node.popen.poll() is None and st is not None
    finally:
        if node:
            node.stop()
        if redis:
            redis.stop()
    env["loadavg_end"] = loadavg()
    summary = {t: {cfg: summarize(runs) for cfg, runs in d.items()} for t, d in raw.items()}
    out = {"benchmark": "node", "fsync": args.fsync, "args": vars(args), "environment": env,
           "seconds": round(time.monotonic() - t0, 1), "node_alive_at_end": node_alive,
           "summary": summary, "runs": raw, "redis_benchmark": rb}
    # the DESIGN/issue target at 50 connections: >= 0.25 x Redis
    checks = {}
    for op in ("SET", "GET"):
        k = summary["kv"].get(f"{op}/resp/50")
        r = summary.get("redis", {}).get(f"{op}/resp/50")
        kb = median([x.get(op, {}).get("ops_per_s") for x in rb["kv"]])
        rbv = median([x.get(op, {}).get("ops_per_s") for x in rb["redis"]])
        checks[op] = {"own_client_ratio": round(k["ops_per_s"] / r["ops_per_s"], 3) if k and r and r["ops_per_s"] else None,
                      "redis_benchmark_ratio": round(kb / rbv, 3) if kb and rbv else None}
    out["ratio_vs_redis_50_conns"] = checks
    path = write_json(args.json or "benchmark_node.json", out)
    print()
    print(f"Own load generator, standalone node vs redis-server (appendfsync {args.fsync}); "
          f"medians of {args.reps} reps of {args.duration}s:")
    print(throughput_tables(summary))
    if use_rb:
        print()
        print(f"redis-benchmark -t set,get -n {args.rb_requests} -c {args.rb_clients} -q; medians of {args.reps} reps:")
        print(rb_table(rb))
    print()
    print(f"loadavg start {env['loadavg_start']} end {env['loadavg_end']}; node alive at end: {node_alive}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
