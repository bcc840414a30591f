"""Tests of kv_linearizability: known-good and known-bad register histories, and speed on a
history the size of a 60 s chaos run."""

from __future__ import annotations

import random

import pytest

from kv_linearizability import INF, History, Op, check, check_key

_ids = iter(range(10**9))


def op(f, call, ret, outcome="ok", value=None, output=None, key="k", process="p"):
    return Op(next(_ids), process, f, key, value, call=call, ret=INF if ret is None else ret,
              outcome=outcome, output=output)


def w(v, call, ret, outcome="ok", **kw):
    return op("write", call, ret, outcome, value=v, **kw)


def r(v, call, ret, outcome="ok", **kw):
    return op("read", call, ret, outcome, output=v, **kw)


def d(found, call, ret, outcome="ok", **kw):
    return op("delete", call, ret, outcome, output=found, **kw)


def lin(ops) -> bool:
    return check_key(ops)[0]


# ------------------------------------------------------------------------------- known good
def test_sequential_history_is_linearizable():
    assert lin([w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7), d(True, 8, 9), r(None, 10, 11),
                d(False, 12, 13)])


def test_concurrent_read_may_see_old_or_new_value():
    assert lin([w(1, 0, 1), w(2, 2, 6), r(1, 3, 4), r(2, 5, 7)])
    assert lin([w(1, 0, 1), w(2, 2, 6), r(2, 3, 4), r(2, 5, 7)])


def test_indefinite_write_seen_later_is_legal():
    # the write timed out at 2, yet a read long after sees it: it took effect late
    assert lin([w(1, 0, 1), w(2, 1.5, None, "info"), r(1, 3, 4), r(2, 10, 11), r(2, 12, 13)])


def test_indefinite_write_never_seen_is_legal():
    assert lin([w(1, 0, 1), w(2, 1.5, None, "info"), r(1, 3, 4), r(1, 10, 11)])


def test_definite_failure_is_left_out():
    assert lin([w(1, 0, 1), w(2, 1.5, 2, "fail"), r(1, 3, 4)])


def test_indefinite_delete_may_or_may_not_happen():
    assert lin([w(1, 0, 1), d(None, 2, None, "info"), r(1, 3, 4), r(None, 5, 6)])
    assert lin([w(1, 0, 1), d(None, 2, None, "info"), r(1, 3, 4), r(1, 5, 6)])


def test_read_of_missing_key_before_any_write():
    assert lin([r(None, 0, 1), w(1, 2, 3), r(1, 4, 5)])


# --------------------------------------------------------------------------------- known bad
def test_stale_read_is_caught():
    ok, why = check_key([w(1, 0, 1), w(2, 2, 3), r(1, 4, 5)])
    assert not ok
    assert "read -> 1" in why


def test_lost_write_is_caught():
    # an acknowledged write, then reads that show the value before it: the write was lost
    assert not lin([w(1, 0, 1), w(2, 2, 3), r(2, 4, 5), r(1, 6, 7)])
    assert not lin([w(1, 0, 1), r(None, 2, 3)])


def test_read_of_a_value_never_written_is_caught():
    assert not lin([w(1, 0, 1), r(99, 2, 3)])


def test_read_of_a_definitely_failed_write_is_caught():
    assert not lin([w(1, 0, 1), w(2, 1.5, 2, "fail"), r(2, 3, 4)])


def test_indefinite_write_cannot_take_effect_before_it_was_sent():
    assert not lin([w(1, 0, 1), r(2, 2, 3), w(2, 4, None, "info")])


def test_value_cannot_come_back_after_being_overwritten():
    # 2 was read, then 3 acknowledged and read, then 2 again: a register cannot do that
    assert not lin([w(2, 0, None, "info"), r(2, 1, 2), w(3, 3, 4), r(3, 5, 6), r(2, 7, 8)])


def test_delete_outcomes_are_checked():
    assert not lin([w(1, 0, 1), d(False, 2, 3)])       # NOT_FOUND although 1 is there
    assert not lin([d(True, 0, 1)])                    # deleted a key that never existed
    assert not lin([w(1, 0, 1), d(True, 2, 3), r(1, 4, 5)])


