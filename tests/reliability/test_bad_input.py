"""Bad input at every tier's endpoint: typed errors, no crash, and the process keeps serving."""

from __future__ import annotations

import http.client
import random
import struct
import time

import numpy as np
import pytest
from reliability_setup import Front, Leaves, PoisonedSnapshot, Profiles, call
from server_processes import ServerProc, metric_total
from thriftpy2.thrift import TApplicationException, TMessageType

from rpc import codec
from rpc.idl import fmlite_thrift as T
from rpc.validation import MAX_GLANCES, MAX_ID_BYTES

TIERS = ["l0", "l1", "leaf"]


@pytest.fixture(scope="module")
def endpoints(front: Front, leaves: Leaves) -> dict[str, ServerProc]:
    return {"l0": front.l0, "l1": front.l1, "leaf": leaves.a}


def post(server: ServerProc, body: bytes) -> tuple[int, bytes]:
    host, port = server.address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/thrift", body=body, headers={"Content-Type": "application/x-thrift"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def application_error(payload: bytes) -> TApplicationException:
    """Decode a reply that must be a Thrift application exception."""
    protocol = codec._reader(payload)
    _, message_type, _ = protocol.read_message_begin()
    assert message_type == TMessageType.EXCEPTION, f"expected an application exception, got message type {message_type}"
    error = TApplicationException()
    protocol.read_struct(error)
    return error


def header(name: bytes = b"predict", message_type: int = TMessageType.CALL, seqid: int = 1) -> bytes:
    """A strict binary-protocol message header: version 1 and type, method name, sequence id."""
    return struct.pack("!I", 0x80010000 | message_type) + struct.pack("!i", len(name)) + name + struct.pack("!i", seqid)


def thrift_string(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def request_body(fields: bytes) -> bytes:
    """Return a predict call whose request struct contains the given encoded fields."""
    return header() + b"\x0c\x00\x01" + fields + b"\x00" + b"\x00"


def predict_reply(server: ServerProc, body: bytes):
    status, payload = post(server, body)
    assert status == 200
    return codec.decode_reply(payload, "predict", 1)


def valid_request(profiles: Profiles, count: int = 5, **fields) -> T.PredictRequest:
    glance_ids = [str(g) for g in profiles.glances.ids[:count].tolist()]
    options = {"user_id": str(profiles.users.ids[0]), "glance_ids": glance_ids, "timeout_ms": 8000, "variant": "fmlite"}
    options.update(fields)
    return T.PredictRequest(**options)


def assert_still_serving(server: ServerProc, profiles: Profiles) -> None:
    assert server.process.poll() is None, f"{server.role} exited; log tail:\n{server.log_tail()}"
    response = call(server.address, valid_request(profiles))
    assert len(response.scores) == 5


@pytest.mark.parametrize("tier", TIERS)
def test_malformed_bodies_get_application_errors(endpoints, profiles: Profiles, tier: str, figure_book):
    server = endpoints[tier]
    valid = codec.encode_call("predict", 1, request=valid_request(profiles, 40))
    rng = random.Random(17)
    bodies = {
        "empty": b"",
        "truncated header": valid[:6],
        "truncated arguments": valid[: len(valid) // 2],
        "no stop byte": valid[:-2],
        "oneway message type": header(message_type=TMessageType.ONEWAY) + valid[len(header()):],
        "wrong method": header(b"predikt") + valid[len(header()):],
        "negative list length": request_body(b"\x0f\x00\x02\x0b" + struct.pack("!i", -1)),
        # Unknown field 99: a list of 2**31 - 1 elements of a type without wire width. Decoded
        # without the structural check, this 27-byte body blocks a server for about 40 s.
        "zero-width list": header() + b"\x0f\x00\x63\x01" + struct.pack("!i", 2**31 - 1) + b"\x00",
        "trailing bytes": valid + b"\x00\x00",
    }
    bodies.update({f"random {i}": bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400))) for i in range(30)})
    for name, body in bodies.items():
        started = time.monotonic()
        status, payload = post(server, body)
        assert time.monotonic() - started < 2.0, f"{name} took {time.monotonic() - started:.1f} s"
        assert status == 200, name
        if name == "negative list length":
            with pytest.raises(T.InvalidRequest, match="negative length"):
                codec.decode_reply(payload, "predict", 1)
            continue
        error = application_error(payload)
        assert error.message, name
        if name == "wrong method":
            assert error.type == TApplicationException.UNKNOWN_METHOD
            assert "predikt" in error.message
        if name == "oneway message type":
            assert error.type == TApplicationException.INVALID_MESSAGE_TYPE
    assert_still_serving(server, profiles)
    assert metric_total(server.metrics(), "fmlite_malformed_calls_total") >= len(bodies) - 1
    figure_book.add(
        f"malformed bodies at {tier}",
        load="one body at a time: empty, truncated, 30 random, wrong method or message type, negative list length, "
        "a list of 2**31 elements without wire width, trailing bytes",
        sent=len(bodies), failed=0, process_alive_after=True,
        note="Every body got a Thrift application exception or InvalidRequest over HTTP 200; none crashed the process.",
    )


