#!/usr/bin/env python3
"""cluster_manager.py: start, watch, drill and stop a local KV Store cluster.

    python cluster_manager.py --action start               # foreground: live table, Ctrl-C stops all
    python cluster_manager.py --action start --detach      # background; other terminals use the rest
    python cluster_manager.py --action status | health | stop
    python cluster_manager.py --action kill --node node1   # SIGKILL, for failover drills
    python cluster_manager.py --action restart [--node node2]
    python cluster_manager.py --action failover [--node node3]
    python cluster_manager.py --action add-node [--node node4]      # a new node joins, waits until voter
    python cluster_manager.py --action remove-node --node node2     # CLUSTER REMOVE, then stops it
    python cluster_manager.py --action replace --node node2         # a dead node -> a fresh one, new id
    python cluster_manager.py --action start --nodes 5              # clusters of 1, 3 or 5
    python cluster_manager.py --action restart --node node2 --wipe   # start it empty; the primary refills it
    python cluster_manager.py --action backup --to DIR      # consistent snapshot from the primary
    python cluster_manager.py --action restore --from DIR --data-dir NEW   # seed and start a new cluster

The launcher itself (LocalCluster, NodeProcess, FaultProxy, the STATUS one-shot probe(), free-port
helpers and the errors it raises) lives in kv_localcluster.py; every public name of it is
re-exported here, so `from cluster_manager import LocalCluster` keeps working.

Layout (reading order):
    imports           the launcher's names from kv_localcluster (re-exported, see __all__)
    errors            DataDirConflict, AlreadyRunning: the CLI's own kinds of ClusterError
    health_verdict()  one STATUS round -> (healthy?, one-line reason)
    table rendering   rows of the status table, colours, psutil figures
    state files       <data-dir>/cluster.json (which cluster owns the dir), cluster_state.json
                      (the running cluster: pids, ports, args, manager), manager.lock, manager.sock
    Supervisor        the manager process: sole parent of the node processes; watches, reports,
                      restarts on failure, serves other terminals over a Unix socket
    action_*()        start / status / health / stop / kill / restart / failover /
                      add-node / remove-node / replace (membership changes, Raft §4.1) / backup / restore
    main()            command line

Process model: every node process is the child of exactly one manager (the foreground `start`, or
the background supervisor that `start --detach` leaves behind), in its own session so a terminal's
Ctrl-C reaches only the manager, which then stops the nodes in order (secondaries first).  Other
terminals ask that manager over <data-dir>/manager.sock; when no manager is alive they act by PID
from the state file, after checking that the PID still is that node's process (command line and
start time).  Nothing is ever signalled by name.

Which cluster: every action but start/restore works only on the cluster recorded in
<data-dir>/cluster_state.json (PIDs checked against start time and the node's data dir in its
command line; STATUS answers against the cluster id); with no record it does nothing and exits 1
("no cluster at DIR").  Secrets live in <data-dir>/*.secret (0600) and reach nodes by environment.

Exit codes: 0 success (healthy, for --action health); 1 the action failed, the cluster is
unhealthy, or there is no cluster at DIR; 2 bad usage or a refusal (port taken, data dir of
another cluster, already running).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

try:
    import psutil
except ImportError:   # resource columns and PID identity checks degrade, nothing else does
    psutil = None
try:
    import colorama
except ImportError:   # plain output
    colorama = None

from kv_cli import CliParser, UsageError, at_least, check_host, check_node_id, even_size_warning, non_negative, positive
from kv_cli import port as cli_port
from kv_datadir import DataDirError, DataDirLock, Identity, read_secret
from kv_datadir import prepare as prepare_data_dir
from kv_storage import (SnapshotMeta, StorageCorruption, read_snapshot_file, verify_snapshot_file,
                        write_snapshot_file)
from kv_localcluster import (CONSOLE_LOG, SERVER_SCRIPT, ClusterError, FaultProxy, LocalCluster, NodeFailed,
                             NodeProcess, PortInUse, SplitBrain, WaitTimeout, _create_time, _process_matches,
                             call, fmt_exit, pick_free_ports, port_in_use, probe, tail)

__all__ = ["LocalCluster", "FaultProxy", "NodeProcess", "ClusterError", "PortInUse", "DataDirConflict",
           "AlreadyRunning", "NodeFailed", "WaitTimeout", "SplitBrain", "call", "probe", "health_verdict",
           "main",
           # re-exported from kv_localcluster as well
           "pick_free_ports", "port_in_use", "tail", "fmt_exit", "SERVER_SCRIPT", "CONSOLE_LOG"]

MARKER_FILE = "cluster.json"
STATE_FILE = "cluster_state.json"
LOCK_FILE = "manager.lock"
CONTROL_SOCKET = "manager.sock"
MANAGER_LOG = "manager.log"


# ------------------------------------------------------------------------------------------ errors
class DataDirConflict(ClusterError):
    """The data dir belongs to a cluster with another membership."""


class AlreadyRunning(ClusterError):
    """A cluster (or leftover nodes of one) already runs from this data dir."""


class NoCluster(ClusterError):
    """The data dir records no cluster (never started here, or stopped): nothing to act on."""


SECRET_FILES = {"requirepass": "requirepass.secret", "cluster_secret": "cluster_secret.secret"}


def write_secret_files(data_dir: str, opts) -> None:
    """Keep the cluster's secrets in <data-dir>/*.secret (mode 0600), so nodes (--*-file) and
    second-terminal actions get them without a secret in any argv, state file or log; a
    secret not set is removed."""
    for attr, name in SECRET_FILES.items():
        path = os.path.join(data_dir, name)
        value = getattr(opts, attr)
        if value is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        os.replace(path + ".tmp", path)


def read_secret_file(data_dir: str, attr: str) -> str | None:
    try:
        with open(os.path.join(data_dir, SECRET_FILES[attr])) as f:
            return f.read().rstrip("\n") or None
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------- health verdict
def health_verdict(sts: dict[str, dict | None], errors: dict[str, str] | None = None,
                   max_lag: int = 0) -> tuple[bool, str]:
    """Judge one STATUS round: healthy only with every node up, exactly one primary that every
    node follows, and every node within max_lag entries of the primary's commit index with the
    same digest where the applied index is the same.  Returns (healthy, one-line reason)."""
    errors = errors or {}
    prims = sorted(((s["election_term"], nid) for nid, s in sts.items() if s and s.get("role") == "primary"),
                   reverse=True)
    terms = {}
    for t, nid in prims:
        terms.setdefault(t, []).append(nid)
    for t, nids in terms.items():
        if len(nids) > 1:
            return False, f"SPLIT BRAIN: {' and '.join(nids)} are all primary in term {t}"
    down = [nid for nid, s in sts.items() if s is None]
    if down:
        why = "; ".join(f"{nid}: {errors.get(nid, 'no answer')}" for nid in down)
        extra = f" (primary is {prims[0][1]}, term {prims[0][0]})" if prims else " (and no primary)"
        return False, f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down{extra}: {why}"
    if not prims:
        roles = ", ".join(f"{nid} {s['role']} term {s['election_term']}" for nid, s in sts.items())
        return False, f"no primary ({roles})"
    if len(prims) > 1:
        return False, (f"{len(prims)} nodes claim primary: " +
                       ", ".join(f"{nid} (term {t})" for t, nid in prims) + "; the older one should step down")
    term, p = prims[0]
    pst = sts[p]
    for nid, s in sts.items():
        if nid != p and (s.get("primary") != p or s.get("election_term") != term):
            return False, (f"{nid} follows {s.get('primary') or 'no primary'} in term {s.get('election_term')}, "
                           f"but the primary is {p} in term {term}")
    target = pst["commit_index"]
    for nid, s in sts.items():
        lag = target - s["last_applied"]
        if lag > max_lag:
            return False, (f"{nid} is {lag} entr{'y' if lag == 1 else 'ies'} behind the primary {p} "
                           f"(applied {s['last_applied']} of {target})")
    for nid, s in sts.items():
        if s["last_applied"] == pst["last_applied"] and s["digest"] != pst["digest"]:
            return False, (f"{nid}'s digest {s['digest']} differs from the primary's {pst['digest']} "
                           f"at index {s['last_applied']}: the replicas have diverged")
    return True, (f"primary {p} (term {term}); {len(sts)}/{len(sts)} nodes up and in sync at index "
                  f"{pst['last_applied']}, digest {pst['digest']}")


# ---------------------------------------------------------------------------------- table rendering
class _Colour:
    def __init__(self, enabled: bool):
        on = enabled and colorama is not None
        if on and hasattr(colorama, "just_fix_windows_console"):
            colorama.just_fix_windows_console()
        F = colorama.Fore if on else None
        S = colorama.Style if on else None
        self.green = F.GREEN if on else ""
        self.cyan = F.CYAN if on else ""
        self.yellow = F.YELLOW if on else ""
        self.red = F.RED if on else ""
        self.dim = S.DIM if on else ""
        self.bold = S.BRIGHT if on else ""
        self.reset = S.RESET_ALL if on else ""

    def __call__(self, text: str, colour: str) -> str:
        return f"{colour}{text}{self.reset}" if colour else text


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


class ProcSampler:
    """CPU % and RSS of node PIDs via psutil.  CPU % is measured between two sample() calls."""

    def __init__(self):
        self._procs: dict[int, object] = {}

    def sample(self, pids) -> dict[int, tuple[float | None, int | None]]:
        out = {}
        if psutil is None:
            return out
        for pid in pids:
            if pid is None:
                continue
            p = self._procs.get(pid)
            try:
                if p is None:
                    p = self._procs[pid] = psutil.Process(pid)
                    p.cpu_percent(None)
                    out[pid] = (None, p.memory_info().rss)
                else:
                    out[pid] = (p.cpu_percent(None), p.memory_info().rss)
            except psutil.Error:
                self._procs.pop(pid, None)
        return out


COLUMNS = [("NODE", "<"), ("ADDRESS", "<"), ("PID", ">"), ("ROLE", "<"), ("MEMBER", "<"), ("TERM", ">"),
           ("COMMIT/APPLIED", ">"), ("LAG", ">"), ("KEYS", ">"), ("DIGEST", "<"), ("UPTIME", ">"),
           ("CPU%", ">"), ("RSS", ">")]


def table_rows(cluster: LocalCluster, sts: dict, errors: dict, usage: dict,
               down_info: dict | None = None) -> list[dict]:
    """One dict per node with every column's value (also the --json output of status)."""
    down_info = down_info or {}
    prims = [(s["election_term"], nid) for nid, s in sts.items() if s and s.get("role") == "primary"]
    pst = sts[max(prims)[1]] if prims else None
    rows = []
    for nid in cluster.ids:
        s = sts.get(nid)
        proc = cluster.process(nid)
        host, port = cluster.addr(nid)
        row = {"node": nid, "address": f"{host}:{port}", "up": s is not None}
        if s is None:
            row.update(role="down", reason=down_info.get(nid) or errors.get(nid),
                       pid=proc.pid if proc is not None and proc.alive() else None)
        else:
            row.update(pid=s.get("pid"), role=s["role"], member=s.get("membership", "voter"),
                       term=s["election_term"], primary=s.get("primary"),
                       commit_index=s["commit_index"], last_applied=s["last_applied"], keys=s.get("keys"),
                       digest=s.get("digest"), uptime=s.get("uptime"))
            if pst is not None:
                row["lag"] = max(0, pst["commit_index"] - s["last_applied"])
                if s["last_applied"] == pst["last_applied"]:
                    row["digest_match"] = "match" if s["digest"] == pst["digest"] else "DIFFERS"
                else:
                    row["digest_match"] = "behind" if s["last_applied"] < pst["last_applied"] else "ahead"
        cpu, rss = usage.get(row.get("pid"), (None, None))
        row.update(cpu_percent=cpu, rss=rss)
        rows.append(row)
    return rows


