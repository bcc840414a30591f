"""Deterministic simulation tests for the Raft core (kv_raft.RaftCore).

The core has no sockets, threads or clock, so a whole cluster runs here inside one process on a
simulated network and a simulated clock, with ONE random.Random(seed) deciding everything (timeouts,
delays, losses, faults).  Any failing schedule replays exactly from its seed.

Layout (reading order):
    SafetyViolation   an AssertionError that carries the seed, a replay command and the last events
    FakeStorage       one node's durable state: hard state (term, vote), log entries, snapshot
    SimNode           one node: its RaftCore (None while crashed), storage, state machine, clock
    FakeNetwork       the cluster: event queue (ticks, deliveries), faults, the host loop that feeds
                      Ready into storage/network/state machine exactly as kv_raft's contract says,
                      and the safety checks that run after EVERY step
    run_schedule      one randomized schedule (faults + client writes), then heal and check liveness
    test_*            named paper claims (init / step / check, docstring cites the paper section),
                      then the randomized schedules (>= 1,000 seeds, SIM_SCHEDULES raises the count)

Safety checked after every step (any event: tick, delivery, client call, fault):
    - at most one leader per term (every (term, leader) ever seen, from roles and from leader messages)
    - a vote is never changed within a term, term never decreases (hard state handed to storage);
      no message promises a term or a vote that is not durable yet
    - log matching: (index, term) always names the same entry with the same predecessor term
      (incrementally on every append; the whole in-memory log against the durable log every
      10 actions and at the end)
    - leader completeness: a new leader of term T holds every entry whose commit was observed at a
      term < T (observed = applied somewhere; the applier's current term bounds the commit term)
    - state-machine safety: no two nodes ever apply different entries at the same index; applied
      entries are durable locally first; no committed entry is ever truncated
    - commit_index never decreases (except across a restart from storage); applied has no gaps
    - lease safety: read_ok() is never True on two nodes at the same instant; a node with
      read_ok() knows every committed index; a read kv_store_server would serve then (read_ok()
      and the store has applied the leader's first entry) sees every acknowledged write and
      everything an earlier read saw (no stale read)
    - membership (§4): no two disjoint majorities (two live leaders of different terms each backed
      by a majority of its own configuration's voters at its own durable term); every commit is
      durable on a majority of the committing leader's voters (learners and removed nodes do not
      count); each configuration entry changes at most one voter; the configuration in force is
      the latest one in the durable log (or the snapshot meta's), after every append, truncation,
      snapshot and restart; the host is told of every change (Ready.config)
Liveness after healing: one leader, identical state everywhere, and a new write commits everywhere;
with membership changes also: every learner promoted, one configuration on every member, and a
removed node that still runs learns it was removed.

Fault model of the random schedules: message loss, duplication, reordering (random delays), rare
long delays (up to 3 election timeouts), stale replays of old messages, symmetric cuts, isolation,
majority/minority splits, crashes (immediately, or inside the host loop: before persisting, after
persisting but before sending, or after a leader's early REPLICATE as kv_store_server sends before
its fsync), quick restarts ("bounce"), restarts with start_election, snapshots/compaction,
leadership transfers, link-down reports, clock-rate drift, batched steps per ready().
Membership schedules (test_random_membership_schedules, >= 1,000 seeds, SIM_MEMBERSHIP_SCHEDULES)
add, on clusters starting with 1, 3 or 5 nodes: add (a new node with an empty data dir, a learner
promoted automatically), remove (any member, the leader itself), replace (kill a voter, remove it,
add a new node), decommissioning removed nodes or leaving them running, an operator that retries
the moment a new leader appears, and a restart of every node from disk at the end.

Replay one randomized schedule with its event trace:
    python test_consensus_sim.py --seed 123 -v    (add --membership for a membership schedule)
Run the module:  python test_consensus_sim.py   (or python -m pytest test_consensus_sim.py)
Soak:            SIM_SCHEDULES=20000 python -m pytest test_consensus_sim.py -k random
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from kv_raft import (CONFIG, LEADER, PRECANDIDATE, Membership, MembershipError, NotLeader, RaftCore,
                     handle_ready, majorities_can_be_disjoint)

try:
    from kv_storage import ReplicationLog
except ImportError:   # kv_storage.py not written yet: an entry with the same shape (INTERFACES.md)
    @dataclass(slots=True)
    class ReplicationLog:  # type: ignore[no-redef]
        index: int
        term: int
        op: str
        key: str | None = None
        value: Any = None
        kind: str = "json"

Entry = ReplicationLog
HB = 0.05          # defaults of kv_store_server.py
ET = 0.3
LEADER_MSGS = ("REPLICATE", "HEARTBEAT", "SYNC", "TIMEOUT_NOW")
_TICK, _DELIVER, _CALL = 0, 1, 2


def content(e) -> tuple:
    return (e.op, e.key, e.value, e.kind)


def clone_entry(e):
    return Entry(e.index, e.term, e.op, e.key, e.value, e.kind)


class SafetyViolation(AssertionError):
    pass


class FakeStorage:
    """What survives a crash: (term, voted_for), the log after the snapshot, the snapshot itself.
    Invariant: entries are contiguous and start at snap_index + 1."""

    __slots__ = ("term", "vote", "entries", "snap_index", "snap_term", "snap_state", "snap_config")

    def __init__(self):
        self.term = 0
        self.vote = None
        self.entries: list = []
        self.snap_index = 0
        self.snap_term = 0
        self.snap_state: dict = {}
        self.snap_config: Membership | None = None   # in the snapshot's meta (None: no snapshot)

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snap_index

    def term_at(self, index: int) -> int | None:
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index():
            return None
        return self.entries[index - self.snap_index - 1].term

    def entry_at(self, index: int):
        return self.entries[index - self.snap_index - 1]

    def config(self, boot: Membership) -> Membership:
        """The configuration this durable state restores: the last CONFIG entry of the log, else
        the snapshot's, else the bootstrap one (--peers / --join)."""
        for e in reversed(self.entries):
            if e.op == CONFIG:
                return Membership.from_dict(e.value)
        return self.snap_config if self.snap_config is not None else boot


class SimNode:
    """One simulated node.  core is None while crashed.  sm_state/applied is the state machine,
    rebuilt from the snapshot on restart.  Local clock = offset + rate * global time."""

    def __init__(self, nid: str, boot_config: Membership):
        self.id = nid
        self.boot_config = boot_config          # what --peers (or --join: empty) gives at boot
        self.retired = False                    # removed from the cluster and stopped for good
        self.core: RaftCore | None = None
        self.store = FakeStorage()
        self.sm_state: dict = {}
        self.applied = 0
        self.up = False
        self.incarnation = 0
        self.rate = 1.0
        self.offset = 0.0
        self.last_commit = 0
        self.last_term = 0
        self.crash_point: str | None = None    # crash while handling the next non-empty Ready
        self.pending: dict[int, tuple] = {}     # index -> (term, content) proposed here, not acked
        self.snapshots_installed = 0
        self.truncations = 0
        self.restarts = 0

    def __repr__(self):
        c = self.core
        if c is None:
            return f"<{self.id} {'retired' if self.retired else 'down'}>"
        ms = c.membership_state
        return (f"<{self.id} {c.role}{'' if ms == 'voter' else '/' + ms} t{c.current_term} "
                f"lead={c.leader_id} last={c.last_index}/{c.last_term} commit={c.commit_index} "
                f"applied={self.applied} snap={c.snapshot_index}"
                f"{' cfg=' + ','.join(sorted(c.voters)) if ms != 'voter' or c.role == LEADER else ''}>")


def fmt_msg(m: dict) -> str:
    t = m["type"]
    s = f"{m['from']}->{m['to']} {t} t{m['term']}"
    if t == "REPLICATE":
        ents = m["entries"]
        es = f"[{ents[0].index}/{ents[0].term}..{ents[-1].index}/{ents[-1].term}]" if ents else "[]"
        s += f" prev={m['prev_index']}/{m['prev_term']} ents={es} commit={m['commit']}"
    elif t == "REPLICATE_RESP":
        s += f" ok={m.get('success')} match={m.get('match_index')} hint={m.get('reject_hint')}"
    elif t == "ELECTION":
        s += (f" pre={m['prevote']} last={m['last_log_index']}/{m['last_log_term']}"
              f"{' transfer' if m.get('transfer') else ''}")
    elif t == "ELECTION_RESP":
        s += f" pre={m['prevote']} granted={m['granted']}"
    elif t == "HEARTBEAT":
        s += f" commit={m['commit']}"
    elif t in ("SYNC", "SYNC_RESP"):
        s += f" last={m.get('last_index')}/{m.get('last_term')} match={m.get('match_index')}"
    return s


class _Crashed(Exception):
    """A crash point fired inside handle_ready: the node is down, the rest of the Ready is lost."""


class _SimHost:
    """kv_raft.ReadyHost for one simulated node: each call goes to FakeNetwork's checked host."""
    __slots__ = ("net", "node")

    def __init__(self, net: "FakeNetwork", node: SimNode):
        self.net, self.node = net, node

    def send(self, messages, early):
        self.net._host_send(self.node, messages, early)

    def save_hard_state(self, term, voted_for):
        self.net._host_hard_state(self.node, term, voted_for)

    def truncate(self, from_index):
        self.net._host_truncate(self.node, from_index)

    def install_snapshot(self, snapshot):
        self.net._install_snapshot(self.node, snapshot)

    def append(self, entries):
        self.net._host_append(self.node, entries)

    def apply(self, entries):
        self.net._host_apply(self.node, entries)

    def config_changed(self, config):
        self.net._host_config_changed(self.node, config)


