"""The hash type: a key holding a map of fields to values (both byte strings), and the hash
commands (Redis's t_hash.c is the model of behaviour; the code is ours).

Value: HashValue, a dict field -> value in insertion order (what Redis's listpack encoding
returns for small hashes, so HGETALL of a small hash reads in the same order), plus `h`, the
content hash: the sum mod 2**64 of elem_hash(field, value) over its fields, so one HSET or HDEL
changes the digest in O(1).

Snapshot record: tag "h", payload [field_b64, value_b64, ...] (flat).
"""

from __future__ import annotations

import base64
import binascii
import sys

from kv_spec import TypeOps, arity_error, check_arity, data_command, key, spec_rows
from kv_values import MASK64, elem_hash

KIND = "hash"


class HashValue(dict):
    """field (bytes) -> value (bytes); h: the content hash (see the module docstring)."""
    __slots__ = ("h",)
    kind = KIND

    def __init__(self, *a):
        super().__init__(*a)
        self.h = 0
        for f, v in self.items():
            self.h = (self.h + elem_hash(f, v)) & MASK64

    def put(self, field: bytes, value: bytes) -> bool:
        """Set one field; True when it is new."""
        old = self.get(field)
        if old is not None:
            self.h = (self.h - elem_hash(field, old)) & MASK64
        self[field] = value
        self.h = (self.h + elem_hash(field, value)) & MASK64
        return old is None

    def drop(self, field: bytes) -> bool:
        """Delete one field; True when it was there."""
        old = self.pop(field, None)
        if old is None:
            return False
        self.h = (self.h - elem_hash(field, old)) & MASK64
        return True


# ---------------------------------------------------------------------------------------------
# Type operations
def _encode(v: HashValue) -> list:
    out = []
    for f, x in v.items():
        out.append(base64.b64encode(f).decode("ascii"))
        out.append(base64.b64encode(x).decode("ascii"))
    return out


def _decode(payload) -> HashValue:
    if type(payload) is not list or len(payload) % 2:
        raise ValueError("a hash's snapshot record is not a flat [field, value, ...] list")
    try:
        raw = [binascii.a2b_base64(p, strict_mode=True) for p in payload]
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"bad base64 in a hash record: {e}") from None
    return HashValue(zip(raw[0::2], raw[1::2]))


def _copy(v: HashValue) -> HashValue:
    c = HashValue()
    dict.update(c, v)
    c.h = v.h
    return c


def _memory(v: HashValue) -> int:
    return sys.getsizeof(v) + sum(sys.getsizeof(f) + sys.getsizeof(x) for f, x in v.items())


def _encoding(v: HashValue) -> str:
    return "hashtable"


TYPES = [TypeOps(KIND, "hash", "h", _encode, _decode, _copy, _memory, _encoding)]


# ---------------------------------------------------------------------------------------------
# Commands.  apply(s, args, now, write): s is the keyspace (kv_state.KeyValueStore: fetch,
# store, remove); args as the parser made them; `write` False for a read on the primary.
def _p_hset(args, line):
    if len(args) < 4 or len(args) % 2:
        raise arity_error(args[0])
    return data_command(SPEC["HSET"], args, [key(args[1]), list(args[2:])])


def _a_hset(s, a, now, w):
    k, pairs = a
    h = s.fetch(k, KIND, now, w)
    old = None if h is None else h.h
    if h is None:
        h = HashValue()
    added = 0
    for i in range(0, len(pairs), 2):
        added += h.put(pairs[i], pairs[i + 1])
    s.store(k, h, old)
    return added


def _p_key_fields(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1]), list(args[2:])])
    return parse


def _a_hdel(s, a, now, w):
    k, fields = a
    h = s.fetch(k, KIND, now, w)
    if h is None:
        return 0
    old = h.h
    n = sum(h.drop(f) for f in fields)
    if n:
        s.store(k, h, old)
    return n


def _p_key_field(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1]), args[2]])
    return parse


def _a_hget(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return None if h is None else h.get(a[1])


def _p_key(name):
    def parse(args, line):
        check_arity(args, SPEC[name].arity)
        return data_command(SPEC[name], args, [key(args[1])])
    return parse


def _a_hlen(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return 0 if h is None else len(h)


def _a_hgetall(s, a, now, w):
    h = s.fetch(a[0], KIND, now, w)
    return {} if h is None else dict(h)


def _line_text(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


_H = {"key_type": KIND}
SPECS = spec_rows("""
HSET -4 write,denyoom,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HDEL -3 write,fast 1 1 1 hash 2.0.0 @write,@hash,@fast
HGET 3 readonly,fast 1 1 1 hash 2.0.0 @read,@hash,@fast
HLEN 2 readonly,fast 1 1 1 hash 2.0.0 @read,@hash,@fast
HGETALL 2 readonly 1 1 1 hash 2.0.0 @read,@hash,@slow
""", {
    "HSET": {"parse": _p_hset, "apply": _a_hset, **_H, "line": lambda r: {"added": r},
             "summary": "Set fields of a hash; answers how many were new"},
    "HDEL": {"parse": _p_key_fields("HDEL"), "apply": _a_hdel, **_H, "line": lambda r: {"deleted": r},
             "summary": "Delete fields of a hash"},
    "HGET": {"parse": _p_key_field("HGET"), "apply": _a_hget, **_H,
             "line": lambda r: {"value": _line_text(r), "found": r is not None},
             "summary": "The value of one field"},
    "HLEN": {"parse": _p_key("HLEN"), "apply": _a_hlen, **_H, "line": lambda r: {"length": r},
             "summary": "The number of fields"},
    "HGETALL": {"parse": _p_key("HGETALL"), "apply": _a_hgetall, **_H,
                "line": lambda r: {"value": {_line_text(f): _line_text(v) for f, v in r.items()}},
                "summary": "Every field and value"},
})
SPEC = {s.name: s for s in SPECS}
