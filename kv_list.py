"""The list type: a key holding a sequence of byte strings, and the list commands (Redis 7.0's
t_list.c is the model of behaviour; the code is ours), the blocking pops' non-blocking forms
included (kv_blocking runs the blocking part).

Value: ListValue, a collections.deque (O(1) push and pop at both ends) plus `h`, the content
hash: kv_values.Poly over elem_hash of each element, head first, kept in O(1) per push or pop
at either end; commands that change the middle (LSET aside) recompute it.

Snapshot record: tag "l", payload [element_b64, ...] head first.

Blocking commands (BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP) parse to kv_spec.Blocking: `command`
is the non-blocking form (sm BLPOP for BLPOP/BRPOP: [key, element] or NULL_ARRAY; LMOVE for
BLMOVE/BRPOPLPUSH: the element or None; LMPOP for BLMPOP), the same one MULTI runs once.
"""

from __future__ import annotations

import base64
import binascii
import sys
import time
from collections import deque
from itertools import islice

from kv_spec import (Blocking, TypeOps, arity_error, check_arity, data_command, key, one_key, reject, shaped,
                     spec_rows)
from kv_values import (E_NOT_INT, E_SYNTAX, INT64_MAX, INT64_MIN, NULL_ARRAY, OK, Fail, Poly,
                       elem_hash, parse_int, parse_ld)

KIND = "list"
SPEC: dict = {}   # name -> Spec, filled at the end from SPECS (the parsers read it)
E_POSITIVE = "ERR value is out of range, must be positive"


class ListValue(deque):
    """Elements (bytes), head first; h: the content hash (see the module docstring)."""
    __slots__ = ("h",)
    kind = KIND

    def __init__(self, items=()):
        super().__init__(items)
        self.h = Poly.of(elem_hash(e) for e in self)

    def push_head(self, e: bytes) -> None:
        self.h = Poly.push_head(self.h, elem_hash(e))
        self.appendleft(e)

    def push_tail(self, e: bytes) -> None:
        self.h = Poly.push_tail(self.h, elem_hash(e), len(self))
        self.append(e)

    def pop_head(self) -> bytes:
        e = self.popleft()
        self.h = Poly.pop_head(self.h, elem_hash(e))
        return e

    def pop_tail(self) -> bytes:
        e = deque.pop(self)
        self.h = Poly.pop_tail(self.h, elem_hash(e), len(self) + 1)
        return e

    def pop_end(self, left: bool) -> bytes:
        return self.pop_head() if left else self.pop_tail()

    def push_end(self, e: bytes, left: bool) -> None:
        if left:
            self.push_head(e)
        else:
            self.push_tail(e)

    def set_at(self, i: int, e: bytes) -> None:
        old = self[i]
        self.h = Poly.replace(self.h, elem_hash(old), elem_hash(e), i)
        self[i] = e

    def rehash(self) -> None:
        """After a change in the middle."""
        self.h = Poly.of(elem_hash(e) for e in self)


# ---------------------------------------------------------------------------------------------
# Type operations
def _encode(v: ListValue) -> list:
    return [base64.b64encode(e).decode("ascii") for e in v]


def _decode(payload) -> ListValue:
    if type(payload) is not list:
        raise ValueError("a list's snapshot record is not a list of elements")
    try:
        return ListValue(binascii.a2b_base64(p, strict_mode=True) for p in payload)
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"bad base64 in a list record: {e}") from None


def _copy(v: ListValue) -> ListValue:
    c = ListValue()
    c.extend(v)
    c.h = v.h
    return c


def _memory(v: ListValue) -> int:
    return sys.getsizeof(v) + sum(sys.getsizeof(e) for e in v)


def _encoding(v: ListValue) -> str:
    return "quicklist"


TYPES = [TypeOps(KIND, "list", "l", _encode, _decode, _copy, _memory, _encoding)]


# ---------------------------------------------------------------------------------------------
# Parsing helpers
def _where(b: bytes) -> str:
    w = b.upper()
    if w not in (b"LEFT", b"RIGHT"):
        raise reject(E_SYNTAX)
    return "L" if w == b"LEFT" else "R"