class FakeNetwork:
    """A simulated cluster of RaftCore objects on a lossy network, driven by one seeded RNG.

    Verbs: run_for(d), run_until(pred, timeout), leader(), wait_leader(), write(), transfer(),
    cut(a, b), isolate(n), recover(), crash(n), restart(n), take_snapshot(n), heal_and_converge().
    Knobs: loss, dup (duplication), delay=(lo, hi) (random delay => reordering), long_delay
    (probability of a delay of up to 3 election timeouts), drift (clock rate spread), batch
    (probability that a delivery is stepped without draining ready(), so several steps share one
    Ready, as when ClusterManager's inbox holds several messages), filters (callables
    msg -> True to drop, applied at send time).
    The host loop (_handle_ready) follows kv_raft's contract: persist hard_state, truncate, install
    a received snapshot, append entries + persisted(), send messages, apply committed entries.
    """

    def __init__(self, n: int = 3, seed: int = 0, *, heartbeat: float = HB, election: float = ET,
                 loss: float = 0.0, dup: float = 0.0, delay: tuple = (0.001, 0.005),
                 long_delay: float = 0.0, drift: float = 0.0, prevote: bool = True,
                 check_quorum: bool = True, start_election: str | tuple | None = None,
                 max_batch: int = 512, max_inflight: int = 64, snapshot_threshold: int = 0,
                 check_lease: bool = True, core_cls=RaftCore, tick_interval: float | None = None,
                 batch: float = 0.0, replay_hint: str | None = None, verbose: bool = False,
                 trace_len: int = 60, auto_promote: bool = True, promote_lag: int = 4):
        self.seed = seed
        self.drift = drift
        self.rng = random.Random(seed)
        self.now = 0.0
        self.hb = heartbeat
        self.et = election
        self.tick_interval = tick_interval or heartbeat / 2
        self.loss = loss
        self.dup = dup
        self.delay = delay
        self.long_delay = long_delay
        self.prevote = prevote
        self.check_quorum = check_quorum
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.snapshot_threshold = snapshot_threshold
        self.check_lease = check_lease
        self.batch = batch
        self.core_cls = core_cls
        self.auto_promote = auto_promote
        self.promote_lag = promote_lag
        self.replay_hint = replay_hint or f"python test_consensus_sim.py --seed {seed} -v"
        self.verbose = verbose
        self.ids = [f"n{i}" for i in range(1, n + 1)]     # every node ever created (add_node grows it)
        boot = Membership.of(self.ids)
        self.nodes = {nid: SimNode(nid, boot) for nid in self.ids}
        self.node_list = list(self.nodes.values())
        self.queue: list = []
        self.seq = 0
        self.steps = 0
        self.cut_links: set[tuple[str, str]] = set()
        self.filters: list[Callable[[dict], bool]] = []
        self.watchers: list[Callable[[dict], None]] = []   # see every delivered message
        self.history: deque = deque(maxlen=300)            # sent messages, for stale replays
        self.sync_streams: dict[tuple[str, str], tuple] = {}  # (leader, peer) -> running stream
        self.trace: deque = deque(maxlen=trace_len)
        self.stats: Counter = Counter()
        # global records for the safety checks
        self.leaders: dict[int, str] = {}          # term -> leader id, every leader ever seen
        self.leader_log: list[tuple[float, int, str]] = []
        self.applied_log: dict[int, tuple] = {}    # index -> (term, content), first applier
        self.commit_obs: dict[int, int] = {}       # index -> min current term of any applier
        self.lm: dict[tuple[int, int], tuple] = {}  # (index, term) -> (content, previous term)
        self.max_applied = 0
        self.max_visible = 0                         # highest index a client has seen (ack or read)
        self.acks: list[tuple[int, tuple]] = []     # writes acknowledged to a client
        self.committed_config: tuple[int, Membership] = (0, boot)   # latest committed CONFIG
        self.retire_when_removed: set[str] = set()  # stop these once their removal commits
        self.last_refusal: Exception | None = None   # why the last change() was refused
        self.on_new_leader: Callable[[], None] | None = None   # called (as an event) per new leader
        self.leader_nodes: set[str] = set()         # nodes seen in the leader role (may be stale)
        starters = (start_election,) if isinstance(start_election, str) else (start_election or ())
        for node in self.node_list:
            if drift:
                node.rate = 1.0 + self.rng.uniform(-drift, drift)
                node.offset = self.rng.uniform(0, 1000)
        for node in self.node_list:
            self._boot(node, start_election=node.id in starters)
        for a in self.ids:
            for b in self.ids:
                if a != b:
                    self._link_up(a, b)

    # ------------------------------------------------------------------ failure reporting
    def fail(self, what: str) -> None:
        lines = [f"seed={self.seed} t={self.now:.4f} step={self.steps}: {what}",
                 f"  replay: {self.replay_hint}", "  nodes: " + " ".join(map(repr, self.node_list)),
                 f"  leaders by term: {dict(sorted(self.leaders.items()))}", "  last events:"]
        lines += ["    " + self._fmt_event(ev) for ev in self.trace]
        raise SafetyViolation("\n".join(lines))

    @staticmethod
    def _fmt_event(ev) -> str:
        t, kind, data = ev
        if kind == "deliver":
            return f"{t:9.4f} deliver {fmt_msg(data)}"
        return f"{t:9.4f} {kind} {data}"

    def note(self, kind: str, data: Any) -> None:
        ev = (self.now, kind, data)
        self.trace.append(ev)
        if self.verbose:
            print(self._fmt_event(ev))

    # ------------------------------------------------------------------ clock and queue
    def local(self, node: SimNode) -> float:
        return node.offset + node.rate * self.now if self.drift else self.now

    def _push(self, t: float, kind: int, a, b) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, a, b))

    def run_until(self, pred: Callable[[], bool] | None = None, timeout: float = 1.0) -> bool:
        """Process events in time order until pred() holds (checked after each step) or timeout
        seconds of simulated time pass.  Returns pred() (True when pred is None)."""
        deadline = self.now + timeout
        q = self.queue
        while q and q[0][0] <= deadline:
            t, _, kind, a, b = heapq.heappop(q)
            self.now = t
            if kind == _TICK:
                self._on_tick(a, b)
            elif kind == _DELIVER:
                self._on_deliver(a, b)
            else:
                a(*b)
            self.steps += 1
            self._global_check()
            self._check_majorities()
            if pred is not None and pred():
                return True
        self.now = deadline
        return pred is None or bool(pred())

    def run_for(self, duration: float) -> None:
        self.run_until(None, duration)

    # ------------------------------------------------------------------ node lifecycle
    def _boot(self, node: SimNode, start_election: bool = False) -> None:
        st = node.store
        node.incarnation += 1
        config = st.snap_config if st.snap_config is not None else node.boot_config
        node.core = self.core_cls(
            node.id, [], config=config, auto_promote=self.auto_promote,
            promote_lag=self.promote_lag, heartbeat_interval=self.hb,
            election_timeout=self.et, rng=random.Random(self.rng.getrandbits(64)),
            now=self.local(node), term=st.term, voted_for=st.vote, entries=list(st.entries),
            snapshot_index=st.snap_index, snapshot_term=st.snap_term, start_election=start_election,
            prevote=self.prevote, check_quorum=self.check_quorum, max_batch=self.max_batch,
            max_inflight=self.max_inflight, entry_factory=Entry)
        node.sm_state = dict(st.snap_state)
        node.applied = st.snap_index
        node.last_commit = node.core.commit_index
        node.last_term = st.term
        node.crash_point = None
        node.pending = {}
        node.up = True
        node.host_config = node.core.config
        self._push(self.now + self.tick_interval * self.rng.random(), _TICK, node, node.incarnation)
        self.note("boot", f"{node.id} term={st.term} vote={st.vote} snap={st.snap_index} "
                          f"log={st.last_index()}{' start_election' if start_election else ''}")
        if node.core.config != st.config(node.boot_config):
            self.fail(f"{node.id} restarts with configuration {node.core.config}, its disk holds "
                      f"{st.config(node.boot_config)} (§4.1: the latest one in the log)")
        self._process(node)

    def crash(self, nid: str, point: str | None = None) -> None:
        """Crash now (point=None) or while handling the next non-empty Ready: "lose_ready" (before
        anything is persisted), "after_persist" (persisted, nothing sent or applied), "early_send"
        (a leader sent REPLICATE/HEARTBEAT before its fsync, as kv_store_server does, then died)."""
        node = self.nodes[nid]
        if not node.up:
            return
        if point is not None:
            node.crash_point = point
            return
        node.up = False
        node.core = None
        node.pending = {}
        node.crash_point = None
        self.stats["crashes"] += 1
        self.note("crash", nid)
        for key in [k for k in self.sync_streams if k[0] == nid]:
            del self.sync_streams[key]     # its snapshot senders die with it
        for p in self.ids:    # its peers see their connections to it drop, and its port refuse
            if p != nid:
                self._link_down(p, nid, dead=True)

    def restart(self, nid: str, start_election: bool = False) -> None:
        node = self.nodes[nid]
        if node.up or node.retired:
            return
        node.restarts += 1
        self._boot(node, start_election)
        for p in self.ids:    # the peers' links to it come up, and its links to them
            if p != nid and (nid, p) not in self.cut_links:
                self._link_up(nid, p)
                self._link_up(p, nid)

    # ------------------------------------------------------------------ partitions
    def cut(self, a: str, b: str) -> None:
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))
        self.note("cut", f"{a}<->{b}")
        self._link_down(a, b)
        self._link_down(b, a)

    def isolate(self, nid: str) -> None:
        for p in self.ids:
            if p != nid:
                self.cut(nid, p)

    def recover(self) -> None:
        healed = sorted(self.cut_links)
        self.cut_links.clear()
        self.note("recover", "all links")
        for a, b in healed:
            self._link_up(a, b)

    def _link_up(self, a: str, b: str) -> None:
        """The host's link-up event (kv_store_server calls core.peer_connected when it has one)."""
        node = self.nodes[a]
        if node.up and self.nodes[b].up and hasattr(node.core, "peer_connected"):
            node.core.peer_connected(b, self.local(node))
            self._process(node)

    def _link_down(self, a: str, b: str, dead: bool = False) -> None:
        """The host's link-down event; dead: b's process is gone (its port refuses connections,
        kv_transport's on_dead), which lets a follower of b campaign at once."""
        node = self.nodes[a]
        if node.up:
            node.core.report_unreachable(b)
            if dead:
                node.core.report_peer_dead(b, self.local(node))
            self._process(node)

    # ------------------------------------------------------------------ network
    def _send(self, node: SimNode, m: dict) -> None:
        if m.get("from") != node.id:
            self.fail(f"{node.id} sent a message with from={m.get('from')!r}: {m}")
        if m["to"] not in self.nodes or m["to"] == node.id:
            self.fail(f"{node.id} sent a message to {m['to']!r}")
        st = node.store
        t = m["type"]
        if not m.get("prevote"):
            # §5.1/Figure 2: what a message promises must be durable before it leaves
            if m["term"] > st.term:
                self.fail(f"{node.id} sends {t} at term {m['term']} before persisting that term "
                          f"(stored {st.term})")
            # (a durable higher term is as good: the node can never vote in that term again)
            if t == "ELECTION" and st.term == m["term"] and st.vote != node.id:
                self.fail(f"{node.id} asks for votes in term {m['term']} without a durable vote for "
                          f"itself (stored {st.term}/{st.vote})")
            if t == "ELECTION_RESP" and m["granted"] and st.term == m["term"] and st.vote != m["to"]:
                self.fail(f"{node.id} grants its vote to {m['to']} in term {m['term']} before "
                          f"persisting it (stored {st.term}/{st.vote}) (§5.2)")
        if t in LEADER_MSGS:
            self._saw_leader(m["term"], node.id, f"it sent {t}")
        if t == "SYNC":
            # the host streams its snapshot file: here the snapshot travels inside the message
            # A correct host streams the snapshot it has NOW and names it in the header: the
            # stored snapshot may be newer than the core's SYNC if a compaction ran in between.
            if (m["last_index"], m["last_term"]) != (st.snap_index, st.snap_term):
                if st.snap_index < m["last_index"]:
                    self.fail(f"{node.id} sends SYNC {m['last_index']}/{m['last_term']} but its stored "
                              f"snapshot is only {st.snap_index}/{st.snap_term}")
                self.stats["sync_header_rewritten"] += 1
                m["last_index"], m["last_term"] = st.snap_index, st.snap_term
                m["config"] = st.snap_config.to_dict()
            elif Membership.from_dict(m["config"]) != st.snap_config:
                self.fail(f"{node.id} sends SYNC {m['last_index']} with configuration {m['config']} but "
                          f"its snapshot's meta holds {st.snap_config}")
            m["state"] = dict(st.snap_state)
            self.stats["sync_sent"] += 1
            # like kv_cluster: one snapshot stream per peer; a SYNC while one runs is ignored
            key = (node.id, m["to"])
            if key in self.sync_streams:
                self.stats["sync_ignored"] += 1
                return
            self.seq += 1
            self.sync_streams[key] = m["_stream"] = (node.incarnation, self.seq)
        self.history.append(m)
        self._transmit(m)

    def _transmit(self, m: dict) -> None:
        rng = self.rng
        if (m["from"], m["to"]) in self.cut_links:
            return self._sync_failed(m)
        for f in self.filters:
            if f(m):
                return self._sync_failed(m)
        if self.loss and rng.random() < self.loss:
            # a lost snapshot stream is usually noticed by the host (connection reset), not always
            return self._sync_failed(m, rng.random() < 0.8)
        dst = self.nodes[m["to"]]
        # a snapshot is a TCP stream: never duplicated (stale copies come from replay_old only)
        dup = self.dup and m["type"] != "SYNC" and rng.random() < self.dup
        for _ in range(2 if dup else 1):
            lo, hi = self.delay
            d = lo + (hi - lo) * rng.random()
            if self.long_delay and rng.random() < self.long_delay:
                d += rng.random() * 3 * self.et
            self._push(self.now + d, _DELIVER, m, dst.incarnation)

    def _sync_done(self, m: dict) -> bool:
        """The snapshot stream of m ended; True if m was the live stream (not a stale copy)."""
        key = (m["from"], m["to"])
        if m["type"] != "SYNC" or self.sync_streams.get(key) != m.get("_stream"):
            return False
        del self.sync_streams[key]
        return True

    def _sync_failed(self, m: dict, noticed: bool = True) -> None:
        """The host's snapshot sender gave up (link down): it tells the core, a little later and
        through its inbox (kv_cluster: ("snapshot_failed", peer) -> core.report_snapshot)."""
        if not self._sync_done(m) or not noticed:
            return
        src = self.nodes[m["from"]]
        inc = m["_stream"][0]

        def report():
            if src.up and src.incarnation == inc and hasattr(src.core, "report_snapshot"):
                src.core.report_snapshot(m["to"], False)
                self.stats["sync_failed"] += 1
                self.note("snapshot-failed", f"{src.id} -> {m['to']}")
                self._process(src)
        self._push(self.now + self.delay[1], _CALL, report, ())

    def replay_old(self, pred: Callable[[dict], bool] | None = None) -> bool:
        """Deliver again a message sent at some earlier time (an arbitrarily delayed duplicate)."""
        cands = [m for m in self.history if pred is None or pred(m)]
        if not cands:
            return False
        m = self.rng.choice(cands)
        self.stats["replayed"] += 1
        self._transmit(m)
        return True

    def _on_deliver(self, m: dict, inc: int) -> None:
        node = self.nodes[m["to"]]
        if not node.up or node.incarnation != inc or (m["from"], m["to"]) in self.cut_links:
            self._sync_failed(m)
            return
        self._sync_done(m)
        msg = dict(m)
        if "entries" in msg:
            msg["entries"] = [clone_entry(e) for e in m["entries"]]
        self.stats["delivered"] += 1
        self.trace.append((self.now, "deliver", m))
        if self.verbose:
            print(self._fmt_event(self.trace[-1]))
        for w in self.watchers:
            w(m)
        node.core.step(msg, self.local(node))
        if self.batch and self.rng.random() < self.batch:
            return   # like ClusterManager with a full inbox: several steps, then one ready()
        self._process(node)

    def _on_tick(self, node: SimNode, inc: int) -> None:
        if not node.up or node.incarnation != inc:
            return
        node.core.tick(self.local(node))
        self._process(node)
        if node.up and node.incarnation == inc:
            self._push(self.now + self.tick_interval * (0.8 + 0.4 * self.rng.random()), _TICK, node, inc)

    # ------------------------------------------------------------------ the host loop
    def _process(self, node: SimNode) -> None:
        """Drain core.ready() like ClusterManager does, then check the node's invariants."""
        for _ in range(1000):
            if not node.up:
                return
            rd = node.core.ready()
            if not (rd.hard_state or rd.truncate_from is not None or rd.entries or rd.snapshot
                    or rd.messages or rd.committed):
                break
            self._handle_ready(node, rd)
        else:
            self.fail(f"{node.id}: ready() never runs dry")
        if node.up:
            self._check_node(node)

    def _handle_ready(self, node: SimNode, rd) -> None:
        """Carry out one Ready through kv_raft.handle_ready, the same code ClusterManager runs,
        with this node's simulated disk as the host (and its crash point, if one is armed)."""
        if node.crash_point == "lose_ready":
            self.crash(node.id)
            return
        try:
            handle_ready(node.core, rd, _SimHost(self, node))
        except _Crashed:
            return
        st = node.store
        if self.snapshot_threshold and node.applied - st.snap_index >= self.snapshot_threshold:
            self.take_snapshot(node.id)

    # -- the host side of the Ready contract, checked as it is carried out
    def _host_send(self, node: SimNode, msgs: list, early: bool) -> None:
        cp = node.crash_point
        if early and cp == "early_send":
            for m in msgs:
                self._send(node, m)
            self.note("crash-point", f"{node.id} sent {len(msgs)} messages before its fsync")
            self.crash(node.id)
            raise _Crashed
        if not early and cp == "after_persist":
            self._crash_after_persist(node)
        for m in msgs:
            self._send(node, m)

    def _crash_after_persist(self, node: SimNode) -> None:
        self.note("crash-point", f"{node.id} persisted, then died before sending")
        self.crash(node.id)
        raise _Crashed

    def _host_hard_state(self, node: SimNode, term: int, vote) -> None:
        """Before anything that depends on it leaves the node."""
        st = node.store
        if term < st.term:
            self.fail(f"{node.id} persists term {term} < stored term {st.term}")
        if term == st.term and st.vote is not None and vote != st.vote:
            self.fail(f"{node.id} changes its vote in term {term} from {st.vote} to {vote} (§5.2)")
        st.term, st.vote = term, vote

    def _host_truncate(self, node: SimNode, tf: int) -> None:
        """Drop a conflicting tail."""
        st = node.store
        if tf <= st.snap_index:
            self.fail(f"{node.id} truncates from {tf}, inside its snapshot (<= {st.snap_index})")
        for e in st.entries[max(0, tf - st.snap_index - 1):]:
            if self.applied_log.get(e.index) == (e.term, content(e)):
                self.fail(f"{node.id} truncates committed entry {e.index}/{e.term}")
        del st.entries[max(0, tf - st.snap_index - 1):]
        node.truncations += 1
        self.stats["truncations"] += 1

    def _host_append(self, node: SimNode, entries: list) -> None:
        """New entries: append and 'fsync' (the core is told by handle_ready)."""
        st = node.store
        prev_term = st.term_at(entries[0].index - 1)
        if entries[0].index != st.last_index() + 1 or prev_term is None:
            self.fail(f"{node.id} appends from {entries[0].index} but its durable log ends at "
                      f"{st.last_index()}")
        lm = self.lm
        for e in entries:
            if e.index != st.last_index() + 1:
                self.fail(f"{node.id}: Ready.entries not contiguous at {e.index}")
            if e.op == CONFIG:
                self._check_config_entry(node, e)
            rec = (content(e), prev_term)
            old = lm.setdefault((e.index, e.term), rec)
            if old != rec:
                self.fail(f"log matching (§5.3): entry {e.index}/{e.term} on {node.id} is {rec}, "
                          f"elsewhere {old}")
            st.entries.append(e)
            prev_term = e.term

    def _check_config_entry(self, node: SimNode, e) -> None:
        """§4.1: a configuration entry changes at most one voter from the configuration before
        it in the log (skipped on a joining node that has no configuration before it yet)."""
        prev = node.store.config(node.boot_config)
        new = Membership.from_dict(e.value)
        if prev.voters and len(prev.voters.keys() ^ new.voters.keys()) > 1:
            self.fail(f"{node.id} appends configuration {e.index}/{e.term} {new} that changes more "
                      f"than one voter of {prev} (§4.1 single-server changes)")
        if prev.voters and majorities_can_be_disjoint(prev, new):
            self.fail(f"{node.id} appends configuration {e.index}/{e.term} {new} whose majorities can "
                      f"be disjoint from those of {prev} (§4.1)")
        self.stats["config_entries"] += 1

    def _host_config_changed(self, node: SimNode, config: Membership) -> None:
        node.host_config = config

    def _host_apply(self, node: SimNode, entries: list) -> None:
        if node.crash_point == "after_persist":
            self._crash_after_persist(node)
        for e in entries:
            self._apply(node, e)

    def _apply(self, node: SimNode, e) -> None:
        if e.index != node.applied + 1:
            self.fail(f"{node.id} applies {e.index} after {node.applied}: gap in the applied sequence")
        st = node.store
        if e.index <= st.snap_index or e.index > st.last_index() or \
                content(st.entry_at(e.index)) != content(e) or st.entry_at(e.index).term != e.term:
            self.fail(f"{node.id} applies {e.index}/{e.term} that is not in its durable log")
        c = (e.term, content(e))
        old = self.applied_log.get(e.index)
        term = node.core.current_term
        if old is None:
            self.applied_log[e.index] = c
            self.commit_obs[e.index] = term
        elif old != c:
            self.fail(f"state machine safety (§5.4.3): {node.id} applies {c} at {e.index}, "
                      f"another node applied {old}")
        elif term < self.commit_obs[e.index]:
            self.commit_obs[e.index] = term
        if e.op == "SET":
            node.sm_state[e.key] = e.value
        elif e.op == "DEL":
            node.sm_state.pop(e.key, None)
        elif e.op == CONFIG:
            if e.index > self.committed_config[0]:
                old, new = self.committed_config[1], Membership.from_dict(e.value)
                self.committed_config = (e.index, new)
                kind = ("promote" if new.voters.keys() - old.voters.keys() and len(new.members) == len(old.members)
                        else "add" if len(new.members) > len(old.members) else "remove")
                self.stats["committed_" + kind] += 1
        elif e.op != "NOOP":
            self.fail(f"unknown op {e.op!r} at {e.index}")
        node.applied = e.index
        if e.index > self.max_applied:
            self.max_applied = e.index
        p = node.pending.pop(e.index, None)
        if p is not None and p == c:
            self.acks.append((e.index, c))
            if e.index > self.max_visible:
                self.max_visible = e.index

    def _install_snapshot(self, node: SimNode, snap: dict) -> None:
        li, lt = snap["last_index"], snap["last_term"]
        msg = snap["msg"]
        if (msg["last_index"], msg["last_term"]) != (li, lt):
            self.fail(f"{node.id}: Ready.snapshot {li}/{lt} differs from its SYNC message {msg}")
        if li <= node.applied:
            self.fail(f"{node.id} installs a snapshot at {li} <= applied {node.applied}")
        state = msg["state"]
        known = self.applied_log.get(li)
        if known is not None and known[0] != lt:
            self.fail(f"{node.id} installs snapshot {li}/{lt} but entry {li} was committed in term {known[0]}")
        want = self.replay(li)
        if want is not None and want != state:
            self.fail(f"{node.id} installs a snapshot at {li} whose state differs from the committed log")
        st = node.store
        if snap["reset"]:
            st.entries = []
        else:
            if st.term_at(li) not in (lt, None):
                self.fail(f"{node.id} keeps its log after snapshot {li}/{lt} but holds term {st.term_at(li)} there")
            st.entries = [e for e in st.entries if e.index > li]
        st.snap_index, st.snap_term, st.snap_state = li, lt, dict(state)
        st.snap_config = Membership.from_dict(msg["config"])
        if st.entries and st.entries[0].index != li + 1:
            self.fail(f"{node.id}: log does not continue the snapshot at {li}")
        node.sm_state = dict(state)
        node.applied = li
        if li > self.max_applied:
            self.max_applied = li
        node.snapshots_installed += 1
        self.stats["snapshots_installed"] += 1
        self.note("snapshot-installed", f"{node.id} at {li}/{lt} reset={snap['reset']}")

    def replay(self, upto: int) -> dict | None:
        """The state the committed log defines after index upto (None if an index was never seen)."""
        state: dict = {}
        for i in range(1, upto + 1):
            c = self.applied_log.get(i)
            if c is None:
                return None
            op, key, value, _ = c[1]
            if op == "SET":
                state[key] = value
            elif op == "DEL":
                state.pop(key, None)
        return state

    # ------------------------------------------------------------------ invariants
    def _check_node(self, node: SimNode) -> None:
        core = node.core
        t = core.current_term
        if t < node.last_term:
            self.fail(f"{node.id} term went back from {node.last_term} to {t}")
        node.last_term = t
        if core.commit_index < node.last_commit:
            self.fail(f"{node.id} commit_index went back from {node.last_commit} to {core.commit_index}")
        if core.role == LEADER and core.commit_index > node.last_commit:
            self._check_commit_quorum(node)
        node.last_commit = core.commit_index
        if node.host_config is not core.config and node.host_config != core.config:
            self.fail(f"{node.id}'s host was not told of its configuration {core.config} "
                      f"(Ready.config; it still has {node.host_config})")
        if core.commit_index > core.last_index:
            self.fail(f"{node.id} commit_index {core.commit_index} > last_index {core.last_index}")
        if node.applied != core.commit_index:
            self.fail(f"{node.id} applied {node.applied} != commit_index {core.commit_index} after ready()")
        if core.role == LEADER:
            self.leader_nodes.add(node.id)
            self._saw_leader(t, node.id, "role")
        else:
            self.leader_nodes.discard(node.id)
        if t > node.store.term:
            self.fail(f"{node.id} is at term {t} but never handed that term out in Ready.hard_state")

    def _check_commit_quorum(self, node: SimNode) -> None:
        """§4.1: a leader commits an entry once it is durable on a majority of the voters of its
        configuration (learners and removed nodes do not count, §4.2.1).  The configuration
        when the commit was decided is the current one or, if a change was appended in the same
        batch of steps, the one before it (config_at the committed index)."""
        core = node.core
        ci = core.commit_index
        term = core.term_at(ci)
        tried = []
        for cfg in (core.config, core.config_at(ci)):
            have = []
            for v in cfg.voters:
                st = self.nodes[v].store if v in self.nodes else None
                if st is not None and (st.snap_index >= ci or st.term_at(ci) == term):
                    have.append(v)
            if len(have) >= cfg.quorum:
                return
            tried.append(f"{sorted(have)} of the voters {sorted(cfg.voters)}")
        self.fail(f"{node.id} commits {ci}/{term} held durably by " + " / ".join(tried) +
                  ": not a majority of the voters (§4.1)")

    def _check_majorities(self) -> None:
        """No two disjoint majorities: two leaders (of different terms) may not both have a
        majority of their configuration's voters at their own term (durable terms: a node
        acknowledges only the leader of its term), for then both could commit different
        entries at once.  Single-server changes with the own-term-commit rule (§4.1) make any
        two configurations that can be in force on live leaders overlap."""
        if len(self.leader_nodes) < 2:
            return
        leaders = [n for n in self.node_list if n.up and n.core.role == LEADER]
        if len(leaders) < 2:
            return
        strong = []
        for lead in leaders:
            t, cfg = lead.core.current_term, lead.core.config
            sup = sorted(v for v in cfg.voters if v in self.nodes and self.nodes[v].store.term == t)
            if len(sup) >= cfg.quorum:
                strong.append(f"{lead.id} (term {t}) with {sup} of {sorted(cfg.voters)}")
        if len(strong) >= 2:
            self.fail("two disjoint majorities (§4.1): " + "; ".join(strong))

    def _saw_leader(self, term: int, nid: str, how: str) -> None:
        prev = self.leaders.get(term)
        if prev == nid:
            return
        if prev is not None:
            self.fail(f"two leaders in term {term}: {prev} and {nid} ({how}) (§5.2 Election Safety)")
        self.leaders[term] = nid
        self.leader_log.append((self.now, term, nid))
        self.stats["leaders"] += 1
        self.note("leader", f"{nid} term {term} ({how})")
        if self.on_new_leader is not None:
            self._push(self.now, _CALL, self.on_new_leader, ())
        node = self.nodes[nid]
        if node.up:
            self.leader_nodes.add(nid)
            self._check_majorities()   # the cause, if two configurations let two leaders win
            self._check_leader_complete(node, term)

    def _check_leader_complete(self, node: SimNode, term: int) -> None:
        """§5.4 Leader Completeness: entries committed before term `term` are in the leader's log."""
        core = node.core
        for idx, c in self.applied_log.items():
            if self.commit_obs[idx] >= term or idx < core.snapshot_index:
                continue
            if idx == core.snapshot_index:
                if core.snapshot_term != c[0]:
                    self.fail(f"leader completeness (§5.4): {node.id} (term {term}) snapshot "
                              f"{idx}/{core.snapshot_term}, committed {idx}/{c[0]}")
                continue
            if idx > core.last_index:
                self.fail(f"leader completeness (§5.4): {node.id} leads term {term} without committed "
                          f"entry {idx}/{c[0]} (its log ends at {core.last_index})")
            e = core.entry_at(idx)
            if (e.term, content(e)) != c:
                self.fail(f"leader completeness (§5.4): {node.id} leads term {term} with "
                          f"{idx}/{e.term} where {idx}/{c[0]} was committed")

    def _global_check(self, everyone: bool = False) -> None:
        """Lease safety at this instant.  Only leaders can hold a lease, so per step only leaders
        are asked; every node is asked after each client/operator action (everyone=True)."""
        if not self.check_lease:
            return
        holder = None
        for node in self.node_list:
            if node.up and (everyone or node.core.role == LEADER) and node.core.read_ok(self.local(node)):
                if holder is not None:
                    self.fail(f"lease safety: read_ok() is True on {holder.id} and {node.id} at once")
                holder = node
                core = node.core
                if core.commit_index < self.max_applied:
                    self.fail(f"stale read: read_ok() on {node.id} (commit_index {core.commit_index}) "
                              f"while index {self.max_applied} is already committed")
                # what kv_store_server serves: read_ok() and its store has applied its term's
                # first entry.  Such a read must see every acknowledged write and every state an
                # earlier read could have seen (linearizability).
                if node.applied >= getattr(core, "term_start_index", core.commit_index):
                    if node.applied < self.max_visible:
                        self.fail(f"stale read: {node.id} would serve state at {node.applied} after "
                                  f"state at {self.max_visible} was visible to clients")
                    self.max_visible = node.applied

    def flush(self) -> None:
        """Run the host loop on every live node (deliveries may have been batched)."""
        for node in self.node_list:
            if node.up:
                self._process(node)

    def check_logs(self) -> None:
        """Full log check: the core's log is its durable log, and log matching holds over all of it."""
        self.flush()
        for node in self.node_list:
            if not node.up:
                continue
            core, st = node.core, node.store
            if (core.snapshot_index, core.snapshot_term) != (st.snap_index, st.snap_term):
                self.fail(f"{node.id} core snapshot {core.snapshot_index}/{core.snapshot_term} != "
                          f"stored {st.snap_index}/{st.snap_term}")
            if [(e.index, e.term) for e in core.log] != [(e.index, e.term) for e in st.entries]:
                self.fail(f"{node.id} in-memory log differs from its durable log")
            if core.config != st.config(node.boot_config):
                self.fail(f"{node.id} uses configuration {core.config} but the latest in its log is "
                          f"{st.config(node.boot_config)} (§4.1: in force once appended, undone if cut)")
            if st.snap_config is not None and core.snapshot_config != st.snap_config:
                self.fail(f"{node.id} core snapshot configuration {core.snapshot_config} != the "
                          f"snapshot meta's {st.snap_config}")
            prev = core.snapshot_term
            for e in core.log:
                if self.lm.get((e.index, e.term)) != (content(e), prev):
                    self.fail(f"log matching (§5.3): {node.id} entry {e.index}/{e.term} after term {prev}")
                prev = e.term

    # ------------------------------------------------------------------ client and operator verbs
    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.node_list if n.up]

    def leader(self) -> SimNode | None:
        """The leader of the highest term among live nodes, if any."""
        ls = [n for n in self.node_list if n.up and n.core.role == LEADER]
        return max(ls, key=lambda n: n.core.current_term) if ls else None

    def wait_leader(self, timeout: float | None = None, among=None) -> SimNode:
        timeout = timeout if timeout is not None else 10 * self.et

        def found():
            lead = self.leader()
            return lead is not None and (among is None or lead.id in among)
        if not self.run_until(found, timeout):
            self.fail(f"no leader{'' if among is None else ' among ' + ','.join(among)} within {timeout:.2f}s")
        return self.leader()

    def write(self, key: str, value: Any, op: str = "SET", nid: str | None = None):
        """Propose on nid (default: the current leader).  Returns the entry or None (NotLeader)."""
        node = self.nodes[nid] if nid else self.leader()
        if node is None or not node.up:
            return None
        core = node.core
        before = core.last_index
        try:
            e = core.propose(op, key, None if op == "DEL" else value, "json", self.local(node))
        except NotLeader:
            self._process(node)
            return None
        if e.index != before + 1 or e.term != core.current_term or core.role != LEADER:
            self.fail(f"propose on {node.id} returned {e} (last was {before}, term {core.current_term})")
        node.pending[e.index] = (e.term, content(e))
        self.stats["proposed"] += 1
        self.note("propose", f"{node.id} {op} {key}={value} -> {e.index}/{e.term}")
        self._process(node)
        self._global_check(everyone=True)
        return e

    def transfer(self, target: str | None = None) -> str | None:
        node = self.leader()
        if node is None or target == node.id:
            return None
        if target is not None and target not in node.core.voters:
            try:                              # leadership goes to voters only
                got = node.core.transfer_leadership(target, self.local(node))
            except ValueError:
                return None
            if got is not None:
                self.fail(f"{node.id} transfers leadership to {got}, not a voter of {node.core.config}")
            return None
        got = node.core.transfer_leadership(target, self.local(node))
        self.note("transfer", f"{node.id} -> {target} chose {got}")
        self._process(node)
        self._global_check(everyone=True)
        return got

    def take_snapshot(self, nid: str) -> bool:
        """Snapshot the state machine at its applied index and compact (core.compacted)."""
        node = self.nodes[nid]
        if not node.up:
            return False
        core, st = node.core, node.store
        idx = node.applied
        if idx <= core.snapshot_index:
            return False
        term = core.term_at(idx)
        if term is None or st.term_at(idx) != term:
            self.fail(f"{nid} cannot snapshot at applied {idx}: core term {term}, stored {st.term_at(idx)}")
        st.snap_index, st.snap_term, st.snap_state = idx, term, dict(node.sm_state)
        st.snap_config = core.config_at(idx)     # the host writes it into the snapshot's meta
        st.entries = [e for e in st.entries if e.index > idx]
        core.compacted(idx, term)
        self.stats["snapshots_taken"] += 1
        self.note("snapshot", f"{nid} at {idx}/{term}")
        self._process(node)
        return True

    def members(self) -> list[SimNode]:
        """The nodes of the current leader's configuration (every node not retired if no leader)."""
        lead = self.leader()
        if lead is None:
            return [n for n in self.node_list if not n.retired]
        return [self.nodes[m] for m in sorted(lead.core.config.members)]

    def applied_everywhere(self, index: int, nodes=None) -> bool:
        return all(n.up and n.applied >= index for n in (nodes or self.members()))

    def converged(self) -> bool:
        """One leader among the live nodes; its configuration committed, without learners
        (auto-promotion done), and every member up with the leader's term, log, state and
        configuration.  Nodes outside the configuration (removed, still running) are ignored."""
        lead = None
        for n in self.node_list:
            if n.retired:
                continue
            if not n.up:
                return False
            if n.core.role == LEADER:
                if lead is not None:
                    return False
                lead = n
        if lead is None:
            return False
        lc = lead.core
        li, t = lc.last_index, lc.current_term
        if lc.commit_index != li or (lc.config.learners and self.auto_promote) or \
                lead.id not in lc.voters:
            return False
        ups = [self.nodes[m] for m in lc.config.members]
        for n in ups:
            c = n.core
            if not n.up or c.current_term != t or c.leader_id != lead.id or n.applied != li or \
                    c.last_index != li or c.config != lc.config:
                return False
        return all(n.sm_state == lead.sm_state for n in ups)

    def heal(self) -> None:
        self.recover()
        self.filters.clear()
        self.loss = self.dup = self.long_delay = 0.0
        for n in self.node_list:
            n.crash_point = None
            if not n.up and not n.retired:
                self.restart(n.id)

    # ------------------------------------------------------------------ membership verbs (§4)
    def add_node(self, nid: str | None = None) -> str:
        """Start a new node with an empty data dir and no configuration (--join): it waits to be
        added and sent the log.  Returns its id; the cluster does not know it yet (see change)."""
        nid = nid or f"n{len(self.ids) + 1}"
        node = SimNode(nid, Membership())
        if self.drift:
            node.rate = 1.0 + self.rng.uniform(-self.drift, self.drift)
            node.offset = self.rng.uniform(0, 1000)
        self.ids.append(nid)
        self.nodes[nid] = node
        self.node_list.append(node)
        self._boot(node)
        for p in self.ids:
            if p != nid and (nid, p) not in self.cut_links:
                self._link_up(nid, p)
                self._link_up(p, nid)
        return nid

    def change(self, action: str, nid: str):
        """propose_config on the leader; returns the entry, or None when refused (NotLeader, or
        a MembershipError: nothing appended)."""
        node = self.leader()
        self.last_refusal = None
        if node is None:
            return None
        core = node.core
        before = (core.last_index, core.config)
        try:
            e = core.propose_config(action, nid, None, self.local(node))
        except (NotLeader, MembershipError) as ex:
            if (core.last_index, core.config) != before:
                self.fail(f"{node.id} refused {action} {nid} ({ex}) but changed its log/configuration")
            self.note("config-refused", f"{node.id} {action} {nid}: {ex}")
            self.last_refusal = ex
            self._process(node)
            return None
        self.stats["config_" + action] += 1
        self.note("config", f"{node.id} {action} {nid} -> {e.index}/{e.term} {core.config}")
        self._process(node)
        self._global_check(everyone=True)
        return e

    def retire(self, nid: str) -> None:
        """Stop a node for good (an operator decommissioning a removed machine)."""
        self.crash(nid)
        self.nodes[nid].retired = True
        self.note("retire", nid)

    def retire_removed(self) -> None:
        """Retire the nodes marked for it once a committed configuration leaves them out."""
        cfg = self.committed_config[1]
        for nid in sorted(self.retire_when_removed):
            if nid not in cfg.members:
                self.retire_when_removed.discard(nid)
                self.retire(nid)

    def heal_and_converge(self, timeout: float | None = None) -> None:
        """Liveness: after healing, one leader and identical state everywhere within `timeout`
        simulated seconds, and a fresh write commits on every node."""
        self.heal()
        timeout = timeout or 40 * self.et
        if not self.run_until(self.converged, timeout):
            self.fail(f"liveness: no convergence within {timeout:.1f}s after healing")
        e = None
        for _ in range(20):   # NotLeader while a leadership transfer is pending: try again later
            e = self.write("after-heal", self.seed)
            if e is not None:
                break
            self.run_for(self.et / 2)
            self.run_until(self.converged, timeout)
        if e is None or not self.run_until(lambda: self.converged() and self.applied_everywhere(e.index),
                                           timeout):
            self.fail("liveness: a write after healing did not commit everywhere")
        self.check_removed_learn()
        self.final_checks()

    def check_removed_learn(self, timeout: float | None = None) -> None:
        """§4.2.3: a removed node that still runs learns it was removed (it stops campaigning),
        provided some voter of the configuration it holds is still a member to tell it."""
        lead = self.leader()
        cfg = lead.core.config
        outs = [n for n in self.node_list if n.up and n.id not in cfg.members
                and n.id in n.core.voters       # the ones that would campaign (not learners)
                and any(v in cfg.members for v in n.core.voters if v != n.id)]
        if not outs:
            return
        ok = self.run_until(lambda: all(n.core.membership_state == "removed" for n in outs if n.up),
                            timeout or 20 * self.et)
        if not ok:
            self.fail(f"liveness: removed nodes never learned they were removed: {outs}")
        if any(n.core.role != "follower" for n in outs if n.up):
            self.fail(f"a removed node still campaigns: {outs}")
        self.stats["removed_learned"] += len(outs)

    def final_checks(self) -> None:
        self.check_logs()
        for n in self.node_list:
            if n.up and self.replay(n.applied) not in (None, n.sm_state):
                self.fail(f"{n.id} state differs from the committed log replayed to {n.applied}")
        for idx, c in self.acks:
            if self.applied_log.get(idx) != c:
                self.fail(f"acknowledged write {idx} {c} lost: committed log holds {self.applied_log.get(idx)}")
        if self.acks and self.max_applied < max(i for i, _ in self.acks):
            self.fail("acknowledged writes beyond the converged log")


