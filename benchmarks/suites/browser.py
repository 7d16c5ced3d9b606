"""Browser benchmark suite: LiteRT.js and onnxruntime-web against native LiteRT and onnxruntime.

    python -m edgeship.benchmarks.suites.browser [--models digits,mobilenet] [--rounds 5] [--runs 200]
        [--warmup 20] [--epochs N] [--out DIR]
    python -m edgeship.benchmarks.suites.browser --smoke   # digits only, one round of a few calls

For the digits CNN (trained through ``edgeship train``, exported with ``--format web``) and
MobileNetV2 alpha 0.35 at 96x96 (random weights), float32 and int8, one web bundle each with both
browser runtimes: its ``model.onnx`` (onnxruntime-web; native onnxruntime runs the same file) and
its batch-1 ``model.tflite`` (LiteRT.js; native LiteRT, ai-edge-litert, runs the same file).
Every (model, quantization, runtime, thread count) is set up once (one browser page each, one
native session each), then measured once per round, rounds interleaved in rotating order, so a
busy machine slows all sides alike; the median of the rounds' p50s is reported (batch 1, ms).

Printed per model: the p50s, the ratio best browser / fastest native at the same thread count
(target <= 2.0x for MobileNetV2, <= 3.0x for the digits CNN, where per-call overhead dominates),
and the second thread's gain in the faster browser runtime (target >= 1.4x on MobileNetV2).
Then (not with ``--smoke``) each browser runtime's fastest page is profiled
(``browser_profile``): how much of its time is WebAssembly kernels, JavaScript, or waiting.
Exit status 1 when a target is not met (0 with ``--smoke``, whose figures are too few to judge).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.timing import summarize_ms, time_calls
from edgeship.benchmarks.suites.browser_profile import profile_line, profile_page
from edgeship.benchmarks.suites.smoke import parse_args
from edgeship.core.runstore import RunStore
from edgeship.devices.browser.chromium import BrowserDriver, find_chromium
from edgeship.devices.browser.server import BundleServer
from edgeship.export import ExportRequest
from edgeship.export.web import build_web_bundle, prepare_web_model, unavailable_reason
from edgeship.export.web.runtimes import litert_model
from edgeship.training.keras_env import seed_everything

TARGET_RATIO = {"digits": 3.0, "mobilenet": 2.0}
TARGET_SPEEDUP = 1.4  # judged on MobileNetV2; printed for both
THREADS = (1, 2)
MODELS = ("digits", "mobilenet")
NATIVE = ("litert", "onnxruntime")
BROWSER = ("litert.js", "onnxruntime-web")
PAGE_KEY = {"litert.js": "litert", "onnxruntime-web": "ort"}
BLOCK_BELOW_NATIVE_MS = 0.1  # browser samples of models this fast natively are means of BLOCK calls,
BLOCK = 10  # since performance.now() moves in 5 us steps in an isolated page
SMOKE = {"models": "digits", "epochs": 5, "rounds": 1, "runs": 20, "warmup": 2}


@dataclass
class Bundle:
    """One model at one quantization: its web bundle (both runtimes) and a preprocessed input."""

    model: str
    quant: str  # fp32 | int8
    dir: Path
    input: np.ndarray


@dataclass
class Config:
    """One runtime at one thread count on one bundle, set up, and its rounds' p50s (ms)."""

    b: Bundle
    runtime: str  # one of NATIVE or BROWSER
    threads: int
    p50: Callable[[int, int], float]  # (runs, warmup) -> p50 ms of one sample
    rounds: list[float] = field(default_factory=list)
    page: Any = None  # the open DemoPage (browser runtimes)

    @property
    def browser(self) -> bool:
        return self.runtime in BROWSER

    @property
    def name(self) -> str:
        return f"{self.b.quant} {self.runtime}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the bundles


