"""KVNode and ClusterManager built in one process, on a fake transport.

The nodes here are the real thing - KVNode (recovery, facade), ClusterManager (the loop, the
Proposals, handle_ready), RaftCore, LogStorage on real files with fsync, KeyValueStore - with
only the peer links replaced: FakeNet's links carry every message through the real wire
encoding (kv_transport.encode_message, then decode_message/decode_entry as the receiving
handler does) into the peer's deliver().  That exercises the node's middle without sockets,
and lets a test kill a node's "process", cut links and watch the Proposals answer.

    net = FakeNet(tmp_path, ["n1", "n2", "n3"]); net.start()
    p = net.wait_primary(); net.nodes[p].write("SET", "k", 1, "json")
    net.crash(p)            # its links drop and its port "refuses": peers see it dead
    net.cut(a, b)           # silence both ways (no refusal)
"""

from __future__ import annotations

import json
import threading

import pytest

import kv_store_server as S
from kv_localcluster import wait_until as lc_wait_until
from kv_protocol import CommandError
from kv_transport import decode_entry, decode_message, encode_message


def wait_until(pred, timeout: float, what: str):
    """kv_localcluster.wait_until, polling every 5 ms (in-process nodes answer at once)."""
    return lc_wait_until(pred, timeout, what, interval=0.005)


class FakeNet:
    """In-process nodes whose peer links are FakeLinks.  Verbs: start, crash, cut, heal,
    wait_primary, digests."""

    def __init__(self, tmp_path, ids, election_timeout: float = 0.3):
        self.ids = list(ids)
        self.tmp = tmp_path
        self.et = election_timeout
        self.nodes: dict[str, S.KVNode] = {}
        self.links: list[FakeLink] = []
        self.dead: set[str] = set()
        self.cuts: set[frozenset] = set()
        self.fatal_errors: list[str] = []

    def _args(self, nid: str, first: bool):
        peers = ",".join(f"{p}=127.0.0.1:{7000 + i}" for i, p in enumerate(self.ids) if p != nid)
        argv = ["--node-id", nid, "--port", str(7000 + self.ids.index(nid)), "--peers", peers,
                "--data-dir", str(self.tmp / nid), "--election-timeout", str(self.et),
                "--heartbeat-interval", "0.03", "--request-timeout", "2"]
        return S.build_parser().parse_args(argv + (["--primary"] if first else []))

    def boot(self, nid: str, first: bool = False) -> S.KVNode:
        args = self._args(nid, first)
        (self.tmp / nid).mkdir(exist_ok=True)
        members = S.parse_members(args)
        args.port = members[nid].port
        node = S.KVNode(args, members, link_factory=lambda *a, **kw: FakeLink(self, *a, **kw))
        node.fatal = self._fatal   # in-process: a fatal error fails the test, not the interpreter
        self.nodes[nid] = node
        self.dead.discard(nid)
        node.start()
        return node

    def _fatal(self, why: str) -> None:
        self.fatal_errors.append(why)

    def start(self) -> "FakeNet":
        for i, nid in enumerate(self.ids):
            self.boot(nid, first=(i == 0))
        return self

    def crash(self, nid: str) -> None:
        """The node's process is gone: its loop stops, peers' links to it break and refuse."""
        self.dead.add(nid)
        node = self.nodes[nid]
        node.shutdown(transfer=False)   # its loop stops and its files close (the facade's stop)
        for link in self.links:
            if link.peer_id == nid and link.connected and link.owner not in self.dead:
                link.down(dead=True)

    def cut(self, a: str, b: str) -> None:
        self.cuts.add(frozenset((a, b)))

    def heal(self) -> None:
        self.cuts.clear()

    def reachable(self, a: str, b: str) -> bool:
        return a in self.nodes and b in self.nodes and a not in self.dead and b not in self.dead \
            and frozenset((a, b)) not in self.cuts

    def primary(self, among=None):
        ps = [n for n in (among or self.ids) if n not in self.dead and self.nodes[n].role == "primary"]
        return ps[0] if len(ps) == 1 else None

    def wait_primary(self, timeout: float = 10.0, among=None) -> str:
        return wait_until(lambda: self.primary(among), timeout, "a single primary")

    def digests(self, ids=None) -> dict:
        return {n: (self.nodes[n].status()["last_applied"], self.nodes[n].status()["digest"])
                for n in (ids or self.ids) if n not in self.dead}

    def stop(self) -> None:
        assert not self.fatal_errors, self.fatal_errors
        for nid, node in self.nodes.items():
            if nid not in self.dead:
                node.shutdown(transfer=False)


