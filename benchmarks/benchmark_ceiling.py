#!/usr/bin/env python3
"""benchmark_ceiling.py: how close the 3-node cluster runs to the ceiling of its own server model.

    python benchmarks/benchmark_ceiling.py                 # 3 interleaved reps, ~6 min
    python benchmarks/benchmark_ceiling.py --reps 1 -n 20000 --no-redis
    git worktree add /tmp/kv-old HEAD~1 && python benchmarks/benchmark_ceiling.py --compare old=/tmp/kv-old

Side by side, in one run, with the same load (`redis-benchmark -c 50 -d 16 -r 100000`):
  bare      a bare socketserver.ThreadingTCPServer answering RESP SET/GET from a dict, in its
            own process: the ceiling of a thread-per-connection Python server
  gc        the same, plus an fsync'd append of every SET with group commit (concurrent SETs
            share one fsync): the ceiling of a durable one
  kv        KV Store: 3 nodes on loopback (kv_localcluster.LocalCluster), fsync always,
            majority commit, lease reads, load on the primary
  redis     Redis 7: a primary + 2 replicas, appendonly yes, appendfsync always
  bare1/gc1 with --pinned-ceilings: the same two, every thread on one CPU (as KV's primary)
  kv:NAME   with --compare NAME=DIR: the same cluster run from another checkout (an A/B of
            two commits, measured in the same interleaved reps)
For each: ops/s, p50/p99 (redis-benchmark --csv), and CPU microseconds per operation summed
over every process of the target (the 3 nodes; the 3 redis-servers), a figure the noise of a
shared machine moves far less than ops/s.  Then SET latency with one client.  Ratios are taken
within a repetition (the targets of one rep run back to back) and the median over reps is
reported.  Writes benchmarks/results/benchmark_ceiling.json.  Every process it starts is stopped
by PID.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import psutil  # noqa: E402

import benchmark_node as B  # noqa: E402
from kv_localcluster import wait_until  # noqa: E402

HOST = "127.0.0.1"


# ----------------------------------------------------------------------------- the ceiling server
class GroupCommitLog:
    """An append-only file where concurrent appenders share fsyncs (the pattern of kv_storage)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()
        self.sync_lock = threading.Lock()
        self.seq = 0
        self.synced = 0

    def append(self, data: bytes) -> None:
        with self.lock:
            os.write(self.fd, data)
            self.seq += 1
            mine = self.seq
        with self.sync_lock:
            if self.synced >= mine:
                return
            target = self.seq
            os.fsync(self.fd)
            self.synced = target


class CeilingHandler(socketserver.StreamRequestHandler):
    """RESP arrays in, SET/GET against a dict; the least a thread-per-connection server does."""

    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rf = self.rfile
        send = self.request.sendall
        store = self.server.store
        wal = self.server.wal
        while True:
            line = rf.readline(1 << 20)
            if not line:
                return
            if line[:1] != b"*":
                send(b"-ERR inline commands are not served here\r\n")
                continue
            args = []
            for _ in range(int(line[1:])):
                n = int(rf.readline(64)[1:])
                args.append(rf.read(n + 2)[:-2])
            name = args[0].upper()
            if name == b"SET":
                if wal is not None:
                    wal.append(b"%d %b %b\n" % (len(args[2]), args[1], args[2]))
                store[args[1]] = args[2]
                send(b"+OK\r\n")
            elif name == b"GET":
                v = store.get(args[1])
                send(b"$-1\r\n" if v is None else b"$%d\r\n%b\r\n" % (len(v), v))
            elif name == b"PING":
                send(b"+PONG\r\n")
            elif name == b"CONFIG":
                send(b"*0\r\n")
            else:
                send(b"-ERR unknown command\r\n")


class CeilingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port: int, wal_dir: str | None):
        self.store: dict = {}
        self.wal = GroupCommitLog(os.path.join(wal_dir, "wal.log")) if wal_dir else None
        super().__init__((HOST, port), CeilingHandler)


def serve(port: int, wal_dir: str | None, cpu: int | None = None) -> int:
    threading.stack_size(512 * 1024)
    if cpu is not None:          # before any thread exists: every thread inherits it
        os.sched_setaffinity(0, {cpu})
    with CeilingServer(port, wal_dir) as srv:
        srv.serve_forever(poll_interval=0.1)
    return 0


