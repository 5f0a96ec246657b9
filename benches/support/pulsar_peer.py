"""The peer of the Pulsar-store bench: the official Python client (pulsar-client).

Publishes ~300-byte payloads with the async producer (`send_async`) to a broker for a
number of seconds and prints one JSON line: {"events_per_sec", "p50_ms", "p99_ms", "sent",
"failed"}. Latency is send_async call -> receipt callback, per message.

Usage: python3 pulsar_peer.py URL TOPIC_PREFIX SECS PRODUCERS (batched|unbatched)

One producer per topic (`{prefix}-{i}`), as meshd keeps one producer per partition topic.
Unbatched: one message per entry, up to 1000 in flight per producer, blocking when full.
Batched: the client's default batching (up to 1000 messages or 128 KiB per batch, 10 ms
delay), the configuration a user of the client gets by turning batching on.
"""

import json
import sys
import threading
import time

import pulsar


def main():
    url, prefix, secs, producers, mode = sys.argv[1:6]
    secs, producers = float(secs), int(producers)
    batched = mode == "batched"
    client = pulsar.Client(
        url,
        operation_timeout_seconds=30,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
    )
    prods = [
        client.create_producer(
            f"{prefix}-{i}",
            batching_enabled=batched,
            block_if_queue_full=True,
            max_pending_messages=1000,
        )
        for i in range(producers)
    ]
    payload = (
        b'{"specversion":"1.0","id":"e-0000000000","source":"/bench","type":"bench.event",'
        + b'"data":{"payload":"'
        + b"x" * 200
        + b'"}}'
    )
    lock = threading.Lock()
    lat = []
    done = [0, 0]  # ok, failed
    stop_at = time.monotonic() + secs

    def callback_for(t0):
        def cb(res, _msg_id):
            took = time.monotonic() - t0
            with lock:
                if res == pulsar.Result.Ok:
                    done[0] += 1
                    lat.append(took)
                else:
                    done[1] += 1

        return cb

    started = time.monotonic()
    sent = 0
    while time.monotonic() < stop_at:
        for p in prods:
            for _ in range(100):
                p.send_async(payload, callback_for(time.monotonic()), partition_key=f"k{sent % 64}")
                sent += 1
    for p in prods:
        p.flush()
    elapsed = time.monotonic() - started
    with lock:
        ok, failed = done
        lat.sort()
    client.close()

    def pct(q):
        if not lat:
            return float("nan")
        return lat[round((len(lat) - 1) * q)] * 1000.0

    print(
        json.dumps(
            {
                "events_per_sec": ok / elapsed,
                "p50_ms": pct(0.5),
                "p99_ms": pct(0.99),
                "sent": sent,
                "failed": failed,
            }
        )
    )


if __name__ == "__main__":
    main()
