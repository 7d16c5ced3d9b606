"""The device server (``python -m edge_runtime serve``) against real server processes on 127.0.0.1.

The artifacts are tiny ONNX models written by hand (a softmax over a linear map of the 8x8
digit), so each test knows the right answer and a server starts in about a second: the API
shapes, every error status, the 503 under overload, 10,000 bad requests, the golden check that
refuses a wrong model, and an update and rollback under steady load without a failed request.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.devices.serving.host import HostServer

SPEC = {"kind": "image", "height": 8, "width": 8, "channels": 1, "color_mode": "L", "raw_range": [0, 16],
        "scale": 0.0625, "mean": [0.3], "std": [0.42]}
LABELS = [str(i) for i in range(10)]


# ---------------------------------------------------------------- hand-made artifacts


def _logits(w: np.ndarray, b: np.ndarray, raw: np.ndarray) -> np.ndarray:
    flat = raw.reshape(len(raw), -1).astype(np.float32)
    x = (flat * np.float32(SPEC["scale"]) - np.float32(0.3)) / np.float32(0.42)
    return x @ w + b


def softmax_probs(w: np.ndarray, b: np.ndarray, raw: np.ndarray) -> np.ndarray:
    z = _logits(w, b, raw)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_artifact(folder: Path, w: np.ndarray, b: np.ndarray, hidden: int = 0) -> Path:
    """An ONNX artifact: Reshape -> [MatMul -> Relu ->] MatMul -> Add -> Softmax, with artifact.json.

    ``hidden`` > 0 puts a wide layer in front (identity-free, random) to make a slow model.
    """
    import hashlib

    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    inits = [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape"),
             numpy_helper.from_array(b.astype(np.float32), "b")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"])]
    src = "flat"
    if hidden:
        rng = np.random.default_rng(1)
        inits += [numpy_helper.from_array(rng.normal(size=(64, hidden)).astype(np.float32) * 0.01, "h1"),
                  numpy_helper.from_array(rng.normal(size=(hidden, hidden)).astype(np.float32) * 0.01, "h2"),
                  numpy_helper.from_array(np.zeros((hidden, 64), np.float32), "h3")]
        nodes += [helper.make_node("MatMul", ["flat", "h1"], ["a1"]),
                  helper.make_node("Relu", ["a1"], ["r1"]),
                  helper.make_node("MatMul", ["r1", "h2"], ["a2"]),
                  helper.make_node("MatMul", ["a2", "h3"], ["a3"]),
                  helper.make_node("Add", ["a3", "flat"], ["flat2"])]
        src = "flat2"
    inits.append(numpy_helper.from_array(w.astype(np.float32), "w"))
    nodes += [helper.make_node("MatMul", [src, "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["zb"]),
              helper.make_node("Softmax", ["zb"], ["y"], axis=1)]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 1])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])
    graph = helper.make_graph(nodes, "hand", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    meta = {"schema_version": 1, "format": "onnx", "quantize": "float32", "file": "model.onnx",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "inputs": [{"name": "x", "shape": [-1, 8, 8, 1], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [-1, 10], "dtype": "float32"}],
            "labels": LABELS, "preprocessing": SPEC,
            "validation": {"passed": True, "top1_agreement": 1.0}}
    (folder / "artifact.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    """Raw 8x8 digits (0-16) and a linear model fitted on them by least squares."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = d.images.astype(np.float32)[..., None]
    x = (raw.reshape(len(raw), -1) * 0.0625 - 0.3) / 0.42
    onehot = np.eye(10, dtype=np.float32)[d.target]
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], onehot * 8.0, rcond=None)
    return {"raw": raw, "y": d.target, "w": w[:-1].astype(np.float32), "b": w[-1].astype(np.float32)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, digits: dict[str, Any]) -> dict[str, Path]:
    """A bundle (v1 serving), a good update (v2: same answers, other bytes), a wrong model, a
    corrupted file, and a slow model; each variant folder holds reference.json as export writes it."""
    from edge_runtime.testset import write_testset

    root = tmp_path_factory.mktemp("serve")
    w, b, raw = digits["w"], digits["b"], digits["raw"]
    top1 = softmax_probs(w, b, raw[:300]).argmax(axis=1)
    b1 = root / "bundle"
    v1 = write_artifact(b1 / "artifacts" / "base" / "onnx-float32", w, b)
    (b1 / "edgeship-bundle.json").write_text("{}", encoding="utf-8")
    write_testset(b1 / "testset", raw[:300], digits["y"][:300], "digits")
    upd = root / "updates"
    upd.mkdir()
    write_testset(upd / "testset", raw[:300], digits["y"][:300], "digits")
    v2 = write_artifact(upd / "base" / "onnx-v2", w * 1.5, b * 1.5)  # scaled logits: the same top-1
    wrong = write_artifact(upd / "base" / "onnx-wrong", np.roll(w, 3, axis=1), b)
    bad = write_artifact(upd / "base" / "onnx-corrupt", w, b)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"garbage")
    for folder in (b1 / "artifacts" / "base", upd / "base"):
        (folder / "reference.json").write_text(json.dumps({"top1": top1.tolist()}), encoding="utf-8")
    slow = write_artifact(root / "slow" / "base" / "onnx-float32", w, b, hidden=768)
    return {"bundle": b1, "v1": v1, "v2": v2, "wrong": wrong, "corrupt": bad, "slow": slow, "root": root}


