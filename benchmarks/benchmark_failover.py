#!/usr/bin/env python3
"""benchmark_failover.py: K rounds of `kill -9` of the primary under concurrent writes.

    python benchmarks/benchmark_failover.py                   # 20 rounds, 4 writers, fsync always
    python benchmarks/benchmark_failover.py --rounds 5 --writers 8 --pre-kill 2

Per round:
  1. wait for a single primary; let the writers run for --pre-kill seconds (and until the primary
     acknowledged at least --min-acks of this round's writes);
  2. kill -9 the primary (by PID) at t_kill;
  3. failover time = t_kill -> the first write acknowledged by another node (the new primary);
  4. keep writing --post-kill seconds on the new primary, then pause the writers;
  5. restart the victim (it rejoins as a secondary), wait until all nodes report the same
     last_applied, commit_index and digest (-> "digests equal" for the round);
  6. read every write acknowledged in this round back from the primary (GET, pipelined): a missing
     key or another value is a LOST write.
At the end every write acknowledged in any round is read back once more.

Writers: --writers threads, each with its own connections, unique keys and values; a write goes to
the node believed primary, follows NOT_PRIMARY hints, tries the other nodes on connection errors,
and is re-sent (same key, same value: idempotent) after indefinite answers (TIMEOUT, NO_QUORUM,
connection lost mid-request).  Only "status": "OK" answers count as acknowledged.

Poller: one thread per node reads STATUS every --poll-interval (50 ms) seconds; two nodes reporting
role "primary" with the same election_term at any time is flagged (Raft Election Safety).

Prints the per-round table and min/median/max failover time, writes checked and lost, digests equal
after every round (yes/no), two primaries in one term (yes/no); writes
benchmarks/results/benchmark_failover.json (and results/benchmark_failover.png when matplotlib is
importable).  Every process it starts is stopped by PID before it returns.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import benchmark_node as B  # noqa: E402
from benchmark_cluster import make_cluster  # noqa: E402
from kv_localcluster import LineClient, RetryingWriter, WaitTimeout  # noqa: E402

HOST = B.HOST


# ----------------------------------------------------------------------------- poller
class Poller:
    """One thread per node: STATUS every `interval` s.  Keeps a timeline and flags two primaries
    in one term."""

    def __init__(self, addrs: dict[str, str], interval: float = 0.05):
        self.ports = addrs
        self.interval = interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.leaders: dict[int, str] = {}          # term -> node seen primary in it
        self.violations: list[str] = []
        self.timeline: list[tuple] = []            # (t, node, role or "down", term, primary)
        self.polls = 0
        self.threads = [threading.Thread(target=self._run, args=(nid,), daemon=True, name=f"poll-{nid}")
                        for nid in addrs]

    def start(self):
        self.t_start = time.monotonic()
        self.t_stop = None
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.t_stop = time.monotonic()
        self.stop_event.set()
        for t in self.threads:
            t.join(5)

    def _run(self, nid: str) -> None:
        conn = None
        addr = self.ports[nid]
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            t = time.monotonic()
            st = None
            try:
                if conn is None:
                    conn = LineClient(addr, timeout=0.5)
                st = conn.request("STATUS")
            except (OSError, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
            self._record(t, nid, st)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:                    # fell behind (a slow answer): do not burst to catch up
                next_at = time.monotonic()
                delay = 0
            self.stop_event.wait(delay)
        if conn is not None:
            conn.close()

    def _record(self, t: float, nid: str, st: dict | None) -> None:
        with self.lock:
            self.polls += 1
            if st is None or st.get("status") != "OK":
                self.timeline.append((t, nid, "down", None, None))
                return
            role, term = st.get("role"), st.get("election_term")
            self.timeline.append((t, nid, role, term, st.get("primary")))
            if role == "primary":
                seen = self.leaders.setdefault(term, nid)
                if seen != nid:
                    self.violations.append(f"{seen} and {nid} both reported primary in term {term} "
                                           f"(seen at t={t:.3f})")

    def first_primary_after(self, t0: float, exclude: str) -> tuple[float, str, int] | None:
        with self.lock:
            for t, nid, role, term, _ in self.timeline:
                if t > t0 and role == "primary" and nid != exclude:
                    return t, nid, term
        return None


# ----------------------------------------------------------------------------- writers
class RoundWriters:
    """The round's writers: kv_localcluster.RetryingWriter threads (follow NOT_PRIMARY hints,
    re-send after indefinite answers: each key is written once, so re-sending is idempotent),
    keys unique per run, round and writer.  stop() abandons the write in hand and joins."""

    def __init__(self, cluster, run_id: str, rno: int, n: int):
        self.stop_ev = threading.Event()
        self.abandon = threading.Event()
        self.writers = [RetryingWriter(f"writer-{w}", cluster.addresses(),
                                       (lambda w: lambda i: f"fo{run_id}:r{rno}:w{w}:{i}")(w),
                                       self.stop_ev, abandon=self.abandon)
                        for w in range(1, n + 1)]
        self.by_addr = {cluster.address(nid): nid for nid in cluster.ids}
        for w in self.writers:
            w.start()

    def acks(self, rno: int) -> list[tuple]:
        """(round, key, value, node, t_ack) of every acknowledged write."""
        return [(rno, key, value, self.by_addr.get(addr, addr), t)
                for w in self.writers for t, addr, key, value in list(w.ack_log)]

    def stop(self, timeout: float = 30.0) -> bool:
        self.stop_ev.set()
        self.abandon.set()
        for w in self.writers:
            w.join(timeout)
        return not any(w.is_alive() for w in self.writers)

    def counters(self) -> dict:
        keys = ("not_primary", "refused", "lost_in_flight", "indefinite", "failed")
        return {k: sum(getattr(w, k) for w in self.writers) for k in keys}


# ----------------------------------------------------------------------------- checks
def find_primary(cluster, timeout: float = 20.0, exclude=()) -> str | None:
    try:
        return cluster.wait_for_single_primary(timeout=timeout, exclude=exclude)
    except WaitTimeout:
        return None


def verify(cluster, writes: list[tuple], batch: int = 500, attempts: int = 10) -> dict:
    """GET every (key, value) of writes from the primary (pipelined).  -> checked, lost, samples."""
    lost = []
    checked = 0
    i = 0
    tries = 0
    conn = None
    prim = None
    while i < len(writes) and tries < attempts:
        try:
            if conn is None:
                prim = find_primary(cluster, 20)
                if prim is None:
                    tries += 1
                    continue
                conn = LineClient(cluster.address(prim), timeout=10.0)
            chunk = writes[i:i + batch]
            answers = conn.pipeline([f"GET {w[1]}" for w in chunk], batch=batch)
        except (OSError, ValueError):
            if conn is not None:
                conn.close()
            conn = None
            tries += 1
            continue
        if any(a.get("code") in ("NOT_PRIMARY", "NO_QUORUM", "TIMEOUT") for a in answers):
            conn.close()      # leadership moved: ask the new primary
            conn = None
            tries += 1
            continue
        for w, a in zip(chunk, answers):
            checked += 1
            if a.get("status") != "OK" or a.get("value") != w[2]:
                lost.append({"key": w[1], "want": w[2], "got": a, "acked_by": w[3], "round": w[0]})
        i += len(chunk)
    if conn is not None:
        conn.close()
    return {"checked": checked, "lost": len(lost), "unchecked": len(writes) - checked,
            "lost_samples": lost[:10], "read_from": prim}


# ----------------------------------------------------------------------------- main
def transitions(timeline: list[tuple], t_base: float) -> list[list]:
    """The poller's timeline reduced to changes: [t, node, role, term, primary] when any of them
    changes for that node (plus the per-node poll count), so the JSON stays small."""
    last: dict = {}
    out = []
    for t, nid, role, term, prim in sorted(timeline):
        if last.get(nid) != (role, term, prim):
            last[nid] = (role, term, prim)
            out.append([round(t - t_base, 3), nid, role, term, prim])
    return out


def maybe_png(path: str, rounds: list[dict], timeline: list[tuple], t_base: float) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    ids = sorted({e[1] for e in timeline})
    colors = {"primary": "tab:red", "secondary": "tab:blue", "candidate": "tab:orange", "down": "lightgray"}
    for y, nid in enumerate(ids):
        pts = [(t - t_base, role) for t, n, role, *_ in timeline if n == nid]
        for role, c in colors.items():
            xs = [x for x, r in pts if r == role]
            ax1.scatter(xs, [y] * len(xs), s=4, c=c, label=role if y == 0 else None)
    ax1.set_yticks(range(len(ids)), ids)
    ax1.legend(loc="upper right", markerscale=3)
    for r in rounds:
        ax1.axvline(r["t_kill"] - t_base, color="k", lw=0.5)
        ax2.bar(r["t_kill"] - t_base, r["failover_s"] or 0, width=1.0, color="tab:red")
    ax2.set_ylabel("failover s")
    ax2.set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20, help="kill -9 rounds (default 20)")
    p.add_argument("--writers", type=int, default=4, help="concurrent writer threads (default 4)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--fsync", choices=["always", "everysec", "no"], default="always")
    p.add_argument("--pre-kill", type=float, default=1.0, help="seconds of writes before each kill (default 1)")
    p.add_argument("--post-kill", type=float, default=0.5,
                   help="seconds of writes after the first ack on the new primary (default 0.5)")
    p.add_argument("--min-acks", type=int, default=20, help="acks from the primary before a kill (default 20)")
    p.add_argument("--failover-timeout", type=float, default=20.0, help="give a round up after this (default 20)")
    p.add_argument("--poll-interval", type=float, default=0.05, help="STATUS poll period (default 0.05)")
    p.add_argument("--extra-args", default="", help="more server flags for every node, space separated")
    p.add_argument("--json", default=None, help="result file name in benchmarks/results/")
    args = p.parse_args(argv)

    env = B.environment()
    env["loadavg_start"] = B.loadavg()
    run_id = f"{random.getrandbits(24):06x}"
    print(f"benchmark_failover: {args.rounds} rounds of kill -9 of the primary, {args.writers} writers, "
          f"{args.nodes} nodes, fsync {args.fsync}; loadavg {env['loadavg_start']}", flush=True)
    cluster = poller = rw = None
    counters: dict = {}
    rounds: list[dict] = []
    final = None
    all_acks: list = []
    t_base = time.monotonic()
    launcher = None
    try:
        cluster, launcher = make_cluster(args.nodes, args.fsync, extra_args=args.extra_args.split())
        ids = list(cluster.ids)
        addrs = {nid: cluster.address(nid) for nid in ids}
        print(f"  cluster via {launcher}: {addrs}", flush=True)
        poller = Poller(addrs, args.poll_interval).start()
        for rno in range(1, args.rounds + 1):
            rec: dict = {"round": rno}
            rounds.append(rec)
            victim = find_primary(cluster, 20)
            rec["victim"] = victim
            if victim is None:
                rec["error"] = "no single primary within 20 s"
                print(f"  round {rno}: {rec['error']}", flush=True)
                break
            rec["victim_pid"] = cluster.pid(victim)
            rw = RoundWriters(cluster, run_id, rno, args.writers)
            t_start = time.monotonic()
            deadline = t_start + max(15.0, args.pre_kill * 5)
            while time.monotonic() < deadline:
                n_ok = sum(1 for a in rw.acks(rno) if a[3] == victim)
                if time.monotonic() - t_start >= args.pre_kill and n_ok >= args.min_acks:
                    break
                time.sleep(0.01)
            rec["acks_before_kill"] = n_ok
            t_kill = time.monotonic()
            cluster.kill(victim)
            rec["t_kill"] = t_kill
            # failover: the first write acknowledged by another node after the kill
            first = None
            deadline = t_kill + args.failover_timeout
            while first is None and time.monotonic() < deadline:
                later = [a for a in rw.acks(rno) if a[3] != victim and a[4] > t_kill]
                if later:
                    first = min(later, key=lambda a: a[4])
                else:
                    time.sleep(0.002)
            if first is None:
                rec["failover_s"] = None
                rec["error"] = f"no write acknowledged by another node within {args.failover_timeout} s"
            else:
                rec["failover_s"] = round(first[4] - t_kill, 4)
                rec["new_primary"] = first[3]
            time.sleep(args.post_kill)
            seen = poller.first_primary_after(t_kill, victim)    # (after the sleep: the poller lags)
            rec["new_primary_seen_by_poller_s"] = round(seen[0] - t_kill, 4) if seen else None
            rec["new_term"] = seen[2] if seen else None
            rec["writers_paused"] = rw.stop(30)
            for k, v in rw.counters().items():
                counters[k] = counters.get(k, 0) + v
            t_r = time.monotonic()
            try:
                cluster.restart(victim)
                rec["restarted"] = True
            except Exception as e:     # NodeFailed / WaitTimeout: report, keep the other rounds
                rec["restarted"] = False
                rec["error"] = f"restart of {victim} failed: {type(e).__name__}: {e}"
            rec["restart_s"] = round(time.monotonic() - t_r, 3)
            t_c = time.monotonic()
            try:
                sts = cluster.wait_converged(timeout=30)
            except WaitTimeout:
                sts = None
            rec["converge_s"] = round(time.monotonic() - t_c, 3)
            rec["digests_equal"] = sts is not None
            if sts is not None:
                s0 = next(iter(sts.values()))
                rec["last_applied"], rec["digest"] = s0["last_applied"], s0["digest"]
            else:
                rec["statuses_at_timeout"] = {k: (v and {f: v.get(f) for f in ("role", "election_term",
                                              "last_applied", "commit_index", "digest")})
                                              for k, v in cluster.statuses(ids, timeout=0.5).items()}
            mine = rw.acks(rno)
            all_acks += mine
            rec["acks"] = len(mine)
            rec["acks_by_new_primary"] = sum(1 for a in mine if a[3] != victim)
            v = verify(cluster, mine)
            rec.update({"checked": v["checked"], "lost": v["lost"], "unchecked": v["unchecked"],
                        "lost_samples": v["lost_samples"]})
            print(f"  round {rno:2d}: killed {victim} -> {rec.get('new_primary')} "
                  f"failover {rec['failover_s']} s (poller saw primary after {rec['new_primary_seen_by_poller_s']} s)"
                  f"; acks {rec['acks']} checked {rec['checked']} lost {rec['lost']}"
                  f"; digests equal {rec['digests_equal']} after {rec['converge_s']} s"
                  + (f"; ERROR {rec['error']}" if rec.get("error") else ""), flush=True)
        final = verify(cluster, all_acks)
        print(f"  final check of all {len(all_acks)} acknowledged writes: checked {final['checked']} "
              f"lost {final['lost']} unchecked {final['unchecked']}", flush=True)
    finally:
        if rw is not None:
            rw.stop(10)
        if poller is not None:
            poller.stop()
        if cluster is not None:
            cluster.cleanup()
    env["loadavg_end"] = B.loadavg()

    fo = [r["failover_s"] for r in rounds if r.get("failover_s") is not None]
    completed = [r for r in rounds if "digests_equal" in r]
    summary = {
        "rounds_requested": args.rounds, "rounds_completed": len(completed),
        "failover_s": {"min": min(fo) if fo else None, "median": round(statistics.median(fo), 4) if fo else None,
                       "max": max(fo) if fo else None, "n": len(fo)},
        "writes_acknowledged": len(all_acks) or sum(r.get("acks", 0) for r in rounds),
        "writes_checked_per_round": sum(r.get("checked", 0) for r in rounds),
        "writes_lost_per_round": sum(r.get("lost", 0) for r in rounds),
        "final_checked": final["checked"] if final else None, "final_lost": final["lost"] if final else None,
        "final_unchecked": final["unchecked"] if final else None,
        "digests_equal_every_round": bool(completed) and len(completed) == args.rounds
        and all(r["digests_equal"] for r in completed),
        "two_primaries_in_one_term": bool(poller and poller.violations),
        "violations": poller.violations if poller else [],
        "status_polls": poller.polls if poller else 0,
        "status_polls_per_node_per_s": round(poller.polls / len(poller.ports)
                                             / max(1e-9, (poller.t_stop or time.monotonic()) - poller.t_start), 1)
        if poller else None,
        "writer_counters": counters,
        "errors": [r["error"] for r in rounds if r.get("error")],
    }
    out = {"benchmark": "failover", "args": vars(args), "environment": env, "launcher": launcher,
           "summary": summary, "rounds": [{k: (round(v - t_base, 4) if k == "t_kill" else v) for k, v in r.items()}
                                          for r in rounds],
           "final_check": final, "leaders_by_term": poller.leaders if poller else None,
           "status_transitions": transitions(poller.timeline, t_base) if poller else None}
    path = B.write_json(args.json or "benchmark_failover.json", out)
    try:
        png = maybe_png(os.path.join(B.RESULTS_DIR, "benchmark_failover.png"), [r for r in rounds if "t_kill" in r],
                        poller.timeline if poller else [], t_base)
    except (ValueError, TypeError, OSError, RuntimeError) as e:    # a plotting problem must not cost the results
        print(f"(PNG timeline not written: {type(e).__name__}: {e})")
        png = None

    rows = [[r["round"], r.get("victim"), r.get("new_primary", "-"), r.get("new_term", "-"),
             B.fmt(r.get("failover_s")), B.fmt(r.get("new_primary_seen_by_poller_s")),
             r.get("acks", "-"), r.get("checked", "-"), r.get("lost", "-"),
             "yes" if r.get("digests_equal") else "NO", B.fmt(r.get("converge_s"))] for r in rounds]
    print()
    print(B.render(["round", "killed", "new primary", "term", "failover s", "primary seen s", "acked",
                    "checked", "lost", "digests equal", "converge s"], rows))
    print()
    f = summary["failover_s"]
    yn = lambda b: "yes" if b else "no"
    print(B.render(["figure", "value"], [
        ["rounds", f"{summary['rounds_completed']} of {args.rounds}"],
        ["failover s (kill -9 -> first acked write on new primary) min / median / max",
         f"{B.fmt(f['min'])} / {B.fmt(f['median'])} / {B.fmt(f['max'])}"],
        ["acknowledged writes checked (per round) / lost", f"{summary['writes_checked_per_round']} / "
                                                           f"{summary['writes_lost_per_round']}"],
        ["all acknowledged writes re-checked at the end / lost", f"{summary['final_checked']} / {summary['final_lost']}"],
        ["digests equal on all nodes after every round", yn(summary["digests_equal_every_round"])],
        ["two primaries in one term (STATUS every 50 ms)", yn(summary["two_primaries_in_one_term"])],
        ["STATUS polls (per node per second)", f"{summary['status_polls']} ({summary['status_polls_per_node_per_s']})"],
    ]))
    if summary["errors"]:
        print("errors:", summary["errors"])
    print(f"writer counters: {summary['writer_counters']}")
    print(f"loadavg start {env['loadavg_start']} end {env['loadavg_end']}")
    print(f"wrote {path}" + (f" and {png}" if png else " (no PNG: matplotlib not importable)"))
    return 0 if (summary["writes_lost_per_round"] == 0 and not summary["two_primaries_in_one_term"]
                 and summary["digests_equal_every_round"] and (final is None or final["lost"] == 0)) else 1


if __name__ == "__main__":
    sys.exit(main())