@pytest.mark.parametrize("tier", TIERS)
def test_wrong_field_types_are_typed_errors(endpoints, profiles: Profiles, tier: str):
    server = endpoints[tier]
    user = b"\x0b\x00\x01" + thrift_string(str(profiles.users.ids[0]).encode())
    cases = {
        "user_id": b"\x08\x00\x01" + struct.pack("!i", 7) + b"\x0f\x00\x02\x0b" + struct.pack("!i", 1) + thrift_string(b"N1"),
        "glance_ids as list<i32>": user + b"\x0f\x00\x02\x08" + struct.pack("!i", 2) + struct.pack("!ii", 1, 2),
        "glance_ids as string": user + b"\x0b\x00\x02" + thrift_string(b"N1,N2"),
    }
    for name, fields in cases.items():
        with pytest.raises(T.InvalidRequest) as caught:
            predict_reply(server, request_body(fields))
        expected_field = "user_id" if name == "user_id" else "glance_ids"
        assert caught.value.field == expected_field, name
        assert "the contract declares" in caught.value.message
    assert_still_serving(server, profiles)


@pytest.mark.parametrize("tier", TIERS)
def test_unknown_fields_are_ignored(endpoints, profiles: Profiles, tier: str):
    server = endpoints[tier]
    valid = codec.encode_call("predict", 1, request=valid_request(profiles))
    expected = call(server.address, valid_request(profiles)).scores
    # Field 99 (a string) inside the request struct and field 42 (an i64) beside it.
    start = len(header()) + 3
    body = valid[:start] + b"\x0b\x00\x63" + thrift_string(b"from a newer client") + valid[start:-1] + b"\x0a\x00\x2a" + struct.pack("!q", 5) + b"\x00"
    response = predict_reply(server, body)
    assert response.scores == expected


@pytest.mark.parametrize("tier", TIERS)
def test_bad_ids_are_typed_errors(endpoints, profiles: Profiles, tier: str):
    server = endpoints[tier]
    glance = str(profiles.glances.ids[0]).encode()
    user = str(profiles.users.ids[0]).encode()
    cases = {
        "non-UTF-8 user_id": (b"\x0b\x00\x01" + thrift_string(b"u\xff\xfe") + b"\x0f\x00\x02\x0b" + struct.pack("!i", 1) + thrift_string(glance), "user_id"),
        "non-UTF-8 glance id": (b"\x0b\x00\x01" + thrift_string(user) + b"\x0f\x00\x02\x0b" + struct.pack("!i", 2) + thrift_string(glance) + thrift_string(b"\xc3\x28"), "glance_ids[1]"),
        "empty user_id": (b"\x0b\x00\x01" + thrift_string(b"") + b"\x0f\x00\x02\x0b" + struct.pack("!i", 1) + thrift_string(glance), "user_id"),
        "empty glance id": (b"\x0b\x00\x01" + thrift_string(user) + b"\x0f\x00\x02\x0b" + struct.pack("!i", 2) + thrift_string(glance) + thrift_string(b""), "glance_ids[1]"),
        "id over the maximum length": (b"\x0b\x00\x01" + thrift_string(user) + b"\x0f\x00\x02\x0b" + struct.pack("!i", 1) + thrift_string(b"x" * (MAX_ID_BYTES + 1)), "glance_ids[0]"),
        "negative timeout": (b"\x0b\x00\x01" + thrift_string(user) + b"\x0f\x00\x02\x0b" + struct.pack("!i", 1) + thrift_string(glance) + b"\x08\x00\x04" + struct.pack("!i", -5), "timeout_ms"),
    }
    for name, (fields, field) in cases.items():
        with pytest.raises(T.InvalidRequest) as caught:
            predict_reply(server, request_body(fields))
        assert caught.value.field == field, name
    assert_still_serving(server, profiles)


