// edgeship in-browser demo: loads bundle.json + the ONNX model, runs onnxruntime-web (WebAssembly)
// from files in this folder, applies the preprocessing spec of docs/architecture.md exactly, and
// exposes window.edgeship for automation (ready, predict, preprocess, benchmark, evaluate, env).

const boot = window.edgeship._boot;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const OPT_LEVELS = ['disabled', 'basic', 'extended', 'layout', 'all'];
const TYPED = {
  float32: Float32Array, int8: Int8Array, uint8: Uint8Array, int32: Int32Array,
  int64: BigInt64Array, float64: Float64Array,
};

const S = {
  ort: null, bundle: null, session: null, input: null, outputName: null,
  threadsRequested: null, threads: null, opt: 'all', ep: null, placements: null,
  modelSha: null, shaVerified: null, loadMs: null, initMs: null, firstMs: null,
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
  const shape = S.input.shape;
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

/** float32 features (HWC for images) -> the model's layout and dtype, batched. */
function toTensor(batch) {
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
  if (dtype === 'float32') return new S.ort.Tensor('float32', data, shape);
  const q = S.input.quantization;
  if (!q || !(dtype in TYPED)) throw new Error(`input dtype ${dtype} needs quantization parameters in bundle.json`);
  const [lo, hi] = dtype === 'int8' ? [-128, 127] : [0, 255];
  const qd = new TYPED[dtype](data.length);
  for (let i = 0; i < data.length; i++) qd[i] = Math.min(hi, Math.max(lo, Math.round(data[i] / q.scale) + q.zero_point));
  return new S.ort.Tensor(dtype, qd, shape);
}

function toProbabilities(values, nClasses) {
  const out = Array.from(values.slice(0, nClasses), Number);
  const q = S.bundle.output && S.bundle.output.quantization;
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
  const feeds = { [S.input.name]: toTensor(features) };
  const t0 = performance.now();
  const out = await S.session.run(feeds);
  const ms = performance.now() - t0;
  const t = out[S.outputName];
  const k = t.dims[t.dims.length - 1];
  const rows = [];
  for (let b = 0; b < features.length; b++) rows.push(toProbabilities(t.data.subarray(b * k, (b + 1) * k), k));
  return { rows, ms };
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
    probabilities: probs, ms,
  };
}

/** A reusable output tensor, so timed calls skip allocating one (null if shapes are not static). */
function preallocatedFetches() {
  const o = S.bundle.output;
  if (!o || !Array.isArray(o.shape) || o.shape.slice(1).some((d) => !(d > 0))) return null;
  const meta = (S.session.outputMetadata || []).find((m) => m.name === S.outputName);
  const dtype = meta && meta.type in TYPED ? meta.type : 'float32';
  const dims = [1, ...o.shape.slice(1)];
  return { [S.outputName]: new S.ort.Tensor(dtype, new TYPED[dtype](dims.reduce((a, b) => a * b, 1)), dims) };
}