def _int(b: bytes, message: str = E_NOT_INT) -> int:
    n = parse_int(b)
    if n is None:
        raise reject(message)
    return n


def _positive(b: bytes, message: str, low: int = 0) -> int:
    """Redis getRangeLongFromObjectOrReply(low, LONG_MAX, message): one message for both."""
    n = parse_int(b)
    if n is None or n < low:
        raise reject(message)
    return n


def _hexfloat(b: bytes):
    try:
        return float.fromhex(b.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def timeout_seconds(b: bytes) -> float:
    """A blocking command's timeout as Redis 7.0 reads it (getTimeoutFromObjectOrReply): a long
    double in seconds (strtold: hex floats and "inf" too), then (long long)(t * 1000) ms, which
    truncates toward zero (0.0001 -> 0: forever) and turns inf / >= 2**63 into LLONG_MIN
    (negative).  Returns seconds (0 = forever); raises Redis's errors."""
    v = parse_ld(b)
    if v is None and b[:1] not in (b" ", b"\t") and b"0x" in b.lower():
        v = _hexfloat(b)
    if v is None:
        raise reject("ERR timeout is not a float or out of range")
    if type(v) is float and v in (float("inf"), float("-inf")):
        ms = INT64_MIN
    else:
        ms = int(v * 1000)      # toward zero, as the C cast
        if not INT64_MIN <= ms <= INT64_MAX:
            ms = INT64_MIN
    if ms < 0:
        raise reject("ERR timeout is negative")
    if ms > 0 and ms > INT64_MAX - int(time.time() * 1000):
        raise reject("ERR timeout is out of range")
    return ms / 1000.0


# ---------------------------------------------------------------------------------------------
# Commands.  apply(s, args, now, write): s is the keyspace (kv_state.KeyValueStore).
def _p_push(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1]), list(args[2:])])
    return parse


def _push(left: bool, only_existing: bool):
    def apply(s, a, now, w):
        k, elems = a
        lst = s.fetch(k, KIND, now, w)
        if lst is None:
            if only_existing:
                return 0
            lst, old = ListValue(), None
        else:
            old = lst.h
        for e in elems:
            lst.push_end(e, left)
        s.store(k, lst, old)
        return len(lst)
    return apply


def _p_pop(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        if len(args) > 3:
            raise arity_error(args[0])
        count = _positive(args[2], E_POSITIVE) if len(args) == 3 else None
        return data_command(SPEC[name], args, [key(args[1]), count])
    return parse


def _pop(left: bool):
    def apply(s, a, now, w):
        k, count = a
        lst = s.fetch(k, KIND, now, w)
        if lst is None:
            return None if count is None else NULL_ARRAY
        if count is None:
            old = lst.h
            e = lst.pop_end(left)
            s.store(k, lst, old)
            return e
        if count == 0:
            return []
        old = lst.h
        out = [lst.pop_end(left) for _ in range(min(count, len(lst)))]
        s.store(k, lst, old)
        return out
    return apply


def _p_key(name):
    return shaped(SPEC, name, one_key)


def _a_llen(s, a, now, w):
    lst = s.fetch(a[0], KIND, now, w)
    return 0 if lst is None else len(lst)


def _p_key_range(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1]), _int(args[2]), _int(args[3])])
    return parse


