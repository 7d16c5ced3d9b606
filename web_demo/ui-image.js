// The demo page's image input: the drawing canvas (mouse, touch, keyboard), upload, the model
// input preview, and the two ways a picture becomes raw intensities (scikit-learn digits' own
// preprocessing for 8x8 0..16 digits, a plain resize otherwise).

const $ = (id) => document.getElementById(id);
let S; let imageSpec; let flatten; let setStatus; let predictRaw; let showError;

/** Take the app's state and helpers, and ui.js's predictRaw and showError (called by ui.js's
 * startUi; passed in rather than imported, so the two modules do not import each other). */
export function bindImage(app, ui) {
  ({ S, imageSpec, flatten, setStatus } = app);
  ({ predictRaw, showError } = ui);
}

// ---------------------------------------------------------------- UI: image input

const draw = { ctx: null, down: false, last: null, cursor: null, penDown: false, dirty: false };

export function initCanvas() {
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

export function drawPreview(raw) {
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
export function paintRaw(flat) {
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

