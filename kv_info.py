"""INFO as Redis tools read it, and the cheap counters behind it.

Layout:
    ConnStats       one connection's counters: plain int attributes its handler thread bumps
                    (no lock, no allocation per request)
    ServerStats     the node's registry of ConnStats; sums them at INFO time; folds a closed
                    connection's counts into node totals; instantaneous_ops_per_sec from samples
    info_text       facts (a dict) + requested sections -> the INFO reply text
    node_facts      the facts, from the KVNode facade
    cmd_info        the INFO command, registered in kv_handler's dispatch table
    SECTIONS, DEFAULT_SECTIONS, select_sections

INFO follows Redis 7: sections "# Server", "# Clients", "# Memory", "# Persistence", "# Stats",
"# Replication", "# CPU", "# Keyspace", plus KV Store's "# Raft" (after the Redis sections, as a
module's would be).  `INFO`, `INFO default`, `INFO all` and `INFO everything` return every
section; `INFO s1 s2 ...` returns those, in the canonical order; an unknown section name adds
nothing (an empty reply if nothing matched), as in Redis.  Every line ends in CRLF, sections are
separated by an empty line, which is what redis-cli's --stat field reader relies on.

Field meanings that differ from Redis (docs/CLUSTERING.md has the table):
    redis_version            the Redis version whose protocol and INFO fields we follow
    used_memory              the process's resident set size: Python has no cheap count of
                             allocated bytes, so used_memory == used_memory_rss
    master_repl_offset       the Raft commit index this node knows; slave_repl_offset and a
                             replica's offset= are Raft log indexes too (applied / matched)
    slaveN ... lag=          seconds since the primary last heard from that secondary (Redis's
                             meaning); lag_entries= is how many log entries it is behind
    slave_lag_entries        on a secondary: commit index known - applied index
    master_last_io_seconds_ago  on a secondary: seconds since the primary was last heard from
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from collections import deque

import kv_protocol as P
from kv_handler import command
from kv_protocol import Reply

__all__ = ["ConnStats", "ServerStats", "info_text", "SECTIONS", "DEFAULT_SECTIONS",
           "select_sections", "REDIS_COMPAT_VERSION", "human_bytes"]

REDIS_COMPAT_VERSION = "7.0.0"
SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu",
            "keyspace", "raft")
DEFAULT_SECTIONS = SECTIONS
_ALL_WORDS = frozenset({"", "all", "default", "everything"})
_SAMPLES = 16                 # instantaneous_ops_per_sec averages this many samples (as Redis)


class ConnStats:
    """Counters of one connection.  Only its handler thread writes them (plain `+= 1`);
    ServerStats reads them at INFO time, when a torn read can only be off by the op in flight."""

    __slots__ = ("commands", "hits", "misses", "errors", "readonly", "owner", "__weakref__")

    def __init__(self, owner=None):
        self.owner = owner      # the connection handler (kv_sentinel's demotion watch closes some)
        self.readonly = False   # the connection opted in to follower reads (INFO readonly_clients)
        self.commands = 0
        self.hits = 0
        self.misses = 0
        self.errors = 0


class ServerStats:
    """The node's statistics: live connections' ConnStats plus the folded totals of closed ones.

    Connection threads call opened() / closed(cs) once each, rejected() for a refused connection
    (those take a lock: once per connection, never per request).  totals() sums live and folded
    counts.  sample(now) (a background tick every ~100 ms) records total commands for
    instantaneous_ops_per_sec.
    """

    def __init__(self, clock=time.monotonic):
        self._lock = threading.Lock()
        self._live: set = set()
        self._folded = ConnStats()
        self.total_connections_received = 0
        self.rejected_connections = 0
        self._clock = clock
        self._samples: deque = deque(maxlen=_SAMPLES)
        self._last: tuple[float, int] | None = None

    def opened(self, owner=None) -> ConnStats:
        cs = ConnStats(owner)
        with self._lock:
            self._live.add(cs)
            self.total_connections_received += 1
        return cs

    def closed(self, cs: ConnStats) -> None:
        """Fold a connection's counts into the totals (idempotent)."""
        with self._lock:
            if cs in self._live:
                self._live.discard(cs)
                cs.owner = None
                f = self._folded
                f.commands += cs.commands
                f.hits += cs.hits
                f.misses += cs.misses
                f.errors += cs.errors

    def rejected(self) -> None:
        with self._lock:
            self.rejected_connections += 1

    @property
    def connected(self) -> int:
        return len(self._live)

    def live(self) -> list:
        """The ConnStats of the client connections open now."""
        with self._lock:
            return list(self._live)

    def readonly_count(self) -> int:
        with self._lock:
            live = list(self._live)
        return sum(1 for cs in live if cs.readonly)

    def totals(self) -> dict:
        with self._lock:
            live = list(self._live)
            f = self._folded
            commands, hits, misses, errors = f.commands, f.hits, f.misses, f.errors
            received, rejected = self.total_connections_received, self.rejected_connections
        for cs in live:
            commands += cs.commands
            hits += cs.hits
            misses += cs.misses
            errors += cs.errors
        return {"total_connections_received": received, "total_commands_processed": commands,
                "instantaneous_ops_per_sec": self.instantaneous_ops(), "rejected_connections": rejected,
                "keyspace_hits": hits, "keyspace_misses": misses, "total_error_replies": errors}

    def sample(self) -> None:
        """Record one sample of the command rate since the previous sample."""
        now = self._clock()
        total = self.totals_commands()
        if self._last is not None:
            dt = now - self._last[0]
            if dt > 0:
                self._samples.append((total - self._last[1]) / dt)
        self._last = (now, total)

    def totals_commands(self) -> int:
        with self._lock:
            live = list(self._live)
            n = self._folded.commands
        return n + sum(cs.commands for cs in live)

    def instantaneous_ops(self) -> int:
        s = list(self._samples)
        return int(round(sum(s) / len(s))) if s else 0


