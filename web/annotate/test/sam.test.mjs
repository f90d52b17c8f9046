import assert from "node:assert/strict";
import { test } from "node:test";

import { LatestOnly, bestCandidate, candidateOutputs, decodeRle, encodePrompt, preprocessShape } from "../src/sam.js";

test("prompts pad with one -1 point, or end with the box's corners", () => {
  const p = encodePrompt([{ x: 3, y: 4, label: 1 }], null);
  assert.deepEqual(Array.from(p.coords), [3, 4, 0, 0]);
  assert.deepEqual(Array.from(p.labels), [1, -1]);
  const b = encodePrompt([{ x: 3, y: 4, label: 0 }], [1, 2, 5, 6]);
  assert.deepEqual(Array.from(b.labels), [0, 2, 3]);
  assert.equal(b.count, 3);
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