class FakeLink:
    """kv_transport.PeerLink's interface over FakeNet: each batch goes through the real wire
    encoding and into the peer's deliver(), unless the link is cut or an end is dead."""

    def __init__(self, net: FakeNet, node_id, peer_id, addr, secret, *, on_down, on_up, on_dead, stop_event,
                 self_addr=None):
        self.net, self.owner, self.peer_id = net, node_id, peer_id
        self.on_down, self.on_up, self.on_dead = on_down, on_up, on_dead
        self.stop_event = stop_event
        self.connected = False
        net.links.append(self)

    def start(self) -> None:
        threading.Thread(target=self._connect_loop, daemon=True).start()

    def _connect_loop(self) -> None:
        while not self.stop_event.is_set():
            if not self.connected and self.net.reachable(self.owner, self.peer_id):
                self.connected = True
                self.on_up(self.peer_id)
            self.stop_event.wait(0.02)

    def down(self, dead: bool) -> None:
        self.connected = False
        self.on_down(self.peer_id)
        if dead:
            self.on_dead(self.peer_id)

    def send(self, msg) -> None:
        self.send_many([msg])

    def send_many(self, msgs) -> None:
        if not self.connected or not self.net.reachable(self.owner, self.peer_id):
            return
        target = self.net.nodes[self.peer_id]
        for m in msgs:
            lines = encode_message(m).split(b"\n")
            msg = decode_message(json.loads(lines[0]))
            if msg["type"] == "REPLICATE":
                msg["entries"] = [decode_entry(line) for line in lines[1:1 + msg["n"]]]
            target.deliver(msg)

    def backlog_bytes(self) -> int:
        return 0

    def close(self) -> None:
        self.connected = False


@pytest.fixture
def net(tmp_path):
    n = FakeNet(tmp_path, ["n1", "n2", "n3"]).start()
    yield n
    n.stop()


def test_writes_replicate_to_every_state_machine(net):
    """A write answered OK is applied on every node: equal last_applied and digest."""
    p = net.wait_primary()
    node = net.nodes[p]
    for i in range(50):
        assert node.write("SET", f"k{i}", i, "json") is True
    assert node.write("DEL", "k0", None, "json") is True
    assert node.get("k1") == ("json", 1) and node.get("k0") is None
    want = node.status()["last_applied"]
    wait_until(lambda: len(set(net.digests().values())) == 1 and
               all(a >= want for a, _ in net.digests().values()), 5, "every node at the same state")


def test_secondary_refuses_with_a_hint_and_reads_need_the_lease(net):
    p = net.wait_primary()
    other = next(n for n in net.ids if n != p)
    wait_until(lambda: net.nodes[other].status()["primary"] == p, 5, f"{other} to learn the primary")
    with pytest.raises(CommandError) as e:
        net.nodes[other].write("SET", "x", 1, "json")
    assert e.value.code == "NOT_PRIMARY" and e.value.definite and e.value.fields["primary"] == p
    with pytest.raises(CommandError) as e:
        net.nodes[other].get("x")
    assert e.value.code == "NOT_PRIMARY"


def test_a_dead_primary_is_replaced_and_nothing_acknowledged_is_lost(net):
    p = net.wait_primary()
    acked = [f"k{i}" for i in range(30) if net.nodes[p].write("SET", f"k{i}", i, "json")]
    net.crash(p)
    q = net.wait_primary(timeout=5, among=[n for n in net.ids if n != p])
    node = net.nodes[q]
    for k in acked:
        assert node.get(k) == ("json", int(k[1:]))
    assert node.write("SET", "after", 1, "json") is True


