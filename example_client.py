#!/usr/bin/env python3
"""KV Store client: demos and interactive REPL over the kv_client library.

    python example_client.py --demo all            # basic, replication, types, restrictions, concurrent, failover, commands
    python example_client.py --demo interactive    # the REPL

The library (KVStoreClient, Pipeline, ClusterClient, the exceptions, check_answer and the other
helpers) lives in kv_client.py; every public name of it is re-exported here, so
`from example_client import KVStoreClient, ClusterClient` keeps working.

Layout (reading order):
    imports          the library's names from kv_client (re-exported, see __all__)
    Colours, Reporter  colours and the ✓/✗ lines shared by the demos; same(), wait_for()
    demos            `--demo basic|replication|types|restrictions|secondary|concurrent|failover|commands|all`
                     (the failover and commands demos kill and restart nodes through cluster_manager.py)
    Repl             `--demo interactive`: a thin, coloured REPL over ClusterClient
    main             the command line

The library needs only the standard library; colorama (colours) and psutil (to tell a killed
node's zombie from a live process) are used here when present.  To copy the example elsewhere,
take kv_client.py with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

try:                                    # optional: colours
    import colorama
except ImportError:                     # pragma: no cover - colorama is in requirements.txt
    colorama = None

try:                                    # optional: process inspection for the failover demo
    import psutil
except ImportError:                     # pragma: no cover
    psutil = None

from kv_cli import CliParser, at_least, positive
from kv_cli import fail as cli_fail
from kv_client import (ANY_NODE_COMMANDS, AUTH_CODES, AUTH_FAILED, AUTH_REQUIRED, BAD_REQUEST, DEFAULT_NODES,
                       DEFINITE_CODES, INDEFINITE_CODES, KEY_MAX_BYTES, NOT_FOUND, NOT_PRIMARY, NO_QUORUM,
                       OK, TIMEOUT, TOO_LARGE, UNKNOWN_COMMAND, ClusterClient, ClusterUnavailable,
                       ConnectFailed, ConnectionLost, KVConnectionError, KVError, KVStoreClient,
                       KeyNotFound, NotPrimary, Pipeline, PrimaryInfo, ProtocolMismatch, RequestTimeout,
                       answer_value, check_answer, check_key, encode_value, error_from_answer, parse_nodes,
                       parse_value, split_addr)
from kv_localcluster import WaitTimeout, wait_until

# The library's names are part of this script's interface (DESIGN §1: KVStoreClient is in
# example_client.py); its own public names follow.
__all__ = ["DEFAULT_NODES", "OK", "NOT_PRIMARY", "NOT_FOUND", "BAD_REQUEST", "UNKNOWN_COMMAND", "TOO_LARGE",
           "NO_QUORUM", "AUTH_REQUIRED", "AUTH_FAILED", "TIMEOUT", "DEFINITE_CODES", "INDEFINITE_CODES",
           "ANY_NODE_COMMANDS", "KEY_MAX_BYTES", "KVConnectionError", "ConnectFailed", "ConnectionLost",
           "RequestTimeout", "ProtocolMismatch", "ClusterUnavailable", "KVError", "NotPrimary",
           "KeyNotFound", "error_from_answer", "check_answer", "answer_value", "parse_nodes", "split_addr",
           "check_key", "encode_value", "parse_value", "KVStoreClient", "Pipeline", "PrimaryInfo",
           "ClusterClient",
           # demos, REPL, command line
           "Colours", "Reporter", "DemoFailed", "DemoContext", "same", "wait_for", "delete_many",
           "TYPE_SAMPLES", "demo_basic", "demo_replication", "demo_types", "demo_restrictions",
           "demo_concurrent", "demo_failover", "demo_commands", "kill_node", "DEMOS", "ALL_ORDER", "run_demos",
           "REPL_COMMANDS", "REPL_HELP", "Repl", "UsageError", "build_parser", "main", "HERE",
           "CLUSTER_MANAGER"]

HERE = Path(__file__).resolve().parent
CLUSTER_MANAGER = HERE / "cluster_manager.py"


# =============================================================================================
# Output: colours and the ✓/✗ reporter shared by the demos
# =============================================================================================
class Colours:
    """ANSI colours via colorama when stdout is a terminal (and NO_COLOR is unset); else none."""

    def __init__(self, enabled: bool | None = None, stream=None):
        stream = stream or sys.stdout
        if enabled is None:
            enabled = (stream.isatty() and "NO_COLOR" not in os.environ) or bool(os.environ.get("FORCE_COLOR"))
        self.enabled = enabled and colorama is not None
        if self.enabled:
            if hasattr(colorama, "just_fix_windows_console"):
                colorama.just_fix_windows_console()
            F, S = colorama.Fore, colorama.Style
            self.green, self.red, self.yellow, self.cyan = F.GREEN, F.RED, F.YELLOW, F.CYAN
            self.magenta, self.bold, self.dim, self.reset = F.MAGENTA, S.BRIGHT, S.DIM, S.RESET_ALL
        else:
            self.green = self.red = self.yellow = self.cyan = self.magenta = ""
            self.bold = self.dim = self.reset = ""

    def paint(self, colour: str, text: str) -> str:
        return f"{colour}{text}{self.reset}" if colour else text


class DemoFailed(Exception):
    """Raised inside a demo to stop it after a ✗ that makes the rest meaningless."""


class Reporter:
    """Prints coloured ✓/✗ lines and counts them; exit code 1 if any ✗."""

    def __init__(self, colours: Colours):
        self.c = colours
        self.passed = 0
        self.failed = 0
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)

    def header(self, title: str) -> None:
        c = self.c
        self._print(f"\n{c.bold}{c.cyan}== {title} =={c.reset}")

    def info(self, text: str) -> None:
        self._print(f"  {self.c.dim}{text}{self.c.reset}" if self.c.dim else f"  {text}")

    def ok(self, text: str) -> None:
        self.passed += 1
        self._print(f"  {self.c.paint(self.c.green, '✓')} {text}")

    def fail(self, text: str) -> None:
        self.failed += 1
        self._print(f"  {self.c.paint(self.c.red, '✗')} {text}")

    def warn(self, text: str) -> None:
        self._print(f"  {self.c.paint(self.c.yellow, '!')} {text}")

    def check(self, cond: bool, text: str, detail: str = "") -> bool:
        if cond:
            self.ok(text)
        else:
            self.fail(f"{text}{' — ' + detail if detail else ''}")
        return bool(cond)

    def require(self, cond: bool, text: str, detail: str = "") -> None:
        if not self.check(cond, text, detail):
            raise DemoFailed(text)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same JSON types (True != 1, 1 != 1.0, -0.0 keeps its sign)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and (a != 0 or str(a) == str(b)) or (a != a and b != b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def wait_for(predicate, timeout: float, interval: float = 0.02):
    """kv_localcluster.wait_until for the demos: the value, or None once the timeout passed (a
    demo reports a failed check instead of raising).  Exceptions from predicate count as not yet."""
    try:
        return wait_until(predicate, timeout, "a demo condition", interval=interval,
                          ignore=(KVConnectionError, KVError))
    except WaitTimeout:
        return None


# =============================================================================================
# Demos
# =============================================================================================
class DemoContext:
    def __init__(self, args: argparse.Namespace, rep: Reporter):
        self.args = args
        self.rep = rep
        self.nodes = parse_nodes(args.nodes)
        self.run = f"{os.getpid()}-{int(time.time()) % 100000}"

    def cluster(self, **kw) -> ClusterClient:
        kw.setdefault("deadline", self.args.deadline)
        return ClusterClient(self.nodes, password=self.args.password, **kw)


def delete_many(cc: ClusterClient, keys: list[str], threads: int = 8) -> int:
    """Delete keys from several threads (each on its own connection); returns how many failed.

    Not one pipeline: a node commits the writes of one connection one after another, so a long
    pipeline of writes takes (writes x commit latency) and can outlast the socket timeout."""
    failed = [0]
    lock = threading.Lock()

    def work(part: list[str]) -> None:
        for k in part:
            try:
                cc.delete(k)
            except (KVConnectionError, KVError):
                with lock:
                    failed[0] += 1

    ths = [threading.Thread(target=work, args=(keys[i::threads],), name=f"cleanup-{i}") for i in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return failed[0]


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def demo_basic(ctx: DemoContext) -> None:
    """SET / GET / DELETE on the primary with KVStoreClient, then the same through ClusterClient."""
    rep = ctx.rep
    rep.header("basic: SET / GET / DELETE")
    with ctx.cluster() as cc:
        p = cc.primary()
        rep.ok(f"primary is {p.node_id} at {p.addr} (term {p.term})")
        host, port = split_addr(p.addr)
        with KVStoreClient(host, port, password=ctx.args.password) as c:
            a = c.ping()
            rep.check(a.get("message") == "PONG", "PING -> PONG", str(a))
            key = f"demo:basic:{ctx.run}:greeting"
            a = c.set(key, "hello world")
            rep.check(a.get("status") == OK, f"SET {key} \"hello world\" -> {a.get('message', a)}", str(a))
            a = c.get(key)
            rep.check(a.get("status") == OK and a.get("value") == "hello world",
                      f"GET {key} -> {json.dumps(a.get('value'))}", str(a))
            a = c.delete(key)
            rep.check(a.get("status") == OK, f"DELETE {key} -> OK", str(a))
            a = c.get(key)
            rep.check(a.get("code") == NOT_FOUND, f"GET after DELETE -> NOT_FOUND ({a.get('message')})", str(a))
            a = c.delete(key)
            rep.check(a.get("code") == NOT_FOUND, "DELETE of a missing key -> NOT_FOUND", str(a))

            n = 100
            pipe = c.pipeline()
            for i in range(n):
                pipe.set(f"demo:basic:{ctx.run}:p{i}", i)
            for i in range(n):
                pipe.get(f"demo:basic:{ctx.run}:p{i}")
            t0 = time.monotonic()
            answers = pipe.execute()
            took = time.monotonic() - t0
            sets_ok = all(x.get("status") == OK for x in answers[:n])
            gets_ok = all(answers[n + i].get("value") == i for i in range(n))
            rep.check(sets_ok and gets_ok, f"pipeline: {n} SETs + {n} GETs in one write, answers in order "
                      f"({_fmt_ms(took)})")

        key = f"demo:basic:{ctx.run}:cc"
        cc.set(key, {"via": "ClusterClient"})
        rep.check(same(cc.get(key), {"via": "ClusterClient"}), "ClusterClient set/get round trip")
        rep.check(cc.exists(key) is True, "ClusterClient exists -> True")
        rep.check(key in cc.keys(f"demo:basic:{ctx.run}:*"), "ClusterClient keys(pattern) lists it")
        rep.check(cc.delete(key) is True, "ClusterClient delete -> True")
        rep.check(cc.delete(key) is False, "ClusterClient delete again -> False (did not exist)")
        try:
            cc.get(key)
            rep.fail("ClusterClient get of a missing key should raise KeyNotFound")
        except KeyNotFound as e:
            rep.ok(f"ClusterClient get of a missing key raises KeyNotFound ({e.message})")
        rep.check(cc.get(key, "fallback") == "fallback", "ClusterClient get(key, default) -> default")
        delete_many(cc, [f"demo:basic:{ctx.run}:p{i}" for i in range(n)])


def _cluster_table(rep: Reporter, statuses: dict[str, dict], names: dict[str, str] | None = None) -> None:
    rep.info(f"{'node':<8} {'address':<21} {'role':<10} {'term':>4} {'commit':>7} {'applied':>8} "
             f"{'keys':>6}  digest")
    for addr, st in statuses.items():
        if st.get("status") != OK:
            name = next((i for i, a in (names or {}).items() if a == addr), "?")
            rep.info(f"{name:<8} {addr:<21} {'DOWN':<10}")
            continue
        rep.info(f"{st.get('node_id', '?'):<8} {addr:<21} {st.get('role', '?'):<10} "
                 f"{st.get('election_term', 0):>4} {st.get('commit_index', 0):>7} "
                 f"{st.get('last_applied', 0):>8} {st.get('keys', 0):>6}  {st.get('digest', '')}")


def _converged(cc: ClusterClient, min_applied: int = 0, expect_nodes: int | None = None):
    """The cluster status if every node is reachable with equal last_applied (>= min_applied)
    and equal digest; else None."""
    sts = cc.cluster_status(1.0)
    ok = [s for s in sts.values() if s.get("status") == OK]
    if expect_nodes is not None and len(ok) < expect_nodes:
        return None
    if len(ok) != len(sts) or not ok:
        return None
    applied = {s.get("last_applied") for s in ok}
    digests = {s.get("digest") for s in ok}
    if len(applied) == 1 and len(digests) == 1 and next(iter(applied)) >= min_applied:
        return sts
    return None


def demo_replication(ctx: DemoContext) -> None:
    """Write through the primary, then watch every node's last_applied and digest converge."""
    rep = ctx.rep
    rep.header("replication: every node applies the same writes")
    with ctx.cluster() as cc:
        p = cc.primary()
        rep.ok(f"primary is {p.node_id} at {p.addr}")
        n = 50
        t0 = time.monotonic()
        for i in range(n):
            cc.set(f"demo:repl:{ctx.run}:{i}", {"i": i, "square": i * i})
        rep.ok(f"wrote {n} keys through the primary in {_fmt_ms(time.monotonic() - t0)}")
        target = cc.status(p.addr).get("commit_index", 0)
        rep.info(f"primary commit index after the writes: {target}")
        t0 = time.monotonic()
        sts = wait_for(lambda: _converged(cc, target), timeout=10.0)
        took = time.monotonic() - t0
        if sts:
            _cluster_table(rep, sts)
            one = next(iter(sts.values()))
            rep.ok(f"all {len(sts)} nodes applied index {one['last_applied']} with digest "
                   f"{one['digest']} (converged in {_fmt_ms(took)})")
        else:
            _cluster_table(rep, cc.cluster_status(1.0), cc.known_nodes())
            rep.fail("the nodes did not converge to one last_applied and digest within 10 s")
        delete_many(cc, [f"demo:repl:{ctx.run}:{i}" for i in range(n)])