# ---------------------------------------------------------------------------------------------
def human_bytes(n: int) -> str:
    """Redis's bytesToHuman: 1023B, 1.50K, 12.00M, 1.00G."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n}B"


def select_sections(arg: str | None) -> list[str]:
    """INFO's argument (section names joined by spaces, any case) -> the sections to print."""
    words = (arg or "").lower().split()
    if not words or any(w in _ALL_WORDS for w in words):
        return list(DEFAULT_SECTIONS)
    want = set(words)
    return [s for s in SECTIONS if s in want]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _system_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def process_facts() -> dict:
    """Memory and CPU of this process, read now (a few syscalls: INFO time only)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rc = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss = _rss_bytes()
    return {"rss": rss, "peak": max(rss, ru.ru_maxrss * 1024), "system_memory": _system_memory(),
            "cpu_sys": ru.ru_stime, "cpu_user": ru.ru_utime,
            "cpu_sys_children": rc.ru_stime, "cpu_user_children": rc.ru_utime}


def _kv(lines: list, name: str, value) -> None:
    lines.append(f"{name}:{value}")


def info_text(f: dict, arg: str | None) -> str:
    """The INFO reply for facts `f` and the requested sections.

    f keys: status (the node's STATUS dict), stats (ServerStats.totals()), proc (process_facts()),
    run_id, port, maxclients, connected_clients, started (unix time), service, pubsub (channels,
    patterns, subscribed clients), replid, last_leader_contact_ago (float | None), peer_heard_ago ({id: float | None}),
    snapshot_in_progress (bool), expires (keys with a TTL; 0 when none).
    """
    st = f["status"]
    out: list[str] = []
    for name in select_sections(arg):
        lines = [f"# {_TITLES[name]}"]
        _BUILDERS[name](lines, f, st)
        out.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(out)


def _server(lines, f, st):
    up = max(0, int(time.time() - f["started"]))
    _kv(lines, "redis_version", REDIS_COMPAT_VERSION)
    _kv(lines, "kv_store_version", "1.0.0")
    _kv(lines, "redis_mode", "standalone")
    _kv(lines, "os", f"{platform.system()} {platform.release()} {platform.machine()}")
    _kv(lines, "arch_bits", 64 if sys.maxsize > 2 ** 32 else 32)
    _kv(lines, "multiplexing_api", "threads")
    _kv(lines, "python_version", platform.python_version())
    _kv(lines, "process_id", os.getpid())
    _kv(lines, "run_id", f["run_id"])
    _kv(lines, "tcp_port", f["port"])
    _kv(lines, "server_time_usec", int(time.time() * 1_000_000))
    _kv(lines, "uptime_in_seconds", up)
    _kv(lines, "uptime_in_days", up // 86400)
    _kv(lines, "hz", 10)
    _kv(lines, "configured_hz", 10)
    _kv(lines, "executable", os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "")
    _kv(lines, "config_file", "")
    _kv(lines, "node_id", st["node_id"])
    _kv(lines, "sentinel_service_name", f["service"])


def _clients(lines, f, st):
    _kv(lines, "connected_clients", f["connected_clients"])
    _kv(lines, "cluster_connections", f.get("peer_connections", 0))
    _kv(lines, "maxclients", f["maxclients"])
    _kv(lines, "blocked_clients", f.get("blocked_clients", 0))
    _kv(lines, "tracking_clients", 0)
    _kv(lines, "pubsub_clients", f["pubsub"][2])
    _kv(lines, "readonly_clients", f.get("readonly_clients", 0))


def _memory(lines, f, st):
    p = f["proc"]
    _kv(lines, "used_memory", p["rss"])
    _kv(lines, "used_memory_human", human_bytes(p["rss"]))
    _kv(lines, "used_memory_rss", p["rss"])
    _kv(lines, "used_memory_rss_human", human_bytes(p["rss"]))
    _kv(lines, "used_memory_peak", p["peak"])
    _kv(lines, "used_memory_peak_human", human_bytes(p["peak"]))
    _kv(lines, "total_system_memory", p["system_memory"])
    _kv(lines, "total_system_memory_human", human_bytes(p["system_memory"]))
    _kv(lines, "maxmemory", 0)
    _kv(lines, "maxmemory_human", "0B")
    _kv(lines, "maxmemory_policy", "noeviction")
    _kv(lines, "mem_allocator", "pymalloc")


def _persistence(lines, f, st):
    _kv(lines, "loading", 0)
    _kv(lines, "async_loading", 0)
    _kv(lines, "rdb_changes_since_last_save", max(0, st["last_log_index"] - st["snapshot_index"]))
    _kv(lines, "rdb_bgsave_in_progress", 1 if f.get("snapshot_in_progress") else 0)
    _kv(lines, "rdb_last_bgsave_status", "ok")
    _kv(lines, "aof_enabled", 1)
    _kv(lines, "aof_rewrite_in_progress", 0)
    _kv(lines, "aof_rewrite_scheduled", 0)
    _kv(lines, "aof_last_write_status", "ok")
    _kv(lines, "appendfsync", st["fsync"])
    _kv(lines, "snapshot_index", st["snapshot_index"])
    _kv(lines, "last_log_index", st["last_log_index"])


def _stats(lines, f, st):
    s = f["stats"]
    for name in ("total_connections_received", "total_commands_processed", "instantaneous_ops_per_sec",
                 "rejected_connections"):
        _kv(lines, name, s[name])
    _kv(lines, "expired_keys", f.get("expired_keys", 0))
    _kv(lines, "evicted_keys", 0)
    _kv(lines, "keyspace_hits", s["keyspace_hits"])
    _kv(lines, "keyspace_misses", s["keyspace_misses"])
    _kv(lines, "pubsub_channels", f["pubsub"][0])
    _kv(lines, "pubsub_patterns", f["pubsub"][1])
    _kv(lines, "total_error_replies", s["total_error_replies"])


def _ago(x: float | None) -> int:
    return -1 if x is None else int(x)


def _replication(lines, f, st):
    primary = st["role"] == "primary"
    _kv(lines, "role", "master" if primary else "slave")
    if primary:
        peers = list(st["peers"].items())
        _kv(lines, "connected_slaves", sum(1 for _, d in peers if d["reachable"]))
        heard = f.get("peer_heard_ago") or {}
        for i, (pid, d) in enumerate(peers):
            host, _, port = d["addr"].rpartition(":")
            state = "online" if d["reachable"] else "offline"
            lag_entries = d["lag"] if d["lag"] is not None else -1
            member = f",member={d['member']}" if d.get("member") else ""
            lines.append(f"slave{i}:ip={host},port={port},state={state},offset={d['match_index'] or 0},"
                         f"lag={_ago(heard.get(pid))},lag_entries={lag_entries},id={pid}{member}")
        _kv(lines, "master_failover_state", "no-failover")
    else:
        addr = st["primary_addr"] or ":"
        host, _, port = addr.rpartition(":")
        up = st["primary"] is not None
        _kv(lines, "master_host", host)
        _kv(lines, "master_port", port or 0)
        _kv(lines, "master_link_status", "up" if up else "down")
        _kv(lines, "master_last_io_seconds_ago", _ago(f.get("last_leader_contact_ago")))
        _kv(lines, "master_sync_in_progress", 0)
        _kv(lines, "master_node_id", st["primary"] or "")
        _kv(lines, "slave_read_repl_offset", st["last_applied"])
        _kv(lines, "slave_repl_offset", st["last_applied"])
        _kv(lines, "slave_lag_entries", max(0, st["commit_index"] - st["last_applied"]))
        _kv(lines, "slave_priority", 100)
        _kv(lines, "slave_read_only", 1)
        _kv(lines, "replica_announced", 1)
        _kv(lines, "connected_slaves", 0)
    _kv(lines, "master_replid", f["replid"])
    _kv(lines, "master_repl_offset", st["commit_index"])
    _kv(lines, "second_repl_offset", -1)
    if "voters" in st:   # the configuration in force (membership changes, docs/CLUSTERING.md)
        _kv(lines, "cluster_voters", ",".join(st["voters"]))
        _kv(lines, "cluster_learners", ",".join(st["learners"]))
        _kv(lines, "cluster_membership", st["membership"])


def _cpu(lines, f, st):
    p = f["proc"]
    _kv(lines, "used_cpu_sys", f"{p['cpu_sys']:.6f}")
    _kv(lines, "used_cpu_user", f"{p['cpu_user']:.6f}")
    _kv(lines, "used_cpu_sys_children", f"{p['cpu_sys_children']:.6f}")
    _kv(lines, "used_cpu_user_children", f"{p['cpu_user_children']:.6f}")


def _keyspace(lines, f, st):
    if st["keys"]:
        lines.append(f"db0:keys={st['keys']},expires={f.get('expires', 0)},avg_ttl=0")


_RAFT_ROLE = {"primary": "leader", "secondary": "follower", "candidate": "candidate"}


def _raft(lines, f, st):
    _kv(lines, "raft_node_id", st["node_id"])
    _kv(lines, "raft_role", _RAFT_ROLE.get(st["role"], st["role"]))
    _kv(lines, "raft_current_term", st["election_term"])
    _kv(lines, "raft_voted_for", st.get("voted_for") or "")
    _kv(lines, "raft_leader_id", st["primary"] or "")
    _kv(lines, "raft_num_nodes", len(st["voters"]) + len(st["learners"]) if "voters" in st else len(st["peers"]) + 1)
    _kv(lines, "raft_commit_index", st["commit_index"])
    _kv(lines, "raft_last_applied_index", st["last_applied"])
    _kv(lines, "raft_last_log_index", st["last_log_index"])
    _kv(lines, "raft_snapshot_last_idx", st["snapshot_index"])
    _kv(lines, "raft_digest", st["digest"])
    for i, (pid, d) in enumerate(st["peers"].items()):
        host, _, port = d["addr"].rpartition(":")
        match = d["match_index"] if d["match_index"] is not None else -1
        lines.append(f"raft_node{i}:id={pid},addr={host},port={port},reachable={int(bool(d['reachable']))},"
                     f"match_index={match}")


_TITLES = {"server": "Server", "clients": "Clients", "memory": "Memory", "persistence": "Persistence",
           "stats": "Stats", "replication": "Replication", "cpu": "CPU", "keyspace": "Keyspace",
           "raft": "Raft"}
_BUILDERS = {"server": _server, "clients": _clients, "memory": _memory, "persistence": _persistence,
             "stats": _stats, "replication": _replication, "cpu": _cpu, "keyspace": _keyspace,
             "raft": _raft}


# ---------------------------------------------------------------------------------------------
def node_facts(node) -> dict:
    """The facts info_text() needs, from the KVNode facade (status, stats, timing, config)."""
    st = node.status()
    svc = node.sentinel
    timing = node.replication_timing()
    return {"status": st, "stats": node.stats.totals(), "proc": process_facts(), "run_id": node.run_id,
            "port": node.port, "maxclients": node.config.max_clients,
            "connected_clients": node.stats.connected, "blocked_clients": node.waiters.blocked_count(), "peer_connections": max(0, st["clients"] - node.stats.connected),
            "readonly_clients": node.stats.readonly_count(), "started": node.started,
            "service": svc.service, "pubsub": svc.hub.subscriber_count(),
            "replid": node.replication_id, "snapshot_in_progress": st.get("snapshot_in_progress", False),
            "expires": st.get("keys_with_ttl", 0), **timing}


@command(P.Info)
def cmd_info(c, cmd):
    text = info_text(node_facts(c.node), cmd.section)
    return Reply(text.encode(), {"info": text})
