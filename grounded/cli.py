"""The `grounded` command."""

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounded", description="Text-grounded image work around a complete, fast Segment Anything Model."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import weights
    from .commands import convert, demo, label, run, segment

    segment.add_cli(sub)
    run.add_cli(sub)
    from .commands import pretrain, train

    train.add_cli(sub)
    pretrain.add_cli(sub)
    convert.add_cli(sub)
    label.add_cli(sub)
    demo.add_cli(sub)
    from .commands import edit

    edit.add_cli(sub)
    from .commands import eval as eval_command

    eval_command.add_cli(sub)
    weights.add_cli(sub)
    from .commands import annotate

    annotate.add_cli(sub)
    from .commands import engine

    engine.add_cli(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Errors the library raises on purpose carry a message meant for the user.
        print(f"grounded {args.command}: error: {err}", file=sys.stderr)
        return 1
