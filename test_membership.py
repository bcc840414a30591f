"""Live membership tests (Raft dissertation §4.1-§4.2) against real node processes.

Each test starts its own unproxied LocalCluster on free ports in a temporary directory and
changes its membership with the harness verbs (add_node, remove_node, replace_node: CLUSTER
ADD/REMOVE on the primary, new nodes started with --join and an empty data dir).  Replication
is checked on the nodes' own state (STATUS digest / last_applied), writes by RetryingWriter
threads whose acknowledged values are read back from the primary, durability by kill -9 and
restart.  Timings are printed (run with -s to see them), never asserted.

    python -m pytest -q test_membership.py -s
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from kv_localcluster import LineClient, LocalCluster, RetryingWriter, call
from test_replication import check_acknowledged

WAIT = 60


@pytest.fixture
def make_cluster():
    made = []

    def make(n: int = 3, **kw) -> LocalCluster:
        c = LocalCluster(n, **kw)
        made.append(c)
        c.start(timeout=30)
        c.wait_for_single_primary(timeout=30)
        return c
    yield make
    for c in made:
        c.check_safety()
        c.stop(graceful=False)     # SIGKILL: nothing left to check, no need to wait for SHUTDOWN
        c.cleanup()


def start_writers(c: LocalCluster, n: int, prefix: str) -> tuple[list[RetryingWriter], threading.Event]:
    stop = threading.Event()
    ws = [RetryingWriter(f"{prefix}{k}", c.addresses(), (lambda i, k=k: f"{prefix}.w{k}.{i % 200}"), stop,
                         op_deadline=30.0) for k in range(n)]
    for w in ws:
        w.start()
    return ws, stop


def stop_writers(ws, stop) -> None:
    stop.set()
    for w in ws:
        w.join(60)
        assert not w.is_alive(), f"{w.name} did not stop"
        assert w.error is None, f"{w.name} crashed: {w.error!r}"
        assert not w.unexpected, f"{w.name} unexpected answers: {w.unexpected[:3]}"
        assert w.failed == 0, f"{w.name} gave up {w.failed} writes: {w.counts()}"


def verify_writes(c: LocalCluster, ws) -> int:
    """Read back every writer's keys on the primary (again if leadership moved meanwhile):
    no acknowledged write may be missing or wrong.  Returns how many keys were checked."""
    for _ in range(5):
        p = c.wait_for_single_primary(timeout=WAIT)
        with LineClient("%s:%d" % c.addr(p)) as cl:
            problems, checked, _ = check_acknowledged(cl, ws)
        if not any("NOT_PRIMARY" in x for x in problems):
            assert problems == [], f"{len(problems)} acknowledged writes wrong or lost: {problems[:5]}"
            return checked
    raise AssertionError(f"could not read back from a stable primary: {problems[:3]}")


def voters_everywhere(c: LocalCluster) -> dict:
    """Every member's STATUS (all converged): the same voters, no learners, equal digests."""
    sts = c.wait_converged(timeout=WAIT)
    want = set(c.ids)
    for nid, st in sts.items():
        assert set(st["voters"]) == want and not st["learners"], (nid, st["voters"], st["learners"])
        assert st["membership"] == "voter", (nid, st["membership"])
    assert len({st["digest"] for st in sts.values()}) == 1
    return sts


def test_grow_3_to_5_to_3_under_four_writers(make_cluster):
    """§4.1: 3 -> 5 -> 3 voters, one server at a time, new nodes as learners first (§4.2.1), the
    primary among the removed (§4.2.2), under 4 concurrent writers: 0 acknowledged writes lost
    and every remaining node's digest equal at the end."""
    c = make_cluster(3)
    ws, stop = start_writers(c, 4, "grow")
    steps = []
    try:
        for _ in range(2):
            steps.append(("add", c.add_node(timeout=WAIT, say=print)))
        assert len(c.members()["voters"]) == 5
        first = c.primary()
        steps.append(("remove primary", c.remove_node(first, timeout=WAIT, say=print)))
        other = next(n for n in ("node1", "node2", "node3") if n in c.ids)
        steps.append(("remove", c.remove_node(other, timeout=WAIT, say=print)))
        time.sleep(0.5)   # the writers run on through the last change (not a wait on state)
    finally:
        stop_writers(ws, stop)
    checked = verify_writes(c, ws)
    sts = voters_everywhere(c)
    assert len(sts) == 3
    acked = sum(w.n_acked for w in ws)
    print(f"\n3->5->3 under 4 writers: {acked} writes acknowledged, {checked} keys checked, 0 lost; "
          f"digest {next(iter(sts.values()))['digest']} on {sorted(sts)}; steps {steps}")


