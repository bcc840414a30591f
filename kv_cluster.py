"""The consensus driver of a KV Store node: the seed's ClusterManager thread, made Raft.

Layout:
    Waiter          a client thread waiting for its entry to be applied
    ClusterManager  the one thread that drives kv_raft.RaftCore for a node:
                    inbox -> step/tick -> ready() -> persist (one fsync a batch) -> send -> apply

It works on a KVNode (kv_store_server.py) through its attributes: node_id, peers, lock, core,
store, storage, cluster_secret, snapshot_threshold, apply_committed(), fail_waiters_from(),
fail_all_waiters(), state_changed(), fatal().  kv_store_server re-exports both names.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING

from kv_raft import CANDIDATE, LEADER, PRECANDIDATE, RaftCore
from kv_storage import SnapshotMeta, StorageCorruption, verify_snapshot_file, write_snapshot_file
from kv_transport import PeerLink, SnapshotSender

if TYPE_CHECKING:
    from kv_store_server import KVNode

log = logging.getLogger("kvstore")

INBOX_LIMIT = 10_000   # peer messages waiting for the cluster manager loop


class Waiter:
    """A client thread waiting for its entry to be applied.

    set() is called exactly once, by whoever removed the waiter from KVNode.waiters (that is what
    makes it once).  A pre-acquired lock is the signal: releasing it costs far less than an
    Event on the apply path, which wakes one waiter per applied write."""
    __slots__ = ("index", "term", "result", "error", "done", "_lock")

    def __init__(self, index: int, term: int):
        self.index = index
        self.term = term
        self.result = None
        self.error: tuple[str, str, bool] | None = None   # (code, message, definite)
        self.done = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Publish result/error (assigned before this call) and wake the waiting thread."""
        self.done = True
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout) or self.done


