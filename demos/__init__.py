"""Gradio apps built on the pipelines; `grounded demo NAME` starts one (see README.md here)."""

DEMOS = {
    "auto_masks": "automatic masks for everything in an image (SAM)",
    "text_to_mask": "masks from text, clicks, a box or a brush stroke (Grounding DINO / CLIP + SAM)",
    "auto_label": "several images in, a labelled gallery and a COCO/YOLO zip out",
    "voice_edit": "speak an edit (microphone or file), see the transcript, the mask and the edited image",
}
