// The annotation page: SAM's prompt encoder and mask decoder run here with onnxruntime-web (WebAssembly,
// SIMD, threads under cross-origin isolation); the server gives images, embeddings and saves masks.
import * as ort from "./ort/ort.wasm.min.mjs";
import {
  LatestOnly, bestCandidate, candidateOutputs, decodeRle, encodePrompt, imageInputs, lowResExtent, preprocessShape,
} from "./sam.js";

const params = new URLSearchParams(location.search);
ort.env.wasm.wasmPaths = "/static/ort/";
ort.env.wasm.numThreads = self.crossOriginIsolated ? Number(params.get("threads") || Math.min(4, navigator.hardwareConcurrency || 1)) : 1;

const $ = (id) => document.getElementById(id);
const state = {
  info: null, index: 0, version: 0, width: 0, height: 0, annotations: [], scale: 1, embedding: null, products: null,
  points: [], box: null, history: [], result: null, outputs: [0], candidate: 0, started: null, replaces: null,
  selected: null, hover: null, drag: null, lastSaved: 0,
};
const sessions = {};
const hooks = (window.grounded = { ready: false, decoderRuns: 0, timings: [], state, decode: null, error: null });

function status(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Grounded-Token": state.info.token },
  };
  let response = await fetch(path, init);
  if (response.status === 403 && init.method) {  // a restarted server has a new token: take it, once
    state.info.token = (await (await fetch("/api/session")).json()).token;
    init.headers["X-Grounded-Token"] = state.info.token;
    response = await fetch(path, init);
  }
  const value = response.headers.get("Content-Type") === "application/json" ? await response.json() : await response.arrayBuffer();
  if (!response.ok) throw Object.assign(new Error(value.error || response.statusText), { status: response.status, value });
  return value;
}

async function session(name) {
  sessions[name] ??= ort.InferenceSession.create(`/models/${name}.onnx`, { executionProviders: ["wasm"] });
  return sessions[name];
}

const f32 = (data, dims) => new ort.Tensor("float32", data, dims);

const family = () => state.info.manifest.family ?? "sam";

// The decoder on a prompt {points, box, mask (1x256x256 logits or null)} with graph "standard",
// "split" or "int8" -> {logits Float32Array 4x256x256, iou Float32Array 4}. A SAM 2 model has the
// standard graph and its int8 copy only (the manifest's "graphs"), fed the embedding and high-res maps.
async function decode(prompt, graph = $("graph").value) {
  const m = state.info.manifest;
  const { coords, labels, count } = encodePrompt(prompt.points, prompt.box, family());
  const [mh, mw] = m.mask_input_size;
  const available = {
    point_coords: f32(coords, [1, count, 2]), point_labels: f32(labels, [1, count]),
    image_size: f32(Float32Array.from([state.height, state.width]), [2]),
    mask_input: f32(prompt.mask || new Float32Array(mh * mw), [1, 1, mh, mw]),
    has_mask_input: f32(Float32Array.from([prompt.mask ? 1 : 0]), [1]),
  };
  let name = "decoder";
  if (family() === "sam2") {
    for (const [input, { data, dims }] of Object.entries(state.embedding)) available[input] = f32(data, dims);
    if (graph === "int8") name = "decoder_int8";
  } else if (graph === "standard") {
    available.image_embeddings = f32(state.embedding.image_embeddings.data, m.embedding_shape);
  } else {  // the split form: the per-image products, then the per-prompt graph takes what it needs by name
    Object.assign(available, await imageProducts());
    name = prompt.mask ? "prompt_mask" : graph === "int8" ? "prompt_int8" : "prompt";
  }
  const run = await session(name);
  const feeds = Object.fromEntries(run.inputNames.map((input) => [input, available[input]]));
  const start = performance.now();
  const out = await run.run(feeds);
  hooks.timings.push({ graph, ms: performance.now() - start });
  hooks.decoderRuns++;
  return { logits: out.low_res_logits.data, iou: out.iou_predictions.data };
}
hooks.decode = async (prompt, graph) => {
  const r = await decode(prompt, graph);
  return { logits: Array.from(r.logits), iou: Array.from(r.iou) };
};

async function imageProducts() {
  if (!state.products) {
    state.products = await (await session("image_products")).run({ image_embeddings: f32(state.embedding.image_embeddings.data, state.info.manifest.embedding_shape) });
  }
  return state.products;
}