def digits_bundles(work: Path, seed: int, epochs: int | None = None) -> list[Bundle]:
    """The digits CNN through the real pipeline: train, export web (both runtimes), float32 and int8."""
    from edgeship.export.stage import ExportConfig, export_run, load_raw_test
    from edgeship.training.stage import TrainConfig, train

    log("digits: training the CNN and exporting web float32,int8 (ONNX and batch-1 TFLite)")
    more = {"epochs": epochs} if epochs else {}
    run = train(RunStore(work / "runs"), TrainConfig(dataset="digits", seed=seed, **more)).run
    results = export_run(run, ExportConfig(formats="web", quantize="float32,int8"))
    failed = [str(r.dir) for r in results if not r.passed]
    if failed:
        raise SystemExit(f"export failed validation: {failed}")
    exports = run.path / "exports" / "base"
    meta = json.loads((exports / "web" / "bundle.json").read_text())
    raw = load_raw_test(run)
    assert raw is not None
    x = _preprocess_image(raw["x"][:1], meta["preprocessing"])
    return [Bundle("digits", "fp32", exports / "web", x), Bundle("digits", "int8", exports / "web-int8", x)]


def mobilenet_bundles(work: Path, seed: int) -> list[Bundle]:
    """MobileNetV2 alpha 0.35, 96x96x3, 10 classes, random weights; int8 calibrated on noise."""
    from edgeship.export.onnx import check, convert_keras, quantize_qdq
    from edgeship.training.models import build_model

    log("mobilenet: building MobileNetV2 0.35 96x96 (random weights): ONNX (+ int8 QDQ), batch-1 TFLite")
    seed_everything(seed)
    model = build_model("mobilenetv2", (96, 96, 3), 10)
    rng = np.random.default_rng(seed)
    prep = {"kind": "image", "height": 96, "width": 96, "channels": 3, "color_mode": "RGB",
            "raw_range": [0, 255], "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    raw = rng.integers(0, 256, size=(64, 96, 96, 3)).astype(np.float32)
    calib = _preprocess_image(raw, prep)
    fp32 = convert_keras(model, work / "mobilenet-fp32.onnx")
    int8 = work / "mobilenet-int8.onnx"
    quantize_qdq(fp32, int8, calib)
    check(int8)
    out = []
    for q, path, quantize in (("fp32", fp32, "float32"), ("int8", int8, "int8")):
        web_model = work / f"mobilenet-{q}-web.onnx"
        prepare_web_model(path, web_model)
        tfl_dir = work / f"mobilenet-{q}-tflite"
        tfl_dir.mkdir(exist_ok=True)
        req = ExportRequest(out_dir=tfl_dir, quantize=quantize, keras_model=model, representative=calib)
        litert = litert_model(req, tfl_dir)
        if not litert.available:
            raise SystemExit(f"mobilenet {q}: {litert.reason}")
        bundle = work / f"mobilenet-{q}-web"
        build_web_bundle(web_model, bundle, [str(i) for i in range(10)], prep,
                         {"name": "input", "shape": [-1, 96, 96, 3]}, {"x": raw[:1]}, litert=litert)
        out.append(Bundle("mobilenet", q, bundle, calib[:1]))
    return out


def _preprocess_image(raw: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    mean = np.asarray(p["mean"], np.float32)
    std = np.asarray(p["std"], np.float32)
    return ((np.asarray(raw, np.float32) * np.float32(p["scale"]) - mean) / std).astype(np.float32)


# ---------------------------------------------------------------- set up once, time per round


def native_config(b: Bundle, runtime: str, threads: int) -> Config:
    """A native session on the bundle's own model file, fed and read as edge_runtime does."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(b.dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: b.input}

        def call() -> Any:
            return sess.run(None, feed)
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(b.dir / "model.tflite"), num_threads=threads)
        it.allocate_tensors()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

        def call() -> Any:
            it.set_tensor(i, b.input)
            it.invoke()
            return it.get_tensor(o)

    def p50(runs: int, warmup: int) -> float:
        return float(summarize_ms(time_calls(call, runs, warmup))["p50"])

    return Config(b, runtime, threads, p50)


def browser_config(driver: Any, url: str, b: Bundle, runtime: str, threads: int, block: int,
                   envs: dict[str, Any]) -> Config:
    """A page of the bundle running ``runtime`` with ``threads`` threads, kept open for every round."""
    page = driver.open_url(url, threads=threads, runtime=PAGE_KEY[runtime])
    env = page.env()
    if env.get("runtime") != runtime or env["threads"] != threads or not env["cross_origin_isolated"]:
        raise SystemExit(f"{b.model} {b.quant} {runtime}: the page ran {env.get('runtime')} with "
                         f"{env['threads']} threads (isolated: {env['cross_origin_isolated']}); asked for "
                         f"{threads}; {(env.get('runtimes') or {}).get(runtime)}")
    envs[f"{runtime} t{threads}"] = env

    def p50(runs: int, warmup: int) -> float:
        return float(page.benchmark(warmup, max(1, runs // block), calls_per_sample=block)["summary"]["p50"])

    return Config(b, runtime, threads, p50, page=page)


def measure(bundles: list[Bundle], rounds: int, runs: int, warmup: int,
            profile: bool = False) -> tuple[list[Config], dict[str, Any]]:
    """Set every configuration up, then ``rounds`` interleaved rounds (rotating, odd rounds reversed);
    then, with ``profile``, a CPU profile of each browser runtime's fastest page per model."""
    servers = {str(b.dir): BundleServer(b.dir, port=0).start() for b in bundles}
    envs: dict[str, Any] = {}
    try:
        with BrowserDriver(bundles[0].dir, timeout_s=180) as driver:
            configs = [native_config(b, rt, t) for b in bundles for rt in NATIVE for t in THREADS]
            blocks: dict[str, int] = {}
            for c in configs:  # native speed (steady, fine-grained) decides per-call or block timing
                if c.b.model not in blocks and c.runtime == "onnxruntime" and c.threads == 1:
                    blocks[c.b.model] = BLOCK if c.p50(50, 5) < BLOCK_BELOW_NATIVE_MS else 1
            for b in bundles:
                for rt in BROWSER:
                    for t in THREADS:
                        configs.append(browser_config(driver, servers[str(b.dir)].url, b, rt, t,
                                                      blocks[b.model], envs))
            for r in range(rounds):
                t0 = time.perf_counter()
                shift = r % len(configs)
                order = configs[shift:] + configs[:shift]
                for c in reversed(order) if r % 2 else order:
                    c.rounds.append(c.p50(runs, warmup))
                log(f"round {r + 1}/{rounds}: {time.perf_counter() - t0:.0f} s, "
                    f"load average {os.getloadavg()[0]:.1f}")
            env = {"browser_version": driver.browser_version, "blocks": blocks, "runtimes": envs,
                   "profiles": _profiles(configs) if profile else {}}
    finally:
        for s in servers.values():
            s.stop()
    return configs, env


def _profiles(configs: list[Config]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per model: each browser runtime's fastest quantization profiled at 1 thread, and the
    fastest browser configuration at 2 threads."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    med = statistics.median
    for model in dict.fromkeys(c.b.model for c in configs):
        web = [c for c in configs if c.b.model == model and c.browser]
        picks = [min((c for c in web if c.runtime == rt and c.threads == 1), key=lambda c: med(c.rounds))
                 for rt in BROWSER]
        picks.append(min((c for c in web if c.threads == 2), key=lambda c: med(c.rounds)))
        log(f"{model}: profiling {', '.join(f'{c.name} t{c.threads}' for c in picks)}")
        out[model] = [(f"{c.name} t{c.threads}", profile_page(c.page)) for c in picks]
    return out


# ---------------------------------------------------------------- report


def model_report(model: str, configs: list[Config],
                 say: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """The table, the ratio and the thread gain of one model; and whether its targets are met."""
    med = statistics.median
    mc = [c for c in configs if c.b.model == model]
    p50 = {(c.name, c.threads): med(c.rounds) for c in mc}
    names = list(dict.fromkeys(c.name for c in mc))
    say("")
    say(f"{model}")
    say(f"  {'artifact':22s} {'t1 p50':>9s} {'t2 p50':>9s} {'t1/t2':>7s}")
    for n in names:
        say(f"  {n:22s} {p50[(n, 1)]:9.4f} {p50[(n, 2)]:9.4f} {p50[(n, 1)] / p50[(n, 2)]:6.2f}x")
    out: dict[str, Any] = {"p50_ms": {f"{n} t{t}": v for (n, t), v in p50.items()}, "ratio": {}}
    checks = []
    for t in THREADS:
        web = min((n for n in names if n.split(" ", 1)[1] in BROWSER), key=lambda n: p50[(n, t)])
        nat = min((n for n in names if n.split(" ", 1)[1] in NATIVE), key=lambda n: p50[(n, t)])
        ratio = p50[(web, t)] / p50[(nat, t)]
        ok = ratio <= TARGET_RATIO[model]
        checks.append(ok)
        out["ratio"][t] = {"browser": web, "native": nat, "ratio": ratio}
        say(f"  target t{t}: best browser '{web}' {p50[(web, t)]:.4f} ms / fastest native '{nat}' "
            f"{p50[(nat, t)]:.4f} ms = {ratio:.2f}x; <= {TARGET_RATIO[model]}x: {'MET' if ok else 'NOT MET'}")
    best = min((n for n in names if n.split(" ", 1)[1] in BROWSER), key=lambda n: p50[(n, 2)])
    gain = p50[(best, 1)] / p50[(best, 2)]
    ok = gain >= TARGET_SPEEDUP
    if model == "mobilenet":
        checks.append(ok)
    out["gain"] = {"artifact": best, "gain": gain}
    verdict = ("MET" if ok else "NOT MET") if model == "mobilenet" else "not judged on this model"
    say(f"  target 2nd thread: faster runtime '{best}' t1 {p50[(best, 1)]:.4f} -> t2 {p50[(best, 2)]:.4f} ms "
        f"= {gain:.2f}x; >= {TARGET_SPEEDUP}x: {verdict}")
    return out, all(checks)


def report(configs: list[Config], env: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    lines: list[str] = []
    say = lines.append
    rts = env["runtimes"]
    web = "; ".join(f"{k.rsplit(' ', 1)[0]} {v.get('backend_version')} {k.rsplit(' ', 1)[1]}: "
                    f"{v.get('execution_provider')}" for k, v in rts.items())
    any_env = next(iter(rts.values()), {})
    say(f"browser suite: Chromium {env.get('browser_version')}: {web}; SIMD {any_env.get('simd')}, "
        f"relaxed SIMD {any_env.get('relaxed_simd')}, "
        f"cross-origin isolated {any_env.get('cross_origin_isolated')}; "
        f"WebGPU {(any_env.get('webgpu') or {}).get('note')}; native {_versions()}; {os.cpu_count()} cores")
    say(f"p50 ms per call, batch 1, median of {args.rounds} interleaved rounds of {args.runs} runs after "
        f"{args.warmup} warm-up; calls per browser sample (timer steps are 5 us): "
        f"{', '.join(f'{m} {b}' for m, b in env['blocks'].items())}")
    summary: dict[str, Any] = {"env": env, "models": {}}
    ok_all = True
    for model in dict.fromkeys(c.b.model for c in configs):
        summary["models"][model], ok = model_report(model, configs, say)
        for label, prof in env["profiles"].get(model, []):
            say(profile_line(label, prof))
        ok_all &= ok
    load = os.getloadavg()
    say("")
    say(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print("\n".join(lines), flush=True)
    summary["rounds_ms"] = {f"{c.b.model} {c.name} t{c.threads}": c.rounds for c in configs}
    summary["text"] = lines
    summary["all_targets_met"] = ok_all
    return summary


def _versions() -> str:
    return ", ".join(f"{p} {metadata.version(p)}" for p in ("ai-edge-litert", "onnxruntime"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.browser",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="digits, mobilenet or both (comma list)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="digits CNN training epochs (default 60)")
    parser.add_argument("--out", type=Path, default=None, help="keep models, bundles and results.json here")
    args = parse_args(parser, argv, SMOKE)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    find_chromium()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(reason)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="edgeship-browser-suite-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundles: list[Bundle] = []
        if "digits" in models:
            bundles += digits_bundles(work, args.seed, args.epochs)
        if "mobilenet" in models:
            bundles += mobilenet_bundles(work, args.seed)
        configs, env = measure(bundles, args.rounds, args.runs, args.warmup, profile=not args.smoke)
        summary = report(configs, env, args)
        if args.out:
            (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0 if summary["all_targets_met"] or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
