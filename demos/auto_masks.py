"""Automatic masks: SAM prompts a grid of points over the image and keeps every good mask; the
page shows them over the image and gives the COCO JSON (RLE). A thin layer on
pipelines/auto_masks.yaml: the same nodes and writers as `grounded run auto_masks`.

    bin/grounded demo auto_masks            # real MobileSAM
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence

try:
    from . import _shared
except ImportError:  # run as a script: python demos/auto_masks.py
    import _shared


def build_app(sam: Optional[str] = None, device: str = "cpu", overrides: Sequence[str] = ()):
    import gradio as gr

    from grounded.pipeline import ModelCache

    sam = sam or _shared.default_sam()
    models = ModelCache()  # every grid size below shares the one loaded SAM
    pipelines: Dict[int, object] = {}
    lock = threading.Lock()

    def pipeline_for(points_per_side: int):
        from grounded.pipeline.spec import load_pipeline

        with lock:
            if points_per_side not in pipelines:
                pipelines[points_per_side] = load_pipeline(
                    "auto_masks", [f"model={sam}", f"device={device}", f"points_per_side={points_per_side}", *overrides])
            return pipelines[points_per_side]

    def segment(path, points_per_side):
        _shared.read_image(path)  # a bad upload gets its message before any work
        report, out = _shared.run_folder(pipeline_for(int(points_per_side)), [path], models)
        if report.errors:
            raise gr.Error(f"Could not segment this image: {report.error_rows[0]['error']}")
        row = report_row(out)
        overlay = out / row["outputs"]["write_overlays"]
        summary = f"{row.get('detections', 0)} masks (grid {int(points_per_side)}x{int(points_per_side)})"
        return str(overlay), summary, str(out / "coco.json")

    with gr.Blocks(title="grounded: automatic masks") as app:
        gr.Markdown("## Automatic masks\nSAM prompts a grid of points and keeps every good mask.")
        gr.Markdown(_shared.notice([f"SAM: {_model_name(sam)}"], []), elem_id="models")
        with gr.Row():
            with gr.Column():
                image = _shared.image_input(type="filepath", label="Image", elem_id="input-image", sources=["upload", "clipboard"], height=360)
                grid = gr.Slider(4, 32, value=16, step=4, label="Points per side (finer grids find smaller things, slower)")
                button = gr.Button("Segment everything", variant="primary", elem_id="run")
            with gr.Column():
                overlay = gr.Image(label="Masks", elem_id="output-image", interactive=False, height=360, format="png")
                summary = gr.Markdown(elem_id="summary")
                coco = gr.File(label="COCO JSON (RLE masks)", elem_id="coco")
        button.click(segment, [image, grid], [overlay, summary, coco], api_name="segment")
    app.models = models
    return app


def report_row(out):
    from grounded.io.results import read_jsonl

    return read_jsonl(out / "manifest.jsonl")[0]


def _model_name(sam: str) -> str:
    from pathlib import Path

    return "MobileSAM (real weights)" if Path(sam).name == "mobile_sam.pt" else sam


def main(argv=None) -> None:
    args = _shared.parse_args(__doc__, argv)
    _shared.launch(build_app(args.sam, args.device), args.port, host=args.host)


if __name__ == "__main__":
    main()
