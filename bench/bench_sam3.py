"""SAM 3 concept segmentation: grounded against transformers' Sam3Model on the same weights, in one run.

    bin/python bench/bench_sam3.py [--phrases 8] [--per-call-runs 8] [--batch-size 4] [--threads N]

The full-size default `Sam3Config` (840M parameters, about 3.4 GB in float32) with random weights
(facebook/sam3 is gated and not here; speed does not depend on the values), one image
(samples/coffee.jpg), N phrases. Three ways to find N phrases on one image:

- transformers, `Sam3Model` called once per phrase with the pixels (the image encoded N times);
- transformers with `vision_embeds`: `get_vision_features` once, then one call per phrase;
- grounded: `Sam3.segment([image], [phrases])`, the image encoded once, the phrases `--batch-size`
  per decoder call: cold (nothing cached) with one phrase and with all N, and warm (the image's
  features cached, the phrases not) with one and with all N.

Each way ends with the instances as its users get them (transformers'
`post_process_instance_segmentation`, grounded's Detections with RLE masks), threshold 0.5. Prints
seconds for the first phrase (encoding included) and per further phrase (grounded: warm N minus
warm 1, over N - 1; transformers: the median call of phrases 2..N), the peak resident memory of each stage
(sampled every 10 ms), and the issue's two goals: grounded's time per further phrase at most 1.1x
transformers' with vision_embeds, and N phrases at least 4x faster than one Sam3Model call per phrase.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHRASES = ["a cup of coffee", "a spoon", "a saucer", "the table", "a person", "a red car", "a dog", "a window",
           "a plant", "a book", "a bottle", "a chair"]


class PeakMemory:
    """The largest resident set of this process while the block runs (GB), sampled every 10 ms."""

    def __enter__(self):
        self.peak, self._stop = resident_gb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_gb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_gb())


def resident_gb() -> float:
    import os

    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def build(seed: int = 0):
    """A random full-size Sam3Model and a Sam3Processor (1008-pixel images, CLIP's tokenizer built offline)."""
    import transformers
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from grounded.testing.tokenizers import clip_tokenizer

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = Sam3Model(Sam3Config()).eval()
    with tempfile.TemporaryDirectory() as folder:
        processor = Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=clip_tokenizer(folder))
    return model, processor


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", type=int, default=8, help="phrases on the image (default 8)")
    parser.add_argument("--per-call-runs", type=int, help="Sam3Model calls with the pixels to time (default: one per "
                        "phrase; fewer are averaged and scaled to all phrases, and the output says so)")
    parser.add_argument("--batch-size", type=int, default=4, help="grounded's phrases per decoder call (default 4)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--image", default=str(REPO / "samples" / "coffee.jpg"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    phrases = (PHRASES * (args.phrases // len(PHRASES) + 1))[:args.phrases]
    per_call_runs = min(args.per_call_runs or args.phrases, args.phrases)

    from grounded.io.image import load_image
    from grounded.sam3 import Sam3

    image = load_image(args.image)
    build_s, (model, processor) = timed(build)
    print(f"built the full-size Sam3Model ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters) in "
          f"{build_s:.0f} s; resident {resident_gb():.2f} GB; image {image.shape[1]}x{image.shape[0]}; "
          f"{args.threads} threads; {len(phrases)} phrases", flush=True)
    sam3 = Sam3(model, processor, name="random full-size", device="cpu")
    rows = {}

    def stage(name, fn):
        with PeakMemory() as memory, torch.no_grad():
            seconds, out = timed(fn)
        rows[name] = (seconds, memory.peak)
        print(f"{name:<60} {seconds:8.2f} s   peak {memory.peak:6.2f} GB", flush=True)
        return out

    def ours(n):
        return sam3.segment([image], [phrases[:n]], threshold=0.5, batch_size=args.batch_size)

    sam3.clear_cache()
    stage("grounded, 1 phrase, cold (encode + 1 phrase)", lambda: ours(1))
    sam3.clear_cache(images=False)
    stage("grounded, 1 phrase, warm (image features cached)", lambda: ours(1))
    sam3.clear_cache(images=False)
    stage(f"grounded, {len(phrases)} phrases in one call, warm", lambda: ours(len(phrases)))
    sam3.clear_cache()
    found = stage(f"grounded, {len(phrases)} phrases in one call, cold", lambda: ours(len(phrases)))

    size = [image.shape[:2]]

    def theirs_embeds():
        vision = stage("transformers: get_vision_features", lambda: model.get_vision_features(
            pixel_values=processor(images=image, return_tensors="pt")["pixel_values"]))
        for k, phrase in enumerate(phrases):
            def one(phrase=phrase):
                tokens = processor(text=phrase, return_tensors="pt")
                out = model(vision_embeds=vision, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                return processor.post_process_instance_segmentation(out, threshold=0.5, target_sizes=size)
            stage(f"transformers with vision_embeds: phrase {k + 1}", one)

    def theirs_per_call(k):
        inputs = processor(images=image, text=phrases[k], return_tensors="pt")
        out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"])
        return processor.post_process_instance_segmentation(out, threshold=0.5, target_sizes=size)

    theirs_embeds()
    for k in range(per_call_runs):
        stage(f"transformers, Sam3Model with the pixels: phrase {k + 1}", lambda k=k: theirs_per_call(k))
    summarize(rows, phrases, per_call_runs, found)


def summarize(rows, phrases, per_call_runs, found) -> None:
    n = len(phrases)
    first = rows["grounded, 1 phrase, cold (encode + 1 phrase)"][0]
    cold = rows[f"grounded, {n} phrases in one call, cold"][0]
    warm = rows[f"grounded, {n} phrases in one call, warm"][0]
    ours_further = (warm - rows["grounded, 1 phrase, warm (image features cached)"][0]) / (n - 1)
    encode = rows["transformers: get_vision_features"][0]
    heads = [rows[f"transformers with vision_embeds: phrase {k + 1}"][0] for k in range(n)]
    theirs_further = statistics.median(heads[1:])
    calls = [rows[f"transformers, Sam3Model with the pixels: phrase {k + 1}"][0] for k in range(per_call_runs)]
    per_call_total = statistics.mean(calls) * n
    peak = {side: max(m for name, (_, m) in rows.items() if name.startswith(side)) for side in ("grounded", "transformers")}
    print()
    print(f"instances found by grounded (threshold 0.5, random weights): {len(found[0])}")
    print(f"first phrase: grounded {first:.2f} s; transformers with vision_embeds {encode + heads[0]:.2f} s "
          f"(encode {encode:.2f} + {heads[0]:.2f})")
    print(f"per further phrase: grounded {ours_further:.2f} s (warm {n} - warm 1, / {n - 1}; warm {n} / {n}: "
          f"{warm / n:.2f} s); transformers with vision_embeds {theirs_further:.2f} s (median of phrases 2-{n})")
    print(f"{n} phrases: grounded {cold:.2f} s; transformers with vision_embeds {encode + sum(heads):.2f} s; "
          f"Sam3Model once per phrase {per_call_total:.2f} s" + ("" if per_call_runs == n else
                                                                 f" (mean of {per_call_runs} calls x {n})"))
    print(f"peak resident memory: grounded stages {peak['grounded']:.2f} GB, transformers stages "
          f"{peak['transformers']:.2f} GB (the model alone is about 3.4 GB)")
    print(f"goal 1, per further phrase <= 1.1x transformers': {ours_further / theirs_further:.2f}x "
          f"({'met' if ours_further <= 1.1 * theirs_further else 'NOT met'})")
    print(f"goal 2, {n} phrases >= 4x faster than Sam3Model per phrase: {per_call_total / cold:.2f}x "
          f"({'met' if per_call_total >= 4 * cold else 'NOT met'})")


if __name__ == "__main__":
    main()
