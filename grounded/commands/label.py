"""`grounded label DIR --out OUT [--text "dog. cat."] [--segmenter sam3]`: the auto-labelling
pipeline (pipelines/auto_label.yaml, or auto_label_sam3.yaml: SAM 3 segments the tags, no
detector) in one short command; everything `grounded run` takes works here too."""

import argparse

EXAMPLES = """examples:
  grounded label photos/ --out out/labels                        # classes from each image's caption
  grounded label photos/ --out out/labels --text "dog. cat."     # only dogs and cats (named in the caption)
  grounded label photos/ --out out/labels --resume --executor ray
  grounded label photos/ --out out/labels --segmenter sam3       # SAM 3 segments every tag, no detector

output folder: coco.json (RLE masks, categories = tags, captions on the image records), yolo/ (labels/*.txt,
images/, data.yaml), json/ID.json, overlays/ID.png, manifest.jsonl, errors.jsonl
"""


def add_cli(sub) -> None:
    from ..io.image import DEFAULT_MAX_PIXELS
    from ..scale.cli import add_ray_arguments

    p = sub.add_parser(
        "label", help="auto-label images: caption -> tags -> Grounding DINO boxes -> SAM masks -> COCO, YOLO, JSON",
        description="Label every image: BLIP captions it, the caption's tags are found by Grounding DINO and "
        "segmented by SAM; writes COCO (RLE), YOLO segmentation, per-image JSON and overlays. Resumable.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, quoted globs, .txt lists, .jsonl manifests (relative "
                   "paths in a list or manifest are relative to its own folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text", help='your classes, separated by ".", e.g. "dog. cat." (default: whatever the captions name)')
    p.add_argument("--segmenter", choices=("sam", "sam3"), default="sam",
                   help="sam: Grounding DINO boxes -> SAM masks (auto_label.yaml, default); sam3: SAM 3 finds and "
                   "segments every instance of each tag (auto_label_sam3.yaml; --set sam3=... names the model)")
    p.add_argument("--vocabulary-mode", choices=("replace", "filter"), default="replace",
                   help="with --text: replace the built-in tag list with your classes (default), or filter it to them")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out")
    p.add_argument("--retry-errors", action="store_true", help="with --resume: try the items that failed again")
    p.add_argument("--fail-on-error", action="store_true", help="exit with status 1 if any item failed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a value of pipelines/auto_label.yaml (e.g. sam=..., box_threshold=0.3, detect.size=640)")
    p.add_argument("--batch-size", type=int, help="items per batch")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_arguments(p)
    p.set_defaults(func=label)


def vocabulary_overrides(text: str, mode: str) -> list:
    """--text "dog. cat." -> the spec's vocabulary and vocabulary_mode as --set values."""
    import json

    classes = [c.strip() for c in text.replace(",", ".").split(".") if c.strip()]
    if not classes:
        raise ValueError(f'--text {text!r} names no class; write classes separated by ".", e.g. --text "dog. cat."')
    # Your classes are the categories too, in your order: ids stay the same from run to run.
    return [f"vocabulary={json.dumps(classes)}", f"vocabulary_mode={mode}", f"write_coco.categories={json.dumps(classes)}",
            f"write_yolo.names={json.dumps(classes)}"]


def label(args: argparse.Namespace) -> int:
    from ..pipeline.spec import load_pipeline

    overrides = vocabulary_overrides(args.text, args.vocabulary_mode) if args.text else []
    overrides += list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"batch_size={args.batch_size}")
    pipeline = load_pipeline("auto_label_sam3" if args.segmenter == "sam3" else "auto_label", overrides)
    options = {}
    if args.executor == "ray":
        from ..scale import run_on_ray as run_over_data
        from ..scale.cli import ray_options

        options = ray_options(args)
    else:
        from ..pipeline.runner import run as run_over_data
    report = run_over_data(pipeline, args.inputs, args.out, resume=args.resume, retry_errors=args.retry_errors,
                           progress=not args.no_progress, max_pixels=args.max_pixels, spec=pipeline.spec, **options)
    print(report.summary())
    return 1 if args.fail_on_error and report.errors else 0
