// Loading the bundle: bundle.json, this bundle's measurements (optional), the runtime to run
// (asked for, recommended by the measurements, or the bundle's default), its model (sha256
// checked) and the runtime itself. A runtime that fails to load is recorded with its error
// and the other one is tried, so the page still runs and says which failed and why.

const OPT_LEVELS = ['disabled', 'basic', 'extended', 'layout', 'all'];
const RUNTIME_KEYS = { ort: 'onnxruntime-web', litert: 'litert.js' };
const ACCELERATORS = ['wasm', 'webgpu'];

function readThreads(params, recommended) {
  const q = params.get('threads');
  let n;
  if (q !== null) {
    n = Number(q);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new Error(`?threads=${q} is not a whole number from 1 to 64`);
  } else if (recommended && recommended.threads) {
    n = recommended.threads;
  } else {
    n = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  }
  if (globalThis.crossOriginIsolated || n === 1) return { n, note: null };
  const why = location.protocol === 'file:'
    ? 'opened from file://'
    : 'the server does not send Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp';
  return { n: 1, note: `threads are off: the page is not cross-origin isolated (${why}); running 1 thread` };
}

function readChoice(params, name, allowed, fallback) {
  const q = params.get(name);
  if (q === null) return fallback;
  if (!allowed.includes(q)) throw new Error(`?${name}=${q} is not one of ${allowed.join(', ')}`);
  return q;
}

function checkBundle(b) {
  const need = ['model', 'preprocessing', 'input', 'labels'];
  const missing = need.filter((k) => !(k in b));
  if (missing.length) throw new Error(`bundle.json lacks ${missing.join(', ')}; rebuild the bundle`);
  if (!['image', 'tabular'].includes(b.preprocessing.kind)) {
    throw new Error(`bundle.json preprocessing.kind "${b.preprocessing.kind}" is neither image nor tabular`);
  }
}

/** bundle.json's runtimes (a bundle made before LiteRT.js has onnxruntime-web only). */
function runtimesOf(b) {
  if (b.runtimes) return b.runtimes;
  return {
    'onnxruntime-web': {
      available: true, model: b.model.file, input: b.input, output: b.output,
      version: b.runtime && b.runtime.version,
    },
  };
}

function inputLayout(spec, p) {
  if (spec.layout) return spec.layout;
  if (p.kind !== 'image' || spec.shape.length !== 4) return 'NC';
  return spec.shape[3] === p.channels ? 'NHWC' : 'NCHW';
}

async function optionalJson(url) {
  try {
    const res = await fetch(url, { cache: 'no-cache' });
    return res.ok ? await res.json() : null;
  } catch {
    return null;
  }
}

/** The runtime to try first and why: asked for, recommended by measurements, or the default. */
function chooseRuntime(params, b, rts, measurements) {
  const q = readChoice(params, 'runtime', Object.keys(RUNTIME_KEYS), null);
  if (q !== null) return { name: RUNTIME_KEYS[q], why: `asked for (?runtime=${q})` };
  // The recommendation is the report's "ship this" rule, applied in Python when the bundle was
  // measured (edgeship.devices.browser.session.bundle_measurements): the page only follows it.
  const rec = measurements && measurements.recommended;
  if (rec && rts[rec.runtime] && rts[rec.runtime].available) {
    const ties = rec.tied_with && rec.tied_with.length ? `; tied with ${rec.tied_with.join(', ')}, ${rec.rule || 'chosen by the report\'s rule'}` : '';
    return { name: rec.runtime, why: `recommended by this bundle's measurements (p50 ${rec.p50_ms} ms at ${rec.threads} thread${rec.threads > 1 ? 's' : ''}, ${measurements.browser || 'browser'}${ties})` };
  }
  const name = b.default_runtime && rts[b.default_runtime] && rts[b.default_runtime].available
    ? b.default_runtime : Object.keys(rts).find((k) => rts[k].available);
  return { name, why: 'default (this bundle has no measurements yet)' };
}

