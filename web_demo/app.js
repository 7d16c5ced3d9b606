// edgeship in-browser demo: loads bundle.json and one of two runtimes, onnxruntime-web (the ONNX
// model) or LiteRT.js (the batch-1 TFLite model), from files in this folder; applies the
// preprocessing spec of docs/architecture.md exactly, and exposes window.edgeship for automation
// (ready, predict, preprocess, benchmark, evaluate, env). The runtime is ?runtime=ort|litert, else
// the one this bundle's measurements recommend (measurements.json, written by `bench --on browser`),
// else bundle.json's default; if it fails to load the other runs and the page says why.

import { load } from './load.js';
import { startUi } from './ui.js';

const boot = window.edgeship._boot;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const KEY_OF = { 'onnxruntime-web': 'ort', 'litert.js': 'litert' };
const TYPED = { float32: Float32Array, int8: Int8Array, uint8: Uint8Array };

const S = {
  bundle: null, runner: null, runtime: null, runtimeChoice: null, runtimes: {}, input: null, output: null,
  threadsRequested: null, threads: null, threadsNote: null, opt: 'all', accelerator: 'wasm',
  measurements: null, modelSha: null, shaVerified: null, loadMs: null, initMs: null, firstMs: null,
  benchInput: null, benchRaw: null, digitsMode: false, lastBench: null,
};

// ---------------------------------------------------------------- helpers

function fail(message) {
  setStatus('Error', 'error');
  boot.fail(message);
}

function setStatus(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.dataset.kind = kind;
}

async function fetchOk(url, what) {
  let res;
  try {
    res = await fetch(url, { cache: 'no-cache' });
  } catch (e) {
    throw new Error(`could not fetch ${what} (${url}): ${e.message}`);
  }
  if (!res.ok) throw new Error(`could not fetch ${what} (${url}): HTTP ${res.status}`);
  return res;
}

