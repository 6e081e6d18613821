"""The ConsumerGroup autoscaler: its reaction time, and how much sooner a backlog drains.

    sudo python bench/autoscaler.py [--records 3000] [--record-delay-ms 10] [--rounds 3]
                                    [--interval 1]

Runs in the Kubernetes emulator of the integration tests (API server, pod runner, Service
names; it needs root) with ``brook-operator`` and a Broker of one broker. Consumers are
Deployments whose pods are real consumer processes of one group (confluent-kafka,
committing after each poll, each record taking ``--record-delay-ms``). Measures:

* reaction: consumers at 1 replica, no lag; a burst of records takes the lag over the
  threshold (lagPerReplica 100, the burst wants the 6 partitions' worth); the time from
  the burst acknowledged until the operator has written the new replica count to the
  Deployment's scale (observed every 50 ms). ``--rounds`` bursts, each after the count
  is back at 1;
* drain: ``--records`` records over 6 partitions, drained by 1 replica (no
  ConsumerGroup), then the same backlog in another topic with a ConsumerGroup scaling the
  consumers from 1; the time from the first consumer ready until every record is
  processed, side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.kube.harness import Kube
from tests.integration.kube.operated import operated_broker
from tests.integration.test_consumer_group_autoscaling import (
    DEPLOYMENTS,
    GROUPS,
    PARTITIONS,
    consumed,
    consumer_deployment,
    consumer_group,
    produce,
)
from tests.integration.test_operator import BROKER, apply_topic, wait_topic_ready

LAG_PER_REPLICA = 100
SCALE_DOWN_WINDOW_S = 5
POLL_S = 0.05


def replicas(kube: Kube, name: str) -> int:
    return int(kube.get(DEPLOYMENTS, name)["spec"]["replicas"])


def start_consumers(kube: Kube, name: str, root: Path, record_delay_ms: int) -> Path:
    """A Deployment of 1 consumer of topic ``name``; the directory of its journals."""
    journals = root / name
    journals.mkdir()
    kube.apply(consumer_deployment(name, name, journals, record_delay_ms))
    return journals


def drain_time(
    kube: Kube, name: str, root: Path, options: argparse.Namespace, autoscaled: bool
) -> tuple[float, int]:
    """Seconds from the first consumer ready until the backlog is processed; the most
    replicas seen meanwhile."""
    apply_topic(kube, name, partitions=PARTITIONS, replicationFactor=1, minInsyncReplicas=1)
    wait_topic_ready(kube, name, PARTITIONS)
    produced = produce(name, options.records)
    journals = start_consumers(kube, name, root, options.record_delay_ms)
    kube.wait_ready_pods(f"app={name}", 1, timeout=60)
    started = time.monotonic()
    if autoscaled:
        kube.apply(
            consumer_group(
                name,
                name,
                maxReplicas=PARTITIONS,
                lagPerReplica=LAG_PER_REPLICA,
                intervalSeconds=options.interval,
                cooldownSeconds=0,
                scaleDownStabilizationSeconds=60,
            )
        )
    most = 1
    while not consumed(journals) >= produced:
        most = max(most, replicas(kube, name))
        if time.monotonic() - started > options.timeout:
            raise SystemExit(f"{name}: the backlog did not drain within {options.timeout} s")
        time.sleep(0.2)
    took = time.monotonic() - started
    kube.delete(DEPLOYMENTS, name)
    return took, most


def reaction_times(kube: Kube, root: Path, options: argparse.Namespace) -> list[float]:
    """Per burst: seconds from the burst acknowledged to the new count written."""
    name = "reaction"
    apply_topic(kube, name, partitions=PARTITIONS, replicationFactor=1, minInsyncReplicas=1)
    wait_topic_ready(kube, name, PARTITIONS)
    start_consumers(kube, name, root, options.record_delay_ms)
    kube.wait_ready_pods(f"app={name}", 1, timeout=60)
    kube.apply(
        consumer_group(
            name,
            name,
            maxReplicas=PARTITIONS,
            lagPerReplica=LAG_PER_REPLICA,
            intervalSeconds=options.interval,
            cooldownSeconds=0,
            scaleDownStabilizationSeconds=SCALE_DOWN_WINDOW_S,
        )
    )

    def settled() -> bool:
        status = kube.get(GROUPS, name).get("status") or {}
        return replicas(kube, name) == 1 and status.get("totalLag") == 0

    times = []
    for _ in range(options.rounds):
        kube.wait_for(settled, 120, "1 replica and no lag")
        produce(name, LAG_PER_REPLICA * PARTITIONS * 2)
        burst = time.monotonic()
        while replicas(kube, name) == 1:
            if time.monotonic() - burst > 60:
                raise SystemExit("no scale-up within 60 s of a burst")
            time.sleep(POLL_S)
        times.append(time.monotonic() - burst)
    kube.delete(DEPLOYMENTS, name)
    return times


def run(options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="brook-bench-autoscaler-") as directory:
        root = Path(directory)
        with operated_broker(root / "kube", BROKER, 1, report=False) as kube:
            reactions = reaction_times(kube, root, options)
            fixed, _ = drain_time(kube, "drain-fixed", root, options, autoscaled=False)
            scaled, most = drain_time(kube, "drain-autoscaled", root, options, autoscaled=True)
    print(
        f"settings: 1 broker, topics of {PARTITIONS} partitions, consumers confluent-kafka "
        f"with {options.record_delay_ms} ms per record, ConsumerGroup intervalSeconds "
        f"{options.interval}, lagPerReplica {LAG_PER_REPLICA}, scaleUpStabilizationSeconds 0, "
        "cooldownSeconds 0"
    )
    print(
        f"reaction (burst of {LAG_PER_REPLICA * PARTITIONS * 2} records acknowledged -> scale "
        f"written), {len(reactions)} rounds: median {statistics.median(reactions):.2f} s, "
        f"max {max(reactions):.2f} s ({', '.join(f'{t:.2f}' for t in reactions)})"
    )
    print(f"drain {options.records} records:")
    print(f"  1 replica            {fixed:7.1f} s")
    print(f"  autoscaled (max {most}) {scaled:7.1f} s   ({fixed / scaled:.1f}x sooner)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000, help="backlog to drain (3000)")
    parser.add_argument(
        "--record-delay-ms", type=int, default=10, help="processing time per record (10)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="bursts for the reaction time")
    parser.add_argument("--interval", type=int, default=1, help="intervalSeconds (1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest drain (s)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/autoscaler.py needs root (the emulator's mount namespaces, /etc/hosts)")
        return 2
    run(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