/**
 * Warm-up then `runs` timed samples of batch 1: the raw latencies (ms) and their summary.
 * A sample is one `session.run` (callsPerSample 1) or the mean of callsPerSample back-to-back
 * calls, for models faster than the browser's timer resolution (5 us when isolated).
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
  const feeds = { [S.input.name]: toTensor([x]) };
  const fetches = preallocateOutput ? preallocatedFetches() : null;
  const run = fetches ? () => S.session.run(feeds, fetches) : () => S.session.run(feeds);
  for (let i = 0; i < warmup; i++) await run();
  const lat = new Array(runs);
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    for (let j = 0; j < k; j++) await run();
    lat[i] = (performance.now() - t0) / k;
    if (onProgress && i % 50 === 49) {
      onProgress(i + 1, runs);
      await new Promise((r) => setTimeout(r, 0)); // let the page repaint (not timed)
    }
  }
  const out = {
    latencies_ms: lat,
    summary: summarize(lat, warmup),
    options: { calls_per_sample: k, preallocated_output: Boolean(fetches), batch: 1 },
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
  const free = !Number.isInteger(S.bundle.input.shape[0]) || S.bundle.input.shape[0] < 0;
  const bs = free ? Math.max(1, batchSize) : 1;
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

/** What actually ran: isolation, threads, SIMD, the execution provider, versions, the model. */
function env() {
  return {
    cross_origin_isolated: Boolean(globalThis.crossOriginIsolated),
    threads: S.threads,
    threads_requested: S.threadsRequested,
    hardware_concurrency: navigator.hardwareConcurrency || null,
    simd: simdSupported(),
    execution_provider: S.ep,
    backend: 'wasm',
    node_placements: S.placements,
    graph_optimization_level: S.opt,
    ort_version: S.ort ? S.ort.env.versions.web || S.ort.env.versions.common : null,
    user_agent: navigator.userAgent,
    model: S.bundle ? S.bundle.model.file : null,
    model_sha256: S.modelSha,
    model_sha256_verified: S.shaVerified,
    input: S.input ? { name: S.input.name, shape: S.input.shape, dtype: S.input.dtype, layout: S.input.layout } : null,
    output: S.outputName,
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

// ---------------------------------------------------------------- loading

function readThreads() {
  const q = params.get('threads');
  if (q !== null) {
    const n = Number(q);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new Error(`?threads=${q} is not a whole number from 1 to 64`);
    return n;
  }
  const hc = navigator.hardwareConcurrency || 1;
  return globalThis.crossOriginIsolated ? Math.min(4, hc) : 1;
}

function readOpt() {
  const q = params.get('opt');
  if (q === null) return 'all';
  if (!OPT_LEVELS.includes(q)) throw new Error(`?opt=${q} is not one of ${OPT_LEVELS.join(', ')}`);
  return q;
}

function checkBundle(b) {
  const need = ['model', 'preprocessing', 'input', 'labels'];
  const missing = need.filter((k) => !(k in b));
  if (missing.length) throw new Error(`bundle.json lacks ${missing.join(', ')}; rebuild the bundle`);
  if (!b.model.file) throw new Error('bundle.json has no model.file');
  if (!['image', 'tabular'].includes(b.preprocessing.kind)) {
    throw new Error(`bundle.json preprocessing.kind "${b.preprocessing.kind}" is neither image nor tabular`);
  }
}

function inputLayout(b) {
  const spec = b.input;
  if (spec.layout) return spec.layout;
  const p = b.preprocessing;
  if (p.kind !== 'image' || spec.shape.length !== 4) return 'NC';
  return spec.shape[3] === p.channels ? 'NHWC' : 'NCHW';
}

/** Create the session, capturing ORT's verbose node-placement log to learn the EP that ran. */
async function createSession(ort, bytes, opt) {
  const captured = [];
  const orig = { log: console.log, error: console.error, warn: console.warn };
  const sink = (k) => (...a) => {
    const line = a.join(' ');
    if (/\[V:onnxruntime|\[I:onnxruntime/.test(line)) captured.push(line);
    else orig[k].apply(console, a);
  };
  console.log = sink('log'); console.error = sink('error'); console.warn = sink('warn');
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ['wasm'], graphOptimizationLevel: opt, logSeverityLevel: 0, logVerbosityLevel: 0,
    });
  } finally {
    Object.assign(console, orig);
  }
  const placed = {};
  for (const line of captured) {
    const all = line.match(/All nodes placed on \[(\w+)\]\. Number of nodes: (\d+)/);
    if (all) placed[all[1]] = Number(all[2]);
    const some = line.match(/Node\(s\) placed on \[(\w+)\]\. Number of nodes: (\d+)/);
    if (some) placed[some[1]] = Number(some[2]);
  }
  return { session, placed };
}

async function load() {
  const t0 = performance.now();
  S.threadsRequested = readThreads();
  S.opt = readOpt();
  setStatus('Loading onnxruntime-web…');
  try {
    S.ort = await import('./ort.wasm.min.mjs');
  } catch (e) {
    throw new Error(`could not load onnxruntime-web (ort.wasm.min.mjs): ${e.message}`);
  }
  const ort = S.ort;
  S.bundle = await (await fetchOk('bundle.json', 'the bundle manifest')).json().catch((e) => {
    throw new Error(`bundle.json is not valid JSON: ${e.message}`);
  });
  const b = S.bundle;
  checkBundle(b);
  ort.env.wasm.wasmPaths = new URL('./', location.href).href;
  ort.env.wasm.numThreads = S.threadsRequested;
  ort.env.wasm.proxy = false;

  setStatus('Loading model…');
  const bytes = new Uint8Array(await (await fetchOk(b.model.file, 'the model')).arrayBuffer());
  const want = (b.files && b.files[b.model.file] && b.files[b.model.file].sha256) || b.model.sha256;
  S.modelSha = await sha256Hex(bytes);
  if (S.modelSha && want) {
    if (S.modelSha !== want) {
      throw new Error(`${b.model.file} sha256 is ${S.modelSha.slice(0, 12)}…, bundle.json says ${want.slice(0, 12)}…: the bundle is damaged, rebuild it`);
    }
    S.shaVerified = true;
  } else {
    S.shaVerified = false;
  }

  let created;
  try {
    created = await createSession(ort, bytes, S.opt);
  } catch (e) {
    throw new Error(`onnxruntime-web could not load ${b.model.file}: ${e.message || e}`);
  }
  S.session = created.session;
  const eps = Object.keys(created.placed);
  S.placements = created.placed;
  S.ep = eps.length ? eps.join('+') : 'wasm (CPUExecutionProvider)';
  S.threads = ort.env.wasm.numThreads;

  const names = S.session.inputNames;
  const inName = b.input.name && names.includes(b.input.name) ? b.input.name : names[0];
  if (b.input.name && !names.includes(b.input.name)) {
    throw new Error(`bundle.json names input "${b.input.name}" but the model's inputs are ${names.join(', ')}`);
  }
  S.input = {
    name: inName, shape: b.input.shape.map((d) => (typeof d === 'number' ? d : -1)),
    dtype: b.input.dtype || 'float32', quantization: b.input.quantization || null, layout: inputLayout(b),
  };
  S.outputName = (b.output && b.output.name && S.session.outputNames.includes(b.output.name))
    ? b.output.name : S.session.outputNames[0];
  const p = b.preprocessing;
  S.digitsMode = p.kind === 'image' && p.height === 8 && p.width === 8 && p.channels === 1
    && Array.isArray(p.raw_range) && p.raw_range[0] === 0 && p.raw_range[1] === 16;

  // A fixed benchmark input: the first example if there is one, else the fill/zero input.
  const ex = b.examples && b.examples.x && b.examples.x.length ? b.examples.x[0] : null;
  if (ex !== null) S.benchRaw = ex;
  else if (p.kind === 'tabular') S.benchRaw = {};
  else S.benchRaw = new Array(p.height * p.width * p.channels).fill(p.raw_range ? p.raw_range[0] : 0);
  S.benchInput = preprocess(S.benchRaw);
  S.initMs = performance.now() - t0; // fetch + sha256 check + session creation
  // The first call allocates; keep it out of the user's first timing, but report it.
  S.firstMs = (await runBatch([S.benchInput])).ms;
  S.loadMs = performance.now() - t0;
}

// ---------------------------------------------------------------- UI: results

function showResult(r, truth = null) {
  const ol = $('top3');
  ol.replaceChildren();
  r.top.forEach((t, i) => {
    const li = document.createElement('li');
    li.className = i === 0 ? 'best' : '';
    const pct = (t.probability * 100).toFixed(1);
    li.innerHTML = '<span class="cls"></span><span class="bar"><span></span></span><span class="pct"></span>';
    li.querySelector('.cls').textContent = t.label;
    li.querySelector('.bar > span').style.width = `${Math.max(0, Math.min(100, t.probability * 100))}%`;
    li.querySelector('.pct').textContent = `${pct}%`;
    li.setAttribute('aria-label', `${t.label}: ${pct} percent`);
    ol.append(li);
  });
  let meta = `call: ${fmtMs(r.ms)} ms`;
  if (truth !== null && truth !== undefined) {
    const ok = labelIndex(truth) === r.top[0].index;
    meta += ` · true label: ${labelOf(labelIndex(truth))} ${ok ? '✓' : '✗'}`;
  }
  $('result-meta').textContent = meta;
  $('result-card').dataset.predicted = 'true';
}

function showError(e) {
  $('result-meta').textContent = `error: ${e.message || e}`;
}

// ---------------------------------------------------------------- UI: image input

const draw = { ctx: null, down: false, last: null, cursor: null, penDown: false, dirty: false };

function initCanvas() {
  const c = $('draw');
  draw.ctx = c.getContext('2d', { willReadFrequently: true });
  clearCanvas();
  const pos = (ev) => {
    const r = c.getBoundingClientRect();
    return [(ev.clientX - r.left) * (c.width / r.width), (ev.clientY - r.top) * (c.height / r.height)];
  };
  c.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    c.setPointerCapture?.(ev.pointerId);
    draw.down = true;
    draw.last = pos(ev);
    stroke(draw.last, draw.last);
  });
  c.addEventListener('pointermove', (ev) => {
    if (!draw.down) return;
    const p = pos(ev);
    stroke(draw.last, p);
    draw.last = p;
  });
  const end = () => {
    if (!draw.down) return;
    draw.down = false;
    predictCanvas();
  };
  c.addEventListener('pointerup', end);
  c.addEventListener('pointercancel', end);
  c.addEventListener('keydown', onCanvasKey);
  $('clear').addEventListener('click', () => { clearCanvas(); $('top3').replaceChildren(); $('result-meta').textContent = 'No prediction yet.'; });
  $('upload').addEventListener('change', onUpload);
}

