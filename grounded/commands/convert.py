"""`grounded convert`: checkpoints from their official layout to the transformers layout.

    grounded convert grounding-dino groundingdino_swint_ogc.pth GroundingDINO_SwinT_OGC.py \\
        --text-encoder bert-base-uncased/ --out grounding-dino-tiny/

The output folder loads with `GroundingDinoForObjectDetection.from_pretrained` / `AutoProcessor`,
and as `model:` of the `detect` node."""

import argparse
import time


def add_cli(sub) -> None:
    p = sub.add_parser("convert", help="convert an official checkpoint to the transformers layout",
                       description="Convert official checkpoints to the transformers layout.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    g = kinds.add_parser(
        "grounding-dino", help="groundingdino-py checkpoint + .py config -> GroundingDinoForObjectDetection folder",
        description="Convert an official Grounding DINO checkpoint (e.g. groundingdino_swint_ogc.pth) and its .py "
        "config (e.g. GroundingDINO_SwinT_OGC.py; parsed, not executed) to a transformers folder: config.json, "
        "model.safetensors, preprocessor and tokenizer files.")
    g.add_argument("checkpoint", help="official checkpoint (.pth; read with weights_only=True)")
    g.add_argument("config", help="its .py config file")
    g.add_argument("--text-encoder", required=True, metavar="DIR",
                   help="local BERT folder (bert-base-uncased: config.json, vocab.txt; its tokenizer goes into the output)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.set_defaults(func=run_grounding_dino)


def run_grounding_dino(args: argparse.Namespace) -> int:
    from ..detect.convert import convert_checkpoint

    start = time.perf_counter()
    convert_checkpoint(args.checkpoint, args.config, args.text_encoder, args.out, log=print)
    print(f"done in {time.perf_counter() - start:.1f} s; load it with `detect` (model: {args.out}) or "
          "GroundingDinoForObjectDetection.from_pretrained")
    return 0