// MobileSAM's encoder in the page: the image resized (long side = the model's size), normalised, padded.
async function encodeInPage(bitmap) {
  const m = state.info.manifest;
  const size = m.image_size;
  const [h, w] = preprocessShape(state.height, state.width, size);
  const canvas = new OffscreenCanvas(w, h);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
  const rgba = canvas.getContext("2d").getImageData(0, 0, w, h).data;
  const input = new Float32Array(3 * size * size);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) {
    input[c * size * size + y * size + x] = (rgba[4 * (y * w + x) + c] - m.pixel_mean[c]) / m.pixel_std[c];
  }
  const start = performance.now();
  const out = await (await session("encoder")).run({ image: f32(input, [1, 3, size, size]) });
  hooks.encoderMs = performance.now() - start;
  return out.embedding.data;
}

async function openImage(index) {
  const images = state.info.images;
  state.index = Math.max(0, Math.min(images.length - 1, index));
  const image = images[state.index];
  Object.assign(state, { embedding: null, products: null, annotations: [], selected: null });
  clearPrompt();
  $("image-name").textContent = image.file_name;
  hooks.ready = false;
  status(`loading ${image.file_name}…`);
  try {
    await loadAnnotations();
    const blob = await (await fetch(`/api/image/${state.index}`)).blob();
    if (blob.type !== "image/png") throw new Error((JSON.parse(await blob.text())).error);
    const bitmap = await createImageBitmap(blob);
    const fit = Math.min(1, 1000 / state.width, 800 / state.height);
    for (const c of [$("image"), $("overlay")]) [c.width, c.height] = [Math.round(state.width * fit), Math.round(state.height * fit)];
    state.scale = $("image").width / state.width;
    $("image").getContext("2d").drawImage(bitmap, 0, 0, $("image").width, $("image").height);
    state.embedding = imageInputs(state.info.embed_in_page ? await encodeInPage(bitmap)
      : await api(`/api/embedding/${state.index}`), state.info.manifest);
    if ($("graph").value !== "standard") await imageProducts();
    status(`ready: ${image.file_name}`);
    state.lastSaved = performance.now();
    hooks.ready = true;
  } catch (err) {
    status(`cannot open ${image.file_name}: ${err.message} (n/p moves on)`, "error");
    hooks.error = err.message;
  }
  showProgress();
  draw();
}

async function loadAnnotations() {
  const saved = await api(`/api/annotations/${state.index}`);
  Object.assign(state, { version: saved.version, annotations: saved.annotations, width: saved.width, height: saved.height });
  for (const a of state.annotations) a.mask = null;
  listMasks();
}

function showProgress() {
  const done = state.info.images.length;
  const proposed = state.annotations.filter((a) => a.prefill).length;
  $("progress").textContent = `${state.index + 1} / ${done} · ${state.annotations.length - proposed} masks`
    + (proposed ? ` · ${proposed} pre-filled to review` : "");
}

function listMasks() {
  // The annotator's own masks, and apart from them (the engine's semi stage) the model's pre-filled
  // proposals, each to accept as it is, correct (its box re-prompts SAM) or delete.
  const own = $("masks"), proposed = $("prefilled");
  own.replaceChildren();
  proposed.replaceChildren();
  for (const a of state.annotations) {
    const item = document.createElement("li");
    item.dataset.id = a.id;
    item.className = a.id === state.selected ? "selected" : "";
    const first = a.prefill ? `<button class="confirm">accept</button> ` : `<button class="relabel">relabel</button> `;
    item.innerHTML = `<span class="label"></span> (${a.area} px) ${first}`
      + `<button class="correct">correct</button> <button class="delete">delete</button>`;
    item.querySelector(".label").textContent = a.prefill ? `${a.label} · IoU ${(a.score ?? 0).toFixed(2)}` : a.label;
    item.querySelector(".label").onclick = () => { state.selected = a.id; listMasks(); draw(); };
    item.querySelector(".delete").onclick = () => change("delete", { id: a.id });
    if (a.prefill) {
      item.querySelector(".confirm").onclick = () => change("confirm", { id: a.id,
        seconds: (performance.now() - state.lastSaved) / 1000 });
    } else {
      item.querySelector(".relabel").onclick = () => change("relabel", { id: a.id, label: $("label").value });
    }
    item.querySelector(".correct").onclick = () => correct(a);
    (a.prefill ? proposed : own).append(item);
  }
  $("prefilled-box").hidden = !state.annotations.some((a) => a.prefill);
  showProgress();
}

async function change(action, body) {
  try {
    const result = await api(`/api/annotations/${state.index}/${action}`, { version: state.version, ...body });
    state.version = result.version;
    state.lastSaved = performance.now();
    status(`${action} saved`);
  } catch (err) {
    status(err.status === 409 ? `conflict: ${err.message}` : `not saved: ${err.message}`, err.status === 409 ? "conflict" : "error");
  }
  await loadAnnotations();
  draw();
}

