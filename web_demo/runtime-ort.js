// onnxruntime-web as one of the page's two runtimes: loads ort.wasm.min.mjs from this folder,
// creates the session (capturing ORT's verbose log to learn which execution provider ran) and
// offers the runner interface app.js drives (makeInput, run, timedCall, describe).

const TYPED = {
  float32: Float32Array, int8: Int8Array, uint8: Uint8Array, int32: Int32Array,
  int64: BigInt64Array, float64: Float64Array,
};

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

/**
 * Load onnxruntime-web and `bytes` (the ONNX model) with `threads` threads; `spec` is the bundle's
 * input spec for this runtime. Returns the runner.
 */
export async function loadOrt({ bytes, file, spec, outputSpec, threads, opt }) {
  let ort;
  try {
    ort = await import('./ort.wasm.min.mjs');
  } catch (e) {
    throw new Error(`could not load onnxruntime-web (ort.wasm.min.mjs): ${e.message}`);
  }
  ort.env.wasm.wasmPaths = new URL('./', location.href).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false;
  let created;
  try {
    created = await createSession(ort, bytes, opt);
  } catch (e) {
    throw new Error(`onnxruntime-web could not load ${file}: ${e.message || e}`);
  }
  const { session, placed } = created;
  const names = session.inputNames;
  if (spec.name && !names.includes(spec.name)) {
    throw new Error(`bundle.json names input "${spec.name}" but the model's inputs are ${names.join(', ')}`);
  }
  const inputName = spec.name || names[0];
  const outputName = outputSpec && outputSpec.name && session.outputNames.includes(outputSpec.name)
    ? outputSpec.name : session.outputNames[0];
  const eps = Object.keys(placed);

  /** A reusable output tensor, so timed calls skip allocating one (null if shapes are not static). */
  function preallocated() {
    const o = outputSpec;
    if (!o || !Array.isArray(o.shape) || o.shape.slice(1).some((d) => !(d > 0))) return null;
    const meta = (session.outputMetadata || []).find((m) => m.name === outputName);
    const dtype = meta && meta.type in TYPED ? meta.type : 'float32';
    const dims = [1, ...o.shape.slice(1)];
    return { [outputName]: new ort.Tensor(dtype, new TYPED[dtype](dims.reduce((a, b) => a * b, 1)), dims) };
  }

  return {
    name: 'onnxruntime-web',
    version: ort.env.versions.web || ort.env.versions.common,
    accelerator: 'wasm',
    threads: ort.env.wasm.numThreads,
    executionProvider: eps.length ? eps.join('+') : 'wasm (CPUExecutionProvider)',
    placements: placed,
    inputName,
    outputName,
    makeInput: (typed, shape) => ({ [inputName]: new ort.Tensor(spec.dtype || 'float32', typed, shape) }),
    async run(feeds) {
      const out = await session.run(feeds);
      const t = out[outputName];
      return { values: t.data, k: t.dims[t.dims.length - 1] };
    },
    /** A call for timing: the bound input, a preallocated output when `reuseOutput`. */
    timedCall(feeds, reuseOutput = true) {
      const fetches = reuseOutput ? preallocated() : null;
      const call = fetches ? () => session.run(feeds, fetches) : () => session.run(feeds);
      return { call, preallocated: Boolean(fetches), release: () => {} };
    },
    release: () => {},
  };
}
