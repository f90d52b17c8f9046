"""`grounded edit`: edit one image by voice (--audio) or by words (--say): Whisper -> edit
instructions -> each target found (Grounding DINO, or a --point / --box per edit) -> SAM mask ->
OpenCV removal / OKLCH recolouring / Stable Diffusion inpainting."""

import argparse
import json
import os
from pathlib import Path
from typing import List, Optional

EXAMPLES = """examples:
  grounded edit photo.jpg --say "remove the bicycle" --point 320,240
  grounded edit photo.jpg --audio command.m4a --point 320,240 --point 100,60     # one point per edit, in order
  grounded edit photo.jpg --say "make the sky purple" --box 0,0,640,200
  grounded edit photo.jpg --say "change the dog to a monkey" --detector IDEA-Research/grounding-dino-tiny \\
      --inpaint-model runwayml/stable-diffusion-inpainting --device cuda

writes OUT (default: out/edit/PHOTO_edited.png; a folder gets PHOTO_edited.png inside; a name without
an image extension gets .png) and, beside it, OUT_mask<k>.png for each edit.
"""
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                 ".bmp": "BMP"}


def add_cli(sub) -> None:
    from ..device import AUTO_HELP

    p = sub.add_parser(
        "edit",
        help="edit an image by voice (--audio FILE) or words (--say TEXT): remove, recolour or replace objects",
        description="Edit an image as a spoken or written instruction says: 'remove the bicycle and make the sky "
        "purple', 'change the dog to a monkey'. Remove and recolour work offline (OpenCV, OKLCH); replacing an "
        "object needs a Stable Diffusion inpainting model (--inpaint-model).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="the image to edit")
    said = p.add_mutually_exclusive_group(required=True)
    said.add_argument("--audio", help="a recording of the instruction (wav, flac, mp3, ogg, m4a)")
    said.add_argument("--say", help="the instruction in words, instead of a recording")
    p.add_argument("--point", action="append", default=[], metavar="X,Y",
                   help="the target of an edit as a pixel (one per edit, in the order spoken); no detector needed")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="the target of an edit as a box (one per edit, in order); no detector needed")
    p.add_argument("--detector", default="IDEA-Research/grounding-dino-tiny",
                   help="Grounding DINO (hub id or folder) that finds each target when no --point/--box is given")
    p.add_argument("--box-threshold", type=float, default=0.3, help="detector box threshold (default 0.3)")
    p.add_argument("--sam", default="mobile_sam", help="SAM checkpoint name, file, folder or hub id (default mobile_sam)")
    p.add_argument("--whisper", default="tiny.en", help="Whisper model: tiny.en (bundled), a folder, or a .pt")
    p.add_argument("--speech-backend", choices=["faster-whisper", "openai-whisper"], default="faster-whisper")
    p.add_argument("--language", default="en", help="spoken language (default en)")
    p.add_argument("--beam-size", type=int, default=5, help="Whisper beam size (default 5)")
    p.add_argument("--inpaint-model", help="Stable Diffusion inpainting model (SD 1.x/2.x or SDXL): hub id or folder")
    p.add_argument("--remove-with", choices=["opencv", "diffusion"], default="opencv")
    p.add_argument("--steps", type=int, default=30, help="diffusion steps (default 30)")
    p.add_argument("--guidance", type=float, default=7.5, help="diffusion guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="default", help="diffusion scheduler: ddim, euler, euler_a, dpm++, unipc, ...")
    p.add_argument("--dilate", type=int, default=6, help="grow each mask by this many pixels (default 6)")
    p.add_argument("--feather", type=int, default=3, help="soft edge inside the grown mask, pixels (default 3)")
    p.add_argument("--out", "-o", help="the edited image (default: out/edit/IMAGE_edited.png); a folder (existing, or "
                   "ending in /) gets IMAGE_edited.png inside, a name without .png/.jpg/.webp/.tif/.bmp gets .png")
    p.add_argument("--device", default="auto", help=f"{AUTO_HELP} (default auto)")
    p.set_defaults(func=run)


def _numbers(text: str, count: int, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r} must be {count} comma-separated numbers") from None
    if len(values) != count:
        raise ValueError(f"{what} {text!r} must be {count} comma-separated numbers")
    return values


def output_path(out: Optional[str], source: Path) -> Path:
    """Where the edited image goes: --out as a file (an image extension kept, else .png added), or
    IMAGE_edited.png in it when it is a folder (one that exists, or a name ending in /)."""
    name = f"{source.stem}_edited.png"
    if not out:
        return Path("out") / "edit" / name
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return path / name
    return path if path.suffix.lower() in IMAGE_FORMATS else path.with_name(path.name + ".png")


def check_detector(detector: str) -> None:
    """A --detector that can only be a folder (a hub id is ORG/NAME) must exist: say so before the
    loader, which would answer with the hub's repo-id format error."""
    path = Path(detector).expanduser()
    can_be_hub_id = detector.count("/") <= 1 and not detector.startswith(("/", ".", "~")) and "\\" not in detector
    if not path.exists() and not can_be_hub_id:
        raise FileNotFoundError(f"--detector {detector}: the folder {path} does not exist (tried as a folder: it cannot "
                                "be a Hugging Face hub id, which is ORG/NAME, e.g. IDEA-Research/grounding-dino-tiny)")


def build_pipeline(args: argparse.Namespace):
    """The nodes `grounded edit` runs, from its arguments."""
    from ..nodes.edit import ApplyEdits, TargetBoxes
    from ..nodes.instruction import ParseEdits
    from ..nodes.segment import SegmentBoxes, SegmentPoints
    from ..nodes.speech import ReadAudio, Transcribe
    from ..pipeline import Pipeline

    if args.point and args.box:
        raise ValueError("give the targets as --point or as --box, not both")
    nodes = []
    if args.audio:
        nodes += [ReadAudio(path=args.audio),
                  Transcribe(backend=args.speech_backend, model=args.whisper, language=args.language,
                             beam_size=args.beam_size, device=args.device)]
        nodes.append(ParseEdits())
    else:
        nodes.append(ParseEdits(say=args.say))
    if args.point:
        points = [_numbers(p, 2, "--point") for p in args.point]
        nodes.append(SegmentPoints(model=args.sam, points=points, device=args.device))
    elif args.box:
        nodes += [TargetBoxes(boxes=[_numbers(b, 4, "--box") for b in args.box]),
                  SegmentBoxes(model=args.sam, device=args.device)]
    else:
        from ..nodes.detect import Detect

        nodes += [Detect(model=args.detector, box_threshold=args.box_threshold, device=args.device),
                  SegmentBoxes(model=args.sam, device=args.device)]
    nodes.append(ApplyEdits(model=args.inpaint_model, remove_with=args.remove_with, steps=args.steps,
                            guidance=args.guidance, seed=args.seed, scheduler=args.scheduler, dilate=args.dilate,
                            feather=args.feather, device=args.device))
    return Pipeline(nodes, name="edit")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.image import load_image
    from ..io.results import atomic_save_image
    from ..types import Sample

    source = Path(args.image)
    out = output_path(args.out, source)
    if not (args.point or args.box):
        check_detector(args.detector)
    image = load_image(source)
    pipeline = build_pipeline(args)
    given = len(args.point or args.box)  # targets given by hand: one per edit, checked once the edits are known
    try:
        pipeline.open()
    except (FileNotFoundError, ValueError, OSError) as err:
        if given or args.say is None and args.audio is None:
            raise
        raise ValueError(f"{err}\n(no detector available? give each edit's target instead: --point X,Y or "
                         "--box X0,Y0,X1,Y1, one per edit)") from None
    with pipeline:
        parse_only = [n for n in pipeline.nodes if n.name in ("read_audio", "transcribe", "parse_edits")]
        sample = Sample(image=image, image_path=str(source), image_id=source.stem)
        for node in parse_only:
            sample = node.process(sample) or sample
        if sample.transcript:
            print(f"heard: {sample.transcript!r}")
        print("edits: " + "; ".join(f"{e['action']} {e['target']!r}" + (f" -> {e['value']!r}" if e["value"] else "")
                                    for e in sample.edits))
        replacing = [e for e in sample.edits if e["action"] == "replace"]
        if replacing and not args.inpaint_model:
            raise ValueError(f"replacing {replacing[0]['target']!r} with {replacing[0]['value']!r} needs a diffusion "
                             "model: give --inpaint-model (a Stable Diffusion inpainting hub id or folder); remove "
                             "and recolour work without one")
        if given and given != len(sample.edits):
            raise ValueError(f"{len(sample.edits)} edits but {given} {'--point' if args.point else '--box'} targets; "
                             "give one per edit, in the order spoken")
        for node in pipeline.nodes[len(parse_only):]:
            sample = node.process_batch([sample])[0]
    atomic_save_image(out, sample.edited_image, format=IMAGE_FORMATS[out.suffix.lower()])
    written = [str(out)]
    for k, index in enumerate(sample.get("edit_detections") or []):
        if index is None:
            continue
        mask_path = out.with_name(f"{out.stem}_mask{k}.png")
        atomic_save_image(mask_path, sample.detections.mask_of(index).astype(np.uint8) * 255)
        written.append(str(mask_path))
    changed = int((sample.edited_image != image).any(axis=-1).sum())
    print(json.dumps({"edits": sample.meta.get("edits"), "changed_pixels": changed, "files": written}))
    for note in sample.meta.get("notes", []):
        if not note.startswith(("heard: ", "edits: ")):  # printed above already
            print(f"note: {note}")
    return 0
