import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LatestOnly, bestCandidate, candidateOutputs, decodeRle, encodePrompt, imageInputs, lowResExtent, preprocessShape,
} from "../src/sam.js";

test("prompts pad with one -1 point, or end with the box's corners", () => {
  const p = encodePrompt([{ x: 3, y: 4, label: 1 }], null);
  assert.deepEqual(Array.from(p.coords), [3, 4, 0, 0]);
  assert.deepEqual(Array.from(p.labels), [1, -1]);
  const b = encodePrompt([{ x: 3, y: 4, label: 0 }], [1, 2, 5, 6]);
  assert.deepEqual(Array.from(b.labels), [0, 2, 3]);
  assert.equal(b.count, 3);
});

test("SAM 2 prompts: the box's corners first, then the clicks, and always the padding point", () => {
  const p = encodePrompt([{ x: 3, y: 4, label: 1 }], null, "sam2");
  assert.deepEqual(Array.from(p.labels), [1, -1]);
  const b = encodePrompt([{ x: 3, y: 4, label: 0 }], [1, 2, 5, 6], "sam2");
  assert.deepEqual(Array.from(b.coords), [1, 2, 5, 6, 3, 4, 0, 0]);
  assert.deepEqual(Array.from(b.labels), [2, 3, 0, -1]);
  assert.equal(b.count, 4);
});

test("the low-res logits cover the padded image (SAM) or the whole square (SAM 2)", () => {
  assert.deepEqual(lowResExtent(100, 128, 1024, 256), [200, 256]);
  assert.deepEqual(lowResExtent(100, 128, 1024, 256, "sam2"), [256, 256]);
});

test("the server's blob is cut into the graph's per-image inputs by the manifest", () => {
  const blob = Float32Array.from({ length: 2 * 3 + 4 + 2 }, (_, i) => i);
  const manifest = { image_inputs: [{ name: "a", shape: [1, 2, 3] }, { name: "b", shape: [1, 4] }, { name: "c", shape: [2] }] };
  const inputs = imageInputs(blob.buffer, manifest);
  assert.deepEqual(Array.from(inputs.b.data), [6, 7, 8, 9]);
  assert.deepEqual(inputs.c.dims, [2]);
  assert.deepEqual(Object.keys(imageInputs(blob, { embedding_shape: [12] })), ["image_embeddings"]);
  assert.throws(() => imageInputs(blob, { embedding_shape: [11] }), /the graph takes 11/);
  assert.throws(() => imageInputs(blob, { embedding_shape: [13] }), /too few/);
});

test("one click offers the multimask candidates, more prompts the single mask", () => {
  assert.deepEqual(candidateOutputs([{}], null), [1, 2, 3]);
  assert.deepEqual(candidateOutputs([{}, {}], null), [0]);
  assert.deepEqual(candidateOutputs([], [0, 0, 1, 1]), [0]);
  assert.equal(bestCandidate([0.9, 0.1, 0.7, 0.3], [1, 2, 3]), 2);
});

test("resize rule as SAM's", () => {
  assert.deepEqual(preprocessShape(100, 128, 1024), [800, 1024]);
  assert.deepEqual(preprocessShape(6000, 8000, 1024), [768, 1024]);
});

test("COCO RLE strings decode as pycocotools", () => {
  // Column-major runs starting with zeros; the strings are grounded.rle.counts_to_string's (pycocotools').
  const mask = decodeRle({ size: [3, 4], counts: [3, 2, 4, 1, 2] });
  assert.deepEqual(Array.from(mask), [0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(decodeRle({ size: [3, 4], counts: "324ON" })), Array.from(mask));
  const long = decodeRle({ size: [10, 15], counts: "0X13l14" });  // runs 0, 40, 3, 100, 7
  assert.equal(long.reduce((a, b) => a + b, 0), 140);
  assert.equal(long[0], 1);
});

test("the hover scheduler keeps at most one run waiting", async () => {
  const seen = [];
  let release;
  const scheduler = new LatestOnly((r) => {
    seen.push(r);
    return new Promise((resolve) => (release = resolve));
  });
  for (let i = 0; i < 50; i++) scheduler.submit(i);
  assert.equal(scheduler.started, 1);
  release();
  await new Promise((r) => setTimeout(r, 0));
  release();
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(seen, [0, 49]);
  assert.equal(scheduler.started, 2);
});
