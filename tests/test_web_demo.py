"""The web bundle in real headless Chromium: page, server, and the browser driver.

Tiny models are trained here (a digits CNN, a wine MLP with a categorical column), exported
with tf2onnx, bundled, served, and compared against native onnxruntime on the same inputs.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from _browser import browser_or_skip

from edgeship.core.errors import InputError, MissingDependencyError
from edgeship.core.fsutil import sha256_file
from edgeship.devices.browser.chromium import (
    BrowserDriver,
    BrowserPageError,
    find_chromium,
    run_browser_benchmark,
    run_browser_benchmarks,
)
from edgeship.devices.browser.server import BundleServer
from edgeship.export.web import MANIFEST, ORT_FILES, PAGE_FILES, WEB_DEMO_DIR, build_web_bundle

pytestmark = pytest.mark.slow

DIGIT_LABELS = [str(i) for i in range(10)]


# ------------------------------------------------------------------ reference preprocessing


def image_pre(raw: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """docs/architecture.md: ``(raw * scale - mean[c]) / std[c]``."""
    mean = np.asarray(p["mean"], np.float32)
    std = np.asarray(p["std"], np.float32)
    return ((raw.astype(np.float32) * p["scale"] - mean) / std).astype(np.float32)


def table_pre(rows: list[list[Any]], p: dict[str, Any]) -> np.ndarray:
    """docs/architecture.md: numeric fill then standardise; categorical fill then one-hot."""
    out = []
    for row in rows:
        feats: list[float] = []
        for col, v in zip(p["columns"], row, strict=True):
            missing = v is None or (isinstance(v, float) and np.isnan(v))
            v = col["fill"] if missing else v
            if col["type"] == "numeric":
                feats.append((float(v) - col["mean"]) / col["std"])
            else:
                feats += [1.0 if str(v) == str(w) else 0.0 for w in col["vocabulary"]]
        out.append(feats)
    return np.asarray(out, np.float32)


# ------------------------------------------------------------------ models and bundles


def _to_onnx(model: Any, shape: tuple[int, ...], path: Path) -> Path:
    import tf2onnx

    from edgeship.training.keras_env import tf

    spec = (tf().TensorSpec((None, *shape), tf().float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny CNN on sklearn digits (8x8x1, raw 0..16), its ONNX file and a test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edgeship.training.keras_env import keras, seed_everything

    k = keras()
    seed_everything(0)
    d = load_digits()
    x = d.images.astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    scaled = xtr * 0.0625
    prep = {
        "kind": "image", "height": 8, "width": 8, "channels": 1, "color_mode": "L",
        "raw_range": [0, 16], "scale": 0.0625,
        "mean": [float(scaled.mean())], "std": [float(scaled.std())],
    }  # fmt: skip
    model = k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.Conv2D(8, 3, padding="same", activation="relu"),
            k.layers.MaxPooling2D(),
            k.layers.Conv2D(16, 3, padding="same", activation="relu"),
            k.layers.Flatten(),
            k.layers.Dense(32, activation="relu"),
            k.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(image_pre(xtr, prep), ytr, epochs=3, batch_size=32, verbose=0)
    onnx_path = _to_onnx(model, (8, 8, 1), tmp_path_factory.mktemp("digits") / "digits.onnx")
    return {"onnx": onnx_path, "prep": prep, "x": xte, "y": yte, "model": model}


@pytest.fixture(scope="module")
def digits_bundle(digits: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("web") / "digits-web"
    build_web_bundle(
        digits["onnx"], out, DIGIT_LABELS, digits["prep"],
        {"name": "input", "shape": [-1, 8, 8, 1], "dtype": "float32"},
        examples={"x": digits["x"][:10], "y": digits["y"][:10]},
        metadata={"dataset": "digits", "model": "cnn", "variant": "base"},
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def native(digits: dict[str, Any]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(digits["onnx"]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def driver(digits_bundle: Path) -> Any:
    browser_or_skip()
    with BrowserDriver(digits_bundle, timeout_s=60) as d:
        yield d


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The wine table plus a categorical column and missing values; a tiny MLP on it."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    from edgeship.training.keras_env import keras, seed_everything

    k = keras()
    seed_everything(0)
    d = load_wine()
    rng = np.random.default_rng(0)
    names = list(d.feature_names[:5])
    region = np.array(["north", "south", "east"], dtype=object)[
        np.where(rng.random(len(d.target)) < 0.7, d.target, rng.integers(0, 3, len(d.target)))
    ]
    rows = [[*map(float, d.data[i, :5]), region[i]] for i in range(len(d.target))]
    y = d.target.astype(np.int64)
    rtr, rte, ytr, yte = train_test_split(rows, y, test_size=0.3, random_state=0, stratify=y)
    num = np.array([r[:5] for r in rtr], np.float64)
    cols: list[dict[str, Any]] = [
        {"name": n, "type": "numeric", "fill": float(np.median(num[:, j])),
         "mean": float(num[:, j].mean()), "std": float(num[:, j].std()),
         "min": float(num[:, j].min()), "max": float(num[:, j].max())}
        for j, n in enumerate(names)
    ]  # fmt: skip
    cols.append({"name": "region", "type": "categorical", "fill": "north",
                 "vocabulary": ["east", "north", "south"]})  # fmt: skip
    features = [*names, "region=east", "region=north", "region=south"]
    prep = {"kind": "tabular", "columns": cols, "dropped": [], "features": features}
    rte = [list(r) for r in rte]
    rte[0][1] = None  # a missing numeric value
    rte[1][5] = None  # a missing category
    rte[2][5] = "west"  # a category never seen in training: all zeros
    model = k.Sequential(
        [k.layers.Input((8,)), k.layers.Dense(16, activation="relu"),
         k.layers.Dense(3, activation="softmax")]
    )  # fmt: skip
    model.compile(k.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(table_pre(rtr, prep), ytr, epochs=30, batch_size=16, verbose=0)
    onnx_path = _to_onnx(model, (8,), tmp_path_factory.mktemp("wine") / "wine.onnx")
    out = tmp_path_factory.mktemp("web") / "wine-web"
    build_web_bundle(
        onnx_path, out, ["class_0", "class_1", "class_2"], prep,
        [{"name": "input", "shape": [-1, 8], "dtype": "float32"}],
        examples={"x": rte[:12], "y": yte[:12]},
        metadata={"dataset": "wine", "model": "mlp"},
    )  # fmt: skip
    return {"onnx": onnx_path, "bundle": out, "prep": prep, "x": rte, "y": yte}


# ------------------------------------------------------------------ the bundle


def test_bundle_is_self_contained(digits_bundle: Path) -> None:
    manifest = json.loads((digits_bundle / MANIFEST).read_text())
    expected = {*PAGE_FILES, *ORT_FILES, "model.onnx"}
    assert set(manifest["files"]) == expected
    for name, entry in manifest["files"].items():
        assert sha256_file(digits_bundle / name) == entry["sha256"], name
    assert manifest["runtime"]["version"] == "1.30.0"
    assert manifest["input"] == {
        "name": "input", "shape": [-1, 8, 8, 1], "dtype": "float32", "layout": "NHWC",
    }  # fmt: skip
    assert len(manifest["examples"]["x"]) == 10
    leftovers = [p.name for p in digits_bundle.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    pinned = json.loads((WEB_DEMO_DIR / "package.json").read_text())["dependencies"]
    assert pinned["onnxruntime-web"] == "1.30.0"
    assert (WEB_DEMO_DIR / "package-lock.json").is_file()


def test_bundle_needs_node_modules(digits: dict[str, Any], tmp_path: Path) -> None:
    demo = tmp_path / "web_demo"
    demo.mkdir()
    for name in (*PAGE_FILES, "package.json"):
        shutil.copy(WEB_DEMO_DIR / name, demo / name)
    with pytest.raises(MissingDependencyError, match=r"npm ci --prefix web_demo"):
        build_web_bundle(
            digits["onnx"], tmp_path / "out", DIGIT_LABELS, digits["prep"],
            {"shape": [-1, 8, 8, 1]}, web_demo_dir=demo,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_bundle_rejects_a_spec_that_does_not_fit(digits: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="8x8x1"):
        build_web_bundle(
            digits["onnx"], tmp_path / "out", DIGIT_LABELS, digits["prep"], {"shape": [-1, 28, 28, 1]}
        )  # fmt: skip


def test_bundle_rejects_an_ir_version_the_browser_cannot_read(
    digits: dict[str, Any], tmp_path: Path
) -> None:
    import onnx

    model = onnx.load(str(digits["onnx"]))
    model.ir_version = 14
    onnx.save(model, str(tmp_path / "new.onnx"))
    with pytest.raises(InputError, match="IR version 14"):
        build_web_bundle(
            tmp_path / "new.onnx", tmp_path / "out", DIGIT_LABELS, digits["prep"], {"shape": [-1, 8, 8, 1]}
        )  # fmt: skip


# ------------------------------------------------------------------ the page, digits


def test_page_predicts_like_native(driver: Any, digits: dict[str, Any], native: Any) -> None:
    page = driver.open(threads=1)
    x_raw, y = digits["x"], digits["y"]
    want = native.run(None, {"input": image_pre(x_raw, digits["prep"])})[0]

    r = page.predict(x_raw[0])
    assert r["top"][0]["index"] == int(want[0].argmax())
    assert len(r["top"]) == 3 and r["ms"] > 0
    np.testing.assert_allclose(r["probabilities"], want[0], atol=1e-5)
    pre = image_pre(x_raw[0], digits["prep"]).ravel()
    np.testing.assert_allclose(page.preprocess(x_raw[0]), pre, rtol=1e-6)

    ev = page.evaluate(x_raw, y, return_probabilities=True)
    assert ev["n"] == len(y)
    assert ev["predictions"] == want.argmax(1).tolist()  # 100 % top-1 agreement
    assert ev["accuracy"] == pytest.approx(float((want.argmax(1) == y).mean()))
    assert np.abs(np.asarray(ev["probabilities"]) - want).max() < 1e-4
    page.close()


def _stroke(page: Any, points: list[tuple[float, float]]) -> None:
    box = page.locator("#draw").bounding_box()
    at = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=10)
    page.mouse.up()


def test_canvas_stroke_yields_a_prediction(driver: Any, tmp_path: Path) -> None:
    demo = driver.open(threads=2)
    page = demo.page
    _stroke(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a 7
    page.wait_for_function("document.querySelectorAll('#top3 li').length === 3", timeout=10_000)
    assert "ms" in page.inner_text("#result-meta")
    ink = page.evaluate(
        """() => { const d = document.getElementById('preview').getContext('2d')
                     .getImageData(0, 0, 8, 8).data;
                   let s = 0; for (let i = 0; i < 64; i++) s += 255 - d[i * 4]; return s; }"""
    )
    assert ink > 0  # the 8x8 model input shows the stroke

    page.keyboard.press("Tab")  # the rest of the demo works from the keyboard too
    page.focus("#runs")
    page.fill("#runs", "100")
    page.focus("#bench-btn")
    page.keyboard.press("Enter")
    page.wait_for_selector("#bench-stats:not([hidden])", timeout=30_000)
    cells = page.locator("#bench-stats td").all_inner_texts()
    assert len(cells) == 6 and all(float(c) > 0 for c in cells)
    shot = demo.screenshot(tmp_path / "web-demo.png")
    assert shot.stat().st_size > 10_000
    if os.environ.get("EDGESHIP_SCREENSHOT"):
        shutil.copy(shot, os.environ["EDGESHIP_SCREENSHOT"])
    demo.close()


def test_benchmark_two_threads_isolated(driver: Any) -> None:
    page = driver.open(threads=2)
    env = page.env()
    assert env["cross_origin_isolated"] is True
    assert env["threads"] == 2
    assert env["simd"] is True
    assert env["execution_provider"] == "CPUExecutionProvider"
    assert env["ort_version"] == "1.30.0"
    assert env["browser_version"].split(".")[0].isdigit()
    b = page.benchmark(warmup=5, runs=60)
    lat = np.asarray(b["latencies_ms"])
    s = b["summary"]
    assert lat.shape == (60,) and np.isfinite(lat).all() and (lat > 0).all()
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["p50"] == pytest.approx(float(np.percentile(lat, 50)))
    assert s["p99"] == pytest.approx(float(np.percentile(lat, 99)))
    assert 0 < s["p50"] < 1000  # a sanity bound (about 0.1 ms quiet): timing belongs to the benchmarks
    assert b["options"] == {"calls_per_sample": 1, "preallocated_output": True, "batch": 1}
    blocks = page.benchmark(warmup=0, runs=5, calls_per_sample=4, preallocate_output=False)
    assert blocks["options"]["calls_per_sample"] == 4 and len(blocks["latencies_ms"]) == 5
    assert env["timer_resolution_ms"] is not None and env["timer_resolution_ms"] <= 0.1
    page.close()


def test_run_browser_benchmarks(digits_bundle: Path, digits: dict[str, Any], native: Any) -> None:
    browser_or_skip()
    xs, ys = digits["x"][:100], digits["y"][:100]
    want = native.run(None, {"input": image_pre(xs, digits["prep"])})[0].argmax(1)
    results = run_browser_benchmarks(digits_bundle, threads=(1, 2), warmup=3, runs=30, xs=xs, ys=ys)
    assert [r["threads"] for r in results] == [1, 2]
    for r in results:
        assert r["backend"] == "onnxruntime-web"
        assert len(r["latencies_ms"]) == 30 and r["summary"]["runs"] == 30
        assert r["env"]["cross_origin_isolated"] and r["env"]["simd"]
        assert r["predictions"] == want.tolist()
        assert r["accuracy"] == pytest.approx(float((want == ys).mean()))


# ------------------------------------------------------------------ the page, tables


def test_tabular_form(wine: dict[str, Any]) -> None:
    browser_or_skip()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(wine["onnx"]), providers=["CPUExecutionProvider"])
    ref = table_pre(wine["x"], wine["prep"])
    want = sess.run(None, {"input": ref})[0]
    with BrowserDriver(wine["bundle"]) as d:
        demo = d.open(threads=1)
        page = demo.page
        # The form follows the spec: ranges from min/max, selects from the vocabulary.
        first = wine["prep"]["columns"][0]
        assert float(page.get_attribute("#f-0", "min")) == pytest.approx(first["min"])
        assert float(page.get_attribute("#f-0", "max")) == pytest.approx(first["max"])
        options = page.locator("#f-5 option").all_inner_texts()
        assert options[1:] == ["east", "north", "south"]
        # Preprocessing in JS equals the spec, including fills and an unseen category.
        for i in range(4):
            np.testing.assert_allclose(demo.preprocess(wine["x"][i]), ref[i], rtol=1e-5, atol=1e-6)
        # Pick an example row (it has a missing value), predict from the form by keyboard.
        page.select_option("#examples", "0")
        page.wait_for_function("document.querySelectorAll('#top3 li').length === 3")
        assert page.input_value("#f-1") == ""  # the missing value stays missing
        page.fill("#f-0", str(wine["x"][3][0]))
        for j, v in enumerate(wine["x"][3]):
            if j < 5:
                page.fill(f"#f-{j}", str(v))
            else:
                page.select_option(f"#f-{j}", str(v))
        page.evaluate("document.querySelector('#top3').replaceChildren()")
        page.focus("#tabular-input button[type=submit]")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelectorAll('#top3 li').length === 3")
        top = page.locator("#top3 li .cls").first.inner_text()
        assert top == f"class_{int(want[3].argmax())}"
        # The whole test split, raw rows in, same top-1 as native onnxruntime.
        ev = demo.evaluate(wine["x"], wine["y"])
        assert ev["predictions"] == want.argmax(1).tolist()


# ------------------------------------------------------------------ errors reach the caller fast


def test_model_load_failure_is_reported_not_timed_out(digits_bundle: Path, tmp_path: Path) -> None:
    browser_or_skip()
    broken = tmp_path / "broken"
    shutil.copytree(digits_bundle, broken)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["files"]["model.onnx"]["sha256"] = sha256_file(broken / "model.onnx")
    (broken / MANIFEST).write_text(json.dumps(manifest))
    t0 = time.monotonic()
    with pytest.raises(BrowserPageError, match=r"could not load model\.onnx"):
        run_browser_benchmark(broken, threads=1, timeout_s=60)
    assert time.monotonic() - t0 < 20

    manifest["files"]["model.onnx"]["sha256"] = "0" * 64  # a damaged copy: sha256 disagrees
    (broken / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BrowserPageError, match="sha256"):
        run_browser_benchmark(broken, threads=1, timeout_s=60)

    (broken / "app.js").write_text("export const = ;")  # a page that cannot even start
    t0 = time.monotonic()
    with pytest.raises(BrowserPageError, match="page script error"):
        run_browser_benchmark(broken, threads=1, timeout_s=60)
    assert time.monotonic() - t0 < 20


def test_chromium_missing_names_the_package(digits_bundle: Path) -> None:
    with pytest.raises(MissingDependencyError, match="`chromium`"):
        find_chromium("/nonexistent/chromium")
    with pytest.raises(MissingDependencyError, match="apt-get install -y chromium"):
        BrowserDriver(digits_bundle, chromium="/nonexistent/chromium")


# ------------------------------------------------------------------ the server


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)  # the path goes out byte for byte
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, {k.lower(): v for k, v in res.getheaders()}, body


def test_server_headers_and_mime_types(digits_bundle: Path) -> None:
    mime = {
        "/": "text/html",
        "/index.html": "text/html",
        "/app.js": "text/javascript",
        "/ort.wasm.min.mjs": "text/javascript",
        "/ort-wasm-simd-threaded.mjs": "text/javascript",
        "/ort-wasm-simd-threaded.wasm": "application/wasm",
        "/bundle.json": "application/json",
        "/style.css": "text/css",
        "/model.onnx": "application/octet-stream",
    }
    with BundleServer(digits_bundle, port=0) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        for path, ctype in mime.items():
            status, headers, body = _get(srv.port, path)
            assert status == 200, path
            assert headers["content-type"].split(";")[0] == ctype, path
            assert headers["cross-origin-opener-policy"] == "same-origin"
            assert headers["cross-origin-embedder-policy"] == "require-corp"
            assert headers["cross-origin-resource-policy"] == "same-origin"
            assert int(headers["content-length"]) == len(body)
        status, headers, body = _get(srv.port, "/app.js", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert _get(srv.port, "/app.js", "POST")[0] == 405
        status, headers, _ = _get(srv.port, "/nope.js")
        assert status == 404 and headers["cross-origin-embedder-policy"] == "require-corp"


def test_server_refuses_everything_outside_the_bundle(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>ok</title>")
    (root / "sub" / "a.js").write_text("1")
    (root / ".hidden").write_text("no")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "linkdir").symlink_to(tmp_path)
    attacks = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub/../../secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..\\secret.txt",
        "/%5c..%5csecret.txt",
        "//etc/passwd",
        "/%00index.html",
        "/link.txt",
        "/linkdir/secret.txt",
        "/.hidden",
        "/sub/",
        "/sub",
        "/%ff%fe",
    ]
    with BundleServer(root, port=0) as srv:
        assert _get(srv.port, "/")[0] == 200
        assert _get(srv.port, "/sub/a.js")[0] == 200
        for path in attacks:
            status, _, body = _get(srv.port, path)
            assert status == 404, path
            assert b"secret" not in body and b"root:" not in body


def test_port_in_use_is_an_input_error(digits_bundle: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=rf"port {port} .* in use; try --port \d+"):
            BundleServer(digits_bundle, port=port)


def test_server_stops_cleanly(digits_bundle: Path) -> None:
    srv = BundleServer(digits_bundle, port=0).start()
    port = srv.port
    assert _get(port, "/")[0] == 200
    srv.stop()
    with pytest.raises(OSError):
        _get(port, "/")
    BundleServer(digits_bundle, port=port).stop()  # the port is free again


# ------------------------------------------------------------------ LiteRT.js beside onnxruntime-web


@pytest.fixture(scope="module")
def both_bundle(digits: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits bundle with LiteRT.js's batch-1 TFLite model beside the ONNX one."""
    from edgeship.export import ExportRequest
    from edgeship.export.web.runtimes import litert_model

    work = tmp_path_factory.mktemp("litert")
    litert = litert_model(ExportRequest(out_dir=work, quantize="float32", keras_model=digits["model"]), work)
    assert litert.available, litert.reason
    out = tmp_path_factory.mktemp("web") / "digits-both"
    build_web_bundle(
        digits["onnx"], out, DIGIT_LABELS, digits["prep"],
        {"name": "input", "shape": [-1, 8, 8, 1], "dtype": "float32"},
        examples={"x": digits["x"][:10], "y": digits["y"][:10]},
        metadata={"dataset": "digits", "model": "cnn", "variant": "base"}, litert=litert,
    )  # fmt: skip
    return out


