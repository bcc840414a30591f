"""The command registry: every command KV Store answers, declared once.

A Spec says, for one Redis command name: its arity, flags and key positions (Redis's
COMMAND INFO fields, which clients read to route and hint), its group, and - for a data
command - one argument grammar that both protocols parse (`parse`), the state-machine function
that runs it (`apply`), the key type it works on (WRONGTYPE is checked once, here, from that
declaration) and its line-protocol reply shape (`line`).  COMMAND, COMMAND COUNT / INFO / DOCS /
LIST / GETKEYS answer from these tables, and so do the docs checks.

The registry is explicit.  MODULES below lists the value-type modules; each exports
    SPECS    a list of Spec (its commands)
    TYPES    a list of TypeOps (the value kinds it owns: snapshot encoding, deep copy, memory
             estimate, OBJECT ENCODING), empty for a module of commands only
Importing a type module registers nothing anywhere; this module reads their lists.  Adding a
type is one module and one line in MODULES.

Commands that are not data commands (PING, AUTH, INFO, CLIENT, SENTINEL, MULTI, ...) keep
their typed parsers in kv_protocol and their runners in kv_handler / kv_commands / kv_sentinel;
SERVER_SPECS declares their metadata here, so COMMAND still lists every command once.

Parsing (both protocols):
    parse_resp(args)  RESP argument list -> command (a registry parser, else kv_protocol's)
    parse_line(line)  line-protocol line -> command (likewise)
A registry parser is parse(args: list[bytes], line: bool) -> kv_protocol.DataCommand; args[0]
is the command name as sent.  Over the line protocol the words are whitespace-split and the
error messages lose their "ERR " prefix (the JSON "code" says what kind of error it is).
"""

from __future__ import annotations

from typing import Any, Callable

import kv_protocol as P
import kv_generic
import kv_hash
import kv_list
import kv_set
import kv_strings
import kv_zset
from kv_spec import Spec, TypeOps, spec_rows

# The command modules: the keyspace's own commands, then one value-type module per line.
MODULES = (kv_generic, kv_strings, kv_hash, kv_list, kv_set, kv_zset)

__all__ = ["Spec", "TypeOps", "MODULES", "SPECS", "APPLY", "SM_SPECS", "TYPES", "TYPE_NAMES",
           "TAGS", "SERVER_SPECS", "parse_resp", "parse_line", "command_info", "command_docs",
           "command_reply", "type_keys_of"]


