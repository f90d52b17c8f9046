"""`grounded segment`: masks for one or more images, from point/box prompts or automatically."""

import argparse
import time
from pathlib import Path
from typing import Dict, List

import numpy as np


def add_cli(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images with SAM from points/boxes, or automatically (--auto)",
        description="Segment images with SAM. Prompts are in image pixels. Several --box give several "
        "masks in one decoder call; --point (with at most one --box) gives one mask.",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", default="mobile_sam",
                   help="checkpoint name (see `grounded weights`), file, folder or Hugging Face id (default: mobile_sam)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a point prompt; LABEL 1 = foreground (default), 0 = background")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box prompt")
    p.add_argument("--auto", action="store_true", help="automatic masks over a point grid")
    p.add_argument("--text", help="segment what the text names (--point clicks then correct the result)")
    p.add_argument("--mode", choices=["grounded", "clip", "native"], default="grounded",
                   help="with --text: grounded (Grounding DINO boxes + SAM), clip (automatic masks ranked by CLIP), "
                   "native (SAM's CLIP text prompt; needs --projection) (default grounded)")
    p.add_argument("--detector", default="IDEA-Research/grounding-dino-tiny", help="Grounding DINO for --mode grounded")
    p.add_argument("--box-threshold", type=float, default=0.3, help="Grounding DINO box threshold (default 0.3)")
    p.add_argument("--clip", help="CLIP for --mode clip/native: open_clip folder, 'hf-hub:org/name', architecture name "
                   "(with --clip-pretrained), or transformers CLIPModel folder or hub id")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag or checkpoint file")
    p.add_argument("--projection", help="text-prompt projection folder for --mode native (from `grounded train`)")
    p.add_argument("--points-per-side", type=int, default=32, help="grid size for --auto and --mode clip (default 32)")
    p.add_argument("--crop-n-layers", type=int, default=0, help="crop layers for --auto (default 0)")
    p.add_argument("--min-mask-region-area", type=int, default=0, help="remove small regions/holes (--auto)")
    p.add_argument("--out", default="out/segment", help="output folder (default out/segment)")
    p.add_argument("--format", default="coco,png", help="comma-separated: coco, png, polygons (default coco,png)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision")
    p.add_argument("--encoder-backend", choices=["torch", "onnxruntime", "openvino"], default="torch",
                   help="image encoder runtime (default torch); onnxruntime and openvino, the fastest, run "
                        "MobileSAM's encoder faster on a CPU")
    p.set_defaults(func=run)


def _numbers(text: str, count, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r} must be comma-separated numbers") from None
    if len(values) not in count:
        raise ValueError(f"{what} {text!r} must have {' or '.join(map(str, count))} numbers")
    return values


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..io.image import load_image
    from ..io.masks import write_masks
    from ..io.overlay import overlay
    from ..sam import SamPredictor, from_pretrained

    points = [_numbers(p, (2, 3), "--point") for p in args.point]
    boxes = [_numbers(b, (4,), "--box") for b in args.box]
    if args.text is not None:
        from ..clip.model import check_text

        check_text(args.text, "--text")
        if args.auto or boxes:
            raise ValueError("--text takes --point clicks only (not --box or --auto)")
    if args.text is None and not args.auto and not points and not boxes:
        raise ValueError("give prompts (--point X,Y and/or --box X0,Y0,X1,Y1), --text, or --auto")
    if args.auto and (points or boxes):
        raise ValueError("--auto takes no --point/--box prompts")
    if points and len(boxes) > 1:
        raise ValueError("--point combines with at most one --box (several boxes are separate prompts)")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    start = time.perf_counter()
    model = from_pretrained(args.model, device=args.device, image_encoder_backend=args.encoder_backend)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s")
    predictor = SamPredictor(model, autocast_dtype=dtype)
    generator = None
    if args.auto:
        from ..sam.automatic import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
            min_mask_region_area=args.min_mask_region_area, output_mode="binary_mask",
        )
        generator.predictor.autocast_dtype = dtype
    out = Path(args.out)
    failures = 0
    for path in tqdm(args.images, desc="segment", unit="image"):
        try:
            image = load_image(path)
        except ValueError as err:  # one bad file is reported and skipped
            tqdm.write(f"skipped {path}: {err}")
            failures += 1
            continue
        if args.text is not None:
            records = _text_records(args, image, predictor, points)
        elif generator is not None:
            records = generator.generate(image)
        else:
            predictor.set_image(image)
            records = _prompted_records(predictor, points, boxes)
        stem = Path(path).stem
        written = write_masks(records, image, out, formats=formats, stem=stem)
        overlay_path = out / f"{stem}_overlay.png"
        from PIL import Image

        Image.fromarray(overlay(image, records)).save(overlay_path)
        tqdm.write(f"{path}: {len(records)} masks -> {', '.join(str(p) for p in written + [overlay_path])}")
    return 1 if failures == len(args.images) else 0


def _text_records(args, image, predictor, points) -> List[Dict]:
    """`grounded.text_to_mask.segment_text` in the chosen mode, as mask-generator-style records."""
    from ..text_to_mask import segment_text

    dets = segment_text(image, args.text, mode=args.mode, points=points or None, sam=predictor,
                        detector=args.detector, clip=args.clip, clip_pretrained=args.clip_pretrained,
                        projection=args.projection, box_threshold=args.box_threshold,
                        points_per_side=args.points_per_side, device=args.device)
    records = dets.to_sam_records()
    for record, mask in zip(records, dets.mask):
        record["segmentation"] = mask  # the writers below take boolean masks, as --auto gives them
    return records


def _prompted_records(predictor, points, boxes) -> List[Dict]:
    """The best of SAM's three masks for each prompt, as mask-generator-style records."""
    if points:
        coords = np.array([p[:2] for p in points])[None]
        labels = np.array([p[2] if len(p) == 3 else 1 for p in points])[None]
        box = np.array(boxes[:1]) if boxes else None
        masks, scores, _ = predictor.predict_many(point_coords=coords, point_labels=labels, boxes=box)
    else:
        masks, scores, _ = predictor.predict_many(boxes=np.array(boxes))
    best = scores.argmax(axis=1)
    records = []
    for i, (mask_set, score_set, k) in enumerate(zip(masks, scores, best)):
        mask = mask_set[k]
        ys, xs = np.nonzero(mask)
        bbox = [0, 0, 0, 0] if len(xs) == 0 else [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        records.append({
            "segmentation": mask, "area": int(mask.sum()), "bbox": bbox, "predicted_iou": float(score_set[k]),
            "point_coords": [list(map(float, p[:2])) for p in points] or [list(map(float, boxes[i]))],
        })
    return records