function correct(annotation) {
  clearPrompt();
  const [x, y, w, h] = annotation.bbox;
  state.box = [x, y, x + w, y + h];
  state.history.push("box");
  state.replaces = annotation.id;
  state.started = performance.now();
  runPrompt();
}

function clearPrompt() {
  Object.assign(state, { points: [], box: null, history: [], result: null, started: null, replaces: null });
  $("candidate").textContent = "–";
}

const scheduler = new LatestOnly(async (request) => {
  const result = await decode(request.prompt);
  if (request.hover && (state.points.length || state.box)) return;  // a click came meanwhile
  state.result = result;
  state.outputs = candidateOutputs(request.prompt.points, request.prompt.box);
  state.candidate = bestCandidate(result.iou, state.outputs);
  showCandidate();
  draw();
});

function runPrompt() {
  if (!state.points.length && !state.box) {
    state.result = null;
    return draw();
  }
  scheduler.submit({ prompt: { points: [...state.points], box: state.box, mask: null } });
}

function showCandidate() {
  const i = state.candidate;
  $("candidate").textContent = `${state.outputs.indexOf(i) + 1}/${state.outputs.length} (IoU ${state.result.iou[i].toFixed(3)})`;
}

function imagePoint(event) {
  const rect = $("overlay").getBoundingClientRect();
  return { x: (event.clientX - rect.left) / state.scale, y: (event.clientY - rect.top) / state.scale };
}

function lowResCanvas(logits, output, color) {
  const side = Math.round(Math.sqrt(logits.length / 4));
  const [h, w] = lowResExtent(state.height, state.width, state.info.manifest.image_size, side, family());
  const canvas = new OffscreenCanvas(w, h);
  const pixels = new ImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (logits[output * side * side + y * side + x] > 0) pixels.data.set(color, 4 * (y * w + x));
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return canvas;
}

function savedMaskCanvas(annotation, color) {
  if (!annotation.mask) {
    const full = decodeRle(annotation.segmentation);
    const [w, h] = [$("overlay").width, $("overlay").height];
    const pixels = new ImageData(w, h);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const source = Math.min(state.height - 1, Math.floor(y / state.scale)) * state.width + Math.min(state.width - 1, Math.floor(x / state.scale));
      if (full[source]) pixels.data.set(color, 4 * (y * w + x));
    }
    annotation.mask = new OffscreenCanvas(w, h);
    annotation.mask.getContext("2d").putImageData(pixels, 0, 0);
  }
  return annotation.mask;
}

function draw() {
  const ctx = $("overlay").getContext("2d");
  const [w, h] = [$("overlay").width, $("overlay").height];
  ctx.clearRect(0, 0, w, h);
  // pre-filled proposals in green, the annotator's masks in blue, the selected one in yellow
  state.annotations.forEach((a) => ctx.drawImage(savedMaskCanvas(a, a.id === state.selected ? [255, 200, 0, 140]
    : a.prefill ? [40, 200, 80, 90] : [0, 160, 255, 90]), 0, 0));
  if (state.result) ctx.drawImage(lowResCanvas(state.result.logits, state.candidate, [255, 40, 120, 120]), 0, 0, w, h);
  for (const p of state.points) {
    ctx.fillStyle = p.label ? "#0c0" : "#d00";
    ctx.beginPath();
    ctx.arc(p.x * state.scale, p.y * state.scale, 4, 0, 2 * Math.PI);
    ctx.fill();
  }
  const box = state.drag?.box || state.box;
  if (box) {
    ctx.strokeStyle = "#ff0";
    ctx.strokeRect(box[0] * state.scale, box[1] * state.scale, (box[2] - box[0]) * state.scale, (box[3] - box[1]) * state.scale);
  }
}

function clamp(p) {
  return { x: Math.max(0, Math.min(state.width, p.x)), y: Math.max(0, Math.min(state.height, p.y)) };
}

function onPointerDown(event) {
  if (!hooks.ready) return;
  state.drag = { start: clamp(imagePoint(event)), screen: [event.clientX, event.clientY], button: event.button, box: null,
    negative: event.shiftKey || event.altKey || event.button === 2 };
}

