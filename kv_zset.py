"""The zset type (to be built: see kv_hash for the shape of a value-type module)."""

TYPES: list = []
SPECS: list = []