TYPE_SAMPLES: list[tuple[str, Any]] = [
    ("string", "hello world"),
    ("empty string", ""),
    ("unicode string", "héllo wörld ✓ 日本語 🚀"),
    ("string with newline and tab", "line 1\nline 2\tend"),
    ("string that looks like a number", "42"),
    ("string that looks like true", "true"),
    ("string that looks like null", "null"),
    ("string that looks like JSON", '{"a": [1, 2]}'),
    ("string with spaces around", "  padded  "),
    ("integer", 42),
    ("negative integer", -7),
    ("zero", 0),
    ("big integer", 2 ** 63 + 1),
    ("float", 3.14159),
    ("negative float", -0.5),
    ("tiny float", 1e-300),
    ("float that is whole", 2.0),
    ("boolean true", True),
    ("boolean false", False),
    ("null", None),
    ("list", [1, "two", 3.0, None, True]),
    ("empty list", []),
    ("empty object", {}),
    ("nested object", {"user": {"name": "Ada", "langs": ["en", "fr"], "age": 36,
                                "active": True, "meta": {"score": 9.5, "tags": []}}}),
    ("list of objects", [{"id": 1}, {"id": 2, "x": [None, {"deep": [[]]}]}]),
]


def demo_types(ctx: DemoContext) -> None:
    """Every JSON type round-trips exactly (type and value)."""
    rep = ctx.rep
    rep.header("types: values round-trip exactly")
    with ctx.cluster() as cc:
        for i, (label, value) in enumerate(TYPE_SAMPLES):
            key = f"demo:types:{ctx.run}:{i}"
            cc.set(key, value)
            got = cc.get(key)
            shown = json.dumps(value, ensure_ascii=False)
            shown = shown if len(shown) <= 50 else shown[:47] + "..."
            rep.check(same(got, value), f"{label:<32} {shown}",
                      f"got {got!r} ({type(got).__name__})")
            cc.delete(key)
        try:
            cc.set(f"demo:types:{ctx.run}:nan", float("nan"))
            rep.fail("NaN should be refused by the client (not JSON)")
        except ValueError:
            rep.ok("NaN / Infinity are refused before sending (not JSON)")


