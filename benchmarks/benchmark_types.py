#!/usr/bin/env python3
"""benchmark_types.py: the value types (lists, sets, hashes, sorted sets) under load, beside Redis.

    python benchmarks/benchmark_types.py throughput            # 3 interleaved reps, -n 50000
    python benchmarks/benchmark_types.py pipeline              # -P 16; this commit, 6a1bd54, Redis
    python benchmarks/benchmark_types.py memory                # 1M-field hash (+1M-member zset)
    python benchmarks/benchmark_types.py restart               # 1M keys, SNAPSHOT, kill -9, serve
    python benchmarks/benchmark_types.py throughput --reps 1 -n 5000

Subcommands (each prints markdown tables and writes benchmarks/results/types-<sub>.json):
  throughput  redis-benchmark -t lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange_100
              -n N -c 50 --csv against the primary of a fresh 3-node cluster and against a
              redis-server (appendonly yes, appendfsync always, as our fsync always), one
              redis-benchmark invocation per test in that order (so CPU is read per test), KV
              and Redis alternating test by test, reps interleaved; ops/s, ratio, CPU us/op (KV:
              the 3 nodes' CPU summed; Redis: redis-server's).  Every command is sent once
              with redis-py first (a command the node does not know is reported "not
              registered" and not run), and the dataset is checked after every test (LLEN
              mylist, SCARD myset, HLEN myhash, ZCARD myzset: what N error-free runs leave).
  pipeline    redis-benchmark -t incr,hset -P 16 -n N -c 50 against this commit's cluster, the
              cluster of commit 6a1bd54 (before the type registry: `git archive` into a temp
              dir; it has no HSET) and Redis: ops/s, CPU us/op, Raft log entries per op (the
              primary's last_log_index), and fsync+fdatasync calls per op counted by
              `perf stat -e syscalls:sys_enter_fsync,...` on each process (nodes expose no
              fsync counter), as evidence of whether pipelined writes share commits.
  memory      one hash of 1,000,000 fields (field:i -> value:i, pipelined HSET of 1000 fields a
              command), and a sorted set of 1,000,000 members (score i) when ZADD is registered:
              RSS of every node after convergence beside redis-server's (INFO used_memory_rss and
              psutil), ratio largest node / Redis.
  restart     1,000,000 string keys (key:i -> value:i, pipelined MSET of 1000 keys), SNAPSHOT on
              every node, then --reps times kill -9 of all 3 nodes, restart, time until the
              primary answers GET of a loaded key (benchmark_recovery.py's method, through the
              cluster's own log and snapshot instead of a seeded snapshot file).
Every process started (nodes, redis-server, redis-benchmark, perf) is stopped by PID; servers
listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

import psutil  # noqa: E402
import redis  # noqa: E402

import benchmark_node as B  # noqa: E402
from benchmark_recovery import rss_mb  # noqa: E402
from kv_localcluster import LocalCluster, wait_until  # noqa: E402

HOST = "127.0.0.1"
BEFORE_COMMIT = "6a1bd54"
THROUGHPUT_TESTS = ["lpush", "rpush", "lpop", "rpop", "sadd", "hset", "spop", "zadd", "zpopmin", "lrange_100"]
PIPELINE_TESTS = ["incr", "hset"]
# the command each redis-benchmark test sends (redis-benchmark 7.0 without -r), sent once with
# redis-py first to see whether the server knows it
PROBE = {"lpush": ["LPUSH", "probe:list", "x"], "rpush": ["RPUSH", "probe:list", "x"],
         "lpop": ["LPOP", "probe:list"], "rpop": ["RPOP", "probe:list"],
         "sadd": ["SADD", "probe:set", "x"], "hset": ["HSET", "probe:hash", "f", "x"],
         "spop": ["SPOP", "probe:set"], "zadd": ["ZADD", "probe:zset", "0", "x"],
         "zpopmin": ["ZPOPMIN", "probe:zset"], "lrange_100": ["LRANGE", "probe:list", "0", "99"],
         "incr": ["INCR", "probe:counter"]}
PROBE_KEYS = ["probe:list", "probe:set", "probe:hash", "probe:zset", "probe:counter"]
BENCH_KEYS = ["mylist", "myset", "myhash", "myzset", "counter:__rand_int__"]


# ----------------------------------------------------------------------------- targets
def cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


class KV:
    """A fresh 3-node LocalCluster (optionally the server of another checkout), load on the primary."""

    def __init__(self, name: str = "kv", server_script: str | None = None, extra_args=()):
        self.name = name
        kw = {"server_script": server_script} if server_script else {}
        self.cluster = LocalCluster(n=3, extra_args=tuple(extra_args), **kw)
        self.cluster.start(timeout=60)
        self.primary = self.cluster.wait_for_single_primary(60)

    @property
    def port(self) -> int:
        self.primary = self.cluster.wait_for_single_primary(30)
        return self.cluster.port(self.primary)

    @property
    def pids(self) -> list[int]:
        return [self.cluster.pid(i) for i in self.cluster.ids]

    def client(self, timeout: float = 30) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout)

    def log_index(self) -> int:
        return self.cluster.status(self.primary, timeout=5)["last_log_index"]

    def rss_mb(self) -> dict:
        return {i: rss_mb(self.cluster.pid(i)) for i in self.cluster.ids}

    def converge(self, timeout: float = 300) -> dict:
        st = self.cluster.wait_converged(timeout)
        return {"last_applied": {k: v["last_applied"] for k, v in st.items()},
                "digests_equal": len({v["digest"] for v in st.values()}) == 1}

    def stop(self) -> None:
        self.cluster.cleanup()


class Redis:
    """redis-server on a free 127.0.0.1 port (benchmark_node.RedisProc: AOF, appendfsync always)."""

    name = "redis"

    def __init__(self, appendfsync: str = "always"):
        self.proc = B.RedisProc(appendfsync=appendfsync).start()
        self.port = self.proc.port

    @property
    def pids(self) -> list[int]:
        return [self.proc.popen.pid]

    def client(self, timeout: float = 30) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout)

    def log_index(self) -> None:
        return None

    def stop(self) -> None:
        self.proc.stop()


def stop_all(targets) -> None:
    for t in targets:
        if t is not None:
            t.stop()


# ----------------------------------------------------------------------------- measuring
def probe(target, tests) -> dict:
    """Send each test's command once; test -> None (works) or the error text."""
    r = target.client()
    out = {}
    try:
        for t in tests:
            try:
                r.execute_command(*PROBE[t])
                out[t] = None
            except redis.ResponseError as e:
                out[t] = str(e)
        r.delete(*PROBE_KEYS)
    finally:
        r.close()
    return out