@pytest.mark.parametrize("tier", TIERS)
def test_duplicate_glance_ids_scored_per_position(endpoints, profiles: Profiles, tier: str):
    server = endpoints[tier]
    first, second = (str(g) for g in profiles.glances.ids[:2].tolist())
    request = valid_request(profiles, glance_ids=[first, second, first, first, "never-seen", "never-seen"])
    response = call(server.address, request)
    again = call(server.address, request)
    assert len(response.scores) == 6
    assert response.scores[0] == response.scores[2] == response.scores[3]
    assert response.scores[4] == response.scores[5]
    assert list(response.flags) == [0, 0, 0, 0, T.FLAG_UNKNOWN_GLANCE, T.FLAG_UNKNOWN_GLANCE]
    assert again.scores == response.scores


@pytest.mark.parametrize("tier", TIERS)
def test_glance_id_limit(endpoints, profiles: Profiles, tier: str):
    server = endpoints[tier]
    known = [str(g) for g in profiles.glances.ids.tolist()]
    at_limit = [known[i % len(known)] for i in range(MAX_GLANCES)]
    response = call(server.address, valid_request(profiles, glance_ids=at_limit), timeout_s=30)
    assert len(response.scores) == MAX_GLANCES
    assert np.all(np.isfinite(response.scores))

    with pytest.raises(T.InvalidRequest) as caught:
        call(server.address, valid_request(profiles, glance_ids=at_limit + [known[0]]))
    assert caught.value.field == "glance_ids"
    assert f"maximum of {MAX_GLANCES}" in caught.value.message

    # Ids of the maximum length, more of them than allowed: the body is over the HTTP limit, yet
    # the reply is a typed error naming both limits, not a bare 413.
    oversized = codec.encode_call("predict", 1, request=valid_request(profiles, glance_ids=["g" * MAX_ID_BYTES] * (MAX_GLANCES + 2000)))
    status, payload = post(server, oversized)
    assert status == 200
    with pytest.raises(T.InvalidRequest) as caught:
        codec.decode_reply(payload, "predict", 1)
    assert str(MAX_GLANCES) in caught.value.message
    assert str(MAX_ID_BYTES) in caught.value.message
    assert_still_serving(server, profiles)


def test_nan_and_inf_profile_rows_are_never_ranked(leaves: Leaves, poisoned_snapshot: PoisonedSnapshot, profiles: Profiles, figure_book):
    server = leaves.poisoned
    assert server.get("/readyz")[0] == 200
    assert metric_total(server.metrics(), "fmlite_rejected_profile_rows") == len(poisoned_snapshot.glance_ids) + len(poisoned_snapshot.user_ids)
    healthy_glances = [str(g) for g in profiles.glances.ids[3:6].tolist()]
    glance_ids = [*poisoned_snapshot.glance_ids, *healthy_glances]

    healthy_user = next(str(u) for u in profiles.users.ids.tolist() if str(u) not in poisoned_snapshot.user_ids)
    response = call(server.address, valid_request(profiles, user_id=healthy_user, glance_ids=glance_ids))
    assert not response.cold_start_user
    assert list(response.flags[:3]) == [T.FLAG_UNKNOWN_GLANCE] * 3
    assert list(response.flags[3:]) == [0, 0, 0]
    assert response.scores[:3] == [pytest.approx(profiles.manifest.fallback_score)] * 3
    assert np.all(np.isfinite(response.scores))

    for user_id in poisoned_snapshot.user_ids:
        response = call(server.address, valid_request(profiles, user_id=user_id, glance_ids=healthy_glances))
        assert response.cold_start_user
        assert np.all(np.isfinite(response.scores))
    assert_still_serving(server, profiles)