def render_table(rows: list[dict], col: _Colour) -> list[str]:
    role_colour = {"primary": col.green + col.bold, "secondary": col.cyan, "candidate": col.yellow,
                   "down": col.red + col.bold}
    cells = []
    for r in rows:
        if not r["up"]:
            why = r.get("reason") or ""
            c = [(r["node"], ""), (r["address"], ""), (str(r["pid"] or "-"), ""), ("down", role_colour["down"]),
                 ("-", ""), ("-", ""), ("-", ""), ("-", ""), ("-", ""), (why[:60], col.red), ("-", ""), ("-", ""),
                 ("-", "")]
        else:
            match = r.get("digest_match")
            mcol = {"match": col.green, "DIFFERS": col.red + col.bold}.get(match, col.yellow)
            lag = r.get("lag")
            c = [(r["node"], col.bold), (r["address"], ""), (str(r["pid"] or "-"), ""),
                 (r["role"], role_colour.get(r["role"], "")),
                 (r.get("member", "voter"), col.yellow if r.get("member") != "voter" else ""),
                 (str(r["term"]), ""),
                 (f"{r['commit_index']}/{r['last_applied']}", ""),
                 ("-" if lag is None else str(lag), col.yellow if lag else ""),
                 (str(r.get("keys", "-")), ""),
                 (f"{(r.get('digest') or '')[:8]} {match or '-'}", mcol if match else ""),
                 (fmt_duration(r.get("uptime")), ""),
                 ("-" if r.get("cpu_percent") is None else f"{r['cpu_percent']:.1f}", ""),
                 (fmt_bytes(r.get("rss")), "")]
        cells.append(c)
    widths = [max([len(h)] + [len(c[i][0]) for c in cells]) for i, (h, _) in enumerate(COLUMNS)]
    out = ["  ".join(col(f"{h:{a}{w}}", col.dim) for (h, a), w in zip(COLUMNS, widths)).rstrip()]
    for c in cells:
        out.append("  ".join(col(f"{t:{a}{w}}", colour) for (t, colour), (_, a), w in zip(c, COLUMNS, widths)).rstrip())
    return out


# ------------------------------------------------------------------------------------- state files
def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot read {path}: {e}") from e


def write_json_atomic(path: str, obj: dict) -> None:
    """Write obj to path atomically (temp file, fsync, rename), readable by the owner only."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def membership(opts) -> dict[str, str]:
    return {f"node{i}": f"{opts.host}:{opts.base_port + i - 1}" for i in range(1, opts.nodes + 1)}


def _manager_alive(state: dict) -> bool:
    pid = state.get("manager_pid")
    if not pid or psutil is None:
        return bool(pid) and _pid_exists(pid)
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        ct = state.get("manager_create_time")
        if ct is not None and abs(p.create_time() - ct) > 0.5:
            return False
        return any(os.path.basename(a) == "cluster_manager.py" for a in p.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_nodes(state: dict) -> dict[str, int]:
    """{node: pid} of the state file's nodes whose process still runs."""
    return {nid: n["pid"] for nid, n in (state.get("nodes") or {}).items()
            if n.get("pid") and _process_matches(n["pid"], nid, n.get("create_time"))}


def check_data_dir(opts) -> dict:
    """Refuse a data dir that belongs to another cluster; returns the marker to (re)write."""
    path = os.path.join(opts.data_dir, MARKER_FILE)
    marker = read_json(path)
    want = membership(opts)
    if marker is None:
        return {"cluster_id": uuid.uuid4().hex[:12], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "nodes": want}
    if marker.get("nodes") != want:
        have = ", ".join(f"{k}={v}" for k, v in (marker.get("nodes") or {}).items())
        raise DataDirConflict(
            f"data dir {opts.data_dir} belongs to cluster {marker.get('cluster_id')} ({have}); this start "
            f"asks for {', '.join(f'{k}={v}' for k, v in want.items())}. Use another --data-dir, or the "
            f"same --nodes/--base-port/--host as that cluster.")
    return marker


def control_socket_path(data_dir: str) -> str:
    path = os.path.join(data_dir, CONTROL_SOCKET)
    if len(path) > 100:   # AF_UNIX paths are limited to ~108 bytes
        digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
        path = os.path.join(tempfile.gettempdir(), f"kvcm-{digest}.sock")
    return path


