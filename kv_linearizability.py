"""kv_linearizability.py: record a concurrent history and check it is linearizable.

    from kv_linearizability import History, check
    h = History()
    op = h.invoke("c1", "write", "k", 7); ...; h.complete(op, "ok")
    op = h.invoke("c2", "read", "k");     ...; h.complete(op, "ok", 7)
    result = check(h.ops)            # result.ok, result.keys_checked, result.anomalies

Model: every key is an independent register (absent = None).  Operations:
    write(v)  SET k v      ok: the register becomes v
    read      GET k        ok with the value read (None: NOT_FOUND)
    delete    DELETE k     ok with True (the key existed; it becomes absent) or False (NOT_FOUND:
                           it was absent, nothing changed)
Outcomes (Jepsen's): "ok" (acknowledged), "fail" (a definite error: it did not happen, so it is
left out of the history), "info" (indefinite: timeout, lost connection, an error with
`definite: false`; it may take effect at any time after its invocation, or never).

Written values must be unique per key (the workload makes them so): that lets the checker
bound an indefinite write by the first read that saw its value.

The checker is Wing & Gong's search with Lowe's just-in-time linearization and memoization,
as in Porcupine (Athalye): the history of one key becomes a list of call and return events in
time order; the search walks it, linearizing a pending call when the model allows it and the
(set of linearized ops, state) pair was not explored before, and backtracks when it reaches
the return of an operation it has not linearized.  A history is linearizable iff every key's
is (P-compositionality, Herlihy & Wing §3.3), so keys are checked one by one.

Indefinite operations get a return time of +infinity (so they may be linearized anywhere after
their call, or after everything else, which is the same as never).  Two sound reductions keep
the search small: an indefinite read tells nothing and is dropped; an indefinite write whose
value some read returned must precede that read, so its return time becomes the earliest such
read's return.  An indefinite write nobody read is dropped: taking effect never explains every
read that taking effect could, and a successful DELETE it might explain is allowed to find the
key (see _prepare).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Op", "History", "CheckResult", "check", "check_key"]

OK, FAIL, INFO = "ok", "fail", "info"
INF = math.inf


@dataclass
class Op:
    """One operation: invoked at `call`, completed at `ret` (monotonic seconds; None while
    pending) with `outcome` ok/fail/info; `output` is what an ok read or delete returned."""
    id: int
    process: str
    f: str                    # "read" | "write" | "delete"
    key: str
    value: object = None      # the written value (write)
    call: float = 0.0
    ret: float | None = None
    outcome: str | None = None
    output: object = None
    note: str = ""            # the error code or exception, for reports

    def describe(self) -> str:
        t = "inf" if self.ret in (None, INF) else f"{self.ret:.3f}"
        what = {"write": f"write {self.value!r}", "read": f"read -> {self.output!r}",
                "delete": f"delete -> {'deleted' if self.output else 'NOT_FOUND'}"}[self.f]
        return f"#{self.id} {self.process} {what} [{self.call:.3f}, {t}] {self.outcome}"


class History:
    """Thread-safe recorder: invoke() before sending a request, complete() once its outcome is
    known.  Operations never completed (the client died) count as indefinite."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.ops: list[Op] = []

    def invoke(self, process: str, f: str, key: str, value=None) -> Op:
        if f not in ("read", "write", "delete"):
            raise ValueError(f"unknown operation {f!r}")
        with self._lock:
            op = Op(len(self.ops), process, f, key, value, call=self._clock())
            self.ops.append(op)
        return op

    def complete(self, op: Op, outcome: str, output=None, note: str = "") -> None:
        if outcome not in (OK, FAIL, INFO):
            raise ValueError(f"unknown outcome {outcome!r}")
        op.ret = self._clock()
        op.outcome = outcome
        op.output = output
        op.note = note

    def counts(self) -> dict:
        c = {OK: 0, FAIL: 0, INFO: 0}
        for op in self.ops:
            c[op.outcome or INFO] += 1
        return c


@dataclass
class CheckResult:
    ok: bool
    keys_checked: int = 0
    ops_checked: int = 0
    anomalies: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _step(state, op: Op, ghost: bool = False):
    """The register model: (legal, next state) for op applied to state.  ghost: an unread
    indefinite write may have filled the register just before this op (see _prepare)."""
    if op.f == "write":
        return True, op.value
    if op.f == "read":
        return op.output == state, state
    # delete: True = it existed (now absent); False = NOT_FOUND (it was absent); indefinite:
    # either, the register ends absent
    if op.outcome != OK:
        return True, None
    if op.output:
        return state is not None or ghost, None
    return state is None, state


