#!/usr/bin/env python3
"""KV Store node: one member of a replicated key-value cluster.

    python kv_store_server.py --node-id node1 --port 6379 --primary
    python kv_store_server.py --standalone            # a cluster of one on 6379, data in ./data/standalone
    python kv_store_server.py --check-data DIR        # verify a data dir (read-only), exit 0 or 1

Layout (reading order):
    NodeRole, NodeInfo      the seed's public names: a node's role and address
    ReplicationLog          a log entry (index, term, op, key, value), defined in kv_storage
    KeyValueStore           (kv_state.py) the state machine: the dict, TTL deadlines, WATCH slots,
                            its incremental digest, apply(entry), snapshot/restore
    ClusterManager          (kv_cluster.py) the thread that drives the Raft core (kv_raft.RaftCore):
                            receive -> step -> handle_ready (persist, send, apply); proposals,
                            peer links, snapshots
    KVNode                  one node: recovery, then the facade the connection handlers use
    TCPServer               socketserver.ThreadingTCPServer; one handler thread per connection
    main()                  command line

Write path (no client answer comes before its last step):
    client SET -> KVNode.submit -> ClusterManager.propose (core.propose appends in memory and
    registers a waiter, under raft_lock) -> the manager thread sends REPLICATE (the entry's bytes
    encoded once, for the WAL and every follower) and appends + fsyncs its own copy (group
    commit: one fsync a batch) -> followers persist and answer -> a majority holds it durable ->
    commit -> apply to KeyValueStore -> the waiter is released -> answer the client.
Read path: a GET is served from the primary's store only while its lease holds (a majority
acknowledged it within 0.8 x the election timeout: no other primary can be elected before that
ends) and the store has applied everything up to the start of the primary's term.  The check
is lock-free: a few attribute reads.

Threads and locks
    main thread         serve_forever(): accepts connections
    handler threads     one per connection (kv_handler.ConnectionHandler), clients and peers:
                        client threads propose and wait; peer threads decode messages and put
                        them in the manager's inbox
    cluster-manager     the only thread that steps the core, persists, sends and applies
    peer-<id>           one per peer (kv_transport.PeerLink): connects and writes messages
    sync-<id>           streams a snapshot to a follower while one is needed
    snapshot-reaper     waits for a forked snapshot writer, then installs its file
    sentinel-events     kv_sentinel's watcher: every 100 ms notes the primary (publishes
                        +switch-master on a change), samples the command rate for INFO, and
                        on stepping down closes Redis clients' connections (DemotionWatch)
    wal-flusher         kv_storage's once-a-second fsync under --fsync everysec
  raft_lock (RLock)     the Raft core and the Proposals (waiters by index).  Held briefly: to
                        propose, to step/tick/ready, to note persisted indexes and status.
  store.lock            pairs (last_applied, digest, data) for apply/restore and consistent reads
                        of all three; single-key reads need no lock (one dict operation).
  storage locks         kv_storage.LogStorage's own (append, group-commit fsync).
  changed (Condition)   wakes threads waiting for a role, commit or snapshot change.
  clients_lock          the connection count behind --max-clients.
  stats / hub locks     kv_info.ServerStats (per connection, once: open/close) and kv_sentinel's
                        subscriber table; never held with any lock above.  Per-request counters
                        are plain ints on each connection's own object: no lock.
  Lock order: raft_lock, then store.lock, then the storage's locks.  No lock is held while
  waiting for a commit, for the network or for an fsync of the WAL.
  CPUs: only one thread runs Python at a time (the GIL).  While the node is primary every
  thread of the process is confined to one CPU (kv_cluster.CpuAffinity, --primary-cpu), so a
  hand-off of the GIL is a local switch, not a wake-up across CPUs.  The GIL switch interval
  is CPython's 5 ms (see main()).

Modules: kv_protocol (framing, parsing, replies and their encoders), kv_storage (WAL,
snapshots, term/vote), kv_raft (consensus rules), kv_cluster (ClusterManager), kv_transport
(peer links, snapshot streaming), kv_handler (commands and the connection handler),
kv_sentinel (Sentinel discovery, ROLE, follower reads, +switch-master), kv_info (INFO, stats).
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass

import kv_info
import kv_protocol as P
import kv_sentinel
from kv_blocking import Waiters
from kv_raft import CANDIDATE, LEADER, Membership, RaftCore
from kv_state import KeyValueStore
from kv_storage import LogStorage, ReplicationLog, StorageCorruption, check_data
from kv_cluster import ClusterManager, CpuAffinity, Waiter, gc_freeze
from kv_handler import NOT_NOW, ConnectionHandler
from kv_commands import Expirer   # also registers the data commands in kv_handler's table
from kv_transport import SparseLog
from kv_protocol import CommandError
from kv_cli import (CliParser, UsageError, at_least, check_host, check_node_id, even_size_warning, non_negative,
                    parse_addr, parse_peers, port_in_use, positive)
from kv_cli import fail as cli_fail, port_or_zero
from kv_datadir import IDENTITY_FILE, MIN_FREE_BYTES, DataDirError, DataDirLock, Identity, read_secret
from kv_datadir import prepare as prepare_data_dir

__all__ = ["NodeRole", "NodeInfo", "ReplicationLog", "KeyValueStore", "ClusterManager", "KVNode",
           "TCPServer", "main"]

log = logging.getLogger("kvstore")

DEFAULT_CLUSTER = {"node1": ("127.0.0.1", 6379), "node2": ("127.0.0.1", 6380), "node3": ("127.0.0.1", 6381)}


class NodeRole(enum.Enum):
    PRIMARY = "primary"        # Raft leader
    SECONDARY = "secondary"    # Raft follower
    CANDIDATE = "candidate"    # campaigning (PreVote or real election)


@dataclass
class NodeInfo:
    """A cluster member: its id and the address peers and clients reach it on."""
    node_id: str
    host: str
    port: int

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


# ---------------------------------------------------------------------------------------------
class KVNode:
    """One node: recovers its state, builds the ClusterManager, and is the facade connection
    handlers use.  Handlers never reach past it.

    Callers use:
      writes     submit(op, key, value, kind, on_done=None) -> waiter, wait(waiter),
                 outcome(waiter), abandon(waiter), write(...) (submit and wait)
      reads      get(key), exists(keys), keys(pattern), size(), read(fn): linearizable, served
                 only while the primary's lease holds (CommandError otherwise)
      expiry     clock_ms(), keys_with_ttl(), expired(keys, now_ms)
      stale      every read takes stale_ok=True for a connection that sent READONLY: on a
                 node that is not primary it then reads the applied state with no barrier
      node       role, status(), snapshot(), flush(), transfer(target), shutdown(),
                 not_primary(), member_addr(id), peer_ids, voter_ids, config (the parsed flags), port
      membership change_membership(action, node_id, addr), membership(), accepts_peer(id)
      ecosystem  stats (kv_info.ServerStats), sentinel (kv_sentinel.SentinelService), run_id,
                 replication_id, replication_timing(), primary_confirmed()
      peers      deliver(msg)
    Invariant: a write is answered OK only after its entry was applied at the index and term it
    was proposed with (so it is committed on a majority).
    """

    def __init__(self, args: argparse.Namespace, members: dict[str, NodeInfo], link_factory=None):
        self.config = args
        self.node_id = args.node_id
        self.info = members[self.node_id]
        self.port = self.info.port
        self.members = members      # the bootstrap membership (--peers, --cluster-file, default)
        self.raft_lock = threading.RLock()
        self.identity = getattr(args, "identity", None)      # kv_datadir.Identity (main() opens it)
        self.sparse_log = SparseLog(60.0)      # handshake refusals: once per peer per minute
        self.store = KeyValueStore()
        self.waiters = Waiters(self)     # this node's clients blocked in BLPOP & co.
        self.store.blocked.on_served = self.waiters.deliver
        self.started = time.time()
        self.clients = 0
        self.clients_lock = threading.Lock()
        self.stopping = threading.Event()
        self.server: TCPServer | None = None

        t0 = time.monotonic()
        for name in os.listdir(args.data_dir):
            if ".tmp-" in name or name.endswith(".recv"):   # left by a crash mid-snapshot
                os.unlink(os.path.join(args.data_dir, name))
        self.storage = LogStorage(args.data_dir, fsync=args.fsync, logger=lambda m: log.warning("%s %s", self.node_id, m))
        rec = self.storage.load()
        if rec.torn_tail:
            log.warning("%s recovery cut a torn record at the end of the log: %s", self.node_id, rec.torn_tail)
        snap_index = snap_term = 0
        # Raft §4.1: the configuration comes from disk (the snapshot's meta, then the CONFIG
        # entries of the log, applied by the core); the flags only bootstrap a fresh cluster,
        # and a node started with --join starts with none and waits to be added.
        if args.join:
            config = Membership()
        else:
            config = Membership({nid: m.addr for nid, m in members.items()})
        if rec.snapshot_meta is not None:
            meta, items = self.storage.read_snapshot()
            self.store.restore(items, meta.last_index, meta.digest)
            snap_index, snap_term = meta.last_index, meta.last_term
            if meta.config is not None:
                config = Membership.from_dict(meta.config)
        self.core = RaftCore(self.node_id, [], config=config, heartbeat_interval=args.heartbeat_interval,
                             election_timeout=args.election_timeout, now=time.monotonic(),
                             term=rec.term, voted_for=rec.voted_for, entries=rec.entries,
                             snapshot_index=snap_index, snapshot_term=snap_term,
                             start_election=args.primary or set(config.voters) == {self.node_id},
                             unsafe_no_read_lease=args.unsafe_no_read_lease)
        del rec
        gc_freeze()   # the recovered store is long-lived: keep it out of every collection
        log.info("%s recovered in %.2fs: term %d, snapshot at %d (%d keys), %d log entries after it",
                 self.node_id, time.monotonic() - t0, self.core.current_term, snap_index, len(self.store),
                 self.core.last_index - snap_index)
        cfg = self.core.config
        if cfg.members and cfg != config:
            log.info("%s configuration from disk: voters %s, learners %s", self.node_id,
                     ",".join(sorted(cfg.voters)), ",".join(sorted(cfg.learners)) or "-")
        peers = {}
        for pid in cfg.members - {self.node_id}:
            host, _, port = (cfg.addr(pid) or "").rpartition(":")
            if host and port.isdigit():
                peers[pid] = (host, int(port))
        self.manager = ClusterManager(self.node_id, self.core, self.storage, self.store, peers,
                                      raft_lock=self.raft_lock, secret=args.cluster_secret,
                                      snapshot_threshold=args.snapshot_threshold,
                                      request_timeout=args.request_timeout, on_fatal=lambda why: self.fatal(why),
                                      link_factory=link_factory, identity=self.identity,
                                      sparse_log=self.sparse_log,
                                      self_addr=f"{args.advertise or args.host}:{self.port}",
                                      affinity=CpuAffinity(args.primary_cpu))
        self.stats = kv_info.ServerStats()
        self.run_id = os.urandom(20).hex()              # INFO run_id: new every start, as Redis
        self.replication_id = kv_sentinel.run_id("replication:" + ",".join(sorted(members)))
        self.sentinel = kv_sentinel.SentinelService(getattr(args, "sentinel_name", kv_sentinel.DEFAULT_SERVICE_NAME),
                                                    self.status, self._primary_of,
                                                    confirmed=self.primary_confirmed)
        self.sentinel.add_tick(self.stats.sample)
        self.sentinel.add_tick(kv_sentinel.DemotionWatch(
            self.node_id, lambda: self.core.role == LEADER,
            lambda: [cs.owner for cs in self.stats.live() if cs.owner is not None]))
        self.expirer = Expirer(self)   # active expiry while primary (kv_commands)

    @property
    def cluster_id(self) -> str | None:
        return self.identity.cluster_id if self.identity is not None else None

    # -- lifecycle
    def start(self) -> None:
        self.manager.start()
        self.sentinel.start()
        self.expirer.start()
        if self.config.join and self.core.membership_state == "joining":
            threading.Thread(target=self._join, args=(self.config.join,), daemon=True, name="join").start()

    def _join(self, addr: str) -> None:
        """--join: ask the cluster (through addr, following NOT_PRIMARY hints) to add this node
        as a learner; it is promoted to voter once caught up.  Retries until the node is a
        member (transient refusals, no primary yet, a primary out of reach), at most 10 minutes."""
        me = f"{self.config.advertise or self.config.host}:{self.port}"
        target = addr
        deadline = time.monotonic() + 600
        last = None
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self.core.membership_state != "joining":
                return
            host, _, port = target.rpartition(":")
            lines = [f"CLUSTER ADD {self.node_id} {me}"]
            if self.config.requirepass:
                lines.insert(0, f"AUTH {self.config.requirepass}")
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.settimeout(self.config.request_timeout + 5)
                    s.sendall("".join(line + "\n" for line in lines).encode())
                    f = s.makefile("rb")
                    answers = [json.loads(f.readline() or b"{}") for _ in lines]
                r = answers[-1]
            except (OSError, ValueError) as e:
                r = {"code": "UNREACHABLE", "message": str(e)}
            code = r.get("code") or r.get("status")
            if r.get("status") == "OK" or (code == "BAD_REQUEST" and "already a" in r.get("message", "")):
                log.info("%s asked %s to join the cluster: %s", self.node_id, target,
                         r.get("message", "already a member"))
                return
            if code == "NOT_PRIMARY" and r.get("primary_addr"):
                target = r["primary_addr"]
                continue
            if code in ("BAD_REQUEST", "AUTH_FAILED", "AUTH_REQUIRED", "UNKNOWN_COMMAND"):
                log.error("%s cannot join the cluster through %s: %s", self.node_id, target, r.get("message"))
                return
            if code != last:
                log.info("%s waiting to join through %s: %s %s", self.node_id, target, code, r.get("message", ""))
                last = code
            target = addr if code == "UNREACHABLE" else target
            self.stopping.wait(0.5)

    def fatal(self, why: str) -> None:
        log.critical("%s fatal: %s", self.node_id, why)
        os._exit(3)

    def shutdown(self, transfer: bool = True) -> None:
        """Graceful stop: hand leadership to a caught-up secondary, flush, close."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if transfer and self.voter_ids:
            target = self.manager.transfer(None, timeout=2 * self.core.election_timeout)
            if target:
                log.info("%s handed leadership to %s before shutting down", self.node_id, target)
        self.sentinel.stop()
        self.expirer.stop()
        self.manager.stop()
        self.manager.join(timeout=5)
        try:
            self.storage.sync()
        finally:
            self.storage.close()
        log.info("%s shut down", self.node_id)
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()

    # -- the facade: node
    @property
    def role(self) -> str:
        r = self.core.role
        return "primary" if r == LEADER else "candidate" if r == CANDIDATE else "secondary"

    def _primary_of(self) -> tuple[str | None, str | None]:
        """(primary id, "host:port") or (None, None): lock-free, polled by the sentinel watcher."""
        leader = self.core.leader_id
        addr = self.member_addr(leader) if leader is not None else None
        return (leader, addr) if addr is not None else (None, None)

    def primary_confirmed(self) -> bool:
        """Lock-free: this node leads and holds its lease, or heard from its primary within one
        election timeout (Sentinel discovery reports an unconfirmed primary as down)."""
        core = self.core
        now = time.monotonic()
        if core.role == LEADER:
            return core.read_ok(now)
        return core.leader_id is not None and now - core.last_leader_contact < core.election_timeout

    def replication_timing(self) -> dict:
        """Seconds since the primary last heard from each peer (on the primary), or since this
        node last heard from its primary (elsewhere); None when never in this term."""
        now = time.monotonic()
        with self.raft_lock:
            core = self.core
            if core.role == LEADER:
                return {"peer_heard_ago": {pid: (now - pr.last_heard if pr.last_heard > float("-inf") else None)
                                           for pid, pr in core.progress.items()}}
            contact = core.last_leader_contact
            return {"last_leader_contact_ago": now - contact if core.leader_id is not None
                    and contact > float("-inf") else None}

    @property
    def peer_ids(self) -> frozenset:
        """The other members of the configuration in force (voters and learners)."""
        return frozenset(self.core.peers)

    @property
    def voter_ids(self) -> frozenset:
        """The other voters of the configuration in force (leadership can go to them)."""
        return self.core.voters - {self.node_id}

    def accepts_peer(self, sender: str) -> bool:
        return self.manager.accepts_peer(sender)

    def peer_hello(self, sender: str, addr: str | None) -> None:
        self.manager.peer_hello(sender, addr)

    def member_addr(self, node_id: str | None) -> str | None:
        addr = self.core.config.addr(node_id) if node_id else None
        if addr is None:
            m = self.members.get(node_id)
            addr = m.addr if m is not None else None
        return addr

    # -- the facade: membership
    def change_membership(self, action: str, node_id: str, addr: str | None = None):
        """Propose a membership change on the primary and wait for its commit (CommandError
        otherwise, definite or not as for writes)."""
        m = self.manager
        return m.wait(m.propose_config(action, node_id, addr))

    def membership(self) -> dict:
        """The configuration in force on this node, with each member's progress if primary."""
        st = self.manager.status_fields()
        return {"voters": st["voters"], "learners": st["learners"], "config_index": st["config_index"],
                "config_committed": st["config_committed"],
                "progress": {pid: {"match_index": p["match_index"], "lag": p["lag"], "reachable": p["reachable"]}
                             for pid, p in st["peers"].items() if p["member"] != "removed"}}

    def not_primary(self, message: str = "This node is not primary") -> CommandError:
        return self.manager.not_primary(message)

    def transfer(self, target: str | None) -> str | None:
        """Planned leadership transfer; the new primary's id, or None if it did not happen."""
        return self.manager.transfer(target, timeout=3 * self.core.election_timeout)

    def snapshot(self) -> int:
        """Take a snapshot now and wait for it; returns its index."""
        return self.manager.take_snapshot(wait=True)

    def flush(self) -> None:
        self.storage.sync(force=True)

    def deliver(self, msg: dict) -> None:
        self.manager.deliver(msg)

    # -- the facade: writes
    def submit(self, op: str, key, value, kind: str, on_done=None) -> Waiter:
        """Propose one write without waiting: collect it with wait(), or give on_done (see
        ClusterManager.propose) to have the committing thread answer it."""
        return self.manager.propose(op, key, value, kind, on_done)

    def wait(self, w: Waiter):
        """The apply result of a submitted write, or CommandError."""
        return self.manager.wait(w)

    def outcome(self, w: Waiter):
        """The result of a resolved write, or its error as CommandError."""
        return self.manager.outcome(w)

    def abandon(self, w: Waiter) -> bool:
        """Stop tracking an unresolved write (True), or False if it is being resolved."""
        return self.manager.proposals.abandon(w)

    def write(self, op: str, key, value, kind: str):
        """Replicate one write; returns the apply result or raises CommandError."""
        m = self.manager
        return m.wait(m.propose(op, key, value, kind))

    # -- the facade: linearizable reads
    def _barrier(self, stale_ok: bool = False) -> None:
        if stale_ok and self.core.role != LEADER:
            return    # follower read (READONLY): this node's applied state, possibly stale
        if self.stopping.is_set():
            raise self.not_primary("This node is shutting down")
        self.manager.read_barrier()   # returns at once while the lease holds

    def get(self, key: str, stale_ok: bool = False):
        """(kind, value), or None when the key is missing or past its deadline."""
        item = self.lease_get(key)
        if item is NOT_NOW:
            self._barrier(stale_ok)
            item = self.store.get(key)
        return item

    def lease_get(self, key: str):
        """get() when it needs no wait: the item or None, or NOT_NOW when a read now would have
        to wait for (or be refused by) the read barrier; the caller then uses get()."""
        if self.stopping.is_set() or not self.manager.read_ok():
            return NOT_NOW
        return self.store.get(key)

    def exists(self, keys, stale_ok: bool = False) -> int:
        self._barrier(stale_ok)
        return self.store.read("EXISTS", list(keys))

    def keys(self, pattern: str = "*", stale_ok: bool = False) -> list:
        self._barrier(stale_ok)
        return self.store.read("KEYS", [pattern])

    def size(self, stale_ok: bool = False) -> int:
        self._barrier(stale_ok)
        return self.store.read("DBSIZE", [])

    def read(self, fn, stale_ok: bool = False):
        """fn(store) under a linearizable read barrier (for reads the methods above lack)."""
        self._barrier(stale_ok)
        return fn(self.store)

    # -- the facade: time and expiry (kv_commands)
    def clock_ms(self) -> int:
        """The time (unix ms) this node turns relative TTLs into deadlines with and hides
        expired keys by: its wall clock, never behind the replicated clock."""
        return self.store.read_now()

    def keys_with_ttl(self) -> list:
        """A copy of the keys that have a deadline (the expire cycle walks it)."""
        return list(self.store.expires)

    def expired(self, keys, now_ms: int) -> list:
        """Those of keys whose deadline is at or before now_ms."""
        exp = self.store.expires
        return [k for k in keys if (d := exp.get(k)) is not None and d <= now_ms]

    def status(self) -> dict:
        d = self.manager.status_fields()
        with self.store.lock:
            applied, digest, nkeys = self.store.last_applied, self.store.digest_hex(), len(self.store)
            nttl = self.store.expires_count()
        if d["primary"] == self.node_id:
            d["primary_addr"] = self.info.addr
        d.update(last_applied=applied, keys=nkeys, keys_with_ttl=nttl, digest=digest, pid=os.getpid(),
                 uptime=round(time.time() - self.started, 3), fsync=self.config.fsync,
                 address=self.info.addr, clients=self.clients, cluster_id=self.cluster_id,
                 data_dir=os.path.abspath(self.config.data_dir))
        return {"status": "OK", "node_id": self.node_id, "role": d.pop("role"), **d}


