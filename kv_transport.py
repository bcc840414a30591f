"""Peer transport for KV Store: persistent outbound connections between nodes.

Layout:
    handshake_proof()   HMAC proof a peer sends to show it knows --cluster-secret
    encode_message()    Raft message dict -> bytes: one JSON line, then a REPLICATE's entries
    decode_message()    one JSON dict from the wire -> Raft message dict
    PeerLink            one thread per peer: connects, shakes hands, sends queued messages in batches
    SnapshotSender      streams snapshot.dat to one follower as SYNC chunk messages
    SyncReceiver        the follower's side: writes the chunks, verifies the file, yields the step

Wire format (same port as clients, line protocol): every internal message is one JSON object per
line with "type", "from", "to" and "term".  A connection becomes a peer connection with
    -> {"type": "HELLO", "from": "node1", "to": "node2", "addr": "host:port",    (addr: where
        "cluster": "<cluster id>"|null}  node1 listens, so a node that has no configuration yet,
                                      joining, can open its own link back)
    <- {"type": "CHALLENGE", "nonce": "<hex>", "cluster": "<cluster id>"|null}
    -> {"type": "PROOF", "proof": hmac_sha256(secret, nonce|from|to)}
    <- {"type": "WELCOME"}            (or an error line, and the connection is closed)
after which the sender only writes; answers travel on the receiver's own outbound link.
Cluster identity: when both sides know their cluster id and the ids differ, each side refuses
the other (the receiver before its CHALLENGE, the sender on reading it); a side that has no id
yet (a fresh member) learns it from the other and keeps it in its data dir (kv_datadir.Identity).
Refusals and failed handshakes are logged at most once per peer per minute (SparseLog).

A REPLICATE carries its entries after its own line: {"type": "REPLICATE", ..., "n": K} is
followed by K lines, each one entry's payload exactly as the WAL stores it
(ReplicationLog.payload()).  The leader encodes an entry once for its WAL and every follower;
a follower keeps the bytes it read for its own WAL.

Failure detection: a link that was up and breaks, and whose reconnect is then *refused*,
reports on_dead(peer): no process listens on the peer's port (kill -9, crash).  A timeout or an
unreachable host reports nothing beyond on_down: silence is left to the election timeout.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import logging
import os
import select
import socket
import struct
import threading
import time

from kv_storage import ReplicationLog, StorageCorruption, verify_snapshot_file

log = logging.getLogger("kvstore")

INTERNAL_TYPES = frozenset({
    "REPLICATE", "REPLICATE_RESP", "HEARTBEAT", "HEARTBEAT_RESP", "ELECTION", "ELECTION_RESP",
    "SYNC", "SYNC_RESP", "TIMEOUT_NOW",
})
SNAPSHOT_CHUNK = 512 * 1024
MAX_BACKLOG = 64 * 1024 * 1024   # bytes waiting for one peer; past this the link is reset
SEND_TIMEOUT = 5.0               # seconds a blocked write to a peer may take before the link resets


class SparseLog:
    """Log a recurring problem once per key per `period` seconds (a peer retrying a refused
    handshake ten times a second must not flood the log).  Thread-safe."""

    def __init__(self, period: float = 60.0):
        self.period = period
        self._last: dict = {}
        self._lock = threading.Lock()

    def warning(self, key, msg: str, *args) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                return False
            self._last[key] = now
        log.warning(msg, *args)
        return True


class WrongCluster(ConnectionError):
    """The peer belongs to another cluster (its cluster id differs from ours)."""


def handshake_proof(secret: str | None, nonce: str, sender: str, receiver: str) -> str:
    key = (secret or "").encode()
    return hmac.new(key, f"{nonce}|{sender}|{receiver}".encode(), hashlib.sha256).hexdigest()


_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def check_cluster(ident, theirs: str | None, me: str, peer: str, sparse: SparseLog, side: str) -> None:
    """The cluster id rule of the handshake, for either side: raise WrongCluster when both ids are
    known and differ; learn theirs when we have none yet."""
    if ident is None or theirs is None:
        return
    was = ident.cluster_id
    if ident.set_cluster_id(theirs):
        if was is None:
            log.info("%s joined cluster %s (learnt from %s in the handshake)", me, theirs, peer)
        return
    sparse.warning(("cluster", peer), "%s refuses %s %s: it belongs to cluster %s, this node to cluster %s; "
                   "two clusters' members are mixed up: check %s's --peers / --cluster-file and data dir",
                   me, side, peer, theirs, ident.cluster_id, peer)
    raise WrongCluster(f"{peer} belongs to cluster {theirs}, not {ident.cluster_id}")


def encode_message(msg: dict) -> bytes:
    """One internal message as bytes; a REPLICATE's entries follow as one payload line each."""
    if msg["type"] != "REPLICATE":
        return _encode_json(msg).encode() + b"\n"
    entries = msg["entries"]
    head = {k: v for k, v in msg.items() if k != "entries"}
    head["n"] = len(entries)
    parts = [_encode_json(head).encode()]
    parts.extend(e.payload() for e in entries)
    parts.append(b"")
    return b"\n".join(parts)