def _prepare(ops: list[Op]) -> list[tuple[Op, float, float, bool]]:
    """The ops of one key as (op, call, return, ghost) with the reductions of the module
    docstring.  An indefinite write nobody read can matter only by filling the register just
    before a successful DELETE; it is dropped and the DELETEs it could explain get ghost=True
    (which may let two such DELETEs share one write: a rare anomaly this can miss, never one
    it invents)."""
    first_seen: dict = {}
    for op in ops:
        if op.outcome == OK and op.f == "read" and op.output is not None:
            first_seen[_hashable(op.output)] = min(first_seen.get(_hashable(op.output), INF), op.ret)
    unread_calls = []
    out = []
    for op in ops:
        outcome = op.outcome or INFO
        if outcome == FAIL:
            continue
        if outcome == OK:
            out.append((op, op.call, op.ret, False))
            continue
        if op.f == "read":
            continue
        if op.f == "write":
            seen = first_seen.get(_hashable(op.value), INF)
            if seen == INF:
                unread_calls.append(op.call)
                continue
            out.append((op, op.call, seen, False))
        else:
            out.append((op, op.call, INF, False))
    if unread_calls:
        first = min(unread_calls)
        out = [(o, c, r, o.f == "delete" and o.outcome == OK and bool(o.output) and r > first)
               for o, c, r, _ in out]
    return out


def _hashable(v):
    if isinstance(v, (dict, list)):
        import json
        return json.dumps(v, sort_keys=True)
    return v


def check_key(ops: list[Op], max_states: int = 2_000_000) -> tuple[bool, str]:
    """Check one key's operations.  Returns (linearizable, explanation when not)."""
    items = _prepare(ops)
    if not items:
        return True, ""
    n = len(items)
    # events: (time, kind, op index); at equal times calls sort before returns (they overlap)
    events = []
    for i, (_, c, r, _g) in enumerate(items):
        events.append((c, 0, i))
        events.append((r, 1, i))
    events.sort(key=lambda e: (e[0], e[1]))
    m = len(events)
    # doubly linked list over event slots 0..m-1, with a head sentinel at m
    nxt = list(range(1, m + 1)) + [0]
    prv = [m] + list(range(0, m)) + [m - 1]
    nxt[m - 1] = -1
    nxt[m] = 0 if m else -1
    prv[0] = m
    kind = [e[1] for e in events]
    opi = [e[2] for e in events]
    at = [e[0] for e in events]
    ret_slot = [0] * n
    call_slot = [0] * n
    for s in range(m):
        if kind[s]:
            ret_slot[opi[s]] = s
        else:
            call_slot[opi[s]] = s

    def lift(s):           # remove slot s from the list
        p, q = prv[s], nxt[s]
        nxt[p] = q
        if q != -1:
            prv[q] = p

    def unlift(s):         # put slot s back where it was
        p, q = prv[s], nxt[s]
        nxt[p] = s
        if q != -1:
            prv[q] = s

    state = None
    linearized = 0
    cache = {(0, None)}
    stack: list[tuple[int, object]] = []       # (op index, state before it)
    best_depth, stuck_at, best_state = -1, None, None
    s = nxt[m]
    while s != -1:
        if at[s] == INF:
            return True, ""        # every op with a finite return is linearized
        i = opi[s]
        if kind[s] == 0:
            legal, new_state = _step(state, items[i][0], items[i][3])
            if legal:
                key = (linearized | (1 << i), _hashable(new_state))
                if key not in cache:
                    if len(cache) >= max_states:
                        return False, f"search gave up after {max_states} states (history too concurrent)"
                    cache.add(key)
                    stack.append((i, state))
                    state = new_state
                    linearized |= 1 << i
                    lift(call_slot[i])
                    lift(ret_slot[i])
                    s = nxt[m]
                    continue
            s = nxt[s]
        else:
            if len(stack) > best_depth:
                best_depth, stuck_at, best_state = len(stack), items[i][0], state
            if not stack:
                break
            j, state = stack.pop()
            linearized &= ~(1 << j)
            unlift(ret_slot[j])
            unlift(call_slot[j])
            s = nxt[call_slot[j]]
    else:
        return True, ""
    return False, (f"no linearization: after {best_depth} of {n} ops the register holds "
                   f"{best_state!r} and no order explains {stuck_at.describe()}")


def check(ops: list[Op], max_keys_reported: int = 5) -> CheckResult:
    """Check a whole history, key by key."""
    t0 = time.monotonic()
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.ret is None:          # never completed: indefinite
            op.ret, op.outcome = INF, INFO
        by_key.setdefault(op.key, []).append(op)
    res = CheckResult(ok=True)
    for key in sorted(by_key):
        good, why = check_key(by_key[key])
        res.keys_checked += 1
        res.ops_checked += len(by_key[key])
        if not good:
            res.ok = False
            if len(res.anomalies) < max_keys_reported:
                res.anomalies.append(f"key {key}: {why}")
    res.seconds = time.monotonic() - t0
    return res
