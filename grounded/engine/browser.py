"""The simulated annotator on the real annotation page: the same click rule (grounded.eval.masks:
center_point first, then next_click on the page's own mask) and the same decisions (annotator.py),
carried out with the mouse and the page's buttons of a playwright Page, so the page's decoder, its
click log and its saves are what the round records.

The caller opens the page (any playwright browser) on a server running `stages.page_session`; these
functions take the Page and the image's ground truth.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .annotator import ACCEPT_IOU, MAX_CLICKS

WAIT_MS = 120_000


def page_mask(page, image_size: int, shape) -> np.ndarray:
    """The mask the page shows now (its chosen candidate), at the image's size."""
    from ..annotate.server import postprocess_low_res

    logits = page.evaluate("""() => { const s = window.grounded.state, n = s.result.logits.length / 4;
        return Array.from(s.result.logits.subarray(s.candidate * n, (s.candidate + 1) * n)); }""")
    side = int(round(len(logits) ** 0.5))
    return postprocess_low_res(np.asarray(logits, np.float32).reshape(side, side), image_size, tuple(shape))


def click(page, x: float, y: float, background: bool = False) -> None:
    """A click at image pixel (x, y); waits until the page shows the decoder's mask for it."""
    count = page.evaluate("window.grounded.state.points.length")
    page.evaluate("window.grounded.state.result = null")
    box = page.locator("#overlay").bounding_box()
    scale = page.evaluate("window.grounded.state.scale")
    if background:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale)
    if background:
        page.keyboard.up("Shift")
    try:
        page.wait_for_function(f"window.grounded.state.points.length === {count + 1} && window.grounded.state.result !== null",
                               timeout=WAIT_MS)
    except Exception as err:  # say what the page shows: the timeout alone does not
        shown = page.evaluate("""() => ({points: window.grounded.state.points.length, box: window.grounded.state.box,
            result: window.grounded.state.result !== null, status: document.querySelector('#status').innerText,
            ready: window.grounded.ready})""")
        raise RuntimeError(f"the page did not answer a click at ({x:.1f}, {y:.1f}) (points before: {count}): {shown}") from err


def accept(page) -> int:
    """Accept the shown mask; returns its saved annotation id once the list shows it."""
    page.evaluate("document.querySelector('#status').textContent = ''")  # an earlier 'saved' must not count
    page.click("#accept")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('saved')", timeout=WAIT_MS)
    saved_id = int(page.inner_text("#status").split()[2])
    page.wait_for_selector(f'#masks li[data-id="{saved_id}"]', timeout=WAIT_MS)
    return saved_id


def click_until_accepted(page, truth: np.ndarray, image_size: int, first: bool = True) -> int:
    """Clicks on the page until its mask has IoU >= 0.9 with `truth` or 20 prompts, then accepts.
    first: start with the centre click (else the page already shows a prompt, e.g. a correction's box).
    Returns the number of clicks made."""
    from ..eval.masks import center_point, mask_iou, next_click

    made = 0
    if first:
        x, y = center_point(truth)
        click(page, x, y)
        made = 1
    else:
        page.wait_for_function("window.grounded.state.result !== null", timeout=WAIT_MS)
    prompts = made + (0 if first else 1)
    while True:
        prediction = page_mask(page, image_size, truth.shape)
        if mask_iou(prediction[None], truth[None])[0] >= ACCEPT_IOU or prompts >= MAX_CLICKS:
            break
        nxt = next_click(prediction, truth)
        if nxt is None:
            break
        click(page, nxt[0], nxt[1], background=nxt[2] == 0)
        made += 1
        prompts += 1
    accept(page)
    return made


def annotate_manual(page, truths: np.ndarray, image_size: int) -> List[int]:
    """Stage manual on the page's current image: every object clicked; clicks per object."""
    return [click_until_accepted(page, truth, image_size) for truth in truths]


def _gone(page, annotation_id: int) -> None:
    page.wait_for_function(f"!document.querySelector('#prefilled li[data-id=\"{annotation_id}\"]')", timeout=WAIT_MS)


def annotate_semi(page, truths: np.ndarray, image_size: int, prefilled: Optional[list] = None) -> dict:
    """Stage semi on the page's current image: the pre-filled masks it lists accepted, corrected
    (their box re-prompts SAM, then clicks) or deleted as annotator.semi_decisions says, and the
    objects left clicked from scratch. Returns the decision counts."""
    from .annotator import semi_decisions

    if prefilled is None:
        prefilled = [a for a in page.evaluate("window.grounded.state.annotations.map(a => ({...a, mask: null}))")
                     if a.get("prefill")]
    plan = semi_decisions(prefilled, truths)
    for annotation_id in plan["accept"]:
        page.locator(f'#prefilled li[data-id="{annotation_id}"] .confirm').click()
        _gone(page, annotation_id)
    for annotation_id in plan["delete"]:
        page.locator(f'#prefilled li[data-id="{annotation_id}"] .delete').click()
        _gone(page, annotation_id)
    for annotation_id, t in plan["correct"].items():
        page.evaluate("window.grounded.state.result = null")
        page.locator(f'#prefilled li[data-id="{annotation_id}"] .correct').click()
        click_until_accepted(page, truths[t], image_size, first=False)
        _gone(page, annotation_id)
    for t in plan["add"]:
        click_until_accepted(page, truths[t], image_size)
    return {k: len(v) for k, v in plan.items()}