def test_direct_answers_are_delivered_once_and_a_cut_primary_answers_indefinitely(net):
    """Proposals with on_done: the committing thread calls it exactly once with the outcome.
    A primary cut off from both peers cannot commit: its pending write is answered with an
    indefinite error (NO_QUORUM on step-down, or TIMEOUT), never OK."""
    p = net.wait_primary()
    node = net.nodes[p]
    calls = []
    done = threading.Event()

    def on_done(w):
        try:
            calls.append(("ok", node.outcome(w)))
        except CommandError as e:
            calls.append((e.code, e.definite))
        w.set()
        done.set()
    node.submit("SET", "d", 1, "json", on_done)
    assert done.wait(5) and calls == [("ok", True)]
    for o in net.ids:
        if o != p:
            net.cut(p, o)
    calls.clear()
    done.clear()
    try:
        node.submit("SET", "lost?", 1, "json", on_done)
    except CommandError as e:   # it may already have stepped down
        assert e.code in ("NO_QUORUM", "NOT_PRIMARY") and e.definite
        return
    assert done.wait(10), "the pending write was never answered"
    assert len(calls) == 1 and calls[0][0] in ("NO_QUORUM", "TIMEOUT") and calls[0][1] is False, calls


def test_restart_recovers_from_disk(net, tmp_path):
    p = net.wait_primary()
    for i in range(20):
        net.nodes[p].write("SET", f"r{i}", i, "json")
    want = net.nodes[p].status()["digest"]
    wait_until(lambda: {d for _, d in net.digests().values()} == {want}, 5, "replication")
    victim = next(n for n in net.ids if n != p)
    net.crash(victim)
    node = net.boot(victim)
    wait_until(lambda: node.status()["digest"] == want, 5, f"{victim} to recover its state from disk")


@pytest.fixture
def served(tmp_path):
    """A standalone KVNode with its TCPServer in this process, on a port the OS picks."""
    args = S.build_parser().parse_args(["--standalone", "--data-dir", str(tmp_path / "sa"), "--port", "0"])
    (tmp_path / "sa").mkdir()
    members = S.parse_members(args)
    node = S.KVNode(args, members)
    node.start()
    server = S.TCPServer(node)
    node.server = server
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    wait_until(lambda: node.role == "primary", 5, "the standalone node to lead")
    yield node, server.server_address
    server.shutdown()
    server.server_close()
    node.shutdown(transfer=False)


def _read_replies(sock, n: int) -> list[bytes]:
    buf = b""
    while buf.count(b"\r\n") < n:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buf += chunk
    return buf.split(b"\r\n")[:n]


def test_answers_keep_request_order_when_a_write_is_answered_by_the_manager(served):
    """A lone SET is answered by the committing thread (answer_directly); a GET sent right
    behind it, before its answer, must still be answered after it, with the new value.
    Sent as two writes, the pair sometimes arrives together (the pipelined path) and
    sometimes apart (the direct path): both must keep the order."""
    node, addr = served
    import socket
    with socket.create_connection(addr, timeout=5) as s:
        for i in range(300):
            v = b"v%d" % i
            s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%b\r\n" % (len(v), v))
            s.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            got = _read_replies(s, 3)
            assert got == [b"+OK", b"$%d" % len(v), v], (i, got)


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def _answer(sock, req: bytes) -> bytes:
    """Send one request and read its one answer (simple, error, null or a bulk string)."""
    sock.sendall(req)
    buf = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buf += chunk
        if buf[:1] == b"$" and buf[:3] != b"$-1":
            n = int(buf[1:buf.index(b"\r\n")])
            if len(buf) >= buf.index(b"\r\n") + 2 + n + 2:
                return buf
        elif buf.endswith(b"\r\n"):
            return buf


