"""`grounded engine`: the data engine over a folder of images (grounded/engine/).

  grounded engine init images/ --out proj --coco existing.json --heldout img_07.png
  grounded engine round proj --stage manual --take 10          # the annotation page on 10 images
  grounded engine round proj --finish                          # that round's labels done: fine-tune, judge
  grounded engine round proj --stage semi --take 10 --truth truth.json   # the simulated annotator
  grounded engine round proj --stage semi --prefill text --categories "nucleus,cell"   # Grounding DINO + SAM pre-fill
  grounded engine round proj --stage auto                      # automatic masks on the rest
  grounded engine round proj                                   # resumes a killed round
  grounded engine status proj
  grounded engine export-ls proj --round 3 --out tasks.json     # Label Studio tasks (brush RLE)
  grounded engine import-ls proj tasks_reviewed.json            # the reviewed tasks as a new round
"""

import argparse

from ..engine.project import TEXT_PREFILL


def add_cli(sub) -> None:
    p = sub.add_parser("engine", help="the data engine: label a folder in rounds (manual, semi, auto), fine-tuning between",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="engine_command", metavar="STEP", required=True)

    i = commands.add_parser("init", help="start a project over a folder of images")
    i.add_argument("data", help="folder of images")
    i.add_argument("--out", required=True, help="the project folder (new)")
    i.add_argument("--coco", help="masks some images already have (COCO, RLE or polygons)")
    i.add_argument("--heldout", nargs="+", default=None, metavar="IMAGE",
                   help="held-out images (file names; their masks come from --coco): never trained on, every model measured on them")
    i.add_argument("--heldout-fraction", type=float, default=0.0,
                   help="instead of --heldout: this fraction of the images with masks, drawn with --seed")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--model", default="mobile_sam", help="the starting SAM, SAM 2 / 2.1 or SAM 3 (a name, file or folder; default mobile_sam)")
    i.add_argument("--steps", type=int, help="fine-tuning steps per seed (default 20)")
    i.add_argument("--seeds", type=seed_list, help="comma-separated fine-tuning seeds, at least 3 (default 0,1,2)")
    i.add_argument("--points-per-side", type=int, help="automatic-mask grid for the semi and auto stages (default 32, the paper's)")
    i.set_defaults(func=run_init)

    r = commands.add_parser("round", help="run (or resume) a round")
    r.add_argument("project")
    r.add_argument("--stage", choices=["manual", "semi", "auto"], help="a new round's stage (an unfinished round resumes without it)")
    r.add_argument("--take", type=int, help="label the first N unlabelled images (default: all of them)")
    r.add_argument("--images", nargs="+", help="label these unlabelled images (file names)")
    r.add_argument("--truth", help="ground truth (COCO): the simulated annotator labels manual/semi rounds from it; "
                   "auto rounds are scored against it (COCOeval AP)")
    r.add_argument("--finish", action="store_true", help="the page's labelling of the round is done: build the dataset, fine-tune, judge")
    r.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune after the round (default: after manual and semi rounds)")
    r.add_argument("--crops", action="store_true", help="auto stage: add the paper's zoomed-in crop layer")
    r.add_argument("--prefill", choices=["auto", "text"], default=None,
                   help="semi stage: what the model pre-fills: auto (automatic masks above the semi thresholds; the "
                   "default) or text (masks of --categories: a detector + the round's SAM, or SAM 3's concept "
                   "segmentation when the model in force is SAM 3)")
    r.add_argument("--categories", help='--prefill text: the named categories, comma-separated (e.g. "nucleus,cell"); '
                   "each mask is labelled with its category")
    r.add_argument("--detector", help="--prefill text: Grounding DINO, a transformers hub id or folder "
                   f"(default {TEXT_PREFILL['detector']})")
    r.add_argument("--box-threshold", type=float,
                   help=f"--prefill text: detector box score to keep a box (default {TEXT_PREFILL['box_threshold']})")
    r.add_argument("--text-threshold", type=float,
                   help=f"--prefill text: detector token score (default {TEXT_PREFILL['text_threshold']})")
    r.add_argument("--detector-size", type=int,
                   help=f"--prefill text: the detector's shortest image side (default {TEXT_PREFILL['detector_size']})")
    r.add_argument("--prefill-iou", type=float,
                   help=f"--prefill text: SAM's predicted IoU to keep a mask (default {TEXT_PREFILL['pred_iou_thresh']})")
    r.add_argument("--sam3-threshold", type=float,
                   help=f"--prefill text with a SAM 3 model: the instance score to keep it (default {TEXT_PREFILL['sam3_threshold']})")
    r.add_argument("--label", action="append", default=None, help="a label offered on the page (repeatable)")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8765)
    r.add_argument("--no-browser", action="store_true")
    r.set_defaults(func=run_round)

    s = commands.add_parser("status", help="the project's rounds, datasets and model")
    s.add_argument("project")
    s.set_defaults(func=run_status)

    e = commands.add_parser("export-ls", help="a round (or the newest dataset) as Label Studio tasks with brush-RLE pre-annotations")
    e.add_argument("project")
    e.add_argument("--round", type=int, help="the round to export (default: the newest dataset version)")
    e.add_argument("--out", required=True, help="the tasks file (JSON) to write")
    e.add_argument("--image-url", default="/data/local-files/?d={path}",
                   help="how a task names its image; {path} is the absolute path, {name} the file name")
    e.set_defaults(func=run_export_ls)

    m = commands.add_parser("import-ls", help="reviewed Label Studio tasks back into the project (a new dataset version)")
    m.add_argument("project")
    m.add_argument("tasks", help="Label Studio's JSON export of the tasks")
    m.set_defaults(func=run_import_ls)