MAX_ENTRY_LINES = 1 << 16    # entries one REPLICATE may announce


def decode_message(msg: dict) -> dict:
    """Validate the shape of an internal message.  A REPLICATE's "n" (the count of entry lines
    that follow it) is checked; the caller reads those lines with decode_entry().  Raises
    ValueError with a readable reason."""
    t = msg.get("type")
    if t not in INTERNAL_TYPES:
        raise ValueError(f"unknown internal message type {t!r}")
    if not isinstance(msg.get("from"), str) or not isinstance(msg.get("term"), int):
        raise ValueError("internal message needs string 'from' and integer 'term'")
    if t == "REPLICATE":
        n = msg.get("n")
        if type(n) is not int or not 0 <= n <= MAX_ENTRY_LINES:
            raise ValueError(f"REPLICATE needs an entry count 'n' in 0..{MAX_ENTRY_LINES}, got {n!r:.40}")
    return msg


def decode_entry(line: bytes) -> ReplicationLog:
    """One entry line of a REPLICATE; raises ValueError on a malformed one."""
    return ReplicationLog.from_payload(line)


class PeerLink(threading.Thread):
    """Owns the one outbound connection to a peer.

    Callers use send(msg) / send_many(msgs) (never block) and `connected`.  The caller's thread
    (the cluster manager's, on the hot path) writes the encoded batch straight to the socket with
    a non-blocking send; only what the socket does not take at once goes to a backlog that this
    thread flushes, and while a backlog exists later batches queue behind it, so the byte stream
    keeps its order.  This thread also connects, shakes hands, and notices a peer that closed
    the connection.  Messages sent while the link is down are dropped (Raft re-sends what
    matters); on_down(peer) is called so the core can fall back to probing, and on_dead(peer)
    when the first reconnect after a break is refused (the peer's process is gone).
    Invariant: at most MAX_BACKLOG bytes wait; a peer that cannot keep up is reset.
    """

    def __init__(self, node_id: str, peer_id: str, addr: tuple[str, int], secret: str | None,
                 on_down, on_up, stop_event: threading.Event, on_dead=None, self_addr: str | None = None,
                 identity=None, sparse_log: SparseLog | None = None):
        super().__init__(name=f"peer-{peer_id}", daemon=True)
        self.node_id = node_id
        self.peer_id = peer_id
        self.addr = addr
        self.secret = secret
        self.identity = identity            # kv_datadir.Identity or None (no cluster id checks)
        self.sparse = sparse_log or SparseLog()
        self.on_down = on_down
        self.on_up = on_up
        self.on_dead = on_dead
        self.self_addr = self_addr
        self.stop_event = stop_event
        self.connected = False
        self.sock: socket.socket | None = None
        self._failures = 0
        self._cv = threading.Condition(threading.Lock())   # guards everything below
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._flushing = False      # this thread is writing a taken backlog outside the lock
        self._broken: str | None = None
        self._closed = False     # close(): this link ends for good (stop, or the peer left the cluster)

    def send(self, msg: dict) -> None:
        self.send_many((msg,))

    def send_many(self, msgs) -> None:
        """Encode msgs and write them as one chunk, never blocking the caller."""
        if not self.connected:
            return
        data = b"".join([encode_message(m) for m in msgs])
        with self._cv:
            sock = self.sock
            if sock is None or self._broken is not None:
                return
            if self._backlog or self._flushing:
                self._queue(data)
                return
            try:
                n = sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self._broken = f"send failed: {e}"
                self._cv.notify()
                return
            if n < len(data):
                self._queue(data[n:] if n else data)

    def _queue(self, data: bytes) -> None:
        """Caller holds _cv."""
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        if self._backlog_bytes > MAX_BACKLOG:
            self._broken = f"{self.peer_id} is not keeping up ({self._backlog_bytes} bytes waiting)"
        self._cv.notify()

    def backlog_bytes(self) -> int:
        return self._backlog_bytes

    def close(self) -> None:
        """End the link for good (the node stops, or the peer left the configuration)."""
        self._closed = True
        with self._cv:
            self._broken = "closing"
            self._cv.notify()
        s = self.sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass   # already closed by the peer

    def _connect(self) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=1.0)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        ident = self.identity
        try:
            hello = {"type": "HELLO", "from": self.node_id, "to": self.peer_id,
                     "cluster": ident.cluster_id if ident is not None else None}
            if self.self_addr:
                hello["addr"] = self.self_addr
            s.sendall(json.dumps(hello).encode() + b"\n")
            ch = json.loads(f.readline() or b"{}")
            if ch.get("type") != "CHALLENGE":
                self._refused(ch)
            check_cluster(ident, ch.get("cluster"), self.node_id, self.peer_id, self.sparse, "peer")
            proof = handshake_proof(self.secret, ch["nonce"], self.node_id, self.peer_id)
            s.sendall(json.dumps({"type": "PROOF", "proof": proof}).encode() + b"\n")
            ok = json.loads(f.readline() or b"{}")
            if ok.get("type") != "WELCOME":
                self._refused(ok)
        except BaseException:
            s.close()
            raise
        finally:
            f.close()
        # Blocking from here on (a timeout would add a poll() before every send); a write that
        # cannot complete within SEND_TIMEOUT fails instead of hanging (SO_SNDTIMEO).
        s.settimeout(None)
        sec = int(SEND_TIMEOUT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                     struct.pack("ll", sec, int((SEND_TIMEOUT - sec) * 1e6)))
        return s

    def _refused(self, answer: dict):
        """Log (once a minute) why the peer refused our handshake, saying which side to check."""
        why = answer.get("message", answer)
        if answer.get("reason") == "secret":
            self.sparse.warning(("secret", self.peer_id),
                                "%s: peer %s at %s:%s refused this node's cluster secret; check --cluster-secret"
                                "(-file) / KV_CLUSTER_SECRET on %s and on %s: they differ (if %s's other peers "
                                "connect to it, the wrong one is this node's)", self.node_id, self.peer_id,
                                *self.addr, self.node_id, self.peer_id, self.peer_id)
        else:
            self.sparse.warning(("refused", self.peer_id), "%s: peer %s at %s:%s refused the handshake: %s",
                                self.node_id, self.peer_id, *self.addr, why)
        raise ConnectionError(f"handshake refused: {why}")

    def run(self) -> None:
        just_broke = False
        while not self.stop_event.is_set() and not self._closed:
            try:
                sock = self._connect()
            except (OSError, ValueError) as e:
                self._failures += 1
                if self._failures == 1:
                    log.debug("%s cannot reach %s at %s:%s: %s", self.node_id, self.peer_id, *self.addr, e)
                if just_broke and self.on_dead is not None and \
                        isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
                    self.on_dead(self.peer_id)
                just_broke = False
                self.stop_event.wait(min(0.02 * self._failures, 0.1))
                continue
            just_broke = False
            self._failures = 0
            with self._cv:
                self.sock = sock
                self._broken = None
            self.connected = True
            self.on_up(self.peer_id)
            try:
                self._pump(sock)
            except OSError as e:
                log.debug("%s link to %s broke: %s", self.node_id, self.peer_id, e)
            finally:
                self.connected = False
                with self._cv:
                    self.sock = None
                    self._backlog.clear()
                    self._backlog_bytes = 0
                    self._flushing = False
                try:
                    sock.close()
                except OSError:
                    pass   # closing a broken socket
                if not self.stop_event.is_set() and not self._closed:
                    self.on_down(self.peer_id)
                    just_broke = True

    def _pump(self, sock: socket.socket) -> None:
        """Flush the backlog as it appears; between batches, notice a peer that closed."""
        cv = self._cv
        while not self.stop_event.is_set():
            with cv:
                if not self._backlog and self._broken is None:
                    cv.wait(0.05)
                if self._broken is not None:
                    if self._broken == "closing":
                        return
                    raise ConnectionError(self._broken)
                if not self._backlog:
                    idle = True
                else:
                    idle = False
                    data = b"".join(self._backlog)
                    self._backlog.clear()
                    self._backlog_bytes = 0
                    self._flushing = True
            if idle:
                # The peer never writes on this connection after WELCOME, so readable means it
                # closed (e.g. the process died): notice now, not when an election message is lost.
                if select.select([sock], [], [], 0)[0] and not sock.recv(1, socket.MSG_PEEK):
                    raise ConnectionError(f"{self.peer_id} closed the connection")
                continue
            try:
                sock.sendall(data)
            finally:
                with cv:
                    self._flushing = False