def demo_restrictions(ctx: DemoContext) -> None:
    """Reads and writes on a secondary answer NOT_PRIMARY naming the primary."""
    rep = ctx.rep
    rep.header("restrictions: a secondary refuses reads and writes")
    with ctx.cluster() as cc:
        p = cc.primary()
        sts = cc.cluster_status()
        secondaries = [(a, s) for a, s in sts.items() if s.get("status") == OK and s.get("role") == "secondary"]
        rep.require(bool(secondaries), "found a secondary", "no reachable secondary")
        addr, st = secondaries[0]
        rep.ok(f"primary is {p.node_id} at {p.addr}; talking to secondary {st['node_id']} at {addr}")
        key = f"demo:restrict:{ctx.run}"
        host, port = split_addr(addr)
        with KVStoreClient(host, port, password=ctx.args.password) as c:
            for what, answer in (("SET", c.set(key, "nope")), ("GET", c.get(key)), ("DELETE", c.delete(key))):
                good = (answer.get("code") == NOT_PRIMARY and answer.get("primary") == p.node_id
                        and answer.get("primary_addr") == p.addr
                        and "This node is not primary" in answer.get("message", ""))
                rep.check(good, f"{what} on {st['node_id']} -> NOT_PRIMARY, primary {answer.get('primary')} "
                          f"at {answer.get('primary_addr')}", json.dumps(answer))
            rep.check(c.ping().get("message") == "PONG", f"PING on {st['node_id']} still works")
            s2 = c.status()
            rep.check(s2.get("role") == "secondary" and s2.get("primary") == p.node_id,
                      f"STATUS on {st['node_id']} works: role secondary, primary {s2.get('primary')}")
            try:
                check_answer(c.set(key, "nope"), addr)
                rep.fail("check_answer should raise NotPrimary")
            except NotPrimary as e:
                rep.ok(f"as an exception: NotPrimary(primary={e.primary!r}, primary_addr={e.primary_addr!r})")
        rep.check(cc.get(key, default=None) is None and not cc.exists(key),
                  "the refused SET was not applied anywhere")
        with ClusterClient([addr], deadline=ctx.args.deadline, password=ctx.args.password) as only_secondary:
            only_secondary.set(key, "via hint")
            rep.check(only_secondary.get(key) == "via hint" and only_secondary.primary_hint == p.addr,
                      f"a ClusterClient given only {st['node_id']} follows the hint to {p.node_id}")
            only_secondary.delete(key)