# ---------------------------------------------------------------------------------------------
# Commands implemented outside the type modules: metadata only (their parsers live in
# kv_protocol, their runners in kv_handler / kv_commands / kv_sentinel).  Rows as Redis 7's
# COMMAND INFO gives them; KV Store's own commands (group kvstore) have no Redis counterpart.
SERVER_SPECS = spec_rows("""
PING -1 fast 0 0 0 connection 1.0.0 @fast,@connection
ECHO 2 loading,stale,fast 0 0 0 connection 1.0.0 @fast,@connection
AUTH -2 noscript,loading,stale,fast,no_auth,allow_busy 0 0 0 connection 1.0.0 @fast,@connection
HELLO -1 noscript,loading,stale,fast,no_auth,allow_busy 0 0 0 connection 6.0.0 @fast,@connection
SELECT 2 loading,stale,fast 0 0 0 connection 1.0.0 @fast,@connection
QUIT -1 noscript,loading,stale,fast,no_auth,allow_busy 0 0 0 connection 1.0.0 @fast,@connection
CLIENT -2 0 0 0 0 connection 2.4.0 @slow
COMMAND -1 loading,stale 0 0 0 server 2.8.13 @slow,@connection
CONFIG -2 0 0 0 0 server 2.0.0 @slow
INFO -1 loading,stale 0 0 0 server 1.0.0 @slow,@dangerous
SHUTDOWN -1 admin,noscript,loading,stale,no_multi,allow_busy 0 0 0 server 1.0.0 @admin,@slow,@dangerous
ROLE 1 noscript,loading,stale,fast 0 0 0 server 2.8.12 @admin,@fast,@dangerous
READONLY 1 loading,stale,fast 0 0 0 cluster 3.0.0 @fast,@connection
READWRITE 1 loading,stale,fast 0 0 0 cluster 3.0.0 @fast,@connection
SENTINEL -2 admin,noscript,loading,stale 0 0 0 sentinel 2.8.4 @admin,@slow,@dangerous
SUBSCRIBE -2 pubsub,noscript,loading,stale 0 0 0 pubsub 2.0.0 @pubsub,@slow
UNSUBSCRIBE -1 pubsub,noscript,loading,stale 0 0 0 pubsub 2.0.0 @pubsub,@slow
PSUBSCRIBE -2 pubsub,noscript,loading,stale 0 0 0 pubsub 2.0.0 @pubsub,@slow
PUNSUBSCRIBE -1 pubsub,noscript,loading,stale 0 0 0 pubsub 2.0.0 @pubsub,@slow
MULTI 1 noscript,loading,stale,fast,allow_busy 0 0 0 transactions 1.2.0 @fast,@transaction
EXEC 1 noscript,loading,stale,skip_slowlog 0 0 0 transactions 1.2.0 @slow,@transaction
DISCARD 1 noscript,loading,stale,fast,allow_busy 0 0 0 transactions 2.0.0 @fast,@transaction
WATCH -2 noscript,loading,stale,fast,allow_busy 1 -1 1 transactions 2.2.0 @fast,@transaction
UNWATCH 1 noscript,loading,stale,fast,allow_busy 0 0 0 transactions 2.2.0 @fast,@transaction
STATUS 1 loading,stale,fast 0 0 0 kvstore 1.0.0 0
SNAPSHOT 1 admin,noscript 0 0 0 kvstore 1.0.0 0
FLUSH 1 admin,noscript 0 0 0 kvstore 1.0.0 0
TRANSFER -1 admin,noscript 0 0 0 kvstore 1.0.0 0
CLUSTER -2 admin 0 0 0 kvstore 1.0.0 0
""", {name: {"redis": False} for name in ("STATUS", "SNAPSHOT", "FLUSH", "TRANSFER", "CLUSTER")})


# ---------------------------------------------------------------------------------------------
# The tables, built once from MODULES and SERVER_SPECS
def _build():
    specs: dict[str, Spec] = {}
    apply: dict[str, Callable] = {}
    sm_specs: dict[str, Spec] = {}
    types: dict[str, TypeOps] = {}
    for mod in MODULES:
        for t in mod.TYPES:
            if t.kind in types:
                raise RuntimeError(f"value kind {t.kind!r} declared twice ({mod.__name__})")
            types[t.kind] = t
        for s in mod.SPECS:
            if s.name in specs:
                raise RuntimeError(f"command {s.name} declared twice ({mod.__name__})")
            specs[s.name] = s
            if s.apply is not None:
                if s.sm_name in apply and apply[s.sm_name] is not s.apply:
                    raise RuntimeError(f"state-machine command {s.sm_name} has two apply functions")
                apply[s.sm_name] = s.apply
            if s.apply is not None or s.key_type is not None or s.sm:
                sm_specs.setdefault(s.sm_name, s)
    for s in SERVER_SPECS:
        if s.name in specs:
            raise RuntimeError(f"command {s.name} declared twice (server table)")
        specs[s.name] = s
    tags = {}
    for t in types.values():
        if t.tag in tags:
            raise RuntimeError(f"snapshot tag {t.tag!r} used by {tags[t.tag].kind} and {t.kind}")
        tags[t.tag] = t
    return specs, apply, sm_specs, types, tags


SPECS, APPLY, SM_SPECS, TYPES, TAGS = _build()
TYPE_NAMES = {k: t.type_name for k, t in TYPES.items()}
_RESP_PARSERS = {s.name.encode(): s for s in SPECS.values() if s.parse is not None}
_LINE_PARSERS = {s.name: s for s in SPECS.values() if s.parse is not None}


def _first_key(args):
    return args[:1]


def type_keys_of(spec: Spec) -> Callable:
    return spec.type_keys or _first_key


# ---------------------------------------------------------------------------------------------
def parse_resp(args: list) -> Any:
    """One RESP request -> command: the registry's grammar for data commands declared here,
    kv_protocol's for every other.  Never raises."""
    if args and args[0] is not None:
        spec = _RESP_PARSERS.get(args[0].upper())
        if spec is not None:
            if None in args:
                return P.Invalid(P.BAD_REQUEST, "ERR Protocol error: null bulk string in request")
            try:
                return spec.parse(args, False)
            except P._Reject as r:
                return r.invalid
    return P.parse_resp(args)


