"""`imgcls serve` as a real uvicorn server on a loopback port, talked to over HTTP.

Every bad input gets its JSON error and status, and the next good request is still answered;
every limit is crossed once; 16 concurrent clients get the same probabilities as
`imgcls predict`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip(
    "fastapi", reason="the serve extra is not installed: pip install 'imgcls[serve]'"
)

from tests.conftest import Server  # noqa: E402 - after the skips above


def png(size=(20, 20), seed=0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(trained_run):
    s = Server(trained_run[0])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict(trained_run):
    """A server with every limit small, and a token."""
    s = Server(trained_run[0], "--token", "s3cret", "--max-body-bytes", "60000", "--max-files",
               "2", "--max-pixels", "5000")  # fmt: skip
    yield s
    s.stop()


@pytest.fixture(scope="module")
def images(trained_run) -> list[Path]:
    data = trained_run[1]
    return sorted(data.glob("*/*.png"))[::7][:12]


def expected(run: Path, paths: list[Path]) -> dict[str, list]:
    """``imgcls predict --format json`` for ``paths``, by file name."""
    out = subprocess.run(
        [sys.executable, "-m", "imgcls", "predict", str(run), *map(str, paths), "--format",
         "json", "--top-k", "3"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {Path(r["path"]).name: r["top_k"] for r in json.loads(out)}


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose(
        [g["probability"] for g in got], [w["probability"] for w in want], atol=1e-6
    )


def good_request(url: str, **kw) -> None:
    r = httpx.post(f"{url}/v1/predict", files={"file": ("ok.png", png())}, **kw)
    assert r.status_code == 200 and r.json()[0]["label"], r.text


def test_page_and_both_predict_apis_answer_as_imgcls_predict(server, trained_run, images):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "https://" not in page.text and "http://" not in page.text  # works offline
    info = httpx.get(server.url + "/v1/info").json()
    assert info["classes"] == ["cats", "dogs", "fish"] and info["image_size"] == [16, 16]
    want = expected(trained_run[0], images)
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images]
    got = httpx.post(server.url + "/v1/predict?top_k=3", files=files).json()
    assert [g["path"] for g in got] == [p.name for p in images]
    for g in got:
        assert_same(g["top_k"], want[g["path"]])
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in images[:3]]}
    got = httpx.post(server.url + "/v1/predict?top_k=3", json=body).json()
    for g, p in zip(got, images[:3], strict=True):
        assert_same(g["top_k"], want[p.name])


def test_open_inference_protocol_v2(server, trained_run, images):
    name = trained_run[0].name
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    meta = httpx.get(f"{server.url}/v2/models/{name}").json()
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["shape"] == [-1, 3]
    data = [base64.b64encode(p.read_bytes()).decode() for p in images[:2]]
    tensor = {"name": "image", "shape": [2], "datatype": "BYTES", "data": data}
    r = httpx.post(f"{server.url}/v2/models/{name}/infer", json={"id": "7", "inputs": [tensor]})
    out = r.json()
    assert r.status_code == 200 and out["id"] == "7" and out["outputs"][0]["shape"] == [2, 3]
    probs = np.array(out["outputs"][0]["data"]).reshape(2, 3)
    want = expected(trained_run[0], images[:2])
    for row, p in zip(probs, images[:2], strict=True):
        top = {w["label"]: w["probability"] for w in want[p.name]}
        np.testing.assert_allclose(
            sorted(row, reverse=True), sorted(top.values(), reverse=True), atol=1e-6
        )
    # The binary tensor extension that Triton's HTTP client sends: JSON header, then each
    # element as a 4-byte little-endian length and its bytes.
    blob = images[0].read_bytes()
    binary = len(blob).to_bytes(4, "little") + blob
    header = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(binary)}}]}  # fmt: skip
    head = json.dumps(header).encode()
    r = httpx.post(
        f"{server.url}/v2/models/{name}/infer",
        content=head + binary,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200 and r.json()["outputs"][1]["data"] == [
        want[images[0].name][0]["label"]
    ]


def test_tritons_own_client_speaks_to_the_server(server, trained_run, images):
    """Open Inference Protocol conformance as Triton's HTTP client sees it: server and model
    metadata, health, versions, config, repository index, and infer with the input and the
    outputs binary or JSON, giving the v1 API's probabilities."""
    triton = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    name = trained_run[0].name
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    meta = client.get_server_metadata()
    assert meta["name"] == "imgcls" and "binary_tensor_data" in meta["extensions"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert client.get_model_metadata(name) == client.get_model_metadata(name, "1")
    assert client.get_model_metadata(name)["versions"] == ["1"]
    config = client.get_model_config(name, "1")
    assert config["name"] == name and [i["name"] for i in config["input"]] == ["image"]
    assert client.get_model_repository_index() == [{"name": name, "version": "1", "state": "READY"}]
    blobs = [p.read_bytes() for p in images[:2]]
    files = [("file", (p.name, b)) for p, b in zip(images[:2], blobs, strict=True)]
    v1 = httpx.post(server.url + "/v1/predict?top_k=3", files=files).json()
    classes = client.get_model_metadata(name)["parameters"]["classes"]
    want = [[{t["label"]: t["probability"] for t in r["top_k"]}[c] for c in classes] for r in v1]
    sent_binary = triton.InferInput("image", [2], "BYTES")
    sent_binary.set_data_from_numpy(np.array(blobs, dtype=np.object_), binary_data=True)
    sent_json = triton.InferInput("image", [2], "BYTES")  # JSON strings: base64, as in v1
    encoded = [base64.b64encode(b) for b in blobs]
    sent_json.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    for sent, binary_out, version in [(sent_binary, True, ""), (sent_json, False, "1"),
                                      (sent_binary, False, "1"), (sent_json, True, "")]:  # fmt: skip
        outputs = [triton.InferRequestedOutput(n, binary_data=binary_out)
                   for n in ("probabilities", "label")]  # fmt: skip
        result = client.infer(name, [sent], model_version=version, outputs=outputs,
                              request_id="req-9")  # fmt: skip
        response = result.get_response()
        assert response["id"] == "req-9" and response["model_version"] == "1"
        assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary_out
        probs = result.as_numpy("probabilities")
        assert probs.shape == (2, 3) and np.allclose(probs, want, atol=1e-6)
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        assert labels == [r["label"] for r in v1]
    result = client.infer(name, [sent_binary])  # no outputs named: all, binary (the default)
    assert np.allclose(result.as_numpy("probabilities"), want, atol=1e-6)
    for call_ in (lambda: client.infer(name, [sent_json], model_version="2"),
                  lambda: client.get_model_metadata(name, "2"),
                  lambda: client.get_model_config(name, "0")):  # fmt: skip
        with pytest.raises(InferenceServerException, match="unknown version"):
            call_()
    assert not client.is_model_ready(name, "2")
    client.close()


def test_v2_binary_outputs_over_plain_http(server, trained_run):
    """The binary output extension from the wire: the JSON header, then the raw bytes."""
    url = f"{server.url}/v2/models/{trained_run[0].name}/versions/1/infer"
    body = {"id": "x1", "inputs": [{**V2_OK, "data": [base64.b64encode(png()).decode()]}],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "label", "parameters": {"binary_data": False}},
                        {"name": "probabilities"}]}  # fmt: skip
    r = httpx.post(url, json=body)
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert r.status_code == 200 and head["id"] == "x1"
    assert [o["name"] for o in head["outputs"]] == ["label", "probabilities"]
    assert head["outputs"][1]["parameters"]["binary_data_size"] == 12 == len(r.content) - n
    probs = np.frombuffer(r.content[n:], "<f4")
    assert abs(probs.sum() - 1) < 1e-5 and head["outputs"][0]["data"][0]
    del body["parameters"], body["outputs"]  # JSON by default
    assert "inference-header-content-length" not in httpx.post(url, json=body).headers