def not_registered(err: str | None) -> bool:
    return err is not None and err.lower().startswith("unknown command")


def redis_benchmark(port: int, test: str, n: int, clients: int, extra=(), timeout: float = 900) -> dict:
    """One `redis-benchmark --csv` invocation of one test: its CSV rows, exit code, error lines."""
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(port), "-t", test, "-n", str(n), "-c", str(clients),
           *extra, "--csv"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return {"command": " ".join(cmd), "error": f"timed out after {timeout}s", "rows": {}, "errors": [err[-300:]]}
    rows = {}
    for r in csv.reader(io.StringIO(out)):
        if len(r) >= 8 and r[0] != "test":
            rows[r[0]] = {"ops_per_s": float(r[1]), "p50_ms": float(r[4]), "p99_ms": float(r[6]),
                          "max_ms": float(r[7])}
    errors = [ln for ln in (out + "\n" + err).splitlines() if "rror" in ln or ln.startswith("-")]
    res = {"command": " ".join(cmd), "exit_code": p.returncode, "seconds": round(time.monotonic() - t0, 2),
           "rows": rows, "errors": errors[:5]}
    if p.returncode != 0 or not rows:
        res["error"] = (err or out).strip()[-300:] or f"exit code {p.returncode}, no result line"
    return res


def row_for(res: dict, test: str) -> dict | None:
    """The CSV row of `test` (LRANGE_100's invocation also has its LPUSH prefill row)."""
    want = test.upper()
    for name, row in res["rows"].items():
        if name.upper().startswith(want) and "needed" not in name:
            return row
    return None


