"""The Open Inference Protocol codec: v2 tensors (JSON and binary) → the model's events."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_events import RECORDS, VECTORIZER, reference

from mlaas4hep.serve.config import ServeConfig
from mlaas4hep.serve.http_api import GuardMiddleware
from mlaas4hep.serve.open_inference import (
    InferRequest,
    check_served,
    counts_name,
    encode_response,
    events_of,
    features_of,
    model_metadata,
    parse_request,
)
from mlaas4hep.serve.payloads import RequestError, decimal_length

LIMIT = 10**6


def raw_tensors() -> dict[str, np.ndarray]:
    return {
        "nJet": np.array([r["nJet"] for r in RECORDS], dtype=np.int32),
        "Jet_pt": np.array([v for r in RECORDS for v in r["Jet_pt"]], dtype=np.float32),
        "HT": np.array([r["HT"] for r in RECORDS], dtype=np.float32),
    }


def json_body(tensors: dict[str, np.ndarray], **extra) -> bytes:
    inputs = [
        {"name": k, "datatype": DT[v.dtype.str[1:]], "shape": list(v.shape), "data": v.tolist()}
        for k, v in tensors.items()
    ]
    return json.dumps({"inputs": inputs, **extra}).encode()


def binary_body(tensors: dict[str, np.ndarray], **extra) -> tuple[bytes, str]:
    inputs, data = [], b""
    for k, v in tensors.items():
        raw = np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes()
        inputs.append({"name": k, "datatype": DT[v.dtype.str[1:]], "shape": list(v.shape),
                       "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        data += raw
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + data, str(len(header))


DT = {"i4": "INT32", "i8": "INT64", "f4": "FP32", "f8": "FP64", "b1": "BOOL", "u1": "UINT8"}


def vectorized(request: InferRequest) -> tuple[np.ndarray, np.ndarray]:
    out = VECTORIZER.transform(events_of(request.tensors, VECTORIZER, LIMIT).columns)
    return out.X, out.mask


def test_raw_branches_as_json_or_binary_are_the_events_of_the_records() -> None:
    X, mask = reference()
    for body, length in [(json_body(raw_tensors()), None), binary_body(raw_tensors())]:
        got_X, got_mask = vectorized(parse_request(body, length, LIMIT))
        np.testing.assert_array_equal(got_X, X)
        np.testing.assert_array_equal(got_mask, mask)


def test_the_features_form_is_taken_as_it_is() -> None:
    X, mask = reference()
    body, length = binary_body({"features": X, "mask": mask})
    got_X, got_mask = features_of(parse_request(body, length, LIMIT).tensors, X.shape[1], LIMIT)
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_mask, mask)
    alone = parse_request(json_body({"features": X}), None, LIMIT).tensors
    assert features_of(alone, X.shape[1], LIMIT)[1].all()  # no mask: every feature counts


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_binary_and_json_tensors_give_the_same_events(counts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(counts)
    tensors = {
        "nJet": np.array(counts, dtype=np.int64),
        "Jet_pt": rng.uniform(0, 300, sum(counts)).astype(np.float32),
        "HT": rng.uniform(0, 900, n).astype(np.float64),
    }
    a = vectorized(parse_request(json_body(tensors), None, LIMIT))
    b = vectorized(parse_request(*binary_body(tensors), LIMIT))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1][:, 1:4].sum(axis=1).tolist() == np.minimum(counts, 3).tolist()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(0, 400).map(str), st.text()))
def test_any_body_is_scored_or_refused_with_a_4xx(body: bytes, length: str | None) -> None:
    try:
        request = parse_request(body, length, LIMIT)
        events_of(request.tensors, VECTORIZER, LIMIT)
    except RequestError as err:
        assert 400 <= err.status < 500 and err.field


def refused(body: bytes, length: str | None = None, features: bool = False) -> RequestError:
    with pytest.raises(RequestError) as caught:
        request = parse_request(body, length, LIMIT)
        if features:
            features_of(request.tensors, 8, LIMIT)
        else:
            events_of(request.tensors, VECTORIZER, LIMIT)
    return caught.value


def with_(**changes: np.ndarray) -> dict[str, np.ndarray]:
    tensors = raw_tensors()
    tensors.update(changes)
    return {k: v for k, v in tensors.items() if v is not None}


@pytest.mark.parametrize(
    ("tensors", "field", "problem"),
    [
        (with_(nJet=np.array([2, 0, 3], np.int32)), "inputs.Jet_pt", "counts 5"),
        (with_(nJet=np.array([2, -1, 5], np.int32)), "inputs.nJet", "non-negative"),
        (with_(nJet=np.array([2.0, 0.0, 4.0], np.float32)), "inputs.nJet", "integers"),
        (with_(HT=np.ones(4, np.float32)), "inputs.HT", "has 4 events"),
        (with_(HT=None), "inputs.HT", "missing input 'HT'"),
        (with_(Jet_eta=np.ones(6, np.float32)), "inputs.Jet_eta", "takes no input"),
        (with_(HT=np.ones((3, 2), np.float32)), "inputs.HT", "expected shape [n]"),
        (
            {
                "nJet": np.zeros(0, np.int32),
                "Jet_pt": np.zeros(0, np.float32),
                "HT": np.zeros(0, np.float32),
            },
            "inputs.nJet",
            "empty batch",
        ),
    ],
)
def test_inconsistent_tensors_are_refused_by_name(tensors, field: str, problem: str) -> None:
    for body, length in [(json_body(tensors), None), binary_body(tensors)]:
        err = refused(body, length)
        assert (err.status, err.field) == (400, field) and problem in err.problem, err


def test_an_integer_branch_takes_whole_numbers_only() -> None:
    body = json.loads(json_body(raw_tensors()))
    body["inputs"][0]["datatype"] = "FP64"
    body["inputs"][0]["data"] = [2, 0.5, 4]
    err = refused(json.dumps(body).encode())
    assert err.field == "inputs.nJet[1]" and "expected an integer" in err.problem


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d["inputs"][0].update(datatype="BYTES"), "inputs.nJet.datatype", "numeric"),
        (lambda d: d["inputs"][0].update(shape=[-3]), "inputs.nJet.shape", "non-negative"),
        (lambda d: d["inputs"][0].update(shape=[3, 1, 1]), "inputs.nJet.shape", "one or two"),
        (lambda d: d["inputs"][0].update(data=["2", "0", "4"]), "inputs.nJet", "list of numbers"),
        (lambda d: d["inputs"][0].update(data=[2, 0]), "inputs.nJet", "holds 2 values"),
        (lambda d: d["inputs"][0].pop("data"), "inputs.nJet", "needs 'data'"),
        (lambda d: d["inputs"][0].pop("name"), "inputs[0].name", "needs a name"),
        (lambda d: d["inputs"].append(d["inputs"][0]), "inputs[3].name", "twice"),
        (lambda d: d.update(inputs=[]), "inputs", "non-empty"),
        (lambda d: d.update(outputs=[{"name": "logits"}]), "outputs[0].name", "one output"),
        (lambda d: d["inputs"][0].update(shape=[10**7]), "inputs.nJet", "exceed the limit"),
    ],
)
def test_malformed_tensors_are_refused_by_name(mutate, field: str, problem: str) -> None:
    body = json.loads(json_body(raw_tensors()))
    mutate(body)
    err = refused(json.dumps(body).encode())
    assert err.field == field and problem in err.problem, err
    assert err.status == (413 if "limit" in problem else 400)


@given(st.integers(min_value=0, max_value=10**18 - 1), st.text(max_size=24))
def test_a_length_header_is_its_ascii_digits_or_nothing(n: int, text: str) -> None:
    """The one reading of Content-Length and Inference-Header-Content-Length: a decimal
    number of bytes, spaces around allowed; anything else (a sign, '²', '٣', more digits
    than any body has) is None and never an exception."""
    assert decimal_length(str(n)) == decimal_length(f" {n} ") == decimal_length(b"%d" % n) == n
    found = decimal_length(text)
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit() and len(stripped) <= 18:
        assert found == int(stripped)
    else:
        assert found is None
    assert decimal_length("²") is None and decimal_length("+1") is None
    assert decimal_length("9" * 5000) is None  # int() would raise: over 4300 digits


def test_binary_lengths_that_do_not_add_up_are_refused() -> None:
    body, length = binary_body(raw_tensors())
    assert "ends before" in refused(body[:-1], length).problem
    assert "inputs take" in refused(body + b"\0", length).problem
    assert refused(body, str(len(body) + 1)).field == "Inference-Header-Content-Length"
    assert refused(body, "-5").field == "Inference-Header-Content-Length"
    header = json.loads(body[: int(length)])
    header["inputs"][0]["parameters"]["binary_data_size"] = 11
    text = json.dumps(header).encode()
    assert "takes 12" in refused(text + body[int(length) :], str(len(text))).problem
    header["inputs"][0]["parameters"]["binary_data_size"] = 12
    header["inputs"][0]["datatype"] = "BOOL"
    header["inputs"][0]["shape"] = [12]
    text = json.dumps(header).encode()
    assert "0 and 1" in refused(text + body[int(length) :], str(len(text))).problem


def test_features_of_the_wrong_width_or_not_finite_are_refused() -> None:
    X = np.zeros((2, 8), np.float32)
    assert "[n, 8]" in refused(json_body({"features": X[:, :5]}), features=True).problem
    X[1, 3] = np.inf
    err = refused(json_body({"features": X}), features=True)
    assert err.field == "inputs.features" and "event 1, feature 3" in err.problem
    err = refused(
        json_body({"features": np.zeros((2, 8), np.float32), "HT": X[:, 0]}), features=True
    )
    assert err.field == "inputs.HT"


def test_the_answer_is_json_or_binary_as_asked() -> None:
    scores = np.array([0.25, 0.5, 0.75], np.float32)
    body, headers, kind = encode_response(scores, "tth:abc", InferRequest("7", {}, False))
    document = json.loads(body)
    assert kind == "application/json" and document["id"] == "7"
    assert document["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [3],
                                    "data": [0.25, 0.5, 0.75]}]  # fmt: skip
    body, headers, kind = encode_response(scores, "tth:abc", InferRequest(None, {}, True))
    split_at = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:split_at])
    assert header["model_name"] == "tth" and header["model_version"] == "abc"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 12}
    np.testing.assert_array_equal(np.frombuffer(body[split_at:], "<f4"), scores)
    asked = parse_request(json_body(raw_tensors(), parameters={"binary_data_output": True}),
                          None, LIMIT)  # fmt: skip
    assert asked.binary_output
    binary_off = [{"name": "scores", "parameters": {"binary_data": False}}]
    per_output = json_body(raw_tensors(), outputs=binary_off)
    assert not parse_request(per_output, None, LIMIT).binary_output


def test_the_metadata_names_every_tensor_and_each_jagged_branchs_counts() -> None:
    document = model_metadata("tth:abc", VECTORIZER)
    assert (document["name"], document["versions"]) == ("tth", ["abc"])
    inputs = {i["name"]: i for i in document["inputs"]}
    assert list(inputs) == ["nJet", "Jet_pt", "HT"]  # nJet once: a branch and the counts
    assert inputs["Jet_pt"]["parameters"]["counts"] == counts_name("Jet_pt") == "nJet"
    assert (inputs["nJet"]["datatype"], inputs["HT"]["datatype"]) == ("INT32", "FP32")
    assert document["parameters"]["features_form"][0]["shape"] == [-1, VECTORIZER.n_features]
    assert document["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1]}]


def test_another_model_or_version_is_a_404() -> None:
    check_served("tth:abc", "tth", None)
    check_served("tth:abc", "tth", "abc")
    for name, version in [("other", None), ("tth", "old")]:
        with pytest.raises(RequestError) as caught:
            check_served("tth:abc", name, version)
        assert caught.value.status == 404


def test_health_is_open_and_inference_guarded_like_predict() -> None:
    config = ServeConfig.from_dict({"token": "t" * 32, "predict_requires_token": True})
    guard = GuardMiddleware(None, config)
    assert guard.policy("GET", "/v2/health/live")[1] is False
    assert guard.policy("GET", "/v2/health/ready")[1] is False
    limit, needs_token = guard.policy("POST", "/v2/models/tth/versions/abc/infer")
    assert needs_token and limit == config.limits.bulk_bytes
    assert guard.policy("GET", "/v2/models/tth")[1] is True