def _native_top1(bundle: Path, runtime: str, x: np.ndarray) -> list[int]:
    """Top-1 of the bundle's own model file for that runtime, run natively (batch 1 for LiteRT)."""
    if runtime == "ort":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(None, {"input": x})[0].argmax(1).tolist()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(bundle / "model.tflite"))
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for row in x:
        it.set_tensor(i, row[None])
        it.invoke()
        out.append(int(it.get_tensor(o).argmax()))
    return out


def test_bundle_carries_both_runtimes(both_bundle: Path) -> None:
    from edgeship.export.web.runtimes import LITERT_FILES

    manifest = json.loads((both_bundle / MANIFEST).read_text())
    assert set(manifest["files"]) == {*PAGE_FILES, *ORT_FILES, "model.onnx", *LITERT_FILES, "model.tflite"}
    rts = manifest["runtimes"]
    assert rts["onnxruntime-web"]["available"] and rts["onnxruntime-web"]["version"] == "1.30.0"
    assert rts["litert.js"]["available"] and rts["litert.js"]["version"] == "2.5.3"
    assert rts["litert.js"]["input"]["shape"] == [1, 8, 8, 1]  # LiteRT.js refuses a free batch dimension
    assert manifest["default_runtime"] == "litert.js"
    for name, entry in manifest["files"].items():
        assert sha256_file(both_bundle / name) == entry["sha256"], name
    pinned = json.loads((WEB_DEMO_DIR / "package.json").read_text())["dependencies"]
    assert pinned["@litertjs/core"] == "2.5.3"
    lock = json.loads((WEB_DEMO_DIR / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/@litertjs/core"]["version"] == "2.5.3"
    assert '"@litertjs/wasm-utils": "./litert-wasm-utils.mjs"' in (both_bundle / "index.html").read_text()


@pytest.mark.parametrize("runtime", ["litert", "ort"])
def test_each_runtime_draws_and_predicts_like_native(
    both_bundle: Path, digits: dict[str, Any], runtime: str
) -> None:
    browser_or_skip()
    name = {"litert": "litert.js", "ort": "onnxruntime-web"}[runtime]
    x = image_pre(digits["x"], digits["prep"])
    with BrowserDriver(both_bundle) as d:
        demo = d.open(threads=2, runtime=runtime)
        env = demo.env()
        assert (env["runtime"], env["accelerator"], env["threads"]) == (name, "wasm", 2)
        assert env["runtime_choice"] == f"asked for (?runtime={runtime})"
        assert env["backend_version"] == {"litert": "2.5.3", "ort": "1.30.0"}[runtime]
        assert not env["webgpu"]["available"] and env["webgpu"]["note"].startswith("not available")
        page = demo.page
        assert name in page.inner_text("#env") and page.input_value("#runtime") == runtime
        _stroke(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a 7, drawn with the mouse
        page.wait_for_function("document.querySelectorAll('#top3 li').length === 3", timeout=10_000)
        raw = np.asarray(page.evaluate("() => window.edgeship.lastRaw"), np.float32).reshape(1, 8, 8, 1)
        shown = page.locator("#top3 li .cls").first.inner_text()
        assert shown == str(_native_top1(both_bundle, runtime, image_pre(raw, digits["prep"]))[0])
        ev = demo.evaluate(digits["x"], digits["y"])  # the whole test split, raw in
        assert ev["predictions"] == _native_top1(both_bundle, runtime, x)
        page.fill("#runs", "50")
        page.click("#bench-btn")
        page.wait_for_selector("#bench-stats:not([hidden])", timeout=30_000)
        assert name in page.inner_text("#bench-meta")  # the button timed the selected runtime
        demo.close()


def test_a_runtime_that_fails_to_load_leaves_the_other_running(both_bundle: Path, tmp_path: Path) -> None:
    browser_or_skip()
    broken = tmp_path / "broken"
    shutil.copytree(both_bundle, broken)
    (broken / "litert.mjs").write_text("export const = ;")  # LiteRT.js itself cannot load
    with BrowserDriver(broken) as d:
        demo = d.open(threads=1, runtime="litert")
        env = demo.env()
        assert env["runtime"] == "onnxruntime-web"
        assert env["runtime_choice"] == "fallback: litert.js failed to load"
        failed = env["runtimes"]["litert.js"]
        assert failed["status"] == "failed" and "could not load LiteRT.js" in failed["reason"]
        assert "litert.js: failed" in demo.page.inner_text("#env")
        assert demo.predict(np.zeros(64))["runtime"] == "onnxruntime-web"


def test_a_runtime_marked_unavailable_by_export(digits: dict[str, Any], tmp_path: Path) -> None:
    """A model the ONNX side could not make: the bundle carries LiteRT.js only, and says why."""
    browser_or_skip()
    from edgeship.export import ExportRequest
    from edgeship.export.web.runtimes import litert_model

    litert = litert_model(ExportRequest(out_dir=tmp_path, quantize="float32", keras_model=digits["model"]),
                          tmp_path)
    out = tmp_path / "litert-only"
    manifest = build_web_bundle(None, out, DIGIT_LABELS, digits["prep"], [], litert=litert,
                                ort_reason="the variant's ONNX export failed validation")
    assert not any(f.startswith("ort") for f in manifest["files"]) and "model.onnx" not in manifest["files"]
    with BrowserDriver(out) as d:
        env = d.open(threads=1).env()
        assert env["runtime"] == "litert.js"
        assert env["runtimes"]["onnxruntime-web"] == {
            "key": "ort", "status": "unavailable", "reason": "the variant's ONNX export failed validation"}


def test_measurements_choose_the_default_runtime(both_bundle: Path, tmp_path: Path) -> None:
    browser_or_skip()
    measured = tmp_path / "measured"
    shutil.copytree(both_bundle, measured)
    rec = {"runtime": "onnxruntime-web", "accelerator": "wasm", "threads": 1, "p50_ms": 0.05}
    (measured / "measurements.json").write_text(json.dumps({"recommended": rec, "browser": "chromium"}))
    with BrowserDriver(measured) as d:
        env = d.open().env()
        assert env["runtime"] == "onnxruntime-web" and env["threads"] == 1
        assert env["runtime_choice"].startswith("recommended by this bundle's measurements (p50 0.05 ms")
    with BrowserDriver(both_bundle) as d:  # no measurements: the bundle's default
        env = d.open().env()
        assert env["runtime"] == "litert.js"
        assert env["runtime_choice"] == "default (this bundle has no measurements yet)"


def test_without_isolation_threads_are_off_and_the_page_says_why(both_bundle: Path) -> None:
    """A static host without COOP/COEP: both runtimes still run, on one thread, and the page says so."""
    browser_or_skip()
    import functools
    import http.server
    import threading

    class Plain(http.server.SimpleHTTPRequestHandler):
        extensions_map: ClassVar[dict[str, str]] = {
            **http.server.SimpleHTTPRequestHandler.extensions_map,
            ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Plain, directory=str(both_bundle))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with BrowserDriver(both_bundle) as d:
            for runtime in ("litert", "ort"):
                demo = d.open_url(f"http://127.0.0.1:{server.server_address[1]}/", threads=2, runtime=runtime)
                env = demo.env()
                assert env["cross_origin_isolated"] is False and env["threads"] == 1
                assert env["threads_note"].startswith("threads are off: the page is not cross-origin")
                assert "Cross-Origin-Opener-Policy" in env["threads_note"]
                assert "threads are off" in demo.page.inner_text("#env")
                assert demo.predict(np.zeros(64))["runtime"] == env["runtime"]
                demo.close()
    finally:
        server.shutdown()
        server.server_close()


def test_opened_from_a_file_url_the_page_says_how_to_serve_it(both_bundle: Path) -> None:
    browser_or_skip()
    with BrowserDriver(both_bundle) as d:
        demo = d.open_url((both_bundle / "index.html").as_uri(), wait=False)
        with pytest.raises(BrowserPageError, match=r"opened from file://: .* serve this folder over HTTP"):
            demo.wait_ready(20)
        assert "opened from file://" in demo.page.inner_text("#error")


def test_a_model_litert_cannot_convert_is_marked_and_the_bundle_runs_onnx(
    digits: dict[str, Any], tmp_path: Path
) -> None:
    """An op the TFLite converter cannot express: LiteRT.js is unavailable for that model (with the
    converter's reason), the bundle ships onnxruntime-web alone and the page runs it."""
    from _models import odd_layer_class

    from edgeship.export import ExportRequest
    from edgeship.export.web import export_web
    from edgeship.training.keras_env import keras

    k = keras()
    model = k.Sequential([k.layers.Input((8, 8, 1)), odd_layer_class()(), k.layers.Flatten(),
                          k.layers.Dense(10, activation="softmax")])
    out = tmp_path / "web"
    out.mkdir()
    exported = export_web(ExportRequest(
        out_dir=out, quantize="float32", keras_model=model, onnx_path=digits["onnx"],
        preprocessing=digits["prep"], labels=tuple(DIGIT_LABELS)))
    rts = json.loads((out / MANIFEST).read_text())["runtimes"]
    assert rts["litert.js"]["available"] is False
    assert rts["litert.js"]["reason"].startswith("the TFLite converter cannot build it")
    assert "bessel" in rts["litert.js"]["reason"].lower()
    assert rts["onnxruntime-web"]["available"] and exported.extra["validate_as"] == "onnx"
    assert not (out / "model.tflite").exists() and not (out / "litert.mjs").exists()
    browser_or_skip()
    with BrowserDriver(out) as d:
        env = d.open(threads=1, runtime="litert").env()
        assert env["runtime"] == "onnxruntime-web"
        assert env["runtime_choice"] == "fallback: litert.js is unavailable for this model"
        assert env["runtimes"]["litert.js"]["status"] == "unavailable"
