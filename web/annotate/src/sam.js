// The page's SAM arithmetic, free of the DOM (tested under Node: test/sam.test.mjs): prompt
// encoding for the exported graphs, the candidate choice, SAM's resize rule, COCO RLE decoding,
// and the hover scheduler that keeps at most one decoder run pending.

// SAM's ResizeLongestSide.get_preprocess_shape: the image's size in the model's square input.
export function preprocessShape(height, width, longSide) {
  const scale = longSide / Math.max(height, width);
  return [Math.floor(height * scale + 0.5), Math.floor(width * scale + 0.5)];
}

// Points [{x, y, label}] (label 1 foreground, 0 background) and an optional box [x0, y0, x1, y1]
// in image pixels -> the graphs' point_coords (1xNx2) and point_labels (1xN): the box's corners
// labelled 2 and 3, or, without a box, one padding point labelled -1 (as SAM's prompt encoder pads).
// SAM 2 (family "sam2") as its predictor: the box's corners first, then the clicks, and the padding
// point after every prompt.
export function encodePrompt(points, box, family = "sam") {
  const coords = [];
  const labels = [];
  const corners = () => {
    coords.push(box[0], box[1], box[2], box[3]);
    labels.push(2, 3);
  };
  if (box && family === "sam2") corners();
  for (const p of points) {
    coords.push(p.x, p.y);
    labels.push(p.label);
  }
  if (box && family !== "sam2") corners();
  if (!box || family === "sam2") {
    coords.push(0, 0);
    labels.push(-1);
  }
  return { coords: Float32Array.from(coords), labels: Float32Array.from(labels), count: labels.length };
}

// The part of the low-res logits (side x side) that covers the image: SAM pads the resized image at
// the bottom and right, SAM 2 stretches it over the whole square. Returns [rows, columns].
export function lowResExtent(height, width, imageSize, side, family = "sam") {
  if (family === "sam2") return [side, side];
  const [ih, iw] = preprocessShape(height, width, imageSize);
  return [Math.max(1, Math.round(ih * side / imageSize)), Math.max(1, Math.round(iw * side / imageSize))];
}

// The server's per-image blob (float32, the manifest's "image_inputs" one after another; SAM's
// manifests, without that list, hold the embedding alone) -> the graph's inputs {name: {data, dims}}.
export function imageInputs(buffer, manifest) {
  const inputs = manifest.image_inputs ?? [{ name: "image_embeddings", shape: manifest.embedding_shape }];
  const all = buffer instanceof Float32Array ? buffer : new Float32Array(buffer);
  const out = {};
  let offset = 0;
  for (const { name, shape } of inputs) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (offset + size > all.length) throw new Error(`the embedding holds ${all.length} values, too few for ${name}`);
    out[name] = { data: all.slice(offset, offset + size), dims: shape };
    offset += size;
  }
  if (offset !== all.length) throw new Error(`the embedding holds ${all.length} values, the graph takes ${offset}`);
  return out;
}

// Which of the four outputs (0 single-mask, 1-3 multimask) a prompt offers: one click alone gives
// the three multimask candidates (SAM's rule for ambiguous prompts), anything else the single mask.
export function candidateOutputs(points, box) {
  return points.length === 1 && !box ? [1, 2, 3] : [0];
}

// The best-scored candidate of `outputs` from the decoder's IoU predictions.
export function bestCandidate(iou, outputs) {
  return outputs.reduce((best, i) => (iou[i] > iou[best] ? i : best), outputs[0]);
}

// COCO compressed RLE ("counts" string, column-major runs starting with zeros) -> Uint8Array HxW
// (row-major), as pycocotools' decode.
export function decodeRle(rle) {
  const [h, w] = rle.size;
  let counts = rle.counts;
  if (typeof counts === "string") {
    const out = [];
    let p = 0;
    while (p < counts.length) {
      let x = 0;
      let k = 0;
      let more = 1;
      while (more) {
        const c = counts.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++;
        k++;
        if (!more && c & 0x10) x |= -1 << (5 * k);
      }
      if (out.length > 2) x += out[out.length - 2];
      out.push(x);
    }
    counts = out;
  }
  const mask = new Uint8Array(h * w);
  let index = 0;
  counts.forEach((run, i) => {
    if (i % 2 === 1) {
      for (let j = index; j < index + run; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    index += run;
  });
  return mask;
}

// Runs `run(request)` for the latest request only: while one run is in flight, newer requests
// replace the one waiting, so at most one is pending however fast the pointer moves.
export class LatestOnly {
  constructor(run) {
    this.run = run;
    this.busy = false;
    this.waiting = null;
    this.started = 0;
  }

  submit(request) {
    if (this.busy) {
      this.waiting = request;
      return;
    }
    this.busy = true;
    this.started++;
    Promise.resolve(this.run(request)).catch(() => {}).finally(() => {
      this.busy = false;
      const next = this.waiting;
      this.waiting = null;
      if (next !== null) this.submit(next);
    });
  }
}
