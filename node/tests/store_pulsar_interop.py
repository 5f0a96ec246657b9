"""Reads a Pulsar topic with the official Python `pulsar-client` and prints one JSON line
per message (prefixed `MSG `): its properties, partition key and payload (UTF-8). Used by
store_pulsar.rs to check that events meshd wrote are readable by other Pulsar clients.

usage: store_pulsar_interop.py SERVICE_URL TOPIC COUNT
"""
import json
import logging
import os
import sys

import pulsar


def main() -> int:
    url, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # The client's own log goes to stderr; stdout carries only the message lines.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    client = pulsar.Client(
        url, operation_timeout_seconds=10, logger=logging.getLogger("pulsar")
    )
    try:
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for _ in range(count):
            msg = reader.read_next(timeout_millis=10000)
            print(
                "MSG "
                + json.dumps(
                    {
                        "properties": msg.properties(),
                        "key": msg.partition_key(),
                        "data": msg.data().decode("utf-8", "replace"),
                    }
                ),
                flush=True,
            )
        reader.close()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the client's C++ threads sometimes abort there
    # ("terminate called without an active exception") after all work is done.
    os._exit(code)