class ClusterManager(threading.Thread):
    """Drives the Raft core for one node.  The only thread that persists, sends and applies.

    Loop: take messages from the inbox -> core.step / core.tick -> core.ready() -> persist hard
    state and entries (one fsync for the whole batch) -> core.persisted() -> send -> apply
    committed entries to the store and wake their waiters.  A leader sends REPLICATE before its own
    fsync (allowed: it counts itself only once persisted), everything else after.
    Hooks: wake() after a proposal; deliver(msg) from peer connections; links[peer].
    """

    def __init__(self, node: "KVNode"):
        super().__init__(name=f"cluster-manager-{node.node_id}", daemon=True)
        self.node = node
        self.core: RaftCore = node.core
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.links: dict[str, PeerLink] = {}
        for pid, info in node.peers.items():
            self.links[pid] = PeerLink(node.node_id, pid, (info.host, info.port), node.cluster_secret,
                                       on_down=self._link_down, on_up=self._link_up,
                                       stop_event=self.stop_event)
        self.snapshot_senders: dict[str, SnapshotSender] = {}
        self.sync_rx: dict | None = None          # an incoming snapshot being received
        self.snapshot_child: int | None = None    # pid of a forked snapshot writer
        self.snapshot_lock = threading.Lock()
        self.snapshot_done = threading.Event()
        self.snapshot_done.set()
        self.last_role = None
        self.last_term = self.core.current_term
        self.last_leader = None
        self.waiting_logged_at = 0.0
        self.started_at = time.monotonic()

    # -- hooks for other threads
    def wake(self) -> None:
        self.inbox.put(None)

    def deliver(self, msg: dict) -> None:
        """Called by peer connection threads.  Past INBOX_LIMIT waiting messages the caller stops
        (and so stops reading its socket: TCP pushes back on the peer) until the loop catches up."""
        while self.inbox.qsize() > INBOX_LIMIT and not self.stop_event.is_set():
            time.sleep(0.001)
        self.inbox.put(msg)

    def _link_down(self, peer: str) -> None:
        self.inbox.put(("down", peer))

    def _link_up(self, peer: str) -> None:
        self.inbox.put(("up", peer))

    def stop(self) -> None:
        self.stop_event.set()
        self.wake()
        for link in self.links.values():
            link.close()

    # -- the loop
    def run(self) -> None:
        for link in self.links.values():
            link.start()
        tick = min(0.01, self.core.heartbeat_interval / 4)
        node = self.node
        while not self.stop_event.is_set():
            items = []
            try:
                items.append(self.inbox.get(timeout=tick))
                while True:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            try:
                self._iterate(items)
            except OSError as e:
                # the disk failed under us: a node that cannot persist must not answer anything
                node.fatal(f"storage failure: {e}")
                return
            except Exception as e:   # a bug: die loudly rather than serve without consensus
                log.exception("%s consensus loop crashed", node.node_id)
                node.fatal(f"consensus loop crashed: {e!r}")
                return
        log.debug("%s cluster manager stopped", node.node_id)

    def _iterate(self, items: list) -> None:
        node = self.node
        core = self.core
        again = True
        while again:
            again = False
            now = time.monotonic()
            with node.lock:
                for it in items:
                    if it is None:
                        continue
                    if isinstance(it, tuple):
                        self._on_link_event(*it)
                    elif it["type"] == "SYNC" and "data" in it:
                        self._on_sync_chunk(it, now)
                    else:
                        core.step(it, now)
                items = ()
                core.tick(now)
                rd = core.ready()
                is_leader = core.role == LEADER
            self._log_changes()
            if rd.empty():
                break
            early = []
            late = rd.messages
            if is_leader and rd.hard_state is None:
                early = [m for m in rd.messages if m["type"] in ("REPLICATE", "HEARTBEAT")]
                late = [m for m in rd.messages if m["type"] not in ("REPLICATE", "HEARTBEAT")]
            self._send(early)
            st = node.storage
            if rd.hard_state is not None:
                st.save_hard_state(*rd.hard_state)
            if rd.truncate_from is not None:
                st.truncate_suffix(rd.truncate_from)
                node.fail_waiters_from(rd.truncate_from)
            if rd.snapshot is not None:
                self._install_snapshot(rd.snapshot)
            if rd.entries:
                st.append(rd.entries)
                st.sync()
                with node.lock:
                    core.persisted(rd.entries[-1].index)
                    again = is_leader   # our own ack may commit something
            self._send(late)
            if rd.committed:
                node.apply_committed(rd.committed)
                self._maybe_snapshot()

    def _send(self, msgs: list) -> None:
        for m in msgs:
            if m["type"] == "SYNC":
                self._start_snapshot_sender(m)
                continue
            link = self.links.get(m["to"])
            if link is not None:
                link.send(m)

    def _on_link_event(self, kind: str, peer: str) -> None:
        """Caller holds node.lock."""
        if kind == "down":
            self.core.report_unreachable(peer)
            log.info("%s lost contact with peer %s", self.node.node_id, peer)
        elif kind == "snapshot_failed":
            self.core.report_snapshot(peer, False)
        else:
            log.info("%s connected to peer %s", self.node.node_id, peer)
            self.core.peer_connected(peer, time.monotonic())

    def _log_changes(self) -> None:
        core = self.core
        node = self.node
        if core.current_term != self.last_term:
            log.info("%s term changed %d -> %d", node.node_id, self.last_term, core.current_term)
            self.last_term = core.current_term
        role = core.role
        if role != self.last_role:
            if role == LEADER:
                log.info("%s became primary at term %d", node.node_id, core.current_term)
            elif role == CANDIDATE:
                log.info("%s started an election at term %d", node.node_id, core.current_term)
            elif role == PRECANDIDATE:
                log.debug("%s pre-vote for term %d", node.node_id, core.current_term + 1)
            elif self.last_role == CANDIDATE:
                log.info("%s lost the election at term %d", node.node_id, core.current_term)
            elif self.last_role == LEADER:
                log.info("%s stepped down at term %d", node.node_id, core.current_term)
                node.fail_all_waiters("NO_QUORUM", "Lost leadership before the write was committed; "
                                      "it may or may not be applied", definite=False)
            self.last_role = role
        if core.leader_id != self.last_leader:
            if core.leader_id and core.leader_id != node.node_id:
                log.info("%s became secondary of %s at term %d", node.node_id, core.leader_id,
                         core.current_term)
            self.last_leader = core.leader_id
        if core.leader_id is None and core.peers:
            now = time.monotonic()
            if now - self.waiting_logged_at > 5.0 and now - self.started_at > 1.0:
                up = [p for p, lk in self.links.items() if lk.connected]
                log.info("%s waiting for its peers: no primary yet (reachable: %s of %s)", node.node_id,
                         ", ".join(up) or "none", ", ".join(self.links))
                self.waiting_logged_at = now
        node.state_changed()

    # -- snapshots
    def _maybe_snapshot(self) -> None:
        node = self.node
        if (self.snapshot_child is None and node.snapshot_threshold > 0
                and node.store.last_applied - self.core.snapshot_index >= node.snapshot_threshold):
            self.take_snapshot()

    def take_snapshot(self, wait: bool = False) -> int:
        """Write the store as of last_applied to a snapshot file in a forked child (the parent
        keeps serving), then install it and compact the log.  With wait=True, return once a
        snapshot covering everything applied at call time is installed.  Returns its index."""
        node = self.node
        want = node.store.last_applied
        for _ in range(2):
            with self.snapshot_lock:
                if self.snapshot_child is None and want > self.core.snapshot_index:
                    self._fork_snapshot()
                done = self.snapshot_done
            if not wait:
                break
            done.wait(timeout=300)
            if self.core.snapshot_index >= want:
                break
        return self.core.snapshot_index

    def _fork_snapshot(self) -> None:
        """Caller holds snapshot_lock.  Lock order: node.lock, then store.lock."""
        node = self.node
        with node.lock, node.store.lock:
            index = node.store.last_applied
            term = self.core.term_at(index)
            meta = SnapshotMeta(index, term, len(node.store), node.store.digest_hex())
            tmp = node.storage.snapshot_path + f".tmp-{index}"
            pid = os.fork()
            if pid == 0:   # child: only this thread exists; close inherited sockets, write, leave
                code = 1
                try:
                    os.closerange(3, 1 << 16)
                    write_snapshot_file(tmp, meta, node.store.items())
                    code = 0
                finally:
                    os._exit(code)
        self.snapshot_child = pid
        self.snapshot_done = threading.Event()
        log.info("%s snapshot started at index %d (%d keys, writer pid %d)", node.node_id, index, meta.count, pid)
        threading.Thread(target=self._reap_snapshot, args=(pid, tmp, meta, self.snapshot_done),
                         daemon=True, name="snapshot-reaper").start()

    def _reap_snapshot(self, pid: int, tmp: str, meta: SnapshotMeta, done: threading.Event) -> None:
        node = self.node
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                log.error("%s snapshot writer failed (exit %d); keeping the log", node.node_id, code)
                return
            if not node.storage.install_snapshot(tmp, meta):
                return   # a newer snapshot (from the primary) got there first
            with node.lock:
                self.core.compacted(meta.last_index, meta.last_term)
            node.storage.compact(meta.last_index)
            log.info("%s snapshot taken at index %d term %d (%d keys)", node.node_id, meta.last_index,
                     meta.last_term, meta.count)
        except OSError as e:
            log.error("%s snapshot at index %d failed: %s", node.node_id, meta.last_index, e)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            with self.snapshot_lock:
                self.snapshot_child = None
            done.set()

    def _start_snapshot_sender(self, m: dict) -> None:
        peer = m["to"]
        if peer in self.snapshot_senders or peer not in self.links:
            return
        path = self.node.storage.snapshot_path
        header = {"type": "SYNC", "from": self.node.node_id, "to": peer, "term": m["term"],
                  "last_index": m["last_index"], "last_term": m["last_term"]}
        log.info("%s sending snapshot at index %d to %s", self.node.node_id, m["last_index"], peer)
        sender = SnapshotSender(self.links[peer], path, header, self.stop_event,
                                on_finish=self._snapshot_sent)
        self.snapshot_senders[peer] = sender
        sender.start()

    def _snapshot_sent(self, peer: str, ok: bool) -> None:
        self.snapshot_senders.pop(peer, None)
        if not ok:
            self.inbox.put(("snapshot_failed", peer))

    def _on_sync_chunk(self, msg: dict, now: float) -> None:
        """A chunk of a snapshot from the leader.  Caller holds node.lock.  The final chunk is
        verified and then handed to the core as a SYNC step."""
        if msg["term"] < self.core.current_term:
            return
        rx = self.sync_rx
        key = (msg["from"], msg["term"], msg["last_index"])
        if msg["offset"] == 0:
            if rx is not None:
                rx["file"].close()
            path = self.node.storage.snapshot_path + ".recv"
            rx = self.sync_rx = {"key": key, "file": open(path, "wb"), "path": path, "offset": 0}
        elif rx is None or rx["key"] != key or rx["offset"] != msg["offset"]:
            return   # out of order (a new transfer will start over)
        data = base64.b64decode(msg["data"])
        rx["file"].write(data)
        rx["offset"] += len(data)
        if not msg["done"]:
            return
        f = rx["file"]
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self.sync_rx = None
        try:
            meta = verify_snapshot_file(rx["path"])
        except StorageCorruption as e:
            log.warning("%s discarded a damaged snapshot from %s: %s", self.node.node_id, msg["from"], e)
            return
        step = {k: v for k, v in msg.items() if k not in ("data", "offset", "done", "size")}
        # the file may be newer than the SYNC that asked for it: the file's own meta is the truth
        step.update(path=rx["path"], last_index=meta.last_index, last_term=meta.last_term)
        self.core.step(step, now)

    def _install_snapshot(self, snap: dict) -> None:
        node = self.node
        path = snap["msg"]["path"]
        meta, items = node.storage.read_snapshot(path)
        items = list(items)     # verifies the checksum before anything is replaced
        if not node.storage.install_snapshot(path, meta):
            raise RuntimeError(f"snapshot at {meta.last_index} from {snap['msg']['from']} is older "
                               "than the installed one, but the core accepted it")
        if snap["reset"]:
            node.storage.reset_log(meta.last_index + 1)
        else:
            node.storage.compact(meta.last_index)
        with node.store.lock:
            node.store.restore(items, meta.last_index)
        log.info("%s snapshot installed at index %d term %d (%d keys) from %s", node.node_id,
                 meta.last_index, meta.last_term, meta.count, snap["msg"]["from"])