# ---------------------------------------------------------------- a tiny client


class Client:
    """http.client on one keep-alive connection; reconnects after the server closes it."""

    def __init__(self, url: str):
        hostport = url.removeprefix("http://")
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def call(self, method: str, path: str, body: bytes | str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, obj: Any = None) -> tuple[int, Any]:
        status, _, data = self.call(method, path, None if obj is None else json.dumps(obj),
                                    {"Content-Type": "application/json"})
        return status, json.loads(data)

    def close(self) -> None:
        self.conn.close()


def _png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(img[..., 0] * 16, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- API shapes


FRONTS = ["loop", "stdlib"]  # the default and the measured alternative: the same API from both


@pytest.mark.parametrize("front", FRONTS)
def test_predict_status_health_and_metrics(bundle: dict[str, Path], digits: dict[str, Any],
                                           front: str) -> None:
    with HostServer(bundle["bundle"], workers=2, extra=["--front", front]) as srv:
        assert srv.models == ["base"]
        c = Client(srv.url)
        raw = digits["raw"][:4]
        status, out = c.json("POST", "/v1/models/base:predict", {"instances": raw.tolist()})
        assert status == 200 and out["model_version"] == "1" and len(out["predictions"]) == 4
        want = softmax_probs(digits["w"], digits["b"], raw)
        for p, expected in zip(out["predictions"], want, strict=True):
            assert set(p) >= {"label", "index", "confidence", "probabilities"}
            assert p["index"] == int(expected.argmax()) and p["label"] == LABELS[p["index"]]
            np.testing.assert_allclose(p["probabilities"], expected, atol=1e-5)
        # a base64 PNG (the image path a camera would use) gives the label of the same digit
        pngs = [{"b64": _png(raw[0])}, _png(raw[1])]
        status, out = c.json("POST", "/v1/models/base:predict", {"instances": pngs})
        assert status == 200 and [p["index"] for p in out["predictions"]] == list(want[:2].argmax(axis=1))
        status, info = c.json("GET", "/v1/models/base")
        assert status == 200 and info["model_version_status"][0]["state"] == "AVAILABLE"
        meta = json.loads((bundle["v1"] / "artifact.json").read_text())
        assert info["model_version_status"][0]["sha256"] == meta["sha256"]
        assert c.json("GET", "/healthz") == (200, {"status": "ok"})
        status, ready = c.json("GET", "/readyz")
        assert status == 200 and ready["layout"]["workers"] == 2 and ready["device_id"].startswith("host")
        assert ready["layout"]["front"] == front  # batching on by default, and only where it can be
        assert ready["layout"]["max_batch"] == (8 if front == "loop" else 1)
        status, headers, text = c.call("GET", "/metrics")
        body = text.decode()
        assert status == 200 and headers["content-type"].startswith("text/plain")
        for series in ('edge_requests_total{route="predict",code="200"} 2',
                       'edge_request_duration_seconds_count{model="base",part="invoke"} 2',
                       'edge_request_duration_seconds_bucket{model="base",part="queue",le="+Inf"} 2',
                       "edge_inflight_requests 0", "process_cpu_seconds_total",
                       'edge_model_info{model="base",version="1",sha256="'):
            assert series in body, series
        c.close()


ERRORS = [
    # method, path, body, headers, status, code
    ("POST", "/v1/models/base:predict", "{not json", {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"inputs": []}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": 3}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": []}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": [[1, 2, 3]]}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": [[[1], [2, 3]]]}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": ["bm90IGFuIGltYWdl"]}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": ["%%%"]}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": [{"x": 1}]}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", json.dumps({"instances": [np.full((8, 8), 99.0).tolist()]}), {}, 400,
     "bad_request"),
    ("POST", "/v1/models/base:predict", '{"instances": [[["a"]]]}', {}, 400, "bad_request"),
    ("POST", "/v1/models/base:predict", "{}", {"Content-Type": "image/png"}, 400, "bad_request"),
    ("POST", "/v1/models/nope:predict", '{"instances": [[[0]]]}', {}, 404, "not_found"),
    ("GET", "/v1/models/nope", None, {}, 404, "not_found"),
    ("POST", "/v1/models/base:explode", "{}", {}, 404, "not_found"),
    ("GET", "/v2/anything", None, {}, 404, "not_found"),
    ("GET", "/v1/models/base:predict", None, {}, 405, "method_not_allowed"),
    ("DELETE", "/healthz", None, {}, 405, "method_not_allowed"),
    ("POST", "/v1/models/base:predict", "x" * 5000, {}, 413, "too_large"),
    ("POST", "/v1/models/base:rollback", "", {}, 400, "bad_request"),  # nothing to roll back to
    ("POST", "/v1/models/base:load", '{"path": 3}', {}, 400, "bad_request"),
]