class SnapshotSender(threading.Thread):
    """Streams one snapshot file to one follower as SYNC chunks, the last with done=True, then
    calls on_finish(peer, ok).  The open file descriptor keeps the data valid even if a newer
    snapshot replaces the file."""

    def __init__(self, link: PeerLink, path: str, header: dict, stop_event: threading.Event, on_finish):
        super().__init__(name=f"sync-{link.peer_id}", daemon=True)
        self.link = link
        self.path = path
        self.header = header
        self.stop_event = stop_event
        self.on_finish = on_finish

    def run(self) -> None:
        ok = False
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                offset = 0
                while not self.stop_event.is_set():
                    while self.link.backlog_bytes() > 4 * SNAPSHOT_CHUNK and not self.stop_event.is_set():
                        time.sleep(0.005)   # back-pressure: let the link drain before the next chunk
                    if not self.link.connected:
                        return
                    data = f.read(SNAPSHOT_CHUNK)
                    done = offset + len(data) >= size
                    msg = dict(self.header)
                    msg.update(offset=offset, data=base64.b64encode(data).decode(), done=done, size=size)
                    self.link.send(msg)
                    offset += len(data)
                    if done:
                        ok = True
                        return
        except OSError as e:
            log.warning("%s could not stream snapshot to %s: %s", self.header["from"], self.link.peer_id, e)
        finally:
            self.on_finish(self.link.peer_id, ok)