# ====================================================================================== helpers
def make(n: int = 3, seed: int = 1, name: str = "", **kw) -> FakeNetwork:
    hint = f"python -m pytest test_consensus_sim.py -k {name}" if name else None
    return FakeNetwork(n, seed, replay_hint=hint, **kw)


def count_msgs(sim: FakeNetwork, pred: Callable[[dict], bool]) -> Counter:
    """Count delivered messages matching pred from now on; returns the live Counter."""
    c: Counter = Counter()

    def watch(m):
        if pred(m):
            c["n"] += 1
    sim.watchers.append(watch)
    return c


def single_core(nid="n1", peers=("n2", "n3"), **kw) -> RaftCore:
    kw.setdefault("rng", random.Random(7))
    return RaftCore(nid, list(peers), heartbeat_interval=HB, election_timeout=ET,
                    entry_factory=Entry, **kw)


def vote_req(frm, to, term, last_index=0, last_term=0, prevote=False, transfer=False) -> dict:
    return {"type": "ELECTION", "from": frm, "to": to, "term": term, "prevote": prevote,
            "last_log_index": last_index, "last_log_term": last_term, "transfer": transfer}


def answers(rd, mtype="ELECTION_RESP") -> list[dict]:
    return [m for m in rd.messages if m["type"] == mtype]


