// The painter: a canvas of class ids at the model's size, sent to /api/synthesize as an index PNG after each stroke.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const S = {
    info: null, w: 0, h: 0, ids: null, colors: [], cls: 0, tool: "brush", size: 4, seed: 0, styleId: null,
    undo: [], painting: false, last: null, busy: false, dirty: false, version: 0,
  };

  // -- server ---------------------------------------------------------------------------------------------------
  async function api(path, body) {
    const opts = body === undefined ? {} :
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      throw new Error(`cannot reach the painter server (${e.message})`);
    }
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON: reported below */ }
    if (!r.ok) throw new Error((data && data.error) || `HTTP ${r.status} ${r.statusText}`);
    return data;
  }

  function showError(msg) { const el = $("error"); el.textContent = msg; el.hidden = false; }
  function clearError() { const el = $("error"); el.hidden = true; el.textContent = ""; }

  // -- bytes ----------------------------------------------------------------------------------------------------
  function b64ToIds(b64, dtype) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return dtype === "uint16" ? new Uint16Array(bytes.buffer) : bytes;  // little-endian, as the server sends
  }

  function bytesToB64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function fileToB64(file) {
    return new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.onload = () => resolve(String(fr.result).split(",", 2)[1] || "");
      fr.onerror = () => reject(new Error(`cannot read ${file.name}`));
      fr.readAsDataURL(file);
    });
  }

  function checkUpload(file, what) {
    const limit = S.info.max_upload_mb * 1048576;
    if (Math.ceil(file.size / 3) * 4 + 1024 > limit) {
      throw new Error(`${what} ${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the server accepts ` +
        `requests up to ${S.info.max_upload_mb} MB (--max_upload_mb), files up to about ` +
        `${(limit * 0.75 / 1048576).toFixed(1)} MB once base64-encoded`);
    }
  }

  // -- PNG encoding of the id map (8-bit grey, or 16-bit when there are more than 255 classes) -------------------
  const CRC = new Uint32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC[(c ^ bytes[i]) & 255] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }
  async function labelPNG() {
    const { w, h, ids } = S;
    const bits = ids instanceof Uint16Array ? 16 : 8;
    const stride = (w * bits) / 8 + 1;
    const raw = new Uint8Array(stride * h);  // filter byte 0 (none) per row
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = ids[y * w + x];
        if (bits === 8) raw[y * stride + 1 + x] = v;
        else { raw[y * stride + 1 + 2 * x] = v >> 8; raw[y * stride + 2 + 2 * x] = v & 255; }
      }
    }
    const z = new Uint8Array(await new Response(
      new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const ihdr = new Uint8Array(13);
    const dv = new DataView(ihdr.buffer);
    dv.setUint32(0, w); dv.setUint32(4, h); ihdr[8] = bits; ihdr[9] = 0;  // greyscale, deflate, no interlace
    const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr), chunk("IDAT", z),
      chunk("IEND", new Uint8Array(0))];
    const png = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { png.set(p, o); o += p.length; }
    return png;
  }

  // -- canvas ---------------------------------------------------------------------------------------------------
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");

  function render() {
    const img = ctx.createImageData(S.w, S.h);
    const d = img.data;
    for (let i = 0; i < S.ids.length; i++) {
      const c = S.colors[S.ids[i]] || [0, 0, 0];
      d[4 * i] = c[0]; d[4 * i + 1] = c[1]; d[4 * i + 2] = c[2]; d[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function pushUndo() {
    S.undo.push(S.ids.slice());
    if (S.undo.length > 30) S.undo.shift();
  }

  function toCanvas(e) {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * S.w / r.width, (e.clientY - r.top) * S.h / r.height];
  }

  function stamp(cx, cy) {
    const rad = S.size / 2;
    const x0 = Math.floor(cx - rad), x1 = Math.ceil(cx + rad), y0 = Math.floor(cy - rad), y1 = Math.ceil(cy + rad);
    for (let y = Math.max(0, y0); y <= Math.min(S.h - 1, y1); y++) {
      for (let x = Math.max(0, x0); x <= Math.min(S.w - 1, x1); x++) {
        const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy <= rad * rad) S.ids[y * S.w + x] = S.cls;
      }
    }
    const px = Math.floor(cx), py = Math.floor(cy);  // a 1 px brush always paints the pixel under the pointer
    if (px >= 0 && py >= 0 && px < S.w && py < S.h) S.ids[py * S.w + px] = S.cls;
  }

  function line(a, b) {
    const n = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) * 2));
    for (let i = 1; i <= n; i++) stamp(a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n);
  }

  function fill(x, y) {
    x = Math.floor(x); y = Math.floor(y);
    if (x < 0 || y < 0 || x >= S.w || y >= S.h) return false;
    const target = S.ids[y * S.w + x];
    if (target === S.cls) return false;
    const stack = [y * S.w + x];
    while (stack.length) {
      const p = stack.pop();
      if (S.ids[p] !== target) continue;
      S.ids[p] = S.cls;
      const px = p % S.w;
      if (px > 0) stack.push(p - 1);
      if (px < S.w - 1) stack.push(p + 1);
      if (p >= S.w) stack.push(p - S.w);
      if (p < S.w * (S.h - 1)) stack.push(p + S.w);
    }
    return true;
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (!S.ids || e.button !== 0) return;
    const p = toCanvas(e);
    if (S.tool === "fill") {
      const before = S.ids.slice();
      if (fill(p[0], p[1])) { S.undo.push(before); render(); synthesize(); }
      return;
    }
    pushUndo();
    S.painting = true;
    S.last = p;
    canvas.setPointerCapture(e.pointerId);
    stamp(p[0], p[1]);
    render();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!S.painting) return;
    const p = toCanvas(e);
    line(S.last, p);
    S.last = p;
    render();
  });
  const endStroke = () => {
    if (!S.painting) return;
    S.painting = false;
    synthesize();
  };
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  // -- synthesis: one request in flight; changes made meanwhile are sent when it returns ----------------------
  async function synthesize() {
    if (S.busy) { S.dirty = true; return; }
    S.busy = true;
    const out = $("output");
    try {
      do {
        S.dirty = false;
        $("status").textContent = "synthesising…";
        const t = performance.now();
        const body = { labels: bytesToB64(await labelPNG()), seed: S.seed };
        if (S.styleId) body.style_id = S.styleId;
        const res = await api("/api/synthesize", body);
        out.src = "data:image/png;base64," + res.image;
        await out.decode().catch(() => {});
        S.version += 1;
        out.dataset.version = String(S.version);
        $("status").textContent = `synthesis · ${Math.round(performance.now() - t)} ms`;
        clearError();
      } while (S.dirty);
    } catch (e) {
      $("status").textContent = "synthesis failed";
      showError(e.message);
    } finally {
      S.busy = false;
    }
  }

  // -- controls -------------------------------------------------------------------------------------------------
  function selectClass(i) {
    S.cls = i;
    for (const b of $("palette").children) b.setAttribute("aria-checked", String(Number(b.dataset.class) === i));
  }

  function buildPalette() {
    const box = $("palette");
    box.textContent = "";
    for (const c of S.info.classes) {
      const b = document.createElement("button");
      b.type = "button";
      b.setAttribute("role", "radio");
      b.dataset.class = String(c.id);
      b.title = `${c.id}: ${c.name} (${c.color})`;
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = c.color;
      const name = document.createElement("span");
      name.textContent = c.name;
      b.append(sw, name);
      b.addEventListener("click", () => selectClass(c.id));
      box.append(b);
    }
  }

  function setSeed(seed) {
    S.seed = seed;
    $("seed").textContent = S.info.use_vae ? `seed ${seed}` : "";
  }

  function clearStyle() {
    S.styleId = null;
    setSeed(S.seed);
    $("style-current").hidden = true;
    $("style-thumb").removeAttribute("src");
  }

  function setupStyle() {
    const info = S.info;
    $("style-note").textContent = info.style_note;
    $("style-box").disabled = !info.use_vae;
    $("style-file").disabled = !info.has_encoder;
    $("style-upload").hidden = !info.has_encoder;
    $("reroll").addEventListener("click", () => {
      clearStyle();
      setSeed(Math.floor(Math.random() * info.max_seed));
      synthesize();
    });
    $("style-clear").addEventListener("click", () => { clearStyle(); synthesize(); });
    $("style-file").addEventListener("change", async (e) => {
      const f = e.target.files[0];
      e.target.value = "";
      if (!f) return;
      try {
        checkUpload(f, "style image");
        $("status").textContent = "encoding style…";
        const res = await api("/api/style", { image: await fileToB64(f) });
        S.styleId = res.style_id;
        $("seed").textContent = "(style image in use)";
        $("style-thumb").src = URL.createObjectURL(f);
        $("style-current").hidden = false;
        clearError();
        synthesize();
      } catch (err) {
        $("status").textContent = "style upload failed";
        showError(err.message);
      }
    });
  }

  function setupControls() {
    for (const r of document.querySelectorAll('input[name="tool"]')) {
      r.addEventListener("change", () => { if (r.checked) S.tool = r.value; });
    }
    $("brush-size").addEventListener("change", (e) => { S.size = Number(e.target.value); });
    S.size = Number($("brush-size").value);
    const undo = () => {
      if (!S.undo.length) return;
      S.ids = S.undo.pop();
      render();
      synthesize();
    };
    $("undo").addEventListener("click", undo);
    document.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
    });
    $("reset").addEventListener("click", () => {
      pushUndo();
      S.ids = b64ToIds(S.info.default_labels.ids, S.info.default_labels.dtype);
      render();
      synthesize();
    });
    $("save-labels").addEventListener("click", async () => {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([await labelPNG()], { type: "image/png" }));
      a.download = "labels.png";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    });
    $("label-file").addEventListener("change", async (e) => {
      const f = e.target.files[0];
      e.target.value = "";
      if (!f) return;
      try {
        checkUpload(f, "label map");
        const res = await api("/api/labels", { image: await fileToB64(f) });
        pushUndo();
        S.ids = b64ToIds(res.ids, res.dtype);
        render();
        clearError();
        synthesize();
      } catch (err) {
        showError(err.message);
      }
    });
  }

  async function init() {
    try {
      S.info = await api("/api/info");
    } catch (e) {
      showError(e.message);
      return;
    }
    const info = S.info;
    [S.h, S.w] = info.image_size;
    S.colors = info.classes.map((c) => [1, 3, 5].map((k) => parseInt(c.color.slice(k, k + 2), 16)));
    const run = info.source.split("/").filter((p) => p && p !== "checkpoints").pop() || info.source;
    $("model-info").textContent = `${info.model} · ${info.weights} weights · ${run}`;
    $("model-info").title = info.source;
    const scale = Math.max(1, Math.floor(320 / Math.max(S.w, S.h)));  // 5x for 64 px models
    canvas.width = S.w;
    canvas.height = S.h;
    for (const el of [canvas, $("output")]) {
      el.style.width = `${S.w * scale}px`;
      el.style.height = `${S.h * scale}px`;
    }
    S.ids = b64ToIds(info.default_labels.ids, info.default_labels.dtype);
    buildPalette();
    selectClass(S.ids[0] === undefined ? 0 : S.ids[S.ids.length - 1]);
    setupControls();
    setupStyle();
    setSeed(0);
    render();
    synthesize();
  }

  init();
})();
