"""`grounded demo NAME`: start one of the Gradio apps in demos/ (on localhost unless --host says otherwise)."""

import argparse
import importlib
import sys
from pathlib import Path

DEMOS_DIR = Path(__file__).resolve().parents[2] / "demos"


def add_cli(sub) -> None:
    p = sub.add_parser("demo", help="start a Gradio demo: auto_masks, text_to_mask, auto_label, voice_edit",
                       description="Start a Gradio demo in the browser. Offline, the demos use the real MobileSAM, "
                       "Whisper tiny.en and the OpenCV edits, and tiny random models for the rest (the page says which).")
    p.add_argument("name", help="auto_masks, text_to_mask, auto_label or voice_edit (`grounded demo list` lists them)")
    p.add_argument("--port", type=int, help="port (default: gradio's, 7860 or the next free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--sam", help="SAM checkpoint (default: the real MobileSAM)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.set_defaults(func=demo)


def load_demo(name: str):
    """The demo's module (demos/NAME.py), imported as `demos.NAME`."""
    if not DEMOS_DIR.is_dir():
        raise FileNotFoundError(f"no demos folder at {DEMOS_DIR} (the demos ship with the source tree)")
    if str(DEMOS_DIR.parent) not in sys.path:
        sys.path.insert(0, str(DEMOS_DIR.parent))
    from demos import DEMOS

    if name not in DEMOS:
        raise ValueError(f"no demo {name!r}; demos: {', '.join(DEMOS)}")
    return importlib.import_module(f"demos.{name}")


def demo(args: argparse.Namespace) -> int:
    if args.name == "list":
        load_demo("auto_masks")
        from demos import DEMOS

        for name, what in DEMOS.items():
            print(f"{name:14s} {what}")
        return 0
    module = load_demo(args.name)
    from demos._shared import launch

    print(f"starting the {args.name} demo (loading its models) ...", file=sys.stderr, flush=True)
    app = module.build_app(sam=args.sam, device=args.device)
    launch(app, args.port, host=args.host, block=True)
    return 0