def control_request(path: str, req: dict, timeout: float, on_progress=None) -> dict:
    """One JSON request to a manager over its Unix socket; raises OSError if it cannot be reached.
    Long operations send {"progress": text} lines first (given to on_progress), then the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        with s.makefile("rb") as f:
            while True:
                raw = f.readline()
                if not raw:
                    raise ConnectionError("the manager closed the connection without answering")
                ans = json.loads(raw)
                if "progress" in ans and len(ans) == 1:
                    if on_progress is not None:
                        on_progress(ans["progress"])
                    continue
                return ans


def check_not_running(opts) -> None:
    """Refuse when a manager or leftover nodes of an earlier run use this data dir."""
    lock = DataDirLock(opts.data_dir, LOCK_FILE)
    if not lock.try_acquire():
        raise AlreadyRunning(f"a cluster is already running from {opts.data_dir} (manager pid {lock.holder()}); "
                             f"see it with --action status, stop it with --action stop")
    lock.release()
    state = read_json(os.path.join(opts.data_dir, STATE_FILE))
    if state is not None:
        alive = live_nodes(state)
        if alive:
            raise AlreadyRunning(
                f"nodes of a cluster started earlier from {opts.data_dir} are still running without a manager "
                f"({', '.join(f'{k} pid {v}' for k, v in alive.items())}); stop them with --action stop")


# --------------------------------------------------------------------------------------- Supervisor
class Supervisor:
    """The manager of one running cluster: the only parent of its node processes.

    Holds the data dir's lock for its whole life, writes cluster_state.json whenever a PID changes
    (and removes it on a clean stop), reports node deaths at once with exit code and log tail,
    restarts failed nodes when asked to (with back-off), and serves other terminals on a Unix
    socket: {"op": "ping" | "kill" | "restart" | "stop", "node": id?} -> {"ok": bool, ...}.
    In the foreground it also draws the live table.  Invariant: every node mutation (kill, start,
    stop) happens under self.lock, so a watched death is never confused with a requested one.
    """

    def __init__(self, opts, foreground: bool):
        self.opts = opts
        self.fg = foreground
        self.col = _Colour(foreground and sys.stdout.isatty() and not opts.no_color
                           and not os.environ.get("NO_COLOR"))
        self.tty = foreground and sys.stdout.isatty()
        self.cluster = self._make_cluster()
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.hurry = False
        self.data_lock = DataDirLock(opts.data_dir, LOCK_FILE)
        self.sock_path = control_socket_path(opts.data_dir)
        self.state_path = os.path.join(opts.data_dir, STATE_FILE)
        self.marker: dict = {}
        self.down: dict[str, float] = {}          # node -> when its death was reported
        self.restart_at: dict[str, float] = {}
        self.crashes: dict[str, int] = {}
        self.sampler = ProcSampler()
        self.table_lines = 0
        self.last_primary: tuple | None = None
        self.started = time.time()

    def _make_cluster(self, members: dict | None = None) -> LocalCluster:
        """The flags' cluster, or (members: the marker's record after membership changes) the
        current members with their ports and how each one was added."""
        opts = self.opts
        kw = dict(host=opts.host, data_dir=opts.data_dir, fsync=opts.fsync,
                  heartbeat_interval=opts.heartbeat_interval, election_timeout=opts.election_timeout,
                  extra_args=opts.server_arg or (), requirepass=opts.requirepass, cluster_secret=opts.cluster_secret,
                  log_level=opts.log_level, server_script=opts.server_script)
        if not members:
            return LocalCluster(n=opts.nodes, base_port=opts.base_port, **kw)
        ids = list(members["nodes"])
        return LocalCluster(n=len(ids), ids=ids, ports=[int(members["nodes"][i].rpartition(":")[2]) for i in ids],
                            boot_ids=members["boot_ids"], joiners=members["joiners"],
                            known_ports=members.get("boot_ports"), **kw)

    def record_members(self) -> None:
        """Remember the membership in the data dir's marker, so a later start brings back these
        nodes (not the --nodes set the cluster was created with)."""
        c = self.cluster
        self.marker["members"] = _members_record(c)
        write_json_atomic(os.path.join(self.opts.data_dir, MARKER_FILE), self.marker)

    # -- output
    def say(self, msg: str, colour: str = "") -> None:
        stamp = time.strftime("%H:%M:%S")
        self._write(f"{self.col(stamp, self.col.dim)} {self.col(msg, colour)}\n")

    def _write(self, text: str, table_lines: int = 0) -> None:
        """Print above the live table (erasing it first).  Output is best effort: a closed
        terminal (SIGHUP) must not keep the manager from stopping the nodes."""
        if self.tty and self.table_lines:
            text = f"\x1b[{self.table_lines}F\x1b[J" + text
        self.table_lines = table_lines
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError:
            pass   # the terminal is gone; the events are in the node logs as well

    def _erase_table(self) -> None:
        if self.tty and self.table_lines:
            self._write("")

    def draw(self, lines: list[str]) -> None:
        self._write("".join(line + "\x1b[K\n" for line in lines), table_lines=len(lines))

    # -- state file
    def write_state(self, phase: str) -> None:
        c = self.cluster
        nodes = {}
        for nid in c.ids:
            p = c.process(nid)
            nodes[nid] = {"addr": "%s:%d" % c.addr(nid), "port": c.port(nid), "data_dir": c.data_dir_of(nid),
                          "log": c.log_path(nid), **(p.state() if p is not None and p.alive() else {"pid": None})}
        o = self.opts
        write_json_atomic(self.state_path, {
            "version": 1, "cluster_id": self.marker.get("cluster_id"), "phase": phase,
            "mode": "foreground" if self.fg else "detached",
            "manager_pid": os.getpid(), "manager_create_time": _create_time(os.getpid()),
            "control_socket": self.sock_path, "started": self.started, "data_dir": os.path.abspath(o.data_dir),
            "host": o.host, "base_port": o.base_port, "nodes": nodes,
            "boot_ids": c.boot_ids, "boot_ports": c.boot_ports, "joiners": c.joiners,
            "args": {"nodes": o.nodes, "fsync": o.fsync, "heartbeat_interval": o.heartbeat_interval,
                     "election_timeout": o.election_timeout, "requirepass": o.requirepass is not None,
                     "cluster_secret": o.cluster_secret is not None, "restart_on_failure": o.restart_on_failure,
                     "log_level": o.log_level, "server_arg": o.server_arg or [],
                     "server_script": o.server_script},
        })

    # -- life
    def run(self) -> int:
        o = self.opts
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        os.makedirs(o.data_dir, exist_ok=True)
        try:
            if not self.data_lock.try_acquire():
                raise AlreadyRunning(f"a cluster is already running from {o.data_dir} (manager pid "
                                     f"{self.data_lock.holder()}); see it with --action status")
            self.marker = check_data_dir(o)
            if self.marker.get("members"):
                self.cluster = self._make_cluster(self.marker["members"])
            state = read_json(self.state_path)
            if state is not None and live_nodes(state):
                raise AlreadyRunning(f"nodes of an earlier run from {o.data_dir} are still running "
                                     f"({', '.join(f'{k} pid {v}' for k, v in live_nodes(state).items())}); "
                                     f"stop them with --action stop")
            self.cluster.check_ports()
        except (ClusterError, DataDirError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            self.data_lock.release()
            self.cluster.stop()
            return 2
        write_json_atomic(os.path.join(o.data_dir, MARKER_FILE), self.marker)
        write_secret_files(o.data_dir, o)
        self.cluster.extra_args = tuple(self.cluster.extra_args) + ("--cluster-id", self.marker["cluster_id"])
        ctl = threading.Thread(target=self._serve_control, name="control", daemon=True)
        ctl.start()
        code = 0
        try:
            code = self._start_and_watch()
        finally:
            self.stop_event.set()
            self._erase_table()
            self.say("stopping the cluster (secondaries first)")
            with self.lock:
                self.cluster.stop(timeout=1.0 if self.hurry else o.timeout, graceful=not self.hurry,
                                  shutdown_command=True, on_event=self.say)
            left = [nid for nid in self.cluster.ids if self.cluster.process(nid) and self.cluster.process(nid).alive()]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)
            ctl.join(timeout=2)
            self.data_lock.release()
            if left:
                self.say(f"could not stop {', '.join(left)}", self.col.red)
                code = 1
            else:
                self.say("all nodes stopped")
        return code

    def _on_signal(self, signum, frame) -> None:
        if self.stop_event.is_set() and not self.hurry:
            self.hurry = True            # a second Ctrl-C: no more waiting for graceful shutdowns
            for nid in self.cluster.ids:
                p = self.cluster.process(nid)
                if p is not None:
                    p.signal(signal.SIGKILL)
        self.stop_event.set()

    def _start_and_watch(self) -> int:
        o = self.opts
        c = self.cluster
        t0 = time.monotonic()
        with self.lock:
            for i, nid in enumerate(c.ids):
                c.start_node(nid, primary=(i == 0), wait=False)
                self.say(f"started {nid} on {'%s:%d' % c.addr(nid)} (pid {c.pid(nid)})")
            self.write_state("starting")
        deadline = t0 + o.timeout
        primary = None
        while not self.stop_event.is_set():
            try:
                primary = c.ready_primary()
            except NodeFailed as e:
                self.say(f"error: {e}", self.col.red)
                return 1
            except SplitBrain as e:
                self.say(f"error: split brain: {e}", self.col.red)
                return 1
            if primary:
                break
            if time.monotonic() >= deadline:
                self.say(f"error: no primary within {o.timeout:g}s: {c.describe()}", self.col.red)
                return 1
            self.stop_event.wait(0.05)
        if primary is None:
            return 0
        st = c.status(primary) or {}
        self.say(f"primary is {primary} (term {st.get('election_term')}), elected "
                 f"{time.monotonic() - t0:.2f}s after start", self.col.green)
        self.last_primary = (primary, st.get("election_term"))
        with self.lock:
            self.write_state("running")
        if self.fg:
            hint = "Ctrl-C stops the cluster" if self.tty else "SIGINT stops the cluster"
            self.say(f"cluster of {c.n} running from {o.data_dir}; {hint}; from another terminal: "
                     f"{invoked_as()} --action status --data-dir {o.data_dir}")
        self._watch()
        return 0

    def _watch(self) -> None:
        next_view = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            with self.lock:
                self._check_processes(now)
            if now >= next_view:
                self._observe()
                next_view = now + self.opts.refresh
            self.stop_event.wait(0.1)

    def _check_processes(self, now: float) -> None:
        """Caller holds self.lock."""
        c = self.cluster
        changed = False
        for nid in c.ids:
            p = c.process(nid)
            if p is None:
                continue
            if p.alive():
                self.down.pop(nid, None)
                continue
            if nid not in self.down and not c.expected_exit(nid):
                self.down[nid] = now
                lived = time.time() - p.started
                self.say(f"{nid} is DOWN: pid {p.pid} exited with code {fmt_exit(p.returncode)} "
                         f"after {fmt_duration(lived)}; last lines of {c.log_path(nid)}:", self.col.red)
                for line in tail(c.log_path(nid), 8):
                    print(f"    {line}", flush=True)
                changed = True
                if self.opts.restart_on_failure:
                    self.crashes[nid] = self.crashes.get(nid, 0) + 1 if lived < 10 else 1
                    delay = min(self.opts.restart_delay * 2 ** (self.crashes[nid] - 1), 30.0)
                    self.restart_at[nid] = now + delay
                    self.say(f"{nid} will be restarted in {delay:.1f}s (--restart-on-failure)", self.col.yellow)
            if nid in self.restart_at and now >= self.restart_at[nid]:
                del self.restart_at[nid]
                try:
                    pid = c.start_node(nid, wait=False)
                    self.down.pop(nid, None)
                    self.say(f"{nid} restarted (pid {pid})", self.col.yellow)
                    changed = True
                except ClusterError as e:
                    self.say(f"cannot restart {nid}: {e}", self.col.red)
        if changed:
            self.write_state("running")

    def _observe(self) -> None:
        c = self.cluster
        sts, errors = c.probe_all(timeout=0.5)
        prims = sorted(((s["election_term"], nid) for nid, s in sts.items() if s and s["role"] == "primary"),
                       reverse=True)
        terms = [t for t, _ in prims]
        if len(terms) != len(set(terms)):
            self.say(f"SPLIT BRAIN: {prims}", self.col.red + self.col.bold)
        if prims and (prims[0][1], prims[0][0]) != self.last_primary:
            was = self.last_primary[0] if self.last_primary else None
            self.say(f"primary is now {prims[0][1]} (term {prims[0][0]})" + (f", was {was}" if was else ""),
                     self.col.green)
            self.last_primary = (prims[0][1], prims[0][0])
        if not self.fg:
            return
        down_info = {}
        for nid in c.ids:
            p = c.process(nid)
            if sts.get(nid) is None and p is not None and not p.alive():
                down_info[nid] = f"exit code {fmt_exit(p.returncode)}" + \
                    (" - restarting" if nid in self.restart_at else "")
        usage = self.sampler.sample([s.get("pid") for s in sts.values() if s])
        rows = table_rows(c, sts, errors, usage, down_info)
        ok, why = health_verdict(sts, errors, max_lag=self.opts.max_lag)
        head = (f"KV Store cluster {self.marker.get('cluster_id')}  {self.opts.data_dir}  "
                f"{time.strftime('%H:%M:%S')}  ")
        head += self.col("healthy" if ok else "unhealthy: " + why, self.col.green if ok else self.col.yellow)
        lines = [head] + render_table(rows, self.col)
        if self.tty:
            self.draw(lines)
        else:
            key = [(r["node"], r["role"], r.get("term")) for r in rows]
            if key != getattr(self, "_last_key", None):   # a pipe gets the table only when it changes
                self._last_key = key
                for line in lines:
                    print(line, flush=True)

    # -- control socket
    def _serve_control(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            srv.bind(self.sock_path)
            os.chmod(self.sock_path, 0o600)
            srv.listen(8)
            srv.settimeout(0.2)
            while not self.stop_event.is_set():
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.settimeout(5)
                    try:
                        with conn.makefile("rb") as f:
                            req = json.loads(f.readline() or b"{}")
                        ans = self._handle(req, self._progress_to(conn))
                    except (OSError, ValueError) as e:
                        ans = {"ok": False, "message": f"bad request: {e}"}
                    with contextlib.suppress(OSError):
                        conn.settimeout(max(5.0, self.opts.timeout))
                        conn.sendall(json.dumps(ans).encode() + b"\n")
        except OSError as e:
            self.say(f"control socket {self.sock_path} failed: {e}; other terminals will act by PID",
                     self.col.yellow)
        finally:
            srv.close()

    def _progress_to(self, conn):
        """A progress reporter for a long request: a line here and one to the asking terminal."""
        def progress(msg: str) -> None:
            self.say(msg)
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.sendall(json.dumps({"progress": msg}).encode() + b"\n")
        return progress

    def _handle(self, req: dict, progress=None) -> dict:
        op = req.get("op")
        c = self.cluster
        nid = req.get("node")
        if op in MEMBERSHIP_OPS:
            # held for the whole change: the watcher must not take a removed node's exit for a crash
            with self.lock:
                try:
                    result = MEMBERSHIP_OPS[op](c, nid, self.opts.timeout, progress or self.say)
                except (ClusterError, SplitBrain) as e:
                    return {"ok": False, "message": str(e)}
                finally:
                    self.write_state("running")
                    self.record_members()
            return {"ok": True, "result": result}
        if nid is not None and nid not in c.ids:
            return {"ok": False, "message": f"unknown node {nid!r} (nodes: {', '.join(c.ids)})"}
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "stop":
            self.say("stop requested from another terminal")
            self.stop_event.set()
            return {"ok": True, "message": "stopping"}
        if op == "kill":
            with self.lock:
                p = c.process(nid)
                if p is None or not p.alive():
                    return {"ok": False, "message": f"{nid} is not running"}
                pid = p.pid
                code = c.kill(nid)
                self.say(f"{nid} (pid {pid}) killed with SIGKILL on request", self.col.yellow)
            return {"ok": True, "pid": pid, "exit_code": code}
        if op == "restart":
            t0 = time.monotonic()
            ids = [nid] if nid else self._rolling_order()
            wipe = bool(req.get("wipe")) and nid is not None
            done = {}
            moved = ""
            try:
                for x in ids:
                    with self.lock:
                        self.restart_at.pop(x, None)
                        p = c.process(x)
                        if p is not None and p.alive():
                            self.say(f"restarting {x} (pid {p.pid})")
                            c.stop_node(x, timeout=self.opts.timeout, shutdown_command=False)
                        if wipe:
                            moved = wipe_node_dir(c.data_dir_of(x))
                            self.say(f"{x}'s data dir moved to {moved}; it restarts empty", self.col.yellow)
                        done[x] = c.start_node(x, wait=True, timeout=self.opts.timeout)
                        self.down.pop(x, None)
                        self.crashes.pop(x, None)
                        self.write_state("running")
                        self.say(f"{x} restarted (pid {done[x]})", self.col.yellow)
                    if len(ids) > 1:
                        c.wait_converged(timeout=self.opts.timeout)
            except (ClusterError, OSError) as e:
                return {"ok": False, "message": str(e), "pids": done}
            return {"ok": True, "pids": done, "moved": moved, "seconds": round(time.monotonic() - t0, 3)}
        return {"ok": False, "message": f"unknown op {op!r}"}

    def _rolling_order(self) -> list[str]:
        prim = self.cluster.primary(timeout=0.5)
        return [x for x in self.cluster.ids if x != prim] + ([prim] if prim else [])


# ------------------------------------------------------------------------------------------ actions
class Target:
    """What a second-terminal action works on: the running cluster recorded in --data-dir, or else
    the membership the flags describe (nodes started by hand).  PIDs come from the state file, or
    from the nodes' own STATUS answers, and are verified before use."""

    def __init__(self, opts):
        self.opts = opts
        self.state_path = os.path.join(opts.data_dir, STATE_FILE)
        self.state = read_json(self.state_path) if os.path.isdir(opts.data_dir) else None
        s = self.state
        if s is None:
            marker = read_json(os.path.join(opts.data_dir, MARKER_FILE)) if os.path.isdir(opts.data_dir) else None
            if marker is not None:
                raise NoCluster(f"no cluster at {opts.data_dir} is running (cluster {marker.get('cluster_id')} "
                                f"was stopped; start it with --action start --data-dir {opts.data_dir})")
            raise NoCluster(f"no cluster at {opts.data_dir} (no {STATE_FILE}: no cluster was started from "
                            f"this --data-dir); nothing was done")
        self.cluster_id = s.get("cluster_id")
        self.data_dir = s["data_dir"]
        nodes = s["nodes"]
        ids = sorted(nodes, key=lambda x: int(x[4:]) if x[4:].isdigit() else x)
        args = s.get("args", {})
        rp = opts.requirepass if opts.requirepass is not None else read_secret_file(opts.data_dir, "requirepass")
        cid = ["--cluster-id", self.cluster_id] if self.cluster_id else []
        self.cluster = LocalCluster(
            n=len(ids), host=s.get("host", opts.host), data_dir=self.data_dir,
            ports=[nodes[i]["port"] for i in ids], fsync=args.get("fsync", "always"),
            ids=ids, boot_ids=s.get("boot_ids"), joiners=s.get("joiners"), known_ports=s.get("boot_ports"),
            heartbeat_interval=args.get("heartbeat_interval"), election_timeout=args.get("election_timeout"),
            requirepass=rp, cluster_secret=read_secret_file(opts.data_dir, "cluster_secret"),
            log_level=args.get("log_level"), extra_args=list(args.get("server_arg") or ()) + cid,
            server_script=args.get("server_script", SERVER_SCRIPT))
        for nid in ids:
            n = nodes[nid]
            if n.get("pid") and self.is_ours(nid, n["pid"], n.get("create_time")):
                self.cluster.adopt(nid, n["pid"], n.get("create_time"), n.get("cmdline"))
        self.cluster.detach()

    def is_ours(self, nid: str, pid: int, create_time: float | None) -> bool:
        """pid is this cluster's node nid: a kv_store_server.py for nid (started at create_time when
        known) whose command line names this cluster's data dir for it."""
        if not _process_matches(pid, nid, create_time):
            return False
        if psutil is None:
            return create_time is not None
        try:
            cmd = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return create_time is not None
        want = os.path.abspath(self.cluster.data_dir_of(nid))
        dirs = [b for a, b in zip(cmd, cmd[1:]) if a == "--data-dir"] + \
               [a.split("=", 1)[1] for a in cmd if a.startswith("--data-dir=")]
        return any(os.path.abspath(d) == want for d in dirs)

    @property
    def recorded(self) -> bool:
        return self.state is not None

    def manager(self) -> str | None:
        """The control socket of a live manager, or None."""
        s = self.state
        if s is None or not _manager_alive(s):
            return None
        path = s.get("control_socket")
        try:
            if path and control_request(path, {"op": "ping"}, timeout=2).get("ok"):
                return path
        except (OSError, ValueError):
            return None
        return None

    def adopt_from_status(self, sts: dict) -> None:
        """Track nodes the state file does not know, by the PID they report - only when that
        answer comes from this cluster (its cluster id) and the PID is verified to be this
        cluster's process for the node (command line with this data dir).  Whatever else listens
        on a recorded port is never acted on."""
        c = self.cluster
        for nid, st in sts.items():
            if (st and c.process(nid) is None and st.get("pid") and st.get("cluster_id") == self.cluster_id
                    and self.is_ours(nid, st["pid"], None)):
                c.adopt(nid, st["pid"])

    def foreign(self, sts: dict) -> dict[str, str]:
        """{node: why} for answers on this cluster's ports that come from another cluster."""
        return {nid: f"{nid}'s port answers as cluster {st.get('cluster_id')}, not {self.cluster_id}"
                for nid, st in sts.items() if st and self.cluster_id and st.get("cluster_id") != self.cluster_id}

    def where(self) -> str:
        return ", ".join(self.cluster.addresses())