def _span(start: int, end: int, n: int):
    """Redis's start/stop of a list of n elements (negative from the tail, clamped) as
    (first, last) inclusive indexes, or None when the range is empty (LRANGE, LTRIM)."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    if start < 0:
        start = 0
    if start > end or start >= n:
        return None
    return start, min(end, n - 1)


def _a_lrange(s, a, now, w):
    k, start, end = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        return []
    n = len(lst)
    span = _span(start, end, n)
    if span is None:
        return []
    start, end = span
    if start > n // 2:      # nearer the tail: walk from there
        out = list(islice(reversed(lst), n - 1 - end, n - start))
        out.reverse()
        return out
    return list(islice(lst, start, end + 1))


def _p_key_raw(name, n_raw):
    """key, then raw arguments parsed at apply time (Redis looks the key up first)."""
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1]), *args[2:2 + n_raw]])
    return parse


def _index(b: bytes) -> int:
    n = parse_int(b)
    if n is None:
        raise Fail(E_NOT_INT)
    return n


def _a_lindex(s, a, now, w):
    k, raw = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        return None
    i = _index(raw)
    if i < 0:
        i += len(lst)
    return lst[i] if 0 <= i < len(lst) else None


def _a_lset(s, a, now, w):
    k, raw, e = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        raise Fail("ERR no such key")
    i = _index(raw)
    if i < 0:
        i += len(lst)
    if not 0 <= i < len(lst):
        raise Fail("ERR index out of range")
    old = lst.h
    lst.set_at(i, e)
    s.store(k, lst, old)
    return OK


def _p_linsert(args, line):
    check_arity(args, SPEC["LINSERT"].arity)
    where = args[2].upper()
    if where not in (b"BEFORE", b"AFTER"):
        raise reject(E_SYNTAX)
    return data_command(SPEC["LINSERT"], args, [key(args[1]), where == b"AFTER", args[3], args[4]])


def _a_linsert(s, a, now, w):
    k, after, pivot, e = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        return 0
    for i, x in enumerate(lst):
        if x == pivot:
            break
    else:
        return -1
    old = lst.h
    lst.insert(i + 1 if after else i, e)
    lst.rehash()
    s.store(k, lst, old)
    return len(lst)


def _p_lrem(args, line):
    check_arity(args, SPEC["LREM"].arity)
    return data_command(SPEC["LREM"], args, [key(args[1]), _int(args[2]), args[3]])


def _a_lrem(s, a, now, w):
    k, count, e = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        return 0
    limit = abs(count) if count else len(lst)
    items = list(lst) if count >= 0 else list(reversed(lst))
    kept = []
    removed = 0
    for x in items:
        if removed < limit and x == e:
            removed += 1
        else:
            kept.append(x)
    if not removed:
        return 0
    if count < 0:
        kept.reverse()
    old = lst.h
    lst.clear()
    lst.extend(kept)
    lst.rehash()
    s.store(k, lst, old)
    return removed


def _a_ltrim(s, a, now, w):
    k, start, end = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        return OK
    n = len(lst)
    span = _span(start, end, n)
    if span is None:
        ltrim, rtrim = n, 0
    else:
        ltrim, rtrim = span[0], n - span[1] - 1
    if ltrim == 0 and rtrim == 0:
        return OK
    old = lst.h
    for _ in range(min(ltrim, len(lst))):
        lst.pop_head()
    for _ in range(min(rtrim, len(lst))):
        lst.pop_tail()
    s.store(k, lst, old)
    return OK


def _p_lpos(args, line):
    check_arity(args, SPEC["LPOS"].arity)
    rank, count, maxlen = 1, None, 0
    j = 3
    while j < len(args):
        opt = args[j].upper()
        more = len(args) - 1 - j
        if opt == b"RANK" and more:
            j += 1
            rank = _int(args[j])
            if rank == 0:
                raise reject("ERR RANK can't be zero: use 1 to start from the first match, 2 from the "
                             "second ... or use negative to start from the end of the list")
        elif opt == b"COUNT" and more:
            j += 1
            count = _positive(args[j], "ERR COUNT can't be negative")
        elif opt == b"MAXLEN" and more:
            j += 1
            maxlen = _positive(args[j], "ERR MAXLEN can't be negative")
        else:
            raise reject(E_SYNTAX)
        j += 1
    return data_command(SPEC["LPOS"], args, [key(args[1]), args[2], rank, count, maxlen])


def _a_lpos(s, a, now, w):
    k, e, rank, count, maxlen = a
    lst = s.fetch(k, KIND, now, w)
    if lst is None:
        return None if count is None else []
    n = len(lst)
    from_tail = rank < 0
    # Redis negates a negative rank in a C long: LLONG_MIN stays LLONG_MIN, so every match
    # qualifies and a COUNT never stops the scan early
    wrapped = rank == INT64_MIN
    if from_tail:
        rank = -rank
    it = reversed(lst) if from_tail else iter(lst)
    out = []
    matches = 0
    for idx, x in enumerate(it):
        if maxlen and idx >= maxlen:
            break
        if x == e:
            matches += 1
            if wrapped or matches >= rank:
                pos = n - 1 - idx if from_tail else idx
                if count is None:
                    return pos
                out.append(pos)
                if count and not wrapped and matches - rank + 1 >= count:
                    break
    return None if count is None else out


def _p_lmove(args, line):
    check_arity(args, SPEC["LMOVE"].arity)
    return data_command(SPEC["LMOVE"], args, [key(args[1]), key(args[2]), _where(args[3]),
                                              _where(args[4])])


def _p_rpoplpush(args, line):
    check_arity(args, SPEC["RPOPLPUSH"].arity)
    return data_command(SPEC["RPOPLPUSH"], args, [key(args[1]), key(args[2]), "R", "L"])


def _a_lmove(s, a, now, w):
    src, dst, wf, wt = a
    lst = s.fetch(src, KIND, now, w)
    if lst is None:
        return None
    d = lst if dst == src else s.fetch(dst, KIND, now, w)
    old = lst.h
    e = lst.pop_end(wf == "L")
    if dst == src:
        lst.push_end(e, wt == "L")
        s.store(src, lst, old)
        return e
    s.store(src, lst, old)
    if d is None:
        d, dold = ListValue(), None
    else:
        dold = d.h
    d.push_end(e, wt == "L")
    s.store(dst, d, dold)
    return e


def _mpop_args(args, idx: int):
    """LMPOP / BLMPOP from argv[idx] (numkeys) on: ([keys], where, count); Redis's errors."""
    numkeys = _positive(args[idx], "ERR numkeys should be greater than 0", low=1)
    where_idx = idx + numkeys + 1
    if where_idx >= len(args):
        raise reject(E_SYNTAX)
    where = _where(args[where_idx])
    count = None
    j = where_idx + 1
    while j < len(args):
        if count is None and args[j].upper() == b"COUNT" and len(args) - 1 - j:
            j += 1
            count = _positive(args[j], "ERR count should be greater than 0", low=1)
        else:
            raise reject(E_SYNTAX)
        j += 1
    return [key(k) for k in args[idx + 1:where_idx]], where, 1 if count is None else count