# ====================================================================================== paper claims
@pytest.mark.parametrize("n", [3, 5])
def test_election_safety_fresh_cluster_elects_one_leader(n):
    """§5.2: a fresh cluster elects exactly one leader, which every node then follows."""
    # init
    sim = make(n, seed=11 + n, name="fresh_cluster")
    # step
    lead = sim.wait_leader(timeout=10 * ET)
    ok = sim.run_until(lambda: all(x.core.leader_id == lead.id for x in sim.node_list), 5 * ET)
    # check
    assert ok, f"followers never learned the leader: {sim.node_list}"
    assert lead.core.current_term >= 1
    assert sum(1 for x in sim.node_list if x.core.role == LEADER) == 1
    noop = lead.core.last_index     # the new leader's first entry
    assert sim.run_until(lambda: sim.applied_everywhere(noop), 5 * ET)


@pytest.mark.parametrize("seed", range(8))
def test_dead_leader_is_replaced_within_a_fraction_of_the_election_timeout(seed):
    """Failure detection, crash kind: when the leader's process dies its peers' connections
    drop and its port refuses (report_peer_dead), so a follower campaigns at once instead of
    waiting out the election timeout, which only has to catch silent failures: the first
    campaign starts within two heartbeat intervals of simulated time, split votes are retried
    on the short timer, and nothing committed is lost (the harness checks every step)."""
    # init: a leader with committed writes
    sim = make(3, seed=200 + seed, name="dead_leader_fast", loss=0.0)
    lead = sim.wait_leader(timeout=10 * ET)
    es = [sim.write(f"k{i}", i) for i in range(5)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), ET)
    # step: kill it
    sim.crash(lead.id)
    t0 = sim.now
    others = [n for n in sim.node_list if n is not lead]
    started = sim.run_until(lambda: any(n.core.role != "follower" for n in others), 2 * ET)
    # check
    assert started and sim.now - t0 <= 2 * HB, \
        f"first campaign {sim.now - t0:.3f}s after the crash (sim time): {sim.node_list}"
    assert sim.run_until(lambda: sim.leader() is not None, 2 * ET), f"no new leader: {sim.node_list}"
    sim.restart(lead.id)
    sim.heal_and_converge()


def test_silent_leader_is_not_replaced_before_the_election_timeout():
    """Failure detection, silent kind: a leader cut off (no refusal, only silence) keeps its
    followers' votes for a whole election timeout: that is what makes its lease safe."""
    sim = make(3, seed=231, name="silent_leader", loss=0.0)
    lead = sim.wait_leader(timeout=10 * ET)
    sim.run_for(ET)
    t0 = sim.now
    sim.isolate(lead.id)
    assert sim.run_until(lambda: any(n.core.role == LEADER for n in sim.node_list if n is not lead), 5 * ET)
    assert sim.now - t0 >= ET, f"a follower was elected {sim.now - t0:.3f}s after the leader went silent"
    sim.heal_and_converge()


def test_start_election_node_wins_first_election():
    """§5.2 + DESIGN §2 (--primary): the node started with start_election=True campaigns at once
    and is the first leader, at term 1, well within one election timeout."""
    sim = make(3, seed=5, start_election="n3", name="start_election")
    lead = sim.wait_leader(timeout=ET)
    assert lead.id == "n3" and lead.core.current_term == 1, sim.leader_log
    assert sim.leader_log[0][1:] == (1, "n3"), sim.leader_log


def test_start_election_on_restart_does_not_disturb_leader():
    """DESIGN §2: a node restarted with --primary while another node leads rejoins as a follower
    without bumping the cluster's term (PreVote, §9.6 of the thesis)."""
    sim = make(3, seed=8, start_election="n1", name="start_election_on_restart")
    lead = sim.wait_leader()
    sim.run_for(2 * ET)
    victim = next(x for x in sim.node_list if x is not lead)
    term = lead.core.current_term
    sim.crash(victim.id)
    sim.run_for(0.05)
    sim.restart(victim.id, start_election=True)
    sim.run_for(5 * ET)
    assert sim.leader() is lead and lead.core.current_term == term, sim.node_list
    assert victim.core.leader_id == lead.id


def test_vote_granted_at_most_once_per_term():
    """§5.2: each server votes for at most one candidate in a given term, first-come-first-served;
    the vote is handed out for persistence with the answer, and survives a restart."""
    # init
    core = single_core(prevote=False)
    # step: n2 asks first
    core.step(vote_req("n2", "n1", 2), now=1.0)
    rd = core.ready()
    # check
    assert rd.hard_state == (2, "n2"), "the vote must be persisted before the answer leaves"
    assert [m["granted"] for m in answers(rd)] == [True]
    core.step(vote_req("n3", "n1", 2), now=1.01)
    assert [m["granted"] for m in answers(core.ready())] == [False], "second vote in term 2"
    core.step(vote_req("n2", "n1", 2), now=1.02)
    assert [m["granted"] for m in answers(core.ready())] == [True], "a repeated request is re-granted"
    # restart from the persisted hard state: still no vote for n3 in term 2 (asked after the
    # restarted node's own lease window, so only the persisted vote can refuse it)
    core2 = single_core(prevote=False, term=2, voted_for="n2", now=2.0)
    later = 2.0 + 1.5 * ET
    core2.step(vote_req("n3", "n1", 2), now=later)
    assert [m["granted"] for m in answers(core2.ready())] == [False], "vote forgotten across restart"
    # a new term frees the vote
    core2.step(vote_req("n3", "n1", 3), now=later + 0.01)
    rd = core2.ready()
    assert [m["granted"] for m in answers(rd)] == [True] and rd.hard_state == (3, "n3")


def _log(*terms):
    return [Entry(i + 1, t, "SET", f"k{i}", i) for i, t in enumerate(terms)]


@pytest.mark.parametrize("cand_last,granted", [
    ((5, 1), False),   # longer log, older last term
    ((1, 2), False),   # same last term, shorter
    ((2, 2), True),    # identical
    ((3, 2), True),    # same term, longer
    ((1, 3), True),    # newer last term, shorter
])
def test_vote_requires_up_to_date_log(cand_last, granted):
    """§5.4.1: a voter denies its vote when its own log is more up-to-date than the candidate's
    (compare last terms, then lengths).  Voter log: [1/1, 2/2]."""
    core = single_core(prevote=False, term=2, entries=_log(1, 2), now=0.0)
    core.step(vote_req("n2", "n1", 3, *cand_last), now=10.0)
    assert [m["granted"] for m in answers(core.ready())] == [granted]
    # the same answer for a PreVote (§9.6): PreVote also applies the election restriction
    core = single_core(prevote=True, term=2, entries=_log(1, 2), now=0.0)
    core.step(vote_req("n2", "n1", 3, *cand_last, prevote=True), now=10.0)
    assert [m["granted"] for m in answers(core.ready())] == [granted]


