"""Shared by the demo tests: tiny models built once per session, a test picture, serving an app on
a free localhost port, and headless Chromium (Debian's, through playwright) with a fresh profile."""

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# A caption prefix that steers the tiny random captioner to tags the tiny detector's tokenizer knows.
CAPTION_PREFIX = "a dog on the beach with a stick on the"


def tiny_models(root: Path) -> dict:
    """Tiny random SAM, BLIP, Grounding DINO, open_clip and SAM 3 under `root` (built on first use)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {"sam": root / "sam", "captioner": root / "blip", "detector": root / "dino", "clip": root / "clip",
             "sam3": root / "sam3"}
    if not (paths["sam"] / "done").exists():
        from grounded.sam import save_pretrained
        from grounded.testing import tiny_sam

        save_pretrained(tiny_sam("vit"), paths["sam"])
        (paths["sam"] / "done").write_text("")
    if not (paths["captioner"] / "config.json").exists():
        from grounded.testing.blip import tiny_blip

        tiny_blip(paths["captioner"])
    if not (paths["detector"] / "config.json").exists():
        from grounded.testing.dino import tiny_hf

        tiny_hf(paths["detector"], seed=1)
    if not paths["clip"].exists():
        from grounded.testing.clip import random_tiny_open_clip

        random_tiny_open_clip(paths["clip"])
    if not (paths["sam3"] / "config.json").exists():
        from grounded.testing.sam3 import tiny_sam3

        tiny_sam3(paths["sam3"])
    return {k: str(v) for k, v in paths.items()}


def picture(path: Path, width: int = 160, height: int = 120) -> Path:
    """A gray picture with a red disc (centre 50, 60; radius 25) and a blue square."""
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 150, np.uint8)
    image[(yy - 60) ** 2 + (xx - 50) ** 2 < 25 ** 2] = (220, 30, 30)
    image[30:80, 100:145] = (30, 60, 210)
    Image.fromarray(image).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def temporary_folder(folder: Path):
    """The apps' work folders, gradio's uploads and cache and gradio_client's downloads go into
    `folder` (one of pytest's, which it removes in time) instead of the system's temporary folder."""
    old_tempdir, old_gradio = tempfile.tempdir, os.environ.get("GRADIO_TEMP_DIR")
    tempfile.tempdir = str(folder)
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
    try:
        yield folder
    finally:
        tempfile.tempdir = old_tempdir
        if old_gradio is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old_gradio


@contextmanager
def served(app):
    """The app queued and served on a free localhost port; yields its URL; closed afterwards."""
    from demos._shared import launch

    port = free_port()
    launch(app, port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def client(url: str, downloads: Path):
    from gradio_client import Client

    return Client(url, download_files=str(downloads), verbose=False, analytics_enabled=False)


@contextmanager
def browser(profile: Path):
    """Headless Debian Chromium with a fresh user-data-dir; yields the browser context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport={"width": 1200, "height": 900})
        try:
            yield context
        finally:
            context.close()


def screenshot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path
