"""SAM speed against the reference implementations, on the same weights, in one run.

    bin/python bench/bench_sam.py [--only encoder_vit_b,encoder_vit_t,decoder] [--repeats N]

Prints one line per case with both timings and the ratio reference/grounded (above 1: grounded is
faster). The sides run alternately, --repeats rounds, and each timing is its median. ViT-B uses
random weights (no official ViT-B checkpoint exists offline here; speed does not depend on the
values); MobileSAM uses the real `mobile_sam.pt`.
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore", category=FutureWarning)  # timm deprecations inside mobile_sam
warnings.filterwarnings("ignore", message="Overwriting tiny_vit")


def timed_alternated(fns, repeats, warmup=1):
    """Median seconds of each function, run in alternating rounds so that every side sees the same
    machine state (back-to-back runs here drift by 10-30% over minutes)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for round_ in range(repeats):
        # Every other round runs the sides in reverse order (ABBA), so that no side always follows the
        # same one: a session's worker threads can still be spinning when the next side starts.
        for name, fn in (list(fns.items()) if round_ % 2 == 0 else list(fns.items())[::-1]):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(runs) for name, runs in times.items()}


def report(name, ref_s, ours_s, extra=""):
    print(f"{name:<44} reference {ref_s:8.3f} s   grounded {ours_s:8.3f} s   ratio {ref_s / ours_s:5.2f}x {extra}", flush=True)


def bench_encoder_vit_b(args):
    from grounded.sam.config import OFFICIAL_CONFIGS
    from grounded.sam.build import build_sam
    from grounded.testing import randomize_
    from reference import reference_sam

    ours = randomize_(build_sam(OFFICIAL_CONFIGS["vit_b"]), seed=0, std=0.02)
    ref = reference_sam(ours.config, ours.state_dict())
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        a, b = ours.image_encoder(x), ref.image_encoder(x)
        err = ((a - b).norm() / b.norm()).item()
        t = timed_alternated({"ref": lambda: ref.image_encoder(x), "ours": lambda: ours.image_encoder(x)}, args.repeats, warmup=0)
    report("ViT-B image encoder, 1x3x1024x1024, fp32", t["ref"], t["ours"], f"(embedding rel. error {err:.1e})")


def _mobile_sam_pair():
    import mobile_sam

    from grounded.sam import from_pretrained

    path = _mobile_sam_path()
    # grounded's PyTorch encoder (the default, image_encoder_backend="auto", is OpenVINO's on a CPU:
    # bench_encoder_vit_t times both)
    return (from_pretrained(path, image_encoder_backend="torch"),
            mobile_sam.sam_model_registry["vit_t"](checkpoint=str(path)).eval())


def _mobile_sam_path():
    from grounded import weights

    return weights.fetch("mobile_sam")


def bench_encoder_vit_t(args):
    import tempfile

    from grounded.sam import from_pretrained
    from grounded.sam.onnx_encoder import use_onnxruntime_encoder, use_openvino_encoder

    ours, ref = _mobile_sam_pair()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = ours.image_encoder(x)
    # grounded's own backends (image_encoder_backend="onnxruntime" / "openvino"), the same call.
    ort_backend, ov_backend = (from_pretrained(_mobile_sam_path(), image_encoder_backend="torch") for _ in range(2))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        use_onnxruntime_encoder(ort_backend, cache_dir=tmp)
        use_openvino_encoder(ov_backend, cache_dir=tmp)
        errors = {name: ((model.image_encoder(x) - expected).norm() / expected.norm()).item()
                  for name, model in (("onnxruntime", ort_backend), ("openvino", ov_backend))}
        ort_run, ort_err = _onnxruntime_session(ref.image_encoder, x, expected, tmp)
        t = timed_alternated({"ref": lambda: ref.image_encoder(x), "ours": lambda: ours.image_encoder(x),
                              "ort": ort_run, "onnxruntime": lambda: ort_backend.image_encoder(x),
                              "openvino": lambda: ov_backend.image_encoder(x)}, args.repeats)
    report("MobileSAM image encoder, 1x3x1024x1024", t["ref"], t["ours"])
    report("MobileSAM image encoder: onnxruntime (same weights)", t["ort"], t["ours"], f"(ORT output rel. error {ort_err:.1e})")
    for name in ("onnxruntime", "openvino"):
        report(f"MobileSAM image encoder: onnxruntime export of the reference vs grounded's {name} backend",
               t["ort"], t[name], f"(backend rel. error {errors[name]:.1e})")


def _onnxruntime_session(module, x, expected, tmp):
    """The same module exported to ONNX (opset 17) and run by onnxruntime on the CPU: what a CPU user
    picks today. Returns a function that runs it on x, and its output's relative error against `expected`."""
    import onnxruntime as ort

    path = f"{tmp}/encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17, input_names=["x"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    out = torch.from_numpy(session.run(None, feed)[0])
    return (lambda: session.run(None, feed)), ((out - expected).norm() / expected.norm()).item()


def bench_decoder(args):
    from mobile_sam import SamPredictor as RefPredictor

    from grounded.sam import SamPredictor, cpu

    ours, ref = _mobile_sam_pair()
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        Path(__file__).resolve().parents[1] / "samples" / "astronaut.jpg").convert("RGB"))
    p_ours, p_ref = SamPredictor(ours), RefPredictor(ref)
    p_ours.set_image(image)
    p_ref.set_image(image)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, (64, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 110, (64, 2))], axis=1)

    def ref_loop():
        for box in boxes:
            p_ref.predict(box=box, multimask_output=True)

    def ref_batched():
        with torch.no_grad():
            tb = p_ref.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), image.shape[:2])
            p_ref.predict_torch(None, None, boxes=tb, multimask_output=True)

    def ours_first_call():  # as on a newly set image: the decoder's per-image products built again
        cpu.clear_cache(ours)
        p_ours.predict_many(boxes=boxes, multimask_output=True)

    def clicks(predictor):  # an annotator's clicks: one box at a time, 16 of them
        for box in boxes[:16]:
            predictor.predict(box=box, multimask_output=True)

    t = timed_alternated({"loop": ref_loop, "batched": ref_batched,
                          "ours": lambda: p_ours.predict_many(boxes=boxes, multimask_output=True),
                          "ours_first": ours_first_call,
                          "ref_clicks": lambda: clicks(p_ref), "ours_clicks": lambda: clicks(p_ours)}, args.repeats)
    report("decoder, 64 boxes: reference loop of predict", t["loop"], t["ours"])
    report("decoder, 64 boxes: reference predict_torch", t["batched"], t["ours"])
    report("decoder, 64 boxes, first call on the image: loop", t["loop"], t["ours_first"])
    report("decoder, 16 single-box predict calls (clicks)", t["ref_clicks"], t["ours_clicks"])


CASES = {"encoder_vit_b": bench_encoder_vit_b, "encoder_vit_t": bench_encoder_vit_t, "decoder": bench_decoder}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    for name in args.only.split(","):
        CASES[name](args)


if __name__ == "__main__":
    main()