def test_candidate_with_stale_log_cannot_win():
    """§5.4.1: a node that missed committed entries cannot become leader; the committed entries
    survive the leader's crash."""
    # init: n1 leads, n3 is cut off while 5 writes commit on n1+n2
    sim = make(3, seed=21, start_election="n1", name="stale_log_cannot_win")
    sim.wait_leader()
    sim.isolate("n3")
    es = [sim.write(f"k{i}", i) for i in range(5)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index, [sim.nodes["n1"], sim.nodes["n2"]]), ET)
    # step: the leader dies, n3 comes back
    sim.crash("n1")
    sim.recover()
    lead = sim.wait_leader(timeout=20 * ET)
    sim.run_until(lambda: sim.nodes["n3"].applied >= es[-1].index, 10 * ET)
    # check: n3 never led any term after it fell behind, and nothing committed was lost
    assert lead.id == "n2", sim.node_list
    assert all(nid != "n3" for t, nid in sim.leaders.items() if t > 1), sim.leaders
    sim.restart("n1")
    sim.heal_and_converge()


def test_leader_commits_only_current_term_entries_figure8():
    """§5.4.2 (Figure 8): a leader never commits an entry of an older term by counting replicas,
    even when that entry is stored on a majority; otherwise a later leader could overwrite it."""
    _figure8(RaftCore)


def _figure8(core_cls):
    # max_batch=1 so each REPLICATE carries one entry and the old-term entry can reach a majority alone
    sim = make(5, seed=31, start_election="n1", max_batch=1, delay=(0.002, 0.002), name="figure8",
               core_cls=core_cls)
    sim.wait_leader()
    assert sim.run_until(lambda: sim.applied_everywhere(1), 2 * ET)
    # (a) n1 (term t1) writes A at index 2, which reaches only n2
    for p in ("n3", "n4", "n5"):
        sim.cut("n1", p)
    a = sim.write("A", "old")
    t1 = a.term
    assert a.index == 2 and sim.run_until(lambda: sim.nodes["n2"].core.last_index >= 2, ET)
    # (b) n1 dies; n3..n5 elect X, whose term-tX entry at index 2 reaches nobody; X dies
    sim.crash("n1")
    for p in ("n3", "n4", "n5"):
        sim.cut("n2", p)
    sim.filters.append(lambda m: m["type"] in ("REPLICATE", "HEARTBEAT") and m["from"] in ("n3", "n4", "n5"))
    x = sim.wait_leader(timeout=20 * ET, among=("n3", "n4", "n5"))
    tx = x.core.current_term
    assert x.core.term_at(2) == tx
    sim.crash(x.id)
    y, z = [p for p in ("n3", "n4", "n5") if p != x.id]
    # (c) n1 restarts and leads a new term (with n2, y, z); A (term t1) reaches y and z, so it is
    #     stored on a majority (n1, n2, y, z), but no entry of the new term reaches y or z
    sim.filters.clear()
    sim.recover()
    sim.filters.append(lambda m: m["type"] == "REPLICATE" and m["to"] in (y, z)
                       and any(e.index >= 3 for e in m["entries"])
                       and sim.nodes[m["to"]].core.term_at(2) is not None)
    sim.restart("n1")
    p = sim.wait_leader(timeout=20 * ET, among=("n1", "n2"))
    t3 = p.core.current_term
    assert t3 > tx > t1
    ok = sim.run_until(lambda: all(sim.nodes[q].core.term_at(2) == t1 for q in (y, z)), 10 * ET)
    assert ok, f"A never reached a majority: {sim.node_list}"
    sim.run_for(2 * ET)
    # check: A is on a majority but not committed, because it is not of the leader's term
    assert 2 not in sim.applied_log, f"entry 2 of term {t1} committed by counting replicas at term {t3}"
    assert p.core.commit_index < 2, p
    # (d) the holders of A die; X comes back, wins with y and z, and overwrites A: allowed since
    #     A was never committed (the harness fails if two different entries are applied at 2)
    sim.crash("n1")
    sim.crash("n2")
    sim.filters.clear()
    sim.restart(x.id)
    sim.wait_leader(timeout=20 * ET, among=(x.id,))
    assert sim.run_until(lambda: sim.applied_everywhere(3, [sim.nodes[q] for q in (x.id, y, z)]), 10 * ET)
    assert sim.applied_log[2][0] == tx
    assert sim.nodes[y].truncations >= 1 and sim.nodes[z].truncations >= 1
    sim.heal_and_converge()
    assert all(n.core.term_at(2) in (tx, None) for n in sim.node_list)


def _diverged_old_leader(seed: int, old_tail: int, new_writes: int, name: str):
    """n1 leads; it is cut off with an uncommitted tail of `old_tail` entries; n2/n3 elect a new
    leader that writes `new_writes` entries over several terms.  Returns (sim, tail entries)."""
    sim = make(3, seed=seed, start_election="n1", name=name)
    sim.wait_leader()
    assert sim.run_until(lambda: sim.applied_everywhere(1), 2 * ET)
    sim.isolate("n1")
    tail = [sim.write(f"old{i}", i, nid="n1") for i in range(old_tail)]
    assert all(tail), "n1 should still accept writes right after being cut off"
    for round_ in range(3):   # three terms in the new leader's log
        lead = sim.wait_leader(timeout=20 * ET, among=("n2", "n3"))
        es = [sim.write(f"new{round_}-{i}", i) for i in range(new_writes // 3)]
        assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index, [sim.nodes["n2"], sim.nodes["n3"]]), 2 * ET)
        other = "n3" if lead.id == "n2" else "n2"
        sim.transfer(other)
        sim.run_until(lambda: sim.nodes[other].core.role == LEADER, 2 * ET)
    sim.wait_leader(timeout=20 * ET, among=("n2", "n3"))
    return sim, tail


def test_fast_backoff_catches_up_diverged_follower():
    """§5.3 (optimization at the end): a follower that diverged over a long uncommitted tail is
    caught up with about one rejected REPLICATE per conflicting term, not one per entry."""
    sim, tail = _diverged_old_leader(41, old_tail=40, new_writes=60, name="fast_backoff")
    rejects = count_msgs(sim, lambda m: m["type"] == "REPLICATE_RESP" and m["from"] == "n1"
                         and not m["success"])
    sim.recover()
    lead = sim.leader()
    assert sim.run_until(lambda: sim.nodes["n1"].applied == lead.core.commit_index
                         and sim.nodes["n1"].core.last_index == lead.core.last_index, 10 * ET)
    assert rejects["n"] <= 4, f"{rejects['n']} rejections to catch up a 40-entry conflicting tail"
    sim.heal_and_converge()


def test_fast_backoff_catches_up_lagging_follower():
    """§5.3: a follower that is simply behind (missed 200 entries) needs at most one rejection
    before the leader streams the missing entries."""
    sim = make(3, seed=43, start_election="n1", name="lagging_follower")
    sim.wait_leader()
    sim.isolate("n3")
    for i in range(200):
        sim.write(f"k{i % 17}", i)
        if i % 20 == 0:
            sim.run_for(HB)
    assert sim.run_until(lambda: sim.nodes["n2"].applied >= 201, 2 * ET)
    rejects = count_msgs(sim, lambda m: m["type"] == "REPLICATE_RESP" and m["from"] == "n3"
                         and not m["success"])
    sim.recover()
    assert sim.run_until(lambda: sim.nodes["n3"].applied >= 201, 5 * ET), sim.node_list
    assert rejects["n"] <= 1, rejects
    sim.heal_and_converge()


def test_follower_truncates_conflicting_uncommitted_tail():
    """§5.3: a follower (here a deposed leader) deletes its conflicting uncommitted entries and
    takes the leader's; none of them is ever applied, and its log ends equal to the leader's."""
    sim, tail = _diverged_old_leader(47, old_tail=10, new_writes=9, name="truncates_tail")
    sim.recover()
    sim.heal_and_converge()
    n1 = sim.nodes["n1"]
    assert n1.truncations >= 1, "the conflicting tail was never truncated in storage"
    for e in tail:
        assert sim.applied_log.get(e.index) != (e.term, content(e)), f"uncommitted {e} was applied"
    lead = sim.leader()
    assert [(e.index, e.term) for e in n1.core.log] == [(e.index, e.term) for e in lead.core.log]


def test_prevote_isolated_node_does_not_disrupt():
    """Thesis §9.6 (PreVote): a follower cut off for many election timeouts does not raise its
    term; when it rejoins, the leader keeps its leadership and term."""
    sim = make(3, seed=51, start_election="n1", name="prevote")
    lead = sim.wait_leader()
    sim.run_for(ET)
    term = lead.core.current_term
    sim.isolate("n3")
    sim.run_for(15 * ET)
    assert sim.nodes["n3"].core.current_term == term, "PreVote should keep the isolated node's term"
    assert sim.nodes["n3"].core.role in ("follower", PRECANDIDATE)
    sim.recover()
    sim.run_for(5 * ET)
    assert sim.leader() is lead and lead.core.current_term == term
    assert max(sim.leaders) == term, sim.leaders
    assert sim.nodes["n3"].core.leader_id == lead.id


def test_without_prevote_isolated_node_raises_its_term():
    """Control for the PreVote test: with prevote=False the isolated node's term does grow, so the
    PreVote test above really measures PreVote."""
    sim = make(3, seed=51, start_election="n1", prevote=False, name="without_prevote")
    lead = sim.wait_leader()
    term = lead.core.current_term
    sim.isolate("n3")
    sim.run_for(15 * ET)
    assert sim.nodes["n3"].core.current_term > term


@pytest.mark.parametrize("phase", range(0, 10, 3))
def test_check_quorum_isolated_leader_steps_down(phase):
    """Thesis §6.2 / DESIGN §4 (CheckQuorum): a leader that cannot hear a majority steps down within
    one election timeout, and read_ok() is False from the end of its lease on.  `phase` moves the
    moment of isolation across one election timeout (the CheckQuorum round)."""
    sim = make(3, seed=61, start_election="n1", name="check_quorum")
    lead = sim.wait_leader()
    sim.run_for(2 * ET + phase * ET / 10)
    assert lead.core.read_ok(sim.local(lead))
    t0 = sim.now
    sim.isolate(lead.id)
    last_read_ok = [t0]

    def watch():
        if lead.core.read_ok(sim.local(lead)):
            last_read_ok[0] = sim.now
        return lead.core.role != LEADER
    assert sim.run_until(watch, 3 * ET), "the isolated leader never stepped down"
    took = sim.now - t0
    slack = 1.2 * sim.tick_interval + 0.005
    assert last_read_ok[0] - t0 <= ET + slack
    assert took <= ET + slack, f"isolated leader stepped down after {took:.3f}s > election timeout {ET}s"
    assert not lead.core.read_ok(sim.local(lead))


def test_check_quorum_lease_ends_before_new_leader():
    """Thesis §6.4.1: the deposed leader's lease has ended before the majority side elects a new
    leader (checked at every step by the harness), and reads move to the new leader."""
    sim = make(3, seed=63, start_election="n1", name="lease_new_leader")
    lead = sim.wait_leader()
    sim.run_for(2 * ET)
    sim.isolate(lead.id)
    new = sim.wait_leader(timeout=20 * ET, among=[x for x in sim.ids if x != lead.id])
    assert sim.run_until(lambda: new.core.read_ok(sim.local(new)), 5 * ET)
    assert not lead.core.read_ok(sim.local(lead))


@pytest.mark.parametrize("k", range(0, 20, 2))
def test_lease_survives_follower_restart(k):
    """Thesis §6.4.1 (leases): read_ok() on the old leader must not overlap a new leader.
    Scenario: n1 leads with a lease acknowledged by n2; n3 cannot hear n1 and keeps asking for
    (pre)votes; n2 crashes and restarts quickly (and is cut from n1).  The restarted n2 has no
    memory of the leader, so unless the core refuses votes for an election timeout after start,
    n3 wins while n1's lease still runs: two nodes with read_ok() and a stale read on n1.
    k shifts the restart moment across n3's retry window."""
    _lease_restart_scenario(k, RaftCore)


def _lease_restart_scenario(k: int, core_cls) -> None:
    sim = make(3, seed=71, start_election="n1", name="lease_survives_follower_restart",
               core_cls=core_cls)
    lead = sim.wait_leader()
    assert lead.id == "n1"
    sim.run_for(ET)
    sim.cut("n1", "n3")
    assert sim.run_until(lambda: sim.nodes["n3"].core.role == PRECANDIDATE, 3 * ET)
    sim.run_for(ET * (1 + k / 20))
    sim.crash("n2")
    sim.cut("n1", "n2")
    sim.restart("n2")
    sim.run_for(3 * ET)      # the harness checks lease safety at every step


def test_read_ok_requires_check_quorum():
    """Thesis §6.4.1: leases are only safe when voters honour them (CheckQuorum).  With
    check_quorum=False, read_ok() must not report a lease."""
    sim = make(3, seed=73, start_election="n1", check_quorum=False, name="read_ok_requires_check_quorum")
    lead = sim.wait_leader()
    sim.run_for(2 * ET)
    assert not lead.core.read_ok(sim.local(lead)), \
        "read_ok() is True although voters do not honour leases (check_quorum=False)"


def test_leadership_transfer_moves_leadership_without_loss():
    """Thesis §3.10: transfer_leadership hands leadership to the target within an election
    timeout, in the next term, with every committed entry kept; writes are refused meanwhile."""
    sim = make(3, seed=81, start_election="n1", name="transfer")
    lead = sim.wait_leader()
    es = [sim.write(f"k{i}", i) for i in range(10)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), ET)
    term = lead.core.current_term
    assert sim.transfer("n3") == "n3"
    with pytest.raises(NotLeader):
        lead.core.propose("SET", "x", 1, "json", sim.local(lead))
    assert sim.run_until(lambda: sim.nodes["n3"].core.role == LEADER, ET), sim.node_list
    assert sim.nodes["n3"].core.current_term == term + 1
    assert sim.run_until(lambda: lead.core.leader_id == "n3", ET)
    sim.heal_and_converge()
    assert len(sim.acks) >= 10


def test_leadership_transfer_to_lagging_target():
    """Thesis §3.10: the leader first brings a lagging target up to date, then sends TIMEOUT_NOW;
    the target wins and no committed entry is lost."""
    sim = make(3, seed=83, start_election="n1", name="transfer_lagging")
    sim.wait_leader()
    sim.cut("n1", "n3")
    sim.cut("n2", "n3")
    es = [sim.write(f"k{i}", i) for i in range(20)]
    assert sim.run_until(lambda: sim.nodes["n2"].applied >= es[-1].index, ET)
    sim.recover()
    assert sim.transfer("n3") == "n3"
    assert sim.run_until(lambda: sim.nodes["n3"].core.role == LEADER, 2 * ET), sim.node_list
    assert sim.nodes["n3"].core.last_index >= es[-1].index
    sim.heal_and_converge()