@pytest.fixture(scope="module", params=FRONTS)
def small_server(bundle: dict[str, Path], request: pytest.FixtureRequest) -> Any:
    flags = ["--max-body-bytes", "4096", "--front", request.param]
    with HostServer(bundle["bundle"], workers=1, extra=flags) as srv:
        yield srv


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"), ERRORS,
                         ids=[f"{e[4]}-{i}" for i, e in enumerate(ERRORS)])
def test_error_statuses_are_json(small_server: Any, method: str, path: str, body: str | None,
                                 headers: dict[str, str], status: int, code: str) -> None:
    c = Client(small_server.url)
    got, hdrs, data = c.call(method, path, body, headers)
    err = json.loads(data)
    assert (got, err["code"]) == (status, code), err
    assert hdrs["content-type"] == "application/json"
    assert isinstance(err["error"], str) and "\n" not in err["error"] and len(err["error"]) > 10
    c.close()


def test_ten_thousand_bad_requests_then_still_serving(small_server: Any, digits: dict[str, Any]) -> None:
    mixes = [(m, p, b, h) for m, p, b, h, *_ in ERRORS if not p.endswith((":load", ":rollback"))]
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def hammer(k: int) -> None:
        c = Client(small_server.url)
        local: dict[int, int] = {}
        for i in range(2500):
            m, p, b, h = mixes[(i * 7 + k) % len(mixes)]
            status, _, _ = c.call(m, p, b, h)
            local[status] = local.get(status, 0) + 1
        c.close()
        with lock:
            for s, n in local.items():
                counts[s] = counts.get(s, 0) + n

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(counts.values()) == 10_000 and set(counts) <= {400, 404, 405, 413}, counts
    c = Client(small_server.url)
    status, out = c.json("POST", "/v1/models/base:predict", {"instances": digits["raw"][:1].tolist()})
    assert status == 200 and out["predictions"][0]["index"] == int(
        softmax_probs(digits["w"], digits["b"], digits["raw"][:1]).argmax())
    assert c.json("GET", "/readyz")[0] == 200
    c.close()