class CeilingProc:
    """The ceiling server as its own process (as a node is), on a free port, stopped by PID."""

    def __init__(self, fsync: bool, cpu: int | None = None):
        self.port = B.free_port()
        self.dir = tempfile.mkdtemp(prefix="kvbench-ceiling-") if fsync else None
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", str(self.port)]
        if self.dir:
            cmd += ["--wal-dir", self.dir]
        if cpu is not None:
            cmd += ["--serve-cpu", str(cpu)]
        self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: B.redis_ping(self.port), 15, "the ceiling server to answer PING", interval=0.05)

    @property
    def pids(self) -> list[int]:
        return [self.popen.pid]

    def stop(self) -> None:
        B.stop_pid(self.popen)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- measuring
def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def redis_benchmark(port: int, test: str, n: int, clients: int, extra=(), timeout: float = 600) -> dict:
    """One `redis-benchmark --csv` run of one test; ops/s, latency percentiles, error lines."""
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(port), "-t", test, "-n", str(n), "-c", str(clients),
           "-d", "16", "-r", "100000", "--csv", *extra]
    t0 = time.monotonic()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, err, rc = cp.stdout, cp.stderr, cp.returncode
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s", "command": " ".join(cmd)}
    res = {"command": " ".join(cmd), "exit_code": rc, "seconds": round(time.monotonic() - t0, 2)}
    rows = [r for r in csv.reader(io.StringIO(out)) if r]
    for r in rows[1:]:
        if r[0].upper().startswith(test.upper()):
            res.update(ops_per_s=float(r[1]), p50_ms=float(r[4]), p99_ms=float(r[6]), max_ms=float(r[7]))
    errors = [ln for ln in (out + "\n" + err).splitlines() if "rror" in ln or "READONLY" in ln or "NOQUORUM" in ln]
    res["errors"] = errors[:5]
    if "ops_per_s" not in res:
        res["error"] = (err or out).strip()[-300:] or "no result line"
    return res


def measure(port: int, pids: list[int], test: str, n: int, clients: int, extra=()) -> dict:
    c0 = cpu_seconds(pids)
    r = redis_benchmark(port, test, n, clients, extra)
    c1 = cpu_seconds(pids)
    if r.get("ops_per_s"):
        ops = n
        r["cpu_us_per_op"] = round((c1 - c0) * 1e6 / ops, 1)
    return r


# ----------------------------------------------------------------------------- targets
class KVTarget:
    def __init__(self, n: int = 3, fsync: str = "always", extra_args=(), server_script: str | None = None):
        from kv_localcluster import LocalCluster
        kw = {"server_script": server_script} if server_script else {}
        self.cluster = LocalCluster(n=n, fsync=fsync, extra_args=extra_args, **kw)
        self.cluster.start()
        self.primary = self.cluster.wait_for_single_primary(20)

    @property
    def port(self) -> int:
        self.primary = self.cluster.wait_for_single_primary(20)
        return self.cluster.port(self.primary)

    @property
    def pids(self) -> list[int]:
        return [p for p in (self.cluster.pid(i) for i in self.cluster.ids) if p]

    def check(self) -> dict:
        st = self.cluster.wait_converged(60)
        return {"converged": True, "last_applied": {k: v["last_applied"] for k, v in st.items()},
                "terms": sorted({v["election_term"] for v in st.values()})}

    def stop(self) -> None:
        self.cluster.cleanup()


