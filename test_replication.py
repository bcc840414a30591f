#!/usr/bin/env python3
"""Live-cluster tests for KV Store: replication, elections, failover, catch-up and durability.

    python test_replication.py -v          # or: python -m pytest test_replication.py
    KV_CLUSTER=127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381 python test_replication.py -v

By default every test class starts its own fresh 3-node cluster (kv_localcluster.LocalCluster:
free ports, a temporary data dir, every process stopped by PID in tearDownClass).  With
KV_CLUSTER set the suite talks to that running cluster instead and skips, with a reason, every
test that has to kill, stop or restart nodes or needs a cluster started with special flags.

Layout (the harness is kv_localcluster's: LocalCluster with its verbs and waits, attach() for
KV_CLUSTER, LineClient, and RetryingWriter, a writer thread that follows NOT_PRIMARY hints and
retries across nodes, recording only acknowledged writes and which outcomes are unknown):
    ClusterTestCase     one cluster per class; tearDown restores nodes a test killed or stopped
    Test* classes       the seed's TestKVStoreReplication (10), TestLeaderElection (3) and
                        TestClusterConsistency (4), then failover, rejoin, snapshot catch-up,
                        planned failover, empty-data-dir rejoin, durability and membership
                        security

Rules this file keeps: replication is proven on the secondaries through STATUS digest and
last_applied, never by reading them; every wait polls until a deadline (no fixed sleeps: the
only bounded observation windows are the checks that something does NOT change); two nodes
seen primary in the same term fail the test at once.  Server defaults are used for timing
(heartbeat 0.05 s, election timeout 0.8 s, request timeout 5 s); nothing is shortened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import shutil
import socket
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from kv_localcluster import (ClusterError, LineClient, LocalCluster, RetryingWriter, split_addr,  # noqa: E402
                             total_acked, wait_until)
from kv_localcluster import describe_statuses as summary  # noqa: E402

KV_CLUSTER = os.environ.get("KV_CLUSTER", "").strip()
EXTERNAL = bool(KV_CLUSTER)

REQUEST_TIMEOUT = 5.0      # the server's default --request-timeout (a write waits at most this long)
ELECTION_TIMEOUT = 0.8     # the server's default --election-timeout
START_TIMEOUT = 30.0       # a fresh cluster: every node up and one primary
ELECTION_WAIT = 15.0       # a new primary after a failure
CONVERGE_WAIT = 30.0       # every node at the same last_applied and digest
CLIENT_TIMEOUT = REQUEST_TIMEOUT + 10.0
PROCESS_CONTROL_SKIP = ("KV_CLUSTER is set: this test kills, stops or restarts nodes, which the suite "
                        "only does on a cluster it started itself")


# ------------------------------------------------------------------------------------- client
def hold_for(pred, duration: float, what: str, diag=None, interval: float = 0.02) -> None:
    """Fail at once if pred becomes false at any poll during `duration` seconds (used only to
    check that something does NOT happen, which no deadline-wait can show)."""
    end = time.monotonic() + duration
    while True:
        if not pred():
            extra = f"; now: {diag()}" if diag is not None else ""
            raise AssertionError(f"{what} did not hold{extra}")
        if time.monotonic() >= end:
            return
        time.sleep(interval)


# ---------------------------------------------------------------------------------- base class
class ClusterTestCase(unittest.TestCase):
    """One cluster per class.  tearDown brings back nodes a test took down, so every test starts
    from three running nodes with one primary and equal digests."""

    cluster_options: dict = {}
    external_ok = True                 # False: the whole class needs its own cluster
    external_skip_reason = PROCESS_CONTROL_SKIP
    cluster: LocalCluster | None = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if EXTERNAL:
            if not cls.external_ok:
                raise unittest.SkipTest(cls.external_skip_reason)
            cls.cluster = LocalCluster.attach(KV_CLUSTER)
            if cls.cluster.n < 3:
                raise ClusterError(f"KV_CLUSTER must name at least 3 nodes, got {cls.cluster.ids}")
        else:
            cls.cluster = LocalCluster(n=3, **cls.cluster_options)      # free ports, fresh temp dir
        try:
            if not EXTERNAL:
                cls.cluster.start(wait=True, timeout=START_TIMEOUT)
            cls.cluster.wait_for_single_primary(START_TIMEOUT)
        except BaseException:
            cls.cluster.cleanup()
            cls.cluster = None
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.cluster is not None:
                cls.cluster.cleanup()
        finally:
            cls.cluster = None
            super().tearDownClass()

    def setUp(self):
        self.c = self.cluster
        self.prefix = f"{type(self).__name__[4:]}.{self._testMethodName[:7]}.{os.urandom(3).hex()}"
        self._clients: list[LineClient] = []

    def tearDown(self):
        for cl in self._clients:
            cl.close()
        self.c.check_safety()
        crashed = self.c.restore(timeout=CONVERGE_WAIT)
        if crashed:
            self.fail(f"{crashed} died without the test stopping them (restarted for the next test)")

    # -- helpers
    def needs_process_control(self) -> None:
        if not self.c.owned:
            self.skipTest(PROCESS_CONTROL_SKIP)

    def client(self, nid: str) -> LineClient:
        cl = LineClient(self.c.address(nid))
        self._clients.append(cl)
        return cl

    def primary_client(self, **kw) -> tuple[str, LineClient]:
        p = self.c.wait_for_single_primary(**kw)
        return p, self.client(p)

    def assertOk(self, reply: dict, what: str = "") -> dict:
        self.assertEqual(reply.get("status"), "OK", f"{what}: {reply}")
        return reply

    def assertError(self, reply: dict, code: str, what: str = "") -> dict:
        self.assertEqual((reply.get("status"), reply.get("code")), ("ERROR", code), f"{what}: {reply}")
        return reply

    def write_all(self, cl: LineClient, items: dict) -> None:
        """SET every key/value pipelined; every answer must be OK."""
        keys = list(items)
        replies = cl.pipeline([f"SET {k} {json.dumps(items[k])}" for k in keys])
        bad = [(k, r) for k, r in zip(keys, replies) if r.get("status") != "OK"]
        self.assertEqual(bad, [], f"{len(bad)} of {len(keys)} writes not acknowledged")

    def check_values(self, cl: LineClient, items: dict) -> int:
        """GET every key pipelined; each must hold exactly its value.  Returns how many."""
        keys = list(items)
        replies = cl.pipeline([f"GET {k}" for k in keys])
        bad = [(k, items[k], r) for k, r in zip(keys, replies)
               if r.get("status") != "OK" or r.get("value") != items[k]]
        self.assertEqual(bad[:5], [], f"{len(bad)} of {len(keys)} keys do not hold their value")
        return len(keys)

    def check_writer(self, w: RetryingWriter) -> None:
        self.assertIsNone(w.error, f"{w.name} crashed: {w.error!r}")
        self.assertFalse(w.is_alive(), f"{w.name} did not stop")

    def verify_acknowledged(self, cl: LineClient, writers) -> tuple[int, int]:
        """check_acknowledged(), failing the test on any wrong or lost acknowledged write."""
        problems, checked, later = check_acknowledged(cl, writers)
        self.assertEqual(problems[:10], [], f"{len(problems)} acknowledged writes wrong or lost")
        return checked, later


def check_acknowledged(cl: LineClient, writers) -> tuple[list, int, int]:
    """Every key a writer touched, read through cl (the primary): an acknowledged key holds
    its last acknowledged value or a later value whose outcome was unknown; a key only ever
    written with unknown outcome holds one of those values or is absent.
    Returns (problems, acknowledged keys checked, keys holding an unknown-outcome value)."""
    expect = []
    for w in writers:
        for k in set(w.acked) | set(w.pending):
            allowed = set(w.pending.get(k, ()))
            if k in w.acked:
                allowed.add(w.acked[k])
            expect.append((k, k in w.acked, allowed, w.acked.get(k)))
    replies = cl.pipeline([f"GET {k}" for k, *_ in expect])
    problems, checked, later = [], 0, 0
    for (k, was_acked, allowed, acked_value), r in zip(expect, replies):
        if was_acked:
            checked += 1
        if r.get("status") == "OK":
            if r.get("value") not in allowed:
                problems.append(f"{k} = {r.get('value')!r}, expected one of {sorted(allowed)}")
            elif was_acked and r.get("value") != acked_value:
                later += 1
        elif r.get("code") == "NOT_FOUND":
            if was_acked:
                problems.append(f"{k}: acknowledged value {acked_value} LOST (NOT_FOUND)")
        else:
            problems.append(f"{k}: unexpected answer {r}")
    return problems, checked, later


# ==================================================================================== the seed's
class TestKVStoreReplication(ClusterTestCase):
    """Basic operations on the primary and their replication to the secondaries."""

    def test_01_set_and_get_on_primary(self):
        _, cl = self.primary_client()
        key = f"{self.prefix}.greeting"
        r = self.assertOk(cl.set(key, "hello"), "SET on the primary")
        self.assertIn(key, r.get("message", ""), "SET answer names the key")
        self.assertEqual(self.assertOk(cl.get(key))["value"], "hello")

    def test_02_update_existing_key(self):
        _, cl = self.primary_client()
        key = f"{self.prefix}.k"
        self.assertOk(cl.set(key, "v1"))
        self.assertEqual(cl.get(key).get("value"), "v1")
        self.assertOk(cl.set(key, {"v": 2}))
        self.assertEqual(cl.get(key).get("value"), {"v": 2})
        self.assertOk(cl.set(key, "v3"))
        self.assertEqual(cl.get(key).get("value"), "v3")

    def test_03_delete_key(self):
        _, cl = self.primary_client()
        key = f"{self.prefix}.k"
        self.assertOk(cl.set(key, 1))
        self.assertOk(cl.delete(key), "DELETE of an existing key")
        self.assertError(cl.get(key), "NOT_FOUND", "GET after DELETE")
        self.assertError(cl.delete(key), "NOT_FOUND", "second DELETE")
        self.assertOk(cl.request(f"SET {key} 2"))
        self.assertOk(cl.request(f"DEL {key}"), "DEL alias")
        self.assertError(cl.get(key), "NOT_FOUND", "GET after DEL")

    def test_04_get_missing_key_is_not_found(self):
        _, cl = self.primary_client()
        key = f"{self.prefix}.never-written"
        r = self.assertError(cl.get(key), "NOT_FOUND", "GET of a missing key")
        self.assertIn(key, r.get("message", ""))
        self.assertIs(r.get("definite"), True, f"NOT_FOUND is a definite error: {r}")

    def test_05_value_types(self):
        _, cl = self.primary_client()
        values = {
            "str": "hello world", "unicode": "héllo ✓ 世界", "json-string-of-digits": "42",
            "empty-str": "", "int": 42, "negative": -7, "big-int": 12345678901234567890,
            "zero": 0, "float": 3.25, "true": True, "false": False, "null": None,
            "list": [1, "two", 3.0, None, True], "empty-list": [], "empty-object": {},
            "nested": {"a": {"b": [1, {"c": None, "d": [True, False]}]}, "e": "f"},
        }
        items = {f"{self.prefix}.{name}": v for name, v in values.items()}
        self.write_all(cl, items)
        for key, want in items.items():
            r = self.assertOk(cl.get(key), f"GET {key}")
            self.assertIn("value", r)
            got = r["value"]
            self.assertEqual(got, want, key)
            self.assertIs(type(got), type(want), f"{key}: type {type(got).__name__} != {type(want).__name__}")
        # A bare word is stored as the raw string (the rest of the line).
        self.assertOk(cl.request(f"SET {self.prefix}.raw two words, no JSON"))
        self.assertEqual(cl.get(f"{self.prefix}.raw").get("value"), "two words, no JSON")
        # null is a value: GET answers OK with value null, unlike a missing key.
        r = self.assertOk(cl.get(f"{self.prefix}.null"))
        self.assertIn("value", r)
        self.assertIsNone(r["value"])
        self.assertError(cl.get(f"{self.prefix}.missing"), "NOT_FOUND")

    def test_06_replication_to_secondaries(self):
        p, cl = self.primary_client()
        before = self.c.wait_converged()
        items = {f"{self.prefix}.{i}": {"i": i, "s": "x" * i} for i in range(50)}
        self.write_all(cl, items)
        after_primary = self.c.status(p)
        self.assertGreaterEqual(after_primary["last_applied"], before[p]["last_applied"] + 50)
        self.assertNotEqual(after_primary["digest"], before[p]["digest"], "the digest moves with the data")
        sts = self.c.wait_converged(min_applied=after_primary["last_applied"])
        for nid, st in sts.items():
            self.assertEqual(st["digest"], after_primary["digest"], f"{nid} digest")
            self.assertEqual(st["last_applied"], sts[p]["last_applied"], f"{nid} last_applied")
            self.assertEqual(st["keys"], sts[p]["keys"], f"{nid} key count")
            if nid != p:
                self.assertEqual(st["role"], "secondary")

    def test_07_secondaries_refuse_with_not_primary(self):
        p = self.c.wait_for_single_primary()
        paddr = self.c.address(p)
        key = f"{self.prefix}.k"
        before = self.c.wait_converged()
        for s in self.c.ids:
            if s == p:
                continue
            cl = self.client(s)
            for line in (f"SET {key} 1", f"GET {key}", f"DELETE {key}"):
                r = self.assertError(cl.request(line), "NOT_PRIMARY", f"{line} on secondary {s}")
                self.assertIn("This node is not primary", r.get("message", ""))
                self.assertEqual(r.get("primary"), p, f"hint on {s}: {r}")
                self.assertEqual(r.get("primary_addr"), paddr, f"hint on {s}: {r}")
                self.assertIs(r.get("definite"), True, f"NOT_PRIMARY is definite: {r}")
        _, pc = self.primary_client()
        self.assertError(pc.get(key), "NOT_FOUND", "a refused SET must not have happened")
        after = self.c.wait_converged()
        self.assertEqual({n: s["digest"] for n, s in after.items()},
                         {n: s["digest"] for n, s in before.items()}, "refused writes changed state")

    def test_08_pipelined_requests_answered_in_order(self):
        _, cl = self.primary_client()
        reqs = []                                        # (line, want status, want value or None)
        for i in range(40):
            key = f"{self.prefix}.{i}"
            reqs += [(f"SET {key} {i}", "OK", None), (f"GET {key}", "OK", i)]
            if i % 10 == 0:
                reqs += [(f"GET {self.prefix}.missing{i}", "ERROR", None), ("PING", "OK", None)]
        # everything in one packet (with blank lines, which are skipped) ...
        payload = "".join(line + ("\n\n" if n % 7 == 0 else "\n") for n, (line, _, _) in enumerate(reqs))
        cl.send_raw(payload.encode())
        for line, status, value in reqs:
            r = cl.read_reply()
            self.assertEqual(r.get("status"), status, f"answer to {line!r} out of order: {r}")
            if value is not None:
                self.assertEqual(r.get("value"), value, f"answer to {line!r} out of order: {r}")
        # ... then one request split across three packets
        for part in (b"GE", f"T {self.prefix}.3".encode(), b"9\r\n"):
            cl.send_raw(part)
        self.assertEqual(cl.read_reply().get("value"), 39)

    def test_09_many_keys_replicated(self):
        p, cl = self.primary_client()
        items = {f"{self.prefix}.{i:04d}": i * 7 for i in range(1000)}
        self.write_all(cl, items)
        r = self.assertOk(cl.request(f"KEYS {self.prefix}.*"))
        self.assertEqual(len(r["keys"]), 1000)
        self.assertEqual(set(r["keys"]), set(items))
        self.check_values(cl, items)
        applied = self.c.status(p)["last_applied"]
        sts = self.c.wait_converged(min_applied=applied)
        self.assertEqual(len({s["digest"] for s in sts.values()}), 1, summary(sts))

    def test_10_concurrent_writers_all_applied(self):
        p = self.c.wait_for_single_primary()
        start = self.c.status(p)["last_applied"]
        errors, per_thread = [], 100

        def writer(t):
            try:
                with self.client(p) as cl:
                    for i in range(per_thread):
                        r = cl.set(f"{self.prefix}.t{t}.{i}", [t, i])
                        if r.get("status") != "OK":
                            errors.append((t, i, r))
            except (OSError, ValueError) as e:
                errors.append((t, "connection", repr(e)))
        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        self.assertFalse(any(t.is_alive() for t in threads), "writer threads hung")
        self.assertEqual(errors[:5], [], f"{len(errors)} concurrent writes failed")
        _, cl = self.primary_client()
        r = self.assertOk(cl.request(f"KEYS {self.prefix}.*"))
        self.assertEqual(len(r["keys"]), 4 * per_thread)
        self.check_values(cl, {f"{self.prefix}.t{t}.{i}": [t, i] for t in range(4) for i in range(per_thread)})
        sts = self.c.wait_converged(min_applied=start + 4 * per_thread)
        self.assertEqual(len({s["digest"] for s in sts.values()}), 1, summary(sts))


class TestLeaderElection(ClusterTestCase):
    """Elections observed through STATUS: one primary, failover to a higher term, PreVote."""

    def test_01_single_primary_at_start(self):
        p = self.c.wait_for_single_primary()
        sts = self.c.statuses()
        prims = [n for n, s in sts.items() if s and s["role"] == "primary"]
        self.assertEqual(prims, [p], summary(sts))
        for n, s in sts.items():
            self.assertIsNotNone(s, f"{n} does not answer")
            self.assertEqual(s["primary"], p, f"{n} follows {s['primary']}")
            self.assertEqual(s["primary_addr"], self.c.address(p))
            if n != p:
                self.assertEqual(s["role"], "secondary")
        if self.c.owned and self.c.fresh:
            self.assertEqual(p, self.c.ids[0], "node1, started with --primary on a fresh cluster, leads")

    def test_02_new_primary_after_kill(self):
        self.needs_process_control()
        old = self.c.wait_for_single_primary()
        term = self.c.status(old)["election_term"]
        self.c.kill(old)
        others = [n for n in self.c.ids if n != old]
        new = self.c.wait_for_single_primary(ids=others, min_term=term + 1)
        self.assertIn(new, others)
        self.assertIsNone(self.c.status(old, timeout=0.3), "the killed primary still answers")
        self.assertGreater(self.c.status(new)["election_term"], term)
        cl = self.client(new)
        key = f"{self.prefix}.after-failover"
        self.assertOk(cl.set(key, "works"), "write on the new primary")
        self.assertEqual(cl.get(key).get("value"), "works")
        self.c.wait_converged(ids=others, min_applied=self.c.status(new)["last_applied"])

    def test_03_old_primary_rejoins_as_secondary(self):
        self.needs_process_control()
        old = self.c.wait_for_single_primary()
        self.c.kill(old)
        others = [n for n in self.c.ids if n != old]
        new = self.c.wait_for_single_primary(ids=others)
        cl = self.client(new)
        self.write_all(cl, {f"{self.prefix}.{i}": i for i in range(30)})
        term = self.c.status(new)["election_term"]
        target = self.c.status(new)["last_applied"]

        self.c.restart(old, primary=True)       # restarted WITH --primary

        def rejoined():
            st_new = self.c.status(new)
            self.assertIsNotNone(st_new, f"{new} stopped answering")
            self.assertEqual((st_new["role"], st_new["election_term"]), ("primary", term),
                             f"{old} restarted with --primary disturbed the running cluster (PreVote)")
            st = self.c.status(old)
            if st is None:
                return False
            self.assertNotEqual(st["role"], "primary", f"{old} took over: {st}")
            return st["role"] == "secondary" and st["primary"] == new and st["last_applied"] >= target
        wait_until(rejoined, ELECTION_WAIT, f"{old} to rejoin as a secondary of {new}", diag=self.c.describe)
        sts = self.c.wait_converged(min_applied=target)
        self.assertEqual({s["election_term"] for s in sts.values()}, {term}, summary(sts))
        # and it stays that way over a few election timeouts
        hold_for(lambda: (self.c.status(new) or {}).get("election_term") == term and
                 (self.c.status(old) or {}).get("role") == "secondary",
                 4 * ELECTION_TIMEOUT, f"term {term} with {old} secondary", diag=self.c.describe)


class TestClusterConsistency(ClusterTestCase):
    """Terms, majority acknowledgement, log catch-up and state equality."""

    def test_01_terms_equal_when_stable(self):
        p = self.c.wait_for_single_primary()
        sts = self.c.statuses()
        terms = {n: s["election_term"] for n, s in sts.items() if s}
        self.assertEqual(len(terms), len(self.c.ids), summary(sts))
        self.assertEqual(len(set(terms.values())), 1, f"terms differ: {terms}")
        term = terms[p]
        # stable: no spurious election over several election timeouts
        hold_for(lambda: all(s and s["election_term"] == term and s["primary"] == p
                             for s in self.c.statuses().values()),
                 5 * ELECTION_TIMEOUT, f"all nodes at term {term} following {p}", diag=self.c.describe)

    def test_02_write_needs_majority(self):
        self.needs_process_control()
        p = self.c.wait_for_single_primary()
        secondaries = [n for n in self.c.ids if n != p]
        cl = self.client(p)                              # connected before the secondaries die
        key = f"{self.prefix}.no-majority"
        for s in secondaries:
            self.c.kill(s)
        t0 = time.monotonic()
        w = cl.set(key, "maybe")
        elapsed = time.monotonic() - t0
        self.assertNotEqual(w.get("status"), "OK", f"a write without a majority was acknowledged: {w}")
        self.assertIn(w.get("code"), ("NO_QUORUM", "TIMEOUT"), f"answer without a majority: {w}")
        if w.get("code") == "TIMEOUT":
            self.assertIs(w.get("definite"), False, f"TIMEOUT is indefinite: {w}")
        self.assertLess(elapsed, REQUEST_TIMEOUT + 2.0, f"answered after {elapsed:.1f}s")
        # CheckQuorum: the lone primary steps down instead of serving on.
        wait_until(lambda: (self.c.status(p) or {}).get("role") != "primary", 5.0,
                   f"{p} to step down without a majority", diag=self.c.describe)
        self.assertNotEqual(cl.get(key).get("status"), "OK", "a lone node served a read")

        for s in secondaries:
            self.c.restart(s)
        self.c.wait_for_single_primary()
        self.c.wait_converged(ids=self.c.ids)
        _, pc = self.primary_client()
        r = pc.get(key)
        if r.get("status") == "OK":
            self.assertEqual(r.get("value"), "maybe")
            outcome = "present"
        else:
            self.assertError(r, "NOT_FOUND")
            outcome = "absent"
        print(f"\n  [no-majority] write answered {w.get('code')} (definite={w.get('definite')}) after "
              f"{elapsed:.2f}s; after recovery it is {outcome} and all nodes agree", flush=True)

    def test_03_log_catch_up_after_restart(self):
        self.needs_process_control()
        p = self.c.wait_for_single_primary()
        lagger = next(n for n in self.c.ids if n != p)
        down_applied = self.c.wait_converged()[lagger]["last_applied"]
        self.c.kill(lagger)
        cl = self.client(p)
        self.write_all(cl, {f"{self.prefix}.{i}": {"i": i} for i in range(200)})
        st = self.c.status(p)
        self.assertGreaterEqual(st["commit_index"], down_applied + 200, "writes commit with one node down")
        self.c.restart(lagger)
        sts = self.c.wait_converged(min_applied=st["last_applied"])
        self.assertEqual(sts[lagger]["digest"], sts[p]["digest"])
        self.assertEqual(sts[lagger]["role"], "secondary")

    def test_04_digest_equal_after_mixed_workload(self):
        _, cl = self.primary_client()
        rng = random.Random(20240501)
        model: dict[str, object] = {}
        keys = [f"{self.prefix}.{i}" for i in range(40)]
        gen = [lambda: rng.randint(-1000, 1000), lambda: rng.random(), lambda: None,
               lambda: rng.choice([True, False]), lambda: "s" * rng.randint(0, 20),
               lambda: {"n": rng.randint(0, 9), "l": [rng.randint(0, 9) for _ in range(3)]}]
        for _ in range(400):
            key = rng.choice(keys)
            if rng.random() < 0.35:
                r = cl.delete(key)
                if key in model:
                    self.assertOk(r, f"DELETE {key}")
                    del model[key]
                else:
                    self.assertError(r, "NOT_FOUND", f"DELETE missing {key}")
            else:
                value = rng.choice(gen)()
                self.assertOk(cl.set(key, value), f"SET {key}")
                model[key] = value
        r = self.assertOk(cl.request(f"KEYS {self.prefix}.*"))
        self.assertEqual(set(r["keys"]), set(model))
        self.check_values(cl, model)
        for key in set(keys) - set(model):
            self.assertError(cl.get(key), "NOT_FOUND")
        p = self.c.wait_for_single_primary()
        sts = self.c.wait_converged(min_applied=self.c.status(p)["last_applied"])
        self.assertEqual(len({s["digest"] for s in sts.values()}), 1, summary(sts))
        self.assertEqual(len({s["keys"] for s in sts.values()}), 1, summary(sts))


# ============================================================================ issue 3, item 9
class TestFailover(ClusterTestCase):
    """kill -9 of the primary under 4 concurrent writers: a new primary, no acknowledged write lost."""
    external_ok = False

    def test_kill_primary_under_concurrent_writers(self):
        old = self.c.wait_for_single_primary()
        term = self.c.status(old)["election_term"]
        stop = threading.Event()
        writers = [RetryingWriter(f"writer{w}", self.c.addresses(),
                                  (lambda i, w=w: f"{self.prefix}.w{w}.{i % 25}"), stop)
                   for w in range(4)]
        for w in writers:
            w.start()
        try:
            wait_until(lambda: total_acked(writers) >= 200, 30, "200 acknowledged writes before the kill")
            t_kill = time.monotonic()
            acked_before = total_acked(writers)
            self.c.kill(old)
            others = [n for n in self.c.ids if n != old]
            new = self.c.wait_for_single_primary(ids=others, min_term=term + 1)
            marks = [w.n_acked for w in writers]
            wait_until(lambda: all(w.n_acked >= m + 25 for w, m in zip(writers, marks)), 30,
                       "every writer to get 25 more writes acknowledged by the new primary")
        finally:
            stop.set()
            for w in writers:
                w.join(timeout=CLIENT_TIMEOUT + 25)
        for w in writers:
            self.check_writer(w)
            self.assertEqual((w.failed, w.unexpected), (0, []), w.counts())
        self.assertGreater(self.c.status(new)["election_term"], term)
        new_addr = self.c.address(new)
        first = min((t for w in writers for t, a, *_ in w.ack_log if t > t_kill and a == new_addr), default=None)
        cl = self.client(new)
        checked, later = self.verify_acknowledged(cl, writers)
        self.assertGreaterEqual(checked, 100)
        self.c.wait_converged(ids=others, min_applied=self.c.status(new)["last_applied"])
        print(f"\n  [failover] {old} killed at term {term}; {new} primary at term "
              f"{self.c.status(new)['election_term']}; first ack on {new} "
              f"{(first - t_kill) if first else float('nan'):.2f}s after the kill; "
              f"{total_acked(writers)} writes acknowledged ({acked_before} before the kill), "
              f"{checked} keys checked, 0 lost, {later} hold a later unknown-outcome value\n    "
              + "\n    ".join(w.counts() for w in writers), flush=True)


class TestRejoin(ClusterTestCase):
    """A former primary restarted with --primary becomes a secondary and converges."""
    external_ok = False

    def test_old_primary_restarted_with_primary_flag_becomes_secondary(self):
        old = self.c.wait_for_single_primary()
        self.write_all(self.client(old), {f"{self.prefix}.a{i}": i for i in range(50)})
        self.c.kill(old)
        others = [n for n in self.c.ids if n != old]
        new = self.c.wait_for_single_primary(ids=others)
        self.write_all(self.client(new), {f"{self.prefix}.b{i}": i for i in range(50)})
        term = self.c.status(new)["election_term"]
        self.c.restart(old, primary=True)
        sts = self.c.wait_converged(min_applied=self.c.status(new)["last_applied"])
        self.assertEqual(sts[old]["role"], "secondary", summary(sts))
        self.assertEqual(sts[old]["primary"], new)
        self.assertEqual(sts[new]["role"], "primary")
        self.assertEqual({s["election_term"] for s in sts.values()}, {term}, summary(sts))
        self.assertEqual(sts[old]["digest"], sts[new]["digest"])

    def test_old_primary_discards_uncommitted_tail(self):
        old = self.c.wait_for_single_primary()
        others = [n for n in self.c.ids if n != old]
        cl = self.client(old)
        self.write_all(cl, {f"{self.prefix}.base{i}": i for i in range(20)})
        self.c.wait_converged()
        for s in others:
            self.c.kill(s)
        # A write the lone primary appends but can never commit: its uncommitted tail.
        before = self.c.status(old)["last_log_index"]
        tail_key = f"{self.prefix}.uncommitted"
        cl.send_line(f"SET {tail_key} 1")
        wait_until(lambda: (self.c.status(old) or {}).get("last_log_index", 0) > before, 5,
                   f"{old} to append the write")
        with self.client(old) as fc:
            fc.request("FLUSH")            # make the tail durable before the crash
        self.c.kill(old)
        for s in others:
            self.c.restart(s)
        new = self.c.wait_for_single_primary(ids=others)
        nc = self.client(new)
        self.write_all(nc, {f"{self.prefix}.new{i}": i for i in range(20)})
        term = self.c.status(new)["election_term"]
        self.c.restart(old, primary=True)
        sts = self.c.wait_converged(min_applied=self.c.status(new)["last_applied"])
        self.assertEqual(sts[old]["role"], "secondary", summary(sts))
        self.assertEqual({s["election_term"] for s in sts.values()}, {term}, summary(sts))
        self.assertError(nc.get(tail_key), "NOT_FOUND", "the never-committed write must be gone")
        self.check_values(nc, {f"{self.prefix}.new{i}": i for i in range(20)})


class TestSnapshotCatchUp(ClusterTestCase):
    """A secondary that missed more than the snapshot threshold is caught up with a snapshot."""
    external_ok = False
    cluster_options = {"extra_args": ("--snapshot-threshold", "200")}

    def test_secondary_catches_up_by_snapshot(self):
        p = self.c.wait_for_single_primary()
        lagger = next(n for n in self.c.ids if n != p)
        down_applied = self.c.wait_converged()[lagger]["last_applied"]
        self.c.stop_node(lagger)
        cl = self.client(p)
        items = {f"{self.prefix}.{i:04d}": {"i": i} for i in range(1000)}
        self.write_all(cl, items)
        # the entries the stopped node lacks are compacted away on the primary
        wait_until(lambda: (self.c.status(p) or {}).get("snapshot_index", 0) > down_applied + 200, 30,
                   f"{p} to snapshot past index {down_applied + 200}", diag=self.c.describe)
        self.c.restart(lagger)
        sts = self.c.wait_converged(min_applied=self.c.status(p)["last_applied"])
        st = sts[lagger]
        self.assertEqual(st["digest"], sts[p]["digest"])
        self.assertGreater(st["snapshot_index"], 0, f"{lagger} reports no snapshot: {st}")
        self.assertGreater(st["snapshot_index"], down_applied, f"{lagger} caught up without a snapshot: {st}")
        # the node logs the install after restoring the state, so the line may trail the status
        wait_until(lambda: re.search(r"snapshot\s+install", self.c.log_text(lagger), re.I) is not None, 10,
                   f"{lagger}'s log to show the snapshot install", diag=self.c.describe)
        self.check_values(cl, dict(list(items.items())[::50]))
        print(f"\n  [snapshot] {lagger} down at {down_applied}; primary snapshot at "
              f"{sts[p]['snapshot_index']}; {lagger} snapshot_index {st['snapshot_index']}, install logged", flush=True)


class TestPlannedFailover(ClusterTestCase):
    """SHUTDOWN on the primary hands leadership over: a retrying writer sees no failed write."""
    external_ok = False

    def test_shutdown_primary_while_writing(self):
        old = self.c.wait_for_single_primary()
        term = self.c.status(old)["election_term"]
        stop = threading.Event()
        w = RetryingWriter("planned", self.c.addresses(), lambda i: f"{self.prefix}.{i}", stop)
        w.start()
        try:
            wait_until(lambda: w.n_acked >= 100, 30, "100 acknowledged writes before SHUTDOWN")
            with self.client(old) as sc:
                self.assertOk(sc.request("SHUTDOWN"), "SHUTDOWN")
            self.c.mark_down(old)
            wait_until(lambda: self.c.status(old, timeout=0.3) is None, 15, f"{old} to exit")
            others = [n for n in self.c.ids if n != old]
            new = self.c.wait_for_single_primary(ids=others, min_term=term + 1)
            mark = w.n_acked
            wait_until(lambda: w.n_acked >= mark + 100, 30, "100 more writes acknowledged by the new primary")
        finally:
            stop.set()
            w.join(timeout=CLIENT_TIMEOUT + 25)
        self.check_writer(w)
        print(f"\n  [planned failover] {old} -> {new}: {w.counts()}", flush=True)
        self.assertEqual(w.failed, 0, f"failed writes: {w.counts()} {w.unexpected[:3]}")
        self.assertEqual(w.indefinite, 0, f"indefinite answers during a planned failover: {w.counts()}")
        self.assertEqual(w.lost_in_flight, 0,
                         f"writes left without an answer (unknown outcome) during a planned failover: {w.counts()}")
        exit_code = self.c.exit_code(old)
        self.assertEqual(exit_code, 0, f"{old} exit code after SHUTDOWN")
        checked, _ = self.verify_acknowledged(self.client(new), [w])
        self.assertEqual(checked, w.n_acked)


class TestEmptyDataDirRejoin(ClusterTestCase):
    """A secondary whose data dir was wiped rejoins and converges."""
    external_ok = False

    def test_wiped_secondary_converges(self):
        p = self.c.wait_for_single_primary()
        cl = self.client(p)
        self.write_all(cl, {f"{self.prefix}.a{i}": i for i in range(100)})
        s = next(n for n in self.c.ids if n != p)
        self.c.wait_converged()
        self.c.stop_node(s)
        ddir = self.c.data_dir_of(s)
        for name in os.listdir(ddir):
            path = os.path.join(ddir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        self.assertEqual(os.listdir(ddir), [])
        self.write_all(cl, {f"{self.prefix}.b{i}": i for i in range(100)})
        self.c.restart(s)
        sts = self.c.wait_converged(min_applied=self.c.status(p)["last_applied"])
        self.assertEqual(sts[s]["digest"], sts[p]["digest"])
        self.assertEqual(sts[s]["keys"], sts[p]["keys"])
        self.assertEqual(sts[s]["role"], "secondary")


class TestDurability(ClusterTestCase):
    """kill -9 of every node under 4 concurrent clients loses no acknowledged write."""
    external_ok = False

    def test_kill_all_nodes_keeps_acknowledged_writes(self):
        self.c.wait_for_single_primary()
        stop, abandon = threading.Event(), threading.Event()
        writers = [RetryingWriter(f"client{w}", self.c.addresses(),
                                  (lambda i, w=w: f"{self.prefix}.c{w}.{i}"), stop, abandon=abandon)
                   for w in range(4)]
        for w in writers:
            w.start()
        try:
            wait_until(lambda: total_acked(writers) >= 2000, 120, "2,000 acknowledged writes")
            for nid in self.c.ids:            # kill -9 while the clients are still writing
                self.c.kill(nid)
        finally:
            stop.set()
            abandon.set()
            for w in writers:
                w.join(timeout=CLIENT_TIMEOUT + 5)
        for w in writers:
            self.check_writer(w)
            self.assertEqual(w.unexpected, [], w.counts())
        acked = total_acked(writers)
        self.assertGreaterEqual(acked, 2000)
        for nid in self.c.ids:
            self.c.restart(nid)
        p = self.c.wait_for_single_primary(ELECTION_WAIT)
        self.c.wait_converged()
        checked, _ = self.verify_acknowledged(self.client(p), writers)
        self.assertEqual(checked, len({k for w in writers for k in w.acked}))
        print(f"\n  [durability] {acked} acknowledged writes by 4 clients, kill -9 of all 3 nodes, "
              f"restart: {checked} acknowledged keys checked, 0 lost", flush=True)


class TestMembershipSecurity(ClusterTestCase):
    """Internal messages from outside the membership, or without the cluster secret, are refused
    and change nothing (term, commit index, data)."""
    SECRET = "test-cluster-secret-" + os.urandom(4).hex()
    cluster_options = {"cluster_secret": SECRET}
    TYPES = ("ELECTION", "REPLICATE", "HEARTBEAT", "TIMEOUT_NOW")

    # -- forged traffic
    def forged(self, mtype: str, sender: str, target: str, st: dict, key: str) -> dict:
        term = st["election_term"] + 100
        last, commit = st["last_log_index"], st["commit_index"]
        base = {"type": mtype, "from": sender, "to": target, "term": term}
        if mtype == "ELECTION":
            base.update(prevote=False, last_log_index=last + 1000, last_log_term=term, transfer=True)
        elif mtype == "REPLICATE":
            base.update(prev_index=last, prev_term=st["election_term"], commit=last + 1, ts=time.time(),
                        entries=[[last + 1, term, "SET", key, "pwned", "json"]])
        elif mtype == "HEARTBEAT":
            base.update(commit=commit + 1, ts=time.time())
        return base

    @staticmethod
    def proof(secret: str, nonce: str, sender: str, target: str) -> str:
        return hmac.new(secret.encode(), f"{nonce}|{sender}|{target}".encode(), hashlib.sha256).hexdigest()

    def converse(self, addr: str, lines: list, proof_for=None) -> str:
        """Send lines one by one and read what the node says after each (2 s at most).  The
        string "PROOF" stands for a PROOF of the last CHALLENGE's nonce made by proof_for(nonce).
        Returns "refused: ..." as soon as the node answers an error or closes the connection,
        "welcomed" if it answered WELCOME (and did not refuse later), else "silent"."""
        sock = socket.create_connection(split_addr(addr), timeout=2.0)
        f = sock.makefile("rb")
        nonce, outcome, readable = None, "silent", True
        try:
            for line in lines:
                if line == "PROOF":
                    line = {"type": "PROOF", "proof": proof_for(nonce or "")}
                try:
                    sock.sendall(json.dumps(line).encode() + b"\n")
                except OSError as e:
                    return f"refused: connection closed ({e.__class__.__name__})"
                if not readable:
                    continue
                try:
                    answer = f.readline()
                except socket.timeout:
                    readable = False                  # no answer (normal after WELCOME)
                    continue
                except OSError as e:
                    return f"refused: connection reset ({e.__class__.__name__})"
                if not answer:
                    return "refused: connection closed"
                msg = json.loads(answer)
                if msg.get("status") == "ERROR":
                    return f"refused: {msg.get('code')} {msg.get('message')}"
                if msg.get("type") == "CHALLENGE":
                    nonce = msg.get("nonce")
                elif msg.get("type") == "WELCOME":
                    outcome = "welcomed"
                else:
                    return f"unexpected answer {msg}"
            return outcome
        finally:
            f.close()
            sock.close()

    def baseline(self) -> dict:
        sts = self.c.wait_converged()
        return {n: (s["election_term"], s["commit_index"], s["last_applied"], s["digest"], s["primary"])
                for n, s in sts.items()}

    def assert_unchanged(self, base: dict, key: str) -> None:
        def same():
            now = self.c.statuses()
            return all(s is not None and (s["election_term"], s["commit_index"], s["last_applied"],
                                          s["digest"], s["primary"]) == base[n] for n, s in now.items())
        hold_for(same, 4 * ELECTION_TIMEOUT, "term/commit/applied/digest/primary unchanged after forged "
                 "internal messages", diag=self.c.describe)
        _, cl = self.primary_client()
        self.assertError(cl.get(key), "NOT_FOUND", "a forged REPLICATE wrote data")
        # the cluster still works, in the same term
        self.assertOk(cl.set(f"{self.prefix}.after", 1))
        sts = self.c.wait_converged()
        terms = {s["election_term"] for s in sts.values()}
        self.assertEqual(terms, {next(iter(base.values()))[0]}, summary(sts))

    def attempts(self, sender: str, key: str, secret: str | None = None, handshake: bool = True,
                 proof_instead: bool = False, label: str = "") -> list:
        """Forge every message type from `sender` to every other node; returns (what, outcome).
        handshake=False: the message line alone.  Else HELLO, then (secret given) a PROOF made
        with that secret, then the message; proof_instead: HELLO, then the message as the proof."""
        out = []
        for target in self.c.ids:
            if target == sender:
                continue
            st = self.c.status(target)
            for mtype in self.TYPES:
                msg = self.forged(mtype, sender, target, st, key)
                hello = {"type": "HELLO", "from": sender, "to": target}
                if not handshake:
                    lines = [msg]
                elif proof_instead or secret is None:
                    lines = [hello, msg]
                else:
                    lines = [hello, "PROOF", msg]
                proof_for = (lambda nonce, t=target: self.proof(secret, nonce, sender, t)) if secret is not None else None
                how = self.converse(self.c.address(target), lines, proof_for)
                out.append((f"{label}{mtype} {sender}->{target}", how))
        return out

    def assert_all_refused(self, results) -> None:
        bad = [(what, how) for what, how in results if not how.startswith("refused")]
        self.assertEqual(bad, [], "internal messages not refused")

    def test_unknown_node_id_refused(self):
        base = self.baseline()
        key = f"{self.prefix}.pwned"
        secret = self.SECRET if self.c.owned else ""     # even knowing the secret: not a member
        results = self.attempts("intruder9", key, handshake=False, label="raw: ")
        results += self.attempts("intruder9", key, secret=secret, label="handshake: ")
        self.assert_all_refused(results)
        self.assert_unchanged(base, key)

    def test_raw_internal_lines_without_handshake_refused(self):
        base = self.baseline()
        key = f"{self.prefix}.pwned"
        results = []
        for sender in self.c.ids:                    # known ids, but no HELLO first
            results += self.attempts(sender, key, handshake=False, label="raw: ")
        self.assert_all_refused(results)
        self.assert_unchanged(base, key)

    def test_known_id_without_secret_refused(self):
        if not self.c.owned:
            self.skipTest("KV_CLUSTER is set: needs a cluster started with --cluster-secret")
        base = self.baseline()
        key = f"{self.prefix}.pwned"
        sender = self.c.ids[1]
        results = self.attempts(sender, key, secret="not-the-secret", label="wrong secret: ")
        results += self.attempts(sender, key, secret="", label="empty secret: ")
        results += self.attempts(sender, key, proof_instead=True, label="no PROOF: ")
        self.assert_all_refused(results)
        self.assert_unchanged(base, key)

    def test_known_id_with_secret_is_welcomed(self):
        """Control for the refusals above: the handshake as written here is the real one."""
        if not self.c.owned:
            self.skipTest("KV_CLUSTER is set: needs a cluster started with --cluster-secret")
        sender, target = self.c.ids[1], self.c.ids[0]
        how = self.converse(self.c.address(target), [{"type": "HELLO", "from": sender, "to": target}, "PROOF"],
                            lambda nonce: self.proof(self.SECRET, nonce, sender, target))
        self.assertEqual(how, "welcomed")


if __name__ == "__main__":
    unittest.main()
