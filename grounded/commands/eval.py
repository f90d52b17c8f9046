"""`grounded eval`: the SAM paper's zero-shot evaluations on a data set, models side by side."""

import argparse

EXAMPLES = """examples:
  grounded eval points --data nuclei/ --model mobile_sam --reference --out out/eval-points
  grounded eval points,boxes --data coco/instances_val2017.json --images coco/val2017 --model mobile_sam \\
      --compare runs/finetuned --subset 200 --out out/eval-coco
  grounded eval proposals --data sa1b/ --model mobile_sam --amg points_per_side=32 --limit 20 --out out/props
  grounded eval instances --data lvis_val.json --images coco/ --detections vitdet_results.json --model sam_vit_h --out out/ap
  grounded eval edges --data BSR/ --model mobile_sam --out out/edges
  grounded eval text --data gold_a.json gold_b.json gold_c.json --images metaclip/ --modes grounded,clip \\
      --detector IDEA-Research/grounding-dino-tiny --clip hf-hub:org/clip --model mobile_sam --out out/text
  grounded eval points --data nuclei/ --model mobile_sam --out out/eval-points --resume      # after a kill

data: COCO/LVIS/SA-Co JSON (images next to it, or --images), SA-1B folders, folders with images/ and
labels/ (instance-label PNG/TIFF), BSDS500 (images/ and groundTruth/). output: results.json (every mean
with a 95% bootstrap interval), results.md, PNG plots, records/ (per image, for --resume), errors.jsonl.
"""


def add_cli(sub) -> None:
    from ..device import AUTO_HELP
    from ..eval.datasets import FORMATS
    from ..eval.tasks import TASK_NAMES

    p = sub.add_parser("eval", help="evaluate SAM models on a data set: points, boxes, proposals, instances, edges, text",
                       description="The SAM paper's zero-shot evaluations on any data set, several models and the "
                       "reference implementation side by side.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", metavar="TASK[,TASK...]", help=f"one or more of {', '.join(TASK_NAMES)} (comma-separated)")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="the data set: a JSON file, a folder, or several SA-Co/Gold files (one per annotator)")
    p.add_argument("--images", help="the images folder of a JSON data set (default: beside the JSON, or its images/)")
    p.add_argument("--format", choices=FORMATS, help="the data set's layout (default: detected)")
    p.add_argument("--split", default="test", help="BSDS500 split (default test)")
    p.add_argument("--model", default="mobile_sam", help="SAM checkpoint: known name, file, folder or hub id; "
                   "NAME@bf16 / NAME@fp16 for autocast (default mobile_sam)")
    p.add_argument("--compare", nargs="*", default=[], metavar="MODEL", help="more models, reported beside --model")
    p.add_argument("--reference", action="store_true", help="also run the reference implementation (segment_anything "
                   "for ViT, mobile_sam for MobileSAM) on the same weights")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the evaluation in --out (finished images are kept)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--subset", type=int, help="N images drawn at random (seeded by --seed)")
    p.add_argument("--categories", help="comma-separated category names (or ids) to keep")
    p.add_argument("--seed", type=int, default=0, help="random points, subsets and bootstrap (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the 95%% intervals (0: none)")
    p.add_argument("--clicks", type=int, default=20, help="points: interactive clicks per object (default 20)")
    p.add_argument("--amg", nargs="*", default=[], metavar="KEY=VALUE",
                   help="proposals and text --modes clip: automatic mask generator settings (e.g. points_per_side=16)")
    p.add_argument("--max-proposals", type=int, default=1000, help="proposals kept per image (default 1000)")
    p.add_argument("--detections", help="instances: a COCO results file (image_id, category_id, bbox, score)")
    p.add_argument("--detector", help="instances / text grounded: Grounding DINO hub id or folder")
    p.add_argument("--box-threshold", type=float, default=0.3, help="Grounding DINO box threshold (default 0.3)")
    p.add_argument("--text-threshold", type=float, default=0.25, help="Grounding DINO text threshold (default 0.25)")
    p.add_argument("--modes", default="grounded", help="text: comma-separated modes (grounded, clip, native, sam3; default grounded)")
    p.add_argument("--clip", help="text clip/native: CLIP folder, hf-hub id or transformers folder")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag or checkpoint file")
    p.add_argument("--projection", help="text native: text-prompt projection folder (from `grounded train`)")
    p.add_argument("--sam3", help="text sam3: SAM 3 folder or hub id (e.g. facebook/sam3; the local cache offline)")
    p.add_argument("--score-threshold", nargs="*", default=[], metavar="[MODE=]VALUE",
                   help="text: keep masks scoring at least this (default 0.5, SA-Co's); per mode with MODE=VALUE")
    p.add_argument("--device", default="auto", help=f"{AUTO_HELP} (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _settings(pairs, what: str) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} takes KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _thresholds(values) -> dict:
    out = {}
    for v in values:
        mode, sep, number = v.rpartition("=")
        try:
            out[mode if sep else "*"] = float(number)
        except ValueError:
            raise ValueError(f"--score-threshold takes VALUE or MODE=VALUE, got {v!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..eval import Options, Selection, evaluate, load_dataset, load_segmenters
    from ..eval.tasks import TASK_NAMES

    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise ValueError(f"unknown task {', '.join(unknown) or args.task!r}; tasks: {', '.join(TASK_NAMES)}")
    device = resolve_device(args.device, what="--device")
    selection = Selection(limit=args.limit, subset=args.subset, seed=args.seed, split=args.split,
                          categories=[c.strip() for c in args.categories.split(",")] if args.categories else None)
    options = Options(seed=args.seed, bootstrap=args.bootstrap, clicks=args.clicks, amg=_settings(args.amg, "--amg"),
                      max_proposals=args.max_proposals, detections=args.detections, detector=args.detector,
                      box_threshold=args.box_threshold, text_threshold=args.text_threshold,
                      modes=[m.strip() for m in args.modes.split(",") if m.strip()], clip=args.clip,
                      clip_pretrained=args.clip_pretrained, projection=args.projection, sam3=args.sam3,
                      score_threshold=_thresholds(args.score_threshold), device=device)
    if args.clicks < 1:
        raise ValueError("--clicks must be at least 1")
    dataset = load_dataset(args.data, args.images, args.format, selection)
    segmenters = load_segmenters([args.model, *args.compare], reference=args.reference, device=device)
    run_info = {"data": list(args.data), "images": args.images, "selection": vars(selection)}
    results = evaluate(tasks, dataset, segmenters, args.out, options, resume=args.resume,
                       progress=not args.no_progress, run_info=run_info)
    from ..eval.report import markdown

    print(markdown(results))
    print(f"results: {args.out}/results.json")
    return 0
