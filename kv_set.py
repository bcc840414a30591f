"""The set type: a key holding an unordered collection of distinct members (byte strings), and
the set commands (Redis 7.0's t_set.c is the model of behaviour; the code is ours).

Value: SetValue, the members in a list plus a dict member -> its index in that list, so adding,
removing (the last member moves into the hole) and picking a member at random are O(1).
The list order is replicated state: SPOP and SRANDMEMBER pick by position, so every node must
hold the same order.  It depends only on the log (appends and swap-removes), and snapshots and
COPY keep it.  Replies list the members in that order, which means no particular order.
    h        the content hash: the sum mod 2**64 of elem_hash(member) (order-free: equal
             members give equal h whatever the history), updated in O(1) per member
    intset   Redis's encoding: True while every member is an integer's text (string2ll) and
             there are at most 512, as a Redis intset; once lost it stays lost, as in Redis
             (SPOP of most of a set rebuilds it, as Redis does).  OBJECT ENCODING and SSCAN
             read it (Redis scans an intset whole in one call).

Randomness: SPOP draws a seed in its parser (parsers run only on the primary) and puts it in
the log entry; apply picks with random.Random(seed) over the list order.  SRANDMEMBER does the
same, so that it is deterministic inside EXEC too (applied on every node).

SSCAN's cursor is a position in a 32-bit hash space of the members (as SCAN's over keys): a
member present for the whole iteration is returned exactly once.  An intset, or a set of at most
COUNT members scanned from cursor 0, is returned whole with cursor 0, as Redis does.

Snapshot record: tag "s", payload [member_b64, ...] in list order.
"""

from __future__ import annotations

import base64
import binascii
import random
import sys
import zlib

from kv_protocol import compile_glob
from kv_spec import (TypeOps, check_arity, data_command, key, key_and_arg, key_and_rest, one_key, reject,
                     shaped, spec_rows)
from kv_values import E_NOT_INT, E_SYNTAX, E_WRONGTYPE, INT64_MAX, INT64_MIN, MASK64, Fail, Members, \
    elem_hash, parse_int

KIND = "set"
SPEC: dict = {}   # name -> Spec, filled at the end from SPECS (the parsers read it)
INTSET_MAX = 512          # Redis's set-max-intset-entries
SPOP_MOVE_MUL = 5         # Redis rebuilds the set from the rest when rest * 5 <= count
NEG_COUNT_MAX = 1 << 24   # SRANDMEMBER with a negative count: at most this many picks

E_POSITIVE = "ERR value is out of range, must be positive"
E_RAND_RANGE = f"ERR value is out of range, value must between {-INT64_MAX} and {INT64_MAX}"
E_NEG_COUNT = f"ERR value is out of range, value must between {-NEG_COUNT_MAX} and {INT64_MAX}"
E_NUMKEYS = "ERR numkeys should be greater than 0"
E_NUMKEYS_ARGS = "ERR Number of keys can't be greater than number of args"
E_LIMIT = "ERR LIMIT can't be negative"
E_CURSOR = "ERR invalid cursor"


class SetValue:
    """The members (see the module docstring): items (list, the replicated order), pos (dict
    member -> index in items), h (content hash), intset (Redis's encoding)."""
    __slots__ = ("items", "pos", "h", "intset")
    kind = KIND

    def __init__(self, members=()):
        self.items: list = []
        self.pos: dict = {}
        self.h = 0
        self.intset = True
        for m in members:
            self.add(m)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __contains__(self, m) -> bool:
        return m in self.pos

    def __iter__(self):
        return iter(self.items)

    def __eq__(self, other) -> bool:
        """Equal members in the same order (the order is replicated state, see above)."""
        return isinstance(other, SetValue) and self.items == other.items

    __hash__ = None

    def __repr__(self) -> str:
        return f"SetValue({self.items!r})"

    def add(self, m: bytes) -> bool:
        """Add one member; True when it is new."""
        pos = self.pos
        if m in pos:
            return False
        items = self.items
        pos[m] = len(items)
        items.append(m)
        self.h = (self.h + elem_hash(m)) & MASK64
        if self.intset and (len(items) > INTSET_MAX or parse_int(m) is None):
            self.intset = False
        return True

    def discard(self, m: bytes) -> bool:
        """Remove one member; True when it was there."""
        i = self.pos.pop(m, None)
        if i is None:
            return False
        self._cut(i, m)
        return True

    def pop_at(self, i: int) -> bytes:
        """Remove and return the member at index i."""
        m = self.items[i]
        del self.pos[m]
        self._cut(i, m)
        return m

    def _cut(self, i: int, m: bytes) -> None:
        items = self.items
        last = items.pop()
        if i < len(items):
            items[i] = last
            self.pos[last] = i
        self.h = (self.h - elem_hash(m)) & MASK64


