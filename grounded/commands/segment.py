"""`grounded segment`: masks for one or more images, from point/box prompts, a text, or automatically.

A thin front over the same nodes and runner as `grounded run`: the options become a pipeline
(`segment_auto`, `segment_points`, `segment_boxes`, or the text-to-mask nodes, then the writers),
checked before any model loads, and run over the images into `--out` with a manifest, an errors
file and `--resume`. Every image is named by its run id (`coffee`, and `coffee-2` for a second
`coffee.jpg` from another folder), so no output is lost to a name clash."""

import argparse
from typing import Any, Dict, List

FORMATS = ("coco", "png", "polygons", "overlay")

EXAMPLES = """examples:
  grounded segment photo.jpg --point 120,80                     # one click
  grounded segment photo.jpg --box 10,10,200,150 --box 220,40,400,300
  grounded segment photos/*.jpg --auto --format coco,png,polygons
  grounded segment photo.jpg --text "the dog" --point 120,80,0  # text, corrected by a background click
  grounded segment photo.jpg --text "dog. red car." --mode sam3  # SAM 3: every instance of each phrase

output folder (ID = the image's name, -2, -3 for repeats): coco.json (every image) and coco/ID.json,
masks/ID.png (label map) and masks/ID/0000.png ... (png), polygons/ID.json (polygons),
overlays/ID.png, manifest.jsonl, errors.jsonl; a second run into the same folder needs --resume
"""


