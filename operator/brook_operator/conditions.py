"""Status conditions in Kubernetes' shape, shared by every resource's status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def condition(
    kind: str,
    holds: bool,
    reason: str,
    message: str,
    previous: Iterable[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """The condition ``kind``; its lastTransitionTime stays what ``previous`` (the
    conditions in the status now) said while its status does not flip."""
    status = "True" if holds else "False"
    old = next((c for c in previous if c.get("type") == kind), {})
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
    }
