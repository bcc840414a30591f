"""kv_chaos.py: a Jepsen-style test of a live cluster: concurrent clients, a nemesis, checks.

    from kv_chaos import run_chaos, NEMESES
    result = run_chaos(duration=20, kinds=NEMESES, clients=4, seed=1)
    assert not result["anomalies"], result["anomalies"]

One run:
  1. a 3-node LocalCluster in network-namespace mode (each node in its own namespace with its
     own address; partitions are iptables DROP rules), node3's data dir on a small tmpfs when
     the disk fault is in the mix;
  2. `clients` threads run reads and writes on a few keys (so operations conflict) with unique
     written values, one attempt per operation, each recorded in a History with its invoke
     and complete times and outcome: ok, fail (a definite error: it did not happen) or info
     (indefinite: timeout, lost connection, `definite: false`);
  3. a StatusPoller asks every node for STATUS every 50 ms (LocalCluster checks every answer:
     two primaries in one term is a violation);
  4. the Nemesis applies faults one after the other, each for a bounded time, then repairs
     them (kinds in NEMESES, see Nemesis);
  5. at the end: repair everything, wait for convergence, read every key from the primary
     (recorded too), then check: the history is linearizable (kv_linearizability), every
     acknowledged write is in the final state unless a later write replaced it, all nodes
     report the same applied index and digest, never two primaries in one term.

Every process is stopped by PID, every namespace, rule and mount removed (LocalCluster.cleanup,
also at exit).  Nothing here sleeps to wait for a condition: waits poll with deadlines; the
fault durations are the nemesis's schedule.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

from kv_linearizability import History, check
from kv_localcluster import ClusterError, LocalCluster, WaitTimeout, call

__all__ = ["NEMESES", "Nemesis", "StatusPoller", "Client", "run_chaos", "lost_writes", "summarize",
           "power_loss_run"]

NEMESES = ("kill", "kill-all", "pause-primary", "isolate-primary", "isolate-secondary", "split", "disk")
DISK_NODE = "node3"
DISK_MB = 48
CLIENT_TIMEOUT = 1.0      # a request unanswered this long is indefinite (the node may be paused)


class Client(threading.Thread):
    """One client process: read or write a random key, one attempt per operation.

    It keeps one connection to the node it believes is primary; NOT_PRIMARY's hint (or the next
    node) picks the next target, as do a refused connection and DISK_FULL.  After NO_QUORUM or
    TIMEOUT a patient client (every other one) asks the same node again (it may recover, or
    step down and say so), an impatient one moves on like ClusterClient; after a request left
    unanswered both ask the same node again (as a client of a paused node would).  Outcomes: OK -> ok (a read's
    NOT_FOUND is ok with None); definite errors (NOT_PRIMARY, NO_QUORUM with definite true,
    DISK_FULL, connection refused) -> fail; everything else (timeout, connection lost after
    sending, indefinite codes) -> info."""

    def __init__(self, index: int, cluster: LocalCluster, history: History, keys: list[str],
                 stop: threading.Event, seed: int, think: float = 0.005, fresh_keys: str | None = None):
        super().__init__(name=f"client{index}", daemon=True)
        self.index = index
        self.c = cluster
        self.h = history
        self.keys = keys
        self.stop_ev = stop
        self.rng = random.Random(seed)
        self.think = think
        self.target = self.rng.choice(cluster.ids)
        self.patient = index % 2 == 0
        self.fresh_keys = fresh_keys     # writes only, each to a new key "<prefix>.<index>.<seq>"
        self.sock: socket.socket | None = None
        self.rfile = None
        self.seq = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_ev.is_set():
                self.one()
                self.stop_ev.wait(self.think)
        except BaseException as e:     # reported by run_chaos, never swallowed
            self.error = e
        finally:
            self._drop()

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = self.rfile = None

    def _next(self, hint: str | None = None) -> None:
        self._drop()
        if hint and hint in self.c.ids:
            self.target = hint
        else:
            ids = self.c.ids
            self.target = ids[(ids.index(self.target) + 1) % len(ids)]

    def one(self) -> None:
        key = self.rng.choice(self.keys) if self.keys else None
        if self.fresh_keys is not None:
            self.seq += 1
            key, value = f"{self.fresh_keys}.{self.index}.{self.seq}", self.seq
            op = self.h.invoke(self.name, "write", key, value)
            line = f"SET {key} {value}\n"
        elif self.rng.random() < 0.5:
            self.seq += 1
            value = self.index * 1_000_000 + self.seq
            op = self.h.invoke(self.name, "write", key, value)
            line = f"SET {key} {value}\n"
        else:
            op = self.h.invoke(self.name, "read", key)
            line = f"GET {key}\n"
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.c.addr(self.target), timeout=CLIENT_TIMEOUT)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.rfile = self.sock.makefile("rb")
        except OSError as e:
            self.h.complete(op, "fail", note=f"connect: {e}")
            self._next()
            self.stop_ev.wait(0.05)
            return
        try:
            self.sock.sendall(line.encode())
        except OSError as e:      # the request may have left in part: unknown
            self.h.complete(op, "info", note=f"send: {e}")
            self._next()
            return
        try:
            raw = self.rfile.readline()
            if not raw:
                raise ConnectionError("closed")
            ans = json.loads(raw)
        except (OSError, ValueError) as e:
            # no answer: the node may be paused or cut off; like a real client, try it again
            # (a node that is down refuses the next connection and moves us on)
            self.h.complete(op, "info", note=f"no answer: {e.__class__.__name__}")
            self._drop()
            return
        self.record(op, ans)

    def record(self, op, ans: dict) -> None:
        if ans.get("status") == "OK":
            self.h.complete(op, "ok", ans.get("value") if op.f == "read" else None)
            return
        code = ans.get("code")
        if op.f == "read" and code == "NOT_FOUND":
            self.h.complete(op, "ok", None)
            return
        if ans.get("definite", False):
            self.h.complete(op, "fail", note=code)
        else:
            self.h.complete(op, "info", note=code)
        if code == "NOT_PRIMARY":
            self._next(ans.get("primary"))
        elif code == "DISK_FULL" or not self.patient:
            self._next()
        else:            # NO_QUORUM, TIMEOUT: the primary may recover; ask it again shortly
            self.stop_ev.wait(0.02)


class StatusPoller(threading.Thread):
    """STATUS of every node every `interval` s; LocalCluster checks each answer (Election Safety)."""

    def __init__(self, cluster: LocalCluster, stop: threading.Event, interval: float = 0.05):
        super().__init__(name="status-poller", daemon=True)
        self.c = cluster
        self.stop_ev = stop
        self.interval = interval
        self.polls = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_ev.is_set():
                self.c.statuses(timeout=0.3)
                self.polls += 1
                self.stop_ev.wait(self.interval)
        except BaseException as e:
            self.error = e


class Nemesis:
    """Faults, each applied for a bounded time and then repaired:
        kill               kill -9 a random node, restart it
        kill-all           kill -9 every node at once, restart them all
        pause-primary      SIGSTOP the primary for 2-4 election timeouts, then SIGCONT; while it
                           is stopped, GETs of every key are queued on it (recorded like any client
                           op): a stale primary that answers them is caught by the checker
        isolate-primary    iptables-isolate the primary, heal
        isolate-secondary  the same for a secondary
        split              a random minority against the majority, heal
        disk               fill node3's small tmpfs to the last byte, free it again
    `log` lists (time, kind, detail) of what was done."""

    def __init__(self, cluster: LocalCluster, history: History, keys: list[str], rng: random.Random,
                 election_timeout: float = 0.3):
        self.c = cluster
        self.h = history
        self.keys = keys
        self.rng = rng
        self.et = election_timeout
        self.log: list[tuple[float, str, str]] = []
        self.t0 = time.monotonic()

    def note(self, kind: str, detail: str) -> None:
        self.log.append((round(time.monotonic() - self.t0, 2), kind, detail))

    def primary(self) -> str | None:
        try:
            return self.c.wait_for_single_primary(timeout=5)
        except WaitTimeout:
            return None

    def hold(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(seconds)        # the fault's duration (a schedule, not a wait for a condition)

    def apply(self, kind: str, stop: threading.Event, hold: float) -> None:
        c = self.c
        if kind == "kill":
            nid = self.rng.choice(c.ids)
            c.kill(nid)
            self.note(kind, nid)
            self.hold(hold, stop)
            c.start_node(nid)
        elif kind == "kill-all":
            c.kill_all()
            self.note(kind, "all")
            self.hold(hold / 2, stop)
            for nid in c.ids:
                c.start_node(nid, wait=False)
            c.wait_until(lambda: all(c.status(n, 0.5) for n in c.ids), 15, "every node back after kill-all")
        elif kind == "pause-primary":
            p = self.primary()
            if p is None:
                self.note(kind, "no primary")
                return
            c.pause(p)
            self.note(kind, p)
            try:
                self.c.wait_until(lambda: self._other_primary(p), 10, f"a primary other than paused {p}")
                self.hold(max(hold - 1.0, 0.5), stop)
                probes = self._queue_reads(p)
            finally:
                c.resume(p)
            self._finish_reads(probes)
        elif kind in ("isolate-primary", "isolate-secondary"):
            p = self.primary()
            if p is None:
                self.note(kind, "no primary")
                return
            nid = p if kind == "isolate-primary" else self.rng.choice([n for n in c.ids if n != p])
            c.isolate(nid)
            self.note(kind, nid)
            self.hold(hold, stop)
            c.heal()
        elif kind == "split":
            ids = list(c.ids)
            self.rng.shuffle(ids)
            minority = ids[:len(ids) // 2]
            c.partition([minority, ids[len(ids) // 2:]])
            self.note(kind, f"{minority} | {ids[len(ids) // 2:]}")
            self.hold(hold, stop)
            c.heal()
        elif kind == "disk":
            n = c.fill_disk(DISK_NODE)
            self.note(kind, f"{DISK_NODE} full ({n} filler bytes)")
            self.hold(hold, stop)
            c.free_disk(DISK_NODE)
        else:
            raise ValueError(f"unknown nemesis {kind!r}; known: {', '.join(NEMESES)}")

    def _other_primary(self, paused: str) -> str | None:
        ids = [n for n in self.c.ids if n != paused]
        sts = self.c.statuses(ids, timeout=0.3)
        prims = [n for n, s in sts.items() if s and s.get("role") == "primary"]
        return prims[0] if prims else None

    def _queue_reads(self, nid: str) -> list:
        """Send GET of every key to nid (paused) on fresh connections: the requests wait in its
        socket buffers and are served, or refused, when it resumes."""
        probes = []
        for k in self.keys:
            for _ in range(2):
                op = self.h.invoke("nemesis-probe", "read", k)
                try:
                    s = socket.create_connection(self.c.addr(nid), timeout=CLIENT_TIMEOUT)
                    s.sendall(f"GET {k}\n".encode())
                except OSError as e:
                    self.h.complete(op, "info", note=f"probe: {e}")
                    continue
                probes.append((op, s))
        return probes

    def _finish_reads(self, probes: list) -> None:
        for op, s in probes:
            try:
                s.settimeout(3.0)
                raw = s.makefile("rb").readline()
                ans = json.loads(raw) if raw else None
            except (OSError, ValueError):
                ans = None
            finally:
                s.close()
            if ans is None:
                self.h.complete(op, "info", note="probe: no answer")
            elif ans.get("status") == "OK":
                self.h.complete(op, "ok", ans.get("value"))
            elif ans.get("code") == "NOT_FOUND":
                self.h.complete(op, "ok", None)
            else:
                self.h.complete(op, "fail" if ans.get("definite") else "info", note=ans.get("code"))

    def run(self, kinds, stop: threading.Event, deadline: float, hold=(1.0, 2.0), quiet: float = 1.0) -> None:
        """Apply faults until `deadline`, and at least every kind once: each round is every kind
        once in a random order.  Each fault lasts uniform(*hold) seconds, then `quiet` seconds
        without a fault."""
        order = list(kinds)
        self.rng.shuffle(order)
        while (time.monotonic() < deadline and not stop.is_set()) or self._first_round(kinds):
            if not order:
                order = list(kinds)
                self.rng.shuffle(order)
            kind = order.pop()
            self.apply(kind, stop, hold=self.rng.uniform(*hold))
            self.hold(quiet, stop)        # let the cluster settle before the next fault

    def _first_round(self, kinds) -> bool:
        """True while some kind has not been applied yet."""
        return not set(kinds) <= {k for _, k, _ in self.log}


def lost_writes(history: History, final: dict) -> tuple[int, list[str]]:
    """Every acknowledged write must be in the final state unless another write replaced it:
    the final value of a key is the value of an acknowledged write no acknowledged write
    strictly followed, or of an indefinite write (it may take effect late).  Returns
    (acknowledged writes checked, problems)."""
    problems = []
    checked = 0
    by_key: dict[str, list] = {}
    for op in history.ops:
        if op.f == "write":
            by_key.setdefault(op.key, []).append(op)
    for key, ops in by_key.items():
        acked = [o for o in ops if o.outcome == "ok"]
        checked += len(acked)
        if not acked:
            continue
        latest = [o for o in acked if not any(x.call > o.ret for x in acked)]   # none followed them
        allowed = {o.value for o in latest} | {o.value for o in ops if o.outcome not in ("ok", "fail")}
        got = final.get(key)
        if got not in allowed:
            problems.append(f"{key}: final value {got!r}, but the last acknowledged write(s) "
                            f"{sorted(o.value for o in latest)[:3]} were not replaced by any write")
    return checked, problems


def summarize(runs: list[dict]) -> dict:
    tot = {k: sum(r["counts"][k] for r in runs) for k in ("ok", "fail", "info")}
    return {"runs": len(runs), "ops": sum(r["ops"] for r in runs), **tot,
            "linearizability_violations": sum(0 if r["linearizable"] else 1 for r in runs),
            "lost_acknowledged": sum(len(r["lost"]) for r in runs),
            "acknowledged_writes_checked": sum(r["acked_writes"] for r in runs),
            "double_primaries": sum(len(r["double_primaries"]) for r in runs),
            "not_converged": sum(0 if r["converged"] else 1 for r in runs),
            "anomalies": sum(len(r["anomalies"]) for r in runs),
            "faults": sum(len(r["faults"]) for r in runs)}


def run_chaos(duration: float = 20.0, kinds=NEMESES, clients: int = 4, keys: int = 3, seed: int | None = None,
              extra_args=(), on_event=None, netns: bool = True, hold=(1.0, 2.0), quiet: float = 1.0) -> dict:
    """One run; returns a dict: counts, faults, checks and `anomalies` (empty when all holds).
    The nemesis runs for `duration` seconds and at least until every kind was applied once."""
    say = on_event or (lambda s: None)
    kinds = list(kinds)
    for k in kinds:
        if k not in NEMESES:
            raise ValueError(f"unknown nemesis {k!r}; known: {', '.join(NEMESES)}")
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    small = {DISK_NODE: DISK_MB} if "disk" in kinds else None
    c = LocalCluster(n=3, netns=netns, proxied=not netns, small_disks=small, extra_args=extra_args)
    history = History()
    stop = threading.Event()
    key_names = [f"k{seed}-{i}" for i in range(keys)]
    result: dict = {"seed": seed, "kinds": kinds, "duration": duration}
    try:
        c.start(timeout=20)
        c.wait_for_single_primary(timeout=10)
        poller = StatusPoller(c, stop)
        workers = [Client(i, c, history, key_names, stop, seed=rng.randrange(1 << 30)) for i in range(clients)]
        poller.start()
        for w in workers:
            w.start()
        nem = Nemesis(c, history, key_names, rng)
        t0 = time.monotonic()
        try:
            nem.run(kinds, threading.Event(), deadline=t0 + duration, hold=hold, quiet=quiet)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=CLIENT_TIMEOUT + 5)
            poller.join(timeout=5)
        say(f"faults done after {time.monotonic() - t0:.1f}s: {len(nem.log)} faults")
        errors = [f"{w.name}: {w.error!r}" for w in workers if w.error] + \
                 ([f"poller: {poller.error!r}"] if poller.error else [])
        crashed = c.restore(timeout=30)
        try:
            sts = c.wait_converged(timeout=30)
            converged = True
            conv = {n: (s["last_applied"], s["digest"]) for n, s in sts.items()}
        except WaitTimeout as e:
            converged, conv = False, str(e)
        final = final_reads(c, history, key_names)
        lin = check(history.ops)
        acked, lost = lost_writes(history, final)
        try:
            c.check_safety()
            doubles = []
        except AssertionError as e:
            doubles = [str(e)]
        anomalies = [f"not linearizable: {a}" for a in lin.anomalies] + \
                    [f"lost acknowledged write: {p}" for p in lost] + doubles + \
                    ([] if converged else [f"no convergence: {conv}"]) + \
                    [f"crashed without being asked: {n}" for n in crashed] + errors
        result.update(counts=history.counts(), ops=len(history.ops), faults=nem.log,
                      linearizable=lin.ok, check_seconds=round(lin.seconds, 3), keys=lin.keys_checked,
                      acked_writes=acked, lost=lost, double_primaries=doubles, converged=converged,
                      convergence=conv, status_polls=poller.polls, anomalies=anomalies,
                      terms=sorted(c.leaders_by_term.items()))
        return result
    finally:
        stop.set()
        c.cleanup()


def final_reads(c: LocalCluster, history: History, keys: list[str]) -> dict:
    """GET every key on the primary (recorded in the history like any read); {key: value}."""
    out = {}
    for k in keys:
        def read():
            p = c.wait_for_single_primary(timeout=10)
            op = history.invoke("final", "read", k)
            try:
                ans = c.send(p, f"GET {k}", timeout=3)
            except (OSError, ValueError, ClusterError) as e:
                history.complete(op, "info", note=str(e))
                return None
            if ans.get("status") == "OK" or ans.get("code") == "NOT_FOUND":
                history.complete(op, "ok", ans.get("value"))
                return ("v", ans.get("value"))
            history.complete(op, "fail" if ans.get("definite") else "info", note=ans.get("code"))
            return None
        out[k] = c.wait_until(read, 15, f"a final read of {k}")[1]
    return out


def power_loss_run(fsync: str = "always", load_seconds: float = 3.0, clients: int = 4,
                   disk_mb: int = 64) -> dict:
    """Crash-all as a power loss (LocalCluster.power_loss: every node SIGKILLed and every write
    its kernel had not put on disk dropped) in the middle of `clients` writers, each writing
    fresh keys; restart, then read back every acknowledged key.  Returns {fsync, acked, lost,
    lost_window_s: how long before the crash the oldest lost write was acknowledged, ...}."""
    c = LocalCluster(n=3, fsync=fsync, crash_disks=disk_mb)
    history = History()
    stop = threading.Event()
    try:
        c.start(timeout=20)
        c.wait_for_single_primary(timeout=10)
        workers = [Client(i, c, history, [], stop, seed=i, think=0.0, fresh_keys=f"pl-{fsync}") for i in range(clients)]
        for w in workers:
            w.start()
        stop.wait(load_seconds)         # the load's duration
        t_crash = time.monotonic()      # (no answer can come after the kill that starts now)
        c.power_loss()
        stop.set()
        for w in workers:
            w.join(timeout=CLIENT_TIMEOUT + 5)
        for nid in c.ids:
            c.start_node(nid, wait=False)
        c.wait_for_single_primary(timeout=30)
        sts = c.wait_converged(timeout=30)
        acked = [op for op in history.ops if op.outcome == "ok" and op.ret <= t_crash]
        p = c.wait_for_single_primary(timeout=10)
        lost = []
        for i in range(0, len(acked), 500):
            chunk = acked[i:i + 500]
            answers = call(*c.addr(p), [f"GET {op.key}" for op in chunk], timeout=10)
            lost += [op for op, a in zip(chunk, answers) if a.get("value") != op.value]
        return {"fsync": fsync, "acked": len(acked), "lost": len(lost),
                "lost_window_s": round(max((t_crash - op.ret for op in lost), default=0.0), 3),
                "newest_lost_s": round(min((t_crash - op.ret for op in lost), default=0.0), 3),
                "load_seconds": load_seconds, "applied_after": next(iter(sts.values()))["last_applied"]}
    finally:
        stop.set()
        c.cleanup()