class FsyncCounter:
    """`perf stat` counting fsync + fdatasync syscalls of some processes until stop() (by PID)."""

    EVENTS = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"

    def __init__(self, pids):
        self.pids = list(pids)
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="kvbench-perf-")
        if shutil.which("perf") is None:
            return
        for pid in self.pids:
            out = os.path.join(self.dir, f"{pid}.csv")
            self.procs.append((pid, out, subprocess.Popen(
                ["perf", "stat", "-x", ",", "-e", self.EVENTS, "-p", str(pid), "-o", out],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)))
        time.sleep(0.3)     # perf attaches before the load starts (it reports nothing sooner)

    def stop(self) -> dict | None:
        if not self.procs:
            return None
        counts = {}
        for pid, out, p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
            n = 0
            ok = False
            with open(out) as f:
                for ln in f:
                    parts = ln.strip().split(",")
                    if len(parts) > 2 and parts[2].startswith("syscalls:") and parts[0].isdigit():
                        n += int(parts[0])
                        ok = True
            counts[pid] = n if ok else None
        shutil.rmtree(self.dir, ignore_errors=True)
        return counts


def measure(target, test: str, n: int, clients: int, extra=(), count_fsyncs: bool = False) -> dict:
    pids = target.pids
    idx0 = target.log_index()
    fc = FsyncCounter(pids) if count_fsyncs else None
    c0 = cpu_seconds(pids)
    res = redis_benchmark(target.port, test, n, clients, extra)
    c1 = cpu_seconds(pids)
    fs = fc.stop() if fc else None
    idx1 = target.log_index()
    row = row_for(res, test)
    res["cpu_s"] = round(c1 - c0, 3)
    if row:
        res.update(row)
        requests = n * (2 if test.startswith("lrange") else 1)   # LRANGE's run has its LPUSH prefill
        res["cpu_us_per_request"] = round((c1 - c0) * 1e6 / requests, 1)
        if test.startswith("lrange"):
            res["cpu_us_per_op"] = None     # filled in by the caller: minus the prefill's LPUSH cost
        else:
            res["cpu_us_per_op"] = res["cpu_us_per_request"]
    if idx0 is not None:
        res["log_entries"] = idx1 - idx0
        res["log_entries_per_op"] = round((idx1 - idx0) / n, 4)
    if fs is not None:
        res["fsyncs"] = {str(k): v for k, v in fs.items()}
        if all(v is not None for v in fs.values()):
            res["fsyncs_per_op"] = round(sum(fs.values()) / n, 4)
            res["fsyncs_per_op_primary"] = round(fs[pids[0] if len(pids) == 1 else target.cluster.pid(target.primary)] / n, 4)
    return res


def check_value(target, cmd: list[str], want) -> dict:
    r = target.client()
    try:
        got = r.execute_command(*cmd)
    finally:
        r.close()
    if isinstance(got, bytes):
        got = int(got) if got.lstrip(b"-").isdigit() else got.decode()
    ok = got in want if isinstance(want, range) else got == want
    if isinstance(want, range):
        want = f"{want.start}..{want.stop - 1}"
    return {"check": " ".join(cmd), "want": want, "got": got, "ok": ok}


def ratio(a, b, nd=3):
    return round(a / b, nd) if a and b else None


def fmt_ops(x):
    return "-" if x is None else f"{x:,.0f}"


# ----------------------------------------------------------------------------- throughput
def throughput_expect(test: str, n: int) -> list[str] | None:
    """(command, value after this test) for an error-free run, tests run in THROUGHPUT_TESTS order."""
    return {"lpush": (["LLEN", "mylist"], n), "rpush": (["LLEN", "mylist"], 2 * n),
            "lpop": (["LLEN", "mylist"], n), "rpop": (["LLEN", "mylist"], 0),
            "sadd": (["SCARD", "myset"], 1), "hset": (["HLEN", "myhash"], 1), "spop": (["SCARD", "myset"], 0),
            "zadd": (["ZCARD", "myzset"], 1), "zpopmin": (["ZCARD", "myzset"], 0),
            "lrange_100": (["LLEN", "mylist"], n)}[test]