def invoked_as() -> str:
    """How the user runs this CLI: "kv-cluster" (the console script of `pip install .`) or
    "python cluster_manager.py" (for hints printed to them)."""
    return "kv-cluster" if os.path.basename(sys.argv[0] if sys.argv else "") == "kv-cluster" \
        else "python cluster_manager.py"


def _fail(msg: str, code: int = 1) -> int:
    print(f"cluster_manager.py: error: {msg}", file=sys.stderr)
    return code


def _statuses_with_errors(c: LocalCluster, timeout: float = 1.0) -> tuple[dict, dict]:
    return c.probe_all(timeout=timeout)


def action_start(opts) -> int:
    if not opts.detach and not opts.supervise:
        return Supervisor(opts, foreground=True).run()
    if opts.supervise:
        return Supervisor(opts, foreground=False).run()
    # --detach: check here, so a refusal reaches this terminal; then leave a supervisor behind.
    try:
        check_data_dir(opts)
        check_not_running(opts)
        LocalCluster(n=opts.nodes, base_port=opts.base_port, host=opts.host, data_dir=opts.data_dir).check_ports()
    except (ClusterError, DataDirError) as e:
        return _fail(str(e), 2)
    log_path = os.path.join(opts.data_dir, MANAGER_LOG)
    cmd = [sys.executable, os.path.abspath(__file__), "--action", "start", "--supervise"] + _pass_through(opts)
    with open(log_path, "ab") as logf:
        logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for var, value in (("KV_REQUIREPASS", opts.requirepass), ("KV_CLUSTER_SECRET", opts.cluster_secret)):
            env.pop(var, None)
            if value is not None:     # secrets by environment, never in the supervisor's argv
                env[var] = value
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, env=env)
    state_path = os.path.join(opts.data_dir, STATE_FILE)
    deadline = time.monotonic() + opts.timeout + 10
    while True:
        if child.poll() is not None:
            lines = "\n    ".join(tail(log_path, 15))
            return _fail(f"the cluster manager exited with code {fmt_exit(child.returncode)}; {log_path}:\n    {lines}",
                         2 if child.returncode == 2 else 1)
        with contextlib.suppress(ClusterError):
            st = read_json(state_path)
            if st and st.get("manager_pid") == child.pid and st.get("phase") == "running":
                break
        if time.monotonic() >= deadline:
            child.terminate()
            return _fail(f"the cluster did not come up within {opts.timeout:g}s; see {log_path}")
        time.sleep(0.05)
    print(f"cluster started in the background (manager pid {child.pid}, log {log_path})")
    _print_status(opts, Target(opts))
    print(f"stop it with: {invoked_as()} --action stop --data-dir {opts.data_dir}")
    return 0


