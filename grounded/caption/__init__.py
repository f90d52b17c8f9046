"""Image captioning: BLIP (`load_blip(name_or_folder) -> BlipCaptioner`, `.caption(images)`)."""

from .blip import DEFAULT_MODEL, BlipCaptioner, load_blip, resolve_blip_folder

__all__ = ["DEFAULT_MODEL", "BlipCaptioner", "load_blip", "resolve_blip_folder"]
