// The demo page's interface: drawing canvas and upload (images), the form (tables), test
// examples, the benchmark card with its histogram, and the environment card with the runtime,
// thread and accelerator selectors. app.js owns the state and the runtimes; startUi gets them.

import { bindImage, drawPreview, initCanvas, paintRaw } from './ui-image.js';

const $ = (id) => document.getElementById(id);
let S; let fmtMs; let labelOf; let labelIndex; let flatten; let imageSpec; let predict; let benchmark;
let env; let setStatus; let isMissing;

/** Wire the page to the loaded app (state and functions from app.js). */
export function startUi(app) {
  ({ S, fmtMs, labelOf, labelIndex, flatten, imageSpec, predict, benchmark, env, setStatus, isMissing } = app);
  bindImage(app, { predictRaw, showError });
  if (S.bundle.preprocessing.kind === 'image') {
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

export function showError(e) {
  $('result-meta').textContent = `error: ${e.message || e}`;
}

export async function predictRaw(raw, truth = null) {
  try {
    window.edgeship.lastRaw = raw; // what the page fed the model last (tests compare with native)
    if (S.bundle.preprocessing.kind === 'image') drawPreview(flatten(raw));
    const r = await predict(raw);
    showResult(r, truth);
    return r;
  } catch (e) {
    showError(e);
    return null;
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
      $('bench-meta').textContent = `${s.runs} runs after ${s.warmup} warm-up, batch 1, ${S.threads} thread${S.threads > 1 ? 's' : ''}, ${S.runner.name} ${S.runner.version} on ${S.runner.accelerator} (${S.runner.executionProvider}).`;
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
  const others = Object.entries(e.runtimes).filter(([k]) => k !== e.runtime)
    .map(([k, v]) => `${k}: ${v.status}${v.reason ? ` (${v.reason})` : ''}`);
  const rows = [
    ['Runtime', `${e.runtime} ${e.backend_version || ''} · ${e.runtime_choice}`, 'ok'],
    ['Accelerator', `${e.accelerator} · ${e.execution_provider}`, ''],
    ['Other runtime', others.join('; ') || 'none in this bundle', others.some((o) => /failed/.test(o)) ? 'warn' : ''],
    ['Cross-origin isolated', yes(e.cross_origin_isolated), e.cross_origin_isolated ? 'ok' : 'warn'],
    ['Threads', `${e.threads}${e.threads !== e.threads_requested ? ` (asked ${e.threads_requested})` : ''} of ${e.hardware_concurrency} cores${e.threads_note ? ` · ${e.threads_note}` : ''}`, e.threads_note ? 'warn' : ''],
    ['WebAssembly SIMD', `${yes(e.simd)} · relaxed SIMD ${yes(e.relaxed_simd)}`, e.simd ? 'ok' : 'warn'],
    ['WebGPU', e.webgpu.note, ''],
    ['Graph optimisation', e.runtime === 'onnxruntime-web' ? e.graph_optimization_level : 'n/a (LiteRT.js)', ''],
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
  const rt = $('runtime');
  rt.replaceChildren(...Object.entries(e.runtimes).map(([k, v]) => {
    const o = new Option(`${k}${v.status === 'running' ? '' : ` (${v.status})`}`, v.key);
    o.disabled = v.status === 'unavailable';
    return o;
  }));
  rt.value = e.runtimes[e.runtime].key;
  $('accelerator').value = e.accelerator;
  $('opt').value = S.opt;
  const reload = (key, value) => {
    const q = new URLSearchParams(location.search);
    q.set(key, value);
    location.search = q.toString();
  };
  sel.addEventListener('change', () => reload('threads', sel.value));
  rt.addEventListener('change', () => reload('runtime', rt.value));
  $('accelerator').addEventListener('change', () => reload('accelerator', $('accelerator').value));
  $('opt').addEventListener('change', () => reload('opt', $('opt').value));
}
