"""Every model loader of grounded that can reach for a hub, timed on ids that are not in the cache
(and on a few that are), in a process of its own: huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE once, at import, so a test sets them for this process and runs

    python -m grounded.testing.offline_loaders OFFICIAL_CONFIG.py [CACHED_ID=KIND ...]

It prints one JSON object: for each loader its seconds, and the error's type and message (or
"loaded"). The libraries are imported first; the loaders of missing models then run at once, each
in a thread of its own, so each time is that loader's own wait (on a busy machine, plus its share of
the CPU); the cached ones after them, one by one."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict

MISSING = "grounded-missing"  # an org with none of these repositories in any cache


def missing_loaders(official_config: str) -> Dict[str, Callable[[], object]]:
    """One call per loader, each naming a model no cache holds."""
    from ..caption import load_blip
    from ..clip import load_clip
    from ..detect import load_detector
    from ..edit.diffusion import load_inpaint_pipeline
    from ..sam import from_pretrained
    from ..sam3 import load_sam3
    from ..speech.whisper import load_faster_whisper, load_openai_whisper

    return {
        "sam": lambda: from_pretrained(f"{MISSING}/sam-vit-base"),
        "sam3": lambda: load_sam3(f"{MISSING}/sam3", device="cpu"),
        "grounding_dino": lambda: load_detector(f"{MISSING}/grounding-dino-tiny"),
        # the shipped configs name their BERT by hub id; the checkpoint is read only after it is found
        "grounding_dino_official": lambda: load_detector("groundingdino_swint_ogc.pth", official_config),
        "blip": lambda: load_blip(f"{MISSING}/blip-captioning"),
        "clip": lambda: load_clip(f"{MISSING}/clip-vit"),
        "open_clip_hub": lambda: load_clip(f"hf-hub:{MISSING}/open-clip"),
        "open_clip_tag": lambda: load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k"),
        "diffusion": lambda: load_inpaint_pipeline(f"{MISSING}/sd-inpainting"),
        "faster_whisper": lambda: load_faster_whisper("base.en", "cpu", None),
        "openai_whisper": lambda: load_openai_whisper("base.en", "cpu", None),
    }


def cached_loaders(cached: Dict[str, str]) -> Dict[str, Callable[[], object]]:
    """Loads of hub ids that are in the cache: `cached` maps an id to its kind (blip, clip, diffusion)."""
    from ..clip import load_clip
    from ..edit.diffusion import load_inpaint_pipeline
    from ..caption import load_blip

    kinds = {"blip": load_blip, "clip": load_clip, "diffusion": load_inpaint_pipeline}
    return {f"cached_{kind}": (lambda repo=repo, kind=kind: kinds[kind](repo)) for repo, kind in cached.items()}


def timed(call: Callable[[], object]) -> dict:
    start = time.perf_counter()
    try:
        call()
        outcome = {"error": None, "message": "loaded"}
    except Exception as err:  # noqa: BLE001 - the error is the result
        outcome = {"error": type(err).__name__, "message": str(err)}
    return {"seconds": round(time.perf_counter() - start, 2), **outcome}


def run_at_once(loaders: Dict[str, Callable[[], object]]) -> Dict[str, dict]:
    """Loaders that fail while waiting on the network, each in its own thread (loaders that do
    load must run one by one: transformers' from_pretrained is not thread-safe)."""
    with ThreadPoolExecutor(len(loaders)) as pool:
        futures = {name: pool.submit(timed, call) for name, call in loaders.items()}
        return {name: future.result() for name, future in futures.items()}


def import_libraries() -> None:
    """What the loaders import on first use (transformers and diffusers import lazily, attribute by
    attribute), imported before the clock starts, as in a program already running."""
    from diffusers import DiffusionPipeline, StableDiffusionInpaintPipeline  # noqa: F401
    from faster_whisper import WhisperModel  # noqa: F401
    from groundingdino.models import build_model  # noqa: F401
    from huggingface_hub import hf_hub_download, snapshot_download  # noqa: F401
    from huggingface_hub.utils import build_hf_headers  # noqa: F401
    from open_clip import create_model_and_transforms  # noqa: F401
    from transformers import (AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration,  # noqa: F401
                              BlipProcessor, CLIPModel, GroundingDinoForObjectDetection, GroundingDinoProcessor,
                              Sam3Model, Sam3Processor)
    from whisper import load_model  # noqa: F401


def main(argv) -> None:
    import_libraries()
    cached = dict(arg.split("=", 1) for arg in argv[1:])
    results = run_at_once(missing_loaders(argv[0]))
    results.update({name: timed(call) for name, call in cached_loaders(cached).items()})
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
