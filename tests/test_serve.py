"""`imgcls serve` as a real uvicorn server on a loopback port, talked to over HTTP.

Every bad input gets its JSON error and status, and the next good request is still answered;
every limit is crossed once; 16 concurrent clients get the same probabilities as
`imgcls predict`.
"""

from __future__ import annotations

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