def _p_lmpop(args, line):
    check_arity(args, SPEC["LMPOP"].arity)
    keys, where, count = _mpop_args(args, 1)
    return data_command(SPEC["LMPOP"], args, [keys, where, count])


def _first_list(s, keys, now, w):
    """The first key of keys holding a list, with it (WRONGTYPE at the first key of another
    type before it, as Redis checks them in order); (None, None) when none does."""
    for k in keys:
        lst = s.fetch(k, KIND, now, w)
        if lst is not None:
            return k, lst
    return None, None


def _a_lmpop(s, a, now, w):
    keys, where, count = a
    k, lst = _first_list(s, keys, now, w)
    if lst is None:
        return NULL_ARRAY
    old = lst.h
    left = where == "L"
    out = [lst.pop_end(left) for _ in range(min(count, len(lst)))]
    s.store(k, lst, old)
    return [k, out]


def _a_bpop(s, a, now, w):
    """BLPOP / BRPOP's non-blocking form: [key, element] from the first non-empty list."""
    keys, where = a
    k, lst = _first_list(s, keys, now, w)
    if lst is None:
        return NULL_ARRAY
    old = lst.h
    e = lst.pop_end(where == "L")
    s.store(k, lst, old)
    return [k, e]


# -- the blocking commands: parsers only (kv_blocking runs them)
def _blocking(name, sm_spec, args, out, keys, timeout):
    return Blocking(data_command(sm_spec, args, out, write=True), keys, timeout, NULL_ARRAY,
                    args[0].decode("utf-8", "surrogateescape").lower())


def _p_bpop(name):
    where = "L" if name == "BLPOP" else "R"

    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        timeout = timeout_seconds(args[-1])
        keys = [key(k) for k in args[1:-1]]
        return _blocking(name, SPEC["BLPOP"], args, [keys, where], keys, timeout)
    return parse