@pytest.mark.parametrize(
    "request_kw, status",
    [
        ({"files": {"file": ("notes.txt", b"not an image at all")}}, 415),
        ({"files": {"file": ("cut.png", png()[:60])}}, 400),  # a truncated file
        ({"json": {"images": ["%%% not base64"]}}, 400),
        ({"json": {"images": "one"}}, 422),
        ({"json": {}}, 422),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"raw", "headers": {"content-type": "image/png"}}, 415),
        ({"params": {"top_k": "0"}, "files": {"file": ("a.png", png())}}, 422),
    ],
)
def test_bad_input_gets_a_json_error_and_the_server_keeps_answering(server, request_kw, status):
    r = httpx.post(server.url + "/v1/predict", **request_kw)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    good_request(server.url)


def test_v2_bad_input(server, trained_run):
    name = trained_run[0].name
    r = httpx.post(f"{server.url}/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert httpx.post(f"{server.url}/v2/models/{name}/infer", json=bad).status_code == 422
    good_request(server.url)


V2_OK = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}
DEEP = b"[" * 100_000 + b"]" * 100_000  # past any JSON parser's recursion limit
AS_JSON = {"content-type": "application/json"}


def v2_body(**tensor) -> dict:
    return {"json": {"inputs": [{**V2_OK, **tensor}]}}


