"""Colour words -> sRGB, for reading edit instructions ("make the sky light purple") and for
recolouring. A colour phrase is optional modifiers (light, dark, bright, pale, deep, ...), one or
two colour names ("blue green", "reddish brown"), and optional "-ish" or "coloured"."""

from __future__ import annotations

import colorsys
from typing import List, Optional, Sequence, Tuple

COLORS = {
    "red": (220, 30, 30), "orange": (245, 130, 20), "yellow": (245, 220, 30), "green": (40, 170, 60),
    "blue": (30, 80, 220), "purple": (130, 50, 180), "violet": (140, 70, 210), "pink": (245, 130, 180),
    "brown": (130, 80, 40), "black": (15, 15, 15), "white": (245, 245, 245), "gray": (128, 128, 128),
    "silver": (192, 192, 192), "gold": (215, 175, 40), "golden": (215, 175, 40), "beige": (225, 205, 165),
    "cyan": (0, 200, 220), "magenta": (220, 30, 190), "turquoise": (50, 210, 200), "teal": (0, 128, 128),
    "navy": (20, 30, 110), "maroon": (120, 20, 30), "lavender": (180, 160, 230), "lilac": (200, 160, 220),
    "lime": (150, 220, 40), "olive": (120, 120, 30), "indigo": (75, 0, 130), "crimson": (200, 20, 60),
    "scarlet": (240, 40, 20), "tan": (210, 180, 140), "khaki": (195, 176, 120), "coral": (250, 120, 90),
    "salmon": (250, 128, 114), "peach": (255, 200, 160), "mint": (150, 230, 180), "emerald": (20, 160, 90),
    "amber": (255, 180, 20), "bronze": (205, 127, 50), "copper": (184, 115, 51), "ivory": (250, 245, 225),
    "cream": (250, 240, 200), "charcoal": (54, 69, 79), "burgundy": (128, 0, 32), "ruby": (200, 15, 80),
    "aqua": (0, 220, 230), "azure": (0, 127, 255), "cobalt": (0, 71, 171), "mustard": (220, 180, 40),
    "rose": (240, 80, 120), "plum": (140, 70, 140), "fuchsia": (230, 40, 200), "sapphire": (15, 82, 186),
    "jade": (0, 168, 107), "chocolate": (100, 55, 25), "lemon": (250, 240, 80), "cherry": (210, 20, 60),
    "rust": (180, 65, 15), "sand": (215, 195, 150), "blond": (240, 220, 150), "blonde": (240, 220, 150),
}
SYNONYMS = {"grey": "gray", "colour": "color", "purplish": "purple", "reddish": "red", "bluish": "blue",
            "blueish": "blue", "greenish": "green", "yellowish": "yellow", "pinkish": "pink", "brownish": "brown",
            "orangish": "orange", "orangey": "orange", "grayish": "gray", "greyish": "gray", "blackish": "black",
            "whitish": "white", "violetish": "violet", "goldish": "gold", "silvery": "silver",
            # comparatives: "make the grass greener" is a recolour towards green
            "greener": "green", "bluer": "blue", "redder": "red", "yellower": "yellow", "pinker": "pink",
            "purpler": "purple", "browner": "brown", "whiter": "white", "blacker": "black", "grayer": "gray",
            "greyer": "gray", "oranger": "orange"}
MODIFIERS = {
    # name: (lightness change in OKLab L, chroma factor)
    "light": (0.15, 0.7), "pale": (0.2, 0.5), "pastel": (0.18, 0.5), "baby": (0.18, 0.6), "dark": (-0.2, 0.9),
    "deep": (-0.12, 1.1), "bright": (0.05, 1.3), "vivid": (0.0, 1.35), "neon": (0.08, 1.5), "hot": (0.0, 1.3),
    "dull": (-0.05, 0.5), "muted": (0.0, 0.55), "soft": (0.1, 0.6), "rich": (-0.05, 1.2), "royal": (-0.05, 1.15),
    "sky": (0.15, 0.7), "navy": (-0.25, 0.8), "forest": (-0.15, 0.9), "sea": (0.0, 0.9), "blood": (-0.1, 1.1),
    "fire": (0.0, 1.3), "lime": (0.1, 1.1), "olive": (-0.12, 0.7), "midnight": (-0.3, 0.8), "dusty": (0.0, 0.5),
    "metallic": (0.05, 0.8), "electric": (0.05, 1.4), "more": (0.0, 1.1), "much": (0.0, 1.0),
}
TRAILERS = ("colored", "coloured", "color", "colour", "tinted", "toned", "one", "ones", "shade", "paint",
            "hue", "tone", "ish")


