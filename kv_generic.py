"""Commands of the keyspace itself, aware of every type: DEL/UNLINK, EXISTS, TOUCH, TYPE,
RENAME, COPY, RANDOMKEY, SCAN, KEYS, DBSIZE, FLUSHDB, the EXPIRE family, PERSIST.

A module of commands only (it owns no value kind).  Their parsers are kv_protocol's and their
state-machine functions kv_state's; the rows declare what COMMAND says of them.
"""

from __future__ import annotations

import kv_protocol as P
from kv_strings import STRING_KINDS, string_encoding
from kv_spec import arity_error, check_arity, data_command, key, reject, spec_rows
from kv_values import Fail, parse_int

TYPES: list = []


# ---------------------------------------------------------------------------------------------
# OBJECT ENCODING | REFCOUNT | IDLETIME | FREQ | HELP
_OBJECT_HELP = [
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Prints this help.",
]
_OBJECT_KEYED = ("ENCODING", "REFCOUNT", "IDLETIME", "FREQ")
E_NO_FREQ = ("ERR An LFU maxmemory policy is not selected, access frequency not tracked. "
             "Please note that when switching between policies at runtime LRU and LFU data will "
             "take some time to adjust.")
_SHARED_REFCOUNT = 2147483647        # Redis's OBJ_SHARED_REFCOUNT (shared integers 0..9999)


def _p_object(args, line):
    check_arity(args, -2)
    sub = P.bytes_to_text(args[1]).upper()
    if sub == "HELP":
        if len(args) != 2:
            raise arity_error(b"object|help")
        return data_command(SPEC["OBJECT"], args, ["HELP"])
    if sub in _OBJECT_KEYED:
        if len(args) != 3:
            raise arity_error(b"object|" + sub.lower().encode())
        return data_command(SPEC["OBJECT"], args, [sub, key(args[2])])
    raise reject(f"ERR unknown subcommand '{P._printable(args[1])}'. Try OBJECT HELP.",
                 P.UNKNOWN_COMMAND)


def _a_object(s, a, now, w):
    sub = a[0]
    if sub == "HELP":
        return [P.Simple(x) for x in _OBJECT_HELP]
    item = s._lookup(a[1], now, w)
    if item is None:
        return None
    kind, value = item
    enc = string_encoding(item) if kind in STRING_KINDS else s.types[kind].encoding(value)
    if sub == "ENCODING":
        return enc.encode()
    if sub == "REFCOUNT":     # Redis shares the integers 0..9999; every other value has one owner
        if enc == "int" and 0 <= parse_int(P.value_to_resp_bytes(value, kind)) < 10000:
            return _SHARED_REFCOUNT
        return 1
    if sub == "FREQ":
        raise Fail(E_NO_FREQ)
    return 0                  # IDLETIME: no access times are kept (docs/CLUSTERING.md)


def _line_object(r):
    if type(r) is list:
        return {"help": [str(x) for x in r]}
    if type(r) is bytes:
        return {"encoding": r.decode()}
    if r is None:
        return {"found": False}
    return {"result": r}

SPECS = spec_rows("""
DEL -2 write 1 -1 1 generic 1.0.0 @keyspace,@write,@slow
UNLINK -2 write,fast 1 -1 1 generic 4.0.0 @keyspace,@write,@fast
EXISTS -2 readonly,fast 1 -1 1 generic 1.0.0 @keyspace,@read,@fast
TOUCH -2 readonly,fast 1 -1 1 generic 3.2.1 @keyspace,@read,@fast
TYPE 2 readonly,fast 1 1 1 generic 1.0.0 @keyspace,@read,@fast
RENAME 3 write 1 2 1 generic 1.0.0 @keyspace,@write,@slow
RENAMENX 3 write,fast 1 2 1 generic 1.0.0 @keyspace,@write,@fast
COPY -3 write,denyoom 1 2 1 generic 6.2.0 @keyspace,@write,@slow
RANDOMKEY 1 readonly 0 0 0 generic 1.0.0 @keyspace,@read,@slow
SCAN -2 readonly 0 0 0 generic 2.8.0 @keyspace,@read,@slow
KEYS 2 readonly 0 0 0 generic 1.0.0 @keyspace,@read,@slow,@dangerous
DBSIZE 1 readonly,fast 0 0 0 server 1.0.0 @keyspace,@read,@fast
FLUSHDB -1 write 0 0 0 server 1.0.0 @keyspace,@write,@slow,@dangerous
FLUSHALL -1 write 0 0 0 server 1.0.0 @keyspace,@write,@slow,@dangerous
EXPIRE -3 write,fast 1 1 1 generic 1.0.0 @keyspace,@write,@fast
PEXPIRE -3 write,fast 1 1 1 generic 2.6.0 @keyspace,@write,@fast
EXPIREAT -3 write,fast 1 1 1 generic 1.2.0 @keyspace,@write,@fast
PEXPIREAT -3 write,fast 1 1 1 generic 2.6.0 @keyspace,@write,@fast
TTL 2 readonly,fast 1 1 1 generic 1.0.0 @keyspace,@read,@fast
PTTL 2 readonly,fast 1 1 1 generic 2.6.0 @keyspace,@read,@fast
EXPIRETIME 2 readonly,fast 1 1 1 generic 7.0.0 @keyspace,@read,@fast
PEXPIRETIME 2 readonly,fast 1 1 1 generic 7.0.0 @keyspace,@read,@fast
PERSIST 2 write,fast 1 1 1 generic 2.2.0 @keyspace,@write,@fast
OBJECT -2 0 0 0 0 generic 2.2.3 @slow
""", {
    "OBJECT": {"parse": _p_object, "apply": _a_object, "line": _line_object,
               "summary": "ENCODING / REFCOUNT / FREQ / IDLETIME of a key's value, HELP"},
})
SPEC = {s.name: s for s in SPECS}
