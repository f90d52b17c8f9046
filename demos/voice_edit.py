"""Voice edit: say (or upload) an edit such as "remove the dog" or "make the car blue"; Whisper
transcribes it, the instruction is parsed, the target is found by Grounding DINO from its words
(or by a click on the image), SAM segments it and the edit is applied. A thin layer on
pipelines/voice_edit.yaml and voice_edit_points.yaml.

    bin/grounded demo voice_edit            # real Whisper tiny.en, MobileSAM and OpenCV edits; tiny random Grounding DINO
"""


import threading
from typing import Optional, Sequence

import numpy as np

try:
    from . import _shared
except ImportError:  # run as a script
    import _shared


def build_app(sam: Optional[str] = None, detector: Optional[str] = None, whisper: str = "tiny.en",
              device: str = "cpu", overrides: Sequence[str] = (), detector_overrides: Sequence[str] = ()):
    import gradio as gr

    from grounded.pipeline import ModelCache
    from grounded.types import Sample

    real, tiny = [], []
    sam = _shared.choose_sam(sam, real)
    real += [f"Whisper: {whisper}", "edits: OpenCV (remove, recolour)"]
    detector = _shared.choose_model(detector, "Grounding DINO", _shared.tiny_detector, real, tiny,
                                    "Grounding DINO (targets by words; click the target instead for a real mask)")

    models = ModelCache()  # Whisper and SAM load once, shared by both pipelines
    common = [f"whisper={whisper}", f"sam={sam}", f"device={device}", *overrides]
    by_words = _shared.open_pipeline("voice_edit", common + [f"detector={detector}", *detector_overrides], models,
                                     inputs=["image", "audio_path"])
    by_click = _shared.open_pipeline("voice_edit_points", common, models, inputs=["image", "audio_path", "points"])
    lock = threading.Lock()

    def edit(audio_path, image, click):
        if not audio_path:
            raise gr.Error("Record or upload a spoken edit first (e.g. 'remove the dog').")
        if image is None:
            raise gr.Error("Upload an image first.")
        image = np.ascontiguousarray(np.asarray(image)[..., :3]).astype(np.uint8)
        sample = Sample(image=image)
        sample.set("audio_path", audio_path)
        pipeline = by_words
        if click:
            sample.points = [[int(click[0]), int(click[1])]]
            pipeline = by_click
        result = _shared.process_one(pipeline, sample, lock)
        mask = _shared.mask_overlay(image, result.detections)
        edits = "; ".join(_describe(e) for e in (result.edits or [])) or "no edit understood"
        edited = result.edited_image if result.edited_image is not None else image
        return result.transcript or "", edits, mask, edited

    def pick(image, evt: gr.SelectData):
        if image is None:
            raise gr.Error("Upload an image first.")
        x, y = (int(v) for v in evt.index)
        return [x, y], f"Target: the thing at ({x}, {y})"

    with gr.Blocks(title="grounded: voice edit") as app:
        gr.Markdown("## Voice edit\nSay an edit: *remove the dog*, *make the car blue*. "
                    "Click the image to pick the target yourself.")
        gr.Markdown(_shared.notice(real, tiny), elem_id="models")
        click = gr.JSON(value=None, visible=False, label="target click [x, y]")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Spoken edit", elem_id="audio")
                image = _shared.image_input(type="numpy", label="Image (click to pick the target)", elem_id="input-image",
                                            sources=["upload", "clipboard"], height=320)
                target = gr.Markdown("Target: from the words.", elem_id="target")
                button = gr.Button("Edit", variant="primary", elem_id="run")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", elem_id="transcript", interactive=False)
                edits = gr.Textbox(label="Edits understood", elem_id="edits", interactive=False)
                mask = gr.Image(label="Target mask", elem_id="mask-image", interactive=False, height=240, format="png")
                edited = gr.Image(label="Edited image", elem_id="output-image", interactive=False, height=240, format="png")
        image.select(pick, [image], [click, target])
        image.upload(lambda: (None, "Target: from the words."), None, [click, target])
        button.click(edit, [audio, image, click], [transcript, edits, mask, edited], api_name="edit")
    app.models = models
    return app


def _describe(edit) -> str:
    data = edit if isinstance(edit, dict) else getattr(edit, "__dict__", {})
    parts = [str(data.get(k)) for k in ("action", "target", "value") if data.get(k)]
    return " ".join(parts) or str(edit)


def main(argv=None) -> None:
    def add_arguments(parser):
        parser.add_argument("--detector", help=_shared.DETECTOR_HELP)
        parser.add_argument("--whisper", default="tiny.en", help="Whisper model (default: the bundled tiny.en)")

    args = _shared.parse_args(__doc__, argv, add_arguments)
    _shared.launch(build_app(args.sam, args.detector, args.whisper, args.device), args.port, host=args.host)


if __name__ == "__main__":
    main()
