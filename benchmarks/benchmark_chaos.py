#!/usr/bin/env python3
"""benchmark_chaos.py: Jepsen-style runs against a live 3-node cluster in network namespaces.

    sudo python benchmarks/benchmark_chaos.py --runs 1 --duration 15
    python benchmarks/benchmark_chaos.py --runs 20 --duration 60 --nemesis kill,pause-primary --clients 6

Each run (kv_chaos.run_chaos): a fresh cluster with each node in its own network namespace,
`--clients` clients on a few keys recording every operation, a nemesis applying the chosen
fault kinds one after the other (default: all of kv_chaos.NEMESES), a STATUS poller, then the
checks: linearizable history, no acknowledged write lost, convergence (applied index + digest),
never two primaries in one term.  Prints one row per run and a summary line, writes
benchmarks/results/benchmark_chaos.json, and exits 1 when any run found an anomaly (2 when the
namespaces cannot be made: root, ip and iptables are needed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from kv_chaos import NEMESES, power_loss_run, run_chaos, summarize  # noqa: E402
from kv_localcluster import NamespaceUnavailable  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def power_loss_table(args) -> int:
    policies = [x.strip() for x in args.power_loss.split(",") if x.strip()]
    print(f"power loss of all 3 nodes after {args.load:g}s of writes by {args.clients} clients, {args.runs} run(s) each")
    print(f"{'fsync':>8} {'run':>3} {'acked':>7} {'lost':>6} {'lost %':>7} {'oldest lost ack':>16}")
    rows = []
    for pol in policies:
        for i in range(args.runs):
            try:
                r = power_loss_run(pol, load_seconds=args.load, clients=args.clients)
            except NamespaceUnavailable as e:
                print(f"cannot run: {e}", file=sys.stderr)
                return 2
            rows.append(r)
            pct = 100.0 * r["lost"] / r["acked"] if r["acked"] else 0.0
            print(f"{pol:>8} {i + 1:>3} {r['acked']:>7} {r['lost']:>6} {pct:>6.1f}% "
                  f"{r['lost_window_s']:>14.2f}s", flush=True)
    path = args.json.replace("benchmark_chaos.json", "benchmark_power_loss.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"args": vars(args), "runs": rows}, f, indent=1)
    lost_always = sum(r["lost"] for r in rows if r["fsync"] == "always")
    print(f"summary: {len(rows)} power losses; fsync always lost {lost_always}; wrote {path}")
    return 1 if lost_always else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="number of runs (default 20)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of faults per run (default 60)")
    ap.add_argument("--nemesis", default=",".join(NEMESES),
                    help=f"comma-separated fault kinds (default all: {','.join(NEMESES)})")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--keys", type=int, default=3, help="keys the clients share (default 3)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the first run (default random)")
    ap.add_argument("--server-args", default="", help="extra server flags, e.g. --unsafe-no-read-lease")
    ap.add_argument("--json", default=os.path.join(RESULTS, "benchmark_chaos.json"), help="result file")
    ap.add_argument("--power-loss", default=None, metavar="POLICIES",
                    help="instead of chaos runs: crash-all as a power loss under load for each fsync policy "
                         "(e.g. always,everysec,no), --runs times each, and count the acknowledged writes lost")
    ap.add_argument("--load", type=float, default=5.0, help="--power-loss: seconds of writes before the crash")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every node, namespace, rule and mount is removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.power_loss:
        return power_loss_table(args)
    kinds = [k.strip() for k in args.nemesis.split(",") if k.strip()]
    bad = [k for k in kinds if k not in NEMESES]
    if bad:
        ap.error(f"unknown nemesis {', '.join(bad)}; known: {', '.join(NEMESES)}")
    if args.runs < 1 or args.duration <= 0 or args.clients < 1 or args.keys < 1:
        ap.error("--runs, --duration, --clients and --keys must be positive")

    print(f"{args.runs} run(s) of {args.duration:g}s, nemesis {','.join(kinds)}, {args.clients} clients, "
          f"{args.keys} keys")
    hdr = (f"{'run':>3} {'seed':>10} {'ops':>7} {'ok':>7} {'fail':>6} {'info':>5} {'faults':>6} "
           f"{'acked w':>7} {'lost':>4} {'lin':>4} {'check s':>7} {'conv':>4} {'2prim':>5}  anomalies")
    print(hdr)
    runs = []
    t_start = time.monotonic()
    for i in range(args.runs):
        seed = None if args.seed is None else args.seed + i
        try:
            r = run_chaos(duration=args.duration, kinds=kinds, clients=args.clients, keys=args.keys, seed=seed,
                          extra_args=args.server_args.split())
        except NamespaceUnavailable as e:
            print(f"cannot run: {e}", file=sys.stderr)
            return 2
        runs.append(r)
        c = r["counts"]
        print(f"{i + 1:>3} {r['seed']:>10} {r['ops']:>7} {c['ok']:>7} {c['fail']:>6} {c['info']:>5} "
              f"{len(r['faults']):>6} {r['acked_writes']:>7} {len(r['lost']):>4} "
              f"{'yes' if r['linearizable'] else 'NO':>4} {r['check_seconds']:>7.2f} "
              f"{'yes' if r['converged'] else 'NO':>4} {len(r['double_primaries']):>5}  "
              f"{'; '.join(r['anomalies'])[:300] or '-'}", flush=True)
    s = summarize(runs)
    kinds_seen = sorted({f[1] for r in runs for f in r["faults"]})
    print(f"summary: {s['runs']} runs, {s['ops']} ops checked ({s['ok']} ok, {s['fail']} definite fail, "
          f"{s['info']} indefinite), {s['faults']} faults ({', '.join(kinds_seen)}), "
          f"{s['linearizability_violations']} linearizability violations, {s['lost_acknowledged']} lost of "
          f"{s['acknowledged_writes_checked']} acknowledged writes, {s['double_primaries']} same-term double "
          f"primaries, {s['not_converged']} runs not converged, in {time.monotonic() - t_start:.0f}s")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "summary": s, "runs": runs}, f, indent=1, default=str)
    print(f"wrote {args.json}")
    return 1 if s["anomalies"] else 0


if __name__ == "__main__":
    sys.exit(main())