def seed_list(text: str) -> list:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def run_init(args) -> int:
    from ..engine.project import init_project

    train = {}
    if args.steps is not None:
        train["steps"] = args.steps
    if args.seeds:
        train["seeds"] = args.seeds
    stage_settings = None
    if args.points_per_side:
        stage_settings = {k: {"points_per_side": args.points_per_side} for k in ("semi", "auto")}
    project = init_project(args.data, args.out, args.coco, args.heldout, args.heldout_fraction, args.model, train,
                           args.seed, stage_settings)
    from ..engine.report import status_text

    print(status_text(project))
    return 0


def run_round(args) -> int:
    from ..engine.project import Project
    from ..engine.rounds import run_round as carry_on
    from ..engine.rounds import start_round

    from ..engine.text_prefill import prefill_setting

    options = {"detector": args.detector, "box_threshold": args.box_threshold, "text_threshold": args.text_threshold,
               "detector_size": args.detector_size, "pred_iou_thresh": args.prefill_iou,
               "sam3_threshold": args.sam3_threshold}
    with Project.open(args.project) as project:
        entry = project.unfinished()
        if entry is not None:
            if args.stage and args.stage != entry["stage"]:
                raise ValueError(f"round {entry['index']} ({entry['stage']}) is unfinished ({entry['status']}): "
                                 f"run `grounded engine round {args.project}` to resume it first")
            if args.prefill or args.categories or any(v is not None for v in options.values()):
                raise ValueError(f"round {entry['index']} ({entry['stage']}) resumes with the pre-fill it began with "
                                 f"({(entry.get('prefill') or {}).get('source', 'none')}): leave out --prefill, "
                                 "--categories and the detector's options")
            print(f"resuming round {entry['index']} ({entry['stage']}) at {entry['status']}")
        else:
            if not args.stage:
                raise ValueError("no unfinished round to resume: name a new round's --stage (manual, semi, auto)")
            if args.finish:
                raise ValueError("--finish ends a manual or semi round's labelling; there is no unfinished round")
            setting = prefill_setting(args.stage, args.prefill, args.categories, project.model_spec(), **options)
            entry = start_round(project, args.stage, args.take, args.images, args.finetune, setting)
            entry["crops"] = bool(args.crops)
            project.save()
        entry = carry_on(project, entry, truth=args.truth, serve=lambda session: serve(session, args),
                         finish=args.finish)
        if entry["status"] == "done":
            print(f"round {entry['index']} done; report: {project.root / 'report.md'}")
    return 0


def serve(session, args) -> None:
    from .annotate import check_page_built, serve_page

    check_page_built()
    if args.label:
        session.labels = args.label
    serve_page(session, args, f"{session.stage} stage: {len(session.images)} images")


def run_status(args) -> int:
    from ..engine.project import Project
    from ..engine.report import status_text

    print(status_text(Project.open(args.project)))
    return 0


def run_export_ls(args) -> int:
    from ..engine.labelstudio import export_tasks
    from ..engine.project import Project

    project = Project.open(args.project)
    count = export_tasks(project, args.out, args.round, args.image_url)
    print(f"{count} tasks written to {args.out}")
    return 0


def run_import_ls(args) -> int:
    from ..engine.labelstudio import import_tasks
    from ..engine.project import Project

    with Project.open(args.project) as project:
        path, count = import_tasks(project, args.tasks)
    print(f"{count} masks imported; dataset {path}")
    return 0