function clearCanvas() {
  const c = $('draw');
  draw.ctx.fillStyle = '#fff';
  draw.ctx.fillRect(0, 0, c.width, c.height);
  draw.dirty = false;
  drawPreview(null);
}

function stroke(a, b) {
  const ctx = draw.ctx;
  ctx.strokeStyle = '#000';
  ctx.lineWidth = $('draw').width / 11;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.beginPath();
  ctx.moveTo(a[0], a[1]);
  ctx.lineTo(b[0], b[1]);
  ctx.stroke();
  draw.dirty = true;
}

function onCanvasKey(ev) {
  const c = $('draw');
  const step = c.width / 20;
  if (!draw.cursor) draw.cursor = [c.width / 2, c.height / 2];
  const moves = { ArrowUp: [0, -step], ArrowDown: [0, step], ArrowLeft: [-step, 0], ArrowRight: [step, 0] };
  if (moves[ev.key]) {
    ev.preventDefault();
    const [dx, dy] = moves[ev.key];
    const next = [Math.min(c.width, Math.max(0, draw.cursor[0] + dx)), Math.min(c.height, Math.max(0, draw.cursor[1] + dy))];
    if (draw.penDown) stroke(draw.cursor, next);
    draw.cursor = next;
  } else if (ev.key === ' ') {
    ev.preventDefault();
    draw.penDown = !draw.penDown;
    if (draw.penDown) stroke(draw.cursor, draw.cursor);
    setStatus(draw.penDown ? 'Pen down (arrows draw)' : 'Pen up', 'ok');
  } else if (ev.key === 'Enter') {
    ev.preventDefault();
    predictCanvas();
  } else if (ev.key === 'Delete' || ev.key === 'Backspace') {
    ev.preventDefault();
    clearCanvas();
  }
}