def test_replace_a_killed_and_wiped_node(make_cluster):
    """§4.1 replace: a node killed and its data dir wiped is removed first (the two survivors
    commit that), a fresh node under a new id joins with an empty data dir, catches up and is
    promoted: the cluster is back to 3 healthy voters with every key."""
    c = make_cluster(3)
    p = c.primary()
    with LineClient("%s:%d" % c.addr(p)) as cl:
        assert all(r["status"] == "OK" for r in cl.pipeline([f"SET r{i} {i}" for i in range(300)]))
    victim = next(n for n in c.ids if n != p)
    c.kill(victim)
    shutil.rmtree(c.data_dir_of(victim))
    t0 = time.monotonic()
    r = c.replace_node(victim, timeout=WAIT, say=print)
    took = time.monotonic() - t0
    sts = voters_everywhere(c)
    assert victim not in sts and r["new"] in sts
    p = c.wait_for_single_primary(timeout=WAIT)
    with LineClient("%s:%d" % c.addr(p)) as cl:
        assert [x.get("value") for x in cl.pipeline([f"GET r{i}" for i in range(300)])] == list(range(300))
    print(f"\nreplace {victim} -> {r['new']}: removed {r['removed_s']:.2f}s, new voter {r['voter_s']:.2f}s, "
          f"healthy (converged) after {took:.2f}s")


def test_remove_primary_then_a_new_primary_takes_writes(make_cluster):
    """§4.2.2: CLUSTER REMOVE of the primary commits, then the primary hands leadership to the
    most caught-up voter (TIMEOUT_NOW) and steps down; a new primary takes writes at once.
    The removed node knows it was removed and stops campaigning."""
    c = make_cluster(3)
    p = c.primary()
    host, port = c.addr(p)
    t0 = time.monotonic()
    ans = call(host, port, [f"CLUSTER REMOVE {p}"], timeout=10)[0]
    t_answer = time.monotonic() - t0
    assert ans["status"] == "OK" and p not in ans["voters"], ans
    others = [n for n in c.ids if n != p]
    first_ok = None
    deadline = time.monotonic() + WAIT
    while first_ok is None and time.monotonic() < deadline:
        for nid in others:
            try:
                r = call(*c.addr(nid), [f"SET after-remove {nid}"], timeout=2)[0]
            except OSError:
                continue
            if r["status"] == "OK":
                first_ok = time.monotonic() - t0
                break
    assert first_ok is not None, c.describe()
    st = c.status(p)
    assert st["membership"] == "removed" and st["role"] == "secondary", st
    c.forget_node(p)
    new = c.wait_for_single_primary(timeout=WAIT)
    assert new != p
    c.stop_node(p)
    voters_everywhere(c)
    print(f"\nremove primary {p}: answered in {t_answer:.3f}s, first write acknowledged by the new "
          f"primary {new} {first_ok:.3f}s after the request")


def test_add_node_while_a_secondary_is_down(make_cluster):
    """§4.2.1: a learner can join while a voter is down (learners never count, so the add
    commits with 2 of 3); once promoted, 3 of the 4 voters are up: writes commit.  The down
    node, restarted, takes the new configuration.  Also: CLUSTER on a secondary answers
    NOT_PRIMARY with the primary's address, invalid changes BAD_REQUEST (definite), and
    CLUSTER MEMBERS works over RESP."""
    c = make_cluster(3)
    p = c.primary()
    down = next(n for n in c.ids if n != p)
    up = next(n for n in c.ids if n not in (p, down))
    r = call(*c.addr(up), ["CLUSTER ADD node9 127.0.0.1:1"])[0]
    assert r["code"] == "NOT_PRIMARY" and r["definite"] and r["primary_addr"] == "%s:%d" % c.addr(p), r
    for line, why in ((f"CLUSTER ADD {up} 127.0.0.1:1", "already a voter"), ("CLUSTER REMOVE node9", "not a member")):
        r = call(*c.addr(p), [line])[0]
        assert r["code"] == "BAD_REQUEST" and r["definite"] and why in r["message"], r
    c.kill(down)
    added = c.add_node(timeout=WAIT, say=print)
    r = call(*c.addr(p), ["SET while-down 1"])[0]
    assert r["status"] == "OK", r
    c.start_node(down)
    sts = voters_everywhere(c)
    assert added["node"] in sts and len(sts) == 4
    with socket.create_connection(c.addr(p), timeout=5) as s:
        s.sendall(b"*2\r\n$7\r\nCLUSTER\r\n$7\r\nMEMBERS\r\n")
        data = b""
        while added["node"].encode() not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert b" voter" in data and data.startswith(b"$")
    print(f"\nadd {added['node']} with {down} down: learner {added['learner_s']:.2f}s, voter {added['voter_s']:.2f}s")