def demo_concurrent(ctx: DemoContext, threads: int = 8, per_thread: int = 200) -> None:
    """Threads sharing one ClusterClient, each on its own connection; verified afterwards."""
    rep = ctx.rep
    rep.header(f"concurrent: {threads} threads x {per_thread} writes")
    errors: list[str] = []
    conns: set[int] = set()
    lock = threading.Lock()
    with ctx.cluster() as cc:
        cc.primary()

        def worker(t: int) -> None:
            try:
                for i in range(per_thread):
                    cc.set(f"demo:conc:{ctx.run}:{t}:{i}", {"t": t, "i": i})
                with lock:
                    conns.add(id(cc._conn(cc.primary_hint)))
            except (KVConnectionError, KVError) as e:
                with lock:
                    errors.append(f"thread {t}: {e}")

        t0 = time.monotonic()
        ths = [threading.Thread(target=worker, args=(t,), name=f"writer-{t}") for t in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        took = time.monotonic() - t0
        total = threads * per_thread
        rep.check(not errors, f"{total} writes acknowledged in {took:.2f} s ({total / took:.0f} writes/s)",
                  "; ".join(errors[:3]))
        rep.check(len(conns) == threads, f"{len(conns)} distinct connections, one per thread")
        p = cc.primary()
        host, port = split_addr(p.addr)
        bad = []
        with KVStoreClient(host, port, password=ctx.args.password) as c:
            pipe = c.pipeline()
            for t in range(threads):
                for i in range(per_thread):
                    pipe.get(f"demo:conc:{ctx.run}:{t}:{i}")
            answers = pipe.execute()
            for n, a in enumerate(answers):
                t, i = divmod(n, per_thread)
                if a.get("value") != {"t": t, "i": i}:
                    bad.append((t, i, a))
            rep.check(not bad, f"all {total} values read back correctly", f"{len(bad)} wrong, e.g. {bad[:2]}")
        delete_many(cc, [f"demo:conc:{ctx.run}:{t}:{i}" for t in range(threads) for i in range(per_thread)])


# -- coordination with cluster_manager.py ----------------------------------------------------
def _cm_usable(ctx: DemoContext) -> str | None:
    """Why cluster_manager.py must not be used for this cluster, or None if it may.

    Its `--node nodeN` names a node of the cluster it was told about: the default one, or the
    one its options (--cluster-manager-args) describe.  Against any other --nodes it could kill
    a node of a different cluster, so then we do not call it at all."""
    if ctx.args.no_cluster_manager:
        return "--no-cluster-manager given"
    if not CLUSTER_MANAGER.exists():
        return f"{CLUSTER_MANAGER.name} not found next to {Path(__file__).name}"
    if not ctx.args.cluster_manager_args and ctx.nodes != list(DEFAULT_NODES):
        return ("--nodes is not the default cluster and no --cluster-manager-args tell "
                "cluster_manager.py which cluster that is")
    return None


def _cm_command(ctx: DemoContext, action: str, node: str) -> list[str]:
    cmd = [sys.executable, str(CLUSTER_MANAGER), "--action", action, "--node", node]
    if ctx.args.cluster_manager_args:
        cmd += shlex.split(ctx.args.cluster_manager_args)
    return cmd


def _run_cm(ctx: DemoContext, action: str, node: str, timeout: float = 30.0) -> tuple[bool, str]:
    why_not = _cm_usable(ctx)
    if why_not:
        return False, why_not
    cmd = _cm_command(ctx, action, node)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(cmd[1:])}` did not finish within {timeout:.0f} s"
    out = (r.stdout + r.stderr).strip()
    last = out.splitlines()[-1] if out else ""
    return r.returncode == 0, last or f"exit code {r.returncode}"


def _pid_alive(pid: int) -> bool:
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_node(ctx: DemoContext, node_id: str, pid: int) -> str:
    """SIGKILL a node: through cluster_manager.py when it knows the node, else os.kill(pid)."""
    ok, msg = _run_cm(ctx, "kill", node_id)
    if ok and wait_for(lambda: not _pid_alive(pid), 3.0):
        return "cluster_manager.py --action kill"
    how = f"SIGKILL to pid {pid} (not via cluster_manager.py: {msg})"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass                                       # it died in the meantime: that is the goal
    return how


def demo_failover(ctx: DemoContext) -> None:
    """Kill the primary in the middle of a write loop; the writes pause, then carry on."""
    rep = ctx.rep
    args = ctx.args
    rep.header("failover: kill -9 the primary while writing")
    with ctx.cluster() as cc:
        p, st = cc._find_primary()
        pid = st.get("pid")
        rep.require(isinstance(pid, int), f"primary is {p.node_id} at {p.addr}, pid {pid}")
        rep.require(bool(wait_for(lambda: _converged(cc), 10.0)), "all nodes are up and in sync before the kill")

        acked: dict[str, int] = {}
        timeline: list[tuple[float, float, str | None]] = []   # (sent, acked, primary)
        errors: list[str] = []
        kill_at: list[float] = []
        how: list[str] = []
        before = max(50, args.failover_writes // 4)
        stop_after = args.failover_writes
        done = threading.Event()

        def killer() -> None:
            while len(acked) < before and not done.is_set():
                time.sleep(0.005)
            try:
                how.append(kill_node(ctx, p.node_id, pid))
            except OSError as e:                       # e.g. not allowed to signal that pid
                how.append(f"failed: {e}")
                done.set()
                return
            kill_at.append(time.monotonic())           # the process is gone (checked) by now

        kt = threading.Thread(target=killer, name="killer", daemon=True)
        kt.start()
        i = 0
        loop_deadline = time.monotonic() + args.deadline + 30
        try:
            while time.monotonic() < loop_deadline and not (done.is_set() and not kill_at):
                key = f"demo:failover:{ctx.run}:{i}"
                t0 = time.monotonic()
                try:
                    cc.set(key, i)
                    acked[key] = i
                    timeline.append((t0, time.monotonic(), cc.primary_hint))
                except (KVConnectionError, KVError) as e:
                    errors.append(f"write {i}: {e}")
                i += 1
                if kill_at and len(acked) >= stop_after and timeline[-1][2] != p.addr:
                    break
        finally:
            done.set()
            kt.join()
        if not kill_at:
            rep.fail(f"the primary was never killed ({how[0] if how else 'the writes never got going'})")
            return
        rep.ok(f"killed {p.node_id} (pid {pid}) after {before} writes via {how[0]}")
        rep.check(not errors, f"{len(acked)} writes acknowledged, {len(errors)} exceptions reached the caller",
                  "; ".join(errors[:3]))
        t_kill = kill_at[0]
        pause = max((b - a for a, b, _ in timeline if b >= t_kill), default=0.0)
        first_new = next((b for a, b, pr in timeline if b >= t_kill and pr != p.addr), None)
        if first_new is not None:
            rep.ok(f"longest write pause: {_fmt_ms(pause)}; kill -> first write acknowledged by the "
                   f"new primary: {_fmt_ms(first_new - t_kill)} ({cc.retries} retries)")
        else:
            rep.fail("no write was acknowledged by a new primary")
        newp = cc.primary()
        rep.check(newp.node_id != p.node_id, f"new primary is {newp.node_id} at {newp.addr} (term {newp.term})")

        host, port = split_addr(newp.addr)
        with KVStoreClient(host, port, password=args.password) as c:
            pipe = c.pipeline()
            for key in acked:
                pipe.get(key)
            answers = pipe.execute()
            lost = [k for (k, v), a in zip(acked.items(), answers) if a.get("value") != v]
        rep.check(not lost, f"all {len(acked)} acknowledged writes are on the new primary",
                  f"{len(lost)} lost, e.g. {lost[:3]}")

        if args.no_restart:
            rep.warn(f"not restarting {p.node_id} (--no-restart)")
        else:
            ok, msg = _run_cm(ctx, "restart", p.node_id, timeout=60.0)
            if not ok:
                rep.warn(f"could not restart {p.node_id}: {msg}")
                rep.warn(f"restart it yourself: python cluster_manager.py --action restart --node {p.node_id}"
                         f"{' ' + args.cluster_manager_args if args.cluster_manager_args else ''}")
            else:
                t0 = time.monotonic()
                sts = wait_for(lambda: _converged(cc, expect_nodes=len(ctx.nodes)), 20.0)
                rep.info(f"cluster_manager.py: {msg}")
                rep.check(bool(sts), f"{p.node_id} restarted via cluster_manager.py and caught up "
                          f"({_fmt_ms(time.monotonic() - t0)} after the restart returned)",
                          "it did not converge with the others within 20 s")
        failed = delete_many(cc, list(acked))
        if failed:
            rep.info(f"cleanup: {failed} demo keys could not be deleted")


def demo_commands(ctx: DemoContext, threads: int = 4, per_thread: int = 25) -> None:
    """Redis-style data commands: counters, MSET/MGET, CAS; an optimistic WATCH/EXEC counter
    raced by several threads; a TTL that outlives a kill -9 of the primary."""
    rep = ctx.rep
    args = ctx.args
    rep.header("commands: counters, MSET/MGET, CAS, WATCH/EXEC, a TTL across a failover")
    base = f"demo:cmd:{ctx.run}"
    with ctx.cluster() as cc:
        rep.check(cc.incr(f"{base}:hits") == 1 and cc.incr(f"{base}:hits", 41) == 42,
                  "INCR on a missing key starts at 0: 1, then INCRBY 41 -> 42")
        cc.mset({f"{base}:a": 1, f"{base}:b": [2, 3]})
        rep.check(cc.mget([f"{base}:a", f"{base}:b", f"{base}:none"]) == [1, [2, 3], None],
                  "MSET sets two keys in one log entry; MGET reads them at one point in time")
        rep.check(cc.cas(f"{base}:a", 1, 2) and not cc.cas(f"{base}:a", 1, 3) and cc.get(f"{base}:a") == 2,
                  "CAS a 1 -> 2 swaps; CAS a 1 -> 3 then does not (the value is 2)")

        # an optimistic counter: WATCH/GET/MULTI/SET/EXEC retried when another client got there first
        key = f"{base}:counter"
        aborted = [0]
        errors: list[str] = []

        def worker() -> None:
            with ClusterClient(ctx.nodes, deadline=args.deadline, password=args.password) as mine:
                for _ in range(per_thread):
                    try:
                        _, attempts = mine.watch_update(key, lambda v: (v or 0) + 1)
                        aborted[0] += attempts - 1
                    except (KVConnectionError, KVError) as e:
                        errors.append(str(e))
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        want = threads * per_thread
        rep.check(not errors and cc.get(key) == want,
                  f"{threads} threads x {per_thread} WATCH/EXEC increments: counter = {cc.get(key)} "
                  f"(want {want}); {aborted[0]} EXECs aborted by WATCH and retried", "; ".join(errors[:2]))

        # a TTL outlives a failover
        p, st = cc._find_primary()
        pid = st.get("pid")
        ttl_key = f"{base}:session"
        t_sent = time.monotonic()   # the primary stamps the deadline between this and t_set
        cc.set_ex(ttl_key, {"user": "ada"}, 3)
        t_set = time.monotonic()
        rep.ok(f"SET {ttl_key} EX 3 on {p.node_id}; TTL {cc.ttl(ttl_key)} s")
        if not isinstance(pid, int):
            rep.warn("the primary did not report its pid: skipping the failover part")
            return
        how = kill_node(ctx, p.node_id, pid)
        rep.ok(f"killed the primary {p.node_id} ({how})")
        value = cc.get(ttl_key, None)
        newp = cc.primary()
        left = 3 - (time.monotonic() - t_set)
        rep.check(value == {"user": "ada"} and newp.node_id != p.node_id,
                  f"the new primary {newp.node_id} still has it, {left:.1f} s before its deadline "
                  f"(TTL {cc.ttl(ttl_key)} s)")
        gone = wait_for(lambda: cc.get(ttl_key, None) is None, 10.0)
        t_gone = time.monotonic()
        # never before 3 s after the SET was sent (the deadline is the primary's clock at the
        # SET, in whole ms, plus 3 s); measured from the acknowledgement it may look a few ms early
        rep.check(bool(gone) and t_gone - t_sent >= 3.0 - 0.002,
                  f"gone {t_gone - t_sent:.1f} s after the SET was sent: the deadline moved to the new "
                  "primary with the key; the new primary deletes it through the log")
        if args.no_restart:
            rep.warn(f"not restarting {p.node_id} (--no-restart)")
        else:
            ok, msg = _run_cm(ctx, "restart", p.node_id, timeout=60.0)
            if ok:
                rep.check(bool(wait_for(lambda: _converged(cc, expect_nodes=len(ctx.nodes)), 20.0)),
                          f"{p.node_id} restarted and caught up; the key is still gone: "
                          f"{cc.get(ttl_key, None) is None}")
            else:
                rep.warn(f"could not restart {p.node_id}: {msg}")
        for k in ("hits", "a", "b", "counter"):
            cc.delete(f"{base}:{k}")


DEMOS = {
    "basic": demo_basic,
    "replication": demo_replication,
    "types": demo_types,
    "restrictions": demo_restrictions,
    "secondary": demo_restrictions,
    "concurrent": demo_concurrent,
    "failover": demo_failover,
    "commands": demo_commands,
}
def auth_hint(e: KVError) -> str:
    """What to do about AUTH_FAILED / AUTH_REQUIRED, in one line."""
    if e.code == AUTH_FAILED:
        return (f"the node {e.node or ''} refused the password (AUTH_FAILED): give the one the nodes run with "
                f"(--password, as in their --requirepass-file / KV_REQUIREPASS); retrying cannot help")
    return (f"the node {e.node or ''} requires a password (AUTH_REQUIRED): pass --password (or set KV_PASSWORD)")


ALL_ORDER = ("basic", "replication", "types", "restrictions", "concurrent", "failover", "commands")


def run_demos(names: Iterable[str], args: argparse.Namespace) -> int:
    colours = Colours(False if args.no_color else None)
    rep = Reporter(colours)
    ctx = DemoContext(args, rep)
    print(f"KV Store demo against {', '.join(ctx.nodes)}", flush=True)
    for name in names:
        try:
            DEMOS[name](ctx)
        except DemoFailed as e:
            rep.info(f"{name} stopped: {e}")
        except KVError as e:
            rep.fail(f"{name}: {type(e).__name__}: {e}")
            if e.code in AUTH_CODES:           # every other demo would fail the same way
                print(f"stopping: {auth_hint(e)}", file=sys.stderr, flush=True)
                return 2
        except (KVConnectionError, ValueError) as e:
            rep.fail(f"{name}: {type(e).__name__}: {e}")
    c = colours
    verdict = (c.paint(c.green, "all checks passed") if not rep.failed
               else c.paint(c.red, f"{rep.failed} check(s) failed"))
    print(f"\n{rep.passed} passed, {rep.failed} failed: {verdict}", flush=True)
    return 1 if rep.failed else 0


# =============================================================================================
# REPL
# =============================================================================================
REPL_COMMANDS = ("set", "get", "delete", "del", "keys", "exists", "incr", "decr", "mget", "mset",
                 "expire", "ttl", "persist", "cas", "redis", "status", "cluster", "use", "ping",
                 "help", "quit", "exit")
REPL_KEY_COMMANDS = ("get", "delete", "del", "exists", "set", "incr", "decr", "mget", "expire",
                     "ttl", "persist", "cas")
REPL_HELP = [
    ("set <key> <value> [ex <s>]", "store a value (JSON if it parses, else the text); ex: expire in s seconds"),
    ("get <key>", "print the value as JSON"),
    ("delete <key>", "remove a key (alias: del)"),
    ("exists <key>", "true or false"),
    ("keys [pattern]", "list keys matching a glob (default *)"),
    ("incr <key> [by]", "add to an integer counter (missing = 0); decr subtracts"),
    ("mget <key>...", "several values read at one point in time"),
    ("mset <k> <v> ...", "set several keys atomically (values: JSON without spaces)"),
    ("expire <key> <s>", "give a key a TTL; ttl <key> shows it (-1 none, -2 missing); persist removes it"),
    ("cas <key> <old> <new>", "compare-and-set: write new only if the value is old"),
    ("redis <command...>", "any other command as a line request on the primary (MULTI, EXEC, SCAN, ...)"),
    ("status [node]", "STATUS of a node (default: the one in use, or the primary)"),
    ("cluster", "a table of every node: role, term, indexes, keys, digest"),
    ("use <node>|auto", "send commands to one node as-is (see NOT_PRIMARY); auto = follow the primary"),
    ("ping [node]", "round-trip time to a node"),
    ("help", "this list"),
    ("quit / exit", "leave (Ctrl-D and Ctrl-C too)"),
]


class Repl:
    """A thin REPL over ClusterClient: parse a line, call the library, print the result.

    Invariants: every command's failure is one red line and the loop goes on; EOF and Ctrl-C at
    the prompt exit with status 0; Ctrl-C during a command cancels that command only.  readline
    (history in ~/.kv_store_history or $KV_STORE_HISTORY, tab completion of commands, of node ids
    after `use`/`status`/`ping`, and of keys seen this session) is used only when stdin is a
    terminal, so a piped session prints nothing but prompts and answers.
    """

    def __init__(self, cc: ClusterClient, colours: Colours, out=None, interactive: bool | None = None):
        self.cc = cc
        self.c = colours
        self.out = out or sys.stdout
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.pinned: str | None = None            # address of a `use`d node, None = follow primary
        self.seen_keys: set[str] = set()
        self.readline = None
        self._matches: list[str] = []
        self.history_path = Path(os.environ.get("KV_STORE_HISTORY") or Path.home() / ".kv_store_history")

    # -- output
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        self.say(self.c.paint(self.c.red, f"(error) {text}"))

    def note(self, text: str) -> None:
        self.say(self.c.paint(self.c.yellow, text))

    # -- readline
    def setup_readline(self) -> None:
        if not self.interactive:
            return
        try:
            import readline
        except ImportError:                       # e.g. Windows without pyreadline: plain input()
            return
        self.readline = readline
        try:
            readline.read_history_file(self.history_path)
        except (FileNotFoundError, PermissionError):
            pass                                  # first session, or no access: start empty
        except OSError as e:
            self.note(f"history not loaded ({e})")
        readline.set_history_length(1000)
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self.complete)
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    def save_history(self) -> None:
        if self.readline is None:
            return
        try:
            self.readline.write_history_file(self.history_path)
        except OSError as e:
            self.note(f"history not saved to {self.history_path}: {e}")

    def candidates(self, buffer: str, text: str) -> list[str]:
        words = buffer.split()
        if buffer.endswith(" ") or not buffer:
            words.append("")
        if len(words) <= 1:
            return [c + " " for c in REPL_COMMANDS if c.startswith(text.lower())]
        cmd = words[0].lower()
        if len(words) == 2:
            if cmd in ("use", "status", "ping"):
                names = sorted(self.cc.known_nodes()) + (["auto"] if cmd == "use" else [])
                return [n + " " for n in names if n.startswith(text)]
            if cmd in REPL_KEY_COMMANDS:
                return [k + " " for k in sorted(self.seen_keys) if k.startswith(text)]
        return []

    def complete(self, text: str, state: int):
        """readline completer (exceptions here would be swallowed by readline: keep it simple)."""
        if state == 0:
            buffer = self.readline.get_line_buffer()[: self.readline.get_begidx()] if self.readline else ""
            self._matches = self.candidates(buffer, text)
        return self._matches[state] if state < len(self._matches) else None

    # -- loop
    def prompt(self) -> str:
        where = self.pinned or self.cc.primary_hint
        name = self._name_of(where) if where else "?"
        mark = ":" if self.pinned is None else "@"
        if self.interactive and self.c.enabled:    # \001..\002: zero-width for readline
            return f"\001{self.c.cyan}\002kv{mark}{name}\001{self.c.reset}\002> "
        return f"kv{mark}{name}> "

    def _name_of(self, addr: str | None) -> str:
        for nid, a in self.cc.known_nodes().items():
            if a == addr:
                return nid
        return addr or "?"

    def run(self) -> int:
        self.setup_readline()
        try:
            if self.interactive:
                self.banner()
            else:
                try:
                    self.cc.cluster_status(1.0)    # learn node ids for prompts and `use`
                except (KVConnectionError, KVError):
                    pass                           # nodes down: commands will retry and report
            while True:
                try:
                    line = input(self.prompt())
                except EOFError:
                    if self.interactive:
                        self.say()
                    return 0
                except KeyboardInterrupt:
                    self.say()
                    return 0
                try:
                    if self.execute(line) is False:
                        return 0
                except KeyboardInterrupt:
                    self.note("(interrupted)")
        finally:
            self.save_history()
            self.cc.close()

    def banner(self) -> None:
        c = self.c
        self.say(f"{c.bold}KV Store{c.reset} interactive client — nodes {', '.join(self.cc.nodes)}")
        try:
            p = self.cc.primary()
            self.say(f"primary: {c.paint(c.green, p.node_id)} at {p.addr} (term {p.term}); "
                     f"type 'help' for commands, Ctrl-D to leave")
        except ClusterUnavailable as e:
            self.note(f"no primary yet ({e.last_error}); commands will keep trying")

    def execute(self, line: str):
        """Run one input line.  Returns False to quit."""
        line = line.strip()
        if not line:
            return None
        m = re.match(r"(\S+)\s*(.*)$", line, re.S)
        cmd, rest = m.group(1).lower(), m.group(2)
        handler = getattr(self, f"cmd_{cmd}", None) if cmd in REPL_COMMANDS else None
        if handler is None:
            self.error(f"unknown command '{m.group(1)}' — type 'help'")
            return None
        before = self.cc.primary_hint
        try:
            result = handler(rest)
        except UsageError as e:
            self.error(f"usage: {e}")
            return None
        except NotPrimary as e:
            where = f" — primary is {e.primary} at {e.primary_addr}" if e.primary_addr else ""
            self.error(f"NOT_PRIMARY from {self._name_of(e.node)}: this node is not primary{where}")
            return None
        except KeyNotFound as e:
            self.say(self.c.paint(self.c.yellow, f"(not found) {e.message}"))
            return None
        except KVError as e:
            self.error(str(e))
            return None
        except KVConnectionError as e:
            self.error(str(e))
            return None
        except ValueError as e:
            self.error(str(e))
            return None
        after = self.cc.primary_hint
        if self.pinned is None and before and after and before != after:
            self.note(f"(primary is now {self._name_of(after)} at {after})")
        return result

    # -- routing: the pinned node as-is, or the cluster
    def _pinned_call(self, method: str, *a) -> dict:
        conn = self.cc._conn(self.pinned)
        return check_answer(getattr(conn, method)(*a), self.pinned)

    def cmd_set(self, rest: str):
        m = re.match(r"(\S+)\s+(.+?)(?:\s+ex\s+(\d+))?\s*$", rest, re.S | re.I)
        if not m:
            raise UsageError("set <key> <value> [ex <seconds>]")
        key, value = m.group(1), parse_value(m.group(2))
        check_key(key)
        if m.group(3):
            self._data("set_ex", key, value, int(m.group(3)))
        elif self.pinned:
            self._pinned_call("set", key, value)
        else:
            self.cc.set(key, value)
        self.seen_keys.add(key)
        self.say(self.c.paint(self.c.green, "OK"))

    def _data(self, method: str, *a):
        """A data command: on the pinned node as-is (answer dict), else through the cluster."""
        if self.pinned:
            return self._pinned_call(method, *a)
        return getattr(self.cc, method)(*a)

    def cmd_incr(self, rest: str, sign: int = 1):
        parts = rest.split()
        if len(parts) not in (1, 2) or (len(parts) == 2 and not re.fullmatch(r"-?\d+", parts[1])):
            raise UsageError("incr <key> [by]" if sign > 0 else "decr <key> [by]")
        key = check_key(parts[0])
        by = sign * (int(parts[1]) if len(parts) == 2 else 1)
        r = self._data("incr", key, by)
        self.seen_keys.add(key)
        self.say(str(r["value"] if isinstance(r, dict) else r))

    def cmd_decr(self, rest: str):
        self.cmd_incr(rest, -1)

    def cmd_mget(self, rest: str):
        keys = [check_key(k) for k in rest.split()]
        if not keys:
            raise UsageError("mget <key> [key ...]")
        if self.pinned:
            a = self._pinned_call("mget", keys)
            pairs = list(zip(a["values"], a["found"]))
        else:
            pairs = self.cc.mget_found(keys)
        for i, (k, (v, found)) in enumerate(zip(keys, pairs), 1):
            self.say(f"{i}) {k} = " + (_show(v) if found else self.c.paint(self.c.yellow, "(not found)")))
        self.seen_keys.update(keys)

    def cmd_mset(self, rest: str):
        parts = rest.split()
        if not parts or len(parts) % 2:
            raise UsageError("mset <key> <value> [key value ...]")
        mapping = {check_key(parts[i]): parse_value(parts[i + 1]) for i in range(0, len(parts), 2)}
        self._data("mset", mapping)
        self.seen_keys.update(mapping)
        self.say(self.c.paint(self.c.green, f"OK ({len(mapping)} keys)"))

    def cmd_expire(self, rest: str):
        parts = rest.split()
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise UsageError("expire <key> <seconds>")
        r = self._data("expire", check_key(parts[0]), int(parts[1]))
        done = r["set"] if isinstance(r, dict) else r
        self.say(self.c.paint(self.c.green, "OK") if done else
                 self.c.paint(self.c.yellow, f"(not found) Key '{parts[0]}' not found"))

    def cmd_ttl(self, rest: str):
        key = self._one_key(rest, "ttl <key>")
        r = self._data("ttl", key)
        t = r["ttl"] if isinstance(r, dict) else r
        self.say({-1: "(no TTL)", -2: self.c.paint(self.c.yellow, "(not found)")}.get(t, f"{t} s"))

    def cmd_persist(self, rest: str):
        key = self._one_key(rest, "persist <key>")
        r = self._data("persist", key)
        done = r["persisted"] if isinstance(r, dict) else r
        self.say("TTL removed" if done else "(no TTL to remove)")

    def cmd_cas(self, rest: str):
        m = re.match(r"(\S+)\s+(\S+)\s+(.+)$", rest, re.S)
        if not m:
            raise UsageError("cas <key> <expected> <new value>")
        key = check_key(m.group(1))
        r = self._data("cas", key, parse_value(m.group(2)), parse_value(m.group(3)))
        swapped = r["swapped"] if isinstance(r, dict) else r
        self.seen_keys.add(key)
        self.say(self.c.paint(self.c.green, "swapped") if swapped else
                 self.c.paint(self.c.yellow, "not swapped (the value differs, or the key is missing)"))

    def cmd_redis(self, rest: str):
        """Any request line as-is: on the pinned node, else the primary (not re-sent after an
        indefinite failure).  MULTI/EXEC need one connection: pin a node first ('use')."""
        if not rest.strip():
            raise UsageError("redis <command> [args ...]")
        if self.pinned:
            a = check_answer(self.cc._conn(self.pinned).send_command(rest), self.pinned)
        else:
            a = self.cc.execute_command(rest)
        for k, v in a.items():
            if k != "status":
                self.say(f"{k}: {json.dumps(v)}")

    def _one_key(self, rest: str, usage: str) -> str:
        parts = rest.split()
        if len(parts) != 1:
            raise UsageError(usage)
        return check_key(parts[0])

    def cmd_get(self, rest: str):
        key = self._one_key(rest, "get <key>")
        if self.pinned:
            value = answer_value(self._pinned_call("get", key))
        else:
            value = self.cc.get(key)
        self.seen_keys.add(key)
        self.say(_show(value))

    def cmd_delete(self, rest: str):
        key = self._one_key(rest, "delete <key>")
        if self.pinned:
            self._pinned_call("delete", key)
            removed = True
        else:
            removed = self.cc.delete(key)
        self.seen_keys.discard(key)
        self.say(self.c.paint(self.c.green, "deleted") if removed else
                 self.c.paint(self.c.yellow, f"(not found) Key '{key}' not found"))

    cmd_del = cmd_delete

    def cmd_exists(self, rest: str):
        key = self._one_key(rest, "exists <key>")
        if self.pinned:
            a = self._pinned_call("exists", key)
            found = bool(a.get("exists", a.get("count")))
        else:
            found = self.cc.exists(key)
        self.say("true" if found else "false")

    def cmd_keys(self, rest: str):
        parts = rest.split()
        if len(parts) > 1:
            raise UsageError("keys [pattern]")
        pattern = parts[0] if parts else "*"
        if self.pinned:
            keys = self._pinned_call("keys", pattern).get("keys") or []
        else:
            keys = self.cc.keys(pattern)
        self.seen_keys.update(keys[:10000])
        if not keys:
            self.say("(empty)")
        for i, k in enumerate(keys, 1):
            self.say(f"{i}) {k}")

    def cmd_status(self, rest: str):
        parts = rest.split()
        if len(parts) > 1:
            raise UsageError("status [node]")
        if parts:
            st = self.cc.status(parts[0])
        elif self.pinned:
            st = self.cc.status(self.pinned)
        else:
            st = self.cc.status()
        for k, v in st.items():
            if k == "status":
                continue
            if k == "peers" and isinstance(v, dict):
                for pid, info in v.items():
                    self.say(f"  peer {pid}: {json.dumps(info)}")
                continue
            self.say(f"{k:>15}: {v}")

    def cmd_cluster(self, rest: str):
        if rest.strip():
            raise UsageError("cluster")
        sts = self.cc.cluster_status(1.0)
        c = self.c
        self.say(f"{'node':<8} {'address':<21} {'role':<10} {'term':>5} {'commit':>8} {'applied':>8} "
                 f"{'keys':>7}  digest")
        digests = {s.get("digest") for s in sts.values() if s.get("status") == OK}
        for addr, st in sts.items():
            if st.get("status") != OK:
                self.say(c.paint(c.red, f"{self._name_of(addr):<8} {addr:<21} {'down':<10}"))
                continue
            role = st.get("role", "?")
            colour = c.green if role == "primary" else c.yellow if role == "candidate" else ""
            mark = "" if len(digests) == 1 else " *"
            self.say(f"{st.get('node_id', '?'):<8} {addr:<21} {c.paint(colour, f'{role:<10}')} "
                     f"{st.get('election_term', 0):>5} {st.get('commit_index', 0):>8} "
                     f"{st.get('last_applied', 0):>8} {st.get('keys', 0):>7}  {st.get('digest', '')}{mark}")

    def cmd_use(self, rest: str):
        parts = rest.split()
        if len(parts) != 1:
            raise UsageError("use <node>|auto")
        if parts[0].lower() in ("auto", "primary", "cluster"):
            self.pinned = None
            self.say("following the primary")
            return
        addr = self.cc.resolve(parts[0])
        if addr not in self.cc.addresses():
            raise ValueError(f"{parts[0]} is not a member of this cluster "
                             f"(members: {', '.join(sorted(self.cc.known_nodes())) or ', '.join(self.cc.addresses())})")
        self.pinned = addr
        self.say(f"using {self._name_of(self.pinned)} at {self.pinned} as-is ('use auto' to follow the primary)")

    def cmd_ping(self, rest: str):
        parts = rest.split()
        if len(parts) > 1:
            raise UsageError("ping [node]")
        target = parts[0] if parts else None
        if target is None and self.pinned is None:
            addr = self.cc.primary().addr
        else:
            addr = self.cc.resolve(target) if target else self.pinned
        conn = self.cc._conn(addr)
        t0 = time.perf_counter()
        a = check_answer(conn.ping(), addr)
        ms = (time.perf_counter() - t0) * 1000
        self.say(f"{a.get('message', 'PONG')} from {self._name_of(addr)} ({ms:.2f} ms)")

    def cmd_help(self, rest: str):
        for usage, text in REPL_HELP:
            self.say(f"  {self.c.paint(self.c.cyan, f'{usage:<28}')} {text}")

    def cmd_quit(self, rest: str):
        return False

    cmd_exit = cmd_quit


class UsageError(Exception):
    """Wrong number/shape of arguments to a REPL command."""


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


# =============================================================================================
# Command line
# =============================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="example_client.py",
        description="KV Store client: demos and an interactive REPL over ClusterClient.",
        epilog="Demos print ✓/✗ lines and exit 1 if any check failed.  `failover` kills the primary "
               "(via cluster_manager.py, else SIGKILL of the pid the node reports) and restarts it.")
    p.add_argument("--demo", default="basic",
                   choices=[*DEMOS, "all", "interactive"], help="what to run (default basic)")
    p.add_argument("--nodes", default=",".join(DEFAULT_NODES),
                   help="comma-separated host:port of the nodes (default the default cluster)")
    p.add_argument("--deadline", type=positive(float), default=10.0,
                   help="seconds an operation may keep retrying before giving up (default 10)")
    p.add_argument("--password", default=os.environ.get("KV_PASSWORD") or None,
                   help="AUTH secret when the nodes run with --requirepass (default $KV_PASSWORD; the environment "
                        "keeps it out of ps)")
    p.add_argument("--cluster-manager-args", default="",
                   help="extra options for cluster_manager.py kill/restart, e.g. \"--base-port 7000 --data-dir /tmp/kv\"")
    p.add_argument("--no-cluster-manager", action="store_true",
                   help="failover demo: kill with SIGKILL of the reported pid and do not restart via cluster_manager.py")
    p.add_argument("--no-restart", action="store_true", help="failover demo: leave the killed node down")
    p.add_argument("--failover-writes", type=at_least(1), default=1000,
                   help="failover demo: writes to acknowledge in total (default 1000)")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours (also NO_COLOR=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parse_nodes(args.nodes)
    except ValueError as e:
        return cli_fail("example_client.py", f"--nodes: {e}")
    try:
        shlex.split(args.cluster_manager_args)
    except ValueError as e:
        return cli_fail("example_client.py", f"--cluster-manager-args: {e}")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")   # ✓/✗ on an ASCII-only terminal
    if args.demo == "interactive":
        colours = Colours(False if args.no_color else None)
        cc = ClusterClient(args.nodes, deadline=args.deadline, password=args.password)
        return Repl(cc, colours).run()
    names = ALL_ORDER if args.demo == "all" else (args.demo,)
    try:
        return run_demos(names, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
