"""The consensus driver of a KV Store node: the seed's ClusterManager thread, made Raft.

Layout:
    CommandError    (from kv_protocol) what a failed proposal or read raises
    Waiter          a client thread waiting for its entry to be applied
    Proposals       every client write waiting for its entry: add, resolve, fail; under raft_lock
    ClusterManager  the one thread that drives kv_raft.RaftCore for a node:
                    inbox -> step/tick -> ready() -> handle_ready (persist, send, apply)

ClusterManager is built from narrow parts and knows nothing of the server around it:
    core            kv_raft.RaftCore (rules)
    storage         kv_storage.LogStorage (WAL, snapshots, term/vote)
    state machine   an object with apply(entry) -> result, restore(items, last_applied, digest),
                    items(), digest_hex(), last_applied, len() and a `lock` (KeyValueStore)
    raft_lock       the lock that guards the core and the Proposals
    peers           {node id: (host, port)} of the other members
    callbacks       on_fatal(why) when the node must stop (a disk that cannot persist)
    link_factory    what makes a peer link (kv_transport.PeerLink; a test gives a fake transport
                    with the same constructor, send_many/send, connected, start, close)

Clients of a node call propose()/wait() for writes, propose_config() for membership changes,
read_ok()/read_barrier() for reads, and transfer(), take_snapshot(), deliver() (peer messages),
accepts_peer(), status_fields().

Membership (Raft §4.1, rules in kv_raft): the peer links follow the configuration in force.
When it changes (Ready.config, before any message to a new member leaves) a link is opened to
every new member, at the address the configuration carries; a link to a node that left is kept
for REMOVED_GRACE seconds (the leader still sends it the entry that removes it, and its vote
requests are answered with the "removed" notice), then closed.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections import deque
import os
import queue
import threading
import time

from kv_protocol import CommandError
from kv_raft import (CANDIDATE, LEADER, PRECANDIDATE, Membership, MembershipError, NotLeader,
                     RaftCore, handle_ready)
from kv_storage import SnapshotMeta, write_snapshot_file
from kv_transport import PeerLink, SnapshotSender, SyncReceiver

log = logging.getLogger("kvstore")

INBOX_LIMIT = 10_000     # peer messages waiting for the cluster manager loop
REMOVED_GRACE = 30.0     # seconds a link to a removed member stays open (it learns it was removed)
GC_FREEZE_EVERY = 2.0    # seconds between moving surviving objects out of the collector's sight
_LOST_LEADERSHIP = ("NOT_PRIMARY", "This node lost leadership and the new primary replaced the write: "
                    "it was not applied", True)
_DISCARDED = ("NOT_PRIMARY", "This node lost leadership and the write was discarded: it was not applied",
              True)


class Waiter:
    """A client thread waiting for its entry to be applied.

    Whoever removes the waiter from Proposals (that is what makes it once) publishes the
    outcome and completes it: complete() calls on_done(waiter) when the proposer gave one (the
    client's answer is sent from there, by the thread that resolved the batch, and on_done
    calls set() once the answer is out), else set() wakes the thread blocked in wait().  A
    pre-acquired lock is the signal: releasing it costs far less than an Event.
    `deadline` (monotonic) is when the manager answers TIMEOUT if it is still unresolved."""
    __slots__ = ("index", "term", "result", "error", "done", "deadline", "on_done", "_lock")

    def __init__(self, index: int, term: int, deadline: float = float("inf"), on_done=None):
        self.index = index
        self.term = term
        self.result = None
        self.error: tuple[str, str, bool] | None = None   # (code, message, definite)
        self.done = False
        self.deadline = deadline
        self.on_done = on_done
        self._lock = threading.Lock()
        self._lock.acquire()

    def complete(self) -> None:
        """Result/error are assigned: hand the outcome on (on_done, or wake the waiter)."""
        if self.on_done is not None:
            self.on_done(self)
        else:
            self.set()

    def set(self) -> None:
        """Publish result/error (assigned before this call) and wake the waiting thread."""
        self.done = True
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout) or self.done


class Proposals:
    """The writes this node proposed as primary that are not yet answered.

    Invariants: `waiters` maps a log index to the one Waiter for the entry proposed there; a
    waiter leaves the map exactly once, through resolve(), fail_from(), fail_all() or
    abandon(), and is set() by that caller.  Every access holds `lock` (the node's raft_lock),
    so a proposal is registered in the same critical section that appends its entry: the apply
    path can never see an entry before its waiter.
    """

    __slots__ = ("lock", "waiters")

    def __init__(self, lock):
        self.lock = lock
        self.waiters: dict[int, Waiter] = {}

    def add(self, entry, deadline: float, on_done=None) -> Waiter:
        """Caller holds lock."""
        w = Waiter(entry.index, entry.term, deadline, on_done)
        self.waiters[entry.index] = w
        return w

    def resolve(self, entries: list, results: list) -> None:
        """Entries were applied with these results: answer their waiters (one lock round for
        the batch; the answers go out from this thread)."""
        waiters = self.waiters
        if not waiters:
            return
        with self.lock:
            done = [(waiters.pop(e.index), e, r) for e, r in zip(entries, results) if e.index in waiters]
        for w, e, r in done:
            if w.term == e.term:
                w.result = r
            else:   # another leader's entry took the index
                w.error = _LOST_LEADERSHIP
            w.complete()

    def fail_from(self, index: int) -> None:
        """The log was truncated from index: those writes were never committed (definite)."""
        with self.lock:
            gone = [self.waiters.pop(i) for i in [i for i in self.waiters if i >= index]]
        for w in gone:
            w.error = _DISCARDED
            w.complete()

    def fail_all(self, code: str, message: str, definite: bool, after: int = 0) -> None:
        """Fail every waiter for an index > after (those up to it are committed: they will be
        applied and answered)."""
        with self.lock:
            if after:
                gone = [self.waiters.pop(i) for i in [i for i in self.waiters if i > after]]
            else:
                gone = list(self.waiters.values())
                self.waiters.clear()
        for w in gone:
            w.error = (code, message, definite)
            w.complete()

    def expire(self, now: float, timeout: float) -> None:
        """Answer TIMEOUT (indefinite: the entry may still commit) to waiters past their
        deadline.  Waiters are kept in proposal order, so only the oldest need looking at."""
        waiters = self.waiters
        if not waiters:
            return
        with self.lock:
            late = []
            for i, w in waiters.items():
                if w.deadline > now:
                    break
                late.append(i)
            gone = [waiters.pop(i) for i in late]
        for w in gone:
            w.error = ("TIMEOUT", f"The write was not committed within {timeout}s; it may or may not "
                       "be applied", False)
            w.complete()

    def abandon(self, w: Waiter) -> bool:
        """The client gave up waiting; True if the waiter was still unresolved."""
        with self.lock:
            return self.waiters.pop(w.index, None) is not None

    def __len__(self) -> int:
        return len(self.waiters)


class ClusterManager(threading.Thread):
    """Drives the Raft core for one node.  The only thread that persists, sends and applies.

    Loop: take messages from the inbox -> core.step / core.tick (under raft_lock) ->
    core.ready() -> kv_raft.handle_ready with this object as the host: persist hard state and
    entries (one fsync for the whole batch), send, apply committed entries and answer their
    waiters.  Peer messages are processed before proposals are woken for, so heartbeats never
    queue behind a batch of client writes.
    """

    def __init__(self, node_id: str, core: RaftCore, storage, state_machine, peers: dict,
                 *, raft_lock, secret: str | None = None, snapshot_threshold: int = 0,
                 request_timeout: float = 5.0, on_fatal=None, link_factory=None,
                 self_addr: str | None = None, identity=None, sparse_log=None, affinity=None):
        super().__init__(name=f"cluster-manager-{node_id}", daemon=True)
        self.node_id = node_id
        self.core = core
        self.storage = storage
        self.sm = state_machine
        self.peer_addrs: dict[str, tuple[str, int]] = dict(peers)
        self.raft_lock = raft_lock
        self.proposals = Proposals(raft_lock)
        self.request_timeout = request_timeout
        self.on_fatal = on_fatal or (lambda why: os._exit(3))
        # Automatic snapshots: each node's threshold is offset by up to 25% (derived from its
        # id, so stable across restarts) so the members do not all pause at the same index.
        self.snapshot_threshold = snapshot_threshold
        if snapshot_threshold > 0 and peers:
            spread = int.from_bytes(node_id.encode()[-4:].rjust(4, b"\0"), "big") % 1000
            self.snapshot_threshold = snapshot_threshold + snapshot_threshold * spread // 4000
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._woken = False
        self.stop_event = threading.Event()
        self.changed = threading.Condition(threading.Lock())   # role/commit changes, for waiters
        self.secret = secret
        self.self_addr = self_addr      # "host:port" peers reach us on (sent in HELLO)
        self._hold_lock = threading.Lock()
        self._hold_until = float("-inf")     # end of the current await_primary() window
        # a test passes an in-process fake transport; the real one checks the cluster id
        self._make_link = link_factory or functools.partial(PeerLink, identity=identity, sparse_log=sparse_log)
        self.links: dict[str, PeerLink] = {pid: self._new_link(pid, addr)
                                           for pid, addr in self.peer_addrs.items()}
        self._retiring: dict[str, float] = {}     # peer that left the configuration -> close time
        self._running = False
        self.last_membership = core.membership_state
        self.snapshot_senders: dict[str, SnapshotSender] = {}
        self.sync_rx = SyncReceiver(storage.snapshot_path + ".recv")
        self.syncer = Syncer(storage, self._persisted_async, self._fatal, self.stop_event)
        self.snapshot_child: int | None = None    # pid of a forked snapshot writer
        self._snapshot_wanted = False
        self.last_role = None
        self.last_term = core.current_term
        self.last_leader = None
        self.waiting_logged_at = 0.0
        self.started_at = time.monotonic()
        self._gc_frozen_at = 0.0
        self.affinity = affinity if affinity is not None else CpuAffinity("off")
        # failure-detection health: gaps between heartbeats sent (primary) or between contacts
        # received from the primary (secondary), in seconds; the latest 2,000 of each
        self.hb_sent_gaps: deque = deque(maxlen=2000)
        self.hb_recv_gaps: deque = deque(maxlen=2000)
        self._hb_sent_at = 0.0
        self._contact_at = 0.0
        self.quorum_silence_max = 0.0   # longest a majority was silent to this primary (CheckQuorum)

    # ------------------------------------------------------------------ client side
    def not_primary(self, message: str = "This node is not primary") -> CommandError:
        """NOT_PRIMARY with the known primary's id and address (a client goes straight there)."""
        leader = self.core.leader_id
        addr = self.peer_addrs.get(leader) if leader != self.node_id else None
        if addr is None:
            leader = None
        else:
            addr = f"{addr[0]}:{addr[1]}"
            message += f"; primary is {leader} at {addr}"
        return CommandError("NOT_PRIMARY", message, primary=leader, primary_addr=addr)

    def await_primary(self) -> None:
        """While no primary is known (a cluster starting, or electing), hold the caller up to one
        election timeout for one.  Returns when this node leads; raises NOT_PRIMARY naming the
        primary when another node does, or the election variant of NOT_PRIMARY (retryable,
        "election": true, RESP "-TRYAGAIN ...") when the wait ends without one.

        Holds share a window: requests arriving while one is held wait for the same deadline,
        and for one election timeout after a window expired unanswered they are refused at once
        (a pipeline of writes costs one wait, not one each).  Caller holds no lock."""
        core = self.core
        if core.role == LEADER:
            return
        if core.leader_id is not None:
            raise self.not_primary()
        et = core.election_timeout
        now = time.monotonic()
        with self._hold_lock:
            if now >= self._hold_until + et:
                self._hold_until = now + et
            deadline = self._hold_until
        with self.changed:
            while core.role != LEADER and core.leader_id is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommandError(
                        "NOT_PRIMARY", f"No primary is known: an election is in progress (this node is "
                        f"{'a candidate' if core.role == CANDIDATE else 'waiting for one'}); retry shortly. "
                        "The request was not applied", primary=None, primary_addr=None, election=True,
                        resp_message="TRYAGAIN No primary is known: an election is in progress; retry shortly")
                self.changed.wait(min(left, 0.05))
        if core.role != LEADER:
            raise self.not_primary()

    def propose(self, op: str, key, value, kind: str, on_done=None) -> Waiter:
        """Append one write as primary without waiting; raises CommandError (definite) when it
        cannot be accepted.  Without on_done, the caller collects the outcome with wait()
        (pipelined clients propose a batch, then wait).  With on_done, the thread that resolves
        the write calls on_done(waiter), which must answer the client (outcome() gives the
        result or raises), must not block, and must call waiter.set() once the answer is out.
        While no primary is known it first waits for one (await_primary)."""
        return self._propose(lambda core, now: core.propose(op, key, value, kind, now), on_done)

    def propose_config(self, action: str, node_id: str, addr: str | None = None) -> Waiter:
        """Append a membership change ("add" a learner, "promote", "remove") as primary; wait()
        for its commit.  A change refused by the Raft rules raises CommandError, definite:
        CHANGE_IN_PROGRESS (retry shortly: another change is in flight, or this primary's term
        is too young) or BAD_REQUEST (already a member, not a member, the last voter)."""
        def make(core, now):
            try:
                return core.propose_config(action, node_id, addr, now)
            except MembershipError as e:
                raise CommandError("CHANGE_IN_PROGRESS" if e.transient else "BAD_REQUEST",
                                   e.reason, definite=True) from e
        return self._propose(make, None)

    def _propose(self, make_entry, on_done) -> Waiter:
        core = self.core
        if core.role != LEADER:
            self.await_primary()
        with self.raft_lock:
            if core.role != LEADER:
                raise self.not_primary()
            if self.storage.disk_full:
                raise CommandError("DISK_FULL", f"This node cannot persist writes ({self.storage.disk_full}); "
                                   "the write was not accepted")
            now = time.monotonic()
            if not core.has_quorum(now):
                raise CommandError("NO_QUORUM", "The primary cannot reach a majority of the cluster; "
                                   "the write was not accepted", definite=True)
            try:
                entry = make_entry(core, now)
            except NotLeader as e:
                raise self.not_primary() from e
            w = self.proposals.add(entry, now + self.request_timeout, on_done)
            if self._woken:
                return w
            self._woken = True
        self.inbox.put(None)
        return w

    def wait(self, w: Waiter):
        """Wait for a proposed write to be applied; returns its result or raises CommandError.
        (The manager answers TIMEOUT at the waiter's deadline; the wait here is a backstop.)"""
        if not w.wait(self.request_timeout + 1.0):
            if self.proposals.abandon(w):
                raise CommandError("TIMEOUT", f"The write was not committed within {self.request_timeout}s; "
                                   "it may or may not be applied", definite=False)
            w.wait(1.0)   # resolved while we gave up: report that outcome
        return self.outcome(w)

    def outcome(self, w: Waiter):
        """The result of a resolved waiter, or its error as CommandError."""
        if w.error is not None:
            code, message, definite = w.error
            if code == "NOT_PRIMARY":
                raise self.not_primary(message)
            raise CommandError(code, message, definite=definite)
        return w.result

    def read_ok(self) -> bool:
        """True when a read served now from the local state machine is linearizable.  Lock-free:
        the core's lease fields are single attribute reads, and the lease itself (not the local
        role) is what guarantees no other primary exists until it ends."""
        core = self.core
        return core.role == LEADER and core.read_ok(time.monotonic()) \
            and self.sm.last_applied >= core.term_start_index

    def read_barrier(self) -> None:
        """Return when a read from the local state is linearizable; raise CommandError otherwise
        (NOT_PRIMARY at once on a secondary; NO_QUORUM after one election timeout)."""
        if self.read_ok():
            return
        core = self.core
        if core.role != LEADER:
            self.await_primary()
        deadline = time.monotonic() + core.election_timeout
        while True:
            if core.role != LEADER:
                raise self.not_primary()
            if self.read_ok():
                return
            if time.monotonic() >= deadline:
                raise CommandError("NO_QUORUM", "The primary cannot confirm its leadership with a "
                                   "majority; the read was not served", definite=True)
            with self.changed:
                self.changed.wait(timeout=0.01)

    def transfer(self, target: str | None, timeout: float) -> str | None:
        """Planned leadership transfer; returns the new primary's id, or None if we were not
        primary or it did not happen in time."""
        with self.raft_lock:
            if self.core.role != LEADER:
                return None
            self.core.transfer_leadership(target, time.monotonic())
        self.wake()
        deadline = time.monotonic() + timeout
        core = self.core
        with self.changed:   # done once another node leads and we heard from it
            while time.monotonic() < deadline:
                leader = core.leader_id
                if core.role != LEADER and leader is not None and leader != self.node_id:
                    return leader
                self.changed.wait(timeout=0.05)
        return None

    def status_fields(self) -> dict:
        """The Raft part of STATUS, read consistently under raft_lock."""
        with self.raft_lock:
            core = self.core
            peers = {}
            cfg = core.config
            for pid, link in self.links.items():
                host, port = self.peer_addrs[pid]
                pr = core.progress.get(pid) if core.role == LEADER else None
                peers[pid] = {"addr": f"{host}:{port}", "reachable": link.connected,
                              "member": cfg.role_of(pid) or "removed",
                              "match_index": pr.match_index if pr else None,
                              "lag": max(0, core.last_index - pr.match_index) if pr else None}
            leader = core.leader_id
            if leader == self.node_id:
                leader_addr = None   # the caller knows its own address
            else:
                a = self.peer_addrs.get(leader)
                leader_addr = f"{a[0]}:{a[1]}" if a else None
            return {"role": {LEADER: "primary", CANDIDATE: "candidate"}.get(core.role, "secondary"),
                    "election_term": core.current_term, "primary": leader, "primary_addr": leader_addr,
                    "commit_index": core.commit_index, "last_log_index": core.last_index,
                    "snapshot_index": core.snapshot_index, "voted_for": core.voted_for, "peers": peers,
                    "membership": core.membership_state, "voters": dict(sorted(cfg.voters.items())),
                    "learners": dict(sorted(cfg.learners.items())), "config_index": core.config_index,
                    "config_committed": core.config_index <= core.commit_index,
                    "snapshot_in_progress": self.snapshot_child is not None,
                    "heartbeat": {"sent_gap_ms": _gap_stats(self.hb_sent_gaps),
                                  "received_gap_ms": _gap_stats(self.hb_recv_gaps),
                                  "quorum_silence_max_ms": round(self.quorum_silence_max * 1000, 1),
                                  "interval_ms": round(core.heartbeat_interval * 1000, 1),
                                  "election_timeout_ms": round(core.election_timeout * 1000, 1)}}

    # ------------------------------------------------------------------ hooks for other threads
    def wake(self) -> None:
        self.inbox.put(None)

    def deliver(self, msg) -> None:
        """Called by peer connection threads.  Past INBOX_LIMIT waiting messages the caller stops
        (and so stops reading its socket: TCP pushes back on the peer) until the loop catches up."""
        while self.inbox.qsize() > INBOX_LIMIT and not self.stop_event.is_set():
            time.sleep(0.001)
        self.inbox.put(msg)

    def accepts_peer(self, sender: str) -> bool:
        """May `sender` open a peer connection to us?  A member of our configuration, or a node
        we still keep a link to (it left recently); anyone while we have no configuration yet (a
        node started with --join waiting for the cluster; --cluster-secret still applies)."""
        return sender in self.links or sender in self.core.config.members or not self.core.config.members

    def _new_link(self, pid: str, addr: tuple[str, int]) -> PeerLink:
        return self._make_link(self.node_id, pid, addr, self.secret, on_down=self._link_down,
                               on_up=self._link_up, on_dead=self._link_dead, stop_event=self.stop_event,
                               self_addr=self.self_addr)


    def peer_hello(self, sender: str, addr: str | None) -> None:
        """A peer connection from sender was accepted.  With no link to it (we have no
        configuration yet: joining) open one to the address it announced, so our answers reach
        it; the configuration, once it arrives, takes over (config_changed)."""
        a = _split_addr(addr)
        if a is None or sender in self.links:
            return
        with self.raft_lock:
            if sender in self.links or self.core.config.members:
                return
            self.peer_addrs[sender] = a
            self.links[sender] = link = self._new_link(sender, a)
            if self._running:
                link.start()
        log.info("%s opened a link back to %s at %s (not yet in a configuration here)", self.node_id, sender, addr)

    def config_changed(self, config: Membership) -> None:
        """kv_raft.ReadyHost: the configuration in force changed.  Manager thread, before any
        message of this Ready leaves: open links to new members, retire links to nodes that left."""
        now = time.monotonic()
        with self.raft_lock:
            for pid in sorted(config.members - {self.node_id}):
                self._retiring.pop(pid, None)
                addr = _split_addr(config.addr(pid))
                link = self.links.get(pid)
                if addr is None or (link is not None and self.peer_addrs.get(pid) == addr):
                    continue
                if link is not None:
                    link.close()
                self.peer_addrs[pid] = addr
                self.links[pid] = link = self._new_link(pid, addr)
                if self._running:
                    link.start()
            for pid in self.links:
                if pid not in config.members and pid not in self._retiring:
                    self._retiring[pid] = now + REMOVED_GRACE
        log.info("%s configuration: voters %s, learners %s (index %d)", self.node_id,
                 ",".join(sorted(config.voters)) or "-", ",".join(sorted(config.learners)) or "-",
                 self.core.config_index)

    def _close_retired(self, now: float) -> None:
        """Manager thread: close links to removed nodes whose grace period ended (and to which
        the leader no longer replicates)."""
        with self.raft_lock:
            for pid, t in list(self._retiring.items()):
                if now >= t and pid not in self.core.progress:
                    del self._retiring[pid]
                    self.links.pop(pid).close()
                    self.peer_addrs.pop(pid, None)
                    log.info("%s closed its link to %s (no longer a member)", self.node_id, pid)

    def _link_down(self, peer: str) -> None:
        self.inbox.put(("down", peer))

    def _link_up(self, peer: str) -> None:
        self.inbox.put(("up", peer))

    def _link_dead(self, peer: str) -> None:
        self.inbox.put(("dead", peer))

    def stop(self) -> None:
        self.stop_event.set()
        self.wake()
        self.syncer.wake()
        for link in self.links.values():
            link.close()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        with self.raft_lock:
            self._running = True
            for link in self.links.values():
                link.start()
        self.syncer.start()
        tick = min(0.01, self.core.heartbeat_interval / 4)
        get = self.inbox.get
        get_nowait = self.inbox.get_nowait
        while not self.stop_event.is_set():
            items = []
            try:
                items.append(get(timeout=tick))
                while True:
                    items.append(get_nowait())
            except queue.Empty:
                pass
            try:
                self._iterate(items)
                self._maybe_snapshot()
            except OSError as e:
                if self.stop_event.is_set() and self.storage.disk_full:
                    return           # stopping while the disk is full: nothing was half-written
                # the disk failed under us: a node that cannot persist must not answer anything
                self._fatal(f"storage failure: {e}")
                return
            except Exception as e:   # a bug: die loudly rather than serve without consensus
                log.exception("%s consensus loop crashed", self.node_id)
                self._fatal(f"consensus loop crashed: {e!r}")
                return
            now = time.monotonic()
            self.proposals.expire(now, self.request_timeout)
            if self._retiring:
                self._close_retired(now)
            if now - self._gc_frozen_at >= GC_FREEZE_EVERY:
                self._gc_frozen_at = now
                gc_freeze()
                self.affinity.sample()
        log.debug("%s cluster manager stopped", self.node_id)

    def _persisted_async(self, term: int, index: int) -> None:
        """The syncer made the leader's entries up to index durable (called on its thread)."""
        core = self.core
        with self.raft_lock:
            if core.role == LEADER and core.current_term == term:   # same term: same log prefix
                core.persisted(index)
        self.wake()

    def _fatal(self, why: str) -> None:
        self.proposals.fail_all("TIMEOUT", f"node failed: {why}", definite=False)
        self.on_fatal(why)

    def _iterate(self, items: list) -> None:
        core = self.core
        lock = self.raft_lock
        more = True
        while more:
            now = time.monotonic()
            with lock:
                self._woken = False
                for it in items:
                    if it is None:
                        continue
                    if type(it) is tuple:
                        self._on_link_event(*it)
                    elif it["type"] == "SYNC" and "data" in it:
                        step = self.sync_rx.chunk(it, core.current_term)
                        if step is not None:
                            core.step(step, now)
                    else:
                        if it["type"] in _CONTACT and it["from"] == core.leader_id:
                            if self._contact_at:
                                self.hb_recv_gaps.append(now - self._contact_at)
                            self._contact_at = now
                        core.step(it, now)
                items = ()
                core.tick(now)
                if core.role == LEADER:
                    silence = core.quorum_silence(now)
                    if silence > self.quorum_silence_max:
                        self.quorum_silence_max = silence
                rd = core.ready()
            self._log_changes()
            if rd.empty():
                break
            more = handle_ready(core, rd, self, lock)

    # -- kv_raft.ReadyHost
    def send(self, msgs: list, early: bool) -> None:
        heartbeat = False
        by_peer: dict = {}
        for m in msgs:
            t = m["type"]
            if t == "SYNC":
                self._start_snapshot_sender(m)
                continue
            heartbeat = heartbeat or t == "HEARTBEAT"
            by_peer.setdefault(m["to"], []).append(m)
        links = self.links
        for peer, ms in by_peer.items():   # one write per peer for the whole batch
            link = links.get(peer)
            if link is not None:
                link.send_many(ms)
        if heartbeat:
            now = time.monotonic()
            if self._hb_sent_at:
                self.hb_sent_gaps.append(now - self._hb_sent_at)
            self._hb_sent_at = now

    def save_hard_state(self, term: int, voted_for) -> None:
        self._until_space(self.storage.save_hard_state, term, voted_for)

    def truncate(self, from_index: int) -> None:
        self.storage.truncate_suffix(from_index)
        self.proposals.fail_from(from_index)

    def append(self, entries: list) -> bool:
        """A follower's entries are durable when this returns (its answer acknowledges them).
        A leader's are written and handed to the syncer thread, which fsyncs (group commit)
        while this thread goes on answering peers and clients, then reports core.persisted():
        the leader counts itself only then, and a majority of followers may commit first."""
        self._until_space(self.storage.append, entries)
        core = self.core
        if core.role != LEADER:
            self.storage.sync()
            return True
        self.syncer.request(core.current_term, entries[-1].index)
        return False

    def _until_space(self, write, *args) -> None:
        """Run a storage write; on a full disk (the storage cut the partial write off and set
        disk_full) wait and retry until space is freed.  Meanwhile this loop answers nothing:
        no acks, votes or heartbeats (a node that cannot persist must not answer), so a primary
        loses its lease and the others elect a new one; new writes get DISK_FULL (propose()),
        writes already proposed TIMEOUT (indefinite) at their deadline.
        Any other failure, or a stop, raises."""
        st = self.storage
        logged = False
        while True:
            try:
                write(*args)
            except OSError:
                if st.disk_full is None or st.failed or self.stop_event.is_set():
                    raise
                if not logged:
                    log.error("%s disk full, writes refused until space is freed: %s", self.node_id, st.disk_full)
                    logged = True
                # writes already proposed still get their indefinite TIMEOUT at their deadline
                self.proposals.expire(time.monotonic(), self.request_timeout)
                self.stop_event.wait(0.1)
                continue
            if logged:
                log.warning("%s disk space is back, persisting again", self.node_id)
            return

    def apply(self, entries: list) -> None:
        sm = self.sm
        apply = sm.apply
        with sm.lock:
            results = [apply(e) for e in entries]
        self.proposals.resolve(entries, results)
        with self.changed:
            self.changed.notify_all()

    def install_snapshot(self, snap: dict) -> None:
        storage = self.storage
        path = snap["msg"]["path"]
        meta, items = storage.read_snapshot(path)
        items = list(items)     # verifies the checksum before anything is replaced
        if not storage.install_snapshot(path, meta):
            raise RuntimeError(f"snapshot at {meta.last_index} from {snap['msg']['from']} is older "
                               "than the installed one, but the core accepted it")
        if snap["reset"]:
            storage.reset_log(meta.last_index + 1)
        else:
            storage.compact(meta.last_index)
        with self.sm.lock:
            self.sm.restore(items, meta.last_index, meta.digest)
        del items
        gc_freeze()
        log.info("%s snapshot installed at index %d term %d (%d keys) from %s", self.node_id,
                 meta.last_index, meta.last_term, meta.count, snap["msg"]["from"])

    # ------------------------------------------------------------------ events and logging
    def _on_link_event(self, kind: str, peer: str) -> None:
        """Caller holds raft_lock."""
        core = self.core
        if kind == "down":
            core.report_unreachable(peer)
            log.info("%s lost contact with peer %s", self.node_id, peer)
        elif kind == "dead":
            was_leader = core.leader_id == peer
            core.report_peer_dead(peer, time.monotonic())
            if was_leader:
                log.info("%s primary %s is gone (its port refuses connections): campaigning now",
                         self.node_id, peer)
        elif kind == "snapshot_failed":
            core.report_snapshot(peer, False)
        else:
            log.info("%s connected to peer %s", self.node_id, peer)
            core.peer_connected(peer, time.monotonic())

    def _log_changes(self) -> None:
        core = self.core
        nid = self.node_id
        changed = False
        if core.current_term != self.last_term:
            log.info("%s term changed %d -> %d", nid, self.last_term, core.current_term)
            self.last_term = core.current_term
            changed = True
        role = core.role
        if role != self.last_role:
            if role == LEADER:
                log.info("%s became primary at term %d", nid, core.current_term)
                cpu = self.affinity.lead()
                if cpu is not None:
                    log.info("%s runs every thread on CPU %d of %s as primary (--primary-cpu)", nid, cpu,
                             ",".join(map(str, sorted(self.affinity.original))))
            elif role == CANDIDATE:
                log.info("%s started an election at term %d", nid, core.current_term)
            elif role == PRECANDIDATE:
                log.debug("%s pre-vote for term %d", nid, core.current_term + 1)
            elif self.last_role == CANDIDATE:
                log.info("%s lost the election at term %d", nid, core.current_term)
            elif self.last_role == LEADER:
                log.info("%s stepped down at term %d", nid, core.current_term)
                # writes up to commit_index are committed: this Ready applies and answers them
                self.proposals.fail_all("NO_QUORUM", "Lost leadership before the write was committed; "
                                        "it may or may not be applied", definite=False,
                                        after=core.commit_index)
            if self.last_role == LEADER:
                self.affinity.follow()
            self.last_role = role
            self._hb_sent_at = 0.0
            changed = True
        if core.leader_id != self.last_leader:
            if core.leader_id and core.leader_id != nid:
                log.info("%s became secondary of %s at term %d", nid, core.leader_id, core.current_term)
            self.last_leader = core.leader_id
            self._contact_at = 0.0
            changed = True
        ms = core.membership_state
        if ms != self.last_membership:
            log.info("%s is now %s in the cluster configuration%s", nid,
                     {"voter": "a voter", "learner": "a learner"}.get(ms, ms),
                     " (removed: it no longer takes part; stop it or add it again with CLUSTER ADD)"
                     if ms == "removed" else "")
            self.last_membership = ms
            changed = True
        if core.leader_id is None and core.peers and ms in ("voter", "learner"):
            now = time.monotonic()
            if now - self.waiting_logged_at > 5.0 and now - self.started_at > 1.0:
                up = [p for p, lk in self.links.items() if lk.connected]
                log.info("%s waiting for its peers: no primary yet (reachable: %s of %s)", nid,
                         ", ".join(up) or "none", ", ".join(self.links))
                self.waiting_logged_at = now
        if changed:
            with self.changed:
                self.changed.notify_all()

    # ------------------------------------------------------------------ snapshots
    def take_snapshot(self, wait: bool = False) -> int:
        """Ask for a snapshot of the state machine as of now; with wait=True, return once one
        covering everything applied at call time is installed (bounded: 300 s).  Returns the
        installed snapshot's index."""
        want = self.sm.last_applied
        if want > self.core.snapshot_index:
            self._snapshot_wanted = True
            self.wake()
            if wait:
                deadline = time.monotonic() + 300
                while self.core.snapshot_index < want and time.monotonic() < deadline \
                        and not self.stop_event.is_set():
                    with self.changed:
                        self.changed.wait(timeout=0.05)
        return self.core.snapshot_index

    def _maybe_snapshot(self) -> None:
        """Manager thread only.  Fork a snapshot writer when one was asked for or the log grew
        past the threshold; one at a time (a request made meanwhile waits for the next)."""
        if self.snapshot_child is not None:
            return
        sm = self.sm
        due = self.snapshot_threshold > 0 and \
            sm.last_applied - self.core.snapshot_index >= self.snapshot_threshold
        if (due or self._snapshot_wanted) and sm.last_applied > self.core.snapshot_index:
            self._snapshot_wanted = False
            self._fork_snapshot()

    def _fork_snapshot(self) -> None:
        """Write the state machine as of last_applied to a snapshot file in a forked child (the
        node keeps serving), then install it and compact the log.  Runs on the manager thread
        between two applies (the only thread that writes the state machine), so the child sees
        a consistent state without any lock held and no client is paused."""
        sm = self.sm
        index = sm.last_applied
        term = self.core.term_at(index)
        if term is None:
            return   # already covered by an installed snapshot
        with self.raft_lock:
            config = self.core.config_at(index).to_dict()   # Raft §4.1: restored from here
        meta = SnapshotMeta(index, term, len(sm), sm.digest_hex(), config)
        tmp = self.storage.snapshot_path + f".tmp-{index}"
        pid = os.fork()
        if pid == 0:   # child: only this thread exists; close inherited sockets, write, leave
            code = 1
            try:
                os.closerange(3, 1 << 16)
                self.affinity.release_child()
                write_snapshot_file(tmp, meta, sm.items())
                code = 0
            finally:
                os._exit(code)
        self.snapshot_child = pid
        log.info("%s snapshot started at index %d (%d keys, writer pid %d)", self.node_id, index, meta.count, pid)
        threading.Thread(target=self._reap_snapshot, args=(pid, tmp, meta),
                         daemon=True, name="snapshot-reaper").start()

    def _reap_snapshot(self, pid: int, tmp: str, meta: SnapshotMeta) -> None:
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                log.error("%s snapshot writer failed (exit %d); keeping the log", self.node_id, code)
                return
            if not self.storage.install_snapshot(tmp, meta):
                return   # a newer snapshot (from the primary) got there first
            with self.raft_lock:
                dropped = self.core.compacted(meta.last_index, meta.last_term)
            del dropped   # freed here, not under raft_lock
            self.storage.compact(meta.last_index)
            log.info("%s snapshot taken at index %d term %d (%d keys)", self.node_id, meta.last_index,
                     meta.last_term, meta.count)
        except (OSError, ValueError) as e:
            log.error("%s snapshot at index %d failed: %s", self.node_id, meta.last_index, e)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self.snapshot_child = None
            with self.changed:
                self.changed.notify_all()
            self.wake()   # a snapshot asked for meanwhile starts now

    def _start_snapshot_sender(self, m: dict) -> None:
        peer = m["to"]
        if peer in self.snapshot_senders or peer not in self.links:
            return
        header = {"type": "SYNC", "from": self.node_id, "to": peer, "term": m["term"],
                  "last_index": m["last_index"], "last_term": m["last_term"]}
        log.info("%s sending snapshot at index %d to %s", self.node_id, m["last_index"], peer)
        sender = SnapshotSender(self.links[peer], self.storage.snapshot_path, header, self.stop_event,
                                on_finish=self._snapshot_sent)
        self.snapshot_senders[peer] = sender
        sender.start()

    def _snapshot_sent(self, peer: str, ok: bool) -> None:
        self.snapshot_senders.pop(peer, None)
        if not ok:
            self.inbox.put(("snapshot_failed", peer))


class Syncer(threading.Thread):
    """Makes a leader's appended entries durable off the cluster manager's thread.

    request(term, index) asks for everything appended so far to be fsynced (LogStorage.sync,
    group commit); once it is, on_durable(term, index) is called with the latest request
    covered.  Requests made during an fsync are served by the next one, so a burst costs one
    fsync after the one in progress.  A disk error calls on_fatal: a node that cannot persist
    must stop."""

    def __init__(self, storage, on_durable, on_fatal, stop_event: threading.Event):
        super().__init__(name="syncer", daemon=True)
        self.storage = storage
        self.on_durable = on_durable
        self.on_fatal = on_fatal
        self.stop_event = stop_event
        self._cv = threading.Condition(threading.Lock())
        self._want: tuple[int, int] | None = None

    def request(self, term: int, index: int) -> None:
        with self._cv:
            self._want = (term, index)
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def run(self) -> None:
        cv = self._cv
        while not self.stop_event.is_set():
            with cv:
                while self._want is None and not self.stop_event.is_set():
                    cv.wait(0.5)
                want, self._want = self._want, None
            if want is None:
                continue
            try:
                self.storage.sync()
            except OSError as e:
                self.on_fatal(f"storage failure: {e}")
                return
            self.on_durable(*want)


_CONTACT = frozenset({"HEARTBEAT", "REPLICATE", "SYNC"})


def _split_addr(addr: str | None) -> tuple[str, int] | None:
    """"host:port" -> (host, port); None when absent or malformed."""
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _gap_stats(gaps) -> dict:
    """p50/p99/max in ms of the recorded gaps (the latest 2,000), and how many."""
    xs = sorted(gaps)
    if not xs:
        return {"count": 0}
    n = len(xs)
    return {"count": n, "p50": round(xs[n // 2] * 1000, 1), "p99": round(xs[min(n - 1, n * 99 // 100)] * 1000, 1),
            "max": round(xs[-1] * 1000, 1)}


class CpuAffinity:
    """Keeps a primary's threads on one CPU; every other role runs where the kernel likes.

    A node is one Python process: its threads take turns holding the GIL, so it never runs
    Python on two CPUs at once.  Spread over several CPUs, each hand-off of the GIL is a wake-up
    of a thread on another CPU (an inter-processor interrupt, costly in a VM), and with dozens
    of busy client threads the process can settle into a convoy where most of its CPU goes on
    those hand-offs: on the 2-core machine this project is built on, the primary's CPU per GET
    varied between 21 and 58 us from one run to the next, against 16 us on one CPU, and
    throughput doubled (benchmarks/README.md, "One CPU for the primary").

    mode "auto": on becoming primary, confine every thread of the process to the CPU that was
    least busy over the last sample window (GC_FREEZE_EVERY seconds; /proc/stat), or to the CPU
    the caller runs on when no window exists yet; on losing it, give back the CPUs the process
    started with.  An integer: that CPU.  "off": never touch the affinity.  A no-op where the
    process has a single CPU or the platform lacks sched_setaffinity or /proc.  Threads started
    later inherit their creator's mask (new client threads come from the accepting thread,
    which is confined too)."""

    def __init__(self, mode="auto"):
        self.mode = mode
        self.original: set[int] = set()
        self.pinned: int | None = None
        self._last: dict[int, tuple[int, int]] | None = None   # cpu -> (busy, total) ticks
        self.busy: dict[int, float] = {}                      # cpu -> busy fraction, last window
        ok = mode != "off" and hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")
        if ok:
            self.original = set(os.sched_getaffinity(0))
        self.enabled = ok and len(self.original) > 1 and (mode == "auto" or int(mode) in self.original)

    @staticmethod
    def _read_stat() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *vals = line.split()
                    ticks = [int(v) for v in vals[:8]]
                    idle = ticks[3] + ticks[4]            # idle + iowait
                    out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
        return out

    def sample(self) -> None:
        """Take a /proc/stat sample: busy fractions over the window since the last one."""
        if not self.enabled:
            return
        try:
            now = self._read_stat()
        except (OSError, ValueError) as e:
            log.debug("cpu affinity: /proc/stat unreadable: %s", e)
            return
        if self._last is not None:
            busy = {}
            for cpu, (b, t) in now.items():
                b0, t0 = self._last.get(cpu, (b, t))
                if t > t0:
                    busy[cpu] = (b - b0) / (t - t0)
            self.busy = busy
        self._last = now

    def _choose(self) -> int:
        if self.mode != "auto":
            return int(self.mode)
        known = {c: f for c, f in self.busy.items() if c in self.original}
        if known:
            return min(sorted(known), key=known.get)
        try:
            with open("/proc/thread-self/stat") as f:
                cpu = int(f.read().rsplit(")", 1)[1].split()[36])   # field 39: last CPU
            if cpu in self.original:
                return cpu
        except (OSError, ValueError, IndexError) as e:
            log.debug("cpu affinity: current CPU unknown: %s", e)
        return min(self.original)

    def lead(self) -> int | None:
        """Confine the process to one CPU (mode permitting); the CPU, or None."""
        if self.enabled and self.pinned is None:
            cpu = self._choose()
            if self._apply({cpu}):
                self.pinned = cpu
        return self.pinned

    def follow(self) -> None:
        if self.pinned is not None:
            self._apply(self.original)
            self.pinned = None

    def release_child(self) -> None:
        """In a forked child (one thread): run on any CPU but the primary's.  Best effort: the
        child's work does not depend on where it runs."""
        if self.pinned is not None:
            try:
                os.sched_setaffinity(0, (self.original - {self.pinned}) or self.original)
            except OSError as e:   # stays on the primary's CPU: slower, still correct
                os.write(2, f"snapshot writer: CPU affinity unchanged: {e}\n".encode())

    def _apply(self, cpus: set[int]) -> bool:
        """Set the mask of every thread of the process; False if the calling thread's failed."""
        try:
            tids = os.listdir("/proc/self/task")
        except OSError as e:
            log.warning("cpu affinity unchanged: %s", e)
            return False
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except ProcessLookupError:
                pass                      # the thread ended meanwhile
            except (OSError, ValueError) as e:
                log.warning("cpu affinity of thread %s unchanged: %s", tid, e)
        return os.sched_getaffinity(0) == cpus


def gc_freeze() -> None:
    """Move every object alive now out of the cyclic collector's sight (gc.freeze).

    A node's heap is mostly its store: millions of long-lived tuples and strings that never
    form garbage cycles but that every full collection would traverse (100-650 ms at 1.4M
    objects, longer than a heartbeat interval).  Freezing them after load and every few
    seconds keeps each collection to what was allocated since.  Frozen objects are still freed
    by reference counting; only a garbage *cycle* that was alive at a freeze stays allocated,
    and the node's own objects (entries, store items, replies) form none."""
    gc.collect(1)
    gc.freeze()


__all__ = ["ClusterManager", "CpuAffinity", "Proposals", "Waiter", "gc_freeze", "CommandError"]
