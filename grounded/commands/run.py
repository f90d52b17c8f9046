"""`grounded run`: a pipeline spec over images, folders, globs, lists or manifests, resumable;
`grounded nodes`: the nodes a spec can name."""

import argparse

EXAMPLES = """examples:
  grounded run pipelines/auto_masks.yaml samples/ --out out/quickstart
  grounded run auto_masks "photos/**/*.JPG" --out out/photos --set points_per_side=16
  grounded run auto_masks photos/ --out out/photos --resume          # after a crash or kill: finish the rest
  grounded run auto_masks list.txt --out out/x --set segment_auto.model=facebook/sam-vit-huge
  grounded run auto_masks photos/ --out out/x --executor ray                # Ray Data: local Ray, or --ray-address

output folder: coco.json, coco/ID.json, overlays/ID.png (per the spec's writers), manifest.jsonl (one
line per input: status, outputs, notes), errors.jsonl (bad inputs and why), journal.jsonl, run.json
"""


def add_cli(sub) -> None:
    from ..io.image import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "run",
        help="run a pipeline spec (YAML) over images, folders, globs, lists or manifests; resumable",
        description="Run a pipeline spec over data. Every item's results are written atomically and journalled, "
        "so a killed run continues with --resume; bad files are listed in errors.jsonl and skipped.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="a spec file, or the name of one in pipelines/ (e.g. auto_masks)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive, by extension), quoted globs, .txt lists of paths, .jsonl "
                   "manifests (relative paths in a list or manifest are relative to its own folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out (finished items are kept)")
    p.add_argument("--retry-errors", action="store_true", help="with --resume: try the items that failed again")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit with status 1 if any item failed (default: 0; failures are in errors.jsonl)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a spec value: VAR=VALUE (the spec's vars), NODE.PARAM=VALUE or batch_size=N; repeatable")
    p.add_argument("--batch-size", type=int, help="items per batch (default: the spec's batch_size)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images as possible decompression bombs (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ..scale.cli import add_ray_arguments

    add_ray_arguments(p)
    p.set_defaults(func=run)

    n = sub.add_parser("nodes", help="list the pipeline nodes a spec can name: what each reads, writes and takes",
                       description="The built-in pipeline nodes, their fields and parameters.")
    n.add_argument("names", nargs="*", metavar="NODE", help="only these nodes (short names or import paths)")
    n.set_defaults(func=list_nodes)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.runner import run as run_over_data
    from ..pipeline.spec import load_pipeline

    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"batch_size={args.batch_size}")
    pipeline = load_pipeline(args.spec, overrides)
    executor = {}
    if getattr(args, "executor", "local") == "ray":
        from ..scale import run_on_ray as run_over_data
        from ..scale.cli import ray_options

        executor = ray_options(args)
    report = run_over_data(pipeline, args.inputs, args.out, resume=args.resume, retry_errors=args.retry_errors, progress=not args.no_progress,
                           max_pixels=args.max_pixels, spec=pipeline.spec, **executor)
    print(report.summary())
    return 1 if args.fail_on_error and report.errors else 0


def list_nodes(args: argparse.Namespace) -> int:
    from ..nodes import node_class, node_names

    for name in args.names or node_names():
        print(node_class(name).describe())
        print()
    return 0
