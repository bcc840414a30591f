"""Sentinel-compatible discovery, ROLE, and Sentinel's failover events, served by every node.

Redis clients already know one way to follow a primary across failovers: ask a Sentinel.
redis-py's `Sentinel(...).master_for(name)`, Jedis's `JedisSentinelPool`, ioredis's
`{sentinels, name}` and go-redis's `NewFailoverClient` all ask "SENTINEL ... <name>" for the
master's address, reconnect when the master goes away or answers READONLY, and (Jedis, go-redis,
ioredis with failoverDetector) subscribe to `+switch-master`.  Every KV Store node answers those
commands on its own port, for one service name (--sentinel-name, default "kvstore"), from its
own Raft view: the Raft leader is the master, the other members are replicas, and every member
is also one of the "sentinels".

Layout:
    ClusterView         what one node knows, taken from its STATUS dict (a public contract)
    masters/master/get_master_addr/replicas/sentinels/ckquorum/myid
                        the SENTINEL subcommands: reply values (str, int, list, dict, None)
    role_reply          ROLE in Redis's format
    switch_master_message, EventHub
                        +switch-master to SUBSCRIBE'd connections when the primary changes
    SentinelService     one node's Sentinel face: view(), sentinel(cmd), role(); owns the hub
    commands            SENTINEL, ROLE, READONLY, READWRITE, (P)SUBSCRIBE, (P)UNSUBSCRIBE,
                        registered in kv_handler's dispatch table

The answers follow Sentinel 7 (sentinel.c, addReplySentinelRedisInstance):
  * the master's `flags` are "master" while this node knows a primary.  While it knows none
    (an election is under way, or this node is cut off) it answers as a Sentinel does for a
    master that is down: flags "s_down,o_down,master" with the last primary it knew, so redis-py's
    discover_master skips it and asks the next node; GET-MASTER-ADDR-BY-NAME still names that
    last primary (as Sentinel does until its failover completes), or nil if it never knew one;
  * `num-other-sentinels` is the number of other members this node's peer links reach;
    `config-epoch` is the Raft term (Sentinel's epoch also grows by one per failover);
  * a replica that this node cannot reach is flagged "s_down,slave,disconnected" (clients skip
    it); `slave-repl-offset` is its match index as the primary knows it, or this node's own
    applied index for itself;
  * an unknown service name is "ERR No such master with that name" (GET-MASTER-ADDR-BY-NAME: nil).

Nothing here touches a socket or a lock except EventHub, whose subscribers' send() is called
from the hub's watcher thread; every other function is pure and tested on plain dicts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import kv_protocol as P
from kv_handler import command
from kv_protocol import CommandError, Reply

log = logging.getLogger("kvstore")

__all__ = ["DEFAULT_SERVICE_NAME", "ClusterView", "masters", "master",
           "get_master_addr", "replicas", "sentinels", "ckquorum", "myid", "role_reply",
           "switch_master_message", "EventHub", "SWITCH_MASTER", "Subscriber", "SentinelService",
           "push_reply", "DemotionWatch"]

DEFAULT_SERVICE_NAME = "kvstore"
SWITCH_MASTER = "+switch-master"
DOWN_AFTER_MS = 1000          # reported only: our failure detector is Raft's election timeout


def run_id(node_id: str) -> str:
    """A stable 40-hex-digit id for a node (Sentinel's runid / myid format)."""
    return hashlib.sha1(b"kvstore-node:" + node_id.encode()).hexdigest()


def _split(addr: str | None) -> tuple[str, int]:
    host, _, port = (addr or "").rpartition(":")
    return host, int(port) if port.isdigit() else 0


@dataclass
class ClusterView:
    """One node's view of the cluster, built from its STATUS dict by from_status().

    members: every member's "host:port", this node included.  primary: the leader this node
    knows now (None during an election).  last_primary: the last leader it knew (== primary when
    one is known).  reachable: per other member, whether this node's link to it is up.
    match_index: per other member, its replicated index (known on the primary only).
    """
    service: str
    node_id: str
    role: str                      # "primary" | "secondary" | "candidate"
    term: int
    primary: str | None
    last_primary: str | None
    members: dict[str, str]
    reachable: dict[str, bool]
    match_index: dict[str, int | None]
    commit_index: int
    last_applied: int
    primary_since_ms: int = 0      # how long the current primary (or none) has been observed
    quorum: int = field(init=False)

    def __post_init__(self):
        self.quorum = len(self.members) // 2 + 1

    @classmethod
    def from_status(cls, st: dict, service: str, last_primary: str | None = None,
                    primary_since_ms: int = 0) -> "ClusterView":
        members = {pid: d["addr"] for pid, d in st["peers"].items()}
        members[st["node_id"]] = st["address"]
        primary = st.get("primary")
        if primary not in members:
            primary = None
        if last_primary not in members:
            last_primary = None
        return cls(service=service, node_id=st["node_id"], role=st["role"], term=st["election_term"],
                   primary=primary, last_primary=primary or last_primary, members=members,
                   reachable={pid: bool(d["reachable"]) for pid, d in st["peers"].items()},
                   match_index={pid: d.get("match_index") for pid, d in st["peers"].items()},
                   commit_index=st["commit_index"], last_applied=st["last_applied"],
                   primary_since_ms=primary_since_ms)

    def up(self, member: str) -> bool:
        """Whether this node sees `member` as up (itself always)."""
        return member == self.node_id or self.reachable.get(member, False)

    def offset(self, member: str) -> int:
        if member == self.node_id:
            return self.last_applied
        return self.match_index.get(member) or 0


def _check_name(view: ClusterView, name: str) -> None:
    if name != view.service:
        raise CommandError("BAD_REQUEST", "No such master with that name",
                           resp_message="ERR No such master with that name")


def _master_fields(view: ClusterView) -> dict:
    who = view.last_primary
    ip, port = _split(view.members.get(who)) if who else ("", 0)
    flags = "master" if view.primary is not None else "s_down,o_down,master"
    f = [
        ("name", view.service), ("ip", ip), ("port", str(port)),
        ("runid", run_id(who) if who else ""), ("flags", flags),
        ("link-pending-commands", "0"), ("link-refcount", "1"),
        ("last-ping-sent", "0"), ("last-ok-ping-reply", "0"), ("last-ping-reply", "0"),
    ]
    if view.primary is None:
        f += [("s-down-time", str(view.primary_since_ms)), ("o-down-time", str(view.primary_since_ms))]
    replicas_n = len(view.members) - (1 if who else 0)
    others = sum(1 for m in view.members if m != view.node_id and view.up(m))
    f += [
        ("down-after-milliseconds", str(DOWN_AFTER_MS)), ("info-refresh", "0"),
        ("role-reported", "master"), ("role-reported-time", str(view.primary_since_ms)),
        ("config-epoch", str(view.term)), ("num-slaves", str(replicas_n)),
        ("num-other-sentinels", str(others)), ("quorum", str(view.quorum)),
        ("failover-timeout", str(DOWN_AFTER_MS)), ("parallel-syncs", "1"),
    ]
    return dict(f)


def masters(view: ClusterView) -> list:
    """SENTINEL MASTERS: one master, the service."""
    return [_master_fields(view)]


def master(view: ClusterView, name: str) -> dict:
    """SENTINEL MASTER <name>."""
    _check_name(view, name)
    return _master_fields(view)


def get_master_addr(view: ClusterView, name: str) -> list | None:
    """SENTINEL GET-MASTER-ADDR-BY-NAME <name>: [ip, port] (both strings, as Sentinel sends them),
    the last primary known while none is known now, or None (nil) if none was ever known."""
    if name != view.service or view.last_primary is None:
        return None
    ip, port = _split(view.members[view.last_primary])
    return [ip, str(port)]


def replicas(view: ClusterView, name: str) -> list:
    """SENTINEL REPLICAS|SLAVES <name>: every member other than the (last known) primary."""
    _check_name(view, name)
    out = []
    m_ip, m_port = _split(view.members.get(view.last_primary)) if view.last_primary else ("", 0)
    master_up = view.primary is not None
    for member in sorted(view.members):
        if member == view.last_primary:
            continue
        ip, port = _split(view.members[member])
        up = view.up(member)
        flags = "slave" if up else "s_down,slave,disconnected"
        f = [
            ("name", f"{ip}:{port}"), ("ip", ip), ("port", str(port)), ("runid", run_id(member)),
            ("flags", flags), ("link-pending-commands", "0"), ("link-refcount", "1"),
            ("last-ping-sent", "0"), ("last-ok-ping-reply", "0"), ("last-ping-reply", "0"),
        ]
        if not up:
            f.append(("s-down-time", "0"))
        f += [
            ("down-after-milliseconds", str(DOWN_AFTER_MS)), ("info-refresh", "0"),
            ("role-reported", "slave"), ("role-reported-time", str(view.primary_since_ms)),
            ("master-link-down-time", "0"),
            ("master-link-status", "ok" if up and master_up else "err"),
            ("master-host", m_ip or "?"), ("master-port", str(m_port)),
            ("slave-priority", "100"), ("slave-repl-offset", str(view.offset(member))),
            ("replica-announced", "1"),
        ]
        out.append(dict(f))
    return out


def sentinels(view: ClusterView, name: str) -> list:
    """SENTINEL SENTINELS <name>: the other members (each node is also a sentinel)."""
    _check_name(view, name)
    out = []
    for member in sorted(view.members):
        if member == view.node_id:
            continue
        ip, port = _split(view.members[member])
        up = view.up(member)
        f = [
            ("name", run_id(member)), ("ip", ip), ("port", str(port)), ("runid", run_id(member)),
            ("flags", "sentinel" if up else "s_down,sentinel,disconnected"),
            ("link-pending-commands", "0"), ("link-refcount", "1"),
            ("last-ping-sent", "0"), ("last-ok-ping-reply", "0"), ("last-ping-reply", "0"),
        ]
        if not up:
            f.append(("s-down-time", "0"))
        f += [("down-after-milliseconds", str(DOWN_AFTER_MS)), ("last-hello-message", "0"),
              ("voted-leader", "?"), ("voted-leader-epoch", "0")]
        out.append(dict(f))
    return out


def ckquorum(view: ClusterView, name: str) -> str:
    """SENTINEL CKQUORUM <name>: "OK ..." (a status reply) or CommandError (-NOQUORUM ...)."""
    _check_name(view, name)
    usable = sum(1 for m in view.members if view.up(m))
    if usable >= view.quorum:
        return (f"OK {usable} usable Sentinels. Quorum and failover authorization can be reached")
    msg = (f"NOQUORUM {usable} usable Sentinels. Not enough available Sentinels to reach the "
           f"majority ({view.quorum}) and authorize a failover")
    raise CommandError("NO_QUORUM", msg, definite=True, resp_message=msg)


def myid(view: ClusterView) -> str:
    return run_id(view.node_id)


def role_reply(view: ClusterView) -> list:
    """ROLE, as Redis answers it.

    primary:   ["master", offset, [[ip, port, offset], ...]]   (inner items bulk strings)
    otherwise: ["slave", master_ip, master_port, state, offset] with state "connected" while a
               primary is known, else "connect" (Redis's state while the link is down).
    offset is the Raft log: commit index on the primary, applied index on a secondary."""
    if view.role == "primary":
        reps = []
        for member in sorted(view.members):
            if member == view.node_id or not view.up(member):
                continue
            ip, port = _split(view.members[member])
            reps.append([ip, str(port), str(view.offset(member))])
        return ["master", view.commit_index, reps]
    ip, port = _split(view.members.get(view.last_primary)) if view.last_primary else ("", 0)
    state = "connected" if view.primary is not None else "connect"
    return ["slave", ip, port, state, view.last_applied]


def switch_master_message(service: str, old: str | None, new: str) -> str:
    """The +switch-master payload: "<name> <old-ip> <old-port> <new-ip> <new-port>"."""
    n_ip, n_port = _split(new)
    o_ip, o_port = _split(old) if old else (n_ip, n_port)
    return f"{service} {o_ip} {o_port} {n_ip} {n_port}"


# --------------------------------------------------------------------------------------------
class EventHub:
    """Subscribers to Sentinel's event channels on one node, and the watcher that feeds them.

    What callers use: subscribe(sub, channels, pattern) / unsubscribe(...) for a connection's
    Subscriber; observe(primary_id, primary_addr) whenever the node learns who leads; start()/stop().
    The watcher thread polls `primary_of()` (a cheap callable returning (id, "host:port") or
    (None, None)) every `interval` seconds and publishes "+switch-master" when the primary changes
    to a new, known one.  It also keeps last_primary / changed_at for the SENTINEL answers.

    Invariants: a message reaches each matching subscriber once, in the order primaries were
    observed; a subscriber whose send fails is dropped (its connection is closing).  The hub's
    lock guards the subscriber table only; send() runs outside it.
    """

    def __init__(self, service: str, primary_of: Callable[[], tuple[str | None, str | None]],
                 interval: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 on_tick: Callable[[], None] | None = None):
        self.service = service
        self._primary_of = primary_of
        self._on_tick = on_tick
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._observe_lock = threading.Lock()
        self._subs: dict = {}                  # Subscriber -> None (ordered set)
        self.last_primary: str | None = None   # node id
        self.last_primary_addr: str | None = None
        self.current: str | None = None        # primary known at the last observation
        self.changed_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sentinel-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            pid, addr = self._primary_of()
            self.observe(pid, addr)
            if self._on_tick is not None:
                self._on_tick()

    # -- state
    def since_ms(self) -> int:
        return int((self._clock() - self.changed_at) * 1000)

    def observe(self, primary: str | None, addr: str | None) -> None:
        """Record who leads now; publish +switch-master when a new primary appeared.
        Called by the watcher thread and by SENTINEL queries: serialised by _observe_lock."""
        with self._observe_lock:
            self._observe(primary, addr)

    def _observe(self, primary: str | None, addr: str | None) -> None:
        if primary == self.current:
            return
        self.current = primary
        self.changed_at = self._clock()
        if primary is None:
            return
        old_addr = self.last_primary_addr
        new_primary = primary != self.last_primary
        self.last_primary, self.last_primary_addr = primary, addr
        if new_primary and addr:
            self.publish(SWITCH_MASTER, switch_master_message(self.service, old_addr, addr))

    # -- pub/sub
    def subscribe(self, sub: "Subscriber", channels: tuple, pattern: bool) -> list[int]:
        """Add channels to sub; returns the subscription count after each (for the replies)."""
        counts = []
        with self._lock:
            self._subs[sub] = None
            for ch in channels:
                (sub.patterns if pattern else sub.channels).add(ch)
                counts.append(len(sub.channels) + len(sub.patterns))
        return counts

    def unsubscribe(self, sub: "Subscriber", channels: tuple, pattern: bool) -> list[tuple[str | None, int]]:
        """Remove channels (all of that kind when empty); returns (channel, count after) pairs."""
        out = []
        with self._lock:
            table = sub.patterns if pattern else sub.channels
            names = list(channels) if channels else sorted(table)
            for ch in names:
                table.discard(ch)
                out.append((ch, len(sub.channels) + len(sub.patterns)))
            if not names:
                out.append((None, len(sub.channels) + len(sub.patterns)))
            if not sub.channels and not sub.patterns:
                self._subs.pop(sub, None)
        return out

    def drop(self, sub: "Subscriber") -> None:
        with self._lock:
            self._subs.pop(sub, None)

    def subscriber_count(self) -> tuple[int, int, int]:
        """(channels, patterns, subscribed connections) (INFO pubsub_channels, pubsub_patterns,
        pubsub_clients)."""
        with self._lock:
            subs = list(self._subs)
        chans: set = set()
        pats: set = set()
        for s in subs:
            chans |= s.channels
            pats |= s.patterns
        return len(chans), len(pats), len(subs)

    def publish(self, channel: str, message: str) -> int:
        """Send to every subscriber of channel (exactly, or by pattern); returns receivers."""
        with self._lock:
            subs = list(self._subs)
        n = 0
        for s in subs:
            matched = [p for p in s.patterns if P.glob_match(p, channel)]
            if channel in s.channels:
                matched.insert(0, None)
            for pat in matched:
                try:
                    s.deliver(channel, message, pat)
                    n += 1
                except OSError as e:
                    log.debug("dropping a subscriber whose connection failed: %s", e)
                    self.drop(s)
                    break
        return n


class Subscriber:
    """One connection's subscriptions.  deliver() encodes a message and sends it under the
    connection's send lock (the connection's own replies take the same lock)."""

    __slots__ = ("channels", "patterns", "send", "proto", "__weakref__")

    def __init__(self, send: Callable[[bytes], None], proto: int = 2):
        self.channels: set = set()
        self.patterns: set = set()
        self.send = send
        self.proto = proto

    def deliver(self, channel: str, message: str, pattern: str | None) -> None:
        if pattern is None:
            self.send(push_reply(["message", channel, message], self.proto))
        else:
            self.send(push_reply(["pmessage", pattern, channel, message], self.proto))


def push_reply(items: list, proto: int) -> bytes:
    """A pub/sub reply: a RESP3 push (">") for a RESP3 connection, else a RESP2 array."""
    body = P.resp_array(items, proto)
    return b">" + body[1:] if proto == 3 else body


# --------------------------------------------------------------------------------------------
class SentinelService:
    """One node's Sentinel face: answers SENTINEL and ROLE from the node's STATUS, owns the
    +switch-master hub and its watcher thread (which also runs the node's other periodic ticks,
    e.g. ServerStats.sample for instantaneous_ops_per_sec).

    status: () -> the node's STATUS dict.  primary_of: () -> (leader id, "host:port") or
    (None, None), cheap (polled every `interval`).  confirmed: () -> whether the primary this
    node knows is confirmed alive right now (a primary holding its lease; a secondary that heard
    from it within one election timeout); an unconfirmed primary is reported down, as a
    Sentinel reports a master that stopped answering, so clients do not connect to a primary
    that is about to step down or is gone.
    """

    def __init__(self, service: str, status: Callable[[], dict],
                 primary_of: Callable[[], tuple[str | None, str | None]], interval: float = 0.1,
                 confirmed: Callable[[], bool] = lambda: True):
        self.service = service
        self._status = status
        self._confirmed = confirmed
        self._ticks: list[Callable[[], None]] = []
        self.hub = EventHub(service, primary_of, interval=interval, on_tick=self._tick)

    def add_tick(self, fn: Callable[[], None]) -> None:
        self._ticks.append(fn)

    def _tick(self) -> None:
        for fn in self._ticks:
            fn()

    def start(self) -> None:
        self.hub.start()

    def stop(self) -> None:
        self.hub.stop()

    def view(self, status: dict | None = None) -> ClusterView:
        st = status if status is not None else self._status()
        hub = self.hub
        hub.observe(st.get("primary"), st.get("primary_addr"))
        view = ClusterView.from_status(st, self.service, hub.last_primary, hub.since_ms())
        if view.primary is not None and not self._confirmed():
            view.primary = None          # reported down; last_primary still names it
        return view

    def sentinel(self, cmd: "P.Sentinel"):
        """SENTINEL <sub>: a reply value, or raises CommandError."""
        sub = cmd.sub
        view = self.view()
        if sub == "MASTERS":
            return masters(view)
        if sub == "MASTER":
            return master(view, cmd.name)
        if sub == "GET-MASTER-ADDR-BY-NAME":
            return get_master_addr(view, cmd.name)
        if sub == "REPLICAS":
            return replicas(view, cmd.name)
        if sub == "SENTINELS":
            return sentinels(view, cmd.name)
        if sub == "CKQUORUM":
            return P.Simple(ckquorum(view, cmd.name))
        if sub == "MYID":
            return myid(view)
        if sub == "FAILOVER":
            _check_name(view, cmd.name)
            raise CommandError("BAD_REQUEST", "KV Store elects its primary by Raft: use TRANSFER on "
                               "the primary (or cluster_manager.py --action failover) for a planned failover")
        raise CommandError("BAD_REQUEST", f"SENTINEL {sub} is not supported: KV Store's membership "
                           "and failover are Raft's, not configured through Sentinel")

    def role(self):
        return role_reply(self.view())

    def role_json(self) -> dict:
        """ROLE for the line protocol: {"role": "master"|"slave", ...}."""
        v = self.view()
        d = {"role": "master" if v.role == "primary" else "slave"}
        if v.role == "primary":
            d["offset"] = v.commit_index
            d["replicas"] = [{"id": m, "addr": v.members[m], "offset": v.offset(m)}
                             for m in sorted(v.members) if m != v.node_id and v.up(m)]
        else:
            d["primary"] = v.primary
            d["primary_addr"] = v.members.get(v.last_primary) if v.primary else None
            d["state"] = "connected" if v.primary else "connect"
            d["offset"] = v.last_applied
        return d


class DemotionWatch:
    """Close Redis clients' connections when this node stops or starts being primary.

    When Sentinel reconfigures an instance (demotes a master, or promotes a replica with
    SLAVEOF NO ONE) it sends it CLIENT KILL TYPE normal, so that Sentinel-aware clients reconnect
    and ask the sentinels again; a client whose connection stays open keeps writing to the old
    master and getting -READONLY (redis-py's Retry then reconnects to the same address:
    redis/redis-py#3874), or keeps reading from a "replica" that is now the master.  A KV Store
    node changes role on its own (Raft), so it does the same: called every watcher tick, on the
    primary -> not primary edge it closes every RESP client connection that neither subscribed
    nor sent READONLY; on the not primary -> primary edge it closes the RESP connections that
    sent READONLY (replica clients: they go and find a secondary).  Line-protocol clients follow
    the NOT_PRIMARY hint instead and are left open.  A request in flight on a closed connection
    gets no answer: for the client that is a connection error, as for a crash of the primary.

    is_primary: () -> bool.  connections: () -> the open client connections' handlers, each
    with .session (resp, sub, readonly), .blocking and .kill().  A connection blocked in BLPOP
    & co. is left to kv_blocking, which answers it an UNBLOCKED error and then closes it.
    """

    def __init__(self, node_id: str, is_primary: Callable[[], bool], connections: Callable[[], list]):
        self.node_id = node_id
        self._is_primary = is_primary
        self._connections = connections
        self._was_primary = False

    def __call__(self) -> int:
        now = self._is_primary()
        was = self._was_primary
        self._was_primary = now
        if now == was:
            return 0
        n = 0
        for conn in self._connections():
            sess = conn.session
            if sess.resp and sess.sub is None and sess.readonly == now and not conn.blocking:
                conn.kill()   # a client blocked in BLPOP & co. gets its UNBLOCKED error first
                n += 1
        if now:
            log.info("%s became primary: closed %d READONLY (replica) Redis connection(s) so that "
                     "they find a secondary again", self.node_id, n)
        else:
            log.info("%s is no longer primary: closed %d Redis client connection(s) so that Sentinel "
                     "clients ask again for the primary", self.node_id, n)
        return n


# --------------------------------------------------------------------------------------------
# Commands (registered in kv_handler's dispatch table; kv_store_server imports this module).
# `c` is the connection (kv_handler.ConnectionHandler): c.node is the KVNode facade (its
# `sentinel` is this node's SentinelService), c.session the per-connection state.
# --------------------------------------------------------------------------------------------
@command(P.Sentinel)
def cmd_sentinel(c, cmd):
    value = c.node.sentinel.sentinel(cmd)
    return Reply(value, {"sentinel": value})


@command(P.Role)
def cmd_role(c, cmd):
    svc = c.node.sentinel
    return Reply(svc.role(), svc.role_json)


@command(P.ReadOnly)
def cmd_readonly(c, cmd):
    c.session.readonly = c.stats.readonly = True
    return Reply(P.Simple("OK"), {"message": "Reads on a secondary are allowed on this connection: "
                                             "they see its applied state, which may be stale"})


@command(P.ReadWrite)
def cmd_readwrite(c, cmd):
    c.session.readonly = c.stats.readonly = False
    return Reply(P.Simple("OK"), {"message": "Reads on this connection are linearizable again "
                                             "(primary only)"})


def _need_resp(c, name: str) -> None:
    if not c.session.resp:
        raise CommandError("UNKNOWN_COMMAND", f"{name} needs RESP (the line protocol has no pub/sub)")


@command(P.Subscribe)
def cmd_subscribe(c, cmd):
    _need_resp(c, "SUBSCRIBE")
    sess = c.session
    if sess.sub is None:
        sess.sub = Subscriber(c.send_locked, sess.proto)
    kind = "psubscribe" if cmd.pattern else "subscribe"
    counts = c.node.sentinel.hub.subscribe(sess.sub, cmd.channels, cmd.pattern)
    return Reply(P.RespRaw(b"".join(push_reply([kind, ch, n], sess.proto)
                                    for ch, n in zip(cmd.channels, counts))))


@command(P.Unsubscribe)
def cmd_unsubscribe(c, cmd):
    _need_resp(c, "UNSUBSCRIBE")
    sess = c.session
    kind = "punsubscribe" if cmd.pattern else "unsubscribe"
    if sess.sub is None:
        pairs = [(ch, 0) for ch in cmd.channels] or [(None, 0)]
    else:
        pairs = c.node.sentinel.hub.unsubscribe(sess.sub, cmd.channels, cmd.pattern)
        if not sess.sub.channels and not sess.sub.patterns:
            sess.sub = None
    return Reply(P.RespRaw(b"".join(push_reply([kind, ch, n], sess.proto) for ch, n in pairs)))
