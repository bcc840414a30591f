"""kv_datadir.py: what a node's data directory is, apart from the log itself.

kv_storage owns the WAL, the snapshot and the term/vote record; this module owns the rules that
keep an operator from pointing the wrong process at a data dir:

    DataDirError      a refusal; the message says what is wrong and what to do (exit code 2)
    prepare()         validate a data dir path (parent exists, is a directory, writable, not full)
                      and create it
    DataDirLock       an exclusive flock on <dir>/node.lock for the node's whole life; a second
                      process is refused with the holder's PID
    Identity          <dir>/identity.json: standalone or cluster, the cluster id, the node id
    read_secret()     a secret from a file or an environment variable (never from argv)

Files (next to kv_storage's):
    node.lock         holds the PID of the node that owns the dir (locked with flock(LOCK_EX);
                      the kernel releases it when that process dies, however it dies)
    identity.json     {"mode": "standalone"|"cluster", "cluster_id": str|null, "node_id": str,
                       "created": "..."}; written atomically (temp, fsync, rename, fsync dir)

Why the rules are sound: two processes appending to one WAL corrupt it (each has its own idea
of the end of the file), so the lock is taken before the log is opened and held until exit.  A
standalone node commits on its own: its log is not a cluster member's log, and a cluster member
that booted from it (or the reverse) would carry entries no majority ever held, which Raft can
then silently overwrite.  Hence the mode is fixed when the dir is first used.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
import time
import uuid

__all__ = ["DataDirError", "prepare", "DataDirLock", "Identity", "read_secret", "new_cluster_id",
           "LOCK_FILE", "IDENTITY_FILE", "MIN_FREE_BYTES"]

LOCK_FILE = "node.lock"
IDENTITY_FILE = "identity.json"
MIN_FREE_BYTES = 1024 * 1024     # below this a full disk is all but certain: refuse at start-up, clearly


class DataDirError(Exception):
    """A data dir cannot be used; the message says why and what to do."""


def new_cluster_id() -> str:
    return uuid.uuid4().hex[:16]


def prepare(path: str, min_free: int = MIN_FREE_BYTES, flag: str = "--data-dir") -> str:
    """Check that `path` can be a node's data dir and create it; returns its absolute path.
    Raises DataDirError for a missing parent, a path that is not a directory, a dir this user
    cannot write, or a file system with less than min_free bytes available (the messages name
    `flag`, the option that gave the path)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataDirError(f"data dir {path} is not a directory; give {flag} a directory")
    if not os.path.exists(path):
        if not os.path.isdir(parent):
            what = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise DataDirError(f"data dir {path}: its parent {parent} {what}; create it first or "
                               f"choose another {flag}")
        try:
            os.mkdir(path)
        except FileExistsError:
            pass   # created by someone else just now: checked below like any existing dir
        except OSError as e:
            raise DataDirError(f"cannot create data dir {path}: {e.strerror}") from None
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    try:                       # os.access() says yes to root and knows nothing of read-only mounts
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataDirError(f"data dir {path} is not writable ({e.strerror}) by this user (uid {os.getuid()}); "
                           f"fix its permissions or choose another {flag}") from None
    try:
        free = shutil.disk_usage(path).free
    except OSError as e:
        raise DataDirError(f"cannot check free space of data dir {path}: {e.strerror}") from None
    if free < min_free:
        raise DataDirError(f"data dir {path} is on a full file system ({free // 1024} KiB free, "
                           f"at least {min_free // (1024 * 1024)} MiB needed); free space or move the dir")
    return path