async function loadRuntime(S, app, name, entry) {
  const b = S.bundle;
  const bytes = new Uint8Array(await (await app.fetchOk(entry.model, `the ${name} model`)).arrayBuffer());
  const want = (b.files && b.files[entry.model] && b.files[entry.model].sha256) || entry.sha256;
  const sha = await app.sha256Hex(bytes);
  if (sha && want && sha !== want) {
    throw new Error(`${entry.model} sha256 is ${sha.slice(0, 12)}…, bundle.json says ${want.slice(0, 12)}…: the bundle is damaged, rebuild it`);
  }
  const spec = entry.input;
  const input = {
    name: spec.name, shape: spec.shape.map((d) => (typeof d === 'number' ? d : -1)),
    dtype: spec.dtype || 'float32', quantization: spec.quantization || null, layout: inputLayout(spec, b.preprocessing),
  };
  let runner;
  if (name === 'onnxruntime-web') {
    if (S.accelerator !== 'wasm') throw new Error("onnxruntime-web's WebGPU build is not in this bundle (it adds 28 MB); use ?accelerator=wasm");
    const { loadOrt } = await import('./runtime-ort.js');
    runner = await loadOrt({ bytes, file: entry.model, spec: input, outputSpec: entry.output, threads: S.threadsRequested, opt: S.opt });
  } else {
    if (S.accelerator === 'webgpu' && !S.webgpu.available) throw new Error(`WebGPU is ${S.webgpu.note}`);
    const { loadLitert } = await import('./runtime-litert.js');
    runner = await loadLitert({ bytes, file: entry.model, spec: input, version: entry.version, threads: S.threadsRequested, accelerator: S.accelerator });
  }
  Object.assign(S, { runner, runtime: name, input, output: entry.output, modelFile: entry.model, modelSha: sha, shaVerified: Boolean(sha && want) });
  S.threads = runner.threads;
}

/** Whether WebGPU can run here: navigator.gpu and an adapter (headless Chromium has the first only). */
async function probeWebGpu() {
  if (!navigator.gpu) return { available: false, note: 'not available: this browser has no navigator.gpu' };
  let adapter = null;
  try {
    adapter = await Promise.race([navigator.gpu.requestAdapter(), new Promise((r) => setTimeout(() => r(null), 3000))]);
  } catch {
    adapter = null;
  }
  if (!adapter) return { available: false, note: 'not available: navigator.gpu exists but offers no adapter (no GPU, or GPU disabled)' };
  return { available: true, note: 'available: LiteRT.js runs it with ?accelerator=webgpu' };
}

/** Load the bundle and the first runtime that works; fills `S`. */
export async function load(S, params, app) {
  const t0 = performance.now();
  app.setStatus('Loading bundle…');
  S.bundle = await (await app.fetchOk('bundle.json', 'the bundle manifest')).json().catch((e) => {
    throw new Error(`bundle.json is not valid JSON: ${e.message}`);
  });
  const b = S.bundle;
  checkBundle(b);
  S.measurements = await optionalJson('measurements.json');
  const rts = runtimesOf(b);
  const first = chooseRuntime(params, b, rts, S.measurements);
  const rec = S.measurements && S.measurements.recommended;
  const threads = readThreads(params, rec && rec.runtime === first.name ? rec : null);
  S.threadsRequested = threads.n;
  S.threadsNote = threads.note;
  S.opt = readChoice(params, 'opt', OPT_LEVELS, 'all');
  S.accelerator = readChoice(params, 'accelerator', ACCELERATORS, 'wasm');
  S.webgpu = await probeWebGpu();
  for (const [name, e] of Object.entries(rts)) {
    S.runtimes[name] = e.available ? { status: 'available', reason: null } : { status: 'unavailable', reason: e.reason };
  }
  const order = [first.name, ...Object.keys(rts).filter((k) => k !== first.name)].filter((k) => rts[k] && rts[k].available);
  for (const name of order) {
    app.setStatus(`Loading ${name}…`);
    try {
      await loadRuntime(S, app, name, rts[name]);
      S.runtimes[name] = { status: 'running', reason: null };
      const st = S.runtimes[first.name];
      const why = !st ? 'is not in this bundle' : st.status === 'failed' ? 'failed to load' : 'is unavailable for this model';
      S.runtimeChoice = name === first.name ? first.why : `fallback: ${first.name} ${why}`;
      break;
    } catch (e) {
      S.runtimes[name] = { status: 'failed', reason: e.message || String(e) };
    }
  }
  if (!S.runner) {
    const why = Object.entries(S.runtimes).map(([k, v]) => `${k} ${v.status}: ${v.reason}`).join('; ');
    throw new Error(`no runtime could run this model: ${why}`);
  }
  const p = b.preprocessing;
  S.digitsMode = p.kind === 'image' && p.height === 8 && p.width === 8 && p.channels === 1
    && Array.isArray(p.raw_range) && p.raw_range[0] === 0 && p.raw_range[1] === 16;
  // A fixed benchmark input: the first example if there is one, else the fill/zero input.
  const ex = b.examples && b.examples.x && b.examples.x.length ? b.examples.x[0] : null;
  if (ex !== null) S.benchRaw = ex;
  else if (p.kind === 'tabular') S.benchRaw = {};
  else S.benchRaw = new Array(p.height * p.width * p.channels).fill(p.raw_range ? p.raw_range[0] : 0);
  S.benchInput = app.preprocess(S.benchRaw);
  S.initMs = performance.now() - t0; // fetch + sha256 check + runtime start + model compile
  // The first call allocates; keep it out of the user's first timing, but report it.
  S.firstMs = (await app.runBatch([S.benchInput])).ms;
  S.loadMs = performance.now() - t0;
}
