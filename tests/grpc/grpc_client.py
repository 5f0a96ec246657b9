"""A gRPC client of meshd written with the official Python grpcio, its stubs generated from
the shipped .proto files at run time (grpc_tools.protoc into a temporary directory).

Usage: grpc_client.py SCENARIO ADDRESS [ARGS...]; prints one JSON object per line.

The .proto path io/cloudevents/v1/ shadows Python's standard `io` module, so the stubs are
generated from copies with cloudevents.proto at the top level (same packages and wire
format; only the generated Python module path differs). docs/api.md says the same.
"""

import base64
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc
import importlib.resources

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="meshd-grpc-stubs-")
    src = os.path.join(out, "src")
    os.makedirs(os.path.join(src, "meshd", "v1"))
    shutil.copy(os.path.join(ROOT, "io", "cloudevents", "v1", "cloudevents.proto"), src)
    with open(os.path.join(ROOT, "meshd", "v1", "meshd.proto")) as f:
        text = f.read().replace('import "io/cloudevents/v1/cloudevents.proto";', 'import "cloudevents.proto";')
    with open(os.path.join(src, "meshd", "v1", "meshd.proto"), "w") as f:
        f.write(text)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main([
        "protoc", f"-I{src}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}",
        "cloudevents.proto", "meshd/v1/meshd.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    import cloudevents_pb2
    from meshd.v1 import meshd_pb2, meshd_pb2_grpc
    return cloudevents_pb2, meshd_pb2, meshd_pb2_grpc


ce, pb, pb_grpc = load_stubs()
TOKEN = os.environ.get("MESHD_TEST_TOKEN")


def metadata():
    return [("authorization", f"Bearer {TOKEN}")] if TOKEN else []


def out(**kw):
    print(json.dumps(kw), flush=True)


def event(i, data=None, **attrs):
    e = ce.CloudEvent(id=f"g-{i}", source="/grpc-client", spec_version="1.0", type="com.example.grpc")
    e.attributes["partitionkey"].ce_string = f"key-{i % 3}"
    for k, v in attrs.items():
        if isinstance(v, bool):
            e.attributes[k].ce_boolean = v
        elif isinstance(v, int):
            e.attributes[k].ce_integer = v
        else:
            e.attributes[k].ce_string = v
    if data is not None:
        e.binary_data = data
    return e


def event_json(e):
    """A received CloudEvent as comparable JSON: attributes with their types, data base64."""
    attrs = {}
    for k, v in e.attributes.items():
        kind = v.WhichOneof("attr")
        val = getattr(v, kind)
        if kind == "ce_bytes":
            val = base64.b64encode(val).decode()
        elif kind == "ce_timestamp":
            val = val.ToJsonString()
        attrs[k] = [kind, val]
    data = e.WhichOneof("data")
    body = None
    if data == "binary_data":
        body = base64.b64encode(e.binary_data).decode()
    elif data == "text_data":
        body = e.text_data
    return {"id": e.id, "source": e.source, "spec_version": e.spec_version, "type": e.type,
            "attributes": attrs, "data_kind": data, "data": body}


def code_of(err):
    return err.code().name


def call_error(fn):
    try:
        fn()
        return {"code": "OK"}
    except grpc.RpcError as err:
        md = dict(err.trailing_metadata() or [])
        return {"code": code_of(err), "message": err.details(), "field": md.get("meshd-error-field")}


class Subscriber:
    """A Subscribe stream driven from this thread: requests go through a queue."""

    def __init__(self, stub, subscription, credits, consumer=""):
        self.q = queue.Queue()
        self.q.put(pb.SubscribeRequest(subscription=subscription, consumer=consumer, credits=credits))
        self.responses = stub.Subscribe(iter(self.q.get, None), metadata=metadata())

    def send(self, **kw):
        self.q.put(pb.SubscribeRequest(**kw))

    def next_events(self):
        """The next answer that carries events."""
        for r in self.responses:
            if r.events:
                return list(r.events)
        raise SystemExit("stream ended")

    def close(self):
        self.q.put(None)
        self.responses.cancel()


def scenario_publish_subscribe(stub, topic, subscription):
    binary = bytes(range(256))
    r = stub.Publish(pb.PublishRequest(topic=topic, event=event(0, binary, subject="one")), metadata=metadata())
    out(step="publish_one", positions=len(r.positions))
    batch = ce.CloudEventBatch(events=[event(i, f"b{i}".encode()) for i in (1, 2, 3)])
    r = stub.Publish(pb.PublishRequest(topic=topic, batch=batch), metadata=metadata())
    out(step="publish_batch", positions=len(r.positions))

    # 100 publishes in flight on one stream; one ack each, in order.
    reqs = [pb.PublishRequest(topic=topic, event=event(100 + i, b"s")) for i in range(100)]
    acks = list(stub.PublishStream(iter(reqs), metadata=metadata()))
    out(step="publish_stream", acks=len(acks), sequences=[a.sequence for a in acks] == list(range(100)),
        errors=sum(1 for a in acks if a.HasField("error")))

    # A refused request in a stream gets an ack with the error; the stream goes on.
    bad = event(999)
    bad.source = ""
    reqs = [pb.PublishRequest(topic=topic, event=event(200)), pb.PublishRequest(topic=topic, event=bad),
            pb.PublishRequest(topic=topic, event=event(201))]
    acks = list(stub.PublishStream(iter(reqs), metadata=metadata()))
    out(step="stream_with_bad", errors=[[a.error.code, a.error.field, a.error.reason] if a.HasField("error") else None for a in acks])

    # Subscribe: take all 106 events, ack all but one, see that one again after its ack
    # deadline (delivery_attempt 2), then ack it.
    sub = Subscriber(stub, subscription, credits=200)
    got = {}
    while len(got) < 106:
        for e in sub.next_events():
            got[e.event.id] = e
    first = got["g-0"]
    out(step="subscribed", events=len(got), first=event_json(first.event), first_attempt=first.delivery_attempt)
    keep = got["g-1"]
    sub.send(ack_ids=[e.ack_id for i, e in got.items() if i != "g-1"])
    again = None
    while again is None:
        for e in sub.next_events():
            if e.event.id == "g-1":
                again = e
    out(step="redelivered", id=again.event.id, attempt=again.delivery_attempt, same_ack_id=again.ack_id == keep.ack_id)
    sub.send(ack_ids=[again.ack_id])
    for r in sub.responses:
        if r.HasField("acked"):
            out(step="acked", acknowledged=r.acked.acknowledged, unknown=list(r.acked.unknown))
            break
    sub.close()


def scenario_errors(stub, topic, subscription):
    bad = event(1)
    bad.source = ""
    out(step="missing_source", **call_error(lambda: stub.Publish(pb.PublishRequest(topic=topic, event=bad), metadata=metadata())))
    bad = event(2)
    bad.attributes["Bad-Name"].ce_string = "x"
    out(step="bad_extension", **call_error(lambda: stub.Publish(pb.PublishRequest(topic=topic, event=bad), metadata=metadata())))
    batch = ce.CloudEventBatch(events=[event(3), event(4)])
    batch.events[1].type = ""
    out(step="bad_batch", **call_error(lambda: stub.Publish(pb.PublishRequest(topic=topic, batch=batch), metadata=metadata())))
    out(step="no_events", **call_error(lambda: stub.Publish(pb.PublishRequest(topic=topic), metadata=metadata())))
    out(step="unknown_topic", **call_error(lambda: stub.Publish(pb.PublishRequest(topic="nope", event=event(5)), metadata=metadata())))
    big = event(6, b"x" * (5 * 1024 * 1024))
    out(step="oversize", **call_error(lambda: stub.Publish(pb.PublishRequest(topic=topic, event=big), metadata=metadata())))
    out(step="oversize_stream", **call_error(lambda: list(stub.PublishStream(iter([pb.PublishRequest(topic=topic, event=big)]), metadata=metadata()))))
    out(step="unknown_subscription", **call_error(lambda: next(iter(stub.Subscribe(iter([pb.SubscribeRequest(subscription="nope", credits=1)]), metadata=metadata())))))
    out(step="no_subscription", **call_error(lambda: next(iter(stub.Subscribe(iter([pb.SubscribeRequest(credits=1)]), metadata=metadata())))))
    # Garbage on the Publish path: bytes that are no PublishRequest.
    raw = stub_channel.unary_unary("/meshd.v1.EventMesh/Publish", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    out(step="garbage", **call_error(lambda: raw(b"\xff\xff\xff\xff\x0f garbage \x00\x01", metadata=metadata())))


def scenario_publish_same(stub, topic, event_id, data_b64):
    e = ce.CloudEvent(id=event_id, source="/same", spec_version="1.0", type="com.example.same")
    e.attributes["datacontenttype"].ce_string = "application/octet-stream"
    e.attributes["subject"].ce_string = "both-ways"
    e.attributes["partitionkey"].ce_string = "k1"
    e.attributes["tenant"].ce_string = "acme"
    e.attributes["time"].ce_timestamp.FromJsonString("2026-12-03T10:00:00.123Z")
    e.binary_data = base64.b64decode(data_b64)
    r = stub.Publish(pb.PublishRequest(topic=topic, event=e), metadata=metadata())
    out(step="published", positions=len(r.positions))


def scenario_receive(stub, subscription, count):
    sub = Subscriber(stub, subscription, credits=int(count))
    got = []
    while len(got) < int(count):
        got.extend(sub.next_events())
    sub.send(ack_ids=[e.ack_id for e in got])
    for e in got:
        out(step="received", event=event_json(e.event))
    sub.close()


def scenario_reflection(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="meshd.v1.EventMesh")]
    answers = list(stub.ServerReflectionInfo(iter(reqs)))
    services = [s.name for s in answers[0].list_services_response.service]
    files = len(answers[1].file_descriptor_response.file_descriptor_proto)
    out(step="reflection", services=sorted(services), files=files)


if __name__ == "__main__":
    # Never outlive the test that runs us, whatever hangs.
    signal.alarm(120)
    scenario, address, *args = sys.argv[1:]
    stub_channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    stub = pb_grpc.EventMeshStub(stub_channel)
    if scenario == "publish_subscribe":
        scenario_publish_subscribe(stub, *args)
    elif scenario == "errors":
        scenario_errors(stub, *args)
    elif scenario == "publish_same":
        scenario_publish_same(stub, *args)
    elif scenario == "receive":
        scenario_receive(stub, *args)
    elif scenario == "reflection":
        scenario_reflection(stub_channel)
    elif scenario == "unauthenticated":
        out(step="call", **call_error(lambda: stub.Publish(pb.PublishRequest(topic=args[0], event=event(1)), metadata=metadata())))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
