"""The one admin client: every request of :mod:`brook_client.cluster_admin` and
:mod:`brook_client.group_admin` over one :class:`brook_client.session.ClusterSession`,
so that a caller asking a cluster about topics and groups at once (the operator's
ConsumerGroup tick) holds one set of connections, agrees API versions once and finds
brokers once."""

from __future__ import annotations

from .cluster_admin import ClusterAdmin
from .group_admin import GroupAdmin


class KafkaAdmin(ClusterAdmin, GroupAdmin):
    """Admin requests to one broker cluster; keeps its connections until :meth:`close`
    (or the end of ``async with``)."""
