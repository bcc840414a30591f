"""The string type: values of kind "json" (line protocol SET: any JSON value) or "bytes" (RESP
SET: raw bytes), and the string commands.

Both kinds are one Redis type, "string": a JSON value reads as its text over RESP (42 -> "42",
see kv_protocol's value rules), and every string command works on either.

Snapshot records: tag "j" (payload: the JSON value itself) and "b" (payload: base64 text).
These are the two body maps of snapshot versions 1 and 2 as well, so kv_storage hands old
files' items to decode() unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys

from kv_spec import TypeOps, spec_rows

_b64encode = base64.b64encode
_a2b = binascii.a2b_base64


def _encode_bytes(v: bytes) -> str:
    return _b64encode(v).decode("ascii")


def _decode_bytes(payload) -> bytes:
    if type(payload) is not str:
        raise ValueError("a bytes value's snapshot record is not base64 text")
    try:
        return _a2b(payload, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"bad base64 value: {e}") from None


def _same(v):
    return v


def _memory_json(v) -> int:
    return 56 + len(json.dumps(v)) if not isinstance(v, (int, float)) else 56


def _memory_bytes(v: bytes) -> int:
    return 56 + sys.getsizeof(v)


def _encoding_json(v) -> str:
    if type(v) is int and -(1 << 63) <= v < (1 << 63):
        return "int"
    return "embstr" if len(json.dumps(v)) <= 44 else "raw"


def _encoding_bytes(v: bytes) -> str:
    if len(v) <= 20 and v[:1] != b"0" and v.lstrip(b"-").isdigit():
        try:
            n = int(v)
        except ValueError:
            n = None
        if n is not None and -(1 << 63) <= n < (1 << 63) and str(n).encode() == v:
            return "int"
    return "embstr" if len(v) <= 44 else "raw"


def _copy_json(v):
    """JSON values are never changed in place (every write stores a new value): share them."""
    return v


TYPES = [
    TypeOps("json", "string", "j", _same, _same, _copy_json, _memory_json, _encoding_json),
    TypeOps("bytes", "string", "b", _encode_bytes, _decode_bytes, _same, _memory_bytes, _encoding_bytes),
]

# The string commands.  Their parsers are kv_protocol's (the fast-path classes and
# _DATA_PARSERS) and their state-machine functions kv_state's; the rows declare what COMMAND
# says of them and which keys WRONGTYPE checks (key_type "string").
_S = {"key_type": "string"}
SPECS = spec_rows("""
GET 2 readonly,fast 1 1 1 string 1.0.0 @read,@string,@fast
SET -3 write,denyoom 1 1 1 string 1.0.0 @write,@string,@slow
GETSET 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
GETDEL 2 write,fast 1 1 1 string 6.2.0 @write,@string,@fast
GETEX -2 write,fast 1 1 1 string 6.2.0 @write,@string,@fast
SETNX 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
SETEX 4 write,denyoom 1 1 1 string 2.0.0 @write,@string,@slow
PSETEX 4 write,denyoom 1 1 1 string 2.6.0 @write,@string,@slow
APPEND 3 write,denyoom,fast 1 1 1 string 2.0.0 @write,@string,@fast
STRLEN 2 readonly,fast 1 1 1 string 2.2.0 @read,@string,@fast
GETRANGE 4 readonly 1 1 1 string 2.4.0 @read,@string,@slow
SUBSTR 4 readonly 1 1 1 string 1.0.0 @read,@string,@slow
SETRANGE 4 write,denyoom 1 1 1 string 2.2.0 @write,@string,@slow
INCR 2 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
DECR 2 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
INCRBY 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
DECRBY 3 write,denyoom,fast 1 1 1 string 1.0.0 @write,@string,@fast
INCRBYFLOAT 3 write,denyoom,fast 1 1 1 string 2.6.0 @write,@string,@fast
MGET -2 readonly,fast 1 -1 1 string 1.0.0 @read,@string,@fast
MSET -3 write,denyoom 1 -1 2 string 1.0.1 @write,@string,@slow
MSETNX -3 write,denyoom 1 -1 2 string 1.0.1 @write,@string,@slow
CAS 4 write,denyoom,fast 1 1 1 kvstore 1.0.0 0
""", {
    # sm: the state-machine command each name runs as (kv_state); WRONGTYPE is checked for
    # the commands whose keys must hold strings.  SET / GETSET / MSET / MSETNX overwrite any
    # type, MGET answers nil for a key of another type: no check.
    "GET": {**_S}, "GETDEL": {**_S}, "GETEX": {**_S}, "SETNX": {"sm": "SETNX"},
    "GETSET": {"sm": "SET"}, "SETEX": {"sm": "SET"}, "PSETEX": {"sm": "SET"},
    "APPEND": {**_S}, "STRLEN": {**_S}, "GETRANGE": {**_S}, "SUBSTR": {"sm": "GETRANGE", **_S},
    "SETRANGE": {**_S}, "INCR": {"sm": "INCRBY", **_S}, "DECR": {"sm": "INCRBY", **_S},
    "INCRBY": {**_S}, "DECRBY": {"sm": "INCRBY", **_S}, "INCRBYFLOAT": {**_S},
    "CAS": {"redis": False, **_S},
})