def cmd_throughput(args) -> dict:
    tests = args.tests.split(",")
    targets = []
    try:
        kv = KV()
        targets.append(kv)
        rd = Redis() if not args.no_redis else None
        targets.append(rd)
        live = [t for t in targets if t is not None]
        probes = {t.name: probe(t, tests) for t in live}
        for name, pr in probes.items():
            for test, err in pr.items():
                if err:
                    print(f"{name}: {test} probe answered: {err}", flush=True)
        runs = {t.name: {test: [] for test in tests} for t in live}
        for rep in range(args.reps):
            for t in live:
                c = t.client()
                c.delete(*BENCH_KEYS)
                c.close()
            for test in tests:
                for t in live:
                    if probes[t.name][test] is not None:
                        continue
                    r = measure(t, test, args.n, args.clients)
                    r["dataset"] = check_value(t, *throughput_expect(test, args.n))
                    runs[t.name][test].append(r)
                    print(f"rep {rep + 1} {t.name:5s} {test:10s} {r.get('ops_per_s', 0):9,.0f} ops/s  "
                          f"cpu {r.get('cpu_us_per_request')} us/request  {r['dataset']['check']} = "
                          f"{r['dataset']['got']} (want {r['dataset']['want']})  {r.get('error', '')} "
                          f"{r['errors'] or ''}", flush=True)
            for t in live:      # LRANGE_100's CPU: its invocation minus its LPUSH prefill's (this rep)
                if runs[t.name].get("lrange_100") and runs[t.name].get("lpush"):
                    lr, lp = runs[t.name]["lrange_100"][-1], runs[t.name]["lpush"][-1]
                    if lr.get("cpu_us_per_request") is not None and lp.get("cpu_us_per_op") is not None:
                        lr["cpu_us_per_op"] = round(lr["cpu_s"] * 1e6 / args.n - lp["cpu_us_per_op"], 1)
        kv_check = kv.converge(120)
    finally:
        stop_all(targets)
    med = B.median
    rows, summary = [], {}
    for test in tests:
        k = runs["kv"][test]
        rr = runs.get("redis", {}).get(test, [])
        if probes["kv"][test] is not None:
            state = "not registered" if not_registered(probes["kv"][test]) else f"error: {probes['kv'][test]}"
        else:
            bad = [r for r in k if r.get("error") or r["errors"] or not r["dataset"]["ok"]]
            state = "0 errors, dataset ok" if not bad else f"{len(bad)} of {len(k)} reps with errors/dataset mismatch"
        s = {"kv_ops_per_s": med([r.get("ops_per_s") for r in k]),
             "redis_ops_per_s": med([r.get("ops_per_s") for r in rr]),
             "ratio": med([ratio(a.get("ops_per_s"), b.get("ops_per_s")) for a, b in zip(k, rr)]),
             "kv_cpu_us_per_op": med([r.get("cpu_us_per_op") for r in k]),
             "redis_cpu_us_per_op": med([r.get("cpu_us_per_op") for r in rr]),
             "cpu_ratio": med([ratio(a.get("cpu_us_per_op"), b.get("cpu_us_per_op"), 2) for a, b in zip(k, rr)]),
             "kv_reps_ops_per_s": [r.get("ops_per_s") for r in k], "kv_state": state}
        summary[test] = s
        rows.append([test, fmt_ops(s["kv_ops_per_s"]), fmt_ops(s["redis_ops_per_s"]), s["ratio"] if s["ratio"] else "-",
                     s["kv_cpu_us_per_op"] if s["kv_cpu_us_per_op"] is not None else "-",
                     s["redis_cpu_us_per_op"] if s["redis_cpu_us_per_op"] is not None else "-",
                     s["cpu_ratio"] if s["cpu_ratio"] else "-",
                     " ".join(fmt_ops(x) for x in s["kv_reps_ops_per_s"]) or "-", state])
    table = B.render(["test", "KV ops/s", "Redis ops/s", "KV/Redis", "KV CPU us/op (3 nodes)", "Redis CPU us/op",
                      "CPU KV/Redis", "KV ops/s per rep", "KV errors"], rows)
    print()
    print(f"redis-benchmark -t <test> -n {args.n} -c {args.clients} --csv, one test per invocation, "
          f"medians of {args.reps} interleaved reps")
    print(table)
    print(f"KV cluster afterwards: {kv_check}")
    return {"summary": summary, "probes": probes, "kv_check": kv_check, "runs": runs, "table": table}