async function sha256Hex(bytes) {
  if (!(globalThis.crypto && crypto.subtle)) return null; // not a secure context: cannot check
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function simdSupported() {
  // The smallest module using a v128 instruction (the same probe onnxruntime-web uses).
  try {
    return WebAssembly.validate(new Uint8Array([
      0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 10, 30, 1, 28, 0, 65, 0, 253, 15, 253, 12,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 186, 1, 26, 11,
    ]));
  } catch {
    return false;
  }
}

/** The smallest step performance.now() takes here (5 us isolated, 100 us otherwise in Chrome). */
function timerResolution() {
  if (S.timerRes === undefined) {
    let best = Infinity;
    let last = performance.now();
    for (let i = 0; i < 20000 && best > 0.0005; i++) {
      const t = performance.now();
      if (t !== last) { best = Math.min(best, t - last); last = t; }
    }
    S.timerRes = Number.isFinite(best) ? Math.round(best * 1e6) / 1e6 : null;
  }
  return S.timerRes;
}

function isMissing(v) {
  return v === null || v === undefined || v === '' || (typeof v === 'number' && Number.isNaN(v));
}

function flatten(raw) {
  if (ArrayBuffer.isView(raw)) return Array.from(raw);
  if (Array.isArray(raw)) return raw.flat(Infinity);
  throw new TypeError('an image input must be an array (flat or nested H x W x C) of raw intensities');
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  return ms < 1 ? ms.toFixed(3) : ms < 10 ? ms.toFixed(2) : ms.toFixed(1);
}

function percentile(sorted, q) {
  // Linear interpolation between closest ranks, as numpy.percentile's default.
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Same keys and method as edge_runtime.timing.summarize_ms (population std, numpy percentiles). */
function summarize(lat, warmup) {
  const s = [...lat].sort((a, b) => a - b);
  const n = s.length;
  const mean = s.reduce((a, b) => a + b, 0) / n;
  const sd = Math.sqrt(s.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
  return {
    runs: n, warmup, mean, std: sd, min: s[0],
    p50: percentile(s, 0.5), p90: percentile(s, 0.9), p95: percentile(s, 0.95), p99: percentile(s, 0.99),
    max: s[n - 1],
  };
}

// ---------------------------------------------------------------- preprocessing (docs/architecture.md)

function imageSpec() {
  return S.bundle.preprocessing;
}

/** Raw intensities (H*W*C, HWC order) -> float32 model input, `(raw * scale - mean[c]) / std[c]`. */
function preprocessImage(raw) {
  const p = imageSpec();
  const [H, W, C] = [p.height, p.width, p.channels];
  const flat = flatten(raw);
  if (flat.length !== H * W * C) {
    throw new RangeError(`image input has ${flat.length} values, the model needs ${H}x${W}x${C} = ${H * W * C}`);
  }
  const out = new Float32Array(H * W * C);
  for (let i = 0; i < out.length; i++) {
    const c = i % C;
    out[i] = (Number(flat[i]) * p.scale - p.mean[c]) / p.std[c];
  }
  return out;
}

/** A raw row (object by column name, or array in column order) -> one-hot/standardised features. */
function preprocessTabular(raw) {
  const cols = S.bundle.preprocessing.columns;
  const get = Array.isArray(raw) ? (c, i) => raw[i] : (c) => raw[c.name];
  if (Array.isArray(raw) && raw.length !== cols.length) {
    throw new RangeError(`a raw row needs ${cols.length} values (${cols.map((c) => c.name).join(', ')}), got ${raw.length}`);
  }
  const out = [];
  cols.forEach((c, i) => {
    let v = get(c, i);
    if (isMissing(v)) v = c.fill;
    if (c.type === 'numeric') {
      const num = Number(v);
      if (!Number.isFinite(num)) throw new TypeError(`column ${c.name}: ${JSON.stringify(v)} is not a number`);
      out.push((num - c.mean) / c.std);
    } else {
      const s = String(v);
      for (const word of c.vocabulary) out.push(String(word) === s ? 1 : 0);
    }
  });
  return Float32Array.from(out);
}

function preprocess(raw) {
  const kind = S.bundle.preprocessing.kind;
  if (kind === 'image') return preprocessImage(raw);
  if (kind === 'tabular') return preprocessTabular(raw);
  throw new Error(`unknown preprocessing kind "${kind}"`);
}

function featureCount() {
  return S.input.shape.slice(1).reduce((a, b) => a * b, 1);
}

/** float32 features (HWC for images) -> the runtime's input: the model's layout and dtype, batched. */
function toInput(batch) {
  const n = batch.length;
  const per = featureCount();
  const shape = [n, ...S.input.shape.slice(1)];
  const data = new Float32Array(n * per);
  batch.forEach((x, b) => {
    if (x.length !== per) throw new RangeError(`input has ${x.length} values, the model needs ${per}`);
    if (S.input.layout === 'NCHW') {
      const [C, H, W] = S.input.shape.slice(1);
      for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) for (let c = 0; c < C; c++) {
        data[b * per + c * H * W + h * W + w] = x[(h * W + w) * C + c];
      }
    } else {
      data.set(x, b * per);
    }
  });
  const dtype = S.input.dtype;
  if (dtype === 'float32') return S.runner.makeInput(data, shape);
  const q = S.input.quantization;
  if (!q || !(dtype in TYPED)) throw new Error(`input dtype ${dtype} needs quantization parameters in bundle.json`);
  const [lo, hi] = dtype === 'int8' ? [-128, 127] : [0, 255];
  const qd = new TYPED[dtype](data.length);
  for (let i = 0; i < data.length; i++) qd[i] = Math.min(hi, Math.max(lo, Math.round(data[i] / q.scale) + q.zero_point));
  return S.runner.makeInput(qd, shape);
}

function toProbabilities(values, nClasses) {
  const out = Array.from(values.slice(0, nClasses), Number);
  const q = S.output && S.output.quantization;
  if (q) for (let i = 0; i < out.length; i++) out[i] = (out[i] - q.zero_point) * q.scale;
  if (S.bundle.output_kind === 'logits') {
    const m = Math.max(...out);
    const e = out.map((v) => Math.exp(v - m));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / z);
  }
  return out;
}

function argmax(a) {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

async function runBatch(features) {
  const input = toInput(features);
  try {
    const t0 = performance.now();
    const { values, k } = await S.runner.run(input);
    const ms = performance.now() - t0;
    const rows = [];
    for (let b = 0; b < features.length; b++) rows.push(toProbabilities(values.subarray(b * k, (b + 1) * k), k));
    return { rows, ms };
  } finally {
    S.runner.release(input);
  }
}

// ---------------------------------------------------------------- public API

function labelOf(i) {
  const labels = S.bundle.labels || [];
  return labels[i] !== undefined ? String(labels[i]) : String(i);
}

function labelIndex(y) {
  if (typeof y === 'number') return y;
  if (typeof y === 'bigint') return Number(y);
  const i = (S.bundle.labels || []).map(String).indexOf(String(y));
  return i >= 0 ? i : Number(y);
}

/** One raw input -> {top: [{index, label, probability}] (3), probabilities, ms}. */
async function predict(rawInput, { preprocessed = false } = {}) {
  await window.edgeship.ready;
  const x = preprocessed ? Float32Array.from(flatten(rawInput)) : preprocess(rawInput);
  const { rows, ms } = await runBatch([x]);
  const probs = rows[0];
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  return {
    top: order.map(([p, i]) => ({ index: i, label: labelOf(i), probability: p })),
    probabilities: probs, ms, runtime: S.runtime, accelerator: S.accelerator,
  };
}

/**
 * Warm-up then `runs` timed samples of batch 1 on the running runtime: the raw latencies (ms)
 * and their summary. A sample is one call (callsPerSample 1) or the mean of callsPerSample
 * back-to-back calls, for models faster than the browser's timer resolution (5 us when isolated).
 */
async function benchmark({
  warmup = 20, runs = 200, input = null, preprocessed = false, callsPerSample = 1,
  preallocateOutput = true, endToEnd = false, onProgress = null,
} = {}) {
  await window.edgeship.ready;
  warmup = Math.max(0, Math.floor(warmup));
  runs = Math.max(1, Math.floor(runs));
  const k = Math.max(1, Math.floor(callsPerSample));
  const x = input === null ? S.benchInput : preprocessed ? Float32Array.from(flatten(input)) : preprocess(input);
  const bound = toInput([x]);
  const timed = S.runner.timedCall(bound, preallocateOutput);
  const run = timed.call;
  const lat = new Array(runs);
  try {
    for (let i = 0; i < warmup; i++) await run();
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      for (let j = 0; j < k; j++) await run();
      lat[i] = (performance.now() - t0) / k;
      if (onProgress && i % 50 === 49) {
        onProgress(i + 1, runs);
        await new Promise((r) => setTimeout(r, 0)); // let the page repaint (not timed)
      }
    }
  } finally {
    S.runner.release(bound);
  }
  const out = {
    latencies_ms: lat,
    summary: summarize(lat, warmup),
    options: { calls_per_sample: k, preallocated_output: timed.preallocated, batch: 1 },
    env: env(),
  };
  if (endToEnd) {
    // What a user's call costs: raw input -> preprocess -> tensor -> run -> probabilities -> top-1.
    const raw = input === null ? S.benchRaw : input;
    const once = async () => {
      const xi = preprocessed ? Float32Array.from(flatten(raw)) : preprocess(raw);
      const { rows } = await runBatch([xi]);
      return argmax(rows[0]);
    };
    for (let i = 0; i < warmup; i++) await once();
    const e2e = new Array(runs);
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await once();
      e2e[i] = performance.now() - t0;
    }
    out.end_to_end_ms = e2e;
    out.end_to_end_summary = summarize(e2e, warmup);
  }
  return out;
}

