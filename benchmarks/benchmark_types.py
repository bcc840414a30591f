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

# ----------------------------------------------------------------------------- memory
def load(target, commands, per_pipeline: int = 10, retries: int = 20) -> dict:
    """Send commands (idempotent: HSET / ZADD / MSET of fixed values) in pipelines of
    per_pipeline.  A group that fails with a dropped connection or an error answer (a primary
    that lost its lease disconnects its clients, kv_handler._closes_after) is sent again on a new
    connection to the current primary; every such event is counted and its text kept."""
    t0 = time.monotonic()
    events: list[str] = []
    c = target.client(timeout=120)
    try:
        for start in range(0, len(commands), per_pipeline):
            group = commands[start:start + per_pipeline]
            for attempt in range(retries + 1):
                try:
                    pipe = c.pipeline(transaction=False)
                    for cmd in group:
                        pipe.execute_command(*cmd)
                    pipe.execute()
                    break
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
                    events.append(f"{time.monotonic() - t0:.1f}s command group {start // per_pipeline}: "
                                  f"{type(e).__name__}: {e}")
                    print(f"  load: {events[-1]}; resending the group", flush=True)
                    if attempt == retries:
                        raise
                    c.close()
                    c = target.client(timeout=120)
    finally:
        c.close()
    return {"seconds": round(time.monotonic() - t0, 1), "resent_groups": len(events), "events": events[:20]}


def hash_commands(key: str, n: int, batch: int = 1000) -> list:
    return [["HSET", key, *[x for i in range(s, min(n, s + batch)) for x in (f"field:{i}", f"value:{i}")]]
            for s in range(0, n, batch)]


def zset_commands(key: str, n: int, batch: int = 1000) -> list:
    return [["ZADD", key, *[x for i in range(s, min(n, s + batch)) for x in (str(i), f"member:{i}")]]
            for s in range(0, n, batch)]


def string_commands(n: int, batch: int = 1000) -> list:
    return [["MSET", *[x for i in range(s, min(n, s + batch)) for x in (f"key:{i}", f"value:{i}")]]
            for s in range(0, n, batch)]


def redis_memory(rd: Redis) -> dict:
    c = rd.client()
    try:
        info = c.info("memory")
    finally:
        c.close()
    return {"used_memory_mb": round(info["used_memory"] / 2**20, 1),
            "used_memory_rss_mb": round(info["used_memory_rss"] / 2**20, 1),
            "psutil_rss_mb": rss_mb(rd.proc.popen.pid)}


def snapshot_restart(kv: KV, key: str, n: int, timeout: float) -> dict:
    """SNAPSHOT on every node, kill -9 of all, restart, wait until every node has applied the
    primary's index again; RSS per node then (the data as a restore builds it, no log tail)."""
    answers = {i: kv.cluster.send(i, "SNAPSHOT", timeout=300).get("status") for i in kv.cluster.ids}
    kv.cluster.wait_until(lambda: all(st and not st.get("snapshot_in_progress") and st["snapshot_index"] > 0
                                      for st in kv.cluster.statuses(timeout=2).values()),
                          300, "every node's snapshot to finish")
    rss_after_snapshot = kv.rss_mb()
    for i in kv.cluster.ids:
        kv.cluster.kill(i)
    t0 = time.monotonic()
    for i in kv.cluster.ids:
        kv.cluster.start_node(i, primary=(i == "node1"), wait=False)
    kv.cluster.wait_for_single_primary(120)
    conv = kv.converge(timeout)
    serve_s = round(time.monotonic() - t0, 2)
    c = kv.client(timeout=60)
    try:
        size = c.hlen(key) if key == "bighash" else c.zcard(key)
    finally:
        c.close()
    return {"snapshot_answers": answers, "restart_to_converged_s": serve_s, "size": size, "ok": size == n,
            "converged": conv, "rss_mb_after_snapshot_before_kill": rss_after_snapshot, "rss_mb": kv.rss_mb()}