class SyncReceiver:
    """A follower's half of a snapshot transfer: SYNC chunks in order into `path`, then a
    verified file.  Manager thread only.  A chunk out of order, from another transfer or of an
    older term is ignored (the leader starts over)."""

    def __init__(self, path: str):
        self.path = path
        self._key = None
        self._file = None
        self._offset = 0

    def chunk(self, msg: dict, current_term: int) -> dict | None:
        """Take one SYNC chunk; returns the SYNC step for the core once the whole file arrived
        and verified (its own meta is the truth: it may be newer than the SYNC that asked)."""
        if msg["term"] < current_term:
            return None
        key = (msg["from"], msg["term"], msg["last_index"])
        if msg["offset"] == 0:
            if self._file is not None:
                self._file.close()
            self._file = open(self.path, "wb")
            self._key, self._offset = key, 0
        elif self._file is None or self._key != key or self._offset != msg["offset"]:
            return None
        data = base64.b64decode(msg["data"])
        self._file.write(data)
        self._offset += len(data)
        if not msg["done"]:
            return None
        f, self._file = self._file, None
        f.flush()
        os.fsync(f.fileno())
        f.close()
        try:
            meta = verify_snapshot_file(self.path)
        except StorageCorruption as e:
            log.warning("discarded a damaged snapshot from %s: %s", msg["from"], e)
            return None
        step = {k: v for k, v in msg.items() if k not in ("data", "offset", "done", "size")}
        step.update(path=self.path, last_index=meta.last_index, last_term=meta.last_term,
                    config=meta.config)
        return step