/** Ink (0..1) per pixel of a canvas: dark-on-light is inverted so ink is always high. */
function inkOf(ctx, w, h) {
  const d = ctx.getImageData(0, 0, w, h).data;
  const ink = new Float32Array(w * h);
  let sum = 0;
  for (let i = 0; i < w * h; i++) {
    const a = d[i * 4 + 3] / 255;
    const lum = (0.299 * d[i * 4] + 0.587 * d[i * 4 + 1] + 0.114 * d[i * 4 + 2]) / 255;
    ink[i] = a * lum + (1 - a); // transparent counts as white paper
    sum += ink[i];
  }
  const lightBackground = sum / (w * h) > 0.5;
  if (lightBackground) for (let i = 0; i < ink.length; i++) ink[i] = 1 - ink[i];
  return ink;
}

/**
 * The way scikit-learn's digits were made (UCI optdigits, NIST preprocessing): the digit is
 * size-normalised into a 32x32 bitmap, then on-pixels are counted in 4x4 blocks -> 8x8 of 0..16.
 */
function digitsFromSource(source, sw, sh) {
  const tmp = document.createElement('canvas');
  tmp.width = sw; tmp.height = sh;
  const tctx = tmp.getContext('2d', { willReadFrequently: true });
  tctx.fillStyle = '#fff';
  tctx.fillRect(0, 0, sw, sh);
  tctx.drawImage(source, 0, 0, sw, sh);
  const ink = inkOf(tctx, sw, sh);
  let [x0, y0, x1, y1] = [sw, sh, -1, -1];
  for (let y = 0; y < sh; y++) for (let x = 0; x < sw; x++) {
    if (ink[y * sw + x] > 0.25) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  const out = new Array(64).fill(0);
  if (x1 < 0) return out;
  // Ink as white-on-black image, crop the bounding box, fit its longer side to 32 px, centre.
  const inkCanvas = document.createElement('canvas');
  inkCanvas.width = sw; inkCanvas.height = sh;
  const ictx = inkCanvas.getContext('2d');
  const img = ictx.createImageData(sw, sh);
  for (let i = 0; i < ink.length; i++) {
    const v = Math.round(ink[i] * 255);
    img.data[i * 4] = v; img.data[i * 4 + 1] = v; img.data[i * 4 + 2] = v; img.data[i * 4 + 3] = 255;
  }
  ictx.putImageData(img, 0, 0);
  const bw = x1 - x0 + 1;
  const bh = y1 - y0 + 1;
  const k = 32 / Math.max(bw, bh);
  const [dw, dh] = [Math.max(1, bw * k), Math.max(1, bh * k)];
  const bmp = document.createElement('canvas');
  bmp.width = 32; bmp.height = 32;
  const bctx = bmp.getContext('2d', { willReadFrequently: true });
  bctx.fillStyle = '#000';
  bctx.fillRect(0, 0, 32, 32);
  bctx.imageSmoothingEnabled = true;
  bctx.imageSmoothingQuality = 'high';
  bctx.drawImage(inkCanvas, x0, y0, bw, bh, (32 - dw) / 2, (32 - dh) / 2, dw, dh);
  const px = bctx.getImageData(0, 0, 32, 32).data;
  for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) {
    if (px[(y * 32 + x) * 4] >= 128) out[(y >> 2) * 8 + (x >> 2)] += 1; // 1-bit bitmap, 4x4 counts
  }
  return out;
}

