"""Raft consensus core for KV Store: pure rules, no sockets, no threads, no clock.

Layout (reading order):
    NotLeader      raised by propose() on a node that cannot accept writes now
    MembershipError raised by propose_config() for a change it refuses (nothing was appended)
    Membership     a cluster configuration: voters and learners (id -> address)
    Ready          one batch of work for the host: persist, send, apply
    ReadyHost      what a host provides to handle_ready()
    Progress       what a leader knows about one follower
    RaftCore       the state machine of one node: step(msg, now), tick(now), propose(...), ready()
    handle_ready() carries out one Ready against a host, in the contract's order

The host (ClusterManager in kv_cluster.py, or the FakeNetwork in test_consensus_sim.py) drives it:

    receive -> core.step(msg, now)        timers -> core.tick(now)       client -> core.propose(...)
    rd = core.ready()
    handle_ready(core, rd, host)          the one implementation of the contract below

The Ready contract, field by field (handle_ready carries it out in this order):
    messages (early)  A leader whose Ready holds no hard_state sends its REPLICATE and HEARTBEAT
                      messages first, before its own fsync (§10.2.1 of Ongaro's thesis): the
                      leader counts itself towards a commit only after core.persisted(), so the
                      followers' disk writes overlap with its own.
    hard_state        (term, voted_for) to persist before any message leaves: a vote or a term
                      may not be announced and then forgotten by a crash.
    truncate_from     drop the durable log from this index on (a follower's conflicting tail);
                      proposals waiting on those indexes fail (definite: they were never
                      committed).
    config            (first of all) the configuration in force changed: the host creates peer
                      links for new members before any message goes to them, and drops links
                      to nodes that left (Membership; None when unchanged).
    snapshot          a follower installs the snapshot the leader streamed (dict: last_index,
                      last_term, reset, msg); with reset the whole log is replaced.  The
                      snapshot's configuration is msg["config"] and goes into its meta.
    entries           append and make durable (fsync under --fsync always), then tell the core
                      with core.persisted(last index): only then may it count itself.  A host
                      may make a *leader's* entries durable asynchronously: append() returns
                      False and the host calls core.persisted() itself once they are (only
                      while the same leader term lasts).  A follower's never: its answers
                      (the late messages) acknowledge durable entries.
    messages (late)   everything else, after the hard state and entries are durable.
    committed         apply to the state machine, in index order, exactly once.

Names follow the Raft paper (primary = leader, secondary = follower): current_term, voted_for,
commit_index, next_index/match_index (in Progress).  Extensions: PreVote and CheckQuorum (§9.6 of
Ongaro's thesis), leader leases for linearizable reads, leadership transfer (TimeoutNow, §3.10).

Membership changes (Raft dissertation §4.1, one server at a time)
    A configuration is a log entry (op CONFIG, value Membership.to_dict(): the whole membership,
    not a delta).  Every node uses the latest configuration in its log, committed or not, from
    the moment the entry is appended; a truncated configuration entry is undone with the log.
    The configuration at the snapshot point is stored in the snapshot's meta (snapshot_config;
    config_at(index) gives it to the host when it snapshots), so a restart restores it from
    disk: snapshot config, then every CONFIG entry of the log after it.
    Rules a leader follows (propose_config):
      - it changes membership only after it has committed an entry of its own term (its NOOP):
        the fix for the single-server-change bug of 2015 (two leaders of different terms each
        appending a different one-server change could otherwise form disjoint majorities);
      - at most one configuration entry is uncommitted at a time;
      - each entry adds or removes one voter (add = learner, promote = learner -> voter, remove).
    Learners receive the log and snapshots but do not vote, do not campaign and do not count
    for any quorum (commit, election, CheckQuorum, read lease).  The leader promotes a learner
    automatically (auto_promote) once it has the latest configuration and is within promote_lag
    entries of the leader's log, and has answered within an election timeout.
    Removing the leader: it keeps leading (without counting itself) until the entry commits, then
    hands leadership to the most caught-up voter (TIMEOUT_NOW) and steps down.
    A node outside a configuration cannot disrupt it: vote and PreVote requests from a node that
    is not a member of the receiver's configuration, and whose log is behind the receiver's,
    are refused without taking their term (a node that holds the entry removing X is ahead of
    X unless X holds it too); when the receiver's configuration is committed, the refusal carries
    "removed" so the candidate learns it was removed and stops campaigning.  Any other request
    is answered as Raft answers anyone (§4.1: servers do not consult their configuration to
    answer), since the receiver may be the one that is behind.  Votes count only from the
    candidate's voters, and a candidate counts its own vote only if it is a voter.
    Why single-server changes and not joint consensus: every change an operator needs (add,
    remove, replace one machine, grow 3 -> 5 -> 3) is a sequence of one-server steps; any majority
    of the old and of the new configuration overlap, so no intermediate joint configuration (with
    its double quorum counting in commit, election, CheckQuorum and the lease) is needed, and the
    only known trap, the 2015 bug, is closed by the own-term-commit rule above.  The cost, a window
    where a 3 -> 4 voter step needs 3 live nodes, is avoided by adding new servers as learners
    (they count only once caught up) and by replacing a dead server remove-first (docs/CLUSTERING.md).

Time comes in as the `now` argument (seconds, monotonic) and randomness from an injected
random.Random, so a simulation can replay any schedule from its seed.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"
PRECANDIDATE = "precandidate"

PROBE = "probe"          # send one append, wait for its answer (or a heartbeat interval)
REPLICATE = "replicate"  # stream appends optimistically, up to max_inflight unanswered
SNAPSHOT = "snapshot"    # a snapshot (SYNC) is on its way; send nothing else

# Margin of the read lease below the election timeout: covers clock-rate drift between nodes.
LEASE_FRACTION = 0.8


CONFIG = "CONFIG"        # op of a configuration entry; the state machine ignores it


class NotLeader(Exception):
    """propose() on a node that is not an accepting leader. `.leader_id` is the hint (may be None)."""

    def __init__(self, leader_id: str | None, reason: str = "not leader"):
        super().__init__(reason)
        self.leader_id = leader_id
        self.reason = reason


class MembershipError(Exception):
    """propose_config() refused a change; nothing was appended (a definite error).
    transient=True: try again later (a change is in flight, or the leader's term is too young);
    transient=False: the request itself is wrong (unknown node, already a member, last voter)."""

    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class Membership:
    """A cluster configuration: voters and learners, each a dict node id -> address.  The core
    never looks at addresses (the host dials them; the simulation uses None).  Immutable by
    convention: the change methods return a new Membership.
    Invariant: no id is both a voter and a learner."""

    __slots__ = ("voters", "learners")

    def __init__(self, voters: dict | None = None, learners: dict | None = None):
        self.voters = dict(voters or {})
        self.learners = dict(learners or {})
        both = self.voters.keys() & self.learners.keys()
        if both:
            raise ValueError(f"{sorted(both)} cannot be both voters and learners")

    @classmethod
    def of(cls, voter_ids, addrs: dict | None = None) -> "Membership":
        addrs = addrs or {}
        return cls({v: addrs.get(v) for v in voter_ids})

    @classmethod
    def from_dict(cls, d: dict) -> "Membership":
        """Inverse of to_dict(); raises ValueError on a malformed configuration."""
        if not isinstance(d, dict) or not isinstance(d.get("voters"), dict) or \
                not isinstance(d.get("learners", {}), dict):
            raise ValueError(f"malformed configuration: {d!r:.200}")
        for part in (d["voters"], d.get("learners", {})):
            for k, v in part.items():
                if not isinstance(k, str) or not k or (v is not None and not isinstance(v, str)):
                    raise ValueError(f"malformed configuration member {k!r}: {v!r}")
        return cls(d["voters"], d.get("learners"))

    def to_dict(self) -> dict:
        return {"voters": dict(sorted(self.voters.items())),
                "learners": dict(sorted(self.learners.items()))}

    @property
    def members(self) -> set:
        return self.voters.keys() | self.learners.keys()

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def addr(self, node_id: str) -> str | None:
        return self.voters.get(node_id, self.learners.get(node_id))

    def role_of(self, node_id: str) -> str | None:
        """"voter", "learner" or None (not a member)."""
        if node_id in self.voters:
            return "voter"
        return "learner" if node_id in self.learners else None

    def with_learner(self, node_id: str, addr: str | None) -> "Membership":
        return Membership(self.voters, {**self.learners, node_id: addr})

    def promoted(self, node_id: str) -> "Membership":
        learners = dict(self.learners)
        addr = learners.pop(node_id)
        return Membership({**self.voters, node_id: addr}, learners)

    def without(self, node_id: str) -> "Membership":
        return Membership({k: v for k, v in self.voters.items() if k != node_id},
                          {k: v for k, v in self.learners.items() if k != node_id})

    def __eq__(self, other) -> bool:
        return isinstance(other, Membership) and self.voters == other.voters and \
            self.learners == other.learners

    __hash__ = None   # mutable dicts inside

    def __repr__(self) -> str:
        ls = f" learners={sorted(self.learners)}" if self.learners else ""
        return f"<Membership voters={sorted(self.voters)}{ls}>"


def majorities_can_be_disjoint(a: Membership, b: Membership) -> bool:
    """True when some majority of a's voters and some majority of b's voters share no node
    (what a single-server change never allows between consecutive configurations)."""
    va, vb = set(a.voters), set(b.voters)
    both = len(va & vb)
    need_a = max(0, a.quorum - len(va - vb))   # members a majority of a must take from both
    need_b = max(0, b.quorum - len(vb - va))
    return need_a + need_b <= both


@dataclass
class Ready:
    """Work the host must do, in this order: hard_state, truncate_from, entries, snapshot, messages,
    committed.  Messages may only leave after hard_state and entries are durable."""

    hard_state: tuple[int, str | None] | None = None
    config: Membership | None = None
    truncate_from: int | None = None
    entries: list = field(default_factory=list)
    snapshot: dict | None = None
    messages: list = field(default_factory=list)
    committed: list = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.hard_state or self.truncate_from or self.entries or self.snapshot
                    or self.messages or self.committed or self.config is not None)


class Progress:
    """A leader's view of one follower.  Invariant: match_index < next_index."""

    __slots__ = ("match_index", "next_index", "state", "paused_until", "inflight",
                 "last_heard", "ack_ts")

    def __init__(self, next_index: int):
        self.match_index = 0
        self.next_index = next_index
        self.state = PROBE
        self.paused_until = -1.0
        self.inflight: deque = deque()      # (last index sent, send time), in send order
        self.last_heard = float("-inf")     # leader's clock when it last answered in this term
        self.ack_ts = float("-inf")         # latest leader timestamp it echoed in this term

    def become_probe(self) -> None:
        self.state = PROBE
        self.next_index = self.match_index + 1
        self.inflight.clear()
        self.paused_until = -1.0

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next_index = max(self.next_index, self.match_index + 1)


class RaftCore:
    """One node's Raft state machine.

    Invariants:
      - current_term never decreases; voted_for is reset only when current_term grows;
        both are handed out in Ready.hard_state before any message that depends on them.
      - log holds the entries after snapshot_index, contiguous: log[i].index == snapshot_index + 1 + i.
      - commit_index never decreases and never exceeds last_index; applied <= commit_index.
      - a leader commits an index only when a majority of the voters of its configuration has it
        durable and it is of the leader's term.
      - config is the latest configuration in the log (snapshot_config if the log holds none);
        at most one configuration entry of a leader's log is uncommitted (§4.1).
      - only a voter of its own configuration campaigns; votes count only from voters.
      - read_ok(now) is True on at most one node at any instant (lease shorter than the time a
        follower refuses votes after hearing from its leader).

    Callers use: tick, step, propose, propose_config, ready, persisted, compacted, config_at,
    transfer_leadership, report_unreachable, read_ok, has_quorum, membership_state, and the
    read-only attributes below (config, voters, peers = the other members).

    Membership: `peers` (a list of the other node ids, all voters) bootstraps a fresh cluster;
    `config` instead gives the configuration at snapshot_index (from the snapshot's meta, or
    Membership() for a node joining with an empty data dir: it waits to be sent the log).
    CONFIG entries in `entries` then apply on top, as on any append.
    """

    def __init__(self, node_id: str, peers: list[str], *, heartbeat_interval: float = 0.05,
                 election_timeout: float = 0.3, rng: random.Random | None = None, now: float = 0.0,
                 term: int = 0, voted_for: str | None = None, entries: list | None = None,
                 snapshot_index: int = 0, snapshot_term: int = 0, commit_index: int | None = None,
                 start_election: bool = False, prevote: bool = True, check_quorum: bool = True,
                 max_batch: int = 512, max_inflight: int = 64, entry_factory=None,
                 config: Membership | dict | None = None, auto_promote: bool = True,
                 promote_lag: int = 64, unsafe_no_read_lease: bool = False):
        if election_timeout <= heartbeat_interval:
            raise ValueError(f"election timeout ({election_timeout}s) must be greater than the "
                             f"heartbeat interval ({heartbeat_interval}s)")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat interval must be positive")
        if node_id in peers:
            raise ValueError(f"{node_id} lists itself among its peers")
        if config is not None and peers:
            raise ValueError("give either peers (bootstrap) or config, not both")
        if isinstance(config, dict):
            config = Membership.from_dict(config)
        self.id = node_id
        self.heartbeat_interval = heartbeat_interval
        self.election_timeout = election_timeout
        self.rng = rng or random.Random()
        self.prevote = prevote
        # UNSAFE, a planted bug for the fault harness (--unsafe-no-read-lease): read_ok() trusts
        # the role alone and CheckQuorum is off (Raft without ReadIndex or leases), so a primary
        # cut off from the others keeps serving reads from its stale state until it hears of a
        # newer term.  Writes stay safe.
        self.unsafe_no_read_lease = unsafe_no_read_lease
        self.check_quorum = check_quorum and not unsafe_no_read_lease
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.auto_promote = auto_promote
        self.promote_lag = promote_lag
        if entry_factory is None:
            from kv_storage import ReplicationLog as entry_factory  # noqa: N813 - a class
        self._entry = entry_factory

        # persistent state (the host stores it; we hand changes out in Ready)
        self.current_term = term
        self.voted_for = voted_for
        self.log: list = list(entries or [])
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        if self.log and self.log[0].index != snapshot_index + 1:
            raise ValueError(f"log starts at {self.log[0].index}, expected {snapshot_index + 1}")
        # configuration: the one at the snapshot point, then the CONFIG entries of the log
        self.snapshot_config = config if config is not None else Membership.of([node_id, *peers])
        self._configs: list[tuple[int, Membership]] = [
            (e.index, Membership.from_dict(e.value)) for e in self.log if e.op == CONFIG]
        self._removed_notice = 0                # config index at which a peer said we are out
        self._ever_member = any(self.id in c.members for c in
                                [self.snapshot_config, *(c for _, c in self._configs)])
        self._set_derived_config()

        # volatile state
        self.commit_index = snapshot_index if commit_index is None else max(commit_index, snapshot_index)
        self.applied = self.commit_index if commit_index is not None else snapshot_index
        self.persisted_index = self.last_index   # what the host loaded is durable
        self.role = FOLLOWER
        self.leader_id: str | None = None
        self.now = now
        self.last_leader_contact = float("-inf")
        # A restarted node may have acknowledged a leader just before it went down: keep the
        # promise behind that leader's read lease (refuse votes) for one election timeout.
        self._boot_lease_until = now + election_timeout if term > 0 else float("-inf")
        self.election_deadline = now
        self._eager = start_election            # --primary: campaign at once and retry quickly
        self._votes: dict[str, bool] = {}

        # leader-only state
        self.progress: dict[str, Progress] = {}
        self.heartbeat_deadline = now
        self.term_start_index = 0               # index of this leader's first entry (its NOOP)
        self.leader_since = float("-inf")
        self.transfer_target: str | None = None
        self.transfer_deadline = 0.0
        self._timeout_now_sent = False
        self._ack_quorum_ts = float("-inf")     # cache of _quorum_ack_ts(): reads check it lock-free

        # output
        self._ready = Ready()
        self._hard_dirty = False

        if start_election:
            self.election_deadline = now
        else:
            self._reset_election_timer()
            if term == 0 and not self.log and snapshot_index == 0 and len(self.voters) > 1:
                # a brand-new node gives a --primary peer time to win the first election
                self.election_deadline += self.election_timeout

    # ------------------------------------------------------------------ log helpers
    @property
    def last_index(self) -> int:
        return self.log[-1].index if self.log else self.snapshot_index

    @property
    def last_term(self) -> int:
        return self.log[-1].term if self.log else self.snapshot_term

    @property
    def quorum(self) -> int:
        return self.config.quorum

    def term_at(self, index: int) -> int | None:
        """Term of the entry at index; None when compacted away (index < snapshot) or absent."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.log[index - self.snapshot_index - 1].term

    def entry_at(self, index: int):
        return self.log[index - self.snapshot_index - 1]

    def entries_from(self, start: int, limit: int) -> list:
        lo = start - self.snapshot_index - 1
        return self.log[lo:lo + limit]

    # ------------------------------------------------------------------ membership (§4.1)
    def _set_derived_config(self) -> None:
        """config/config_index from the latest CONFIG entry (or the snapshot's configuration;
        config_index is then snapshot_index: the configuration is known as of that index)."""
        if self._configs:
            self.config_index, self.config = self._configs[-1]
        else:
            self.config_index, self.config = self.snapshot_index, self.snapshot_config
        self.voters = frozenset(self.config.voters)
        self.peers = sorted(self.config.members - {self.id})
        if self.id in self.config.members:
            self._ever_member = True

    def _config_changed(self) -> None:
        """The configuration in force may have changed (append, truncation, snapshot)."""
        old = self.config
        self._set_derived_config()
        if self.config == old:
            return
        self._ready.config = self.config
        if self.role == LEADER:
            for p in self.peers:
                if p not in self.progress:
                    self.progress[p] = Progress(self.last_index + 1)
            # members that left keep their progress until the change commits, so that they
            # receive the entry that removes them (_commit_advanced drops them)
            self._ack_quorum_ts = self._quorum_ack_ts()

    def _scan_configs(self, entries: list) -> None:
        found = False
        for e in entries:
            if e.op == CONFIG:
                self._configs.append((e.index, Membership.from_dict(e.value)))
                found = True
        if found:
            self._config_changed()

    def _truncate_configs(self, from_index: int) -> None:
        """The log is cut from from_index on: configurations appended there are undone (§4.1)."""
        if self._configs and self._configs[-1][0] >= from_index:
            self._configs = [c for c in self._configs if c[0] < from_index]
            self._config_changed()

    def config_at(self, index: int) -> Membership:
        """The configuration in force after entry `index` (snapshot_index <= index <= last_index).
        The host stores config_at(i) in the meta of a snapshot taken at i."""
        if index < self.snapshot_index:
            raise ValueError(f"configuration at {index} is compacted away (snapshot at {self.snapshot_index})")
        cfg = self.snapshot_config
        for i, c in self._configs:
            if i > index:
                break
            cfg = c
        return cfg

    @property
    def membership_state(self) -> str:
        """"voter" or "learner"; "removed" when a configuration this node holds (or a peer's
        committed one, by the notice on a refused vote) no longer lists it; "joining" when no
        configuration it has seen ever listed it (a node started with --join, before its add)."""
        if self._removed_notice > self.config_index:
            return "removed"
        role = self.config.role_of(self.id)
        if role is not None:
            return role
        return "removed" if self._ever_member else "joining"

    def _can_campaign(self) -> bool:
        """A voter of its own configuration campaigns, and not after being told it left.  So does
        a voter removed by a configuration that is not committed yet: it may still be needed
        to commit it (a leader that removed itself and restarted; §4.2.2: it does not count its
        own vote)."""
        if self._removed_notice > self.config_index:
            return False
        if self.id in self.voters:
            return True
        return self.config_index > self.commit_index and \
            self.id in self.config_at(self.config_index - 1).voters

    def _own_term_committed(self) -> bool:
        """§4.1 (the 2015 fix): the leader has committed an entry of its term, its NOOP."""
        return self.commit_index >= self.term_start_index

    def _config_change_blocker(self) -> str | None:
        if not self._own_term_committed():
            return "the primary has not yet committed an entry of its term; try again shortly"
        if self.config_index > self.commit_index:
            return "another membership change is still in progress; try again when it commits"
        return None

    def propose_config(self, action: str, node_id: str, addr: str | None = None,
                       now: float | None = None):
        """Append a one-server configuration change on the leader and return its entry:
        action "add" (as a learner; promoted automatically), "promote" or "remove".
        Raises NotLeader, or MembershipError when the change is refused (nothing appended)."""
        self._check_accepting(now)
        cfg = self.config
        role = cfg.role_of(node_id)
        if action == "add":
            if role is not None:
                raise MembershipError(f"{node_id} is already a {role}", transient=False)
            new = cfg.with_learner(node_id, addr)
        elif action == "promote":
            if role != "learner":
                raise MembershipError(f"{node_id} is not a learner", transient=False)
            new = cfg.promoted(node_id)
        elif action == "remove":
            if role is None:
                raise MembershipError(f"{node_id} is not a member", transient=False)
            if role == "voter" and len(cfg.voters) == 1:
                raise MembershipError(f"{node_id} is the last voter", transient=False)
            new = cfg.without(node_id)
        else:
            raise ValueError(f"unknown membership action {action!r}")
        blocker = self._config_change_blocker()
        if blocker is not None:
            raise MembershipError(blocker, transient=True)
        return self._append_config(new)

    def _append_config(self, new: Membership):
        entry = self._entry(self.last_index + 1, self.current_term, CONFIG, None, new.to_dict(), "json")
        self._append_local([entry])
        self._maybe_commit()
        return entry

    def _maybe_promote(self) -> None:
        """§4.2.1: a learner becomes a voter once it has the latest configuration and is within
        promote_lag entries of the leader's log and answered within an election timeout."""
        if not self.auto_promote or not self.config.learners or self.transfer_target is not None:
            return
        if self._config_change_blocker() is not None:
            return
        for p in sorted(self.config.learners):
            pr = self.progress.get(p)
            if pr is not None and pr.match_index >= self.config_index and \
                    pr.match_index + self.promote_lag >= self.last_index and \
                    self.now - pr.last_heard < self.election_timeout:
                self._append_config(self.config.promoted(p))
                return

    def _commit_advanced(self) -> None:
        """Leader: once its configuration is committed, members that left are dropped, and a
        leader that removed itself hands leadership to a voter and steps down (§4.2.2)."""
        if self.config_index > self.commit_index:
            return
        for p in [p for p in self.progress if p not in self.config.members]:
            del self.progress[p]
        if self.id not in self.voters and self.transfer_target is None:
            others = [p for p in self.voters if p in self.progress]
            if others:
                self._start_transfer(max(others, key=lambda p: (self.progress[p].match_index, p)))
            else:
                self.become_follower(self.current_term, None)

    def _log_behind(self, msg: dict) -> bool:
        """The candidate's log (in an ELECTION) is strictly less up-to-date than ours."""
        return not self._log_up_to_date(msg["last_log_index"], msg["last_log_term"])

    def _log_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1 election restriction: the candidate's log is at least as up-to-date as ours."""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    # ------------------------------------------------------------------ role changes
    def _reset_election_timer(self) -> None:
        if self.id not in self.voters:
            # A node whose own uncommitted configuration removed it may still campaign
            # (_can_campaign), but it defers to the voters: without PreVote its requests take
            # their votes, and a voter that can win (it ignores our term) must get there first.
            self.election_deadline = self.now + self.election_timeout * (2.0 + self.rng.random())
        elif self._eager:
            base = 3 * self.heartbeat_interval
            self.election_deadline = self.now + base + self.rng.random() * base
        else:
            self.election_deadline = self.now + self.election_timeout * (1.0 + self.rng.random())

    def _set_term(self, term: int) -> None:
        if term > self.current_term:
            self.current_term = term
            self.voted_for = None
            self._hard_dirty = True

    def become_follower(self, term: int, leader_id: str | None, reset_timer: bool = True) -> None:
        self._set_term(term)
        self.role = FOLLOWER
        self.leader_id = leader_id
        self.progress = {}
        self.transfer_target = None
        self._votes = {}
        if leader_id is not None:
            self._eager = False
        if reset_timer or self.election_deadline <= self.now:
            self._reset_election_timer()

    def become_precandidate(self) -> None:
        assert self.role != LEADER, "a leader does not pre-campaign"
        self.role = PRECANDIDATE
        self.leader_id = None
        self._votes = {self.id: True} if self.id in self.voters else {}
        self._reset_election_timer()

    def become_candidate(self) -> None:
        assert self.role != LEADER, "a leader does not campaign"
        self._set_term(self.current_term + 1)
        self.role = CANDIDATE
        self.leader_id = None
        self.voted_for = self.id
        self._hard_dirty = True
        self._votes = {self.id: True} if self.id in self.voters else {}
        self._reset_election_timer()

    def become_leader(self) -> None:
        assert self.role == CANDIDATE, f"only a candidate becomes leader (was {self.role})"
        self.role = LEADER
        self.leader_id = self.id
        self.leader_since = self.now
        self._eager = False
        self.transfer_target = None
        self.progress = {p: Progress(self.last_index + 1) for p in self.peers}
        self._ack_quorum_ts = self._quorum_ack_ts()
        self.heartbeat_deadline = self.now   # announce at once
        noop = self._entry(self.last_index + 1, self.current_term, "NOOP", None, None, "json")
        self.term_start_index = noop.index
        self._append_local([noop])
        self._maybe_commit()   # a cluster of one commits on its own
        self._broadcast_append(heartbeat=True)

    # ------------------------------------------------------------------ timers
    def tick(self, now: float) -> None:
        self.now = now
        if self.role == LEADER:
            if self.check_quorum and now - self._quorum_heard() >= self.election_timeout:
                # CheckQuorum: a majority has been silent for a whole election timeout
                self.become_follower(self.current_term, None)
                return
            if self.transfer_target is not None and now >= self.transfer_deadline:
                # The target may still campaign on a late TIMEOUT_NOW, so resuming lease reads
                # would be unsafe: step down and let the cluster elect again.
                self.become_follower(self.current_term, None)
                return
            if now >= self.heartbeat_deadline:
                self.heartbeat_deadline = now + self.heartbeat_interval
                self._broadcast_append(heartbeat=True)
                self._maybe_promote()
            return
        if now >= self.election_deadline:
            if self._can_campaign():
                self.campaign(transfer=False)
            else:
                self._reset_election_timer()   # a learner or a removed node never campaigns

    def campaign(self, transfer: bool) -> None:
        """Start an election: a PreVote round first, unless PreVote is off or TIMEOUT_NOW asked us
        to take over (a transfer skips PreVote and the voters' lease check)."""
        if self.prevote and not transfer:
            self.become_precandidate()
        else:
            self.become_candidate()
        self._request_votes(transfer)

    def _request_votes(self, transfer: bool) -> None:
        if sum(self._votes.values()) >= self.quorum:
            self._won_round()
            return
        prevote = self.role == PRECANDIDATE
        term = self.current_term + 1 if prevote else self.current_term
        for p in sorted(self.voters - {self.id}):
            self._send({"type": "ELECTION", "to": p, "term": term, "prevote": prevote,
                        "last_log_index": self.last_index, "last_log_term": self.last_term,
                        "transfer": transfer})

    def _won_round(self) -> None:
        if self.role == PRECANDIDATE:
            self.become_candidate()
            self._request_votes(transfer=False)
        elif self.role == CANDIDATE:
            self.become_leader()

    # ------------------------------------------------------------------ client side
    def propose(self, op: str, key: Any, value: Any, kind: str = "json", now: float | None = None):
        """Append a new entry on the leader; returns it.  Raises NotLeader otherwise."""
        self._check_accepting(now)
        if op == CONFIG:
            raise ValueError("configuration entries go through propose_config()")
        entry = self._entry(self.last_index + 1, self.current_term, op, key, value, kind)
        self._append_local([entry])
        if not self.peers:
            self._maybe_commit()
        return entry

    def _check_accepting(self, now: float | None) -> None:
        """Raise NotLeader unless this node is a leader that accepts new entries now."""
        if now is not None:
            self.now = now
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer_target is not None:
            raise NotLeader(None, "leadership transfer in progress")

    def transfer_leadership(self, target: str | None, now: float) -> str | None:
        """Hand leadership to target (or the most caught-up other voter).  Returns the chosen
        target (None: no other voter).  Raises ValueError when target is not another voter."""
        self.now = now
        others = [p for p in self.voters if p != self.id and p in self.progress]
        if self.role != LEADER or not others:
            return None
        if target is None:
            target = max(others, key=lambda p: (self.progress[p].match_index, p))
        if target not in others:
            raise ValueError(f"unknown node {target!r}" if target not in self.config.members
                             else f"{target} is a learner: leadership goes to voters only")
        self._start_transfer(target)
        return target

    def _start_transfer(self, target: str) -> None:
        self.transfer_target = target
        self.transfer_deadline = self.now + self.election_timeout
        self._timeout_now_sent = False
        pr = self.progress[target]
        if pr.match_index == self.last_index:
            self._maybe_send_timeout_now(target, pr)
        else:
            self._send_append(target, force=True)

    def read_ok(self, now: float) -> bool:
        """True when a read served now from the local state is linearizable: we lead, an entry of
        our term is committed (so we know the latest commit), no transfer is under way, and a
        majority acknowledged us within the lease (followers refuse votes during that time)."""
        if self.unsafe_no_read_lease:
            return self.role == LEADER    # the planted bug: no lease, no proof of leadership
        if self.role != LEADER or self.transfer_target is not None or not self.check_quorum:
            return False   # without CheckQuorum voters do not honour leases
        if self.commit_index < self.term_start_index:
            return False
        return now < self._ack_quorum_ts + self.election_timeout * LEASE_FRACTION

    def has_quorum(self, now: float) -> bool:
        """A leader that heard from a majority within one election timeout (or was elected less
        than one election timeout ago: CheckQuorum deposes it otherwise)."""
        if self.role != LEADER:
            return False
        return now < self.leader_since + self.election_timeout or \
            now < self._ack_quorum_ts + self.election_timeout

    def _voters_needed(self) -> int:
        """Voters besides ourselves that make a majority (a leader that removed itself from the
        configuration does not count itself, §4.2.2)."""
        return self.quorum - (1 if self.id in self.voters else 0)

    def quorum_silence(self, now: float) -> float:
        """A leader's seconds since it last heard from a majority (CheckQuorum steps it down at
        one election timeout); 0 elsewhere.  For monitoring."""
        return max(0.0, now - self._quorum_heard()) if self.role == LEADER else 0.0

    def _quorum_heard(self) -> float:
        """When a majority of voters (counting ourselves if we vote) was last heard from; never
        before our election."""
        need = self._voters_needed()
        if need <= 0:
            return self.now             # a cluster of one always hears a majority
        voters = self.voters
        heard = sorted((pr.last_heard for p, pr in self.progress.items() if p in voters), reverse=True)
        if len(heard) < need:
            return self.leader_since
        return max(heard[need - 1], self.leader_since)

    def _quorum_ack_ts(self) -> float:
        need = self._voters_needed()
        if need <= 0:
            return float("inf")
        voters = self.voters
        acks = sorted((pr.ack_ts for p, pr in self.progress.items() if p in voters), reverse=True)
        return acks[need - 1] if len(acks) >= need else float("-inf")

    # ------------------------------------------------------------------ host callbacks
    def persisted(self, index: int) -> None:
        """The host made entries up to index durable on this node."""
        if index > self.persisted_index:
            self.persisted_index = min(index, self.last_index)
            if self.role == LEADER:
                self._maybe_commit()

    def compacted(self, snapshot_index: int, snapshot_term: int) -> list:
        """The host stored a snapshot covering entries up to snapshot_index: drop that prefix.
        Returns the dropped entries, so that a host holding a lock can free them after it (a
        100,000-entry prefix takes tens of ms to deallocate)."""
        if snapshot_index <= self.snapshot_index:
            return []
        if snapshot_index > self.applied:
            raise ValueError(f"snapshot at {snapshot_index} is past applied index {self.applied}")
        if self.term_at(snapshot_index) != snapshot_term:
            raise ValueError(f"snapshot term {snapshot_term} does not match the log at {snapshot_index}")
        self.snapshot_config = self.config_at(snapshot_index)
        self._configs = [c for c in self._configs if c[0] > snapshot_index]
        n = snapshot_index - self.snapshot_index
        dropped = self.log[:n]
        del self.log[:n]
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self._set_derived_config()      # the same configuration, now known from the snapshot
        return dropped

    def report_unreachable(self, peer: str) -> None:
        """The host lost its connection to peer: messages in flight may be gone."""
        pr = self.progress.get(peer)
        if pr is not None and pr.state in (REPLICATE, SNAPSHOT):
            pr.become_probe()
            pr.paused_until = self.now + self.heartbeat_interval   # retry paced, not per ready()

    def report_peer_dead(self, peer: str, now: float) -> None:
        """The host knows peer's process is gone: its port refused a new connection right after
        the old one closed (kill -9, crash).  A dead process serves nothing, so a follower of
        that peer need not wait out the election timeout, which only has to catch *silent*
        failures (pause, partition): it forgets the leader and campaigns after a short random
        delay, retrying quickly (split votes) until a leader is heard.  The caller must only
        report a refusal, never a timeout: a paused or cut-off leader may still hold its lease.
        (Assumption, stated in docs/CLUSTERING.md: between nodes, a refused connection means no
        process listens; a firewall that rejects rather than drops would void it.)"""
        self.now = now
        if self.role != FOLLOWER or peer != self.leader_id:
            return
        self.leader_id = None
        self.last_leader_contact = float("-inf")
        self._eager = True
        self.election_deadline = min(self.election_deadline,
                                     now + self.rng.random() * 2 * self.heartbeat_interval)

    def peer_connected(self, peer: str, now: float) -> None:
        """The host can now reach peer.  A node asked to start the first election (--primary)
        campaigns at once instead of waiting for its retry timer, so it wins the race against
        peers whose own timers started earlier."""
        self.now = now
        if self._eager and self.role in (FOLLOWER, PRECANDIDATE) and self.leader_id is None \
                and self._can_campaign():
            self.campaign(transfer=False)

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The host finished (ok) or abandoned streaming a snapshot to peer.  A failed transfer
        is retried from the next probe instead of waiting for the SNAPSHOT state to expire."""
        pr = self.progress.get(peer)
        if pr is not None and pr.state == SNAPSHOT and not ok:
            pr.become_probe()
            pr.paused_until = self.now + self.heartbeat_interval   # retry paced, not per ready()

    def ready(self) -> Ready:
        """Hand out the accumulated work and start a new batch."""
        if self.role == LEADER:
            for p, pr in self.progress.items():
                if pr.next_index <= self.last_index:
                    self._send_append(p)
        rd = self._ready
        if self._hard_dirty:
            rd.hard_state = (self.current_term, self.voted_for)
            self._hard_dirty = False
        if self.commit_index > self.applied:
            start = max(self.applied + 1, self.snapshot_index + 1)
            if start <= self.commit_index:
                rd.committed = self.entries_from(start, self.commit_index - start + 1)
            self.applied = self.commit_index
        self._ready = Ready()
        return rd

    # ------------------------------------------------------------------ leader internals
    def _append_local(self, entries: list) -> None:
        self.log.extend(entries)
        self._ready.entries.extend(entries)
        self._scan_configs(entries)     # §4.1: a configuration is in force once appended

    def _send(self, msg: dict) -> None:
        msg["from"] = self.id
        self._ready.messages.append(msg)

    def _broadcast_append(self, heartbeat: bool) -> None:
        for p, pr in list(self.progress.items()):
            if heartbeat:
                self._send({"type": "HEARTBEAT", "to": p, "term": self.current_term,
                            "commit": min(self.commit_index, pr.match_index), "ts": self.now})
                if pr.state == PROBE and pr.match_index < self.last_index:
                    self._send_append(p)
                elif pr.state == REPLICATE and pr.inflight and \
                        self.now - pr.inflight[0][1] > self.election_timeout / 2:
                    pr.become_probe()       # answers lost (e.g. a dropped connection): probe again
                    self._send_append(p)
                elif pr.state == SNAPSHOT and self.now >= pr.paused_until:
                    pr.become_probe()       # snapshot answer never came: start over
                    self._send_append(p)
            else:
                self._send_append(p)

    def _send_append(self, p: str, force: bool = False) -> None:
        pr = self.progress.get(p)
        if pr is None or pr.state == SNAPSHOT:
            return
        if pr.state == PROBE and self.now < pr.paused_until and not force:
            return
        if pr.state == REPLICATE and len(pr.inflight) >= self.max_inflight:
            return
        prev_index = pr.next_index - 1
        prev_term = self.term_at(prev_index)
        if prev_term is None or pr.next_index <= self.snapshot_index:
            # the entries it needs were compacted away: send the snapshot (the host streams it)
            pr.state = SNAPSHOT
            pr.inflight.clear()
            pr.paused_until = self.now + 3 * self.election_timeout
            self._send({"type": "SYNC", "to": p, "term": self.current_term,
                        "last_index": self.snapshot_index, "last_term": self.snapshot_term,
                        "config": self.snapshot_config.to_dict()})
            return
        entries = self.entries_from(pr.next_index, self.max_batch)
        self._send({"type": "REPLICATE", "to": p, "term": self.current_term, "prev_index": prev_index,
                    "prev_term": prev_term, "entries": entries, "commit": self.commit_index,
                    "ts": self.now})
        if pr.state == PROBE:
            pr.paused_until = self.now + self.heartbeat_interval
        elif entries:
            last = entries[-1].index
            pr.next_index = last + 1
            pr.inflight.append((last, self.now))

    def _maybe_commit(self) -> None:
        voters = self.voters
        matches = [pr.match_index for p, pr in self.progress.items() if p in voters]
        if self.id in voters:
            matches.append(self.persisted_index)
        q = self.quorum
        if len(matches) < q:
            return
        matches.sort(reverse=True)
        n = matches[q - 1]
        # §5.4.2: only entries of the current term are committed by counting replicas
        if n > self.commit_index and self.term_at(n) == self.current_term:
            self.commit_index = n
            self._commit_advanced()

    # ------------------------------------------------------------------ message handling
    def step(self, msg: dict, now: float) -> None:
        """Feed one message from a peer.  Unknown senders must be filtered by the host."""
        self.now = now
        mtype = msg["type"]
        mterm = msg["term"]
        sender = msg["from"]
        if mtype == "ELECTION":
            self._on_election(msg, now)
            return
        if mtype == "ELECTION_RESP" and msg.get("removed") is not None:
            self._on_removed_notice(msg)
            return
        if mtype == "ELECTION_RESP" and msg.get("prevote"):
            # a granted PreVote answer carries our proposed term, not the voter's: no term change
            if not msg["granted"] and mterm > self.current_term:
                self.become_follower(mterm, None)
                return
            self._on_vote_resp(msg)
            return
        if mterm > self.current_term:
            leader = sender if mtype in ("REPLICATE", "HEARTBEAT", "SYNC", "TIMEOUT_NOW") else None
            self.become_follower(mterm, leader)
        elif mterm < self.current_term:
            if mtype in ("REPLICATE", "HEARTBEAT", "SYNC"):
                # a stale leader: tell it our term so it steps down
                self._send({"type": mtype + "_RESP", "to": sender, "term": self.current_term,
                            "success": False, "match_index": 0, "reject_hint": None,
                            "last_index": self.last_index, "ts": msg.get("ts"), "stale": True})
            return
        if mtype in ("REPLICATE", "HEARTBEAT", "SYNC"):
            if self.role != FOLLOWER or self.leader_id != sender:
                self.become_follower(mterm, sender)
            self.last_leader_contact = now
            self._reset_election_timer()
            if mtype == "REPLICATE":
                self._on_replicate(msg)
            elif mtype == "HEARTBEAT":
                self._advance_commit(min(msg["commit"], self.last_index))
                self._send({"type": "HEARTBEAT_RESP", "to": sender, "term": self.current_term,
                            "ts": msg["ts"], "last_index": self.last_index})
            else:
                self._on_sync(msg)
        elif mtype == "ELECTION_RESP":
            self._on_vote_resp(msg)
        elif mtype == "TIMEOUT_NOW":
            if self.role != LEADER and self._can_campaign():
                self.campaign(transfer=True)
        elif self.role == LEADER and sender in self.progress:
            pr = self.progress[sender]
            if msg.get("stale"):
                return
            pr.last_heard = now
            ts = msg.get("ts")
            if ts is not None and ts > pr.ack_ts:
                pr.ack_ts = ts
                self._ack_quorum_ts = self._quorum_ack_ts()
            if mtype == "REPLICATE_RESP":
                self._on_replicate_resp(sender, pr, msg)
            elif mtype == "HEARTBEAT_RESP":
                last = msg.get("last_index")
                if last is not None and last < pr.match_index:
                    # it holds less than it acknowledged: it lost its log (a wiped data dir).
                    # Start over from what it has now; an idle cluster sends nothing else.
                    pr.match_index = last
                    pr.become_probe()
                if pr.match_index < self.last_index and pr.state == PROBE:
                    self._send_append(sender)
            elif mtype == "SYNC_RESP":
                pr.match_index = max(pr.match_index, msg["match_index"])
                pr.next_index = pr.match_index + 1
                pr.become_probe()
                self._send_append(sender)
                self._maybe_commit()
            self._maybe_send_timeout_now(sender, pr)

    def _in_lease(self, now: float) -> bool:
        """We heard from a live leader within the minimum election timeout (or are one)."""
        if not self.check_quorum:
            return False
        if self.role == LEADER or now < self._boot_lease_until:
            return True
        return self.leader_id is not None and now - self.last_leader_contact < self.election_timeout

    def _on_election(self, msg: dict, now: float) -> None:
        mterm = msg["term"]
        cand = msg["from"]
        prevote = msg["prevote"]
        if cand not in self.config.members and self._log_behind(msg):
            # §4.2.3: a node outside our configuration (removed) cannot disrupt us: refused
            # without taking its term.  If our configuration is committed, tell it it was
            # removed.  Only when its log is behind ours (it could not get our vote anyway):
            # a candidate with an equal or newer log may hold a configuration that lists it
            # (we are the one behind, or its own removal is not committed yet and it is needed
            # to commit it), and a learner of ours that campaigns was promoted in a newer
            # configuration; they are answered as Raft answers anyone, or a cluster could be
            # left with no electable node, or with a voter that never learns the current term.
            removed = None
            if self.config.members and self.config_index <= self.commit_index:
                removed = self.commit_index     # our configuration as of this index leaves it out
            self._send({"type": "ELECTION_RESP", "to": cand, "term": self.current_term,
                        "prevote": prevote, "granted": False, "removed": removed})
            return
        if mterm > self.current_term and not msg.get("transfer") and self._in_lease(now):
            # a live leader exists: refuse without adopting the term (PreVote/CheckQuorum lease)
            self._send({"type": "ELECTION_RESP", "to": cand, "term": self.current_term,
                        "prevote": prevote, "granted": False})
            return
        if prevote:
            granted = mterm > self.current_term and self._log_up_to_date(
                msg["last_log_index"], msg["last_log_term"])
            self._send({"type": "ELECTION_RESP", "to": cand,
                        "term": mterm if granted else self.current_term,
                        "prevote": True, "granted": granted})
            return
        if mterm > self.current_term:
            # Figure 2: only a granted vote (or a live leader) restarts the election timer, so a
            # candidate with a stale log cannot keep an up-to-date node from campaigning
            self.become_follower(mterm, None, reset_timer=False)
        granted = (mterm == self.current_term
                   and self.voted_for in (None, cand)
                   and self._log_up_to_date(msg["last_log_index"], msg["last_log_term"]))
        if granted:
            self.voted_for = cand
            self._hard_dirty = True
            self._reset_election_timer()
        self._send({"type": "ELECTION_RESP", "to": cand, "term": self.current_term,
                    "prevote": False, "granted": granted})

    def _on_removed_notice(self, msg: dict) -> None:
        """A peer whose committed configuration, as of its commit index msg["removed"], does not
        list us.  Believed only if that is past our latest configuration entry; a later
        configuration that lists us again (we were re-added) makes us a member again."""
        if msg["removed"] > self.config_index:
            self._removed_notice = max(self._removed_notice, msg["removed"])
            if self.role in (PRECANDIDATE, CANDIDATE):
                self.become_follower(self.current_term, None)

    def _on_vote_resp(self, msg: dict) -> None:
        want = PRECANDIDATE if msg.get("prevote") else CANDIDATE
        if self.role != want or msg["from"] not in self.voters:
            return
        if want == PRECANDIDATE and msg["term"] != self.current_term + 1:
            return
        self._votes[msg["from"]] = bool(msg["granted"])
        granted = sum(1 for v in self._votes.values() if v)
        rejected = len(self._votes) - granted
        if granted >= self.quorum:
            self._won_round()
        elif rejected >= self.quorum:
            self._eager = False   # --primary only hurries the first election, never a lost one
            self.become_follower(self.current_term, None)

    def _on_replicate(self, msg: dict) -> None:
        leader = msg["from"]
        prev_index = msg["prev_index"]
        prev_term = msg["prev_term"]
        entries = msg["entries"]
        if prev_index < self.commit_index:
            # everything up to commit_index matches the leader already (Log Matching + Leader
            # Completeness): skip what we hold, keeping the prev_index check consistent
            skip = self.commit_index - prev_index
            if skip >= len(entries):
                self._send({"type": "REPLICATE_RESP", "to": leader, "term": self.current_term,
                            "success": True, "match_index": self.commit_index, "reject_hint": None,
                            "last_index": self.last_index, "ts": msg["ts"]})
                return
            prev_index = self.commit_index
            prev_term = entries[skip - 1].term
            entries = entries[skip:]
        my_prev_term = self.term_at(prev_index)
        if my_prev_term != prev_term:
            if prev_index > self.last_index:
                hint = (self.last_index + 1, None)
            else:
                conflict_term = my_prev_term
                first = prev_index
                while first - 1 > self.snapshot_index and self.term_at(first - 1) == conflict_term:
                    first -= 1
                hint = (first, conflict_term)
            self._send({"type": "REPLICATE_RESP", "to": leader, "term": self.current_term,
                        "success": False, "match_index": 0, "reject_hint": list(hint),
                        "last_index": self.last_index, "ts": msg["ts"]})
            return
        # find the first new or conflicting entry
        new = []
        for i, e in enumerate(entries):
            t = self.term_at(e.index)
            if t is None:
                new = entries[i:]
                break
            if t != e.term:
                assert e.index > self.commit_index, "a committed entry would be overwritten"
                del self.log[e.index - self.snapshot_index - 1:]
                self.persisted_index = min(self.persisted_index, e.index - 1)
                rd = self._ready
                rd.truncate_from = e.index if rd.truncate_from is None else min(rd.truncate_from, e.index)
                rd.entries = [x for x in rd.entries if x.index < e.index]
                self._truncate_configs(e.index)
                new = entries[i:]
                break
        if new:
            self._append_local(new)
        match = prev_index + len(entries)
        self._advance_commit(min(msg["commit"], match))
        self._send({"type": "REPLICATE_RESP", "to": leader, "term": self.current_term,
                    "success": True, "match_index": match, "reject_hint": None,
                    "last_index": self.last_index, "ts": msg["ts"]})

    def _advance_commit(self, index: int) -> None:
        if index > self.commit_index:
            self.commit_index = index

    def _on_sync(self, msg: dict) -> None:
        """InstallSnapshot (§7): the host has received the whole snapshot file already."""
        last_index, last_term = msg["last_index"], msg["last_term"]
        if last_index <= self.commit_index:
            self._send({"type": "SYNC_RESP", "to": msg["from"], "term": self.current_term,
                        "match_index": self.commit_index, "ts": msg.get("ts")})
            return
        keep = self.term_at(last_index) == last_term
        cfg = msg.get("config")
        # the snapshot's configuration travels in its meta (an old sender without it: ours)
        self.snapshot_config = Membership.from_dict(cfg) if cfg is not None else \
            (self.config_at(last_index) if keep else self.config)
        self._configs = [c for c in self._configs if c[0] > last_index] if keep else []
        if keep:
            # keep the entries after the snapshot point (§7 rule 6)
            del self.log[:last_index - self.snapshot_index]
            reset = False
        else:
            self.log = []
            reset = True
        self._ready.entries = [x for x in self._ready.entries if x.index > last_index] if not reset else []
        self.snapshot_index, self.snapshot_term = last_index, last_term
        self._config_changed()
        self.commit_index = self.applied = last_index
        self.persisted_index = max(self.persisted_index, last_index) if not reset else last_index
        self._ready.committed = []
        self._ready.snapshot = {"last_index": last_index, "last_term": last_term, "reset": reset,
                                "msg": msg}
        self._send({"type": "SYNC_RESP", "to": msg["from"], "term": self.current_term,
                    "match_index": last_index, "ts": msg.get("ts")})

    def _on_replicate_resp(self, sender: str, pr: Progress, msg: dict) -> None:
        if msg["success"]:
            m = msg["match_index"]
            if m > pr.match_index:
                pr.match_index = m
            while pr.inflight and pr.inflight[0][0] <= pr.match_index:
                pr.inflight.popleft()
            if pr.state == PROBE:
                pr.become_replicate()
            pr.next_index = max(pr.next_index, pr.match_index + 1)
            self._maybe_commit()
            if pr.next_index <= self.last_index:
                self._send_append(sender)
            return
        hint = msg.get("reject_hint")
        if msg.get("last_index", pr.match_index) < pr.match_index:
            # the follower holds less than it once acknowledged: it lost its data (e.g. a wiped
            # data dir).  Start over from what it has now instead of probing forever.
            pr.match_index = msg["last_index"]
            pr.next_index = pr.match_index + 1
        old_next = pr.next_index
        nxt = old_next - 1
        if hint:
            conflict_index, conflict_term = hint
            nxt = conflict_index
            if conflict_term is not None:
                # fast back-off: skip to just past our last entry of the follower's conflicting term
                i = min(old_next - 1, self.last_index)
                while i > self.snapshot_index:
                    t = self.term_at(i)
                    if t == conflict_term:
                        nxt = i + 1
                        break
                    if t < conflict_term:
                        break
                    i -= 1
        pr.become_probe()
        pr.next_index = max(pr.match_index + 1, min(nxt, old_next))
        self._send_append(sender)

    def _maybe_send_timeout_now(self, sender: str, pr: Progress) -> None:
        if (self.role == LEADER and self.transfer_target == sender and not self._timeout_now_sent
                and pr.match_index == self.last_index):
            self._timeout_now_sent = True
            self._send({"type": "TIMEOUT_NOW", "to": sender, "term": self.current_term})
            if self.id not in self.voters and self.config_index <= self.commit_index:
                # §4.2.2: a leader that removed itself has nothing left to do once its successor
                # is told to campaign (the members no longer send it anything to depose it)
                self.become_follower(self.current_term, None)


# ---------------------------------------------------------------------------------------------
class ReadyHost(Protocol):
    """The side effects handle_ready() asks of a host.  Each returns once its work is done;
    append() returns once the entries are as durable as the fsync policy makes them."""

    def config_changed(self, config: Membership) -> None: ...
    def send(self, messages: list, early: bool) -> None: ...
    def save_hard_state(self, term: int, voted_for: str | None) -> None: ...
    def truncate(self, from_index: int) -> None: ...
    def install_snapshot(self, snapshot: dict) -> None: ...
    def append(self, entries: list) -> bool | None: ...
    def apply(self, entries: list) -> None: ...


_EARLY = ("REPLICATE", "HEARTBEAT")


def handle_ready(core: RaftCore, rd: Ready, host: ReadyHost, lock=None) -> bool:
    """Carry out one Ready in the order of the module docstring's contract.  `lock` (a context
    manager, e.g. the node's raft lock) is held only around the call back into the core.
    Returns True when the core may have more work at once (a leader's own fsync can commit)."""
    if rd.config is not None:
        host.config_changed(rd.config)
    was_leader = core.role == LEADER
    messages = rd.messages
    if was_leader and rd.hard_state is None and messages:
        early = [m for m in messages if m["type"] in _EARLY]
        if early:
            messages = [m for m in messages if m["type"] not in _EARLY]
            host.send(early, True)
    if rd.hard_state is not None:
        host.save_hard_state(*rd.hard_state)
    if rd.truncate_from is not None:
        host.truncate(rd.truncate_from)
    if rd.snapshot is not None:
        host.install_snapshot(rd.snapshot)
    more = False
    if rd.entries:
        if host.append(rd.entries) is not False:
            with lock if lock is not None else contextlib.nullcontext():
                core.persisted(rd.entries[-1].index)
            more = was_leader
    if messages:
        host.send(messages, False)
    if rd.committed:
        host.apply(rd.committed)
    return more
