"""The Open Inference Protocol (KServe v2) of the real ``bentoml serve``, spoken by the
real Triton client (``tritonclient[http]``): health, metadata, and inference with raw
branches or with features, as JSON or binary tensors, scoring as ``/predict`` does."""

from __future__ import annotations

import awkward as ak
import httpx
import numpy as np
import pytest
import uproot
from serving_fixtures import Service

from mlaas4hep.model.bundle import ModelBundle

tritonclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def triton(service: Service):
    client = tritonclient.InferenceServerClient(url=service.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def events(service: Service, trained) -> tuple[ak.Array, np.ndarray]:
    """300 events and the scores ``/predict`` gives them."""
    bundle = ModelBundle.load(service.registry.path(service.tag))
    with uproot.open(trained.files[1]) as f:
        events = f["Events"].arrays(bundle.vectorizer.branches, entry_stop=300)
    with httpx.Client(base_url=service.url, trust_env=False, timeout=60) as client:
        answer = client.post("/predict", json={"events": events.to_list()})
    assert answer.status_code == 200, answer.text
    return events, np.asarray(answer.json()["scores"], dtype=np.float32)


def raw_inputs(metadata: dict, events: ak.Array, binary: bool) -> list:
    """The model's inputs as its metadata lists them, built from the events."""
    tensors = {}
    for spec in metadata["inputs"]:
        counts_of = [i["name"] for i in metadata["inputs"]
                     if i.get("parameters", {}).get("counts") == spec["name"]]  # fmt: skip
        if spec["name"] in events.fields and events[spec["name"]].ndim == 1:
            tensors[spec["name"]] = ak.to_numpy(events[spec["name"]])
        elif counts_of:  # a counts tensor that is no branch of the model
            tensors[spec["name"]] = ak.to_numpy(ak.num(events[counts_of[0]])).astype(np.int64)
        else:
            tensors[spec["name"]] = ak.to_numpy(ak.flatten(events[spec["name"]]))
    inputs = []
    for name, array in tensors.items():
        tensor = tritonclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_and_metadata(triton, service: Service) -> None:
    name, version = service.tag.split(":")
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(name) and triton.is_model_ready(name, version)
    assert not triton.is_model_ready("no-such-model")
    metadata = triton.get_model_metadata(name)
    assert metadata["name"] == name and metadata["versions"] == [version]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1]}]
    listed = {i["name"] for i in metadata["inputs"]}
    assert set(ModelBundle.load(service.registry.path(service.tag)).vectorizer.branches) <= listed
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_raw_branches_score_as_predict_does(triton, service: Service, events, binary) -> None:
    name, version = service.tag.split(":")
    data, expected = events
    metadata = triton.get_model_metadata(name)
    output = tritonclient.InferRequestedOutput("scores", binary_data=binary)
    result = triton.infer(name, raw_inputs(metadata, data, binary), outputs=[output],
                          model_version=version)  # fmt: skip
    np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=0, atol=1e-6)
    assert result.get_response()["model_version"] == version


def test_features_score_as_predict_does(triton, service: Service, events) -> None:
    name = service.tag.split(":")[0]
    data, expected = events
    out = ModelBundle.load(service.registry.path(service.tag)).vectorizer.transform(data)
    inputs = []
    for tensor_name, array, kind in [("features", out.X, "FP32"), ("mask", out.mask, "BOOL")]:
        tensor = tritonclient.InferInput(tensor_name, list(array.shape), kind)
        tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
        inputs.append(tensor)
    result = triton.infer(name, inputs)
    np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=0, atol=1e-6)


def test_refusals_reach_the_client_as_4xx_naming_the_input(triton, service, events) -> None:
    name = service.tag.split(":")[0]
    data, _ = events
    metadata = triton.get_model_metadata(name)
    inputs = raw_inputs(metadata, data, binary=True)
    with pytest.raises(InferenceServerException, match="not served here") as caught:
        triton.infer("other-model", inputs)
    assert caught.value.status() == "404"
    short = [i for i in inputs if i.name() != metadata["inputs"][-1]["name"]]
    with pytest.raises(InferenceServerException, match="missing input") as caught:
        triton.infer(name, short)
    assert caught.value.status() == "400"
    extra = tritonclient.InferInput("Muon_pt", [2], "FP32")
    extra.set_data_from_numpy(np.ones(2, np.float32))
    with pytest.raises(InferenceServerException, match="takes no input 'Muon_pt'"):
        triton.infer(name, [*inputs, extra])