# ----------------------------------------------------------------------------- pipeline
def checkout(commit: str) -> str:
    """`git archive` of commit into a fresh temp dir (the caller removes it)."""
    d = tempfile.mkdtemp(prefix=f"kvbench-{commit}-")
    arch = subprocess.run(["git", "-C", REPO, "archive", commit], capture_output=True, timeout=120, check=True)
    subprocess.run(["tar", "-x", "-C", d], input=arch.stdout, capture_output=True, timeout=120, check=True)
    return d


def pipeline_expect(test: str, n: int, clients: int, pipeline: int):
    """With -P, redis-benchmark issues a few requests past -n (its last batches complete: Redis's
    own count shows the same), so INCR's counter is checked in [n, n + clients * P)."""
    return {"incr": (["GET", "counter:__rand_int__"], range(n, n + clients * pipeline)),
            "hset": (["HLEN", "myhash"], 1)}[test]


def cmd_pipeline(args) -> dict:
    tests = args.tests.split(",")
    extra = ["-P", str(args.pipeline)]
    targets = []
    before_dir = None
    try:
        targets.append(KV("kv"))
        if args.before:
            before_dir = checkout(args.before)
            targets.append(KV(f"kv@{args.before}", server_script=os.path.join(before_dir, "kv_store_server.py")))
        if not args.no_redis:
            targets.append(Redis())
        probes = {t.name: probe(t, tests) for t in targets}
        for name, pr in probes.items():
            for test, err in pr.items():
                if err:
                    print(f"{name}: {test} probe answered: {err}", flush=True)
        runs = {t.name: {test: [] for test in tests} for t in targets}
        for rep in range(args.reps):
            for t in targets:
                c = t.client()
                c.delete(*BENCH_KEYS)
                c.close()
            for test in tests:
                for t in targets:
                    if probes[t.name][test] is not None:
                        continue
                    r = measure(t, test, args.n, args.clients, extra, count_fsyncs=not args.no_perf)
                    r["dataset"] = check_value(t, *pipeline_expect(test, args.n, args.clients, args.pipeline))
                    runs[t.name][test].append(r)
                    print(f"rep {rep + 1} {t.name:12s} {test:5s} {r.get('ops_per_s', 0):9,.0f} ops/s  "
                          f"cpu {r.get('cpu_us_per_op')} us/op  log entries/op {r.get('log_entries_per_op')}  "
                          f"fsyncs/op {r.get('fsyncs_per_op')} (primary {r.get('fsyncs_per_op_primary')})  "
                          f"{r['dataset']['check']} = {r['dataset']['got']} (want {r['dataset']['want']})  "
                          f"{r.get('error', '')} {r['errors'] or ''}", flush=True)
        checks = {t.name: t.converge(120) for t in targets if isinstance(t, KV)}
    finally:
        stop_all(targets)
        if before_dir:
            shutil.rmtree(before_dir, ignore_errors=True)
    med = B.median
    rows, summary = [], {}
    for test in tests:
        for name in runs:
            rs = runs[name][test]
            rr = runs.get("redis", {}).get(test, [])
            if probes[name][test] is not None:
                state = "not registered" if not_registered(probes[name][test]) else f"error: {probes[name][test]}"
            else:
                bad = [r for r in rs if r.get("error") or r["errors"] or not r["dataset"]["ok"]]
                state = "0 errors, dataset ok" if not bad else f"{len(bad)} of {len(rs)} reps with errors/dataset mismatch"
            s = {k: med([r.get(k) for r in rs]) for k in
                 ("ops_per_s", "cpu_us_per_op", "log_entries_per_op", "fsyncs_per_op", "fsyncs_per_op_primary")}
            s["reps_ops_per_s"] = [r.get("ops_per_s") for r in rs]
            s["state"] = state
            if name != "redis":
                s["ops_ratio_to_redis"] = med([ratio(a.get("ops_per_s"), b.get("ops_per_s")) for a, b in zip(rs, rr)])
                s["cpu_ratio_to_redis"] = med([ratio(a.get("cpu_us_per_op"), b.get("cpu_us_per_op"), 2) for a, b in zip(rs, rr)])
            summary.setdefault(test, {})[name] = s
            d = lambda x: "-" if x is None else x
            rows.append([test, name, fmt_ops(s["ops_per_s"]), d(s.get("ops_ratio_to_redis")), d(s["cpu_us_per_op"]),
                         d(s.get("cpu_ratio_to_redis")), d(s["log_entries_per_op"]), d(s["fsyncs_per_op"]),
                         d(s["fsyncs_per_op_primary"]), " ".join(fmt_ops(x) for x in s["reps_ops_per_s"]) or "-", state])
    for test in tests:     # after / before, per rep
        a, b = runs["kv"].get(test, []), runs.get(f"kv@{args.before}", {}).get(test, [])
        if a and b:
            summary[test]["after/before"] = {
                "ops": med([ratio(x.get("ops_per_s"), y.get("ops_per_s")) for x, y in zip(a, b)]),
                "cpu": med([ratio(x.get("cpu_us_per_op"), y.get("cpu_us_per_op"), 2) for x, y in zip(a, b)])}
    table = B.render(["test", "target", "ops/s", "/Redis", "CPU us/op", "CPU /Redis", "log entries/op",
                      "fsyncs/op (all)", "fsyncs/op (primary)", "ops/s per rep", "errors"], rows)
    print()
    print(f"redis-benchmark -t <test> -P {args.pipeline} -n {args.n} -c {args.clients} --csv, "
          f"medians of {args.reps} interleaved reps")
    print(table)
    for test in tests:
        if "after/before" in summary[test]:
            print(f"{test.upper()} after/before (median of per-rep ratios): {summary[test]['after/before']}")
    print(f"KV clusters afterwards: {checks}")
    return {"summary": summary, "probes": probes, "kv_check": checks, "runs": runs, "table": table}