def cmd_memory(args) -> dict:
    kinds = ["hash"] + ([] if args.no_zset else ["zset"])
    out: dict = {"kinds": {}}
    rows = []
    for kind in kinds:
        targets = []
        try:
            kv = KV()
            targets.append(kv)
            rd = Redis(appendfsync="no")
            targets.append(rd)
            if kind == "zset":
                pr = probe(kv, ["zadd"])["zadd"]
                if pr is not None:
                    print(f"zset: ZADD probe answered: {pr}; skipped", flush=True)
                    out["kinds"]["zset"] = {"state": "not registered" if not_registered(pr) else pr}
                    rows.append([f"zset {args.n:,} members", "not registered", "-", "-", "-", "-", "-", "-"])
                    continue
            base_kv, base_rd = kv.rss_mb(), redis_memory(rd)
            res = {"empty": {"kv_rss_mb": base_kv, "redis": base_rd}}
            for t in (kv, rd):
                cmds = hash_commands("bighash", args.n) if kind == "hash" else zset_commands("bigzset", args.n)
                ld = load(t, cmds)
                c = t.client(timeout=120)
                try:
                    size = c.hlen("bighash") if kind == "hash" else c.zcard("bigzset")
                finally:
                    c.close()
                res[f"{t.name}_load"] = ld
                res[f"{t.name}_size"] = size
                print(f"{kind}: {t.name} loaded {size:,} in {ld['seconds']}s ({ld['resent_groups']} groups resent)",
                      flush=True)
            t0 = time.monotonic()
            res["kv_converged"] = kv.converge(args.converge_timeout)
            res["kv_converge_s"] = round(time.monotonic() - t0, 1)
            res["kv_rss_mb"] = kv.rss_mb()
            res["kv_terms"] = sorted({s["election_term"] for s in kv.cluster.statuses(timeout=2).values() if s})
            res["redis"] = redis_memory(rd)
            if not args.no_restart:     # the same data restored from the nodes' own snapshots
                res["kv_after_restart"] = snapshot_restart(kv, "bighash" if kind == "hash" else "bigzset",
                                                           args.n, args.converge_timeout)
                print(f"{kind}: after SNAPSHOT + kill -9 + restart: {res['kv_after_restart']}", flush=True)
            worst = max(res["kv_rss_mb"].values())
            res["ratio_rss"] = ratio(worst, res["redis"]["used_memory_rss_mb"], 2)
            res["ratio_delta"] = ratio(worst - max(base_kv.values()),
                                       res["redis"]["used_memory_rss_mb"] - base_rd["used_memory_rss_mb"], 2)
            res["ok"] = res["kv_size"] == args.n and res["redis_size"] == args.n
            out["kinds"][kind] = res
            what = f"{kind} {args.n:,} {'fields' if kind == 'hash' else 'members'}"
            rows.append([what, " / ".join(str(v) for v in res["kv_rss_mb"].values()),
                         " / ".join(str(v) for v in base_kv.values()),
                         res["redis"]["used_memory_rss_mb"], res["redis"]["psutil_rss_mb"],
                         res["redis"]["used_memory_mb"], res["ratio_rss"], res["ratio_delta"]])
            ar = res.get("kv_after_restart")
            if ar:
                w = max(ar["rss_mb"].values())
                ar["ratio_rss"] = ratio(w, res["redis"]["used_memory_rss_mb"], 2)
                ar["ratio_delta"] = ratio(w - max(base_kv.values()),
                                          res["redis"]["used_memory_rss_mb"] - base_rd["used_memory_rss_mb"], 2)
                rows.append([f"{what}, after SNAPSHOT (same processes)",
                             " / ".join(str(v) for v in ar["rss_mb_after_snapshot_before_kill"].values()),
                             " / ".join(str(v) for v in base_kv.values()), res["redis"]["used_memory_rss_mb"],
                             res["redis"]["psutil_rss_mb"], res["redis"]["used_memory_mb"],
                             ratio(max(ar["rss_mb_after_snapshot_before_kill"].values()),
                                   res["redis"]["used_memory_rss_mb"], 2), "-"])
                rows.append([f"{what}, restored from snapshot", " / ".join(str(v) for v in ar["rss_mb"].values()),
                             " / ".join(str(v) for v in base_kv.values()), res["redis"]["used_memory_rss_mb"],
                             res["redis"]["psutil_rss_mb"], res["redis"]["used_memory_mb"], ar["ratio_rss"],
                             ar["ratio_delta"]])
            print(f"{kind}: {res}", flush=True)
        finally:
            stop_all(targets)
    table = B.render(["data", "KV RSS MB node1 / node2 / node3", "KV RSS MB empty", "Redis used_memory_rss MB",
                      "Redis psutil RSS MB", "Redis used_memory MB", "largest node / Redis RSS",
                      "same, minus empty RSS"], rows)
    print()
    print("RSS after loading and convergence (every node's last_applied and digest equal the primary's); target <= 3x")
    print(table)
    out["table"] = table
    return out


