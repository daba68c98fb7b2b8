"""Property-based fuzzing of the request decoder (hypothesis), bounded so that it runs in every ``make test``.

Properties: any byte string either decodes into a call of this service or raises ``DecodeError``
(``FieldTypeError`` naming the field for a wrongly typed one); a decoded predict call passes
validation or raises ``InvalidRequest``; a valid request survives encoding and decoding
unchanged; and a valid body that was cut, overwritten or extended never makes the decoder raise
anything else. Every example must finish quickly: a body that makes the decoder loop (a
container of 2**31 elements without wire width) would hold the test for seconds.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc import codec
from rpc.idl import fmlite_thrift as T
from rpc.validation import MAX_ID_BYTES, validate_predict_request

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(min_size=1, max_size=40)
requests = st.builds(
    T.PredictRequest,
    user_id=ids,
    glance_ids=st.lists(ids, max_size=30),
    request_id=st.none() | st.text(max_size=20),
    timeout_ms=st.none() | st.integers(min_value=0, max_value=60_000),
    variant=st.none() | st.sampled_from(["fmlite", "cosine"]),
)


def decode_or_reject(body: bytes) -> None:
    """Decode ``body`` the way the server does; only the documented exceptions may come out."""
    try:
        name, _, args = codec.decode_call(body)
    except codec.FieldTypeError as error:
        assert error.field and str(error)
        return
    except codec.DecodeError as error:
        assert str(error)
        return
    assert name in codec.METHODS
    if name != "predict":
        return
    try:
        validate_predict_request(args.request)
    except T.InvalidRequest as error:
        assert error.field and error.message


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_decode_or_reject(body: bytes):
    decode_or_reject(body)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_after_valid_header(tail: bytes):
    header = codec.encode_call("predict", 1, request=T.PredictRequest(user_id="u", glance_ids=[]))[:19]
    decode_or_reject(header + tail)


@FUZZ
@given(requests)
def test_valid_request_round_trip(request: T.PredictRequest):
    name, seqid, args = codec.decode_call(codec.encode_call("predict", 42, request=request))
    assert (name, seqid) == ("predict", 42)
    assert args.request == request
    too_long = any(len(value.encode("utf-8")) > MAX_ID_BYTES for value in [request.user_id, *request.glance_ids])
    if too_long:
        return
    validate_predict_request(args.request)


@FUZZ
@given(requests, st.data())
def test_damaged_valid_body_decodes_or_rejects(request: T.PredictRequest, data: st.DataObject):
    body = bytearray(codec.encode_call("predict", 7, request=request))
    damage = data.draw(st.sampled_from(["truncate", "overwrite", "insert"]))
    position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    if damage == "truncate":
        del body[position:]
    elif damage == "overwrite":
        body[position:position + 4] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        body[position:position] = data.draw(st.binary(min_size=1, max_size=16))
    decode_or_reject(bytes(body))