def add_cli(sub) -> None:
    from ..device import AUTO_HELP

    p = sub.add_parser(
        "segment",
        help="segment images with SAM from points/boxes, a text, or automatically (--auto)",
        description="Segment images with SAM. Prompts are in image pixels. Several --box give several "
        "masks in one decoder call; --point (with at most one --box) gives one mask. An image a prompt does "
        "not fit is reported in errors.jsonl and skipped; the others are written.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files, folders, quoted globs, .txt lists")
    p.add_argument("--model", default="mobile_sam",
                   help="checkpoint name (see `grounded weights`), file, folder or Hugging Face id (default: mobile_sam)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a point prompt; LABEL 1 = foreground (default), 0 = background")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box prompt")
    p.add_argument("--auto", action="store_true", help="automatic masks over a point grid")
    p.add_argument("--text", help="segment what the text names (--point clicks then correct the result)")
    p.add_argument("--mode", choices=["grounded", "clip", "native", "sam3"], default="grounded",
                   help="with --text: grounded (Grounding DINO boxes + SAM), clip (automatic masks ranked by CLIP), "
                   "native (SAM's CLIP text prompt; needs --projection), sam3 (SAM 3 concept segmentation: every "
                   "instance of each phrase; clicks go to SAM 3's tracker) (default grounded)")
    p.add_argument("--sam3", default="facebook/sam3",
                   help="SAM 3 for --mode sam3: hub id (the local Hugging Face cache offline; gated) or folder "
                   "(default facebook/sam3)")
    p.add_argument("--sam3-threshold", type=float, default=0.5,
                   help="SAM 3 score (query x presence probability) to keep an instance (default 0.5)")
    p.add_argument("--detector", default="IDEA-Research/grounding-dino-tiny",
                   help="Grounding DINO for --mode grounded (default IDEA-Research/grounding-dino-tiny)")
    p.add_argument("--box-threshold", type=float, default=0.3, help="Grounding DINO box threshold (default 0.3)")
    p.add_argument("--clip", help="CLIP for --mode clip/native: open_clip folder, 'hf-hub:org/name', architecture name "
                   "(with --clip-pretrained), or transformers CLIPModel folder or hub id")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag or checkpoint file")
    p.add_argument("--projection", help="text-prompt projection folder for --mode native (from `grounded train`)")
    p.add_argument("--points-per-side", type=int, default=32, help="grid size for --auto and --mode clip (default 32)")
    p.add_argument("--crop-n-layers", type=int, default=0, help="crop layers for --auto (default 0)")
    p.add_argument("--min-mask-region-area", type=int, default=0,
                   help="remove small regions/holes, in pixels (--auto; default 0: keep all)")
    p.add_argument("--out", default="out/segment", help="output folder (default out/segment)")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out (finished images are kept)")
    p.add_argument("--format", default="coco,png",
                   help=f"comma-separated, of {', '.join(FORMATS)} (default coco,png; overlays are always written)")
    p.add_argument("--device", default="auto", help=f"{AUTO_HELP} (default auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision (default fp32)")
    p.add_argument("--encoder-backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="image encoder runtime (default auto: the fastest installed for the model on the device, "
                        "openvino for MobileSAM on a CPU, torch for the ViTs and on GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _numbers(text: str, count, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r} must be comma-separated numbers") from None
    if len(values) not in count:
        raise ValueError(f"{what} {text!r} must have {' or '.join(map(str, count))} numbers")
    return values


def _points(texts: List[str]) -> List[List[float]]:
    points = [_numbers(p, (2, 3), "--point") for p in texts]
    for text, point in zip(texts, points):
        if len(point) == 3 and point[2] not in (0, 1):
            raise ValueError(f"--point {text!r}: LABEL is 1 (foreground) or 0 (background)")
    return [p[:2] + [int(p[2]) if len(p) == 3 else 1] for p in points]


def parse_formats(text: str) -> List[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format {text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'no format'}; "
                         f"choose from {', '.join(FORMATS)}")
    return formats


def build_pipeline(args: argparse.Namespace):
    """The pipeline the options describe, every option checked (nothing is loaded here)."""
    from ..device import resolve_device
    from ..pipeline import Pipeline

    formats = parse_formats(args.format)
    points = _points(args.point)
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
    sam = dict(model=args.model, device=resolve_device(args.device, what="--device"), dtype=args.dtype,
               encoder_backend=args.encoder_backend)
    return Pipeline(_model_nodes(args, sam, points, boxes) + _writers(formats), name="segment",
                    description="grounded segment")


def _model_nodes(args: argparse.Namespace, sam: Dict[str, Any], points: List, boxes: List) -> List:
    from ..nodes.segment import SegmentAuto, SegmentBoxes, SegmentPoints

    if args.text is not None:
        return _text_nodes(args, sam, points)
    if args.auto:
        return [SegmentAuto(**sam, points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
                            min_mask_region_area=args.min_mask_region_area)]
    if points:  # the points are one prompt, with the box if there is one: the best of SAM's three masks
        return [SegmentPoints(**sam, points=[points], box=boxes[0] if boxes else None)]
    return [SegmentBoxes(**sam, boxes=boxes, multimask=True)]


def _text_nodes(args: argparse.Namespace, sam: Dict[str, Any], points: List) -> List:
    """`grounded.text_to_mask.segment_text`'s steps, as the nodes of pipelines/text_to_mask*.yaml."""
    from ..nodes.text_to_mask import RefinePoints, SegmentTextNative

    clicks = points or None
    if args.mode == "sam3":
        from ..nodes.sam3 import SegmentConcepts

        return [SegmentConcepts(model=args.sam3, device=sam["device"], dtype=sam["dtype"], text=args.text,
                                threshold=args.sam3_threshold, points=clicks)]
    if args.mode in ("clip", "native") and args.clip is None:
        raise ValueError(f"--mode {args.mode} needs --clip (an open_clip folder, 'hf-hub:org/name', an architecture "
                         "name with --clip-pretrained, or a transformers CLIPModel folder or hub id)")
    if args.mode == "native":
        return [SegmentTextNative(**sam, clip=args.clip, clip_pretrained=args.clip_pretrained,
                                  projection=args.projection, text=args.text, points=clicks)]
    if args.mode == "clip":
        from ..nodes.clip import ClipScore
        from ..nodes.segment import SegmentAuto

        found = [SegmentAuto(**sam, points_per_side=args.points_per_side),
                 ClipScore(model=args.clip, pretrained=args.clip_pretrained, text=args.text, top_k=1,
                           device=sam["device"])]
    else:
        from ..nodes.detect import Detect
        from ..nodes.segment import SegmentBoxes

        found = [Detect(model=args.detector, prompt=args.text, box_threshold=args.box_threshold, device=sam["device"]),
                 SegmentBoxes(**sam)]
    return found + [RefinePoints(**sam, points=clicks)]


def _writers(formats: List[str]) -> List:
    from ..nodes.export import WriteCoco, WriteMasks, WriteOverlays, WritePolygons

    writers = []
    if "coco" in formats:
        writers.append(WriteCoco())
    if "png" in formats:
        writers += [WriteMasks(style="label"), WriteMasks(node_id="write_mask_pngs", style="binary")]
    if "polygons" in formats:
        writers.append(WritePolygons())
    return writers + [WriteOverlays()]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io.results import read_jsonl
    from ..pipeline.runner import MANIFEST
    from ..pipeline.runner import run as run_over_data

    pipeline = build_pipeline(args)
    report = run_over_data(pipeline, args.images, args.out, resume=args.resume, progress=not args.no_progress)
    out = Path(args.out)
    for row in read_jsonl(out / MANIFEST):
        if row["status"] == "ok":
            files = ", ".join(str(out / rel) for rel in row["outputs"].values())
            print(f"{row['source']}: {row.get('detections', 0)} masks -> {files}")
    print(report.summary())
    return 0 if report.ok else 1