def test_snapshot_install_for_follower_behind_compaction():
    """§7: a follower that needs entries the leader has compacted away gets the snapshot (SYNC),
    installs it, then the rest of the log; it restarts from the installed snapshot."""
    sim = make(3, seed=91, start_election="n1", name="snapshot_install")
    lead = sim.wait_leader()
    # n3 stays reachable (heartbeats flow) but gets no entries while the others compact
    no_entries = lambda m: m["type"] == "REPLICATE" and m["to"] == "n3"   # noqa: E731
    sim.filters.append(no_entries)
    es = [sim.write(f"k{i % 7}", i) for i in range(40)]
    sim.write("k3", None, op="DEL")
    assert sim.run_until(lambda: sim.nodes["n2"].applied >= es[-1].index + 1, ET)
    assert sim.take_snapshot("n1") and sim.take_snapshot("n2")
    more = [sim.write(f"m{i}", i) for i in range(5)]
    assert sim.run_until(lambda: sim.nodes["n2"].applied >= more[-1].index, ET)
    sim.filters.remove(no_entries)
    n3 = sim.nodes["n3"]
    assert sim.run_until(lambda: n3.applied >= more[-1].index, 5 * ET), sim.node_list
    assert n3.snapshots_installed == 1 and sim.stats["sync_sent"] >= 1
    assert n3.sm_state == lead.sm_state
    assert n3.core.snapshot_index >= es[-1].index
    sim.crash("n3")
    sim.restart("n3")
    assert n3.sm_state == n3.store.snap_state and n3.applied == n3.store.snap_index
    sim.heal_and_converge()
    assert n3.sm_state == lead.sm_state


def test_follower_back_from_outage_behind_compaction_caught_up_promptly():
    """§7 + DESIGN §4 (catch-up): a follower that was down while the leader compacted its log is
    sent the snapshot soon after it comes back (within a few election timeouts), even though the
    leader's first SYNC attempts went nowhere while it was down.  The host reports the failed
    transfers (report_snapshot(peer, False)) and the dropped link (report_unreachable), as
    kv_cluster.ClusterManager does."""
    sim = make(3, seed=93, start_election="n1", name="outage_behind_compaction")
    lead = sim.wait_leader()
    sim.crash("n3")
    es = [sim.write(f"k{i}", i) for i in range(20)]
    assert sim.run_until(lambda: sim.nodes["n2"].applied >= es[-1].index, ET)
    assert sim.take_snapshot(lead.id)
    sim.run_for(2 * ET)          # the leader notices n3 needs a snapshot while n3 is down
    sim.restart("n3")
    t0 = sim.now
    ok = sim.run_until(lambda: sim.nodes["n3"].applied >= es[-1].index, 5 * ET)
    assert ok, (f"n3 not caught up {sim.now - t0:.2f}s after restarting (a SYNC that failed "
                f"while it was down must be retried once the host reports the failure): {sim.node_list}")
    sim.heal_and_converge()


@pytest.mark.parametrize("compacted", [False, True])
def test_follower_that_lost_its_log_is_caught_up_while_idle(compacted):
    """§5.3 liveness (the leader repairs a follower's log): a follower restarted with an empty
    data dir while the cluster is idle is caught up without any new write.  Its only messages
    are HEARTBEAT_RESPs whose last_index is below the match_index it acknowledged before; the
    leader must notice that from any reply, heartbeats included, and start over (REPLICATE
    from index 1, or SYNC when the log was compacted)."""
    sim = make(3, seed=101 + compacted, start_election="n1", name="lost_its_log_idle")
    lead = sim.wait_leader()
    es = [sim.write(f"k{i}", i) for i in range(20)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), 2 * ET)
    if compacted:
        assert sim.take_snapshot(lead.id)
    victim = next(n for n in sim.node_list if n.id != lead.id)
    sim.run_for(ET)
    sim.crash(victim.id)
    victim.store = FakeStorage()       # the operator wiped its data dir
    sim.restart(victim.id)
    target = lead.core.commit_index
    ok = sim.run_until(lambda: victim.applied >= target, 10 * ET)
    assert ok, (f"{victim.id} restarted empty is not caught up after {10 * ET:.1f}s of an idle cluster "
                f"(no write was made): {sim.node_list}")
    assert lead.core.role == LEADER and victim.sm_state == lead.sm_state
    sim.final_checks()


def test_snapshot_retries_are_paced_while_follower_is_down():
    """§7 + DESIGN §4: while a follower that needs a snapshot is unreachable, the leader retries
    the SYNC at most about once per heartbeat interval after the host reports a failed transfer
    (report_snapshot(peer, False)); it must not turn report -> retry -> fail into a busy loop
    (in kv_cluster every retry starts a sender thread and logs a line)."""
    sim = make(3, seed=97, start_election="n1", delay=(0.001, 0.005), name="snapshot_retries_paced")
    lead = sim.wait_leader()
    sim.crash("n3")
    es = [sim.write(f"k{i}", i) for i in range(10)]
    assert sim.run_until(lambda: sim.nodes["n2"].applied >= es[-1].index, ET)
    assert sim.take_snapshot(lead.id)
    before = sim.stats["sync_sent"]
    down_for = 3.0
    sim.run_for(down_for)
    tries = sim.stats["sync_sent"] - before
    assert tries <= down_for / HB + 5, (f"{tries} SYNC attempts in {down_for}s to a down follower "
                                        f"(heartbeat {HB}s): retries are not paced")
    sim.restart("n3")
    assert sim.run_until(lambda: sim.nodes["n3"].applied >= es[-1].index, 3 * ET)
    sim.heal_and_converge()


def test_restarted_start_election_node_with_stale_log_does_not_livelock():
    """§5.2 liveness (randomized timeouts): a node restarted with start_election=True (--primary)
    whose log is stale cannot win; it must not keep the others from electing a leader.  With
    prevote=False its ELECTIONs bump the others' terms; if that also restarts their election
    timers while it retries every 3-6 heartbeats, nobody else ever campaigns (livelock)."""
    for prevote in (True, False):
        sim = make(3, seed=95, start_election="n1", prevote=prevote,
                   name="stale_log_does_not_livelock")
        sim.wait_leader()
        sim.cut("n1", "n3")
        sim.cut("n2", "n3")
        es = [sim.write(f"k{i}", i) for i in range(5)]
        assert sim.run_until(lambda: sim.nodes["n2"].applied >= es[-1].index, ET)
        sim.crash("n3")
        sim.crash("n1")
        sim.recover()
        sim.restart("n3", start_election=True)
        lead = sim.run_until(lambda: sim.leader() is not None, 20 * ET)
        assert lead, (f"prevote={prevote}: no leader 20 election timeouts after n3 (stale log, "
                      f"start_election) restarted: {sim.node_list}")
        sim.heal_and_converge()


def test_duplicated_reordered_replicate_never_loses_committed_entries():
    """§5.3/§5.4: REPLICATE messages duplicated, reordered, and replayed long after (stale copies
    from earlier in the term and earlier terms) never make a follower drop a committed entry."""
    sim = make(3, seed=101, start_election="n1", dup=0.3, delay=(0.001, 0.08), name="dup_reorder")
    sim.wait_leader()
    for i in range(120):
        sim.write(f"k{i % 9}", i)
        sim.run_for(0.01)
        if i % 3 == 0:
            sim.replay_old(lambda m: m["type"] == "REPLICATE")
        if i == 60:
            sim.transfer()
    sim.heal_and_converge()
    assert sim.stats["replayed"] >= 30
    # every REPLICATE ever seen (within the history window), delivered again in random order
    n3 = sim.nodes["n3"]
    before = (n3.applied, [(e.index, e.term) for e in n3.core.log])
    old = [m for m in sim.history if m["type"] == "REPLICATE" and m["to"] == "n3"]
    sim.rng.shuffle(old)
    for m in old:
        sim._transmit(m)
    sim.run_for(ET)
    assert n3.applied >= before[0]
    assert [(e.index, e.term) for e in n3.core.log][:len(before[1])] == before[1]
    sim.heal_and_converge()


def test_election_timeout_must_exceed_heartbeat():
    """STYLE example 2: the core refuses an election timeout not greater than the heartbeat."""
    with pytest.raises(ValueError):
        RaftCore("n1", ["n2"], heartbeat_interval=0.3, election_timeout=0.3, entry_factory=Entry)


# ====================================================================================== membership (§4)
def _change_and_wait(sim: FakeNetwork, action: str, nid: str, done, timeout: float | None) -> None:
    """Propose until the leader accepts, then wait until a leader's configuration satisfies
    done(config) and is committed."""
    for _ in range(40):
        if sim.change(action, nid) is not None:
            break
        sim.run_for(sim.et / 4)
    else:
        sim.fail(f"{action} {nid} refused 40 times: {sim.last_refusal}")
    ok = sim.run_until(lambda: (lead := sim.leader()) is not None and done(lead.core.config)
                       and lead.core.config_index <= lead.core.commit_index, timeout or 20 * sim.et)
    assert ok, f"{action} {nid} never committed: {sim.node_list}"


def _grow(sim: FakeNetwork, nid: str | None = None, timeout: float | None = None) -> str:
    """Add a new node and wait until the leader has promoted it to voter (§4.2.1)."""
    nid = sim.add_node(nid)
    _change_and_wait(sim, "add", nid, lambda cfg: nid in cfg.voters, timeout)
    return nid


def _shrink(sim: FakeNetwork, nid: str, timeout: float | None = None) -> None:
    """Remove nid and wait until a leader has the removal committed."""
    _change_and_wait(sim, "remove", nid, lambda cfg: nid not in cfg.members, timeout)


def test_configuration_in_force_when_appended_and_undone_when_truncated():
    """§4.1: a server uses the latest configuration in its log, committed or not, from the moment
    it is appended; when a new leader truncates that entry the previous configuration is back.
    Each change is handed to the host in Ready.config (before any message to a new member)."""
    # init: follower n1 of {n1,n2,n3}
    core = single_core(prevote=False)
    core.step({"type": "REPLICATE", "from": "n2", "to": "n1", "term": 1, "prev_index": 0,
               "prev_term": 0, "entries": [Entry(1, 1, "NOOP")], "commit": 1, "ts": 0.0}, now=1.0)
    core.ready()
    # step: the leader appends "n4 joins as a learner" (uncommitted)
    cfg = {"voters": {"n1": None, "n2": None, "n3": None}, "learners": {"n4": None}}
    core.step({"type": "REPLICATE", "from": "n2", "to": "n1", "term": 1, "prev_index": 1,
               "prev_term": 1, "entries": [Entry(2, 1, CONFIG, None, cfg)], "commit": 1, "ts": 0.1},
              now=1.1)
    rd = core.ready()
    # check: in force at once, though commit_index is 1
    assert core.commit_index == 1 and core.config.learners == {"n4": None}
    assert rd.config == core.config and core.membership_state == "voter"
    assert core.peers == ["n2", "n3", "n4"]
    # step: n3 wins term 2 without that entry and overwrites index 2
    core.step({"type": "REPLICATE", "from": "n3", "to": "n1", "term": 2, "prev_index": 1,
               "prev_term": 1, "entries": [Entry(2, 2, "NOOP")], "commit": 1, "ts": 0.2}, now=1.2)
    rd = core.ready()
    # check: truncated with the log, the old configuration is back, and the host is told
    assert rd.truncate_from == 2 and core.config == Membership.of(["n1", "n2", "n3"])
    assert rd.config == core.config and core.peers == ["n2", "n3"]


def test_leader_changes_membership_only_after_committing_an_entry_of_its_term():
    """§4.1 (the fix for the 2015 single-server-change bug): a new leader refuses membership
    changes until its own first entry (NOOP) is committed; nothing is appended meanwhile."""
    sim = make(3, seed=301, start_election="n1", name="own_term_commit")
    hold = [True]
    sim.filters.append(lambda m: hold[0] and m["type"] == "REPLICATE_RESP")
    lead = sim.wait_leader()
    sim.run_for(2 * ET)
    assert lead.core.commit_index < lead.core.term_start_index, "the NOOP committed too early"
    assert sim.change("add", sim.add_node()) is None
    assert isinstance(sim.last_refusal, MembershipError) and sim.last_refusal.transient
    assert "committed an entry of its term" in str(sim.last_refusal)
    hold[0] = False
    assert sim.run_until(lambda: lead.core.commit_index >= lead.core.term_start_index, 2 * ET)
    assert sim.change("add", "n4") is not None
    sim.heal_and_converge()
    assert sorted(sim.leader().core.voters) == ["n1", "n2", "n3", "n4"]


def test_one_membership_change_at_a_time():
    """§4.1: a leader appends a configuration entry only when the previous one is committed, so
    at most one uncommitted configuration exists in its log; invalid changes are refused as
    definite errors (nothing appended): an existing member, an unknown node, the last voter."""
    sim = make(3, seed=303, start_election="n1", name="one_change_at_a_time", auto_promote=False)
    lead = sim.wait_leader()
    sim.run_for(ET)
    n4, n5 = sim.add_node(), sim.add_node()
    hold = [True]
    sim.filters.append(lambda m: hold[0] and m["type"] == "REPLICATE_RESP")
    assert sim.change("add", n4) is not None
    assert sim.change("add", n5) is None and sim.last_refusal.transient
    assert "still in progress" in str(sim.last_refusal)
    hold[0] = False
    assert sim.run_until(lambda: lead.core.config_index <= lead.core.commit_index, 2 * ET)
    assert sim.change("add", n5) is not None
    assert sim.run_until(lambda: lead.core.config_index <= lead.core.commit_index, 2 * ET)
    for action, nid, why in (("add", n4, "already a learner"), ("remove", "n9", "not a member"),
                             ("promote", "n2", "not a learner")):
        assert sim.change(action, nid) is None and not sim.last_refusal.transient
        assert why in str(sim.last_refusal)
    solo = make(1, seed=305, name="last_voter")
    solo.wait_leader()
    solo.run_for(ET)
    assert solo.change("remove", "n1") is None and "last voter" in str(solo.last_refusal)


def test_learner_gets_the_log_but_neither_votes_nor_counts():
    """§4.2.1: a new server joins as a non-voting learner: it receives and applies the log, but
    its acknowledgements do not count towards a commit and it never campaigns (nor do voters
    grant it a vote)."""
    sim = make(3, seed=307, start_election="n1", name="learner_no_vote", auto_promote=False)
    lead = sim.wait_leader()
    sim.run_for(ET)
    n4 = sim.add_node()
    assert sim.change("add", n4) is not None
    es = [sim.write(f"k{i}", i) for i in range(5)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), 2 * ET)
    assert sim.nodes[n4].core.membership_state == "learner"
    # the two other voters die: leader + learner are not a majority of {n1,n2,n3}
    sim.crash("n2")
    sim.crash("n3")
    e = sim.write("lost-quorum", 1)
    assert e is not None
    sim.run_for(3 * ET)
    assert lead.core.commit_index < e.index and e.index not in sim.applied_log
    # the learner never campaigns, even with no leader for many election timeouts
    campaigns = count_msgs(sim, lambda m: m["type"] == "ELECTION" and m["from"] == n4)
    sim.isolate(lead.id)
    sim.run_for(10 * ET)
    assert campaigns["n"] == 0 and sim.nodes[n4].core.role == "follower"
    # a candidate asks only voters and does not count a learner's vote
    cfg = {"voters": {"n1": None, "n2": None, "n3": None}, "learners": {"n4": None}}
    cand = single_core(prevote=False, peers=(), config=cfg)
    cand.campaign(transfer=False)
    rd = cand.ready()
    assert sorted(m["to"] for m in rd.messages if m["type"] == "ELECTION") == ["n2", "n3"]
    vote = {"type": "ELECTION_RESP", "to": "n1", "term": cand.current_term, "prevote": False,
            "granted": True}
    cand.step({**vote, "from": "n4"}, now=0.01)
    assert cand.role == "candidate", "a learner's vote was counted"
    cand.step({**vote, "from": "n2"}, now=0.02)
    assert cand.role == LEADER
    sim.heal_and_converge()