function onPointerMove(event) {
  if (!hooks.ready) return;
  const p = clamp(imagePoint(event));
  if (state.drag) {
    if (Math.hypot(event.clientX - state.drag.screen[0], event.clientY - state.drag.screen[1]) > 5) {
      const s = state.drag.start;
      state.drag.box = [Math.min(s.x, p.x), Math.min(s.y, p.y), Math.max(s.x, p.x), Math.max(s.y, p.y)];
      draw();
    }
    return;
  }
  if (!state.points.length && !state.box) scheduler.submit({ hover: true, prompt: { points: [{ ...p, label: 1 }], box: null, mask: null } });
}

function onPointerUp(event) {
  const drag = state.drag;
  state.drag = null;
  if (!drag || !hooks.ready) return;
  state.started ??= performance.now();
  if (drag.box) {
    state.box = drag.box;
    state.history.push("box");
  } else {
    const p = drag.start;
    state.points.push({ x: p.x, y: p.y, label: drag.negative ? 0 : 1, t: Math.round(performance.now() - state.started) });
    state.history.push("point");
  }
  runPrompt();
}

function undo() {
  const last = state.history.pop();
  if (last === "point") state.points.pop();
  if (last === "box") state.box = null;
  if (!state.history.length) state.started = null;
  runPrompt();
}

function cycle() {
  if (!state.result) return;
  const i = state.outputs.indexOf(state.candidate);
  state.candidate = state.outputs[(i + 1) % state.outputs.length];
  showCandidate();
  draw();
}

async function accept() {
  if (!state.result || (!state.points.length && !state.box)) return status("nothing to accept: click or drag first", "error");
  const side = Math.round(Math.sqrt(state.result.logits.length / 4));
  const chosen = state.result.logits.slice(state.candidate * side * side, (state.candidate + 1) * side * side);
  const bytes = new Uint8Array(chosen.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  const body = {
    low_res_logits: btoa(binary), label: $("label").value || "object", score: state.result.iou[state.candidate],
    candidate: state.candidate, box: state.box, replaces: state.replaces,
    clicks: state.points.map((p) => [p.x, p.y, p.label, p.t]), seconds: (performance.now() - state.started) / 1000,
  };
  try {
    const saved = await api(`/api/annotations/${state.index}/accept`, { version: state.version, ...body });
    state.version = saved.version;
    state.lastSaved = performance.now();
    clearPrompt();
    status(`saved mask ${saved.annotation.id} (${saved.annotation.label})`);
    await loadAnnotations();
  } catch (err) {
    const conflict = err.status === 409;
    status(conflict ? `conflict: ${err.message}` : `not saved: ${err.message}`, conflict ? "conflict" : "error");
    if (conflict) await loadAnnotations();
  }
  draw();
}

function onKey(event) {
  if (event.target.tagName === "INPUT" && event.key !== "Enter") return;
  const actions = {
    Enter: accept, a: accept, z: undo, Escape: () => { clearPrompt(); draw(); }, c: cycle, Tab: cycle,
    n: () => openImage(state.index + 1), ArrowRight: () => openImage(state.index + 1),
    p: () => openImage(state.index - 1), ArrowLeft: () => openImage(state.index - 1),
    d: () => state.selected !== null && change("delete", { id: state.selected }),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

async function main() {
  state.info = await api("/api/session");
  const graphs = state.info.manifest.graphs;  // (older SAM manifests: all three)
  if (graphs) {
    for (const option of [...$("graph").options]) if (!graphs.includes(option.value)) option.remove();
    if (!graphs.includes($("graph").value)) $("graph").value = "standard";
  }
  if (state.info.stage) $("stage-name").textContent = `${state.info.stage} stage`;
  for (const label of state.info.labels) $("labels").append(Object.assign(document.createElement("option"), { value: label }));
  $("label").value = state.info.labels[0];
  const overlay = $("overlay");
  overlay.addEventListener("pointerdown", onPointerDown);
  overlay.addEventListener("pointermove", onPointerMove);
  overlay.addEventListener("pointerup", onPointerUp);
  overlay.addEventListener("pointerleave", () => { if (!state.points.length && !state.box) { state.result = null; draw(); } });
  overlay.addEventListener("contextmenu", (e) => e.preventDefault());
  document.addEventListener("keydown", onKey);
  $("accept").onclick = accept;
  $("undo").onclick = undo;
  $("clear").onclick = () => { clearPrompt(); draw(); };
  $("cycle").onclick = cycle;
  $("next").onclick = () => openImage(state.index + 1);
  $("prev").onclick = () => openImage(state.index - 1);
  $("graph").onchange = () => { state.products = null; };
  await openImage(0);
}

main().catch((err) => { status(`the page failed to start: ${err.message}`, "error"); hooks.error = err.message; });
