"""Publishes CloudEvents to meshd with the official Python SDK (cloudevents 2.x) in binary,
structured and batch modes, then prints one JSON line per request with the status."""
import json
import sys
import urllib.request

from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def post(url, headers, body):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def event(i, mode):
    return CloudEvent(
        attributes={
            "id": f"sdk-{mode}-{i}",
            "type": "com.example.sdk",
            "source": "/python-sdk",
            "subject": f"item-{i}",
            "partitionkey": f"key-{i % 2}",
            "datacontenttype": "application/json",
        },
        data={"mode": mode, "i": i, "text": "héllo \"quoted\""},
    )


def main():
    base, topic = sys.argv[1], sys.argv[2]
    url = f"{base}/v1/topics/{topic}/events"
    results = []
    msg = to_binary_event(event(0, "binary"))
    results.append(("binary", *post(url, msg.headers, msg.body)))
    msg = to_structured_event(event(0, "structured"))
    results.append(("structured", *post(url, msg.headers, msg.body)))
    fmt = JSONFormat()
    batch = [json.loads(fmt.write(event(i, "batch"))) for i in range(3)]
    results.append(
        (
            "batch",
            *post(url, {"content-type": "application/cloudevents-batch+json"}, json.dumps(batch).encode()),
        )
    )
    # A bad event the SDK would refuse to build: sent by hand, must be refused.
    bad = {"specversion": "1.0", "id": "sdk-bad", "type": "t"}
    results.append(
        ("bad", *post(url, {"content-type": "application/cloudevents+json"}, json.dumps(bad).encode()))
    )
    for mode, status, body in results:
        print(json.dumps({"mode": mode, "status": status, "body": body}))


if __name__ == "__main__":
    main()