def _raw_answers(sock: socket.socket, n: int) -> list[tuple[int, bytes]]:
    """Read ``n`` HTTP answers off a raw socket: (status, body) each, by Content-Length."""
    buf, out = b"", []
    sock.settimeout(10)
    while len(out) < n:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").split("\r\n")
            length = int(next(h.split(":", 1)[1] for h in head if h.lower().startswith("content-length:")))
            if len(buf) >= head_end + 4 + length:
                out.append((int(head[0].split()[1]), buf[head_end + 4:head_end + 4 + length]))
                buf = buf[head_end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the server closed after {len(out)} of {n} answers"
        buf += chunk
    return out


def _post_bytes(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_loop_front_pipelining_expect_continue_and_broken_clients(small_server: Any,
                                                                   digits: dict[str, Any]) -> None:
    """What a hand-written HTTP/1.1 reader must get right: pipelined requests answered in order,
    curl's ``Expect: 100-continue``, an oversized head, and clients that vanish mid-request."""
    host, port = small_server.url.removeprefix("http://").rsplit(":", 1)
    raw = digits["raw"]
    want = softmax_probs(digits["w"], digits["b"], raw[:3]).argmax(axis=1)
    bodies = [json.dumps({"instances": raw[i:i + 1].tolist()}).encode() for i in range(3)]
    with socket.create_connection((host, int(port))) as s:  # three requests in one write, one GET between
        s.sendall(_post_bytes("/v1/models/base:predict", bodies[0])
                  + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                  + _post_bytes("/v1/models/base:predict", bodies[1])
                  + _post_bytes("/v1/models/base:predict", bodies[2]))
        answers = _raw_answers(s, 4)
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert json.loads(answers[1][1]) == {"status": "ok"}
    got = [json.loads(answers[k][1])["predictions"][0]["index"] for k in (0, 2, 3)]
    assert got == list(want)
    with socket.create_connection((host, int(port))) as s:  # curl sends the body only after 100 Continue
        s.sendall(_post_bytes("/v1/models/base:predict", b"", "Expect: 100-continue\r\n")[:-2]
                  .replace(b"Content-Length: 0", f"Content-Length: {len(bodies[0])}".encode()) + b"\r\n")
        s.settimeout(10)
        first = s.recv(1024)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first
        s.sendall(bodies[0])
        assert _raw_answers(s, 1)[0][0] == 200
    with socket.create_connection((host, int(port))) as s:  # a head that never ends: 431, then closed
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (70 << 10))
        assert _raw_answers(s, 1)[0][0] == 431
    for cut in (10, 60, len(_post_bytes("/v1/models/base:predict", bodies[0])) - 5):  # gone mid-request
        with socket.create_connection((host, int(port))) as s:
            s.sendall(_post_bytes("/v1/models/base:predict", bodies[0])[:cut])
    c = Client(small_server.url)
    assert c.json("POST", "/v1/models/base:predict", {"instances": raw[:1].tolist()})[0] == 200
    c.close()


def test_dynamic_batching_answers_each_request_alone(bundle: dict[str, Path], digits: dict[str, Any]) -> None:
    """With --max-batch, queued requests share runtime calls, yet each gets its own answer, and a
    bad request in a batch gets its own 400 while the rest are answered."""
    raw = digits["raw"]
    want = softmax_probs(digits["w"], digits["b"], raw[:64]).argmax(axis=1)
    bad = json.dumps({"instances": [[1, 2, 3]]})
    results: list[tuple[int, int, Any]] = []
    lock = threading.Lock()
    flags = ["--max-batch", "16", "--batch-timeout-ms", "20"]
    with HostServer(bundle["bundle"], workers=1, extra=flags) as srv:
        def client(k: int) -> None:
            c = Client(srv.url)
            for j in range(12):
                i = (k * 12 + j) % 64
                if (k + j) % 5 == 4:
                    status, _, data = c.call("POST", "/v1/models/base:predict", bad)
                    out = (status, -1, json.loads(data))
                else:
                    one = {"instances": raw[i:i + 1].tolist()}
                    status, body = c.json("POST", "/v1/models/base:predict", one)
                    out = (status, i, body)
                with lock:
                    results.append(out)
            c.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        c = Client(srv.url)
        metrics = c.call("GET", "/metrics")[2].decode()
        ready = c.json("GET", "/readyz")[1]
        c.close()
    assert len(results) == 96
    for status, i, body in results:
        if i < 0:
            assert status == 400 and body["code"] == "bad_request"
        else:
            assert status == 200 and body["predictions"][0]["index"] == int(want[i])
    good = sum(1 for r in results if r[1] >= 0)
    calls = int(float(re.search(r'^edge_batch_instances_count\{model="base"\} (\S+)$', metrics, re.M)[1]))
    total = int(float(re.search(r'^edge_batch_instances_sum\{model="base"\} (\S+)$', metrics, re.M)[1]))
    assert total == good and calls < good, (calls, good)  # every instance answered, in fewer calls
    assert ready["layout"]["max_batch"] == 16 and ready["layout"]["batch_timeout_ms"] == 20


# ---------------------------------------------------------------- overload


def test_overload_is_503_at_once_with_retry_after(bundle: dict[str, Path], digits: dict[str, Any]) -> None:
    body = json.dumps({"instances": digits["raw"][:64].tolist()})
    results: list[tuple[int, float, dict[str, str], bytes]] = []
    lock = threading.Lock()
    with HostServer(bundle["slow"].parent.parent, workers=1, max_queue=2, deadline_ms=20000) as srv:
        def client() -> None:
            c = Client(srv.url)
            for _ in range(6):
                t0 = time.perf_counter()
                status, headers, data = c.call("POST", "/v1/models/base:predict", body)
                with lock:
                    results.append((status, time.perf_counter() - t0, headers, data))
            c.close()

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = [r[0] for r in results]
        assert len(results) == 96 and set(statuses) == {200, 503}, sorted(set(statuses))
        rejected = [r for r in results if r[0] == 503]
        served = [r for r in results if r[0] == 200]
        assert all(r[2].get("retry-after") == "1" for r in rejected)
        assert all(json.loads(r[3])["code"] == "overloaded" for r in rejected)
        # refused at once: a 503 does not wait its turn as a served request does
        assert np.median([r[1] for r in rejected]) < np.median([r[1] for r in served])
        c = Client(srv.url)
        _, _, text = c.call("GET", "/metrics")
        assert f'edge_rejected_total{{reason="overloaded"}} {len(rejected)}' in text.decode()
        assert c.call("POST", "/v1/models/base:predict", body)[0] == 200
        c.close()


def test_deadline_is_504(bundle: dict[str, Path], digits: dict[str, Any]) -> None:
    """A request that cannot start on an interpreter within its deadline gets 504 (one that has
    started runs to its answer)."""
    body = json.dumps({"instances": digits["raw"][:256].tolist()})
    statuses: list[tuple[int, str]] = []
    with HostServer(bundle["slow"].parent.parent, workers=1, deadline_ms=5) as srv:
        def client() -> None:
            c = Client(srv.url)
            status, _, data = c.call("POST", "/v1/models/base:predict", body)
            statuses.append((status, json.loads(data).get("code", "ok")))
            c.close()

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        c = Client(srv.url)
        assert c.json("GET", "/healthz")[0] == 200
        c.close()
    assert (504, "deadline_exceeded") in statuses and (200, "ok") in statuses, statuses


# ---------------------------------------------------------------- updates


def test_update_golden_check_refusal_and_rollback(bundle: dict[str, Path], digits: dict[str, Any]) -> None:
    raw = digits["raw"][:8].tolist()
    with HostServer(bundle["bundle"], workers=2) as srv:
        c = Client(srv.url)
        status, out = c.json("POST", "/v1/models/base:load", {"path": str(bundle["v2"])})
        assert status == 200 and out["model_version"] == "2" and out["previous"] == "1", out
        assert out["golden"]["passed"] and out["golden"]["inputs"] == 300
        for name, why in (("wrong", "failed its golden check"), ("corrupt", "did not load")):
            status, err = c.json("POST", "/v1/models/base:load", {"path": str(bundle[name])})
            assert status == 422 and err["code"] == "refused" and why in err["error"], err
            assert "version 2 keeps serving" in err["error"]
        status, err = c.json("POST", "/v1/models/base:load", {"path": str(bundle["root"] / "none")})
        assert status == 422 and "did not load" in err["error"]
        status, out = c.json("POST", "/v1/models/base:predict", {"instances": raw})
        assert status == 200 and out["model_version"] == "2"
        status, info = c.json("GET", "/v1/models/base")
        assert [(v["version"], v["state"]) for v in info["model_version_status"]] == [("2", "AVAILABLE"),
                                                                                      ("1", "LOADED")]
        status, out = c.json("POST", "/v1/models/base:rollback", {})
        assert status == 200 and out["model_version"] == "1"
        status, out = c.json("POST", "/v1/models/base:predict", {"instances": raw})
        want = softmax_probs(digits["w"], digits["b"], digits["raw"][:8])
        assert out["model_version"] == "1"
        np.testing.assert_allclose([p["probabilities"] for p in out["predictions"]], want, atol=1e-5)
        _, _, text = c.call("GET", "/metrics")
        assert 'edge_model_updates_total{model="base",outcome="refused"} 3' in text.decode()
        c.close()


def test_zero_dropped_requests_across_update_and_rollback(bundle: dict[str, Path]) -> None:
    from edgeship.devices.serving.load import parse_target, run_sweep

    bodies = [json.dumps({"instances": [np.full((8, 8, 1), i % 17, np.float32).tolist()]}).encode()
              for i in range(17)]
    with HostServer(bundle["bundle"], workers=2) as srv:
        target = parse_target(f"{srv.url}/v1/models/base:predict", loopback_only=True)
        out: list[Any] = []
        load = threading.Thread(
            target=lambda: out.extend(run_sweep(target, bodies, [150.0], 4.0, connections=16)))
        load.start()
        c = Client(srv.url)
        time.sleep(0.7)
        versions = []
        for step in ("load", "rollback", "load", "rollback"):
            body = {"path": str(bundle["v2"])} if step == "load" else {}
            status, res = c.json("POST", f"/v1/models/base:{step}", body)
            assert status == 200, res
            versions.append(res["model_version"])
            time.sleep(0.5)
        load.join(60)
        c.close()
    assert versions == ["2", "1", "3", "1"]  # each load is a new version; rollback swaps back
    (r,) = out
    assert r.sent > 300 and r.statuses == {"200": r.sent}, r.statuses


# ---------------------------------------------------------------- bad invocations


def _serve_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime", "serve", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_serve_bad_invocations_are_one_line_exit_2(bundle: dict[str, Path]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        cases = [
            ([str(bundle["bundle"]), "--port", str(port)], "cannot listen"),
            ([str(bundle["bundle"]), "--workers", "0", "--port", "0"], "--workers must be at least 1"),
            ([str(bundle["bundle"]), "--artifact", "base/tflite-int8", "--port", "0"], "has no artifact"),
            ([str(bundle["root"] / "missing"), "--port", "0"], "does not exist"),
            ([str(bundle["bundle"]), "--deadline-ms", "0", "--port", "0"], "--deadline-ms"),
            ([str(bundle["bundle"]), "--max-batch", "0", "--port", "0"], "--max-batch must be 1-256"),
            ([str(bundle["bundle"]), "--max-batch", "4", "--front", "stdlib", "--port", "0"],
             "needs the default"),
            ([str(bundle["bundle"]), "--batch-timeout-ms", "5000", "--port", "0"], "--batch-timeout-ms"),
        ]
        for args, words in cases:
            p = _serve_cli(*args)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and words in lines[0], (args, p.stderr)
            assert "Traceback" not in p.stderr


