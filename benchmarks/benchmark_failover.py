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
import json
import os
import random
import socket
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import benchmark_node as B  # noqa: E402
from benchmark_cluster import make_cluster  # noqa: E402

HOST = B.HOST


class LineConn:
    """One persistent line-protocol connection (blocking, with timeouts)."""

    def __init__(self, port: int, connect_timeout: float = 0.3, timeout: float = 7.0):
        self.sock = socket.create_connection((HOST, port), timeout=connect_timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send_lines(self, lines: list[bytes]) -> None:
        self.sock.sendall(b"".join(lines))

    def read_line(self) -> dict:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return json.loads(line)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the node")
            self.buf += chunk

    def call(self, line: str) -> dict:
        self.send_lines([line.encode() + b"\n"])
        return self.read_line()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------- poller
class Poller:
    """One thread per node: STATUS every `interval` s.  Keeps a timeline and flags two primaries
    in one term."""

    def __init__(self, ports: dict[str, int], interval: float = 0.05):
        self.ports = ports
        self.interval = interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.leaders: dict[int, str] = {}          # term -> node seen primary in it
        self.violations: list[str] = []
        self.timeline: list[tuple] = []            # (t, node, role or "down", term, primary)
        self.polls = 0
        self.threads = [threading.Thread(target=self._run, args=(nid,), daemon=True, name=f"poll-{nid}")
                        for nid in ports]

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
        port = self.ports[nid]
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            t = time.monotonic()
            st = None
            try:
                if conn is None:
                    conn = LineConn(port, connect_timeout=0.2, timeout=0.5)
                st = conn.call("STATUS")
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
class Load:
    """Shared state of the writers: acknowledged writes, pause/stop, counters."""

    def __init__(self, ports: dict[str, int], run_id: str):
        self.ports = ports
        self.run_id = run_id
        self.lock = threading.Lock()
        self.acks: list[tuple] = []        # (round, key, value, node, t_sent, t_ack)
        self.round = 0
        self.running = threading.Event()   # set = writers may issue writes
        self.stop_event = threading.Event()
        self.idle: dict[int, bool] = {}
        self.counters = {"not_primary": 0, "conn_errors": 0, "indefinite": 0, "other_errors": 0,
                         "abandoned": 0}
        self.other_error_samples: list[str] = []

    def bump(self, what: str, sample: str | None = None) -> None:
        with self.lock:
            self.counters[what] += 1
            if sample and len(self.other_error_samples) < 10:
                self.other_error_samples.append(sample)

    def pause(self, timeout: float = 30.0) -> bool:
        """Stop issuing writes and wait until no writer has a write in flight."""
        self.running.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(self.idle.values()):
                    return True
            time.sleep(0.01)
        return False

    def resume(self, round_no: int) -> None:
        with self.lock:
            self.round = round_no
        self.running.set()


class Writer(threading.Thread):
    def __init__(self, wid: int, load: Load, node_ids: list[str]):
        super().__init__(daemon=True, name=f"writer-{wid}")
        self.wid = wid
        self.load = load
        self.node_ids = node_ids
        self.target = node_ids[0]
        self.conns: dict[str, LineConn] = {}
        self.down_until: dict[str, float] = {}
        self.seq = 0
        load.idle[wid] = True

    def _conn(self, nid: str) -> LineConn:
        c = self.conns.get(nid)
        if c is None:
            c = LineConn(self.load.ports[nid])
            self.conns[nid] = c
        return c

    def _drop(self, nid: str) -> None:
        c = self.conns.pop(nid, None)
        if c is not None:
            c.close()

    def _next_node(self, after: str) -> str:
        i = self.node_ids.index(after)
        now = time.monotonic()
        for k in range(1, len(self.node_ids) + 1):
            cand = self.node_ids[(i + k) % len(self.node_ids)]
            if self.down_until.get(cand, 0) <= now:
                return cand
        return self.node_ids[(i + 1) % len(self.node_ids)]

    def run(self) -> None:
        load = self.load
        rnd = random.Random(self.wid)
        try:
            while not load.stop_event.is_set():
                if not load.running.is_set():
                    with load.lock:
                        load.idle[self.wid] = True
                    load.running.wait(0.1)
                    continue
                with load.lock:
                    load.idle[self.wid] = False
                    round_no = load.round
                self.seq += 1
                key = f"fo{load.run_id}:w{self.wid}:{self.seq}"
                value = f"v{self.wid}-{self.seq}-{rnd.getrandbits(32):08x}"
                self._write(key, value, round_no)
        finally:
            for nid in list(self.conns):
                self._drop(nid)
            with load.lock:
                load.idle[self.wid] = True

    def _write(self, key: str, value: str, round_no: int) -> None:
        """Send one SET until it is acknowledged, or give it up when the writers are paused."""
        load = self.load
        line = f"SET {key} {value}"
        misses = 0
        while not load.stop_event.is_set():
            if not load.running.is_set():
                load.bump("abandoned")
                return
            nid = self.target
            t_sent = time.monotonic()
            try:
                ans = self._conn(nid).call(line)
            except (OSError, ValueError) as e:
                self._drop(nid)
                load.bump("conn_errors")
                if not isinstance(e, ConnectionRefusedError):   # it may have reached the node
                    load.bump("indefinite")
                self.down_until[nid] = time.monotonic() + 0.2
                self.target = self._next_node(nid)
                misses += 1
                time.sleep(min(0.05, 0.005 * misses))
                continue
            t_ack = time.monotonic()
            if ans.get("status") == "OK":
                with load.lock:
                    load.acks.append((round_no, key, value, nid, t_sent, t_ack))
                return
            code = ans.get("code")
            if code == "NOT_PRIMARY":
                load.bump("not_primary")
                hint = ans.get("primary")
                if hint in load.ports and hint != nid and self.down_until.get(hint, 0) <= time.monotonic():
                    self.target = hint
                else:
                    self.target = self._next_node(nid)
                    misses += 1
                    time.sleep(min(0.05, 0.005 * misses))
            elif code in ("TIMEOUT", "NO_QUORUM") or ans.get("definite") is False:
                load.bump("indefinite")
                misses += 1
                time.sleep(min(0.05, 0.005 * misses))
            else:
                load.bump("other_errors", json.dumps(ans)[:200])
                misses += 1
                time.sleep(min(0.05, 0.005 * misses))


# ----------------------------------------------------------------------------- checks
def statuses(cluster, ids) -> dict:
    return {nid: B.line_call(cluster.port(nid), "STATUS", timeout=0.5) for nid in ids}


def wait_converged(cluster, ids, timeout: float) -> tuple[dict | None, float]:
    """All nodes answer, exactly one is primary, and all report the same last_applied,
    commit_index and digest.  Returns (statuses or None on timeout, seconds waited)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        sts = statuses(cluster, ids)
        if all(s is not None and s.get("status") == "OK" for s in sts.values()):
            if sum(1 for s in sts.values() if s["role"] == "primary") == 1 and all(
                    len({s[f] for s in sts.values()}) == 1 for f in ("last_applied", "commit_index", "digest")):
                return sts, time.monotonic() - t0
        time.sleep(0.03)
    return None, time.monotonic() - t0


def find_primary(cluster, ids, timeout: float = 20.0, exclude=()) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = statuses(cluster, [i for i in ids if i not in exclude])
        prims = [i for i, s in sts.items() if s and s.get("role") == "primary"]
        if len(prims) == 1:
            p = prims[0]
            term = sts[p]["election_term"]
            if sum(1 for s in sts.values() if s and s.get("primary") == p and s.get("election_term") == term) >= 2:
                return p
        time.sleep(0.03)
    return None


def verify(cluster, ids, writes: list[tuple], batch: int = 500, attempts: int = 10) -> dict:
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
                prim = find_primary(cluster, ids, 20)
                if prim is None:
                    tries += 1
                    continue
                conn = LineConn(cluster.port(prim), connect_timeout=1.0, timeout=10.0)
            chunk = writes[i:i + batch]
            conn.send_lines([f"GET {w[1]}\n".encode() for w in chunk])
            answers = [conn.read_line() for _ in chunk]
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
    p.add_argument("--mini-cluster", action="store_true", help="use benchmark_cluster.MiniCluster")
    p.add_argument("--extra-args", default="", help="more server flags for every node, space separated")
    p.add_argument("--json", default=None, help="result file name in benchmarks/results/")
    args = p.parse_args(argv)

    env = B.environment()
    env["loadavg_start"] = B.loadavg()
    run_id = f"{random.getrandbits(24):06x}"
    print(f"benchmark_failover: {args.rounds} rounds of kill -9 of the primary, {args.writers} writers, "
          f"{args.nodes} nodes, fsync {args.fsync}; loadavg {env['loadavg_start']}", flush=True)
    cluster = poller = load = None
    writers: list[Writer] = []
    rounds: list[dict] = []
    final = None
    all_acks: list = []
    t_base = time.monotonic()
    launcher = None
    try:
        cluster, launcher = make_cluster(args.nodes, args.fsync, extra_args=args.extra_args.split(),
                                         prefer_local=not args.mini_cluster)
        ids = list(cluster.ids)
        ports = {nid: cluster.port(nid) for nid in ids}
        print(f"  cluster via {launcher}: {ports}", flush=True)
        poller = Poller(ports, args.poll_interval).start()
        load = Load(ports, run_id)
        writers = [Writer(i + 1, load, ids) for i in range(args.writers)]
        for w in writers:
            w.start()
        for rno in range(1, args.rounds + 1):
            rec: dict = {"round": rno}
            rounds.append(rec)
            victim = find_primary(cluster, ids, 20)
            rec["victim"] = victim
            if victim is None:
                rec["error"] = "no single primary within 20 s"
                print(f"  round {rno}: {rec['error']}", flush=True)
                break
            rec["victim_pid"] = cluster.pid(victim) if hasattr(cluster, "pid") else None
            load.resume(rno)
            t_start = time.monotonic()
            deadline = t_start + max(15.0, args.pre_kill * 5)
            while time.monotonic() < deadline:
                with load.lock:
                    n_ok = sum(1 for a in load.acks if a[0] == rno and a[3] == victim)
                if time.monotonic() - t_start >= args.pre_kill and n_ok >= args.min_acks:
                    break
                time.sleep(0.01)
            rec["acks_before_kill"] = n_ok
            with load.lock:
                n_before = len(load.acks)
            t_kill = time.monotonic()
            cluster.kill(victim)
            rec["t_kill"] = t_kill
            # failover: the first write acknowledged by another node after the kill
            first = None
            deadline = t_kill + args.failover_timeout
            scan = n_before
            while first is None and time.monotonic() < deadline:
                with load.lock:
                    new = load.acks[scan:]
                    scan = len(load.acks)
                for a in new:
                    if a[3] != victim and a[5] > t_kill:
                        first = a
                        break
                if first is None:
                    time.sleep(0.002)
            if first is None:
                rec["failover_s"] = None
                rec["error"] = f"no write acknowledged by another node within {args.failover_timeout} s"
            else:
                rec["failover_s"] = round(first[5] - t_kill, 4)
                rec["new_primary"] = first[3]
            time.sleep(args.post_kill)
            seen = poller.first_primary_after(t_kill, victim)    # (after the sleep: the poller lags)
            rec["new_primary_seen_by_poller_s"] = round(seen[0] - t_kill, 4) if seen else None
            rec["new_term"] = seen[2] if seen else None
            rec["writers_paused"] = load.pause(30)
            t_r = time.monotonic()
            try:
                cluster.restart(victim)
                rec["restarted"] = True
            except Exception as e:     # NodeFailed / WaitTimeout: report, keep the other rounds
                rec["restarted"] = False
                rec["error"] = f"restart of {victim} failed: {type(e).__name__}: {e}"
            rec["restart_s"] = round(time.monotonic() - t_r, 3)
            sts, waited = wait_converged(cluster, ids, 30)
            rec["converge_s"] = round(waited, 3)
            rec["digests_equal"] = sts is not None
            if sts is not None:
                s0 = next(iter(sts.values()))
                rec["last_applied"], rec["digest"] = s0["last_applied"], s0["digest"]
            else:
                rec["statuses_at_timeout"] = {k: (v and {f: v.get(f) for f in ("role", "election_term",
                                              "last_applied", "commit_index", "digest")})
                                              for k, v in statuses(cluster, ids).items()}
            with load.lock:
                mine = [a for a in load.acks if a[0] == rno]
            rec["acks"] = len(mine)
            rec["acks_by_new_primary"] = sum(1 for a in mine if a[3] != victim)
            v = verify(cluster, ids, mine)
            rec.update({"checked": v["checked"], "lost": v["lost"], "unchecked": v["unchecked"],
                        "lost_samples": v["lost_samples"]})
            print(f"  round {rno:2d}: killed {victim} -> {rec.get('new_primary')} "
                  f"failover {rec['failover_s']} s (poller saw primary after {rec['new_primary_seen_by_poller_s']} s)"
                  f"; acks {rec['acks']} checked {rec['checked']} lost {rec['lost']}"
                  f"; digests equal {rec['digests_equal']} after {rec['converge_s']} s"
                  + (f"; ERROR {rec['error']}" if rec.get("error") else ""), flush=True)
        load.pause(30)
        with load.lock:
            all_acks = list(load.acks)
        final = verify(cluster, ids, all_acks)
        print(f"  final check of all {len(all_acks)} acknowledged writes: checked {final['checked']} "
              f"lost {final['lost']} unchecked {final['unchecked']}", flush=True)
    finally:
        if load is not None:
            load.stop_event.set()
            load.running.set()
        for w in writers:
            w.join(10)
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
        "writer_counters": load.counters if load else None,
        "writer_error_samples": load.other_error_samples if load else None,
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