/** Any other image model: resize to H x W, map 0..255 linearly onto raw_range. */
function rawFromSource(source, sw, sh) {
  const p = imageSpec();
  const tmp = document.createElement('canvas');
  tmp.width = p.width; tmp.height = p.height;
  const ctx = tmp.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, 0, 0, sw, sh, 0, 0, p.width, p.height);
  const d = ctx.getImageData(0, 0, p.width, p.height).data;
  const [lo, hi] = p.raw_range || [0, 255];
  const out = [];
  for (let i = 0; i < p.width * p.height; i++) {
    const rgb = [d[i * 4], d[i * 4 + 1], d[i * 4 + 2]];
    const vals = p.channels === 1 ? [0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]] : rgb.slice(0, p.channels);
    for (const v of vals) out.push(lo + (v / 255) * (hi - lo));
  }
  return out;
}

function rawFromImage(source, sw, sh) {
  return S.digitsMode ? digitsFromSource(source, sw, sh) : rawFromSource(source, sw, sh);
}

function drawPreview(raw) {
  const p = S.bundle ? imageSpec() : { height: 8, width: 8, channels: 1, raw_range: [0, 16] };
  const c = $('preview');
  c.width = p.width; c.height = p.height;
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(p.width, p.height);
  const [lo, hi] = p.raw_range || [0, 255];
  for (let i = 0; i < p.width * p.height; i++) {
    let rgb = [0, 0, 0];
    if (raw) {
      const vals = [];
      for (let ch = 0; ch < p.channels; ch++) vals.push(Number(raw[i * p.channels + ch]));
      rgb = (p.channels === 1 ? [vals[0], vals[0], vals[0]] : vals).map((v) => Math.round(((v - lo) / (hi - lo || 1)) * 255));
    }
    if (S.digitsMode) rgb = rgb.map((v) => 255 - v); // ink dark on paper, as drawn
    img.data.set([...rgb.slice(0, 3), 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
  $('preview-desc').textContent = raw ? `${p.height}×${p.width}, ${lo}–${hi}` : '';
}

/** Show a raw image (e.g. a test example) on the drawing canvas, one block per pixel. */
function paintRaw(flat) {
  const p = imageSpec();
  const c = $('draw');
  clearCanvas();
  const [lo, hi] = p.raw_range || [0, 255];
  const cw = c.width / p.width;
  const ch = c.height / p.height;
  for (let y = 0; y < p.height; y++) for (let x = 0; x < p.width; x++) {
    const i = (y * p.width + x) * p.channels;
    let rgb = [];
    for (let k = 0; k < 3; k++) rgb.push(Math.round(((Number(flat[i + (p.channels === 1 ? 0 : k)]) - lo) / (hi - lo || 1)) * 255));
    if (S.digitsMode) rgb = rgb.map((v) => 255 - v);
    draw.ctx.fillStyle = `rgb(${rgb.join(',')})`;
    draw.ctx.fillRect(Math.floor(x * cw), Math.floor(y * ch), Math.ceil(cw), Math.ceil(ch));
  }
}

async function predictRaw(raw, truth = null) {
  try {
    if (S.bundle.preprocessing.kind === 'image') drawPreview(flatten(raw));
    const r = await predict(raw);
    showResult(r, truth);
    return r;
  } catch (e) {
    showError(e);
    return null;
  }
}

async function predictCanvas() {
  if (!draw.dirty) return;
  const c = $('draw');
  await predictRaw(rawFromImage(c, c.width, c.height));
}

async function onUpload(ev) {
  const file = ev.target.files && ev.target.files[0];
  if (!file) return;
  try {
    const bmp = await createImageBitmap(file);
    const c = $('draw');
    clearCanvas();
    const k = Math.min(c.width / bmp.width, c.height / bmp.height);
    draw.ctx.drawImage(bmp, (c.width - bmp.width * k) / 2, (c.height - bmp.height * k) / 2, bmp.width * k, bmp.height * k);
    draw.dirty = true;
    await predictRaw(rawFromImage(bmp, bmp.width, bmp.height));
  } catch (e) {
    showError(new Error(`could not read ${file.name}: ${e.message || e}`));
  }
}

// ---------------------------------------------------------------- UI: tabular form

function initForm() {
  const cols = S.bundle.preprocessing.columns;
  const box = $('fields');
  box.replaceChildren();
  cols.forEach((c, i) => {
    const id = `f-${i}`;
    const wrap = document.createElement('div');
    wrap.className = 'field';
    const label = document.createElement('label');
    label.htmlFor = id;
    label.textContent = c.name;
    let input;
    if (c.type === 'numeric') {
      input = document.createElement('input');
      input.type = 'number';
      input.step = 'any';
      if (Number.isFinite(c.min)) input.min = c.min;
      if (Number.isFinite(c.max)) input.max = c.max;
      input.placeholder = `fill ${c.fill}`;
      const hint = document.createElement('span');
      hint.className = 'range muted small';
      hint.textContent = Number.isFinite(c.min) && Number.isFinite(c.max) ? `${c.min} – ${c.max}` : '';
      wrap.append(label, input, hint);
    } else {
      input = document.createElement('select');
      const blank = new Option(`(missing → ${c.fill})`, '');
      input.append(blank, ...c.vocabulary.map((v) => new Option(String(v), String(v))));
      wrap.append(label, input);
    }
    input.id = id;
    input.name = c.name;
    input.dataset.col = String(i);
    box.append(wrap);
  });
  resetForm();
  $('tabular-input').addEventListener('submit', (ev) => {
    ev.preventDefault();
    predictRaw(formRow());
  });
  $('reset-form').addEventListener('click', resetForm);
}

function resetForm() {
  S.bundle.preprocessing.columns.forEach((c, i) => { $(`f-${i}`).value = c.fill === null || c.fill === undefined ? '' : String(c.fill); });
}

/** The form as a raw row: empty fields are missing (the spec's fill applies). */
function formRow() {
  const row = {};
  S.bundle.preprocessing.columns.forEach((c, i) => {
    const v = $(`f-${i}`).value;
    row[c.name] = v === '' ? null : c.type === 'numeric' ? Number(v) : v;
  });
  return row;
}

function fillForm(raw) {
  S.bundle.preprocessing.columns.forEach((c, i) => {
    const v = Array.isArray(raw) ? raw[i] : raw[c.name];
    $(`f-${i}`).value = isMissing(v) ? '' : String(v);
  });
}

// ---------------------------------------------------------------- UI: examples, benchmark, env

function initExamples() {
  const ex = S.bundle.examples;
  if (!ex || !ex.x || !ex.x.length) return;
  const sel = $('examples');
  ex.x.forEach((_, i) => {
    const y = ex.y ? ex.y[i] : null;
    sel.append(new Option(`#${i + 1}${y !== null && y !== undefined ? ` (true: ${labelOf(labelIndex(y))})` : ''}`, String(i)));
  });
  $('examples-row').hidden = false;
  sel.addEventListener('change', async () => {
    if (sel.value === '') return;
    const i = Number(sel.value);
    const raw = ex.x[i];
    const truth = ex.y ? ex.y[i] : null;
    if (S.bundle.preprocessing.kind === 'tabular') fillForm(raw);
    else paintRaw(flatten(raw));
    await predictRaw(raw, truth);
  });
}

/** Latency histogram on a log time axis (tails of 100x the median are common in browsers). */
function drawHistogram(lat, summary) {
  const c = $('hist');
  const dpr = window.devicePixelRatio || 1;
  const cssW = c.clientWidth || 560;
  const cssH = c.clientHeight || 200;
  c.width = Math.round(cssW * dpr);
  c.height = Math.round(cssH * dpr);
  const ctx = c.getContext('2d');
  ctx.scale(dpr, dpr);
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue('--fg').trim() || '#222';
  const accent = css.getPropertyValue('--accent').trim() || '#2563eb';
  const muted = css.getPropertyValue('--muted').trim() || '#888';
  ctx.clearRect(0, 0, cssW, cssH);
  const pad = { l: 36, r: 12, t: 40, b: 34 };
  const lo = Math.log10(Math.max(summary.min, 1e-4));
  const hi = Math.max(Math.log10(Math.max(summary.max, 1e-4)), lo + 0.05);
  const W = cssW - pad.l - pad.r;
  const H = cssH - pad.t - pad.b;
  const xOf = (ms) => pad.l + ((Math.log10(Math.max(ms, 1e-4)) - lo) / (hi - lo)) * W;
  const bins = Math.max(10, Math.min(60, Math.round(W / 9)));
  const counts = new Array(bins).fill(0);
  for (const v of lat) {
    const t = (Math.log10(Math.max(v, 1e-4)) - lo) / (hi - lo);
    counts[Math.min(bins - 1, Math.max(0, Math.floor(t * bins)))] += 1;
  }
  const maxC = Math.max(...counts);
  ctx.fillStyle = accent;
  counts.forEach((n, i) => {
    if (!n) return;
    const h = Math.max(1.5, (n / maxC) * H);
    ctx.fillRect(pad.l + (i * W) / bins + 0.5, pad.t + H - h, Math.max(1, W / bins - 1), h);
  });
  ctx.strokeStyle = muted;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(pad.l, pad.t + H + 0.5);
  ctx.lineTo(pad.l + W, pad.t + H + 0.5);
  ctx.stroke();
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = fg;
  // Decade ticks (0.01, 0.1, 1, 10 ms ...) plus the ends.
  ctx.textAlign = 'center';
  for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) {
    const x = xOf(10 ** e);
    ctx.fillRect(x, pad.t + H, 1, 4);
    ctx.textAlign = x > cssW - 24 ? 'right' : x < pad.l + 14 ? 'left' : 'center';
    ctx.fillText(`${10 ** e >= 1 ? 10 ** e : (10 ** e).toFixed(-e)} ms`, x, pad.t + H + 15);
  }
  ctx.save();
  ctx.translate(12, pad.t + H / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText('runs', 0, 0);
  ctx.restore();
  ctx.textAlign = 'right';
  ctx.fillStyle = muted;
  ctx.fillText('log time axis', pad.l + W, cssH - 2);
  let lastX = -Infinity;
  let row = 0;
  for (const [name, v] of [['p50', summary.p50], ['p90', summary.p90], ['p99', summary.p99]]) {
    const x = xOf(v);
    row = x - lastX < 64 ? row + 1 : 0;
    lastX = x;
    ctx.strokeStyle = fg;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(x + 0.5, pad.t - 26 + row * 11 + 3);
    ctx.lineTo(x + 0.5, pad.t + H);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = fg;
    ctx.textAlign = x > pad.l + W - 60 ? 'right' : 'left';
    ctx.fillText(`${name} ${fmtMs(v)}`, x + (ctx.textAlign === 'left' ? 3 : -3), pad.t - 28 + row * 11);
  }
}

function initBenchmark() {
  const redraw = () => { if (S.lastBench) drawHistogram(S.lastBench.latencies_ms, S.lastBench.summary); };
  window.addEventListener('resize', redraw);
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', redraw);
  $('bench-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = $('bench-btn');
    btn.disabled = true;
    btn.textContent = 'Running…';
    $('bench-meta').textContent = 'Warming up…';
    try {
      const warmup = Number($('warmup').value) || 0;
      const runs = Math.max(1, Number($('runs').value) || 1);
      const r = await benchmark({
        warmup, runs, onProgress: (i, n) => { $('bench-meta').textContent = `Run ${i} of ${n}…`; },
      });
      const s = r.summary;
      const tr = document.querySelector('#bench-stats tbody tr');
      tr.replaceChildren(...[s.p50, s.p90, s.p99, s.mean, s.min, s.max].map((v) => {
        const td = document.createElement('td');
        td.textContent = fmtMs(v);
        return td;
      }));
      $('bench-stats').hidden = false;
      S.lastBench = r;
      drawHistogram(r.latencies_ms, s);
      $('bench-meta').textContent = `${s.runs} runs after ${s.warmup} warm-up, batch 1, ${S.threads} thread${S.threads > 1 ? 's' : ''}, ${S.ep}.`;
    } catch (e) {
      $('bench-meta').textContent = `error: ${e.message || e}`;
    } finally {
      btn.disabled = false;
      btn.textContent = 'Benchmark';
    }
  });
}

function renderEnv() {
  const e = env();
  const yes = (v) => (v ? 'yes' : 'no');
  const rows = [
    ['Cross-origin isolated', yes(e.cross_origin_isolated), e.cross_origin_isolated ? 'ok' : 'warn'],
    ['Threads', `${e.threads}${e.threads !== e.threads_requested ? ` (asked ${e.threads_requested})` : ''} of ${e.hardware_concurrency} cores`, ''],
    ['WebAssembly SIMD', yes(e.simd), e.simd ? 'ok' : 'warn'],
    ['Execution provider', e.execution_provider, ''],
    ['Graph optimisation', e.graph_optimization_level, ''],
    ['onnxruntime-web', e.ort_version, ''],
    ['Model', `${e.model} · ${e.input.name} ${JSON.stringify(e.input.shape)} ${e.input.dtype}`, ''],
    ['sha256', e.model_sha256 ? `${e.model_sha256.slice(0, 16)}… ${e.model_sha256_verified ? '✓ verified' : ''}` : 'not checked (needs a secure context)', ''],
    ['Load time', `${fmtMs(e.load_ms)} ms`, ''],
  ];
  const dl = $('env');
  dl.replaceChildren();
  for (const [k, v, cls] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    if (cls) dd.className = cls;
    dl.append(dt, dd);
  }
  const sel = $('threads');
  const opts = new Set([1, 2, 4, e.hardware_concurrency || 1, e.threads]);
  sel.replaceChildren(...[...opts].sort((a, b) => a - b).map((n) => new Option(String(n), String(n))));
  sel.value = String(e.threads_requested);
  $('opt').value = S.opt;
  const reload = (key, value) => {
    const q = new URLSearchParams(location.search);
    q.set(key, value);
    location.search = q.toString();
  };
  sel.addEventListener('change', () => reload('threads', sel.value));
  $('opt').addEventListener('change', () => reload('opt', $('opt').value));
}

// ---------------------------------------------------------------- start

(async () => {
  try {
    await load();
  } catch (e) {
    fail(e.message || String(e));
    return;
  }
  const kind = S.bundle.preprocessing.kind;
  const md = S.bundle.metadata || {};
  const title = md.title || [md.dataset, md.model, md.variant].filter(Boolean).join(' · ') || S.bundle.model.file;
  document.title = `edgeship · ${title}`;
  if (kind === 'image') {
    $('image-input').hidden = false;
    if (!S.digitsMode) $('draw-hint').textContent = 'Draw, or upload an image: it is resized to the model input. Keyboard: arrows move, Space toggles the pen, Enter predicts, Delete clears.';
    initCanvas();
  } else {
    $('tabular-input').hidden = false;
    initForm();
  }
  initExamples();
  initBenchmark();
  renderEnv();
  document.documentElement.dataset.state = 'ready';
  setStatus(`Ready · ${title} · ${S.threads} thread${S.threads > 1 ? 's' : ''}`, 'ok');
  boot.resolve(env());
})();
