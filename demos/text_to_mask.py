"""Text to mask: type what to segment, click on it, give a box as two clicks, or brush over it.
A thin layer on the pipelines: pipelines/text_to_mask.yaml (Grounding DINO boxes -> SAM, clicks
refine), text_to_mask_clip.yaml (SAM's automatic masks ranked by CLIP), text_to_mask_sam3.yaml
(SAM 3: every instance of each phrase, clicks correct through its tracker), point_masks.yaml
(clicks), and `segment_boxes` for a box.

    bin/grounded demo text_to_mask          # real MobileSAM; tiny random Grounding DINO, CLIP and SAM 3 offline
    bin/grounded demo text_to_mask --sam3 facebook/sam3     # the real SAM 3 (gated; from the HF cache offline)
"""


import threading
from typing import Optional, Sequence

import numpy as np

try:
    from . import _shared
except ImportError:  # run as a script
    import _shared

MODES = ["text (Grounding DINO + SAM)", "text (CLIP ranks SAM's masks)", "text (native: CLIP token prompts SAM)",
         "text (SAM 3 concepts)", "clicks", "box (two clicks)", "brush (its box)"]


def build_app(sam: Optional[str] = None, detector: Optional[str] = None, clip: Optional[str] = None,
              device: str = "cpu", clip_overrides: Sequence[str] = (), projection: Optional[str] = None,
              sam3: Optional[str] = None, sam3_overrides: Sequence[str] = ()):
    import gradio as gr

    from grounded.detections import Detections
    from grounded.nodes import SegmentBoxes
    from grounded.pipeline import ModelCache, Pipeline
    from grounded.types import Sample

    real, tiny = [], []
    sam = _shared.choose_sam(sam, real)
    detector = _shared.choose_model(detector, "Grounding DINO", _shared.tiny_detector, real, tiny)
    clip = _shared.choose_model(clip, "CLIP", _tiny_clip, real, tiny)
    sam3 = _shared.choose_model(sam3, "SAM 3", _tiny_sam3, real, tiny)

    models = ModelCache()  # one SAM for every mode
    common = [f"sam={sam}", f"device={device}"]
    grounded_text = _shared.open_pipeline("text_to_mask", common + [f"detector={detector}"], models)
    clip_text = _shared.open_pipeline("text_to_mask_clip", common + [f"clip={clip}", *clip_overrides], models)
    # The native mode needs a projection trained for this SAM and CLIP (`grounded train`); none ships.
    native_text = None
    if projection is not None:
        native_text = _shared.open_pipeline("text_to_mask_native", common + [f"clip={clip}", f"projection={projection}"],
                                            models)
        real.append(f"native text projection: {projection}")
    concepts = _shared.open_pipeline("text_to_mask_sam3", [f"sam3={sam3}", f"device={device}", *sam3_overrides], models)
    clicks_only = _shared.open_pipeline("point_masks", [f"model={sam}", f"device={device}"], models)
    box_only = Pipeline([SegmentBoxes(model=sam, device=device)], inputs=["image", "detections"], batch_size=1)
    box_only.open(models)
    lock = threading.Lock()

    def segment(image, mode, text, clicks, brush):
        image = _image(image)
        clicks = list(clicks or [])
        sample = Sample(image=image)
        if mode.startswith("text"):
            if not (text or "").strip():
                raise gr.Error("Type what to segment (e.g. 'dog. cat.'), or pick another mode.")
            sample.text, sample.points = text.strip(), clicks or None
            if "native" in mode and native_text is None:
                raise gr.Error("The native mode needs text-prompt projection weights trained for this SAM and CLIP "
                               "(`grounded train`, then start the demo with --projection FOLDER); use another mode.")
            pipeline = (grounded_text if "Grounding" in mode else clip_text if "CLIP ranks" in mode
                        else concepts if "SAM 3" in mode else native_text)
        elif mode == "clicks":
            if not clicks:
                raise gr.Error("Click on the object (and, with 'background', on what is not the object).")
            sample.points = [clicks]  # all clicks prompt one mask together
            pipeline = clicks_only
        else:
            box = _box_from_clicks(clicks) if mode.startswith("box") else _box_from_brush(brush, image.shape[:2])
            sample.detections = Detections(np.array([box], np.float32), image_size=image.shape[:2])
            pipeline = box_only
        dets = _shared.process_one(pipeline, sample, lock).detections
        return _draw_clicks(_shared.mask_overlay(image, dets), clicks), _shared.describe_detections(dets)

    app = _blocks(segment, _shared.notice(real, tiny))
    app.models = models
    return app