def test_the_get_fast_path_answers_as_the_general_path_does(served, monkeypatch):
    """GET in the spellings clients send (GET, get) is answered by ConnectionHandler._fast_get
    without building a command; any other spelling (gEt) takes the general path.  Both must
    give the same bytes and move the same counters: hit, miss, a JSON value, RESP3's null,
    inside MULTI, and before AUTH."""
    import socket
    import kv_protocol
    node, addr = served
    parsed = []          # the general path parses every request into a command object
    parse_resp = kv_protocol.parse_resp

    def counting(args):
        parsed.append(args[0])
        return parse_resp(args)
    monkeypatch.setattr(kv_protocol, "parse_resp", counting)
    node.write("SET", "b", b"\x00bytes\xff", "bytes")
    node.write("SET", "j", {"x": [1, 2]}, "json")
    node.write("SET", "s", "caf\u00e9", "json")

    def hits_misses():
        s = node.stats.totals()
        return s["keyspace_hits"], s["keyspace_misses"]

    with socket.create_connection(addr, timeout=5) as s:
        for key in (b"b", b"j", b"s", b"missing"):
            before = hits_misses()
            fast = _answer(s, _resp(b"GET", key))
            mid = hits_misses()
            slow = _answer(s, _resp(b"gEt", key))
            after = hits_misses()
            assert fast == slow, key
            assert [m - b for m, b in zip(mid, before)] == [a - m for a, m in zip(after, mid)], key
        assert parsed == [b"gEt"] * 4, f"GET must take the fast path, gEt the general one: {parsed}"
        assert _answer(s, _resp(b"get", b"b")) == b"$7\r\n\x00bytes\xff\r\n"
        assert _answer(s, _resp(b"GET", b"j")) == b'$13\r\n{"x": [1, 2]}\r\n'
        assert _answer(s, _resp(b"HELLO", b"3"))[:1] == b"%"
        assert _answer(s, _resp(b"GET", b"missing")) == _answer(s, _resp(b"gEt", b"missing")) == b"_\r\n"
        assert _answer(s, _resp(b"MULTI")) == b"+OK\r\n"
        assert _answer(s, _resp(b"GET", b"b")) == _answer(s, _resp(b"gEt", b"b")) == b"+QUEUED\r\n"
        assert _answer(s, _resp(b"DISCARD")) == b"+OK\r\n"
    node.config.requirepass = "pw"
    with socket.create_connection(addr, timeout=5) as s:
        fast, slow = _answer(s, _resp(b"GET", b"b")), _answer(s, _resp(b"gEt", b"b"))
        assert fast == slow and fast.startswith(b"-NOAUTH"), (fast, slow)
        assert _answer(s, _resp(b"AUTH", b"pw")) == b"+OK\r\n"
        assert _answer(s, _resp(b"GET", b"b")) == b"$7\r\n\x00bytes\xff\r\n"


def _masks() -> set:
    """The CPU masks of this process's threads."""
    import os
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            out.add(frozenset(os.sched_getaffinity(int(tid))))
        except ProcessLookupError:
            pass
    return out


def test_cpu_affinity_confines_every_thread_to_one_cpu_and_gives_them_back():
    """kv_cluster.CpuAffinity (--primary-cpu): lead() puts every thread of the process, and the
    threads started after it, on one CPU; follow() restores the mask the process started with.
    "off" and a single-CPU process never touch it."""
    import os
    from kv_cluster import CpuAffinity
    start = frozenset(os.sched_getaffinity(0))
    assert not CpuAffinity("off").enabled and CpuAffinity("off").lead() is None
    a = CpuAffinity("auto")
    if len(start) < 2:
        assert not a.enabled and a.lead() is None and _masks() == {start}
        return
    a.sample()       # /proc/stat counts in ticks of 10 ms: sample until one has passed
    wait_until(lambda: a.sample() or set(a.busy) >= set(start), 5, "a /proc/stat window")
    assert all(0.0 <= f <= 1.0 for f in a.busy.values())
    try:
        cpu = a.lead()
        assert cpu in start and a.lead() == cpu           # idempotent
        assert _masks() == {frozenset({cpu})}
        later = []
        t = threading.Thread(target=lambda: later.append(os.sched_getaffinity(0)))
        t.start()
        t.join()
        assert later == [{cpu}], "a thread started later inherits the primary's CPU"
    finally:
        a.follow()
    assert a.pinned is None and _masks() == {start}
    b = CpuAffinity(str(max(start)))
    try:
        assert b.lead() == max(start) and _masks() == {frozenset({max(start)})}
    finally:
        b.follow()
    assert _masks() == {start}