@pytest.mark.parametrize(
    "method, path, request_kw, status, says",
    [
        ("GET", "/nope", {}, 404, "Not Found"),
        ("GET", "/v1/predict", {}, 405, "Method Not Allowed"),
        ("POST", "/v1/predict?top_k=abc", {"files": {"file": ("a.png", b"x")}}, 422,
         "`top_k` must be a valid integer"),
        ("POST", "/v1/predict", {"content": DEEP, "headers": AS_JSON}, 400, "nested too deeply"),
        ("POST", "infer", {"content": DEEP, "headers": AS_JSON}, 400, "nested too deeply"),
        ("POST", "infer", {"json": {"inputs": [V2_OK], "parameters": [1]}}, 422, "`parameters`"),
        ("POST", "infer", {"json": {"inputs": [V2_OK], "outputs": 5}}, 422, "`outputs`"),
        ("POST", "infer", {"json": {"inputs": [V2_OK], "id": {}}}, 422, "`id`"),
        ("POST", "infer", {"json": {"inputs": V2_OK}}, 422, "`inputs` must be a list"),
        ("POST", "infer", v2_body(parameters=[1]), 422, "`inputs[0].parameters`"),
        ("POST", "infer", v2_body(parameters={"binary_data_size": "x"}), 422, "binary_data_size"),
        ("POST", "infer", v2_body(parameters={"binary_data_size": 1.5}), 422, "binary_data_size"),
        ("POST", "infer", v2_body(shape="x"), 422, "`inputs[0].shape`"),
        ("POST", "infer", v2_body(shape=[1.5]), 422, "`inputs[0].shape`"),
        ("POST", "infer", v2_body(shape=[3]), 422, "`inputs[0].shape`"),  # 1 image, not 3
        ("POST", "infer", v2_body(data="aGk="), 422, "`inputs[0].data`"),
        ("POST", "infer", v2_body(name="pixels"), 422, "`inputs[0].name` must be 'image'"),
        ("POST", "infer", v2_body(datatype="UINT8"), 422, "`inputs[0].datatype`"),
        ("POST", "infer", v2_body(shape=[1, 1]), 422, "`inputs[0].shape` must be [1]"),
        ("POST", "infer", {"json": {"inputs": [V2_OK], "outputs": [{"name": "logits"}]}}, 422,
         "`outputs[0].name` must be one of"),
        ("POST", "infer", {"json": {"inputs": [V2_OK], "outputs": [
            {"name": "label", "parameters": {"binary_data": 1}}]}}, 422,
         "`outputs[0].parameters.binary_data`"),
        ("POST", "infer", {"json": {"inputs": [V2_OK], "parameters": {
            "binary_data_output": "yes"}}}, 422, "`parameters.binary_data_output`"),
        ("POST", "/v2/models/{name}/versions/2/infer", v2_body(), 404, "unknown version"),
        ("GET", "/v2/models/{name}/versions/2/ready", {}, 404, "unknown version"),
        ("POST", "/v2/repository/index", {"json": {"ready": 1}}, 422, "`ready`"),
        ("POST", "/v2/repository/index", {"json": [1]}, 422, "a JSON object"),
        ("POST", "infer", {"content": b"{}", "headers": {"inference-header-content-length":
                                                         b"\xb2"}}, 400, "Content-Length"),
    ],
)  # fmt: skip
def test_hostile_requests_get_a_json_4xx_and_the_server_keeps_answering(
    server, trained_run, method, path, request_kw, status, says
):
    path = "/v2/models/{name}/infer" if path == "infer" else path
    r = httpx.request(method, server.url + path.format(name=trained_run[0].name), **request_kw)
    assert r.status_code == status and says in r.json()["error"], r.text
    if "`" in says and status == 422:  # the field and what came, in the Keras wording
        assert "Received: " in r.json()["error"], r.text
    good_request(server.url)