def test_admin_is_loopback_only() -> None:
    from edge_runtime.serve.app import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.168.1.20") and not is_loopback("::ffff:10.0.0.1") and not is_loopback("x")


def test_observers_get_one_record_per_prediction(bundle: dict[str, Path], digits: dict[str, Any]) -> None:
    """The hook request logs will use: the service without sockets, one record per answer, and an
    observer that raises is counted, not fatal."""
    from edge_runtime.serve.app import Pending, Request, Service
    from edge_runtime.serve.models import ModelStore

    store = ModelStore(workers=1, threads=1)
    store.add("base", bundle["v1"])
    service = Service(store, workers=1, max_queue=4, deadline_s=5.0)
    seen: list[dict[str, Any]] = []
    service.observers += [seen.append, lambda record: 1 / 0]
    service.start()
    try:
        body = json.dumps({"instances": digits["raw"][:2].tolist()}).encode()
        for rid in ("a1", "a2"):
            pending = service.handle(Request("POST", "/v1/models/base:predict", body, {"x-request-id": rid}))
            assert isinstance(pending, Pending)
            assert service.execute(pending).status == 200
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        service.stop()
    assert [r["request_id"] for r in seen] == ["a1", "a2"] and seen[0]["version"] == 1
    assert len(seen[0]["predictions"]) == 2 and seen[0]["invoke_s"] > 0
    assert service.observer_errors.value() == 2