class DataDirLock:
    """An exclusive flock on <dir>/<name> (node.lock for a node; cluster_manager locks its cluster
    dir the same way with manager.lock).  try_acquire() says whether it got the lock; acquire()
    raises DataDirError naming the PID of the holder.  Keep the object alive while the lock must
    hold: it goes with the descriptor (release() or process exit, however the process dies)."""

    def __init__(self, data_dir: str, name: str = LOCK_FILE):
        self.path = os.path.join(data_dir, name)
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise DataDirError(f"cannot open lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirError(f"cannot lock {self.path}: {e.strerror}") from None
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def acquire(self) -> None:
        if not self.try_acquire():
            raise DataDirError(
                f"data dir {os.path.dirname(self.path)} is in use by another node process "
                f"(pid {self.holder()}); two processes on one data dir corrupt it. Stop that node first, "
                f"or give this one its own --data-dir")

    def holder(self) -> str:
        """The PID written by the process that holds (or last held) the lock, or '?'."""
        try:
            with open(self.path) as f:
                return f.read().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_data(data_dir: str) -> bool:
    return any(n.startswith("wal-") or n in ("snapshot.dat", "raft_state.json") for n in os.listdir(data_dir))


class Identity:
    """What a data dir belongs to: mode "standalone" or "cluster", the cluster's id (None while
    a fresh cluster member has not learnt it yet), and the node id.

    Invariants: the mode never changes once written; a cluster id, once set, never changes
    (set_cluster_id refuses another one).  Callers use open(), cluster_id, set_cluster_id()."""

    def __init__(self, data_dir: str, mode: str, cluster_id: str | None, node_id: str, created: str):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, IDENTITY_FILE)
        self.mode = mode
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.created = created
        self._lock = threading.Lock()

    @classmethod
    def read(cls, data_dir: str) -> "Identity | None":
        path = os.path.join(data_dir, IDENTITY_FILE)
        try:
            with open(path) as f:
                d = json.load(f)
            mode = d["mode"]
            if mode not in ("standalone", "cluster"):
                raise ValueError(f"unknown mode {mode!r}")
            return cls(data_dir, mode, d.get("cluster_id"), d.get("node_id", "?"), d.get("created", "?"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataDirError(f"cannot read {path}: {e}; if the dir holds no data you need, move it "
                               f"away and start the node empty") from None

    @classmethod
    def open(cls, data_dir: str, mode: str, node_id: str, cluster_id: str | None = None,
             bootstrap: bool = False) -> "Identity":
        """The identity of data_dir for a node starting in `mode` ("standalone" or "cluster").
        A dir without identity.json gets one now (with cluster_id, or a new id when bootstrap is
        set and it holds no data yet).  Raises DataDirError when the dir belongs to the other mode
        or to another cluster than cluster_id."""
        ident = cls.read(data_dir)
        if ident is None:
            if mode == "cluster" and cluster_id is None and bootstrap and not _has_data(data_dir):
                cluster_id = new_cluster_id()
            ident = cls(data_dir, mode, cluster_id if mode == "cluster" else None, node_id,
                        time.strftime("%Y-%m-%dT%H:%M:%S"))
            ident.save()
            return ident
        if ident.mode != mode:
            if ident.mode == "standalone":
                raise DataDirError(
                    f"data dir {data_dir} holds a standalone node's data; a cluster member must not start "
                    f"from it (its writes were never replicated). Give this node another --data-dir; to "
                    f"use that data, run it with --standalone, or back it up and restore it into a new "
                    f"cluster (cluster_manager.py --action restore)")
            raise DataDirError(
                f"data dir {data_dir} belongs to cluster {ident.cluster_id or '(id not learnt yet)'} "
                f"(node {ident.node_id}); --standalone must not start from it (a standalone write there "
                f"would fork the cluster's log). Run --standalone with its own --data-dir "
                f"(default ./data/standalone), or start this node as the cluster member it is")
        if cluster_id is not None and ident.cluster_id not in (None, cluster_id):
            raise DataDirError(
                f"data dir {data_dir} belongs to cluster {ident.cluster_id}, not to cluster {cluster_id}; "
                f"use this cluster's own data dir for {node_id}, or move {data_dir} away to join "
                f"cluster {cluster_id} empty")
        if cluster_id is not None and ident.cluster_id is None:
            ident.set_cluster_id(cluster_id)
        return ident

    def set_cluster_id(self, cluster_id: str) -> bool:
        """Learn the cluster id (once; thread-safe).  True when it is now cluster_id; False when
        the dir already belongs to another cluster."""
        with self._lock:
            if self.cluster_id == cluster_id:
                return True
            if self.cluster_id is not None:
                return False
            self.save(cluster_id)
            self.cluster_id = cluster_id
            return True

    def save(self, cluster_id: str | None = None) -> None:
        _write_json_atomic(self.path, {"mode": self.mode, "cluster_id": cluster_id or self.cluster_id,
                                       "node_id": self.node_id, "created": self.created})


def read_secret(what: str, value: str | None, path: str | None, env: str) -> str | None:
    """The secret for `what` from --X-file `path`, else from the environment variable `env`,
    else `value` (the plain flag, which ps shows: kept for compatibility).  A file's trailing
    newline is dropped.  Raises DataDirError (usage) for an unreadable or empty file, or when
    more than one source is given."""
    sources = [n for n, v in (("the flag", value), ("the file", path)) if v is not None]
    if len(sources) > 1:
        raise DataDirError(f"{what}: give the secret either on the command line or in a file, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().rstrip("\r\n")
        except OSError as e:
            raise DataDirError(f"cannot read the {what} file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise DataDirError(f"the {what} file {path} is not UTF-8 text") from None
        if not secret:
            raise DataDirError(f"the {what} file {path} is empty")
        return secret
    if value is not None:
        if not value:
            raise DataDirError(f"{what}: the secret is empty")
        return value
    secret = os.environ.get(env)
    return secret if secret else None