def chunks(body: bytes):
    """``body`` as a generator: httpx sends it chunked, without Content-Length."""
    for i in range(0, len(body), 16_384):
        yield body[i : i + 16_384]


def multipart(files) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files)
    return request.read(), request.headers["content-type"]


@pytest.mark.parametrize("form", ["json", "infer", "multipart"])
def test_a_chunked_body_over_the_cap_gets_413(strict, trained_run, form):
    auth = {"Authorization": "Bearer s3cret"}
    path = f"/v2/models/{trained_run[0].name}/infer" if form == "infer" else "/v1/predict"
    if form == "multipart":
        body, kind = multipart({"file": ("big.png", b"x" * 100_000)})  # over --max-body-bytes
    else:
        body, kind = json.dumps({"images": ["A" * 100_000]}).encode(), "application/json"
    r = httpx.post(strict.url + path, content=chunks(body), headers={"content-type": kind, **auth})
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    assert r.headers["connection"] == "close"  # the rest of the body is never read
    good_request(strict.url, headers=auth)


def test_too_many_images_in_json_gets_413_like_multipart(strict, trained_run):
    auth = {"Authorization": "Bearer s3cret"}
    three = [base64.b64encode(png(seed=i)).decode() for i in range(3)]  # over --max-files 2
    r = httpx.post(strict.url + "/v1/predict", json={"images": three}, headers=auth)
    assert r.status_code == 413 and "the limit is 2" in r.json()["error"], r.text
    tensor = {"name": "image", "shape": [3], "datatype": "BYTES", "data": three}
    infer = f"{strict.url}/v2/models/{trained_run[0].name}/infer"
    r = httpx.post(infer, json={"inputs": [tensor]}, headers=auth)
    assert r.status_code == 413 and "the limit is 2" in r.json()["error"], r.text
    good_request(strict.url, headers=auth)


def test_metrics_need_the_token(strict):
    r = httpx.get(strict.url + "/metrics")
    assert r.status_code == 401 and "token" in r.json()["error"]
    latin = {"Authorization": b"Bearer s3cr\xe9t"}  # not ASCII: still a plain 401
    assert httpx.get(strict.url + "/metrics", headers=latin).status_code == 401
    r = httpx.get(strict.url + "/metrics", headers={"Authorization": "Bearer s3cret"})
    assert (
        r.status_code == 200 and 'imgcls_requests_total{endpoint="/metrics",status="401"}' in r.text
    )


def guarded(config, route):
    """A bare FastAPI app with ``route`` at POST /v1/predict and GET /metrics behind the
    server's guard and error handlers (no model, no TensorFlow), and its metrics."""
    from types import SimpleNamespace

    from fastapi import FastAPI

    from imgcls.serve.errors import add_error_handlers
    from imgcls.serve.guard import Guard
    from imgcls.serve.metrics import Metrics

    app = FastAPI()
    app.post("/v1/predict")(route)
    app.get("/metrics")(route)
    add_error_handlers(app, config)
    service = SimpleNamespace(config=config, metrics=Metrics())
    app.add_middleware(Guard, service=service)
    return app, service.metrics