def _p_blmove(args, line):
    check_arity(args, SPEC["BLMOVE"].arity)
    wf, wt = _where(args[3]), _where(args[4])
    timeout = timeout_seconds(args[5])
    src, dst = key(args[1]), key(args[2])
    return _blocking("BLMOVE", SPEC["LMOVE"], args, [src, dst, wf, wt], [src], timeout)


def _p_brpoplpush(args, line):
    check_arity(args, SPEC["BRPOPLPUSH"].arity)
    timeout = timeout_seconds(args[3])
    src, dst = key(args[1]), key(args[2])
    return _blocking("BRPOPLPUSH", SPEC["LMOVE"], args, [src, dst, "R", "L"], [src], timeout)


def _p_blmpop(args, line):
    check_arity(args, SPEC["BLMPOP"].arity)
    keys, where, count = _mpop_args(args, 2)
    timeout = timeout_seconds(args[1])
    return _blocking("BLMPOP", SPEC["LMPOP"], args, [keys, where, count], keys, timeout)


# -- line-protocol reply shapes
def _text(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


def _texts(xs):
    return None if xs is None or xs is NULL_ARRAY else [_text(x) for x in xs]


def _line_pop(r):
    if type(r) is list or r is NULL_ARRAY:
        return {"values": _texts(r), "found": r is not NULL_ARRAY}
    return {"value": _text(r), "found": r is not None}


def _line_keyed(r):
    if r is NULL_ARRAY:
        return {"key": None, "value": None, "found": False}
    v = r[1]
    return {"key": r[0], "value": _texts(v) if type(v) is list else _text(v), "found": True}


def _line_lpos(r):
    return {"indexes": r} if type(r) is list else {"index": r, "found": r is not None}


_L = {"key_type": KIND}
_ORDERED = {"key_type": KIND, "type_keys": lambda a: ()}   # checked in apply, key by key
SPECS = spec_rows("""
LPUSH -3 write,denyoom,fast 1 1 1 list 1.0.0 @write,@list,@fast
RPUSH -3 write,denyoom,fast 1 1 1 list 1.0.0 @write,@list,@fast
LPUSHX -3 write,denyoom,fast 1 1 1 list 2.2.0 @write,@list,@fast
RPUSHX -3 write,denyoom,fast 1 1 1 list 2.2.0 @write,@list,@fast
LPOP -2 write,fast 1 1 1 list 1.0.0 @write,@list,@fast
RPOP -2 write,fast 1 1 1 list 1.0.0 @write,@list,@fast
LLEN 2 readonly,fast 1 1 1 list 1.0.0 @read,@list,@fast
LRANGE 4 readonly 1 1 1 list 1.0.0 @read,@list,@slow
LINDEX 3 readonly 1 1 1 list 1.0.0 @read,@list,@slow
LSET 4 write,denyoom 1 1 1 list 1.0.0 @write,@list,@slow
LINSERT 5 write,denyoom 1 1 1 list 2.2.0 @write,@list,@slow
LREM 4 write 1 1 1 list 1.0.0 @write,@list,@slow
LTRIM 4 write 1 1 1 list 1.0.0 @write,@list,@slow
LPOS -3 readonly 1 1 1 list 6.0.6 @read,@list,@slow
LMOVE 5 write,denyoom 1 2 1 list 6.2.0 @write,@list,@slow
RPOPLPUSH 3 write,denyoom 1 2 1 list 1.2.0 @write,@list,@slow
LMPOP -4 write,movablekeys 0 0 0 list 7.0.0 @write,@list,@slow
BLPOP -3 write,noscript,blocking 1 -2 1 list 2.0.0 @write,@list,@slow,@blocking
BRPOP -3 write,noscript,blocking 1 -2 1 list 2.0.0 @write,@list,@slow,@blocking
BLMOVE 6 write,denyoom,noscript,blocking 1 2 1 list 6.2.0 @write,@list,@slow,@blocking
BRPOPLPUSH 4 write,denyoom,noscript,blocking 1 2 1 list 2.2.0 @write,@list,@slow,@blocking
BLMPOP -5 write,blocking,movablekeys 0 0 0 list 7.0.0 @write,@list,@slow,@blocking
""", {
    "LPUSH": {"parse": _p_push("LPUSH"), "apply": _push(True, False), **_L,
              "line": lambda r: {"length": r}, "summary": "Prepend elements; answers the new length"},
    "RPUSH": {"parse": _p_push("RPUSH"), "apply": _push(False, False), **_L,
              "line": lambda r: {"length": r}, "summary": "Append elements; answers the new length"},
    "LPUSHX": {"parse": _p_push("LPUSHX"), "apply": _push(True, True), **_L,
               "line": lambda r: {"length": r}, "summary": "Prepend elements to an existing list"},
    "RPUSHX": {"parse": _p_push("RPUSHX"), "apply": _push(False, True), **_L,
               "line": lambda r: {"length": r}, "summary": "Append elements to an existing list"},
    "LPOP": {"parse": _p_pop("LPOP"), "apply": _pop(True), **_L, "line": _line_pop,
             "summary": "Remove and return the first element(s)"},
    "RPOP": {"parse": _p_pop("RPOP"), "apply": _pop(False), **_L, "line": _line_pop,
             "summary": "Remove and return the last element(s)"},
    "LLEN": {"parse": _p_key("LLEN"), "apply": _a_llen, **_L, "line": lambda r: {"length": r},
             "summary": "The number of elements"},
    "LRANGE": {"parse": _p_key_range("LRANGE"), "apply": _a_lrange, **_L,
               "line": lambda r: {"values": _texts(r)}, "summary": "Elements from start to stop"},
    "LINDEX": {"parse": _p_key_raw("LINDEX", 1), "apply": _a_lindex, **_L,
               "line": lambda r: {"value": _text(r), "found": r is not None},
               "summary": "The element at an index"},
    "LSET": {"parse": _p_key_raw("LSET", 2), "apply": _a_lset, **_L,
             "line": lambda r: {"message": "OK"}, "summary": "Set the element at an index"},
    "LINSERT": {"parse": _p_linsert, "apply": _a_linsert, **_L, "line": lambda r: {"length": r},
                "summary": "Insert an element before or after a pivot"},
    "LREM": {"parse": _p_lrem, "apply": _a_lrem, **_L, "line": lambda r: {"removed": r},
             "summary": "Remove occurrences of an element"},
    "LTRIM": {"parse": _p_key_range("LTRIM"), "apply": _a_ltrim, **_L,
              "line": lambda r: {"message": "OK"}, "summary": "Keep only a range of elements"},
    "LPOS": {"parse": _p_lpos, "apply": _a_lpos, **_L, "line": _line_lpos,
             "summary": "The index(es) of matching elements"},
    "LMOVE": {"parse": _p_lmove, "apply": _a_lmove, **_L,
              "line": lambda r: {"value": _text(r), "found": r is not None},
              "summary": "Pop an element from one list and push it onto another"},
    "RPOPLPUSH": {"parse": _p_rpoplpush, "sm": "LMOVE", **_L,
                  "summary": "Pop the last element and push it onto the head of another list"},
    "LMPOP": {"parse": _p_lmpop, "apply": _a_lmpop, **_ORDERED, "line": _line_keyed,
              "summary": "Pop elements from the first non-empty list"},
    "BLPOP": {"parse": _p_bpop("BLPOP"), "apply": _a_bpop, **_ORDERED, "line": _line_keyed,
              "summary": "Pop the first element of the first non-empty list, waiting for one"},
    "BRPOP": {"parse": _p_bpop("BRPOP"), "sm": "BLPOP", **_ORDERED,
              "summary": "Pop the last element of the first non-empty list, waiting for one"},
    "BLMOVE": {"parse": _p_blmove, "sm": "LMOVE", **_L,
               "summary": "LMOVE, waiting for the source to have an element"},
    "BRPOPLPUSH": {"parse": _p_brpoplpush, "sm": "LMOVE", **_L,
                   "summary": "RPOPLPUSH, waiting for the source to have an element"},
    "BLMPOP": {"parse": _p_blmpop, "sm": "LMPOP", **_ORDERED,
               "summary": "LMPOP, waiting for one of the lists to have an element"},
})
SPEC.update((s.name, s) for s in SPECS)
