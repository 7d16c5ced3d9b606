// LiteRT.js (@litertjs/core) as one of the page's two runtimes: loads litert.mjs from this folder
// (its bare import of @litertjs/wasm-utils resolves through index.html's import map), picks the
// threaded WebAssembly build for 2+ threads when the page is cross-origin isolated, compiles the batch-1 TFLite
// model on the asked accelerator, and offers the runner interface app.js drives.
// LiteRT.js tensors live in WebAssembly memory: every output is .delete()d after reading.

/** Load LiteRT.js and compile `bytes` (the TFLite model) with `threads` threads on `accelerator`. */
export async function loadLitert({ bytes, file, spec, version, threads, accelerator = 'wasm' }) {
  let lrt;
  try {
    lrt = await import('./litert.mjs');
  } catch (e) {
    throw new Error(`could not load LiteRT.js (litert.mjs): ${e.message}`);
  }
  const relaxedSimd = Boolean(await lrt.supportsFeature('relaxedSimd'));
  // One thread: the single-threaded build. The threaded one at numThreads 1 still hands each call
  // to its thread pool, and a profile shows the page's main thread idle for a third of each call.
  const threaded = Boolean(globalThis.crossOriginIsolated) && relaxedSimd && threads > 1;
  try {
    await lrt.loadLiteRt(new URL('./', location.href).href, { threads: threaded });
  } catch (e) {
    throw new Error(`LiteRT.js could not start its WebAssembly: ${e.message || e}`);
  }
  const n = threaded ? threads : 1;
  let model;
  try {
    model = await lrt.loadAndCompile(bytes, { accelerator, cpuOptions: { numThreads: n } });
  } catch (e) {
    throw new Error(`LiteRT.js could not load ${file} on ${accelerator}: ${e.message || e}`);
  }
  const details = model.getInputDetails()[0];
  const dims = Array.from(details.shape);
  if (dims.some((d) => !(d > 0))) {
    throw new Error(`LiteRT.js needs a static input shape; the model's is [${dims.join(', ')}] (re-export the bundle)`);
  }

  async function readOutput(outs) {
    let t = outs[0];
    try {
      if (t.accelerator !== 'wasm') t = await t.moveTo('wasm');
      return t.toTypedArray(); // a copy out of WebAssembly memory already
    } finally {
      for (const o of outs) if (!o.deleted) o.delete();
      if (t !== outs[0] && !t.deleted) t.delete();
    }
  }

  return {
    name: 'litert.js',
    version,
    accelerator,
    threads: n,
    threadedBuild: threaded,
    relaxedSimd,
    executionProvider: `${accelerator === 'wasm' ? 'XNNPACK (WebAssembly)' : accelerator}${threaded ? ', threaded build' : ''}`,
    placements: null,
    inputName: details.name || spec.name,
    outputName: (model.getOutputDetails()[0] || {}).name || null,
    fullyAccelerated: model.isFullyAccelerated,
    staticBatch: dims[0],
    makeInput: (typed, shape) => new lrt.Tensor(typed, shape),
    async run(input) {
      const values = await readOutput(await model.run([input]));
      return { values, k: values.length / (input.type.layout.dimensions[0] || 1) };
    },
    /** A call for timing: run the bound input, read the output back, free it. */
    timedCall(input) {
      return { call: async () => readOutput(await model.run([input])), preallocated: false, release: () => {} };
    },
    release(input) {
      if (input && !input.deleted) input.delete();
    },
  };
}
