"""``brook-operator``: run the Kopf handlers of Brook's resources until SIGTERM.

Settings come from ``BROOK_OPERATOR_*`` variables (see :mod:`brook_operator.settings`).
Logs are logfmt lines on stderr like the broker's, warnings and up unless
``BROOK_OPERATOR_LOG_LEVEL`` asks for more.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf
from brook_broker.logs import LogfmtFormatter, configure_logging
from kubernetes import config as kubernetes_config

from . import broker, consumer_group, metrics, topic
from .settings import OperatorSettings, SettingsError

HANDLER_MODULES = (broker, topic, consumer_group)
"""Importing a module registers its handlers with Kopf."""

_KOPF_EXTRAS = ("settings", "k8s_skip", "k8s_ref")


class _ObjectFormatter(LogfmtFormatter):
    """Kopf's records about an object carry its reference (and Kopf's settings): keep
    only ``object=Kind/namespace/name``."""

    def format(self, record: logging.LogRecord) -> str:
        if not any(hasattr(record, extra) for extra in _KOPF_EXTRAS):
            return super().format(record)
        record = copy.copy(record)
        reference: dict[str, Any] | None = getattr(record, "k8s_ref", None)
        for extra in _KOPF_EXTRAS:
            record.__dict__.pop(extra, None)
        if reference:
            parts = (reference.get("kind"), reference.get("namespace"), reference.get("name"))
            record.object = "/".join(part for part in parts if part)
        return super().format(record)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator = OperatorSettings.from_env()
    memo.settings = operator
    # Kopf's own log lines (a handler succeeded, a timer ran) are not posted as Events:
    # the handlers post an Event for each of their decisions themselves.
    settings.posting.loggers = False
    settings.persistence.finalizer = "brook.dev/finalizer"
    # Handler progress in annotations: the resources' status is the operator's report only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="brook.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="brook.dev", key="last-handled-configuration"
    )
    metrics.serve(operator.metrics_port)


def load_cluster_config() -> str | None:
    """The Kubernetes client's configuration: in-cluster (the pod's ServiceAccount), else
    the kubeconfig; None when loaded, else why no cluster can be reached."""
    try:
        kubernetes_config.load_incluster_config()
    except kubernetes_config.ConfigException as in_cluster:
        try:
            kubernetes_config.load_kube_config()
        except (kubernetes_config.ConfigException, OSError) as kubeconfig:
            return f"not in a pod ({in_cluster}) and no kubeconfig ({kubeconfig})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print("brook-operator takes no arguments: it is set with BROOK_OPERATOR_* variables")
        return 2
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as error:
        print(f"brook-operator: {error}", file=sys.stderr)
        return 2
    if (no_cluster := load_cluster_config()) is not None:
        print(
            f"brook-operator: no Kubernetes cluster to run against: {no_cluster}", file=sys.stderr
        )
        return 2
    configure_logging(settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ObjectFormatter())
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(
        standalone=settings.standalone,
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
    )
    return 0
