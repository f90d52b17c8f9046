"""`grounded demo NAME [OPTIONS]`: start one of the Gradio apps in demos/ (on localhost unless --host
says otherwise). Options after NAME go to the app, its own included (`grounded demo text_to_mask
--projection FOLDER`); `grounded demo NAME --help` lists them."""

import argparse
import importlib
import sys
from pathlib import Path

DEMOS_DIR = Path(__file__).resolve().parents[2] / "demos"


def add_cli(sub) -> None:
    from ..device import AUTO_HELP

    p = sub.add_parser("demo", help="start a Gradio demo: auto_masks, text_to_mask, auto_label, voice_edit",
                       description="Start a Gradio demo in the browser. Offline, the demos use the real MobileSAM, "
                       "Whisper tiny.en and the OpenCV edits, and tiny random models for the rest (the page says which).")
    p.add_argument("--port", type=int, help="port (default: gradio's, 7860 or the next free one)")
    p.add_argument("--host", help="address to serve on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--sam", help="SAM checkpoint (default: the real MobileSAM)")
    p.add_argument("--device", help=f"{AUTO_HELP} (default auto)")
    p.add_argument("name", help="auto_masks, text_to_mask, auto_label or voice_edit (`grounded demo list` lists them)")
    p.add_argument("options", nargs=argparse.REMAINDER, metavar="OPTIONS",
                   help="the app's options: --port, --host, --sam, --device and its own (text_to_mask: --detector, "
                   "--clip, --projection; auto_label: --captioner, --detector; voice_edit: --detector, --whisper); "
                   "`grounded demo NAME --help` lists them")
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
    given = [(flag, value) for flag, value in (("--port", args.port), ("--host", args.host), ("--sam", args.sam),
                                               ("--device", args.device)) if value is not None]
    argv = [str(part) for pair in given for part in pair] + list(args.options)
    if "-h" not in argv and "--help" not in argv:
        print(f"starting the {args.name} demo (loading its models) ...", file=sys.stderr, flush=True)
    program, sys.argv[0] = sys.argv[0], f"grounded demo {args.name}"  # what the app's usage line calls it
    try:
        module.main(argv)  # the app's own command line: it builds the app and serves it until stopped
    finally:
        sys.argv[0] = program
    return 0