# ---------------------------------------------------------------------------------------------
# Type operations
def _encode(v: SetValue) -> list:
    return [base64.b64encode(m).decode("ascii") for m in v.items]


def _decode(payload) -> SetValue:
    if type(payload) is not list:
        raise ValueError("a set's snapshot record is not a [member, ...] list")
    try:
        raw = [binascii.a2b_base64(p, strict_mode=True) for p in payload]
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"bad base64 in a set record: {e}") from None
    v = SetValue(raw)
    if len(v) != len(raw):
        raise ValueError("a set's snapshot record repeats a member")
    return v


def _copy(v: SetValue) -> SetValue:
    c = SetValue()
    c.items = list(v.items)
    c.pos = dict(v.pos)
    c.h = v.h
    c.intset = v.intset
    return c


def _memory(v: SetValue) -> int:
    return sys.getsizeof(v.items) + sys.getsizeof(v.pos) + sum(sys.getsizeof(m) for m in v.items)


def _encoding(v: SetValue) -> str:
    return "intset" if v.intset else "hashtable"


TYPES = [TypeOps(KIND, "set", "s", _encode, _decode, _copy, _memory, _encoding)]


# ---------------------------------------------------------------------------------------------
# Parsing helpers
def _seed() -> int:
    """A write's random seed, drawn by the parser on the primary (apply never draws)."""
    return random.getrandbits(63)


def _long(b: bytes, message: str) -> int:
    """Redis getLongFromObjectOrReply: string2ll, the error line `message` otherwise."""
    n = parse_int(b)
    if n is None:
        raise reject(message)
    return n


def _p_key_members(name):
    return shaped(SPEC, name, key_and_rest)


def _p_key_member(name):
    return shaped(SPEC, name, key_and_arg)


def _p_key(name):
    return shaped(SPEC, name, one_key)


def _p_keys(name):
    """SINTER / SUNION / SDIFF key [key ...]: sm args [[key, ...]]."""
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [[key(a) for a in args[1:]]])
    return parse


def _p_store(name):
    """S*STORE destination key [key ...]: sm args [destination, [key, ...]]."""
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1]), [key(a) for a in args[2:]]])
    return parse


def _p_spop(args, line):
    check_arity(args, SPEC["SPOP"].arity)
    if len(args) > 3:
        raise reject(E_SYNTAX)
    count = None
    if len(args) == 3:
        count = _long(args[2], E_POSITIVE)
        if count < 0:
            raise reject(E_POSITIVE)
    return data_command(SPEC["SPOP"], args, [key(args[1]), count, _seed()])


def _p_srandmember(args, line):
    check_arity(args, SPEC["SRANDMEMBER"].arity)
    if len(args) > 3:
        raise reject(E_SYNTAX)
    count = None
    if len(args) == 3:
        count = _long(args[2], E_NOT_INT)
        if count == INT64_MIN:
            raise reject(E_RAND_RANGE)
        if count < -NEG_COUNT_MAX:
            raise reject(E_NEG_COUNT)
    return data_command(SPEC["SRANDMEMBER"], args, [key(args[1]), count, _seed()])


def _p_smove(args, line):
    check_arity(args, SPEC["SMOVE"].arity)
    return data_command(SPEC["SMOVE"], args, [key(args[1]), key(args[2]), args[3]])


def _p_sintercard(args, line):
    check_arity(args, SPEC["SINTERCARD"].arity)
    numkeys = _long(args[1], E_NUMKEYS)
    if numkeys < 1:
        raise reject(E_NUMKEYS)
    if numkeys > len(args) - 2:
        raise reject(E_NUMKEYS_ARGS)
    limit = 0
    j = 2 + numkeys
    while j < len(args):
        if args[j].upper() == b"LIMIT" and j + 1 < len(args):
            limit = _long(args[j + 1], E_LIMIT)
            if limit < 0:
                raise reject(E_LIMIT)
            j += 2
        else:
            raise reject(E_SYNTAX)
    return data_command(SPEC["SINTERCARD"], args, [[key(a) for a in args[2:2 + numkeys]], limit])