def _pass_through(opts) -> list[str]:
    out = ["--nodes", str(opts.nodes), "--base-port", str(opts.base_port), "--host", opts.host,
           "--data-dir", opts.data_dir, "--fsync", opts.fsync, "--timeout", str(opts.timeout),
           "--restart-delay", str(opts.restart_delay), "--refresh", str(opts.refresh),
           "--max-lag", str(opts.max_lag), "--server-script", opts.server_script]
    for flag, v in (("--heartbeat-interval", opts.heartbeat_interval), ("--election-timeout", opts.election_timeout),
                    ("--log-level", opts.log_level)):
        if v is not None:
            out += [flag, str(v)]
    if opts.restart_on_failure:
        out.append("--restart-on-failure")
    for a in opts.server_arg or ():
        out.append(f"--server-arg={a}")
    return out


def _print_status(opts, t: Target) -> tuple[dict, dict]:
    c = t.cluster
    sampler = ProcSampler()
    sts, errors = _statuses_with_errors(c)
    for nid, why in t.foreign(sts).items():
        sts[nid], errors[nid] = None, why
    t.adopt_from_status(sts)
    pids = [s.get("pid") for s in sts.values() if s]
    sampler.sample(pids)
    time.sleep(0.2)          # the CPU % window
    usage = sampler.sample(pids)
    rows = table_rows(c, sts, errors, usage)
    if opts.json:
        print(json.dumps({"data_dir": opts.data_dir, "recorded": t.recorded,
                          "manager_pid": (t.state or {}).get("manager_pid"), "nodes": rows}, indent=2))
    else:
        col = _Colour(sys.stdout.isatty() and not opts.no_color and not os.environ.get("NO_COLOR"))
        ok, why = health_verdict(sts, errors, opts.max_lag)
        cid = (t.state or {}).get("cluster_id")
        print(f"cluster {cid or '(not started by cluster_manager)'} in {opts.data_dir}: " +
              col("healthy" if ok else "unhealthy: " + why, col.green if ok else col.yellow))
        for line in render_table(rows, col):
            print(line)
    return sts, errors


def action_status(opts) -> int:
    t = Target(opts)
    sts, _ = _print_status(opts, t)
    for why in t.foreign(sts).values():
        print(f"warning: {why}: another cluster uses this port", file=sys.stderr)
    if not any(sts.values()):
        print(f"no node answers on {t.where()}", file=sys.stderr)
        return 1
    return 0