# ----------------------------------------------------------------------------- restart
def wait_get(kv: KV, key: str, want: bytes, timeout: float) -> float:
    """Seconds until the current primary answers GET key == want (connection errors retried)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pid = kv.cluster.primary(timeout=0.3)
        if pid is not None:
            c = redis.Redis(host=HOST, port=kv.cluster.port(pid), socket_timeout=1, socket_connect_timeout=1)
            try:
                if c.get(key) == want:
                    return time.monotonic() - t0
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            finally:
                c.close()
        time.sleep(0.005)
    raise TimeoutError(f"GET {key} did not answer {want!r} within {timeout}s")


def cmd_restart(args) -> dict:
    kv = None
    try:
        kv = KV()
        ld = load(kv, string_commands(args.keys))
        load_s = ld["seconds"]
        c = kv.client(timeout=120)
        try:
            dbsize = c.dbsize()
        finally:
            c.close()
        print(f"loaded {dbsize:,} keys through MSET in {load_s}s", flush=True)
        kv.converge(args.converge_timeout)
        snap = {}
        t0 = time.monotonic()
        for i in kv.cluster.ids:
            snap[i] = kv.cluster.send(i, "SNAPSHOT", timeout=300).get("status")
        kv.cluster.wait_until(lambda: all(st and not st.get("snapshot_in_progress") and st["snapshot_index"] > 0
                                          for st in kv.cluster.statuses(timeout=2).values()),
                              300, "every node's snapshot to finish")
        snap_s = round(time.monotonic() - t0, 1)
        sts = kv.cluster.statuses(timeout=2)
        print(f"SNAPSHOT on every node: {snap} in {snap_s}s; snapshot_index "
              f"{ {i: s['snapshot_index'] for i, s in sts.items()} }", flush=True)
        rss_before = kv.rss_mb()
        last = args.keys - 1
        key, want = f"key:{last}", f"value:{last}".encode()
        restarts = []
        for rep in range(args.reps):
            for i in kv.cluster.ids:
                kv.cluster.kill(i)
            t0 = time.monotonic()
            for i in kv.cluster.ids:
                kv.cluster.start_node(i, primary=(i == "node1"), wait=False)
            wait_get(kv, key, want, args.serve_timeout)
            restarts.append(round(time.monotonic() - t0, 3))
            print(f"rep {rep + 1}: kill -9 of all 3 nodes -> GET {key} served in {restarts[-1]:.2f}s", flush=True)
            kv.converge(args.converge_timeout)
        c = kv.client(timeout=60)
        try:
            dbsize_after = c.dbsize()
            sample = c.get("key:12345")
        finally:
            c.close()
        rss_after = kv.rss_mb()
        logs = {}
        for i in kv.cluster.ids:
            with open(os.path.join(kv.cluster.data_dir_of(i), "node.log")) as f:
                logs[i] = [ln.strip() for ln in f if "recovered in" in ln][-1:]
    finally:
        if kv is not None:
            kv.stop()
    med = B.median(restarts)
    table = B.render(["", "value"], [
        ["keys loaded (MSET, 1000 keys a command) / load s", f"{dbsize:,} / {load_s}"],
        ["SNAPSHOT on every node, s", snap_s],
        ["kill -9 all 3 -> GET served, s (median)", B.fmt(med, 2)],
        ["per rep", " ".join(str(x) for x in restarts)],
        ["keys after restarts / GET key:12345", f"{dbsize_after:,} / {sample!r}"],
        ["RSS MB per node before / after restarts",
         " / ".join(str(v) for v in rss_before.values()) + "  ->  " + " / ".join(str(v) for v in rss_after.values())],
        ["target", "<= 5 s"]])
    print()
    print(table)
    for i, lines in logs.items():
        print(f"{i}: {lines[0] if lines else ''}")
    return {"keys": dbsize, "load_s": load_s, "load": ld, "snapshot_answers": snap, "snapshot_s": snap_s,
            "restart_to_serving_s": restarts, "restart_median_s": med, "dbsize_after": dbsize_after,
            "rss_mb_before": rss_before, "rss_mb_after": rss_after, "recovery_log": logs, "table": table}


# ----------------------------------------------------------------------------- main
SUBCOMMANDS = {"throughput": cmd_throughput, "pipeline": cmd_pipeline, "memory": cmd_memory, "restart": cmd_restart}


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
    t = sub.add_parser("memory", help="RSS of a 1M-field hash (and 1M-member zset) per node beside Redis")
    t.add_argument("-n", type=int, default=1_000_000, help="fields / members (default 1,000,000)")
    t.add_argument("--no-zset", action="store_true", help="only the hash")
    t.add_argument("--no-restart", action="store_true",
                   help="skip the second reading (SNAPSHOT, kill -9 of every node, restart, RSS again)")
    t.add_argument("--converge-timeout", type=float, default=300, help="seconds (default 300)")
    t = sub.add_parser("restart", help="1M keys, SNAPSHOT, kill -9 of all nodes, time to serving")
    t.add_argument("--keys", type=int, default=1_000_000, help="string keys (default 1,000,000)")
    t.add_argument("--reps", type=int, default=3, help="restarts measured (default 3)")
    t.add_argument("--serve-timeout", type=float, default=120, help="seconds (default 120)")
    t.add_argument("--converge-timeout", type=float, default=300, help="seconds (default 300)")
    for s in sub.choices.values():
        s.add_argument("--json", default=None, help="result file in benchmarks/results/ (default types-<sub>.json)")
    # the top-level --help lists every subcommand's options (one reference for all of them)
    p.epilog = "\n".join(f"--- {name} ---\n{s.format_help()}" for name, s in sub.choices.items())
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