/** Accuracy and top-1 predictions over many inputs (raw by default, or already preprocessed). */
async function evaluate(xs, ys = null, { preprocessed = false, batchSize = 64, returnProbabilities = false } = {}) {
  await window.edgeship.ready;
  const free = !Number.isInteger(S.input.shape[0]) || S.input.shape[0] < 0;
  const bs = free ? Math.max(1, batchSize) : S.input.shape[0];
  const predictions = [];
  const probabilities = [];
  let ms = 0;
  for (let i = 0; i < xs.length; i += bs) {
    const chunk = xs.slice(i, i + bs).map((x) => (preprocessed ? Float32Array.from(flatten(x)) : preprocess(x)));
    const r = await runBatch(chunk);
    ms += r.ms;
    for (const p of r.rows) {
      predictions.push(argmax(p));
      if (returnProbabilities) probabilities.push(p);
    }
  }
  let correct = null;
  let accuracy = null;
  if (ys) {
    if (ys.length !== xs.length) throw new RangeError(`${xs.length} inputs but ${ys.length} labels`);
    correct = predictions.reduce((a, p, i) => a + (p === labelIndex(ys[i]) ? 1 : 0), 0);
    accuracy = xs.length ? correct / xs.length : null;
  }
  const out = { n: xs.length, accuracy, correct, predictions, batch_size: bs, total_ms: ms };
  if (returnProbabilities) out.probabilities = probabilities;
  return out;
}