def action_health(opts) -> int:
    deadline = time.monotonic() + opts.wait
    while True:      # --wait also covers a cluster still starting (no state file yet)
        try:
            t = Target(opts)
            break
        except NoCluster:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    while True:
        sts, errors = _statuses_with_errors(t.cluster, timeout=min(1.0, max(0.3, opts.wait)))
        ok, why = health_verdict(sts, errors, opts.max_lag)
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


def action_stop(opts) -> int:
    t = Target(opts)
    c = t.cluster
    ctl = t.manager()
    if ctl is None and t.state is not None and _manager_alive(t.state):
        # alive but deaf: SIGTERM makes it stop the cluster itself (it would restart what we stop)
        print(f"the cluster manager (pid {t.state['manager_pid']}) does not answer; sending it SIGTERM")
        with contextlib.suppress(ProcessLookupError):
            os.kill(t.state["manager_pid"], signal.SIGTERM)
        ctl = "signalled"
    elif ctl is not None:
        mpid = t.state["manager_pid"]
        print(f"asking the cluster manager (pid {mpid}) to stop the cluster")
        try:
            control_request(ctl, {"op": "stop"}, timeout=5)
        except (OSError, ValueError) as e:
            print(f"the manager did not answer ({e}); stopping the nodes by PID")
    if ctl is not None:
        deadline = time.monotonic() + opts.timeout * 2 + 5
        while time.monotonic() < deadline:
            busy = _manager_alive(t.state) or any(c.process(n) is not None and c.process(n).alive() for n in c.ids)
            if not busy:
                break
            time.sleep(0.05)
    sts, _ = _statuses_with_errors(c, timeout=0.5)
    t.adopt_from_status(sts)
    alive = [nid for nid in c.ids if c.process(nid) is not None and c.process(nid).alive()]
    if alive:
        prim = next((nid for nid, s in sts.items() if s and s.get("role") == "primary"), None)
        for group in ([x for x in alive if x != prim], [x for x in alive if x == prim]):
            for nid in group:
                print(f"stopping {nid} (pid {c.pid(nid)}{', primary' if nid == prim else ''})")
            if group:
                c._stop_many(group, opts.timeout, shutdown_command=True)
    left = [nid for nid in c.ids if c.process(nid) is not None and c.process(nid).alive()]
    answering = [nid for nid, s in _statuses_with_errors(c, timeout=0.5)[0].items()
                 if s and s.get("cluster_id") == t.cluster_id]
    if left or answering:
        return _fail(f"still running: {', '.join(sorted(set(left) | set(answering)))}")
    if t.state is not None and not _manager_alive(t.state):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(t.state_path)
    if ctl is None and not alive:
        print(f"no node of cluster {t.cluster_id} at {opts.data_dir} was running; removed its stale {STATE_FILE}")
    else:
        print("cluster stopped; no node process left")
    return 0


def _update_state_pids(t: Target) -> None:
    if t.state is None:
        return
    for nid in t.cluster.ids:
        p = t.cluster.process(nid)
        t.state["nodes"][nid].update(p.state() if p is not None and p.alive() else {"pid": None})
    t.state["manager_pid"] = t.state.get("manager_pid") if _manager_alive(t.state) else None
    write_json_atomic(t.state_path, t.state)


def action_kill(opts) -> int:
    t = Target(opts)
    c = t.cluster
    if opts.node not in c.ids:
        return _fail(f"--action kill needs --node, one of {', '.join(c.ids)}", 2)
    st = c.status(opts.node, timeout=0.5)
    if st is not None and st.get("cluster_id") != t.cluster_id:
        st = None                      # another cluster's node on this port: never ours to kill
    was = f", was {st['role']} in term {st['election_term']}" if st else ""
    ctl = t.manager()
    if ctl is not None:
        ans = control_request(ctl, {"op": "kill", "node": opts.node}, timeout=15)
        if not ans.get("ok"):
            return _fail(ans.get("message", "kill failed"))
        print(f"killed {opts.node} (pid {ans['pid']}{was}) with SIGKILL")
        return 0
    if st is not None:
        t.adopt_from_status({opts.node: st})
    p = c.process(opts.node)
    if p is None or not p.alive():
        return _fail(f"{opts.node} is not running")
    pid = p.pid
    c.kill(opts.node)
    _update_state_pids(t)
    print(f"killed {opts.node} (pid {pid}{was}) with SIGKILL")
    return 0


def wipe_node_dir(node_dir: str) -> str:
    """Move a (stopped) node's data dir aside (kept for analysis); returns where it went."""
    if not os.path.isdir(node_dir):
        return ""
    dest = f"{node_dir}.wiped-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = f"{node_dir}.wiped-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    os.rename(node_dir, dest)
    return dest


def action_restart(opts) -> int:
    t = Target(opts)
    c = t.cluster
    if opts.node is not None and opts.node not in c.ids:
        return _fail(f"unknown node {opts.node!r} (nodes: {', '.join(c.ids)})", 2)
    if opts.wipe and (opts.node is None or c.n < 2):
        return _fail("--wipe restarts ONE node of a cluster empty (the primary copies everything back): "
                     "give --node, and use it only in a cluster of 2 or more", 2)
    ctl = t.manager()
    t0 = time.monotonic()
    if ctl is not None:
        ans = control_request(ctl, {"op": "restart", "node": opts.node, "wipe": opts.wipe},
                              timeout=opts.timeout * (c.n + 1) + 30)
        if not ans.get("ok"):
            return _fail(ans.get("message", "restart failed"))
        if ans.get("moved"):
            print(f"moved {opts.node}'s data dir to {ans['moved']}")
        for nid, pid in ans["pids"].items():
            print(f"restarted {nid} (pid {pid}{', empty' if opts.wipe else ''})")
        c = Target(opts).cluster          # the new PIDs
    else:
        if t.state is None:
            return _fail(f"no cluster recorded in {opts.data_dir}; start one with --action start", 2)
        sts, _ = _statuses_with_errors(c, timeout=0.5)
        prim = next((nid for nid, s in sts.items() if s and s.get("role") == "primary"), None)
        ids = [opts.node] if opts.node else [x for x in c.ids if x != prim] + ([prim] if prim else [])
        try:
            for nid in ids:
                if c.process(nid) is not None and c.process(nid).alive():
                    c.stop_node(nid, timeout=opts.timeout)
                if opts.wipe:
                    moved = wipe_node_dir(c.data_dir_of(nid))
                    if moved:
                        print(f"moved {nid}'s data dir to {moved}")
                pid = c.start_node(nid, timeout=opts.timeout)
                _update_state_pids(t)
                print(f"restarted {nid} (pid {pid}; no manager is running, so nothing watches it)")
                if len(ids) > 1:
                    c.wait_converged(timeout=opts.timeout)
        except ClusterError as e:
            return _fail(str(e))
    try:
        conv = c.wait_converged(timeout=opts.timeout)
    except ClusterError as e:
        return _fail(f"restarted, but the cluster did not converge: {e}")
    any_st = next(iter(conv.values()))
    prim = c.primary(timeout=0.5)
    print(f"converged after {time.monotonic() - t0:.2f}s: primary {prim}, all at index {any_st['last_applied']}, "
          f"digest {any_st['digest']}")
    return 0


def action_failover(opts) -> int:
    t = Target(opts)
    c = t.cluster
    if opts.node is not None and opts.node not in c.ids:
        return _fail(f"unknown node {opts.node!r} (nodes: {', '.join(c.ids)})", 2)
    try:
        old = c.wait_for_single_primary(timeout=max(opts.wait, 0.5))
    except (ClusterError, SplitBrain) as e:
        return _fail(f"no single primary to fail over from: {e}")
    if opts.node == old:
        return _fail(f"{old} already is the primary")
    old_term = (c.status(old) or {}).get("election_term")
    t0 = time.monotonic()
    try:
        ans = c.send(old, "TRANSFER" + (f" {opts.node}" if opts.node else ""), timeout=opts.timeout)
    except OSError as e:
        return _fail(f"{old} did not answer TRANSFER: {e}")
    if ans.get("status") != "OK":
        return _fail(f"{old} refused TRANSFER: {ans.get('code')}: {ans.get('message')}")
    new = ans.get("primary")
    try:
        seen = c.wait_for_single_primary(timeout=opts.timeout, exclude=())
    except (ClusterError, SplitBrain) as e:
        return _fail(f"TRANSFER answered {ans}, but then: {e}")
    took = time.monotonic() - t0
    term = (c.status(seen) or {}).get("election_term")
    if seen == old:
        return _fail(f"{old} answered OK ({ans}) but is still the primary")
    if new and new != seen:
        print(f"note: TRANSFER named {new}, the cluster now follows {seen}")
    print(f"failover: primary {old} (term {old_term}) -> {seen} (term {term}) in {took:.3f}s")
    return 0


