#!/usr/bin/env python3
"""benchmark_stability.py: does the primary keep leading while the machine is saturated?

    python benchmarks/benchmark_stability.py                      # 3 runs of 60 s, 1M keys
    python benchmarks/benchmark_stability.py --runs 1 --duration 20 --keys 100000

Each run (every process it starts is stopped by PID, every loop is bounded by --duration):
  1. seeds three data dirs with the same 1,000,000-key snapshot (16-byte values, the keys
     redis-benchmark -r 1000000 uses) and starts a 3-node cluster on them (fsync always);
  2. for --duration seconds, all at once:
       redis-benchmark -t set,get -c 50 -d 16 -r 1000000 -l   (saturating load on the primary)
       redis-benchmark -t set -P 16 -c 4 -d 16 -r 1000000 -l  (pipelined writes)
       two busy-loop processes (a CPU hog on a 2-core machine)
       SNAPSHOT on every node a third of the way in, plus the automatic snapshots at their
       threshold (--snapshot-threshold, default 100,000 entries);
       a probe client: one SET then one GET every 10 ms, latency recorded;
       STATUS of every node every 100 ms: role, term, primary, snapshot in progress;
  3. counts leader changes (a new primary or a new term after the start), error replies (to
     the probe; and redis-benchmark's, which stops at its first error reply), the probe's p99
     in 5 s windows with and without a snapshot in flight, and each node's heartbeat gaps (sent by the primary,
     received by the secondaries) and the longest silence of a majority to the primary (what
     CheckQuorum acts on), from STATUS "heartbeat";
  4. checks the nodes converged (equal last_applied and digest) after the load.
Prints a table per run and a summary, writes benchmarks/results/benchmark_stability.json and,
when matplotlib is installed, benchmark_stability.png (the timeline of the last run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import benchmark_node as B  # noqa: E402
from kv_localcluster import LocalCluster  # noqa: E402
from kv_registry import TYPES  # noqa: E402
from kv_storage import SnapshotMeta, write_snapshot_file  # noqa: E402
from kv_store_server import KeyValueStore  # noqa: E402

HOG = "import time\nend = time.monotonic() + {d}\nwhile time.monotonic() < end:\n    pass\n"


# ----------------------------------------------------------------------------- seeding
def seed(dirs: list[str], n_keys: int, value: bytes) -> dict:
    """The same n_keys snapshot (index 1, term 1) in every dir, as a restore would leave it."""
    t0 = time.monotonic()
    h = KeyValueStore.item_hash
    digest = 0
    keys = [f"key:{i:012d}" for i in range(n_keys)]
    for k in keys:
        digest = (digest + h(k, "bytes", value)) & ((1 << 64) - 1)
    meta = SnapshotMeta(1, 1, n_keys, f"{digest:016x}")
    first = os.path.join(dirs[0], "snapshot.dat")
    os.makedirs(dirs[0], exist_ok=True)
    ops = TYPES["bytes"]      # the records a node's own snapshot would hold for these values
    payload = ops.encode(value)
    write_snapshot_file(first, meta, ((k, ops.tag, payload) for k in keys))
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        if d != dirs[0]:
            shutil.copyfile(first, os.path.join(d, "snapshot.dat"))
        with open(os.path.join(d, "raft_state.json"), "w") as f:
            json.dump({"term": 1, "voted_for": None}, f)
    return {"keys": n_keys, "digest": meta.digest, "seconds": round(time.monotonic() - t0, 1),
            "bytes": os.path.getsize(first)}


# ----------------------------------------------------------------------------- observers
class Poller(threading.Thread):
    """STATUS of every node every interval until stopped; keeps the timeline."""

    def __init__(self, cluster: LocalCluster, t0: float, interval: float = 0.1):
        super().__init__(daemon=True, name="poller")
        self.cluster, self.t0, self.interval = cluster, t0, interval
        self.samples: list[dict] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            t = time.monotonic() - self.t0
            for nid, st in self.cluster.statuses(timeout=1.0).items():
                if st is not None:
                    self.samples.append({"t": round(t, 3), "node": nid, "role": st.get("role"),
                                         "term": st.get("election_term"), "primary": st.get("primary"),
                                         "snap": bool(st.get("snapshot_in_progress")),
                                         "applied": st.get("last_applied"), "hb": st.get("heartbeat")})


class Probe(threading.Thread):
    """A RESP client: SET then GET of its own key every 10 ms; latency and errors recorded.
    It follows the primary if it moves (a READONLY answer counts as an error reply)."""

    def __init__(self, cluster: LocalCluster, t0: float):
        super().__init__(daemon=True, name="probe")
        self.cluster, self.t0 = cluster, t0
        self.ops: list[tuple[float, float, bool]] = []     # (t, latency s, ok)
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def _conn(self):
        p = self.cluster.primary(timeout=1.0)
        if p is None:
            return None
        s = socket.create_connection(self.cluster.addr(p), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def run(self) -> None:
        s = None
        i = 0
        while not self.stop_event.wait(0.01):
            try:
                if s is None:
                    s = self._conn()
                    if s is None:
                        continue
                i += 1
                val = b"v%d" % i
                for req, want in ((b"*3\r\n$3\r\nSET\r\n$5\r\nprobe\r\n$%d\r\n%b\r\n" % (len(val), val), b"+OK"),
                                  (b"*2\r\n$3\r\nGET\r\n$5\r\nprobe\r\n", b"$%d\r\n%b" % (len(val), val))):
                    t1 = time.monotonic()
                    s.sendall(req)
                    buf = b""
                    while not buf.endswith(b"\r\n") or (buf.startswith(b"$") and not buf.startswith(b"$-") and buf.count(b"\r\n") < 2):
                        chunk = s.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed")
                        buf += chunk
                    t2 = time.monotonic()
                    ok = buf.startswith(want)
                    self.ops.append((t1 - self.t0, t2 - t1, ok))
                    if not ok:
                        self.errors.append(f"{t1 - self.t0:.2f}s {buf[:120]!r}")
            except OSError as e:
                self.ops.append((time.monotonic() - self.t0, 0.0, False))
                self.errors.append(f"{time.monotonic() - self.t0:.2f}s connection: {e}")
                if s is not None:
                    s.close()
                s = None
        if s is not None:
            s.close()


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, len(xs) * 99 // 100)] if xs else None


# ----------------------------------------------------------------------------- one run
def one_run(args, run_no: int) -> dict:
    base = tempfile.mkdtemp(prefix="kvstab-")
    procs: list[subprocess.Popen] = []
    cluster = None
    try:
        ids = [f"node{i}" for i in range(1, 4)]
        seeded = seed([os.path.join(base, i) for i in ids], args.keys, b"x" * 16)
        print(f"run {run_no}: seeded {seeded['keys']:,} keys ({seeded['bytes'] / 1e6:.0f} MB snapshot) "
              f"in {seeded['seconds']}s", flush=True)
        cluster = LocalCluster(n=3, data_dir=base, extra_args=["--snapshot-threshold", str(args.snapshot_threshold)])
        t_start = time.monotonic()
        cluster.start(timeout=120)
        primary = cluster.wait_for_single_primary(120)
        ready_s = time.monotonic() - t_start
        port = cluster.port(primary)
        term0 = cluster.status(primary)["election_term"]
        print(f"run {run_no}: {primary} primary at term {term0}, serving {ready_s:.1f}s after start", flush=True)
        d = args.duration
        t0 = time.monotonic()
        poller, probe = Poller(cluster, t0), Probe(cluster, t0)
        poller.start()
        probe.start()
        rb = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-d", "16", "-r", "1000000", "-l", "-q"]
        logs = {}
        for name, extra in (("load", ["-t", "set,get", "-c", "50"]), ("pipelined", ["-t", "set", "-P", "16", "-c", "4"])):
            logs[name] = tempfile.TemporaryFile()
            procs.append(subprocess.Popen(rb + extra, stdout=logs[name], stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        for _ in range(args.hogs):
            procs.append(subprocess.Popen([sys.executable, "-c", HOG.format(d=d + 5)], start_new_session=True))
        snap_answers: dict = {}

        def snapshot_everywhere():
            for nid in cluster.ids:
                try:
                    snap_answers[nid] = cluster.send(nid, "SNAPSHOT", timeout=120)
                except OSError as e:
                    snap_answers[nid] = {"error": str(e)}
        snap_t = threading.Timer(d / 3, snapshot_everywhere)
        snap_t.start()
        deadline = t0 + d
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        # redis-benchmark exits at the first error reply: one that stopped early failed
        early_exit = {name: procs[i].poll() for i, name in enumerate(logs) if procs[i].poll() is not None}
        for p in procs:
            B.stop_pid(p, timeout=5)
        snap_t.join(timeout=130)
        probe.stop_event.set()
        poller.stop_event.set()
        probe.join(10)
        poller.join(10)
        rb_errors = []
        rb_last = {}
        for name, f in logs.items():
            f.seek(0)
            text = f.read().decode(errors="replace").replace("\r", "\n")
            f.close()
            errs = [ln.strip() for ln in text.splitlines() if "rror" in ln or "READONLY" in ln or "NOQUORUM" in ln]
            if name in early_exit:
                errs = errs or [f"redis-benchmark ({name}) exited early with code {early_exit[name]}"]
            rb_errors += errs
            rates = [ln.strip() for ln in text.splitlines() if "requests per second" in ln or "rps=" in ln]
            rb_last[name] = rates[-1] if rates else None
        conv = cluster.wait_converged(120)
        final = cluster.statuses()
        if args.keep_logs:   # each node's log, for a run worth reading
            os.makedirs(args.keep_logs, exist_ok=True)
            for nid in cluster.ids:
                shutil.copyfile(os.path.join(base, nid, "node.log"),
                                os.path.join(args.keep_logs, f"run{run_no}-{nid}.log"))
    finally:
        for p in procs:
            if p.poll() is None:
                B.stop_pid(p, timeout=5)
        if cluster is not None:
            cluster.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    # -- leader changes: any primary or term other than the first one seen
    seen = {(s["term"], s["primary"]) for s in poller.samples if s["primary"]}
    terms = {s["term"] for s in poller.samples}
    changes = max(len(seen) - 1, 0)
    # -- probe latency by window, and with / without a snapshot in flight
    snap_times = sorted({round(s["t"], 1) for s in poller.samples if s["snap"]})
    snap_set = set(snap_times)
    lat_snap = [lat for t, lat, ok in probe.ops if ok and round(t, 1) in snap_set]
    lat_quiet = [lat for t, lat, ok in probe.ops if ok and round(t, 1) not in snap_set]
    windows = []
    for w0 in range(0, int(d), 5):
        xs = [lat for t, lat, ok in probe.ops if ok and w0 <= t < w0 + 5]
        windows.append({"t": w0, "p99_ms": round(p99(xs) * 1000, 2) if xs else None, "n": len(xs),
                        "errors": sum(1 for t, _, ok in probe.ops if not ok and w0 <= t < w0 + 5),
                        "snapshot": any(w0 <= t < w0 + 5 for t in snap_times)})
    hb = {nid: (st or {}).get("heartbeat") for nid, st in final.items()}
    res = {"run": run_no, "seeded": seeded, "ready_s": round(ready_s, 2), "term0": term0,
           "leader_changes": changes, "terms_seen": sorted(t for t in terms if t is not None),
           "error_replies": len(probe.errors) + len(rb_errors),
           "probe_errors": probe.errors[:10], "redis_benchmark_errors": rb_errors[:10],
           "redis_benchmark_last": rb_last, "probe_ops": len(probe.ops),
           "p99_ms_quiet": round(p99(lat_quiet) * 1000, 2) if lat_quiet else None,
           "p99_ms_snapshot": round(p99(lat_snap) * 1000, 2) if lat_snap else None,
           "snapshot_seconds": round(len(snap_times) / 10, 1), "snapshot_answers": snap_answers,
           "windows": windows, "heartbeat": hb,
           "converged": {"last_applied": {k: v["last_applied"] for k, v in conv.items()},
                         "digest": sorted({v["digest"] for v in conv.values()})},
           "timeline": poller.samples, "probe": probe.ops}
    return res


def plot(res: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    ts = [t for t, _, ok in res["probe"] if ok]
    lat = [lat * 1000 for _, lat, ok in res["probe"] if ok]
    a1.plot(ts, lat, ",", alpha=0.6)
    a1.set_ylabel("probe latency ms")
    a1.set_yscale("log")
    for s in res["timeline"]:
        if s["snap"]:
            a1.axvspan(s["t"] - 0.05, s["t"] + 0.05, color="orange", alpha=0.05, lw=0)
    for node in sorted({s["node"] for s in res["timeline"]}):
        xs = [s["t"] for s in res["timeline"] if s["node"] == node]
        ys = [s["term"] for s in res["timeline"] if s["node"] == node]
        a2.step(xs, ys, where="post", label=node)
    a2.set_ylabel("term")
    a2.set_xlabel("seconds")
    a2.legend()
    a1.set_title(f"run {res['run']}: {res['leader_changes']} leader changes, {res['error_replies']} error replies "
                 "(orange: snapshot in flight)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    p.add_argument("--duration", type=float, default=60, help="seconds of load per run (default 60)")
    p.add_argument("--keys", type=int, default=1_000_000, help="keys loaded before the run (default 1,000,000)")
    p.add_argument("--hogs", type=int, default=2, help="busy-loop processes (default 2)")
    p.add_argument("--snapshot-threshold", type=int, default=100_000,
                   help="the nodes' --snapshot-threshold (default 100000, the server's default)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy every node's node.log of each run into DIR")
    p.add_argument("--json", default="benchmark_stability.json", help="result file in benchmarks/results/")
    args = p.parse_args(argv)
    if not B.have_redis_benchmark():
        print("error: redis-benchmark is needed (apt-get install redis-tools)", file=sys.stderr)
        return 2
    runs = []
    for i in range(1, args.runs + 1):
        r = one_run(args, i)
        runs.append(r)
        hbs = "; ".join(f"{n}: sent {((h or {}).get('sent_gap_ms') or {}).get('max')} "
                        f"recv {((h or {}).get('received_gap_ms') or {}).get('max')}" for n, h in r["heartbeat"].items())
        print(f"run {i}: leader changes {r['leader_changes']}, error replies {r['error_replies']}, "
              f"p99 quiet {r['p99_ms_quiet']} ms, during snapshot {r['p99_ms_snapshot']} ms "
              f"({r['snapshot_seconds']} s with a snapshot in flight), heartbeat gap max ms: {hbs}; "
              f"converged {r['converged']['digest']}", flush=True)
        for e in (r["probe_errors"] + r["redis_benchmark_errors"])[:5]:
            print("   error:", e)
    rows = [[r["run"], r["leader_changes"], r["error_replies"], r["p99_ms_quiet"], r["p99_ms_snapshot"],
             round(r["p99_ms_snapshot"] / r["p99_ms_quiet"], 2) if r["p99_ms_snapshot"] and r["p99_ms_quiet"] else None,
             max((((h or {}).get("sent_gap_ms") or {}).get("max") or 0) for h in r["heartbeat"].values()),
             max((((h or {}).get("received_gap_ms") or {}).get("max") or 0) for h in r["heartbeat"].values()),
             max(((h or {}).get("quorum_silence_max_ms") or 0) for h in r["heartbeat"].values()),
             r["probe_ops"], len(r["converged"]["digest"]) == 1] for r in runs]
    print()
    print(f"{args.keys:,} keys, {args.duration:.0f} s of redis-benchmark c=50 + -P 16, {args.hogs} CPU hogs, "
          "SNAPSHOT everywhere + automatic snapshots")
    print(B.render(["run", "leader changes", "error replies", "probe p99 ms", "p99 ms in snapshot",
                    "ratio", "hb sent gap max ms", "hb recv gap max ms", "quorum silence max ms",
                    "probe ops", "converged"], rows))
    ok = sum(1 for r in runs if r["leader_changes"] == 0 and r["error_replies"] == 0)
    print(f"summary: {ok} of {len(runs)} runs with 0 leader changes and 0 error replies")
    out = {"benchmark": "stability", "args": vars(args), "environment": B.environment(),
           "runs": [{k: v for k, v in r.items() if k not in ("timeline", "probe")} for r in runs]}
    print("wrote", B.write_json(args.json, out))
    if runs and plot(runs[-1], os.path.join(B.RESULTS_DIR, "benchmark_stability.png")):
        print("wrote", os.path.join(B.RESULTS_DIR, "benchmark_stability.png"))
    return 0 if ok == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