def words_of(text: str) -> List[str]:
    return text.lower().replace("-", " ").split()


def normalise(word: str) -> str:
    word = SYNONYMS.get(word, word)
    if word.endswith("ish") and word[:-3] in COLORS:  # "tealish"
        return word[:-3]
    return word


def parse_color(words: Sequence[str]) -> Optional[Tuple[List[str], List[str]]]:
    """(modifiers, colour names) when the whole phrase is a colour ("light blue", "blue-green
    coloured", "reddish brown"), else None."""
    words = [normalise(p) for w in words for p in w.split("-") if p and p not in ("a", "an", "the", "in", "of", "some")]
    while words and words[-1] in TRAILERS:
        words = words[:-1]
    if not words:
        return None
    mods: List[str] = []
    names: List[str] = []
    for i, word in enumerate(words):
        # navy, lime, olive are colours and modifiers: a modifier only before another colour word
        if word in COLORS and (names or word not in MODIFIERS or i == len(words) - 1):
            names.append(word)
        elif word in MODIFIERS and not names:
            mods.append(word)
        elif word == "and" and names:  # "black and white": two colours, both kept
            continue
        else:
            return None
    if not names or len(names) > 2:
        return None
    return mods, names


def color_phrase(words: Sequence[str]) -> Optional[str]:
    """The colour a whole phrase names, normalised to "modifier color [color]", or None."""
    parsed = parse_color(words)
    if parsed is None:
        return None
    return " ".join([m for m in parsed[0] if m not in ("much", "more")] + parsed[1])


def color_suffix(words: Sequence[str], min_start: int = 0) -> Tuple[int, Optional[str]]:
    """The longest tail of `words`, starting at `min_start` or later, that is a colour phrase:
    (index where it starts, colour), or (len(words), None)."""
    for start in range(max(min_start, len(words) - 5), len(words)):
        color = color_phrase(words[start:])
        if color is not None:
            return start, color
    return len(words), None


# Colour names that are also things: "an orange" is a fruit, "orange" a colour.
NOUN_COLORS = frozenset({"orange", "lime", "olive", "peach", "lemon", "cherry", "plum", "rose", "chocolate", "cream",
                         "sand", "gold", "emerald", "ruby", "jade", "sapphire", "salmon", "mint", "coral", "amber",
                         "ivory", "copper", "bronze", "rust", "charcoal", "lavender", "lilac", "violet", "navy"})


def color_rgb(color: str) -> Tuple[int, int, int]:
    """sRGB of a colour phrase (modifiers applied in OKLCH)."""
    from .colorspace import oklch_to_srgb, srgb_to_oklch
    import numpy as np

    parsed = parse_color(words_of(color))
    if parsed is None:
        raise ValueError(f"{color!r} is not a colour I know; known colours: {', '.join(sorted(COLORS))}")
    mods, names = parsed
    rgb = np.mean([COLORS[n] for n in names], axis=0)
    lch = srgb_to_oklch(rgb.reshape(1, 1, 3).astype(np.float32) / 255.0)
    for word in mods:
        dl, cf = MODIFIERS[word]
        lch[..., 0] = np.clip(lch[..., 0] + dl, 0.05, 0.97)
        lch[..., 1] *= cf
    out = np.clip(oklch_to_srgb(lch) * 255.0 + 0.5, 0, 255).astype(int).reshape(3)
    return int(out[0]), int(out[1]), int(out[2])


def is_achromatic(rgb: Tuple[int, int, int]) -> bool:
    h, l, s = colorsys.rgb_to_hls(*(c / 255.0 for c in rgb))
    return s < 0.12 or l < 0.08 or l > 0.93