def parse_line(line: bytes) -> Any:
    """One line-protocol request -> command (see parse_resp).  Never raises."""
    try:
        text_line = line.decode("utf-8")
    except UnicodeDecodeError:
        return P.parse_line(line)
    words = text_line.split()
    if words:
        spec = _LINE_PARSERS.get(words[0].upper())
        if spec is not None:
            args = [w.encode("utf-8") for w in words]
            try:
                return spec.parse(args, True)
            except P._Reject as r:
                m = r.invalid.message
                return P.Invalid(r.invalid.code, m[4:] if m.startswith("ERR ") else m)
    return P.parse_line(line)


# ---------------------------------------------------------------------------------------------
# COMMAND
_GROUP_ACL = {"string": "@string", "hash": "@hash", "list": "@list", "set": "@set",
              "sorted-set": "@sortedset", "bitmap": "@bitmap", "generic": "@keyspace",
              "connection": "@connection", "transactions": "@transaction", "pubsub": "@pubsub",
              "scripting": "@scripting", "server": "", "cluster": "", "sentinel": "",
              "kvstore": ""}


def acl_categories(s: Spec) -> list[str]:
    """Redis's ACL categories of a command: as declared, else derived from flags and group."""
    if s.acl:
        return list(s.acl)
    out = []
    f = s.flags
    if "write" in f:
        out.append("@write")
    if "readonly" in f and s.group not in ("connection",):
        out.append("@read")
    if "admin" in f:
        out += ["@admin", "@dangerous"]
    if "pubsub" in f and s.group != "pubsub":
        out.append("@pubsub")
    g = _GROUP_ACL.get(s.group, "")
    if g:
        out.append(g)
    if "fast" in f:
        out.append("@fast")
    else:
        out.append("@slow")
    if "blocking" in f:
        out.append("@blocking")
    return out


def command_info(s: Spec) -> list:
    """One command as COMMAND INFO gives it (Redis 7 layout: name, arity, flags, first key,
    last key, step, ACL categories, tips, key specs, subcommands)."""
    first, last, step = s.keys
    return [s.name.lower(), s.arity, [P.Simple(f) for f in s.flags], first, last, step,
            [P.Simple(a) for a in acl_categories(s)], [], [], []]


def command_docs(s: Spec) -> dict:
    return {"summary": s.summary or f"{s.name} ({s.group} command)", "since": s.since,
            "group": s.group}


def command_reply(sub: str, args: list[str]):
    """The RESP value of COMMAND [COUNT | INFO name... | DOCS name... | LIST | GETKEYS ...];
    raises ValueError(message) for a bad subcommand."""
    sub = sub.upper()
    if sub == "":
        return [command_info(s) for s in SPECS.values()]
    if sub == "COUNT":
        return len(SPECS)
    if sub == "INFO":
        names = args or [s.name for s in SPECS.values()]
        return [command_info(SPECS[n.upper()]) if n.upper() in SPECS else None for n in names]
    if sub == "DOCS":
        names = args or [s.name for s in SPECS.values()]
        return {n.lower(): command_docs(SPECS[n.upper()]) for n in names if n.upper() in SPECS}
    if sub == "LIST":
        return [s.name.lower() for s in SPECS.values()]
    if sub == "GETKEYS":
        if not args:
            raise ValueError("ERR wrong number of arguments for 'command|getkeys' command")
        s = SPECS.get(args[0].upper())
        if s is None:
            raise ValueError("ERR Invalid command specified")
        if (s.arity > 0 and len(args) != s.arity) or (s.arity < 0 and len(args) < -s.arity):
            raise ValueError("ERR Invalid number of arguments specified for command")
        first, last, step = s.keys
        if first == 0:
            raise ValueError("ERR The command has no key arguments")
        last = len(args) + last if last < 0 else last
        return [args[i] for i in range(first, min(last, len(args) - 1) + 1, step)]
    raise ValueError(f"ERR unknown subcommand '{sub.lower()}'. Try COMMAND HELP.")

