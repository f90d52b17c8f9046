"""Auto-label: several images in; BLIP captions them, Grounding DINO finds the caption's tags, SAM
segments every box; out come a gallery of labelled overlays and a zip with COCO (RLE), YOLO and
per-image JSON. A thin layer on pipelines/auto_label.yaml (what `grounded label` runs).

    bin/grounded demo auto_label            # real MobileSAM; tiny random BLIP and Grounding DINO offline
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence

try:
    from . import _shared
except ImportError:  # run as a script
    import _shared


def build_app(sam: Optional[str] = None, captioner: Optional[str] = None, detector: Optional[str] = None,
              device: str = "cpu", overrides: Sequence[str] = ()):
    import gradio as gr

    from grounded.commands.label import vocabulary_overrides
    from grounded.io.results import read_jsonl
    from grounded.pipeline import ModelCache
    from grounded.pipeline.spec import load_pipeline

    real, tiny = [], []
    sam = _shared.choose_sam(sam, real)
    captioner = _shared.choose_model(captioner, "BLIP", _shared.tiny_captioner, real, tiny, "BLIP captioner")
    detector = _shared.choose_model(detector, "Grounding DINO", _shared.tiny_detector, real, tiny)

    models = ModelCache()  # loaded once, shared by the pipelines of every vocabulary
    pipelines: Dict[str, object] = {}
    lock = threading.Lock()
    base = [f"sam={sam}", f"captioner={captioner}", f"detector={detector}", f"device={device}", *overrides]

    def pipeline_for(text: str):
        key = text.strip()
        with lock:
            if key not in pipelines:
                more = vocabulary_overrides(key, "replace") if key else []
                pipelines[key] = load_pipeline("auto_label", base + more)
            return pipelines[key]

    def label(files, text):
        if not files:
            raise gr.Error("Upload one or more images first.")
        try:
            pipeline = pipeline_for(text or "")
        except ValueError as err:
            raise gr.Error(str(err)) from None
        report, out = _shared.run_folder(pipeline, [f if isinstance(f, str) else f.name for f in files], models)
        rows = read_jsonl(out / "manifest.jsonl")
        problems = [f"**{Path(r['source']).name}**: {r['error'].replace(r['source'] + ': ', '')}"
                    for r in rows if r["status"] != "ok"]
        if not report.ok:
            raise gr.Error("None of the uploads could be labelled: " + "; ".join(p.replace("**", "") for p in problems))
        gallery = []
        for row in rows:
            if row["status"] == "ok":
                doc = _read_json(out / row["outputs"]["write_json"])
                caption = f"{doc.get('caption', '')} [{', '.join(doc.get('tags', [])) or 'no tags'}]"
                gallery.append((str(out / row["outputs"]["write_overlays"]), caption))
        archive = shutil.make_archive(str(out.parent / "labels"), "zip", out, ".")
        summary = f"{report.ok} labelled" + (f", {len(problems)} skipped:\n\n" + "\n\n".join(problems) if problems else "")
        return gallery, summary, archive

    with gr.Blocks(title="grounded: auto-label") as app:
        gr.Markdown("## Auto-label\nCaption -> tags -> Grounding DINO boxes -> SAM masks, for every image.")
        gr.Markdown(_shared.notice(real, tiny), elem_id="models")
        with gr.Row():
            with gr.Column():
                files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="input-files")
                text = gr.Textbox(label="Classes (optional): only these, e.g. 'dog. cat.'", elem_id="text")
                button = gr.Button("Label", variant="primary", elem_id="run")
            with gr.Column():
                gallery = gr.Gallery(label="Labelled images", elem_id="gallery", columns=3, height=360)
                summary = gr.Markdown(elem_id="summary")
                archive = gr.File(label="COCO + YOLO + JSON (zip)", elem_id="zip")
        button.click(label, [files, text], [gallery, summary, archive], api_name="label")
    app.models = models
    return app


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def main(argv=None) -> None:
    def add_arguments(parser):
        parser.add_argument("--captioner", help="BLIP folder or hub id (default: a tiny random one)")
        parser.add_argument("--detector", help=_shared.DETECTOR_HELP)

    args = _shared.parse_args(__doc__, argv, add_arguments)
    _shared.launch(build_app(args.sam, args.captioner, args.detector, args.device), args.port, host=args.host)


if __name__ == "__main__":
    main()
