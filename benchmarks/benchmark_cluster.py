#!/usr/bin/env python3
"""benchmark_cluster.py: replicated SET and linearizable GET on a 3-node KV Store cluster's primary,
beside Redis 7 with 2 replicas, in one run.

    python benchmarks/benchmark_cluster.py                    # fsync always, 3 repetitions
    python benchmarks/benchmark_cluster.py --reps 5 --duration 4 --no-redis-benchmark

What it does (every process it starts is stopped by PID before it returns):
  1. a 3-node KV Store cluster on free 127.0.0.1 ports in a temp dir (kv_localcluster.LocalCluster),
     fsync always by default: a SET
     is answered only once a majority has it durable and the primary applied it; a GET only while
     the primary's lease says it still leads;
  2. redis-server (appendonly yes, appendfsync always) + 2 `--replicaof` replicas with the same
     settings (Redis replicates asynchronously: its SET waits for no replica);
  3. the load generator of benchmark_node.py against both primaries: SET and GET x 1 and 50
     connections (line protocol and RESP for KV, RESP for Redis), --reps repetitions interleaved;
  4. `redis-benchmark -t set,get -n 100000 -c 50 -q` against both primaries, --reps times;
  5. checks that the KV cluster converged afterwards (same last_applied and digest on all nodes);
  6. prints the tables and writes benchmarks/results/benchmark_cluster.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import benchmark_node as B  # noqa: E402
from kv_localcluster import LocalCluster, wait_until  # noqa: E402


# ----------------------------------------------------------------------------- cluster launcher
def make_cluster(n: int = 3, fsync: str = "always", extra_args=()):
    """A started kv_localcluster.LocalCluster (free ports, temp dir).  Returns (cluster, launcher name)."""
    c = LocalCluster(n=n, fsync=fsync, extra_args=tuple(extra_args))
    try:
        c.start(wait=True, timeout=20)
    except BaseException:
        c.cleanup()
        raise
    return c, "kv_localcluster.LocalCluster"


class RedisReplicated:
    """redis-server primary + k `--replicaof` replicas, all appendonly/appendfsync alike."""

    def __init__(self, replicas: int = 2, appendfsync: str = "always"):
        self.primary = B.RedisProc(appendfsync=appendfsync)
        self.replicas: list[B.RedisProc] = []
        self.k = replicas
        self.appendfsync = appendfsync

    def start(self, timeout: float = 20) -> "RedisReplicated":
        self.primary.start()
        for _ in range(self.k):
            r = B.RedisProc(appendfsync=self.appendfsync, replicaof=(B.HOST, self.primary.port))
            self.replicas.append(r)
            r.start()
        wait_until(lambda: f"connected_slaves:{self.k}" in self.primary.info()
                   and all("master_link_status:up" in r.info() for r in self.replicas),
                   timeout, "both Redis replicas to be linked")
        return self

    @property
    def port(self) -> int:
        return self.primary.port

    def replica_offsets(self) -> dict:
        out = {}
        for name, r in [("primary", self.primary)] + [(f"replica{i + 1}", r) for i, r in enumerate(self.replicas)]:
            info = r.info()
            for ln in info.splitlines():
                if ln.startswith(("master_repl_offset:", "slave_repl_offset:")):
                    out[name] = int(ln.split(":")[1])
        return out

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        self.primary.stop()


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(p)
    p.add_argument("--nodes", type=int, default=3, help="KV cluster size (default 3)")
    p.add_argument("--replicas", type=int, default=2, help="Redis replicas (default 2)")
    args = p.parse_args(argv)
    conns = tuple(int(x) for x in args.conns.split(","))
    cfgs = B.configurations(conns=conns)
    use_redis = not args.no_redis and B.have_redis_server()
    use_rb = not args.no_redis_benchmark and B.have_redis_benchmark()
    env = B.environment()
    env["loadavg_start"] = B.loadavg()
    print(f"benchmark_cluster: {args.nodes}-node KV cluster vs Redis + {args.replicas} replicas, fsync {args.fsync}, "
          f"{args.reps} reps x {len(cfgs)} configs x {args.duration}s; loadavg {env['loadavg_start']}", flush=True)
    cluster = redis = None
    rb: dict = {"kv": [], "redis": []}
    t0 = time.monotonic()
    converged = None
    try:
        cluster, launcher = make_cluster(args.nodes, args.fsync)
        prim = cluster.wait_for_single_primary(15)
        port = cluster.port(prim)
        print(f"  KV cluster via {launcher}: {cluster.addresses()}, primary {prim} on port {port}", flush=True)
        targets = {"kv": (port, ("line", "resp"))}
        if use_redis:
            redis = RedisReplicated(args.replicas, args.fsync).start()
            print(f"  Redis primary on {redis.port}, replicas on {[r.port for r in redis.replicas]}", flush=True)
            targets["redis"] = (redis.port, ("resp",))
        B.populate(port, "line", args.keyspace, args.value_size)
        if redis:
            B.populate(redis.port, "resp", args.keyspace, args.value_size)
        raw = B.measure_interleaved(targets, cfgs, args, B.progress)
        if use_rb:
            for rep in range(args.reps):
                for tname, tport in (("kv", port), ("redis", redis.port if redis else None)):
                    if tport is None:
                        continue
                    r = B.run_redis_benchmark(tport, args.rb_requests, args.rb_clients)
                    r["rep"] = rep + 1
                    rb[tname].append(r)
                    print(f"  rep {rep + 1} {tname:5s} redis-benchmark: SET {r.get('SET', {}).get('ops_per_s')} "
                          f"GET {r.get('GET', {}).get('ops_per_s')} ops/s, no error: {r['no_error']} "
                          f"({r['seconds']}s){'  ' + str(r['error_lines']) if r['error_lines'] else ''}", flush=True)
        prim_after = cluster.primary()
        try:
            sts = cluster.wait_converged(30)
            converged = {"equal": True, "last_applied": next(iter(sts.values()))["last_applied"],
                         "digest": next(iter(sts.values()))["digest"]}
        except Exception as e:   # WaitTimeout / TimeoutError / SplitBrain: report, do not hide
            converged = {"equal": False, "error": f"{type(e).__name__}: {e}"}
        redis_offsets = redis.replica_offsets() if redis else None
    finally:
        if cluster is not None:
            cluster.cleanup()
        if redis is not None:
            redis.stop()
    env["loadavg_end"] = B.loadavg()
    summary = {t: {cfg: B.summarize(runs) for cfg, runs in d.items()} for t, d in raw.items()}
    out = {"benchmark": "cluster", "nodes": args.nodes, "redis_replicas": args.replicas, "fsync": args.fsync,
           "launcher": launcher, "args": vars(args), "environment": env, "seconds": round(time.monotonic() - t0, 1),
           "primary_at_start": prim, "primary_at_end": prim_after, "converged_after": converged,
           "redis_replication_offsets_after": redis_offsets,
           "summary": summary, "runs": raw, "redis_benchmark": rb}
    targets_check = {}
    for op, tgt in (("SET", 12_000), ("GET", 30_000)):
        k = summary["kv"].get(f"{op}/resp/50") or {}
        kl = summary["kv"].get(f"{op}/line/50") or {}
        kb = B.median([x.get(op, {}).get("ops_per_s") for x in rb["kv"]])
        rbv = B.median([x.get(op, {}).get("ops_per_s") for x in rb["redis"]])
        targets_check[op] = {"target_ops_per_s": tgt, "own_client_resp": k.get("ops_per_s"),
                             "own_client_line": kl.get("ops_per_s"), "redis_benchmark": kb,
                             "redis_benchmark_redis": rbv,
                             "ratio_vs_redis_redis_benchmark": round(kb / rbv, 3) if kb and rbv else None}
    s1 = summary["kv"].get("SET/line/1") or {}
    targets_check["SET_latency_1_client"] = {"target_p50_ms": 1.0, "target_p99_ms": 3.0,
                                             "p50_ms": s1.get("p50_ms"), "p99_ms": s1.get("p99_ms")}
    out["targets"] = targets_check
    path = B.write_json(args.json or "benchmark_cluster.json", out)
    print()
    print(f"Own load generator, {args.nodes}-node KV primary (replicated SET, linearizable GET) vs Redis primary "
          f"+ {args.replicas} replicas (appendfsync {args.fsync}); medians of {args.reps} reps of {args.duration}s:")
    print(B.throughput_tables(summary))
    if use_rb:
        print()
        print(f"redis-benchmark -t set,get -n {args.rb_requests} -c {args.rb_clients} -q against both primaries; "
              f"medians of {args.reps} reps:")
        print(B.rb_table(rb))
    print()
    print(f"KV cluster converged afterwards: {converged}")
    print(f"loadavg start {env['loadavg_start']} end {env['loadavg_end']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