def call(app, method: str, path: str) -> httpx.Response:
    """One request to ``app`` in this process."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path)

    return asyncio.run(go())


def test_an_unexpected_error_is_a_logged_counted_json_500(caplog):
    from imgcls.serve import ServeConfig

    async def broken():
        raise KeyError("a bug")

    app, metrics = guarded(ServeConfig(), broken)
    with caplog.at_level("ERROR", logger="imgcls.serve"):
        r = call(app, "POST", "/v1/predict")
    assert r.status_code == 500 and r.json()["error"] == "internal error"
    assert r.headers["connection"] == "close"
    request_id = r.json()["request_id"]
    [record] = [x for x in caplog.records if request_id in x.getMessage()]
    assert record.exc_info[0] is KeyError  # the traceback is in the log, not the answer
    text = metrics.render().decode()
    assert 'imgcls_requests_total{endpoint="/v1/predict",status="500"} 1.0' in text
    assert 'imgcls_errors_total{endpoint="/v1/predict"} 1.0' in text


def test_open_metrics_serves_metrics_without_the_token():
    from imgcls.serve import ServeConfig

    async def ok():
        return {"ok": True}

    for open_metrics, status in ((False, 401), (True, 200)):
        app, _ = guarded(ServeConfig(token="t", open_metrics=open_metrics), ok)
        assert call(app, "GET", "/metrics").status_code == status
        assert call(app, "POST", "/v1/predict").status_code == 401  # the API stays closed


def test_a_huge_image_is_refused_from_its_header(server):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (10_000, 10_000)).save(buf, "PNG")  # 100 megapixels, 300 KB of PNG
    r = httpx.post(server.url + "/v1/predict", files={"file": ("big.png", buf.getvalue())})
    assert r.status_code == 413 and "too_large" in r.json()["error"]
    good_request(server.url)


def test_every_limit_is_enforced_and_the_server_keeps_answering(strict):
    auth = {"Authorization": "Bearer s3cret"}
    one = {"file": ("a.png", png())}
    assert httpx.post(strict.url + "/v1/predict", files=one).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(strict.url + "/v1/predict", files=one, headers=wrong).status_code == 401
    assert httpx.get(strict.url + "/v1/info").status_code == 401
    assert httpx.get(strict.url + "/").status_code == 200  # the page asks for the token itself
    good_request(strict.url, headers=auth)
    big = {"file": ("big.bin", b"x" * 100_000)}  # over --max-body-bytes 60000
    r = httpx.post(strict.url + "/v1/predict", files=big, headers=auth)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    good_request(strict.url, headers=auth)
    three = [("file", (f"{i}.png", png(seed=i))) for i in range(3)]  # over --max-files 2
    r = httpx.post(strict.url + "/v1/predict", files=three, headers=auth)
    assert r.status_code == 413 and "the limit is 2" in r.json()["error"], r.text
    good_request(strict.url, headers=auth)
    wide = {"file": ("wide.png", png(size=(100, 60)))}  # 6,000 pixels, over --max-pixels 5000
    r = httpx.post(strict.url + "/v1/predict", files=wide, headers=auth)
    assert r.status_code == 413 and "5,000" in r.json()["error"]
    good_request(strict.url, headers=auth)


def test_a_request_over_the_time_limit_gets_503(trained_run):
    s = Server(trained_run[0], "--timeout-s", "0.0001")
    try:
        r = httpx.post(s.url + "/v1/predict", files={"file": ("a.png", png())})
        assert r.status_code == 503 and "no answer within" in r.json()["error"]
        assert httpx.get(s.url + "/v2/health/ready").status_code == 200
    finally:
        s.stop()


def test_concurrent_clients_get_the_same_answers_in_micro_batches(server, trained_run, images):
    want = expected(trained_run[0], images)

    def client(i: int) -> tuple[str, list]:
        p = images[i % len(images)]
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/v1/predict?top_k=3", files={"file": (p.name, p.read_bytes())})
            assert r.status_code == 200, r.text
            return p.name, r.json()[0]["top_k"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(200)))
    assert len(answers) == 200
    for name, top_k in answers:
        assert_same(top_k, want[name])
    text = httpx.get(server.url + "/metrics").text
    batches = [line for line in text.splitlines() if line.startswith("imgcls_batch_images_count")]
    sums = [line for line in text.splitlines() if line.startswith("imgcls_batch_images_sum")]
    n_batches, n_images = float(batches[0].split()[-1]), float(sums[0].split()[-1])
    assert n_images > n_batches  # some requests shared a forward pass
    assert 'imgcls_requests_total{endpoint="/v1/predict",status="200"}' in text