class RedisTarget:
    def __init__(self, replicas: int = 2):
        import benchmark_cluster as BC
        self.r = BC.RedisReplicated(replicas=replicas).start()

    @property
    def port(self) -> int:
        return self.r.port

    @property
    def pids(self) -> list[int]:
        return [x.popen.pid for x in [self.r.primary, *self.r.replicas]]

    def stop(self) -> None:
        self.r.stop()


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--wal-dir", help=argparse.SUPPRESS)
    p.add_argument("--serve-cpu", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pinned-ceilings", action="store_true",
                   help="also run the two ceiling servers with every thread on one CPU (bare1, gc1), "
                        "as a KV primary runs under --primary-cpu auto")
    p.add_argument("--reps", type=int, default=3, help="repetitions, interleaved (default 3)")
    p.add_argument("-n", type=int, default=50_000, help="requests per redis-benchmark run (default 50000)")
    p.add_argument("--clients", type=int, default=50, help="connections (default 50)")
    p.add_argument("--latency-n", type=int, default=5_000, help="SETs of the 1-client latency run (default 5000)")
    p.add_argument("--no-redis", action="store_true", help="skip Redis")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                   help="also measure the cluster of another checkout (DIR/kv_store_server.py, e.g. a "
                        "`git worktree` of an older commit) as target kv:NAME, side by side (repeatable)")
    p.add_argument("--json", default="benchmark_ceiling.json", help="result file name in benchmarks/results/")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.wal_dir, args.serve_cpu)
    if not B.have_redis_benchmark():
        print("error: redis-benchmark is needed (apt-get install redis-tools)", file=sys.stderr)
        return 2
    targets: dict = {}
    t_start = time.time()
    load0 = B.loadavg()
    try:
        targets["bare"] = CeilingProc(fsync=False)
        targets["gc"] = CeilingProc(fsync=True)
        if args.pinned_ceilings:
            cpu = min(os.sched_getaffinity(0))
            targets["bare1"] = CeilingProc(fsync=False, cpu=cpu)
            targets["gc1"] = CeilingProc(fsync=True, cpu=cpu)
        targets["kv"] = KVTarget()
        for spec in args.compare:
            name, _, tree = spec.partition("=")
            script = os.path.join(os.path.abspath(tree), "kv_store_server.py")
            if not name or not os.path.isfile(script):
                p.error(f"--compare {spec!r}: want NAME=DIR with DIR/kv_store_server.py")
            targets[f"kv:{name}"] = KVTarget(server_script=script)
        if not args.no_redis and B.have_redis_server():
            targets["redis"] = RedisTarget()
        runs: dict = {name: {"set": [], "get": [], "set_c1": []} for name in targets}
        for rep in range(args.reps):
            for name, t in targets.items():
                for test in ("set", "get"):
                    r = measure(t.port, t.pids, test, args.n, args.clients)
                    runs[name][test].append(r)
                    print(f"rep {rep + 1} {name:5s} {test.upper()} c={args.clients}: "
                          f"{r.get('ops_per_s', 0):9,.0f} ops/s  p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} ms  "
                          f"{r.get('cpu_us_per_op')} CPU us/op {r.get('error', '')} {r['errors'] or ''}", flush=True)
                r = measure(t.port, t.pids, "set", args.latency_n, 1)
                runs[name]["set_c1"].append(r)
                print(f"rep {rep + 1} {name:5s} SET c=1: p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} ms "
                      f"{r.get('ops_per_s', 0):,.0f} ops/s", flush=True)
        kv_check = targets["kv"].check()
    finally:
        for t in targets.values():
            t.stop()
    med = B.median
    summary: dict = {}
    for name, tests in runs.items():
        summary[name] = {}
        for test, rs in tests.items():
            summary[name][test] = {k: med([r.get(k) for r in rs]) for k in ("ops_per_s", "p50_ms", "p99_ms", "cpu_us_per_op")}
            summary[name][test]["reps_ops_per_s"] = [r.get("ops_per_s") for r in rs]
            summary[name][test]["errors"] = [e for r in rs for e in r.get("errors", [])][:5]
    ratios: dict = {}
    for test in ("set", "get"):
        per_rep = {}
        for other in ("bare", "gc", "bare1", "gc1", "redis", *(t for t in runs if t.startswith("kv:"))):
            if other in runs:
                per_rep[other] = [ratio(a.get("ops_per_s"), b.get("ops_per_s"))
                                  for a, b in zip(runs["kv"][test], runs[other][test])]
        ratios[test] = {f"kv/{o}": med(v) for o, v in per_rep.items()}
        ratios[test].update({f"kv/{o} per rep": v for o, v in per_rep.items()})
        for o in runs:
            if o == "redis" or o.startswith("kv:"):
                ratios[test][f"cpu kv/{o}"] = med([ratio(a.get("cpu_us_per_op"), b.get("cpu_us_per_op"))
                                                   for a, b in zip(runs["kv"][test], runs[o][test])])
    headers = ["target", "op", "ops/s (median)", "p50 ms", "p99 ms", "CPU us/op", "ops/s per rep"]
    rows = []
    for name in runs:
        for test in ("set", "get", "set_c1"):
            s = summary[name][test]
            label = {"set": f"SET c={args.clients}", "get": f"GET c={args.clients}", "set_c1": "SET c=1"}[test]
            rows.append([name, label, B.fmt(s["ops_per_s"]), s["p50_ms"], s["p99_ms"], s["cpu_us_per_op"],
                         " ".join(B.fmt(x) for x in s["reps_ops_per_s"])])
    print()
    print(f"redis-benchmark -c {args.clients} -d 16 -r 100000 -n {args.n}, medians of {args.reps} interleaved reps")
    print(B.render(headers, rows))
    print()
    for test in ("set", "get"):
        print(f"{test.upper()}: " + ", ".join(f"{k} {v}" for k, v in ratios[test].items() if "per rep" not in k))
    print(f"KV cluster afterwards: {kv_check}")
    result = {"benchmark": "ceiling", "args": vars(args), "environment": B.environment(),
              "loadavg": {"start": load0, "end": B.loadavg()}, "started": t_start,
              "summary": summary, "ratios": ratios, "kv_check": kv_check, "runs": runs}
    print("wrote", B.write_json(args.json, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