def test_update_inside_a_deployed_bundle_uses_its_golden_json(bundle: dict[str, Path],
                                                               digits: dict[str, Any]) -> None:
    """A bundle's golden.json (what deploy records: the artifact's answers on the first rows of
    the bundle's test split, and the bar) decides, not reference.json."""
    from edge_runtime.testset import write_testset

    w, b, raw = digits["w"], digits["b"], digits["raw"]
    b2 = bundle["root"] / "bundle2"
    good = write_artifact(b2 / "artifacts" / "base" / "onnx-good", w * 2, b * 2)
    wrong = write_artifact(b2 / "artifacts" / "base" / "onnx-wrong", np.roll(w, 1, axis=1), b)
    write_testset(b2 / "testset", raw[:40], digits["y"][:40], "digits")
    top1 = softmax_probs(w, b, raw[:32]).argmax(axis=1).tolist()
    entry = {"top1": top1, "source": "the artifact's own answers when exported", "min_agreement": 0.9}
    (b2 / "golden.json").write_text(json.dumps({
        "schema_version": 1, "testset": "testset.npz", "rows": 32,
        "artifacts": {"artifacts/base/onnx-good": entry, "artifacts/base/onnx-wrong": entry}}))
    with HostServer(bundle["bundle"], workers=1) as srv:
        c = Client(srv.url)
        status, err = c.json("POST", "/v1/models/base:load", {"path": str(wrong)})
        assert status == 422 and "the artifact's own answers when exported" in err["error"], err
        status, out = c.json("POST", "/v1/models/base:load", {"path": str(good)})
        assert status == 200 and out["golden"]["inputs"] == 32 and out["golden"]["required"] == 0.9, out
        c.close()