def _blocks(segment, notice: str):
    """The page: inputs on the left, the mask and its summary on the right; `segment` runs on the button."""
    import gradio as gr

    def add_click(image, clicks, kind, evt: gr.SelectData):
        if image is None:
            raise gr.Error("Upload an image first.")
        x, y = (int(v) for v in evt.index)
        clicks = list(clicks or []) + [[x, y, 1 if kind.startswith("object") else 0]]
        return clicks, _clicks_text(clicks)

    with gr.Blocks(title="grounded: text to mask") as app:
        gr.Markdown("## Text to mask\nType what to segment, click on it, give a box as two clicks, or brush over it.")
        gr.Markdown(notice, elem_id="models")
        # Clicks live in a hidden JSON component (not a State), so API clients can send them too.
        clicks = gr.JSON(value=[], visible=False, label="clicks [[x, y, label], ...]")
        with gr.Row():
            with gr.Column():
                image = _shared.image_input(type="numpy", label="Image (click to add points)", elem_id="input-image",
                                            sources=["upload", "clipboard"], height=360)
                mode = gr.Radio(MODES, value=MODES[0], label="Mode", elem_id="mode")
                text = gr.Textbox(label="Text", placeholder="dog. red car.", elem_id="text")
                kind = gr.Radio(["object (+)", "background (-)"], value="object (+)", label="A click marks")
                clicks_view = gr.Markdown("No clicks.", elem_id="clicks")
                clear = gr.Button("Clear clicks")
                with gr.Accordion("Brush (mode 'brush'): paint over the object; its bounding box prompts SAM", open=False):
                    brush = gr.ImageEditor(type="numpy", label="Brush", elem_id="brush", height=360)
                button = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                output = gr.Image(label="Mask", elem_id="output-image", interactive=False, height=360, format="png")
                summary = gr.Markdown(elem_id="summary")
        image.select(add_click, [image, clicks, kind], [clicks, clicks_view])
        image.upload(lambda: ([], "No clicks."), None, [clicks, clicks_view])
        clear.click(lambda: ([], "No clicks."), None, [clicks, clicks_view])
        button.click(segment, [image, mode, text, clicks, brush], [output, summary], api_name="segment")
    return app


def _image(value) -> np.ndarray:
    import gradio as gr

    if value is None:
        raise gr.Error("Upload an image first.")
    image = np.asarray(value)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _box_from_clicks(clicks) -> list:
    import gradio as gr

    if len(clicks) < 2:
        raise gr.Error("Box mode: click two opposite corners of the box.")
    (x0, y0), (x1, y1) = [c[:2] for c in clicks[-2:]]
    if x0 == x1 or y0 == y1:
        raise gr.Error("Box mode: the two corners must differ in both x and y.")
    return [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]


def _box_from_brush(brush, size) -> list:
    """The bounding box of what was painted on the editor's layers (in the image's pixels)."""
    import gradio as gr

    layers = (brush or {}).get("layers") or []
    painted = None
    for layer in layers:
        layer = np.asarray(layer)
        alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer.any(axis=-1)
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        raise gr.Error("Brush mode: open 'Brush', upload the image there and paint over the object.")
    if painted.shape != tuple(size):
        raise gr.Error("Brush mode: paint on the same image as the one above.")
    ys, xs = np.nonzero(painted)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _clicks_text(clicks) -> str:
    return "Clicks: " + ", ".join(f"({x}, {y}) {'+' if label else '-'}" for x, y, label in clicks)


def _draw_clicks(picture: np.ndarray, clicks) -> np.ndarray:
    from PIL import Image, ImageDraw

    if not clicks:
        return picture
    img = Image.fromarray(picture)
    draw = ImageDraw.Draw(img)
    r = max(3, round(max(img.size) / 150))
    for x, y, label in clicks:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(40, 220, 60) if label else (230, 40, 40), outline=(255, 255, 255))
    return np.asarray(img)


def _tiny_clip() -> str:
    folder = _shared.tiny_models_dir() / "open-clip"
    if not folder.exists() or not any(folder.iterdir()):
        from grounded.testing.clip import random_tiny_open_clip

        random_tiny_open_clip(folder)
    return str(folder)


def _tiny_sam3() -> str:
    folder = _shared.tiny_models_dir() / "sam3"
    if not (folder / "config.json").exists():
        from grounded.testing.sam3 import tiny_sam3

        tiny_sam3(folder)
    return str(folder)


def main(argv=None) -> None:
    def add_arguments(parser):
        parser.add_argument("--detector", help=_shared.DETECTOR_HELP)
        parser.add_argument("--clip", help="CLIP for the CLIP and native modes (default: a tiny random one)")
        parser.add_argument("--projection", help="text-prompt projection folder for the native mode (from `grounded train`)")
        parser.add_argument("--sam3", help="SAM 3 for its mode: hub id or folder (default: a tiny random one)")

    args = _shared.parse_args(__doc__, argv, add_arguments)
    app = build_app(args.sam, args.detector, args.clip, args.device, projection=args.projection, sam3=args.sam3)
    _shared.launch(app, args.port, host=args.host)


if __name__ == "__main__":
    main()