def test_learner_promoted_automatically_once_caught_up():
    """§4.2.1: the leader promotes a learner to voter only once it holds the latest
    configuration and is within promote_lag entries of the leader's log; a learner that cannot
    keep up (here: cut off) stays a learner.  The new node is brought up by a snapshot (§7)
    whose meta carries the configuration."""
    sim = make(3, seed=309, start_election="n1", name="learner_promoted", promote_lag=4)
    lead = sim.wait_leader()
    for i in range(60):
        sim.write(f"k{i % 7}", i)
        if i % 10 == 9:
            sim.run_for(HB)
    assert sim.run_until(lambda: sim.applied_everywhere(lead.core.last_index), 2 * ET)
    assert sim.take_snapshot(lead.id)
    n4 = sim.add_node()
    sim.cut(lead.id, n4)
    e = sim.change("add", n4)
    assert e is not None
    sim.run_for(10 * ET)
    assert n4 in lead.core.config.learners, "a learner that never answered was promoted"
    promoted_at = []

    def promoted():   # checked after every step: the step that appended the promotion
        if n4 in lead.core.voters and not promoted_at:
            promoted_at.append((lead.core.config_index, sim.nodes[n4].store.last_index()))
        return bool(promoted_at)
    sim.recover()
    assert sim.run_until(promoted, 5 * ET), sim.node_list
    assert sim.nodes[n4].snapshots_installed == 1
    assert sim.nodes[n4].store.snap_config == lead.store.snap_config   # from the snapshot's meta
    index, learner_last = promoted_at[0]
    assert learner_last + sim.promote_lag >= index - 1, (index, learner_last)
    sim.heal_and_converge()
    assert sorted(sim.leader().core.voters) == ["n1", "n2", "n3", n4]


def test_grow_3_to_5_and_back_to_3_under_writes():
    """§4.1: a cluster grows one server at a time from 3 to 5 voters and shrinks back to 3
    (removing two original members, the leader among them) while clients keep writing; no
    acknowledged write is lost and every remaining member ends with the same state."""
    sim = make(3, seed=311, start_election="n1", name="grow_shrink", loss=0.02, delay=(0.001, 0.01))
    sim.wait_leader()
    counter = [0]

    def writes(k):
        for _ in range(k):
            counter[0] += 1
            sim.write(f"k{counter[0] % 11}", counter[0])
            sim.run_for(0.01)
    writes(20)
    n4 = _grow(sim)
    writes(20)
    n5 = _grow(sim)
    writes(20)
    assert sorted(sim.leader().core.voters) == ["n1", "n2", "n3", n4, n5]
    _shrink(sim, "n2")
    writes(20)
    _shrink(sim, sim.leader().id)      # the leader removes itself
    writes(20)
    sim.heal_and_converge()
    lead = sim.leader()
    assert len(lead.core.voters) == 3 and "n2" not in lead.core.voters
    assert len(sim.acks) >= 60, len(sim.acks)


def test_leader_removing_itself_commits_then_hands_over():
    """§4.2.2: a leader that removes itself keeps leading without counting itself until the
    entry commits, then hands leadership to the most caught-up voter (TIMEOUT_NOW) and steps
    down; it then knows it was removed and never campaigns again."""
    sim = make(3, seed=313, start_election="n1", name="leader_removes_itself")
    lead = sim.wait_leader()
    es = [sim.write(f"k{i}", i) for i in range(5)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), 2 * ET)
    e = sim.change("remove", lead.id)
    assert e is not None and lead.core.role == LEADER and lead.id not in lead.core.voters
    assert sim.run_until(lambda: e.index in sim.applied_log, 2 * ET)
    t_commit = sim.now
    new = sim.wait_leader(timeout=10 * ET, among=("n2", "n3"))
    assert sim.now - t_commit < ET, f"no new leader {sim.now - t_commit:.3f}s after the removal committed"
    assert lead.core.role == "follower" and lead.core.membership_state == "removed"
    after = sim.write("after", 1)
    assert after is not None and sim.run_until(lambda: after.index in sim.applied_log, 2 * ET)
    campaigns = count_msgs(sim, lambda m: m["type"] == "ELECTION" and m["from"] == lead.id)
    sim.run_for(10 * ET)
    assert campaigns["n"] == 0 and sim.leader() is new
    sim.heal_and_converge()


@pytest.mark.parametrize("prevote", [True, False])
def test_removed_node_does_not_disrupt_and_learns_it_was_removed(prevote):
    """§4.2.3: a server removed while cut off (it never got the entry) campaigns when it comes
    back; the members ignore its (Pre)Votes without taking its term, so the leader keeps its
    term, and the refusal tells it it was removed, after which it stops campaigning."""
    sim = make(3, seed=317, start_election="n1", prevote=prevote, name="removed_no_disrupt")
    lead = sim.wait_leader()
    sim.run_for(ET)
    sim.isolate("n3")
    _shrink(sim, "n3")
    sim.run_for(10 * ET)
    term = lead.core.current_term
    assert sim.nodes["n3"].core.membership_state == "voter"   # it does not know yet
    if not prevote:
        assert sim.nodes["n3"].core.current_term > term
    sim.recover()
    assert sim.run_until(lambda: sim.nodes["n3"].core.membership_state == "removed", 10 * ET), \
        sim.node_list
    campaigns = count_msgs(sim, lambda m: m["type"] == "ELECTION" and m["from"] == "n3")
    sim.run_for(10 * ET)
    assert campaigns["n"] == 0
    assert sim.leader() is lead and lead.core.current_term == term, sim.node_list
    sim.heal_and_converge()
    # the rule at one voter: a non-member whose log is behind is refused without its term, with
    # the notice; one whose log is not behind is answered as Raft answers (we may be behind)
    voter = single_core(prevote=False, term=3, entries=_log(1, 2, 3), commit_index=3, peers=(),
                        config={"voters": {"n1": None, "n2": None}, "learners": {}})
    voter.step(vote_req("n3", "n1", 9, 2, 2), now=10.0)
    (resp,) = answers(voter.ready())
    assert not resp["granted"] and resp["removed"] == 3 and voter.current_term == 3
    voter.step(vote_req("n3", "n1", 9, 3, 3), now=10.01)
    (resp,) = answers(voter.ready())
    assert resp["granted"] and resp.get("removed") is None and voter.current_term == 9


def test_configuration_restored_from_disk_after_restart_and_compaction():
    """§4.1 + §7: the configuration comes back from disk: the snapshot's meta holds the
    configuration at its index, later CONFIG entries of the log apply on top (checked by the
    harness at every boot), after a restart of every node at once."""
    sim = make(3, seed=319, start_election="n1", name="config_restart")
    sim.wait_leader()
    n4 = _grow(sim)
    assert sim.run_until(lambda: sim.applied_everywhere(sim.leader().core.commit_index), ET)
    for nid in list(sim.ids):
        assert sim.take_snapshot(nid)
    _shrink(sim, "n2")
    sim.retire("n2")
    for nid in ("n1", "n3", n4):
        sim.crash(nid)
    for nid in ("n1", "n3", n4):
        sim.restart(nid)
    for nid in ("n1", "n3", n4):
        core = sim.nodes[nid].core
        assert sorted(core.voters) == ["n1", "n3", n4], (nid, core.config)
        assert n4 in core.snapshot_config.voters and "n2" in core.snapshot_config.voters
    sim.heal_and_converge()


def test_cluster_of_one_grows_to_three_and_hands_over():
    """§4.1 from a cluster of one: it commits alone, grows to 3 (each new server a learner first),
    then the original node removes itself and the other two carry on."""
    sim = make(1, seed=321, name="cluster_of_one")
    sim.wait_leader()
    e = sim.write("solo", 1)
    assert sim.run_until(lambda: e.index in sim.applied_log, ET)
    n2 = _grow(sim)
    n3 = _grow(sim)
    _shrink(sim, "n1")
    sim.heal_and_converge()
    assert sorted(sim.leader().core.voters) == [n2, n3]
    assert sim.nodes[n2].sm_state.get("solo") == 1


def test_replace_dead_node_remove_first():
    """§4.1, the operator's replace: a dead voter is removed first (the two survivors commit
    it), then a fresh node with an empty data dir is added under a new id and promoted; the
    cluster is back to 3 voters and survives losing another node."""
    sim = make(3, seed=323, start_election="n1", name="replace_dead")
    lead = sim.wait_leader()
    es = [sim.write(f"k{i}", i) for i in range(10)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), 2 * ET)
    dead = "n3"
    sim.retire(dead)
    _shrink(sim, dead)
    n4 = _grow(sim)
    assert sorted(sim.leader().core.voters) == ["n1", "n2", n4]
    sim.crash("n2")
    e = sim.write("after-replace", 1)
    assert e is not None and sim.run_until(lambda: e.index in sim.applied_log, 2 * ET)
    assert lead.core.role == LEADER
    sim.heal_and_converge()


def test_five_node_cluster_survives_two_nodes_killed_at_once():
    """§5.2 with 5 voters: the leader and a follower killed at the same instant; the other three
    elect a leader and commit, and nothing committed is lost."""
    sim = make(5, seed=325, name="five_two_killed")
    lead = sim.wait_leader()
    es = [sim.write(f"k{i}", i) for i in range(10)]
    assert sim.run_until(lambda: sim.applied_everywhere(es[-1].index), 2 * ET)
    other = next(n.id for n in sim.node_list if n is not lead)
    sim.crash(lead.id)
    sim.crash(other)
    new = sim.wait_leader(timeout=10 * ET)
    e = sim.write("after", 1)
    assert e is not None and sim.run_until(lambda: e.index in sim.applied_log, 2 * ET)
    assert new.id not in (lead.id, other)
    sim.heal_and_converge()


def _disjoint_majorities_scenario(core_cls) -> FakeNetwork:
    """The 2015 single-server-change bug, replayed.  Voters n1..n4 with learners n5, n6.
    (1) n1 (cut off from n2..n4) promotes n5: C1 = {n1..n5} reaches only n5; n1 dies.
    (2) n2..n4 elect X; before X's first entry commits, X promotes n6: C2 = {n1..n4, n6}.
    (3) partition {X, Y, n6} | {Z, n5, n1}: X commits C2 with X, Y, n6 (3 of 5); n1 restarts
        and wins with Z and n5 (3 of C1's 5).  Two disjoint majorities, two leaders that can
        both commit.  With the rule (commit an entry of your term first), step (2) is refused."""
    sim = make(4, seed=331, start_election="n1", core_cls=core_cls, auto_promote=False,
               name="disjoint_majorities")
    n1 = sim.wait_leader(among=("n1",)).core
    assert sim.run_until(lambda: n1.commit_index >= n1.term_start_index, ET)
    for nid in ("n5", "n6"):
        sim.add_node(nid)
        assert sim.change("add", nid) is not None
        assert sim.run_until(lambda: sim.nodes["n1"].core.config_index <= sim.nodes["n1"].core.commit_index
                             and sim.nodes[nid].core.membership_state == "learner", 2 * ET)
    assert sim.run_until(lambda: sim.applied_everywhere(sim.nodes["n1"].core.last_index), 2 * ET)
    for p in ("n2", "n3", "n4", "n6"):
        sim.cut("n1", p)
    assert sim.change("promote", "n5") is not None        # C1, in force on n1 at once
    assert sim.run_until(lambda: "n5" in sim.nodes["n5"].core.voters, ET)
    sim.crash("n1")
    for p in ("n2", "n3", "n4", "n6"):
        sim.cut("n5", p)
    x = sim.wait_leader(timeout=20 * ET, among=("n2", "n3", "n4"))
    y, z = [p for p in ("n2", "n3", "n4") if p != x.id]
    sim.recover()          # and at the same instant (no time passes) the new partition:
    for a in (x.id, y, "n6"):
        for b in (z, "n5", "n1"):
            sim.cut(a, b)
    refused = sim.change("promote", "n6") is None
    if refused:
        assert "committed an entry of its term" in str(sim.last_refusal)
    sim.restart("n1")
    sim.run_until(lambda: sim.nodes["n1"].up and sim.nodes["n1"].core.role == LEADER, 20 * ET)
    sim.run_for(3 * ET)
    return sim


def test_membership_change_waits_for_own_term_commit_in_the_2015_scenario():
    """§4.1 (bug found in 2015, fixed by the own-term-commit rule): in the replayed scenario the
    new leader's change is refused, no two disjoint majorities ever form, and the cluster heals."""
    sim = _disjoint_majorities_scenario(RaftCore)
    assert sim.stats["config_promote"] == 1, "only n1's promotion of n5 may have been appended"
    sim.heal_and_converge()


# ====================================================================================== harness self-test
class _NoElectionRestriction(RaftCore):
    """A deliberately broken core: votes for any candidate (violates §5.4.1)."""

    def _log_up_to_date(self, last_index, last_term):   # noqa: ARG002
        return True


class _CommitsOldTermsByCounting(RaftCore):
    """A deliberately broken core: commits any index stored on a majority (violates §5.4.2)."""

    def _maybe_commit(self):
        matches = sorted([self.persisted_index] + [pr.match_index for pr in self.progress.values()],
                         reverse=True)
        self.commit_index = max(self.commit_index, matches[self.quorum - 1])


@pytest.mark.skipif(not hasattr(RaftCore, "_maybe_commit"), reason="core internals renamed")
def test_harness_catches_figure8_violation():
    """The Figure 8 test is not vacuous: a core that commits old-term entries by counting
    replicas fails it."""
    with pytest.raises(AssertionError, match="counting replicas|state machine safety"):
        _figure8(_CommitsOldTermsByCounting)