def _scan_cursor(b: bytes) -> int:
    """Redis parseScanCursorOrReply: strtoul (an optional sign, "" is 0, "-n" wraps), no
    leading space, the whole string, no overflow."""
    if b[:1].isspace():
        raise reject(E_CURSOR)
    d = b[1:] if b[:1] in (b"+", b"-") else b
    if b == b"":
        return 0
    if not d or not d.isdigit() or not d.isascii():
        raise reject(E_CURSOR)
    n = int(d)
    if n > (1 << 64) - 1:
        raise reject(E_CURSOR)
    return (-n) % (1 << 64) if b[:1] == b"-" else n


def _p_sscan(args, line):
    """SSCAN key cursor [MATCH p] [COUNT n]: sm args [key, cursor, pattern, count, error].
    A bad option is an error only for a set that exists (Redis answers an empty scan for a
    missing key and WRONGTYPE before it looks at the options), so its message is carried to
    apply."""
    check_arity(args, SPEC["SSCAN"].arity)
    cursor = _scan_cursor(args[2])
    pattern, count, error = None, 10, None
    i, n = 3, len(args)
    while i < n:
        opt = args[i].upper()
        if opt == b"COUNT" and n - i >= 2:
            c = parse_int(args[i + 1])
            if c is None:
                error = E_NOT_INT
                break
            if c < 1:
                error = E_SYNTAX
                break
            count = c
        elif opt == b"MATCH" and n - i >= 2:
            p = args[i + 1]
            pattern = None if p == b"*" else p.decode("utf-8", "surrogateescape")
        else:
            error = E_SYNTAX
            break
        i += 2
    return data_command(SPEC["SSCAN"], args, [key(args[1]), min(cursor, 1 << 32), pattern, count, error])


# ---------------------------------------------------------------------------------------------
# Commands.  apply(s, args, now, write): s is the keyspace (kv_state.KeyValueStore: fetch,
# store, remove); args as the parser made them; `write` False for a read on the primary.
def _a_sadd(s, a, now, w):
    k, members = a
    v = s.fetch(k, KIND, now, w)
    old = None if v is None else v.h
    if v is None:
        v = SetValue()
    added = 0
    for m in members:
        added += v.add(m)
    if added or old is None:
        s.store(k, v, old)
    return added


def _a_srem(s, a, now, w):
    k, members = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return 0
    old = v.h
    n = 0
    for m in members:
        n += v.discard(m)
    if n:
        s.store(k, v, old)
    return n