# ---------------------------------------------------------------------------------------------
class TCPServer(socketserver.ThreadingTCPServer):
    """The node's listening socket: one daemon thread per connection (clients and peers alike).
    Connections past --max-clients get one error line and are closed, never left hanging.
    Request errors never take the server down: they are answered or logged via handle_error."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    block_on_close = False

    def __init__(self, node: KVNode):
        self.node = node
        super().__init__((node.config.host, node.port), ConnectionHandler)

    def process_request(self, request, client_address):
        node = self.node
        with node.clients_lock:
            if node.clients >= node.config.max_clients:
                over = True
            else:
                node.clients += 1
                over = False
        if over:
            node.stats.rejected()
            threading.Thread(target=self._refuse, args=(request,), daemon=True, name="refuse").start()
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.node.clients_lock:
                self.node.clients -= 1

    @staticmethod
    def _refuse(request) -> None:
        """Tell a connection over --max-clients why it is closed, in its own protocol: wait
        briefly for its first byte (off the accept loop) to tell RESP from the line protocol."""
        try:
            request.settimeout(0.5)
            try:
                first = request.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                first = b""
            if first == b"*":
                request.sendall(b"-ERR max number of clients reached\r\n")
            else:
                request.sendall(P.encode_line({"status": "ERROR", "code": P.TOO_MANY_CLIENTS,
                                               "message": "max number of clients reached", "definite": True}))
        except OSError:
            pass   # the client is gone already; nothing to tell it
        finally:
            request.close()

    def handle_error(self, request, client_address):
        log.exception("%s error while serving %s", self.node.node_id, client_address)


# ---------------------------------------------------------------------------------------------
def parse_members(args: argparse.Namespace) -> dict[str, NodeInfo]:
    """The membership the flags describe; raises UsageError (exit 2) for any bad value."""
    check_node_id(args.node_id, "--node-id")
    if args.join is not None:
        if args.peers is not None or args.cluster_file or args.standalone:
            raise UsageError("--join asks an existing cluster; it excludes --peers, --cluster-file and --standalone")
        parse_addr(args.join, "--join")
        if args.advertise is not None:
            check_host(args.advertise, "--advertise")
        return {args.node_id: NodeInfo(args.node_id, args.host, 6379 if args.port is None else args.port)}
    if args.standalone:
        if args.peers is not None or args.cluster_file:
            raise UsageError("--standalone runs a cluster of one: it takes neither --peers nor --cluster-file")
        return {args.node_id: NodeInfo(args.node_id, args.host, 6379 if args.port is None else args.port)}
    if args.peers is not None and args.cluster_file:
        raise UsageError("give the membership once: --peers or --cluster-file, not both")
    members: dict[str, NodeInfo] = {}
    if args.cluster_file:
        try:
            with open(args.cluster_file) as f:
                spec = json.load(f)
        except OSError as e:
            raise UsageError(f"cannot read --cluster-file {args.cluster_file}: {e.strerror}") from None
        except ValueError as e:
            raise UsageError(f"--cluster-file {args.cluster_file} is not JSON: {e}") from None
        nodes = spec.get("nodes", spec) if isinstance(spec, dict) else None
        if not isinstance(nodes, dict) or not nodes:
            raise UsageError(f'--cluster-file {args.cluster_file} must hold {{"nodes": {{"node1": "host:port", ...}}}}')
        for nid, addr in nodes.items():
            check_node_id(nid, f"{args.cluster_file}: node id")
            if not isinstance(addr, str):
                raise UsageError(f"{args.cluster_file}: address of {nid} must be a \"host:port\" string")
            members[nid] = NodeInfo(nid, *parse_addr(addr, f"{args.cluster_file}: {nid}"))
        if args.node_id not in members:
            raise UsageError(f"{args.node_id} is not in {args.cluster_file} (members: {', '.join(members)})")
        if args.port:
            members[args.node_id].port = args.port
        _check_distinct(members)
        return members
    if args.peers is not None:
        for nid, (host, port) in parse_peers(args.peers, args.node_id).items():
            members[nid] = NodeInfo(nid, host, port)
        members[args.node_id] = NodeInfo(args.node_id, args.host, args.port or 6379)
        _check_distinct(members)
        return members
    if args.node_id not in DEFAULT_CLUSTER:
        raise UsageError(f"{args.node_id} is not in the default cluster (node1..node3); "
                         "use --peers, --cluster-file or --standalone")
    for nid, (host, port) in DEFAULT_CLUSTER.items():
        members[nid] = NodeInfo(nid, host, port)
    members[args.node_id] = NodeInfo(args.node_id, args.host, args.port or DEFAULT_CLUSTER[args.node_id][1])
    _check_distinct(members)
    return members


def _check_distinct(members: dict[str, NodeInfo]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for nid, info in members.items():
        key = (_canonical_host(info.host), info.port)
        if key in seen:
            raise UsageError(f"{seen[key]} and {nid} would both use {info.host}:{info.port}")
        seen[key] = nid


def _canonical_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "0.0.0.0", "") else host


def _primary_cpu(v: str) -> str:
    if v in ("auto", "off") or v.isdigit():
        return v
    raise argparse.ArgumentTypeError(f"want auto, off or a CPU number, not {v!r}")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="kv_store_server.py", description="KV Store node (one member of a replicated cluster)",
                  epilog="Secrets: prefer --requirepass-file / --cluster-secret-file or the environment "
                         "variables KV_REQUIREPASS / KV_CLUSTER_SECRET: a secret on the command line shows in ps. "
                         "Exit codes: 0 stopped cleanly; 1 --check-data found damage; 2 bad usage or a refused "
                         "data dir / port; 3 fatal storage error while running; 4 corrupt data at start-up.")
    p.add_argument("--node-id", default="node1", help="this node's id (default node1)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port_or_zero, default=None,
                   help="port for clients and peers (default from the cluster, 6379 for node1; 0 = any free port, "
                        "standalone only)")
    p.add_argument("--primary", action="store_true", help="start the first election at once (never forces leadership)")
    p.add_argument("--standalone", action="store_true", help="a cluster of one that commits on its own (data dir default ./data/standalone)")
    p.add_argument("--peers", default=None, help="the other members: node2=host:port,node3=host:port")
    p.add_argument("--cluster-file", default=None, help='JSON {"nodes": {"node1": "host:port", ...}}')
    p.add_argument("--join", default=None, metavar="HOST:PORT",
                   help="start with an empty data dir and ask the cluster at HOST:PORT (any member) to add "
                        "this node (as a learner, promoted to voter once caught up)")
    p.add_argument("--advertise", default=None, metavar="HOST",
                   help="the host other members reach this node on, announced by --join (default --host)")
    p.add_argument("--cluster-id", default=None,
                   help="the cluster this node belongs to (cluster_manager passes it); a data dir of another "
                        "cluster is refused, and peers of another cluster are refused in the handshake")
    p.add_argument("--data-dir", default=None, help="where the node keeps its log and snapshots (default ./data/<node-id>, "
                                                    "./data/standalone with --standalone)")
    p.add_argument("--check-data", metavar="DIR", default=None,
                   help="verify the WAL and snapshot in DIR (read-only), report each problem with file and "
                        "offset, exit 0 (sound) or 1 (damaged); starts no node")
    p.add_argument("--min-free-mb", type=non_negative(float), default=MIN_FREE_BYTES / 2**20,
                   help="refuse to start when the data dir's file system has less free space (default 1)")
    p.add_argument("--fsync", choices=["always", "everysec", "no"], default="always", help="WAL fsync policy (default always)")
    p.add_argument("--heartbeat-interval", type=positive(float), default=0.05, help="seconds between heartbeats (default 0.05)")
    p.add_argument("--election-timeout", type=positive(float), default=0.8,
                   help="minimum election timeout in seconds, for silent failures (pause, partition); randomized in [T, 2T) (default 0.8). A crashed primary is noticed at once, whatever this is")
    p.add_argument("--request-timeout", type=positive(float), default=5.0, help="longest a write waits for commit (default 5)")
    p.add_argument("--primary-cpu", type=_primary_cpu, default="auto", metavar="auto|off|N",
                   help="as primary, keep every thread of this process on one CPU: the least busy one "
                        "(auto, the default), CPU N, or no pinning (off); other roles use every CPU")
    p.add_argument("--snapshot-threshold", type=non_negative(int), default=100_000, help="log entries between automatic snapshots (default 100000; 0 = never)")
    p.add_argument("--max-clients", type=at_least(1), default=10_000, help="simultaneous connections (default 10000)")
    p.add_argument("--max-request-bytes", type=at_least(1024), default=16 * 1024 * 1024, help="largest request (default 16 MiB)")
    p.add_argument("--requirepass", default=None, help="clients must AUTH with this secret first (shows in ps: prefer "
                                                       "--requirepass-file or KV_REQUIREPASS)")
    p.add_argument("--requirepass-file", default=None, help="read the client password from this file")
    p.add_argument("--cluster-secret", default=None, help="peers must prove this secret before any internal message "
                                                          "(shows in ps: prefer --cluster-secret-file or KV_CLUSTER_SECRET)")
    p.add_argument("--cluster-secret-file", default=None, help="read the cluster secret from this file")
    p.add_argument("--sentinel-name", default=kv_sentinel.DEFAULT_SERVICE_NAME,
                   help="master name this node answers Sentinel discovery for (default kvstore)")
    p.add_argument("--log-level", choices=["debug", "info", "warning"], default="info")
    p.add_argument("--unsafe-no-read-lease", action="store_true",
                   help="UNSAFE, for testing the fault harness only: a primary serves GETs without "
                        "a lease and without CheckQuorum, so a cut-off primary answers stale reads")
    return p


def setup_logging(level: str, data_dir: str) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    root = logging.getLogger("kvstore")
    root.setLevel(getattr(logging, level.upper()))
    root.handlers.clear()
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    fh = logging.FileHandler(os.path.join(data_dir, "node.log"))
    fh.setFormatter(fmt)
    root.addHandler(sh)
    root.addHandler(fh)
    root.propagate = False


def check_data_main(path: str) -> int:
    """--check-data DIR: verify without changing anything; exit 0 sound, 1 damaged, 2 no such dir."""
    if not os.path.isdir(path):
        return cli_fail("kv_store_server.py", f"--check-data {path}: no such directory")
    chk = check_data(path)
    for e in chk.problems:
        print(f"PROBLEM: {e}")
    for note in chk.notes:
        print(f"note: {note}")
    ident = Identity.read(path) if os.path.exists(os.path.join(path, IDENTITY_FILE)) else None
    who = f"{ident.mode}, cluster {ident.cluster_id}, node {ident.node_id}; " if ident else ""
    summary = (f"{path}: {who}term {chk.term if chk.term is not None else 0}, snapshot at {chk.snapshot_index}, "
               f"{chk.segments} WAL segment(s), log {chk.first_index or '-'}..{chk.last_index}")
    if chk.ok:
        print(f"OK {summary}")
        return 0
    print(f"DAMAGED ({len(chk.problems)} problem(s)) {summary}")
    print(RECOVERY_HINT.format(data_dir=path, node_id=ident.node_id if ident else "<node>"))
    return 1


RECOVERY_HINT = ("To recover a cluster member: move {data_dir} away (keep it for analysis), then restart the node "
                 "empty and let the primary copy everything back: "
                 "python cluster_manager.py --action restart --node {node_id} --wipe. "
                 "For a standalone node, restore it from a backup (see docs/CLUSTERING.md, Operating).")


def main(argv=None) -> int:
    prog = "kv_store_server.py"
    args = build_parser().parse_args(argv)
    if args.check_data is not None:
        return check_data_main(args.check_data)
    if args.election_timeout <= 2 * args.heartbeat_interval:
        return cli_fail(prog, f"--election-timeout ({args.election_timeout}) must be more than twice "
                              f"--heartbeat-interval ({args.heartbeat_interval})")
    if args.port == 0 and not args.standalone:
        return cli_fail(prog, "--port 0 (any free port) only works with --standalone: peers must know the port")
    if args.primary_cpu.isdigit() and hasattr(os, "sched_getaffinity") \
            and int(args.primary_cpu) not in os.sched_getaffinity(0):
        return cli_fail(prog, f"--primary-cpu {args.primary_cpu}: this process may only run on CPUs "
                              f"{','.join(map(str, sorted(os.sched_getaffinity(0))))}")
    try:
        check_host(args.host)
        members = parse_members(args)
        if args.cluster_id is not None:
            check_node_id(args.cluster_id, "--cluster-id")
        args.requirepass = read_secret("--requirepass", args.requirepass, args.requirepass_file, "KV_REQUIREPASS")
        args.cluster_secret = read_secret("--cluster-secret", args.cluster_secret, args.cluster_secret_file,
                                          "KV_CLUSTER_SECRET")
    except (UsageError, DataDirError) as e:
        return cli_fail(prog, str(e))
    for secret, what in ((args.requirepass, "password"), (args.cluster_secret, "cluster secret")):
        if secret is not None and any(c.isspace() for c in secret):
            return cli_fail(prog, f"the {what} contains white space; AUTH and the peer handshake cannot carry it")
    args.port = members[args.node_id].port
    standalone = args.standalone or (len(members) == 1 and args.join is None)   # --join: a member-to-be
    if args.data_dir is None:        # the default ./data/<node-id> (or ./data/standalone): make ./data
        args.data_dir = os.path.join("data", "standalone" if args.standalone else args.node_id)
        try:
            os.makedirs("data", exist_ok=True)
        except OSError as e:
            return cli_fail(prog, f"cannot create ./data for the default data dir: {e.strerror}; give --data-dir")
    why = port_in_use(args.host, args.port)
    if why:
        return cli_fail(prog, f"cannot listen: {why}; stop that process or choose another --port")
    try:
        args.data_dir = prepare_data_dir(args.data_dir, int(args.min_free_mb * 2**20))
        lock = DataDirLock(args.data_dir)
        lock.acquire()
        identity = Identity.open(args.data_dir, "standalone" if standalone else "cluster", args.node_id,
                                 cluster_id=args.cluster_id, bootstrap=args.primary)
    except DataDirError as e:
        return cli_fail(prog, str(e))
    args.identity = identity
    setup_logging(args.log_level, args.data_dir)
    if args.unsafe_no_read_lease:
        log.warning("%s UNSAFE: --unsafe-no-read-lease: reads are not linearizable (a planted bug "
                    "for the fault harness; never use it for data)", args.node_id)
    warn = even_size_warning(len(members))
    if warn:
        log.warning("%s %s", args.node_id, warn)
    threading.stack_size(512 * 1024)
    # A thread that wants the GIL waits up to the switch interval, then asks the holder to drop
    # it.  Every waiting thread wakes once per interval to do so, so with dozens of busy client
    # threads a short interval is a storm of futex wake-ups: 1 ms (tried for heartbeat latency)
    # cost 10-20% more CPU per request than CPython's 5 ms, for no gain in leader stability
    # (benchmarks/README.md, "GIL switch interval").  Heartbeats keep their margin because a
    # handler thread gives the GIL up at every socket call, long before an interval ends.
    sys.setswitchinterval(0.005)
    try:
        node = KVNode(args, members)
    except StorageCorruption as e:
        log.critical("%s refusing to start: %s. %s", args.node_id, e,
                     RECOVERY_HINT.format(data_dir=args.data_dir, node_id=args.node_id))
        return 4
    except OSError as e:     # a file in the dir this user cannot read or write, a full disk, ...
        log.critical("%s cannot use data dir %s: %s (%s)", args.node_id, args.data_dir, e.strerror,
                     e.filename or "")
        return 2
    try:
        server = TCPServer(node)
    except OSError as e:
        log.critical("%s cannot listen on %s:%s: %s", args.node_id, args.host, args.port, e)
        return 2
    node.server = server
    node.data_lock = lock

    def on_signal(signum, frame):
        log.info("%s received %s, shutting down", node.node_id, signal.Signals(signum).name)
        threading.Thread(target=node.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    if standalone:
        # a cluster of one elects itself at once: accept no client before it serves reads and
        # writes (the listening socket queues early connections; nothing is answered before this)
        deadline = time.monotonic() + 10 * args.election_timeout + 5
        while not node.manager.read_ok() and time.monotonic() < deadline:
            time.sleep(0.005)
    cfg = node.core.config
    mode = ("joining through " + args.join if node.core.membership_state == "joining"
            else "standalone" if not node.peer_ids else
            f"cluster of {len(cfg.voters)} voters" + (f" + {len(cfg.learners)} learners" if cfg.learners else ""))
    cid = f", cluster {identity.cluster_id}" if identity.cluster_id else ""
    log.info("%s listening on %s:%d (%s%s, fsync %s, data dir %s)", node.node_id, args.host, args.port,
             mode, cid, args.fsync, args.data_dir)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