class _NoBootLease(RaftCore):
    """A deliberately broken core: a restarted node grants votes at once (the B1 bug)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._boot_lease_until = float("-inf")


@pytest.mark.skipif(not hasattr(RaftCore("n1", ["n2"], entry_factory=Entry), "_boot_lease_until"),
                    reason="core internals renamed")
def test_harness_catches_lease_overlap():
    """The lease check is not vacuous: without the post-restart vote refusal, the follower
    restart scenario produces a stale read / two leases."""
    for k in range(0, 20, 2):
        try:
            _lease_restart_scenario(k, _NoBootLease)
        except SafetyViolation as e:
            assert "lease safety" in str(e) or "stale read" in str(e), str(e)
            return
    pytest.fail("no restart moment produced a lease overlap on a core without post-restart refusal")


@pytest.mark.skipif(not hasattr(RaftCore, "_log_up_to_date"), reason="core internals renamed")
def test_harness_catches_a_broken_core():
    """The checker is not vacuous: a core without the election restriction is caught by some
    randomized schedule (leader completeness or state-machine safety)."""
    for seed in range(200):
        try:
            run_schedule(seed, core_cls=_NoElectionRestriction)
        except SafetyViolation as e:
            assert "leader completeness" in str(e) or "state machine safety" in str(e) or \
                "log matching" in str(e) or "stale read" in str(e) or "committed" in str(e), str(e)
            return
    pytest.fail("200 schedules did not catch a core that ignores the election restriction")


class _ChangesMembershipBeforeOwnTermCommit(RaftCore):
    """A deliberately broken core: changes membership before committing an entry of its term
    (skips the §4.1 rule: the 2015 single-server-change bug)."""

    def _own_term_committed(self):
        return True


@pytest.mark.skipif(not hasattr(RaftCore, "_own_term_committed"), reason="core internals renamed")
def test_harness_catches_membership_change_before_own_term_commit():
    """The membership checks are not vacuous: a core without the own-term-commit rule forms two
    disjoint majorities in the replayed 2015 scenario, and the harness reports it."""
    with pytest.raises(SafetyViolation, match="disjoint majorities"):
        _disjoint_majorities_scenario(_ChangesMembershipBeforeOwnTermCommit)


class _CountsLearners(RaftCore):
    """A deliberately broken core: counts learners' acknowledgements towards a commit
    (violates §4.2.1)."""

    def _maybe_commit(self):
        matches = sorted([self.persisted_index] + [pr.match_index for pr in self.progress.values()],
                         reverse=True)
        n = matches[self.quorum - 1]
        if n > self.commit_index and self.term_at(n) == self.current_term:
            self.commit_index = n


def test_harness_catches_learner_counted_for_quorum():
    """The commit-quorum check is not vacuous: a leader that counts learners commits with the
    voters down, and the harness reports a commit without a majority of the voters."""
    sim = make(3, seed=335, start_election="n1", core_cls=_CountsLearners, auto_promote=False,
               name="counts_learners")
    sim.wait_leader()
    for nid in ("n4", "n5"):
        sim.add_node(nid)
        sim.change("add", nid)
        sim.run_for(ET)
    sim.crash("n2")
    sim.crash("n3")
    with pytest.raises(SafetyViolation, match="not a majority of the voters"):
        sim.write("k", 1)
        sim.run_for(2 * ET)


# ====================================================================================== randomized
ACTION_WEIGHTS = {"write": 40, "cut": 6, "isolate": 4, "split": 4, "recover": 8, "crash": 6,
                  "bounce": 4, "restart": 7, "snapshot": 5, "transfer": 4, "replay": 5, "link_down": 3}
# membership schedules add these (§4): an operator adds, removes and replaces servers
MEMBERSHIP_WEIGHTS = {"add": 7, "remove": 5, "remove_leader": 2, "replace": 3}


def run_schedule(seed: int, actions: int | None = None, verbose: bool = False,
                 core_cls=RaftCore, membership: bool = False) -> FakeNetwork:
    """One randomized schedule: a cluster of 3 or 5 with seed-chosen network faults, then
    `actions` random operator/client actions separated by random gaps, then heal + liveness.
    membership=True: a cluster of 1, 3 or 5 whose membership also changes (§4): add (a new node
    with an empty data dir, a learner until promoted), remove (any member, the leader too, then
    maybe decommission it), replace (kill a voter, remove it, add a new node), all amid the
    same faults; at the end sometimes every node restarts from disk and converges again."""
    rng = random.Random(seed * 7919 + 17 + (104729 if membership else 0))
    if membership:
        n = rng.choice([1, 3, 3, 5])
    else:
        n = 3 if rng.random() < 0.6 else 5
    fast = rng.random() < 0.3
    sim = FakeNetwork(
        n, seed,
        heartbeat=0.02 if fast else HB, election=0.1 if fast else ET,
        loss=rng.choice([0.0, 0.0, 0.02, 0.1, 0.25]),
        dup=rng.choice([0.0, 0.05, 0.2]),
        delay=(0.0005, rng.choice([0.002, 0.01, 0.04])),
        long_delay=rng.choice([0.0, 0.0, 0.01, 0.03]),
        drift=rng.choice([0.0, 0.0, 0.05]),
        prevote=rng.random() < 0.85,
        start_election=rng.choice([None, None, "n1", "n2"]),
        max_batch=rng.choice([512, 512, 3]),
        max_inflight=rng.choice([64, 64, 2]),
        snapshot_threshold=rng.choice([0, 0, 6, 25]),
        batch=rng.choice([0.0, 0.0, 0.5, 0.9]),
        core_cls=core_cls, verbose=verbose,
        promote_lag=rng.choice([0, 4, 64]) if membership else 4)
    if membership:
        sim.replay_hint = f"python test_consensus_sim.py --membership --seed {seed} -v"
    try:
        _drive(sim, rng, actions if actions is not None else 40, membership)
    except SafetyViolation:
        raise
    except Exception as e:   # an exception raised inside the core still reports seed and trace
        tb = "".join(traceback.format_exception(e)[-4:])
        sim.fail(f"exception {type(e).__name__}: {e}\n{tb}")
    return sim


def _drive(sim: FakeNetwork, rng: random.Random, actions: int, membership: bool = False) -> None:
    """The random actions of one schedule, then heal + liveness + final checks."""
    et = sim.et
    ids = sim.ids          # grows as nodes are added
    key_space = [f"k{i}" for i in range(5)]
    counter = 0
    # each schedule has its own mix of actions (some are partition-heavy, some crash-heavy, ...)
    table = {**ACTION_WEIGHTS, **(MEMBERSHIP_WEIGHTS if membership else {})}
    names = list(table)
    weights = [w * rng.choice((0, 0.5, 1, 1, 2, 4)) for w in table.values()]
    weights[names.index("write")] += 5
    weights[names.index("recover")] += 2
    if membership:
        weights[names.index("add")] += 3
    goals: deque = deque()  # the operator's membership changes, tried in order until accepted
    if membership and rng.random() < 0.5:
        # an eager operator retries the moment a new leader appears (the window the
        # own-term-commit rule closes: a leader whose first entry is not committed yet)
        sim.on_new_leader = lambda: _operate(sim, goals)
    for step in range(actions):
        sim.run_for(rng.expovariate(3.0 / et))
        act = rng.choices(names, weights)[0]
        if act == "write":
            for _ in range(rng.randint(1, 3)):
                counter += 1
                if rng.random() < 0.2:
                    sim.write(rng.choice(key_space), None, op="DEL")
                else:
                    # sometimes write to a random node (maybe a deposed leader that does not know yet)
                    nid = rng.choice(ids) if rng.random() < 0.2 else None
                    if nid is None or (sim.nodes[nid].up and sim.nodes[nid].core.role == LEADER):
                        sim.write(rng.choice(key_space), counter, nid=nid)
        elif act == "cut":
            if len(ids) >= 2:
                a, b = rng.sample(ids, 2)
                sim.cut(a, b)
        elif act == "isolate":
            sim.isolate(rng.choice(ids))
        elif act == "split" and len(ids) >= 2:
            side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
            for a in side:
                for b in ids:
                    if b not in side:
                        sim.cut(a, b)
        elif act == "recover":
            sim.recover()
        elif act == "crash":
            nid = rng.choice(ids)
            sim.crash(nid, rng.choice([None, None, "lose_ready", "after_persist", "early_send"]))
        elif act == "bounce":
            # crash and restart at once (a supervisor restarting the process)
            nid = rng.choice(ids)
            sim.crash(nid)
            sim.run_for(rng.random() * 0.02)
            sim.restart(nid)
        elif act == "restart":
            down = [x.id for x in sim.node_list if not x.up]
            if down:
                sim.restart(rng.choice(down), start_election=rng.random() < 0.1)
        elif act == "snapshot":
            sim.take_snapshot(rng.choice(ids))
        elif act == "transfer":
            sim.transfer(rng.choice([None] + ids))
        elif act == "replay":
            sim.replay_old()
        elif act == "link_down":
            if len(ids) >= 2:
                a, b = rng.sample(ids, 2)
                sim._link_down(a, b)
        elif act in MEMBERSHIP_WEIGHTS:
            _plan_membership(sim, rng, act, goals)
        if membership:
            _operate(sim, goals)
            sim.retire_removed()
        sim._global_check(everyone=True)
        if step % 10 == 9:
            sim.check_logs()
    sim.heal_and_converge()
    if membership and rng.random() < 0.3:
        # every node restarts at once: the configuration must come back from disk (§4.1)
        alive = [n.id for n in sim.node_list if n.up]
        for nid in alive:
            sim.crash(nid)
        for nid in alive:
            sim.restart(nid)
        sim.stats["full_restarts"] += 1
        sim.heal_and_converge()


def _plan_membership(sim: FakeNetwork, rng: random.Random, act: str, goals: deque) -> None:
    """Queue an operator's membership change (goals are [action, node, attempts, retire])."""
    lead = sim.leader()
    if act == "add":
        if len(sim.members()) < 7:
            goals.append(["add", None, 0, False])
    elif lead is None:
        return
    elif act == "remove":
        goals.append(["remove", rng.choice(sorted(lead.core.config.members)), 0, rng.random() < 0.6])
    elif act == "remove_leader":
        goals.append(["remove", lead.id, 0, rng.random() < 0.6])
    elif act == "replace":
        # the operator's replace: the dead voter is removed first, then a fresh node is added
        others = sorted(lead.core.voters - {lead.id})
        if others:
            victim = rng.choice(others)
            sim.crash(victim)
            goals.append(["remove", victim, 0, True])
            goals.append(["add", None, 0, False])


def _operate(sim: FakeNetwork, goals: deque) -> None:
    """Try the first queued membership change on the current leader, as cluster_manager does:
    retry after a transient refusal (a change in progress, a young term, no leader), give up on
    a definite one (no longer a member, already one, the last voter) or after 20 tries."""
    if not goals:
        return
    g = goals[0]
    g[2] += 1
    if g[0] == "add" and g[1] is None:
        g[1] = sim.add_node()
    e = sim.change(g[0], g[1])
    if e is not None:
        goals.popleft()
        if g[0] == "remove" and g[3]:
            sim.retire_when_removed.add(g[1])
    elif (isinstance(sim.last_refusal, MembershipError) and not sim.last_refusal.transient) or g[2] > 20:
        goals.popleft()



SCHEDULES = int(os.environ.get("SIM_SCHEDULES", "1000"))
CHUNK = 50
SEED_BASE = int(os.environ.get("SIM_SEED_BASE", "0"))


@pytest.mark.parametrize("first", range(SEED_BASE, SEED_BASE + SCHEDULES, CHUNK),
                         ids=lambda f: f"seeds{f}-{min(f + CHUNK, SEED_BASE + SCHEDULES) - 1}")
def test_random_schedules(first):
    """Randomized schedules (loss, duplication, reordering, long delays, partitions, crashes at
    several points of the host loop, restarts, snapshots, transfers, stale replays, clock drift):
    all safety properties after every step, then liveness after healing.  Every seed is run; the
    failure lists each failing seed with its replay command."""
    _run_chunk(range(first, min(first + CHUNK, SEED_BASE + SCHEDULES)), False,
               ("crashes", "truncations", "snapshots_installed", "leaders", "replayed"))


def _run_chunk(seeds, membership: bool, required: tuple) -> None:
    """Run every seed; fail listing each failing seed with its replay command, or when the
    chunk never exercised one of the `required` stats (the schedules must do the work)."""
    failures = []
    totals: Counter = Counter()
    for seed in seeds:
        try:
            sim = run_schedule(seed, membership=membership)
        except SafetyViolation as e:
            failures.append(str(e))
            continue
        totals.update(sim.stats)
    assert not failures, f"{len(failures)} failing schedule(s); first:\n" + failures[0] + \
        "\nall failing seeds: " + ", ".join(f.split(" ", 1)[0] for f in failures)
    for what in required:
        assert totals[what] > 0, f"no schedule in this chunk had any {what}: {dict(totals)}"


MEMBERSHIP_SCHEDULES = int(os.environ.get("SIM_MEMBERSHIP_SCHEDULES", "1000"))


@pytest.mark.parametrize("first", range(SEED_BASE, SEED_BASE + MEMBERSHIP_SCHEDULES, CHUNK),
                         ids=lambda f: f"seeds{f}-{min(f + CHUNK, SEED_BASE + MEMBERSHIP_SCHEDULES) - 1}")
def test_random_membership_schedules(first):
    """§4.1-§4.2: randomized schedules that change membership (add as learner + automatic
    promotion, remove, the leader removing itself, replace a killed node, decommission removed
    nodes or leave them running) amid loss, duplication, reordering, partitions, crashes,
    snapshots and transfers.  Every step checks, besides §5's properties: one leader per term,
    no two disjoint majorities (two live leaders each backed by a majority of its configuration
    at its term), every commit held by a majority of the committing leader's voters, one voter
    changed per configuration entry, the configuration in force = the latest in the log (also
    after every restart, from the snapshot's meta and the log), Ready.config handed to the host;
    then liveness: learners promoted, one configuration everywhere, removed nodes that still run
    know it."""
    _run_chunk(range(first, min(first + CHUNK, SEED_BASE + MEMBERSHIP_SCHEDULES)), True,
               ("committed_add", "committed_promote", "committed_remove", "crashes", "leaders",
                "snapshots_installed", "truncations", "full_restarts"))


# ====================================================================================== CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="replay one randomized schedule")
    ap.add_argument("--actions", type=int, default=None)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every event")
    ap.add_argument("--schedules", type=int, help="run N randomized schedules and report")
    ap.add_argument("--membership", action="store_true", help="the membership-change schedules")
    args, rest = ap.parse_known_args(argv)
    mem = args.membership
    if args.seed is not None:
        t = time.perf_counter()
        try:
            sim = run_schedule(args.seed, args.actions, verbose=args.verbose, membership=mem)
        except SafetyViolation as e:
            print(e)
            return 1
        print(f"seed={args.seed} ok: {sim.steps} steps, {sim.now:.2f}s simulated, "
              f"{time.perf_counter() - t:.3f}s, leaders={dict(sorted(sim.leaders.items()))} "
              f"stats={dict(sim.stats)}")
        return 0
    if args.schedules:
        t = time.perf_counter()
        bad = []
        steps = 0
        for s in range(SEED_BASE, SEED_BASE + args.schedules):
            try:
                steps += run_schedule(s, args.actions, membership=mem).steps
            except SafetyViolation as e:
                bad.append(s)
                print(str(e).split("\n  nodes")[0])
        print(f"{args.schedules} schedules, {steps} steps, {len(bad)} failing {bad[:50]}, "
              f"{time.perf_counter() - t:.1f}s")
        return 1 if bad else 0
    return pytest.main([__file__, *rest])


if __name__ == "__main__":
    sys.exit(main())