# ------------------------------------------------------------------------------ whole history
def test_check_partitions_by_key_and_names_the_bad_key():
    h = [w(1, 0, 1, key="a"), w(1, 0, 1, key="b"), r(1, 2, 3, key="a"), r(None, 2, 3, key="b")]
    res = check(h)
    assert not res.ok
    assert res.keys_checked == 2
    assert len(res.anomalies) == 1 and res.anomalies[0].startswith("key b:")


def test_history_recorder_counts_and_pending_ops_are_indefinite():
    h = History()
    a = h.invoke("c1", "write", "k", 1)
    h.complete(a, "ok")
    h.invoke("c2", "write", "k", 2)                    # never completed: the client died
    b = h.invoke("c3", "read", "k")
    h.complete(b, "ok", 2)
    assert h.counts() == {"ok": 2, "fail": 0, "info": 1}
    assert check(h.ops).ok
    with pytest.raises(ValueError):
        h.invoke("c1", "cas", "k")


def simulate(seed: int, seconds: float, clients: int, keys: int, p_info: float = 0.03,
             stale_at: float | None = None, deletes: bool = False) -> list[Op]:
    """A linearizable register per key served with random latencies; each op takes effect at a
    random instant inside [call, ret] (indefinite ones maybe later or never).  stale_at plants
    one stale read."""
    rng = random.Random(seed)
    t = [0.0] * clients
    events = []
    nxt_val = {}
    ops = []
    for c in range(clients):
        while t[c] < seconds:
            call = t[c] + rng.uniform(0.0005, 0.002)
            lat = rng.expovariate(1 / 0.004)
            k = f"k{rng.randrange(keys)}"
            f = rng.choice(("read", "read", "write", "write", "delete") if deletes else ("read", "write"))
            o = Op(len(ops), f"c{c}", f, k, call=call, ret=call + lat, outcome="ok")
            if f == "write":
                nxt_val[k] = nxt_val.get(k, 0) + 1
                o.value = nxt_val[k] * 1000 + c
            eff = call + rng.uniform(0, lat)
            if rng.random() < p_info:
                o.outcome = "info"
                o.ret = INF
                if rng.random() < 0.5:
                    eff = None
                else:
                    eff = call + lat + rng.uniform(0, 0.5)
            ops.append(o)
            if eff is not None:
                events.append((eff, o))
            t[c] = call + lat
    state = {}
    for _, o in sorted(events, key=lambda e: e[0]):
        cur = state.get(o.key)
        if o.f == "write":
            state[o.key] = o.value
        elif o.f == "read":
            o.output = cur
        else:
            o.output = cur is not None
            state.pop(o.key, None)
    if stale_at is not None:
        reads = [o for o in ops if o.f == "read" and o.outcome == "ok" and o.call > stale_at]
        for o in reads:
            prior = [x for x in ops if x.key == o.key and x.f == "write" and x.outcome == "ok"
                     and x.ret < o.call]
            if len(prior) >= 2:
                o.output = sorted(prior, key=lambda x: x.ret)[-2].value
                break
    return ops


def test_sixty_second_history_checks_quickly():
    # a 60 s history somewhat larger than a chaos run's (those record 20,000-30,000 ops): 4
    # clients at ~200 ops/s each, 5 keys, 3% indefinite.  No timing is asserted here;
    # benchmark_chaos.py prints the checker's time per run
    ops = simulate(seed=1, seconds=60, clients=4, keys=5)
    assert len(ops) > 30_000
    res = check(ops)
    assert res.ok, res.anomalies
    assert res.ops_checked == len(ops)


def test_planted_stale_read_in_a_long_history_is_found():
    ops = simulate(seed=2, seconds=30, clients=6, keys=5, stale_at=15.0)
    res = check(ops)
    assert not res.ok
    assert len(res.anomalies) == 1


def test_history_with_deletes_and_indefinite_deletes():
    assert check(simulate(seed=3, seconds=3, clients=4, keys=3, deletes=True)).ok
