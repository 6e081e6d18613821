"""A digest of replicated metadata that is equal on members that hold equal state.

The Raft snapshot's pickle is no canonical form: sets iterate in an order that depends on
each process's string hashing, and dicts in the order their keys arrived. So the value is
first written out canonically: dataclasses as their class name and fields in declaration
order, mappings as ``[key, value]`` pairs and sets as elements, both sorted by their own
canonical JSON text, tuples and lists as lists, UUIDs as text; then encoded as compact
JSON and hashed with SHA-256. The digest is the hash's first 52 bits, so that a
Prometheus gauge (a float64) holds it exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from enum import Enum
from typing import Any

DIGEST_BITS = 52


def canonical(value: Any) -> Any:
    """``value`` as JSON-ready lists and scalars, the same for equal values in any process."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return canonical(value.value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return [type(value).__name__, [[f.name, canonical(getattr(value, f.name))] for f in fields]]
    if isinstance(value, Mapping):
        return sorted(([canonical(k), canonical(v)] for k, v in value.items()), key=_text)
    if isinstance(value, set | frozenset):
        return sorted((canonical(element) for element in value), key=_text)
    if isinstance(value, tuple | list):
        return [canonical(element) for element in value]
    raise TypeError(f"no canonical form for {type(value).__name__} in replicated metadata")


def digest(value: Any) -> int:
    """The first ``DIGEST_BITS`` bits of the SHA-256 of ``value``'s canonical JSON."""
    hashed = hashlib.sha256(_text(canonical(value)).encode()).digest()
    return int.from_bytes(hashed[:8], "big") >> (64 - DIGEST_BITS)


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