def _a_smembers(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    return Members() if v is None else Members(v.items)


def _a_sismember(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    return int(v is not None and a[1] in v.pos)


def _a_smismember(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    if v is None:
        return [0] * len(a[1])
    pos = v.pos
    return [int(m in pos) for m in a[1]]


def _a_scard(s, a, now, w):
    v = s.fetch(a[0], KIND, now, w)
    return 0 if v is None else len(v)


def _a_spop(s, a, now, w):
    k, count, seed = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return None if count is None else Members()
    if count == 0:
        return Members()
    old = v.h
    size = len(v)
    rng = random.Random(seed)
    if count is None:
        out = v.pop_at(rng.randrange(size))
    elif count >= size:
        out = Members(v.items)
        s.remove(k)
        return out
    else:
        out = Members(v.pop_at(rng.randrange(size - i)) for i in range(count))
        if (size - count) * SPOP_MOVE_MUL <= count:
            # Redis builds a new set from the few left: an intset again if they allow it
            v.intset = len(v) <= INTSET_MAX and all(parse_int(m) is not None for m in v.items)
    s.store(k, v, old)
    return out


def _a_srandmember(s, a, now, w):
    k, count, seed = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return None if count is None else []
    rng = random.Random(seed)
    items = v.items
    size = len(items)
    if count is None:
        return items[rng.randrange(size)]
    if count < 0:
        return [items[rng.randrange(size)] for _ in range(-count)]
    if count >= size:
        return list(items)
    return [items[i] for i in rng.sample(range(size), count)]


def _a_smove(s, a, now, w):
    src, dst, m = a
    sv = s.fetch(src, KIND, now, w)
    d_item = s._lookup(dst, now, w)
    if sv is None:
        return 0
    if d_item is not None and d_item[0] != KIND:
        raise Fail(E_WRONGTYPE)
    if src == dst:
        return int(m in sv.pos)
    old = sv.h
    if not sv.discard(m):
        return 0
    s.store(src, sv, old)
    dv = None if d_item is None else d_item[1]
    d_old = None if dv is None else dv.h
    if dv is None:
        dv = SetValue()
    if dv.add(m) or d_old is None:
        s.store(dst, dv, d_old)
    return 1


def _sets(s, keys, now, w) -> list:
    """The SetValue (or None when missing) of each key (their type was checked before)."""
    return [s.fetch(k, KIND, now, w) for k in keys]


def _inter(sets: list, limit: int = 0):
    """The members of every set, the smallest set's order; at most `limit` (0: all)."""
    if any(x is None for x in sets):
        return []
    sets = sorted(sets, key=len)
    first, rest = sets[0], [x.pos for x in sets[1:]]
    out = []
    for m in first.items:
        for p in rest:
            if m not in p:
                break
        else:
            out.append(m)
            if len(out) == limit:
                break
    return out


def _union(sets: list) -> SetValue:
    u = SetValue()
    for x in sets:
        if x is not None:
            for m in x.items:
                u.add(m)
    return u


def _diff(sets: list) -> list:
    first = sets[0]
    if first is None:
        return []
    rest = [x.pos for x in sets[1:] if x is not None]
    if any(x is first for x in sets[1:]):
        return []
    return [m for m in first.items if not any(m in p for p in rest)]


def _a_sinter(s, a, now, w):
    return Members(_inter(_sets(s, a[0], now, w)))


def _a_sintercard(s, a, now, w):
    return len(_inter(_sets(s, a[0], now, w), a[1]))


def _a_sunion(s, a, now, w):
    return Members(_union(_sets(s, a[0], now, w)).items)


def _a_sdiff(s, a, now, w):
    return Members(_diff(_sets(s, a[0], now, w)))


def _store_result(s, dst, result: SetValue, now, w) -> int:
    """Replace dst (whatever it holds) with result; an empty result deletes dst."""
    if s._lookup(dst, now, w) is not None:
        s.remove(dst)
    if result:
        s.store(dst, result, None)
    return len(result)


def _a_sinterstore(s, a, now, w):
    dst, keys = a
    return _store_result(s, dst, SetValue(_inter(_sets(s, keys, now, w))), now, w)


def _a_sunionstore(s, a, now, w):
    dst, keys = a
    return _store_result(s, dst, _union(_sets(s, keys, now, w)), now, w)


def _a_sdiffstore(s, a, now, w):
    dst, keys = a
    return _store_result(s, dst, SetValue(_diff(_sets(s, keys, now, w))), now, w)


def _hash32(m: bytes) -> int:
    return zlib.crc32(m)


def _a_sscan(s, a, now, w):
    k, cursor, pattern, count, error = a
    v = s.fetch(k, KIND, now, w)
    if v is None:
        return ["0", []]
    if error is not None:
        raise Fail(error)
    items = v.items
    if v.intset or (cursor == 0 and len(items) <= count):
        found, nxt = list(items), 0
    else:
        span = max((1 << 32) * count // max(len(items), 1), (1 << 32) // 64, 1)
        hi = min(cursor + span, 1 << 32)
        hashed = [(h, m) for m in items if cursor <= (h := _hash32(m)) < hi]
        hashed.sort()
        found = [m for _, m in hashed]
        nxt = 0 if hi >= 1 << 32 else hi
    if pattern is not None:
        match = compile_glob(pattern)
        found = [m for m in found if match(m.decode("utf-8", "surrogateescape"))]
    return [str(nxt), found]


# ---------------------------------------------------------------------------------------------
# Line-protocol reply shapes
def _text(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


def _members(r):
    return {"members": [_text(m) for m in r]}


def _popped(r):
    if isinstance(r, list):
        return _members(r)
    return {"member": _text(r), "found": r is not None}


def _first_arg(a):
    return a[0]


def _sources(a):
    return a[1]


_S = {"key_type": KIND}
_MANY = {"key_type": KIND, "type_keys": _first_arg}
_STORE = {"key_type": KIND, "type_keys": _sources, "line": lambda r: {"stored": r}}
SPECS = spec_rows("""
SADD -3 write,denyoom,fast 1 1 1 set 1.0.0 @write,@set,@fast
SREM -3 write,fast 1 1 1 set 1.0.0 @write,@set,@fast
SMEMBERS 2 readonly 1 1 1 set 1.0.0 @read,@set,@slow
SISMEMBER 3 readonly,fast 1 1 1 set 1.0.0 @read,@set,@fast
SMISMEMBER -3 readonly,fast 1 1 1 set 6.2.0 @read,@set,@fast
SCARD 2 readonly,fast 1 1 1 set 1.0.0 @read,@set,@fast
SPOP -2 write,fast 1 1 1 set 1.0.0 @write,@set,@fast
SRANDMEMBER -2 readonly 1 1 1 set 1.0.0 @read,@set,@slow
SMOVE 4 write,fast 1 2 1 set 1.0.0 @write,@set,@fast
SINTER -2 readonly 1 -1 1 set 1.0.0 @read,@set,@slow
SINTERCARD -3 readonly,movablekeys 0 0 0 set 7.0.0 @read,@set,@slow
SUNION -2 readonly 1 -1 1 set 1.0.0 @read,@set,@slow
SDIFF -2 readonly 1 -1 1 set 1.0.0 @read,@set,@slow
SINTERSTORE -3 write,denyoom 1 -1 1 set 1.0.0 @write,@set,@slow
SUNIONSTORE -3 write,denyoom 1 -1 1 set 1.0.0 @write,@set,@slow
SDIFFSTORE -3 write,denyoom 1 -1 1 set 1.0.0 @write,@set,@slow
SSCAN -3 readonly 1 1 1 set 2.8.0 @read,@set,@slow
""", {
    "SADD": {"parse": _p_key_members("SADD"), "apply": _a_sadd, **_S,
             "line": lambda r: {"added": r}, "summary": "Add members to a set; answers how many were new"},
    "SREM": {"parse": _p_key_members("SREM"), "apply": _a_srem, **_S,
             "line": lambda r: {"removed": r}, "summary": "Remove members from a set"},
    "SMEMBERS": {"parse": _p_key("SMEMBERS"), "apply": _a_smembers, **_S, "line": _members,
                 "summary": "Every member of a set"},
    "SISMEMBER": {"parse": _p_key_member("SISMEMBER"), "apply": _a_sismember, **_S,
                  "line": lambda r: {"is_member": bool(r)}, "summary": "Whether a member is in a set"},
    "SMISMEMBER": {"parse": _p_key_members("SMISMEMBER"), "apply": _a_smismember, **_S,
                   "line": lambda r: {"is_member": [bool(x) for x in r]},
                   "summary": "Whether each of several members is in a set"},
    "SCARD": {"parse": _p_key("SCARD"), "apply": _a_scard, **_S,
              "line": lambda r: {"cardinality": r}, "summary": "The number of members"},
    "SPOP": {"parse": _p_spop, "apply": _a_spop, **_S, "line": _popped,
             "summary": "Remove and return random members"},
    "SRANDMEMBER": {"parse": _p_srandmember, "apply": _a_srandmember, **_S, "line": _popped,
                    "summary": "Random members (distinct for a positive count, repeats for a negative one)"},
    "SMOVE": {"parse": _p_smove, "apply": _a_smove, **_S, "line": lambda r: {"moved": bool(r)},
              "summary": "Move a member from one set to another"},
    "SINTER": {"parse": _p_keys("SINTER"), "apply": _a_sinter, **_MANY, "line": _members,
               "summary": "The intersection of sets"},
    "SINTERCARD": {"parse": _p_sintercard, "apply": _a_sintercard, **_MANY,
                   "line": lambda r: {"cardinality": r},
                   "summary": "The size of the intersection of sets, up to LIMIT"},
    "SUNION": {"parse": _p_keys("SUNION"), "apply": _a_sunion, **_MANY, "line": _members,
               "summary": "The union of sets"},
    "SDIFF": {"parse": _p_keys("SDIFF"), "apply": _a_sdiff, **_MANY, "line": _members,
              "summary": "The members of the first set in none of the others"},
    "SINTERSTORE": {"parse": _p_store("SINTERSTORE"), "apply": _a_sinterstore, **_STORE,
                    "summary": "Store the intersection of sets at a key"},
    "SUNIONSTORE": {"parse": _p_store("SUNIONSTORE"), "apply": _a_sunionstore, **_STORE,
                    "summary": "Store the union of sets at a key"},
    "SDIFFSTORE": {"parse": _p_store("SDIFFSTORE"), "apply": _a_sdiffstore, **_STORE,
                   "summary": "Store the difference of sets at a key"},
    "SSCAN": {"parse": _p_sscan, "apply": _a_sscan, **_S,
              "line": lambda r: {"cursor": r[0], "members": [_text(m) for m in r[1]]},
              "summary": "Iterate over the members of a set"},
})
SPEC.update((s.name, s) for s in SPECS)
