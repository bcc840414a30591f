#!/usr/bin/env python3
"""benchmark_recovery.py: memory and restart time with 1,000,000 keys, beside Redis.

    python benchmarks/benchmark_recovery.py                  # 1M keys, 3 reps of the restart
    python benchmarks/benchmark_recovery.py --keys 200000 --reps 1

KV Store: three data dirs are seeded with one 1M-key snapshot (16-byte values; what a restore
leaves), a 3-node cluster starts on them, and --tail more keys are written through the cluster
so the WAL has a tail to replay.  Then, --reps times: kill -9 of every node, restart of every
node, and the time until the primary answers a GET of the last key written through the log
("restart to serving": recovery of snapshot + WAL, election, lease).  RSS of each node is read
once it serves.
Redis 7 (appendonly yes, appendfsync always): the same keys and tail through `redis-cli --pipe`,
then kill -9 and restart, timed until the same GET answers (Redis answers LOADING until then).
Writes benchmarks/results/benchmark_recovery.json.  Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import psutil  # noqa: E402

import benchmark_node as B  # noqa: E402
from benchmark_stability import seed  # noqa: E402
from kv_localcluster import LocalCluster  # noqa: E402

VALUE = b"x" * 16


def resp_get(addr, key: bytes, timeout: float = 1.0) -> bytes | None:
    """One GET over RESP; the raw answer, or None when the connection failed."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key))
            buf = b""
            while buf.count(b"\r\n") < (2 if buf.startswith(b"$") and not buf.startswith(b"$-") else 1):
                chunk = s.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            return buf
    except OSError:
        return None


def wait_serving(addr_fn, key: bytes, timeout: float = 120) -> float:
    """Seconds until GET key answers the value (addr_fn() gives the current address or None)."""
    t0 = time.monotonic()
    want = b"$%d\r\n%b\r\n" % (len(VALUE), VALUE)
    while time.monotonic() - t0 < timeout:
        addr = addr_fn()
        if addr is not None and resp_get(addr, key) == want:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise TimeoutError(f"not serving {key!r} after {timeout}s")


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def pipe_commands(port: int, keys) -> None:
    """SET every key to VALUE through redis-cli --pipe."""
    p = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    batch = []
    for k in keys:
        kb = k.encode()
        batch.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$16\r\n%b\r\n" % (len(kb), kb, VALUE))
        if len(batch) >= 10000:
            p.stdin.write(b"".join(batch))
            batch = []
    p.stdin.write(b"".join(batch))
    p.stdin.close()
    if p.wait(600) != 0:
        raise RuntimeError("redis-cli --pipe failed")


def kv_part(args) -> dict:
    base = tempfile.mkdtemp(prefix="kvrec-")
    cluster = None
    try:
        ids = ["node1", "node2", "node3"]
        seeded = seed([os.path.join(base, i) for i in ids], args.keys, VALUE)
        cluster = LocalCluster(n=3, data_dir=base)
        cluster.start(timeout=180)
        p = cluster.wait_for_single_primary(180)
        tail = [f"tail:{i:08d}" for i in range(args.tail)]
        # the tail goes through the log, pipelined (redis-cli --pipe speaks RESP to the primary)
        pipe_commands(cluster.port(p), tail)
        last = tail[-1].encode() if tail else b"key:000000000000"
        cluster.wait_converged(120)

        def addr():
            q = cluster.primary(timeout=0.5)
            return cluster.addr(q) if q else None
        rss_before = {i: rss_mb(cluster.pid(i)) for i in ids}
        restarts = []
        for rep in range(args.reps):
            for i in ids:
                cluster.kill(i)
            t0 = time.monotonic()
            for i in ids:
                cluster.start_node(i, primary=(i == "node1"), wait=False)
            secs = wait_serving(addr, last)
            restarts.append(round(time.monotonic() - t0, 3))
            print(f"KV rep {rep + 1}: kill -9 of all 3 nodes, restart to serving {restarts[-1]:.2f}s "
                  f"(GET answered {secs:.2f}s after the restarts were issued)", flush=True)
        cluster.wait_converged(120)
        rss_after = {i: rss_mb(cluster.pid(i)) for i in ids}
        logs = {}
        for i in ids:
            with open(os.path.join(base, i, "node.log")) as f:
                logs[i] = [ln.strip() for ln in f if "recovered in" in ln][-1:]
        return {"seeded": seeded, "tail": args.tail, "restart_to_serving_s": restarts,
                "restart_median_s": B.median(restarts), "rss_mb_before": rss_before, "rss_mb_after_restart": rss_after,
                "recovery_log": logs}
    finally:
        if cluster is not None:
            cluster.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def redis_part(args) -> dict:
    r = B.RedisProc(appendfsync="always").start()
    try:
        keys = (f"key:{i:012d}" for i in range(args.keys))
        pipe_commands(r.port, keys)
        tail = [f"tail:{i:08d}" for i in range(args.tail)]
        pipe_commands(r.port, tail)
        last = tail[-1].encode() if tail else b"key:000000000000"
        rss_before = rss_mb(r.popen.pid)
        restarts = []
        for rep in range(args.reps):
            os.kill(r.popen.pid, 9)
            r.popen.wait(10)
            t0 = time.monotonic()
            r.popen = subprocess.Popen(r.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            wait_serving(lambda: ("127.0.0.1", r.port), last)
            restarts.append(round(time.monotonic() - t0, 3))
            print(f"Redis rep {rep + 1}: kill -9, restart to serving {restarts[-1]:.2f}s", flush=True)
        return {"restart_to_serving_s": restarts, "restart_median_s": B.median(restarts),
                "rss_mb_before": rss_before, "rss_mb_after_restart": rss_mb(r.popen.pid)}
    finally:
        r.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000, help="keys (default 1,000,000)")
    p.add_argument("--tail", type=int, default=20_000, help="keys written through the log after the snapshot (default 20,000)")
    p.add_argument("--reps", type=int, default=3, help="restarts measured (default 3)")
    p.add_argument("--no-redis", action="store_true", help="skip Redis")
    p.add_argument("--json", default="benchmark_recovery.json", help="result file in benchmarks/results/")
    args = p.parse_args(argv)
    kv = kv_part(args)
    redis = redis_part(args) if not args.no_redis and B.have_redis_server() else None
    rows = [["KV Store (per node)", B.fmt(kv["restart_median_s"], 2), " ".join(map(str, kv["restart_to_serving_s"])),
             " / ".join(str(v) for v in kv["rss_mb_after_restart"].values()),
             " / ".join(str(v) for v in kv["rss_mb_before"].values())]]
    if redis:
        rows.append(["Redis 7 (AOF, always)", B.fmt(redis["restart_median_s"], 2),
                     " ".join(map(str, redis["restart_to_serving_s"])), redis["rss_mb_after_restart"],
                     redis["rss_mb_before"]])
    print()
    print(f"{args.keys:,} keys of 16 bytes (+{args.tail:,} through the log); restart = kill -9, start, until GET answers")
    print(B.render(["", "restart to serving s (median)", "per rep", "RSS MB after restart", "RSS MB before"], rows))
    if redis:
        worst = max(kv["rss_mb_after_restart"].values())
        print(f"RSS ratio (largest node / Redis): {worst / redis['rss_mb_after_restart']:.2f}")
    for i, lines in kv["recovery_log"].items():
        print(f"{i}: {lines[0] if lines else ''}")
    out = {"benchmark": "recovery", "args": vars(args), "environment": B.environment(), "kv": kv, "redis": redis}
    print("wrote", B.write_json(args.json, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