# ------------------------------------------------------------------------- membership changes
def _op_add(c: LocalCluster, nid, timeout: float, say) -> dict:
    return c.add_node(nid, timeout=max(timeout, 30), say=say)


def _op_remove(c: LocalCluster, nid, timeout: float, say) -> dict:
    if nid is None:
        raise ClusterError("remove-node needs --node")
    return c.remove_node(nid, timeout=max(timeout, 30), say=say)


def _op_replace(c: LocalCluster, nid, timeout: float, say) -> dict:
    if nid is None:
        raise ClusterError("replace needs --node (the node to swap for a fresh one)")
    if nid not in c.ids:
        raise ClusterError(f"{nid} is not a member (members: {', '.join(c.ids)})")
    return c.replace_node(nid, timeout=max(timeout, 30), say=say)


MEMBERSHIP_OPS = {"add-node": _op_add, "remove-node": _op_remove, "replace": _op_replace}


def _membership_action(opts, op: str) -> int:
    """add-node / remove-node / replace: through the running manager (it starts and stops the
    processes and keeps watching them), else directly (the new process then runs unwatched).
    Prints what it waits for, progress lines, and the figures when done."""
    t = Target(opts)
    c = t.cluster
    ctl = t.manager()
    t0 = time.monotonic()
    say = (lambda m: print(m, flush=True))
    before = ", ".join(c.ids)
    if ctl is not None:
        print(f"asking the cluster manager (pid {t.state['manager_pid']}) to {op}"
              f"{' ' + opts.node if opts.node else ''} (members: {before})", flush=True)
        try:
            ans = control_request(ctl, {"op": op, "node": opts.node}, timeout=max(opts.timeout, 30) * 4 + 30,
                                  on_progress=say)
        except (OSError, ValueError) as e:
            return _fail(f"the manager did not answer: {e}")
        if not ans.get("ok"):
            return _fail(ans.get("message", f"{op} failed"))
        result = ans["result"]
        c = Target(opts).cluster
    else:
        if t.state is None:
            return _fail(f"no cluster recorded in {opts.data_dir}; start one with --action start", 2)
        print(f"no cluster manager runs for {opts.data_dir}: acting directly (members: {before})", flush=True)
        sts, _ = _statuses_with_errors(c, timeout=0.5)
        t.adopt_from_status(sts)
        try:
            result = MEMBERSHIP_OPS[op](c, opts.node, opts.timeout, say)
        except (ClusterError, SplitBrain) as e:
            return _fail(str(e))
        _write_membership_state(t)
    took = time.monotonic() - t0
    try:
        conv = c.wait_converged(timeout=max(opts.timeout, 30))
    except ClusterError as e:
        return _fail(f"{op} done ({result}), but the cluster did not converge: {e}")
    st = next(iter(conv.values()))
    figures = ", ".join(f"{k} {v}" for k, v in result.items() if v is not None)
    print(f"{op} done in {took:.2f}s ({figures}); members now: voters {','.join(st['voters'])}"
          f"{'; learners ' + ','.join(st['learners']) if st['learners'] else ''}; all {len(conv)} at index "
          f"{st['last_applied']}, digest {st['digest']}")
    return 0


def _write_membership_state(t: Target) -> None:
    """Without a manager: record the membership the direct action left (nodes, joiners, PIDs)."""
    c = t.cluster
    s = t.state
    s["nodes"] = {nid: {**s["nodes"].get(nid, {}), "addr": "%s:%d" % c.addr(nid), "port": c.port(nid),
                        "data_dir": c.data_dir_of(nid), "log": c.log_path(nid)} for nid in c.ids}
    s.update(joiners=c.joiners, boot_ids=c.boot_ids, boot_ports=c.boot_ports)
    _update_state_pids(t)
    marker_path = os.path.join(t.opts.data_dir, MARKER_FILE)
    marker = read_json(marker_path)
    if marker is not None:
        marker["members"] = _members_record(c)
        write_json_atomic(marker_path, marker)


def _members_record(c: LocalCluster) -> dict:
    return {"nodes": {nid: "%s:%d" % c.addr(nid) for nid in c.ids}, "boot_ids": c.boot_ids,
            "boot_ports": c.boot_ports, "joiners": c.joiners}


def action_add_node(opts) -> int:
    return _membership_action(opts, "add-node")


def action_remove_node(opts) -> int:
    if not opts.node:
        return _fail("--action remove-node needs --node", 2)
    return _membership_action(opts, "remove-node")


def action_replace(opts) -> int:
    if not opts.node:
        return _fail("--action replace needs --node (the node to swap for a fresh one)", 2)
    return _membership_action(opts, "replace")


def action_backup(opts) -> int:
    """A consistent snapshot from the primary: SNAPSHOT makes it write one covering everything it
    applied (committed entries only), then its snapshot.dat is copied and verified."""
    if not opts.to:
        return _fail("--action backup needs --to DIR (a new or empty directory)", 2)
    dest = os.path.abspath(opts.to)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        return _fail(f"--to {opts.to} exists and is not an empty directory; choose a new one", 2)
    try:
        prepare_data_dir(dest, min_free=0, flag="--to")
    except DataDirError as e:
        return _fail(f"--to: {e}", 2)
    t = Target(opts)
    c = t.cluster
    try:
        prim = c.wait_for_single_primary(timeout=opts.timeout)
    except (ClusterError, SplitBrain) as e:
        return _fail(f"no primary to take the backup from: {e}")
    st = c.status(prim) or {}
    if st.get("cluster_id") != t.cluster_id:
        return _fail(f"{prim}'s port answers as cluster {st.get('cluster_id')}, not {t.cluster_id}")
    ans = c.send(prim, "SNAPSHOT", timeout=max(opts.timeout, 60))
    if ans.get("status") != "OK":
        return _fail(f"{prim} refused SNAPSHOT: {ans.get('code')}: {ans.get('message')}")
    index = ans.get("index", 0)
    src = os.path.join(c.data_dir_of(prim), "snapshot.dat")
    out = os.path.join(dest, "snapshot.dat")
    if index == 0:
        write_snapshot_file(out, SnapshotMeta(0, 0, 0, f"{0:016x}"), ())
    else:
        try:
            with open(src, "rb") as f:            # the fd keeps this version even if a newer one lands
                with open(out + ".tmp", "wb") as g:
                    shutil.copyfileobj(f, g, 1 << 20)
                    g.flush()
                    os.fsync(g.fileno())
            os.replace(out + ".tmp", out)
        except OSError as e:
            return _fail(f"cannot copy {src}: {e}")
    try:
        meta = verify_snapshot_file(out)
    except StorageCorruption as e:
        return _fail(f"the copied snapshot does not verify: {e}")
    if meta.last_index < index:
        return _fail(f"the copied snapshot covers index {meta.last_index}, the primary reported {index}; try again")
    write_json_atomic(os.path.join(dest, "backup.json"), {
        "format": "kv-backup", "version": 1, "cluster_id": t.cluster_id, "taken_from": prim,
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta.to_dict()})
    print(f"backup of cluster {t.cluster_id} from primary {prim} at index {meta.last_index} "
          f"(term {meta.last_term}, {meta.count} keys, digest {meta.digest}) written to {dest}")
    return 0


