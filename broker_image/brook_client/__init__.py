"""One client of a Brook (or any Kafka) cluster over the Kafka protocol, shared by
``brook`` (the CLI), the operator, the benches and the tests: the session with its
connections and retries (:mod:`.session`), the admin requests (:mod:`.cluster_admin`),
consumer groups and their lag (:mod:`.group_admin`, :mod:`.lag`), all behind one
:class:`.admin.KafkaAdmin`. Built on the broker's wire client,
:class:`brook_broker.protocol.client.KafkaClient`.
"""
