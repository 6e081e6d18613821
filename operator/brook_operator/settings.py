"""The operator's settings, from ``BROOK_OPERATOR_*`` environment variables.

- ``BROOK_OPERATOR_NAMESPACES``: comma-separated namespaces to watch; empty or unset
  watches the whole cluster.
- ``BROOK_OPERATOR_BROKER_IMAGE``: the broker image of a Broker that names none.
- ``BROOK_OPERATOR_METRICS_PORT``: port of the Prometheus ``/metrics`` endpoint (0: none).
- ``BROOK_OPERATOR_HEALTH_PORT``: port of the liveness endpoint ``/healthz`` (0: none).
- ``BROOK_OPERATOR_STANDALONE``: ``true`` (default) runs without Kopf's peering, for a
  single operator replica; ``false`` needs Kopf's peering resources installed.
- ``BROOK_OPERATOR_STATUS_INTERVAL``: seconds between two status reads of a Broker.
- ``BROOK_OPERATOR_LOG_LEVEL``: DEBUG, INFO, WARNING (default) or ERROR.
- ``BROOK_OPERATOR_RACK_CLUSTER_ROLE``: the ClusterRole (``get`` on nodes) a rack-aware
  Broker's ServiceAccount is bound to, so its pods can read their node's zone label;
  unset, rack-aware Brokers get a Warning that nobody grants it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from brook_broker.logs import parse_level

DEFAULT_BROKER_IMAGE = "brook-broker:0.1.0"


class SettingsError(ValueError):
    """An environment variable with a value the operator cannot use."""


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    broker_image: str = DEFAULT_BROKER_IMAGE
    metrics_port: int = 8080
    health_port: int = 8081
    standalone: bool = True
    status_interval: float = 10.0
    log_level: str = "WARNING"
    rack_cluster_role: str | None = None

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        environ = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = environ.get("BROOK_OPERATOR_" + name, "").strip()
            return value or None

        defaults = cls()
        namespaces = tuple(n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip())
        level = get("LOG_LEVEL") or defaults.log_level
        try:
            parse_level(level)
        except ValueError as error:
            raise SettingsError(f"BROOK_OPERATOR_LOG_LEVEL: {error}") from None
        return cls(
            namespaces=namespaces,
            broker_image=get("BROKER_IMAGE") or defaults.broker_image,
            metrics_port=_port(get("METRICS_PORT"), "METRICS_PORT", defaults.metrics_port),
            health_port=_port(get("HEALTH_PORT"), "HEALTH_PORT", defaults.health_port),
            standalone=_bool(get("STANDALONE"), "STANDALONE", defaults.standalone),
            status_interval=_seconds(
                get("STATUS_INTERVAL"), "STATUS_INTERVAL", defaults.status_interval
            ),
            log_level=level,
            rack_cluster_role=get("RACK_CLUSTER_ROLE"),
        )


def _port(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) > 65535:
        raise SettingsError(f"BROOK_OPERATOR_{name}: expected a port 0-65535, got {text!r}")
    return int(text)


def _bool(text: str | None, name: str, default: bool) -> bool:
    if text is None:
        return default
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise SettingsError(f"BROOK_OPERATOR_{name}: expected true or false, got {text!r}")


def _seconds(text: str | None, name: str, default: float) -> float:
    if text is None:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SettingsError(f"BROOK_OPERATOR_{name}: expected seconds above 0, got {text!r}")
    return seconds
