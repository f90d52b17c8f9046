"""The CPU wing: other evaluations of the same SAM functions, faster on a CPU, installed by one switch.

    from grounded.sam import cpu
    cpu.accelerate(model)                      # what loading does (build_sam, from_pretrained, the registry)
    cpu.accelerate(model, paths="reference")   # the core's reference forwards only
    cpu.accelerate(model, paths={"decoder/regrouped", "upscaling/torch"})   # only these wing paths
    cpu.paths_taken(model)                     # which paths the last calls took

`accelerate` gives the model's top modules (the `Sam`, its ViT or TinyViT image encoder, its mask
decoder) a subclass whose forward runs a wing path where it applies: float32 inference on the CPU,
outside autocast and tracing (ONNX export, jit, torch.compile). Anywhere else (GPUs, bf16/fp16,
autograd, exports) the subclass calls the core module's own forward; the one exception is
`decoder/training`, a frozen decoder trunk under autograd. State-dict names, parameters and results
(up to float rounding, tests/test_sam_paths.py) are the core's. Every call records the path it took.

The paths:

- encoder/vit_blocked: ViT with query-blocked attention and oneDNN-fused linears (vit.py)
- encoder/tiny_vit_fused: TinyViT with folded batch norms and fused linears (tiny_vit.py)
- decoder/low_rank: prompts sharing the image tokens, in low-rank form (low_rank.py)
- decoder/regrouped: mask prompts, explicit tokens with regrouped attentions (regrouped.py)
- decoder/training: a frozen trunk without autograd, the heads with it (decoder.py)
- upscaling/kernels, upscaling/torch: the decoder's tiled upscaling, its elementwise work in numba's
  compiled loops or in torch operations (upscaling.py, kernels.py)
- masks/kernels, masks/torch: thresholding upsampled masks near contours only (masks.py)

SAM 2's decoder (`grounded.sam2`, which registers itself with `register`) takes the decoder and upscaling
paths, its high-res maps added inside the upscaling (sam2.py).

Recorded besides these: encoder/reference, decoder/reference, masks/reference and
upscaling/reference (the decoder's own upscaling, in the training path).
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Deque, FrozenSet, List, Union

from ..image_encoder import ImageEncoderViT
from ..mask_decoder import MaskDecoder
from ..model import Sam
from ..tiny_vit import TinyViT
from .cache import ProductsCache
from .decoder import AcceleratedMaskDecoder
from .masks import AcceleratedSam
from .tiny_vit import AcceleratedTinyViT
from .vit import AcceleratedImageEncoderViT

PATHS = ("encoder/vit_blocked", "encoder/tiny_vit_fused", "decoder/low_rank", "decoder/regrouped", "decoder/training",
         "upscaling/kernels", "upscaling/torch", "masks/kernels", "masks/torch")

_ACCELERATED = {Sam: AcceleratedSam, ImageEncoderViT: AcceleratedImageEncoderViT, TinyViT: AcceleratedTinyViT,
                MaskDecoder: AcceleratedMaskDecoder}
_CORE = {accelerated: core for core, accelerated in _ACCELERATED.items()}
_MODELS: set = set()  # other model classes, by `register`


@dataclass
class Acceleration:
    """What the wing may do for one model, and what it did (shared by the model's accelerated modules)."""

    paths: FrozenSet[str]
    workers: int = 2
    log: Deque[str] = field(default_factory=lambda: deque(maxlen=1024))

    def allows(self, path: str) -> bool:
        return path in self.paths

    def record(self, path: str) -> None:
        self.log.append(path)


def accelerate(model: Sam, paths: Union[str, Collection[str]] = "auto", *, workers: int = 2) -> Sam:
    """Install the wing's forwards on `model` (a `Sam`) and return it. paths: "auto" (every path, each
    where it applies), "reference" (none: every call runs the core module's own forward, and is
    recorded as such), or a collection of names from `PATHS`. workers: threads that chunks of prompts
    and masks run on (1: the calling thread, with torch's own threads). Clears the decoder's kept
    products."""
    if not isinstance(model, (Sam, *_MODELS)):
        raise TypeError(f"accelerate() takes a grounded SAM model (grounded.sam.Sam or grounded.sam2.Sam2), "
                        f"not {type(model).__name__}")
    if isinstance(paths, str):
        if paths not in ("auto", "reference"):
            raise ValueError(f"paths must be 'auto', 'reference' or a collection of {PATHS}, got {paths!r}")
        allowed = frozenset(PATHS if paths == "auto" else ())
    else:
        allowed = frozenset(paths)
        unknown = sorted(allowed - set(PATHS))
        if unknown:
            raise ValueError(f"unknown wing paths {unknown}; known: {list(PATHS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _remove(model)
    _install(model, Acceleration(allowed, workers))
    return model


def register(model_class: type, core_class: type, accelerated_class: type) -> None:
    """Let `accelerate` take models of model_class and give their core_class modules accelerated_class
    (grounded.sam2 registers SAM 2 and its decoder: grounded.sam imports nothing of it)."""
    _MODELS.add(model_class)
    _ACCELERATED[core_class] = accelerated_class
    _CORE[accelerated_class] = core_class


def paths_taken(model: Sam, clear: bool = True) -> List[str]:
    """The paths the model's calls took since the last `paths_taken(clear=True)` (or `accelerate`),
    in call order (at most the last 1024); empty for a model the wing is not installed on."""
    acceleration = getattr(model, "acceleration", None)
    if acceleration is None:
        return []
    taken = list(acceleration.log)
    if clear:
        acceleration.log.clear()
    return taken


def clear_cache(model: Sam) -> None:
    """Drop the decoder's kept image-only products (cache.py): after writing weights by hand."""
    cache = getattr(model.mask_decoder, "products_cache", None)
    if cache is not None:
        cache.clear()


def _install(model: Sam, acceleration: Acceleration) -> None:
    decoder = model.mask_decoder
    model.acceleration = acceleration  # the model holds the log even where it keeps its own class
    for module in (model, model.image_encoder, decoder):
        accelerated = _ACCELERATED.get(type(module))
        if accelerated is not None:
            module.__class__ = accelerated
            module.acceleration = acceleration
    if hasattr(type(decoder), "choose_path"):  # SAM's or SAM 2's accelerated decoder
        cache = decoder.products_cache = ProductsCache()
        for module in (decoder, model.prompt_encoder):
            cache.handles.append(module.register_load_state_dict_post_hook(cache.clear))
            cache.handles += [p.register_post_accumulate_grad_hook(cache.clear)
                              for p in module.parameters() if p.requires_grad]


def _remove(model: Sam) -> None:
    decoder = model.mask_decoder
    cache = getattr(decoder, "products_cache", None)
    if cache is not None:
        for handle in cache.handles:
            handle.remove()
        cache.clear()
        del decoder.products_cache
    for module in (model, model.image_encoder, decoder):
        core = _CORE.get(type(module))
        if core is not None:
            module.__class__ = core
        module.__dict__.pop("acceleration", None)