def test_restart_every_node_after_changes_restores_the_configuration(make_cluster):
    """§4.1: the configuration comes back from disk after kill -9 of every node: from the
    snapshot's meta (taken after node4 joined) and from the log (node2's removal after it)."""
    c = make_cluster(3)
    c.add_node(timeout=WAIT, say=print)
    for nid in c.ids:
        assert call(*c.addr(nid), ["SNAPSHOT"], timeout=30)[0]["status"] == "OK"
    c.remove_node("node2", timeout=WAIT, say=print)
    p = c.primary()
    assert call(*c.addr(p), ["SET before-restart 1"])[0]["status"] == "OK"
    for nid in c.ids:
        c.kill(nid)
    for nid in c.ids:
        c.start_node(nid, wait=False)
    c.wait_for_single_primary(timeout=WAIT)
    sts = voters_everywhere(c)
    assert sorted(sts) == ["node1", "node3", "node4"]
    assert all(st["snapshot_index"] > 0 for st in sts.values())
    p = c.wait_for_single_primary(timeout=WAIT)
    assert call(*c.addr(p), ["GET before-restart"])[0]["value"] == 1


def test_five_node_cluster_survives_two_nodes_killed_at_once(make_cluster):
    """§5.2 with 5 voters (--nodes 5): the primary and a secondary killed at the same instant;
    the other three elect a primary that takes writes, and nothing acknowledged is lost."""
    c = make_cluster(5)
    p = c.primary()
    with LineClient("%s:%d" % c.addr(p)) as cl:
        assert all(r["status"] == "OK" for r in cl.pipeline([f"SET f{i} {i}" for i in range(100)]))
    victims = [p, next(n for n in c.ids if n != p)]
    t0 = time.monotonic()
    threads = [threading.Thread(target=c.kill, args=(v,)) for v in victims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    new = c.wait_for_single_primary(timeout=WAIT, exclude=victims)
    deadline = time.monotonic() + WAIT
    while call(*c.addr(new), ["SET after-two-killed 1"])[0]["status"] != "OK":
        assert time.monotonic() < deadline, c.describe()
        time.sleep(0.05)
    took = time.monotonic() - t0
    with LineClient("%s:%d" % c.addr(new)) as cl:
        assert [x.get("value") for x in cl.pipeline([f"GET f{i}" for i in range(100)])] == list(range(100))
    for v in victims:
        c.start_node(v)
    c.wait_converged(timeout=WAIT)
    print(f"\n5 nodes, {victims} killed at once: {new} primary and a write acknowledged after {took:.2f}s")


def test_wiped_boot_node_catches_up_from_a_primary_that_joined_later(make_cluster):
    """A bootstrap node restarted with an empty data dir (`restart --wipe`) after membership
    changes: it must accept the current primary even when that primary joined after the
    bootstrap (it is not in the --peers the cluster was created with), and catch up."""
    c = make_cluster(3)
    new = c.add_node(timeout=WAIT)["node"]
    c.remove_node("node3", timeout=WAIT)
    p = c.wait_for_single_primary(timeout=WAIT)
    if p != new:
        assert c.send(p, f"TRANSFER {new}", timeout=10)["status"] == "OK"
        c.wait_until(lambda: c.primary(timeout=0.5) == new, WAIT, f"{new} to lead")
    with LineClient("%s:%d" % c.addr(new)) as cl:
        assert all(r["status"] == "OK" for r in cl.pipeline([f"SET w{i} {i}" for i in range(50)]))
    victim = next(n for n in ("node1", "node2") if n != c.primary(timeout=0.5))
    c.restart(victim, wipe=True)
    sts = voters_everywhere(c)
    assert sts[victim]["last_applied"] == sts[new]["last_applied"] > 0
