"""Command and value-type declarations: what a value-type module exports to kv_registry.

A leaf module (it imports only kv_protocol), so that kv_hash, kv_list, ... can import it while
kv_registry imports them.

    Spec        one command, declared once (see its docstring)
    TypeOps     one value kind: snapshot encoding, deep copy, memory estimate, OBJECT ENCODING
    spec_rows   Specs from a table of rows (name arity flags first last step group since acl),
                the form Redis's COMMAND INFO gives, with the functions per name beside it
    parsing     key(), integer(), check_arity(), arity_error(), reject(), text(), data_command():
                kv_protocol's rules (key limits, Redis's arity messages) for the type modules'
                parsers
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import kv_protocol as P
from kv_protocol import DataCommand

__all__ = ["Spec", "TypeOps", "Blocking", "spec_rows", "Reject", "reject", "arity_error",
           "check_arity", "key", "text", "integer", "data_command", "shaped", "one_key", "key_and_arg",
           "key_and_rest"]


@dataclass(slots=True)
class Blocking:
    """A blocking command as parsed (BLPOP, BRPOP, BLMOVE, BZPOPMIN, ...).  command: the
    non-blocking form to try (a DataCommand whose apply pops, or answers None / NULL_ARRAY
    when there is nothing to pop); keys: the keys it waits on; timeout: seconds, 0 = forever;
    empty: the reply when the timeout passes (None or kv_values.NULL_ARRAY).  Inside MULTI it
    runs as its non-blocking form, once, as Redis does."""
    command: DataCommand
    keys: list
    timeout: float
    empty: Any = None
    redis_name: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    """One command.  name: upper-case Redis name.  arity: Redis's (n > 0 exactly n words with
    the name, n < 0 at least -n).  flags: Redis's command flags ("write", "readonly", "denyoom",
    "fast", "blocking", "admin", "noscript", "loading", "stale", ...).  keys: (first, last, step)
    argv positions of its keys ((0, 0, 0): none; last -1 = the last argument).  group: Redis's
    COMMAND DOCS group ("string", "hash", "list", "set", "sorted-set", "generic", "server",
    "connection", "transactions", "pubsub", "scripting", "bitmap", "cluster", "sentinel",
    "kvstore" for our own).  acl: ACL categories beyond the ones derived from flags and group.

    Data commands also have:
    parse      (args: list[bytes], line: bool) -> DataCommand   both protocols' grammar
    apply      (store, args, now, write) -> result               the state-machine function
    sm         the state-machine name apply is registered under (default: name); several Redis
               names may share one (INCR/DECR/INCRBY -> INCRBY), the first declares apply
    key_type   "string" | "hash" | "list" | "set" | "zset": the type its checked keys must hold
               (WRONGTYPE otherwise), None when any type is fine (DEL, TYPE, SET, ...)
    type_keys  sm args -> the keys to type-check (default: the first argument)
    line       result -> the line-protocol reply fields (default {"result": <JSON of result>})
    redis      False for KV Store's own commands (STATUS, CAS, ...): no Redis to compare with
    summary    one line for COMMAND DOCS and the docs
    """
    name: str
    arity: int
    flags: tuple = ()
    keys: tuple = (0, 0, 0)
    group: str = "generic"
    acl: tuple = ()
    parse: Callable | None = None
    apply: Callable | None = None
    sm: str = ""
    key_type: str | None = None
    type_keys: Callable | None = None
    line: Callable | None = None
    redis: bool = True
    summary: str = ""
    since: str = "1.0.0"
    subcommands: tuple = ()

    @property
    def sm_name(self) -> str:
        return self.sm or self.name

    @property
    def write(self) -> bool:
        return "write" in self.flags


@dataclass(frozen=True, slots=True)
class TypeOps:
    """What the keyspace needs of one value kind.
    kind       the kind stored in KeyValueStore.data (key -> (kind, value))
    type_name  what TYPE answers ("string", "hash", "list", "set", "zset")
    tag        the snapshot record tag (kv_storage keeps it opaque): one short str per kind
    encode     value -> the snapshot payload (JSON-able; a str for big values)
    decode     payload -> value (raises ValueError on a bad payload)
    copy       value -> an independent deep copy (COPY)
    memory     value -> an estimate in bytes of what it costs (MEMORY USAGE, INFO)
    encoding   value -> what OBJECT ENCODING answers (what we really use, in Redis's words
               where they fit)
    item_hash  (key, value) -> the key's digest contribution; None for containers, which keep
               `h` and use kv_values.container_hash
    """
    kind: str
    type_name: str
    tag: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    copy: Callable[[Any], Any]
    memory: Callable[[Any], int]
    encoding: Callable[[Any], str]
    item_hash: Callable | None = None


# ---------------------------------------------------------------------------------------------
# Parsing toolkit for the type modules (kv_protocol's rules: key limits, arity messages)
Reject = P._Reject


def reject(message: str, code: str = P.BAD_REQUEST) -> P._Reject:
    """An argument error to raise from a parser: message is a full Redis error line."""
    return P._Reject(code, message)


def arity_error(name: bytes) -> P._Reject:
    return P._arity(name)


def check_arity(args: list, n: int) -> None:
    """Redis arity: n > 0 exactly n words (with the name), n < 0 at least -n."""
    if (n > 0 and len(args) != n) or (n < 0 and len(args) < -n):
        raise P._arity(args[0].lower())


def key(b: bytes) -> str:
    """A key argument (kv_protocol's rule: non-empty, at most 64 KiB) as the store's str."""
    return P._r_key(b)


def text(b: bytes) -> str:
    return P.bytes_to_text(b)


def integer(b: bytes, message: str = "ERR value is not an integer or out of range") -> int:
    n = P._strict_int(b)
    if n is None:
        raise P._Reject(P.BAD_REQUEST, message)
    return n


def data_command(spec: Spec, args: list, out: list, write: bool | None = None) -> DataCommand:
    """The parsed form of one data command (args[0] is the name as the client sent it)."""
    return DataCommand(spec.sm_name, out, spec.write if write is None else write,
                       P.bytes_to_text(args[0]).lower())




def shaped(spec_of: dict, name: str, shape: Callable) -> Callable:
    """The parser of a command whose state-machine arguments are shape(args) once Redis's
    arity holds.  spec_of: the type module's SPEC table (name -> Spec), filled when the module
    has built its SPECS, before anything is parsed."""
    def parse(args, line):
        spec = spec_of[name]
        check_arity(args, spec.arity)
        return data_command(spec, args, shape(args))
    return parse


def one_key(args: list) -> list:
    """KEY: [key]."""
    return [key(args[1])]


def key_and_arg(args: list) -> list:
    """KEY word (HGET's field, SISMEMBER's member): [key, word]."""
    return [key(args[1]), args[2]]


def key_and_rest(args: list) -> list:
    """KEY word [word ...] (HDEL's fields, SADD's members): [key, [word, ...]]."""
    return [key(args[1]), list(args[2:])]


def spec_rows(rows: str, funcs: dict | None = None) -> list[Spec]:
    """Specs from rows "NAME arity flags first last step group since acl" (flags and acl
    comma-separated, "0" for none), one per line; funcs maps a name to a dict of the other Spec
    fields (parse, apply, sm, key_type, type_keys, line, summary, redis)."""
    funcs = funcs or {}
    out = []
    for row in rows.strip().splitlines():
        row = row.strip()
        if not row or row.startswith("#"):
            continue
        name, arity, flags, first, last, step, group, since, acl = row.split()
        extra = dict(funcs.get(name, {}))
        out.append(Spec(name, int(arity), () if flags == "0" else tuple(flags.split(",")),
                        (int(first), int(last), int(step)), group,
                        () if acl == "0" else tuple(acl.split(",")), since=since, **extra))
    unknown = set(funcs) - {s.name for s in out}
    if unknown:
        raise ValueError(f"functions for commands with no row: {sorted(unknown)}")
    return out