/** What actually ran: the runtime and accelerator, isolation, threads, SIMD, versions, the model. */
function env() {
  const r = S.runner;
  const runtimes = {};
  for (const [name, st] of Object.entries(S.runtimes)) runtimes[name] = { key: KEY_OF[name], ...st };
  return {
    runtime: S.runtime,
    runtime_choice: S.runtimeChoice,
    runtimes,
    backend_version: r ? r.version : null,
    accelerator: S.accelerator,
    cross_origin_isolated: Boolean(globalThis.crossOriginIsolated),
    threads: S.threads,
    threads_requested: S.threadsRequested,
    threads_note: S.threadsNote,
    hardware_concurrency: navigator.hardwareConcurrency || null,
    simd: simdSupported(),
    relaxed_simd: r && r.relaxedSimd !== undefined ? r.relaxedSimd : null,
    webgpu: S.webgpu || { available: false, note: 'not probed yet' },
    execution_provider: r ? r.executionProvider : null,
    backend: S.accelerator,
    node_placements: r ? r.placements : null,
    graph_optimization_level: S.runtime === 'onnxruntime-web' ? S.opt : null,
    ort_version: S.runtime === 'onnxruntime-web' && r ? r.version : null,
    user_agent: navigator.userAgent,
    model: S.modelFile,
    model_sha256: S.modelSha,
    model_sha256_verified: S.shaVerified,
    input: S.input ? { name: S.input.name, shape: S.input.shape, dtype: S.input.dtype, layout: S.input.layout } : null,
    output: r ? r.outputName : null,
    load_ms: S.loadMs,
    init_ms: S.initMs,
    first_ms: S.firstMs,
    timer_resolution_ms: timerResolution(),
  };
}

Object.assign(window.edgeship, {
  predict, preprocess: (raw) => Array.from(preprocess(raw)), benchmark, evaluate, env,
});
Object.defineProperty(window.edgeship, 'bundle', { get: () => S.bundle, enumerable: true });

// ---------------------------------------------------------------- start

(async () => {
  try {
    await load(S, params, { fetchOk, sha256Hex, setStatus, preprocess, runBatch });
  } catch (e) {
    fail(e.message || String(e));
    return;
  }
  const md = S.bundle.metadata || {};
  const title = md.title || [md.dataset, md.model, md.variant].filter(Boolean).join(' · ') || S.modelFile;
  document.title = `edgeship · ${title}`;
  startUi({ S, fmtMs, labelOf, labelIndex, flatten, imageSpec, predict, benchmark, env, setStatus, isMissing });
  document.documentElement.dataset.state = 'ready';
  const t = `${S.threads} thread${S.threads > 1 ? 's' : ''}`;
  setStatus(`Ready · ${title} · ${S.runtime} on ${S.accelerator} · ${t}${S.threadsNote ? ' (threads off)' : ''}`, 'ok');
  boot.resolve(env());
})();
