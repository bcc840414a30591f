#!/usr/bin/env python3
"""benchmark_silent_failover.py: how long a *silent* primary failure takes to repair.

    python benchmarks/benchmark_silent_failover.py                # 5 rounds of each fault
    python benchmarks/benchmark_silent_failover.py --rounds 2 --faults pause

A crashed primary is noticed at once (its port refuses: benchmark_failover.py measures that).
A primary that is paused (SIGSTOP) or cut off from its peers says nothing: the secondaries find
out only when their election timeout passes (--election-timeout, default 0.8 s, randomized in
[T, 2T)).  Per round, on a 3-node cluster whose peer links run through a fault proxy
(kv_localcluster.LocalCluster(proxied=True)):
  pause    SIGSTOP the primary's PID; time until another node is elected (STATUS), and until
           the writer's first write acknowledged by another node; SIGCONT
  isolate  cut every peer link of the primary; the same timings; heal
then wait until every node converges (equal last_applied and digest) and the old primary is a
secondary.  A writer thread writes a unique key every 10 ms throughout; every acknowledged write
is read back at the end (lost = 0 is checked).  Writes benchmarks/results/
benchmark_silent_failover.json.  Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import benchmark_node as B  # noqa: E402
from kv_client import ClusterClient  # noqa: E402
from kv_localcluster import LocalCluster, RetryingWriter  # noqa: E402


def acks(writer: RetryingWriter, cluster: LocalCluster) -> list[tuple[float, str, str]]:
    """(t, key, node) of every write the writer had acknowledged."""
    by_addr = {cluster.address(i): i for i in cluster.ids}
    return [(t, key, by_addr.get(addr, "?")) for t, addr, key, _ in list(writer.ack_log)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds per fault (default 5)")
    p.add_argument("--faults", default="pause,isolate", help="comma-separated: pause, isolate")
    p.add_argument("--json", default="benchmark_silent_failover.json", help="result file in benchmarks/results/")
    args = p.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    results: dict = {f: [] for f in faults}
    cluster = LocalCluster(n=3, proxied=True)
    writer = None
    stop = threading.Event()
    try:
        cluster.start(timeout=30)
        # k<n> = n every 10 ms, following the primary (kv_localcluster's RetryingWriter)
        writer = RetryingWriter("writer", cluster.addresses(), lambda n: f"k{n}", stop, op_deadline=15.0, pace=0.01,
                                timeout=5.0)      # ClusterClient's default request timeout, as before
        writer.start()
        for r in range(args.rounds):
            for fault in faults:
                old = cluster.wait_for_single_primary(30)
                cluster.wait_converged(30)
                time.sleep(0.3)   # let the writer get going on this primary
                t0 = time.monotonic()
                if fault == "pause":
                    cluster.pause(old)
                else:
                    cluster.partition(old)
                try:
                    new = cluster.wait_for_single_primary(30, exclude=[old])
                    t_elected = time.monotonic() - t0
                    cluster.wait_until(lambda: any(t > t0 and n != old for t, _, n in acks(writer, cluster)), 30,
                                       "a write acknowledged by the new primary")
                    t_write = min(t for t, _, n in acks(writer, cluster) if t > t0 and n != old) - t0
                finally:
                    if fault == "pause":
                        cluster.resume(old)
                    else:
                        cluster.heal()
                cluster.wait_until(lambda: (cluster.status(old) or {}).get("role") == "secondary", 30,
                                   f"{old} to rejoin as a secondary")
                conv = cluster.wait_converged(60)
                rec = {"round": r + 1, "old": old, "new": new, "elected_s": round(t_elected, 3),
                       "first_write_s": round(t_write, 3), "digests": sorted({s["digest"] for s in conv.values()})}
                results[fault].append(rec)
                print(f"{fault:7s} round {r + 1}: {old} -> {new}, elected {t_elected:.3f}s, "
                      f"first acknowledged write {t_write:.3f}s after the fault", flush=True)
        stop.set()
        writer.join(20)
        # every acknowledged write is there
        cl = ClusterClient(cluster.addresses(), deadline=15.0)
        lost = [k for k, v in writer.acked.items() if cl.get(k) != v]
        cl.close()
        safety = None
        cluster.check_safety()
        safety = "no two primaries in one term"
    finally:
        stop.set()
        cluster.cleanup()
    rows = []
    for fault, recs in results.items():
        es = [x["elected_s"] for x in recs]
        ws = [x["first_write_s"] for x in recs]
        rows.append([fault, len(recs), min(es), round(statistics.median(es), 3), max(es),
                     round(statistics.median(ws), 3), max(ws)])
    print()
    print("fault -> a new primary elected (STATUS of the others), and -> the writer's first acknowledged write")
    print("(the writer is RetryingWriter: a request stuck on a paused primary waits for its socket timeout)")
    print(B.render(["fault", "rounds", "elected min s", "median s", "max s", "first write median s", "max s"], rows))
    print(f"acknowledged writes {writer.n_acked}, failed {writer.failed}, lost {len(lost)}; {safety}")
    out = {"benchmark": "silent_failover", "args": vars(args), "environment": B.environment(),
           "results": results, "acked": writer.n_acked, "failed": writer.failed, "lost": lost[:20]}
    print("wrote", B.write_json(args.json, out))
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