# ----------------------------------------------------------------------------- main
SUBCOMMANDS = {"throughput": cmd_throughput, "pipeline": cmd_pipeline}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sub", required=True)
    t = sub.add_parser("throughput", help="redis-benchmark per type command, KV beside Redis")
    t.add_argument("-n", type=int, default=50_000, help="requests per test (default 50000)")
    t.add_argument("--clients", type=int, default=50, help="connections (default 50)")
    t.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    t.add_argument("--tests", default=",".join(THROUGHPUT_TESTS), help="comma-separated redis-benchmark tests")
    t.add_argument("--no-redis", action="store_true", help="skip Redis")
    t = sub.add_parser("pipeline", help="redis-benchmark -P 16 INCR/HSET: this commit, the before commit, Redis")
    t.add_argument("-n", type=int, default=100_000, help="requests per test (default 100000)")
    t.add_argument("--clients", type=int, default=50, help="connections (default 50)")
    t.add_argument("-P", dest="pipeline", type=int, default=16, help="pipelined requests per connection (default 16)")
    t.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    t.add_argument("--tests", default=",".join(PIPELINE_TESTS), help="comma-separated redis-benchmark tests")
    t.add_argument("--before", default=BEFORE_COMMIT, help=f"the commit to compare with (default {BEFORE_COMMIT}; '' = none)")
    t.add_argument("--no-perf", action="store_true", help="do not count fsync calls with perf stat")
    t.add_argument("--no-redis", action="store_true", help="skip Redis")
    for s in sub.choices.values():
        s.add_argument("--json", default=None, help="result file in benchmarks/results/ (default types-<sub>.json)")
    args = p.parse_args(argv)
    if not B.have_redis_benchmark():
        print("error: redis-benchmark is needed (apt-get install redis-tools)", file=sys.stderr)
        return 2
    t_start = time.time()
    load0 = B.loadavg()
    result = SUBCOMMANDS[args.sub](args)
    result = {"benchmark": f"types-{args.sub}", "args": vars(args), "environment": B.environment(),
              "loadavg": {"start": load0, "end": B.loadavg()}, "seconds": round(time.time() - t_start, 1), **result}
    print("wrote", B.write_json(args.json or f"types-{args.sub}.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
