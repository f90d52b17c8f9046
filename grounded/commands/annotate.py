"""`grounded annotate`: the annotation page with SAM's (or SAM 2 / 2.1's) decoder in the browser, and `grounded export onnx`."""

import argparse


def add_cli(sub) -> None:
    p = sub.add_parser(
        "annotate", help="annotate images in the browser with SAM (the decoder runs in the page)",
        description="Start a local server with the annotation page: hover shows SAM's mask, clicks add points, "
        "a drag makes a box; accepted masks are saved at once to DIR/coco.json (RLE), one file per image in "
        "DIR/images/ and the per-mask log DIR/log.jsonl.",
    )
    p.add_argument("images", nargs="+", help="image files, folders, or a COCO file (its masks open for correction)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="mobile_sam",
                   help="SAM or SAM 2 / 2.1 checkpoint name, file or folder (default mobile_sam)")
    p.add_argument("--embed-in-page", action="store_true",
                   help="compute embeddings in the page (MobileSAM's encoder; not for SAM 2 models)")
    p.add_argument("--label", action="append", default=None, help="a label offered at accept (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.set_defaults(func=run_annotate)

    e = sub.add_parser("export", help="export models for other runtimes")
    e.add_argument("format", choices=["onnx"], help="onnx: SAM's page graphs (standard, split, int8, encoder; "
                   "SAM 2 / 2.1: standard and int8)")
    e.add_argument("--model", default="mobile_sam",
                   help="SAM or SAM 2 / 2.1 checkpoint name, file or folder (default mobile_sam)")
    e.add_argument("--out", help="cache folder (default: grounded's cache)")
    e.add_argument("--encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="export the image encoder too (default: for MobileSAM only)")
    e.set_defaults(func=run_export)


def run_export(args) -> int:
    from ..export import export_onnx
    from ..sam2 import load_sam_or_sam2

    # (--encoder with a SAM 2 model: export_onnx refuses, naming why)
    folder = export_onnx(load_sam_or_sam2(args.model), args.out, encoder=args.encoder)
    print(folder)
    return 0


def run_annotate(args) -> int:
    from ..annotate import open_session

    check_page_built()
    print("loading the model and its page graphs (exported once per weights)", flush=True)
    session = open_session(args.images, args.out, args.model, args.embed_in_page, args.label)
    serve_page(session, args, f"annotating {len(session.images)} images into {args.out}")
    return 0


def check_page_built() -> None:
    from ..annotate import STATIC_DIR

    if not (STATIC_DIR / "index.html").exists():
        raise RuntimeError(f"the annotation page is not built ({STATIC_DIR}): run bin/build-web "
                           "(npm ci && npm run build in web/annotate)")


def serve_page(session, args, what: str) -> None:
    """Serves `session` on args.host:args.port and opens a browser (unless args.no_browser) until Ctrl-C;
    every accepted mask is saved as it is accepted."""
    import webbrowser

    from ..annotate import make_server

    server = make_server(session, args.host, args.port)
    url = f"http://{'localhost' if args.host in ('127.0.0.1', 'localhost') else args.host}:{server.server_address[1]}/"
    print(f"{what} at {url} (Ctrl-C stops; the labels are saved as you go)", flush=True)
    if not args.no_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
