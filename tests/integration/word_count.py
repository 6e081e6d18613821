"""A stateful quixstreams application in a process of its own, so that a test can
``kill -9`` it: a running word count.

    python -m tests.integration.word_count --bootstrap HOST:PORT --group GROUP \\
        --input TOPIC --output TOPIC --state-dir DIR

Each record of the input topic is a sentence (UTF-8 text, keyed). Every word of it adds one
to that word's count, kept in the application's State (RocksDB under DIR, backed by a
changelog topic that quixstreams creates with cleanup.policy=compact), and the new count
goes to the output topic as JSON ``{"word": count}``. Processing is at-least-once: a
checkpoint (changelog and output flushed, then the input offsets committed) every 0.2 s.
The topics must exist (the test creates them with the replication factor it wants; the
changelog topic takes the input topic's). SIGTERM stops the application cleanly; it
also stops when the process that started it dies.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from quixstreams import Application, State

COMMIT_INTERVAL_S = 0.2
SESSION_TIMEOUT_MS = 6000


def count_words(word: str, state: State) -> dict[str, int]:
    """One more of ``word``; the count survives the process through the changelog."""
    count = int(state.get(word, 0)) + 1
    state.set(word, count)
    return {word: count}


def build(args: argparse.Namespace) -> Application:
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=COMMIT_INTERVAL_S,
        state_dir=args.state_dir,
        processing_guarantee="at-least-once",
        auto_create_topics=True,
        request_timeout=10,
        topic_create_timeout=20,
        # A killed instance holds up the next one's join until its session expires.
        consumer_extra_config={"session.timeout.ms": SESSION_TIMEOUT_MS},
    )
    sentences = app.topic(args.input, key_deserializer="str", value_deserializer="str")
    counts = app.topic(args.output, key_serializer="str", value_serializer="json")
    words = app.dataframe(sentences).apply(str.split, expand=True)
    words.apply(count_words, stateful=True).to_topic(counts)
    return app


def stop_with_parent() -> None:
    """SIGTERM to itself once the parent is gone: no orphan keeps the group busy."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    threading.Thread(target=stop_with_parent, daemon=True).start()
    build(args).run()


if __name__ == "__main__":
    main()
