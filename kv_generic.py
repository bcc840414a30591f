"""Commands of the keyspace itself, aware of every type: DEL/UNLINK, EXISTS, TOUCH, TYPE,
RENAME, COPY, RANDOMKEY, SCAN, KEYS, DBSIZE, FLUSHDB, the EXPIRE family, PERSIST.

A module of commands only (it owns no value kind).  Their parsers are kv_protocol's and their
state-machine functions kv_state's; the rows declare what COMMAND says of them.
"""

from __future__ import annotations

from kv_spec import spec_rows

TYPES: list = []

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
""")