def action_restore(opts) -> int:
    """Seed a NEW cluster from a backup: every node dir gets the snapshot and the term it was taken
    in (so the first election starts past it), with a fresh cluster id; then start as usual."""
    if not opts.from_dir:
        return _fail("--action restore needs --from DIR (made by --action backup)", 2)
    src = os.path.abspath(opts.from_dir)
    info = read_json(os.path.join(src, "backup.json")) if os.path.isdir(src) else None
    if info is None or info.get("format") != "kv-backup":
        return _fail(f"--from {opts.from_dir} is not a backup made by --action backup (no backup.json)", 2)
    try:
        meta = verify_snapshot_file(os.path.join(src, "snapshot.dat"))
    except (OSError, StorageCorruption) as e:
        return _fail(f"the backup in {opts.from_dir} does not verify: {e}")
    if os.path.exists(os.path.join(opts.data_dir, MARKER_FILE)) or any(
            os.path.exists(os.path.join(opts.data_dir, f"node{i}")) for i in range(1, opts.nodes + 1)):
        return _fail(f"--data-dir {opts.data_dir} already holds a cluster; restore seeds a NEW cluster: "
                     f"give an empty --data-dir", 2)
    marker = check_data_dir(opts)
    marker["restored_from"] = {"backup": src, "cluster_id": info.get("cluster_id"),
                               **{k: v for k, v in meta.to_dict().items() if k != "config"}}
    # The snapshot carries the configuration in force when it was taken (the OLD cluster's
    # members and addresses, which a node trusts over its flags): the new cluster gets its own.
    seeded = os.path.join(opts.data_dir, "snapshot.seed")
    snap_meta, items = read_snapshot_file(os.path.join(src, "snapshot.dat"))
    new_meta = dataclasses.replace(snap_meta, config=None if snap_meta.config is None
                                   else {"voters": membership(opts), "learners": {}})
    write_snapshot_file(seeded, new_meta, items)
    for nid in membership(opts):
        ndir = os.path.join(opts.data_dir, nid)
        os.makedirs(ndir)
        shutil.copyfile(seeded, os.path.join(ndir, "snapshot.dat"))
        write_json_atomic(os.path.join(ndir, "raft_state.json"), {"term": meta.last_term, "voted_for": None})
        Identity(ndir, "cluster", marker["cluster_id"], nid, time.strftime("%Y-%m-%dT%H:%M:%S")).save()
    os.unlink(seeded)
    write_json_atomic(os.path.join(opts.data_dir, MARKER_FILE), marker)
    print(f"seeded cluster {marker['cluster_id']} ({opts.nodes} nodes) in {opts.data_dir} from the backup of "
          f"cluster {info.get('cluster_id')} at index {meta.last_index} ({meta.count} keys, digest {meta.digest})")
    return action_start(opts)


ACTIONS = {"start": action_start, "status": action_status, "health": action_health, "stop": action_stop,
           "kill": action_kill, "restart": action_restart, "failover": action_failover,
           "add-node": action_add_node, "remove-node": action_remove_node, "replace": action_replace,
           "backup": action_backup, "restore": action_restore}


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="kv-cluster" if invoked_as() == "kv-cluster" else "cluster_manager.py",
        description="Start, watch, drill and stop a local KV Store cluster (node1 on --base-port with "
                    "--primary, node2 on the next port, ...). Every action except start works from a "
                    "second terminal against the cluster recorded in --data-dir.",
        epilog="Secrets: --requirepass-file / --cluster-secret-file or KV_REQUIREPASS / KV_CLUSTER_SECRET keep them "
               "out of ps; the manager keeps them in <data-dir>/*.secret (mode 0600) and hands them to the nodes "
               "by environment. Exit codes: 0 success (health: healthy), 1 failed or unhealthy (also: no cluster "
               "at DIR), 2 bad usage or refused (port taken, data dir of another cluster, cluster already running).")
    p.add_argument("--action", required=True, choices=list(ACTIONS),
                   help="start: spawn the nodes and watch them (foreground unless --detach); status: table of "
                        "every node; health: exit 0 only with one primary and every node up and in sync; stop: "
                        "graceful, secondaries first; kill: SIGKILL --node; restart: --node, or all one by one; "
                        "failover: planned leadership transfer (to --node, or the most caught-up secondary); "
                        "backup: consistent snapshot from the primary into --to DIR; restore: seed a NEW cluster in "
                        "--data-dir from --from DIR and start it")
    p.add_argument("--node", default=None, help="node id for kill / restart / failover / remove-node / replace, "
                   "or the new id for add-node (default: the next free nodeN)")
    p.add_argument("--nodes", type=at_least(1), default=3, help="number of nodes (default 3)")
    p.add_argument("--base-port", type=cli_port, default=6379, help="port of node1; nodeN gets base-port+N-1 (default 6379)")
    p.add_argument("--host", default="127.0.0.1", help="address the nodes bind and are reached on (default 127.0.0.1)")
    p.add_argument("--data-dir", default="./data", help="cluster directory: one sub-dir per node, state file, logs (default ./data)")
    p.add_argument("--fsync", choices=["always", "everysec", "no"], default="always", help="node WAL fsync policy (default always)")
    p.add_argument("--heartbeat-interval", type=positive(float), default=None, help="seconds (default: the server's)")
    p.add_argument("--election-timeout", type=positive(float), default=None, help="seconds (default: the server's)")
    p.add_argument("--requirepass", default=None, help="clients must AUTH (the manager does); shows in ps: prefer "
                                                       "--requirepass-file or KV_REQUIREPASS")
    p.add_argument("--requirepass-file", default=None, help="read the client password from this file")
    p.add_argument("--cluster-secret", default=None, help="peers must prove this secret; shows in ps: prefer "
                                                          "--cluster-secret-file or KV_CLUSTER_SECRET")
    p.add_argument("--cluster-secret-file", default=None, help="read the cluster secret from this file")
    p.add_argument("--wipe", action="store_true",
                   help="restart --node: move its data dir aside (<dir>.wiped-<time>) and start it empty; the primary "
                        "copies everything back (the recovery for a node with a corrupt WAL)")
    p.add_argument("--to", default=None, help="backup: directory to write the backup to (new or empty)")
    p.add_argument("--from", dest="from_dir", default=None, help="restore: a directory written by --action backup")
    p.add_argument("--log-level", choices=["debug", "info", "warning"], default=None, help="node log level (default: the server's)")
    p.add_argument("--server-arg", action="append", metavar="ARG",
                   help="extra kv_store_server.py argument for every node, e.g. --server-arg=--snapshot-threshold=1000")
    p.add_argument("--detach", action="store_true", help="start: run the cluster in the background and return")
    p.add_argument("--restart-on-failure", action="store_true", help="start: restart a node that dies")
    p.add_argument("--restart-delay", type=non_negative(float), default=0.5, help="seconds before such a restart, doubling on repeated crashes (default 0.5)")
    p.add_argument("--timeout", type=positive(float), default=10.0,
                   help="start: seconds to wait for a primary; stop: seconds before SIGKILL; restart/failover: seconds to "
                        "converge (default 10)")
    p.add_argument("--wait", type=non_negative(float), default=0.0, help="health: keep polling up to this many seconds for a healthy cluster (default 0)")
    p.add_argument("--max-lag", type=non_negative(int), default=0, help="health: entries a node may trail the primary's commit index (default 0)")
    p.add_argument("--refresh", type=positive(float), default=0.5, help="start: seconds between table refreshes (default 0.5)")
    p.add_argument("--json", action="store_true", help="status: print JSON instead of a table")
    p.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set or not a terminal)")
    p.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)   # the detached manager itself
    p.add_argument("--server-script", default=SERVER_SCRIPT, help=argparse.SUPPRESS)  # another node program
    return p


def check_usage(opts) -> None:
    """Everything about the flags that argparse cannot check; raises UsageError / DataDirError."""
    if opts.base_port + opts.nodes - 1 > 65535:
        raise UsageError(f"--base-port {opts.base_port} with --nodes {opts.nodes} runs past port 65535")
    check_host(opts.host)
    if opts.node is not None:
        check_node_id(opts.node, "--node")
    if (opts.heartbeat_interval is not None and opts.election_timeout is not None
            and opts.election_timeout <= 2 * opts.heartbeat_interval):
        raise UsageError(f"--election-timeout ({opts.election_timeout}) must be more than twice "
                         f"--heartbeat-interval ({opts.heartbeat_interval})")
    for flag, attr in (("--wipe", "wipe"), ("--to", "to"), ("--from", "from_dir"), ("--detach", "detach")):
        allowed = {"wipe": ("restart",), "to": ("backup",), "from_dir": ("restore",),
                   "detach": ("start", "restore")}[attr]
        if getattr(opts, attr) and opts.action not in allowed:
            raise UsageError(f"{flag} goes with --action {' / '.join(allowed)}, not {opts.action}")
    opts.requirepass = read_secret("--requirepass", opts.requirepass, opts.requirepass_file, "KV_REQUIREPASS")
    opts.cluster_secret = read_secret("--cluster-secret", opts.cluster_secret, opts.cluster_secret_file,
                                      "KV_CLUSTER_SECRET")
    if opts.action in ("start", "restore") and not opts.supervise:
        opts.data_dir = prepare_data_dir(opts.data_dir)
    elif os.path.exists(opts.data_dir) and not os.path.isdir(opts.data_dir):
        raise UsageError(f"--data-dir {opts.data_dir} is not a directory")


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        check_usage(opts)
    except (UsageError, DataDirError) as e:
        return _fail(str(e), 2)
    if opts.action in ("start", "restore") and not opts.supervise:
        warn = even_size_warning(opts.nodes)
        if warn:
            print(warn, file=sys.stderr)
    try:
        return ACTIONS[opts.action](opts)
    except (ClusterError, SplitBrain, DataDirError) as e:
        return _fail(str(e), 2 if isinstance(e, (PortInUse, DataDirConflict, AlreadyRunning, DataDirError)) else 1)


if __name__ == "__main__":
    sys.exit(main())
