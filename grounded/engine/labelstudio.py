"""Interchange with Label Studio: a round's masks as tasks with brush pre-annotations, and the reviewed
tasks back as a new dataset version.

Label Studio's brush format ("format": "rle"): the mask as an RGBA image of width x height, flattened
(row-major, 4 channels, every channel the mask's value 0 or 255), run-length encoded into a bit
stream: 32 bits of length, 5 bits of word size - 1, four 4-bit run-size classes - 1 (3, 4, 8, 16
bits), then per run either `1 CC LEN VALUE` (a run of one value) or `0 CC LEN VALUES...` (literal
values), padded to whole bytes and written as a list of byte values. `encode_brush` writes exactly
the bytes label_studio_converter.brush.mask2rle does (tested against 0.0.59); `decode_brush`
reads any stream in that format (the page editor writes literal runs as well).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

FROM_NAME, TO_NAME = "tag", "image"
RUN_CLASSES = (3, 4, 8, 16)


def encode_brush(mask: np.ndarray) -> List[int]:
    """An H x W mask -> Label Studio brush RLE bytes (as label_studio_converter's mask2rle)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a brush mask is H x W, got shape {mask.shape}")
    flat = np.where(mask.ravel() > 0, 255, 0).astype(np.int64)
    n = flat.size * 4
    parts = [f"{n:032b}", f"{8 - 1:05b}", "".join(f"{c - 1:04b}" for c in RUN_CLASSES)]
    if flat.size:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4  # every pixel is 4 equal channel values
        for length, value in zip(lengths.tolist(), flat[starts].tolist()):
            bits = f"{value:08b}"
            if length <= 8:
                parts.append(f"100{length - 1:03b}{bits}")
            elif length <= 16:
                parts.append(f"101{length - 1:04b}{bits}")
            elif length <= 256:
                parts.append(f"110{length - 1:08b}{bits}")
            else:
                while length > 2**16:
                    parts.append(f"111{2**16 - 1:016b}{bits}")
                    length -= 2**16
                parts.append(f"111{length - 1:016b}{bits}")
    stream = "".join(parts)
    stream += "0" * (8 - len(stream) % 8)  # as mask2rle: always padded, a whole zero byte when aligned
    return np.packbits(np.frombuffer(stream.encode(), np.uint8) - ord("0")).tolist()


def decode_brush(rle, height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE bytes -> H x W bool (the alpha channel, set where > 0)."""
    bits = np.unpackbits(np.asarray(rle, np.uint8))
    pos = 0

    def read(count: int) -> int:
        nonlocal pos
        value = 0
        for b in bits[pos:pos + count]:
            value = (value << 1) | int(b)
        pos += count
        return value

    total = read(32)
    word = read(5) + 1
    classes = [read(4) + 1 for _ in range(4)]
    if total != height * width * 4:
        raise ValueError(f"brush RLE holds {total} values; a {width}x{height} RGBA image has {height * width * 4}")
    out = np.zeros(total, np.uint8)
    i = 0
    while i < total:
        repeat = read(1)
        end = i + 1 + read(classes[read(2)])
        if end > total:
            raise ValueError("brush RLE runs past the image's end (corrupted)")
        if repeat:
            out[i:end] = read(word)
        else:
            for k in range(i, end):
                out[k] = read(word)
        i = end
    return out.reshape(height, width, 4)[:, :, 3] > 0


def brush_result(mask: np.ndarray, label: str, index: int, score: Optional[float] = None) -> dict:
    h, w = mask.shape
    result = {"id": f"grounded-{index}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
              "original_width": int(w), "original_height": int(h), "image_rotation": 0,
              "value": {"format": "rle", "rle": encode_brush(mask), "brushlabels": [label]}}
    if score is not None:
        result["score"] = float(score)
    return result


LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
{labels}  </BrushLabels>
</View>"""


def label_config(labels: List[str]) -> str:
    """The Label Studio labelling config the exported tasks fit."""
    from xml.sax.saxutils import quoteattr

    return LABEL_CONFIG.format(labels="".join(f"    <Label value={quoteattr(n)}/>\n" for n in labels))


def export_tasks(project, out, round_index: Optional[int] = None, image_url: str = "/data/local-files/?d={path}",
                 log=print) -> int:
    """Tasks for a round's images (its saved masks, pre-filled ones included) or, without a round,
    for every image of the newest dataset version; the masks as brush pre-annotations. Writes `out`
    and, beside it, OUT.config.xml (the labelling config). Images gone from the data folder get no
    task (Label Studio could not show them), and are named. Returns the number of tasks."""
    from urllib.parse import quote

    from ..rle import decode_rle
    from .project import ProjectError, image_key, read_json

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the tasks file to write (e.g. {out / 'tasks.json'})")
    if round_index is not None:
        entries = [e for e in project.rounds if e["index"] == round_index]
        if not entries:
            raise ValueError(f"the project has no round {round_index} (rounds: {[e['index'] for e in project.rounds]})")
        entry = entries[0]
        per_image = []
        for name in entry["images"]:
            saved = project.round_dir(entry) / "labels" / "images" / f"{image_key(name)}.json"
            annotations = read_json(saved, "a round's saved image")["annotations"] if saved.exists() else []
            per_image.append((name, [(a["segmentation"], a["label"], a.get("score")) for a in annotations]))
    else:
        path = project.latest_dataset()
        if path is None:
            raise ProjectError(f"{project.root / 'datasets'} holds no dataset version (v000.json is written at init)")
        coco = read_json(path, "a dataset version")
        names = {c["id"]: c["name"] for c in coco["categories"]}
        by_image: Dict[int, list] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append((a["segmentation"], names[a["category_id"]], a.get("score")))
        per_image = [(im["file_name"], by_image.get(im["id"], [])) for im in coco["images"]]
    present = [(name, masks) for name, masks in per_image if (project.data / name).is_file()]
    if len(present) < len(per_image):
        gone = sorted({name for name, _ in per_image} - {name for name, _ in present})
        log(f"{len(gone)} image(s) gone from {project.data} get no task: {', '.join(gone[:5])}"
            f"{' ...' if len(gone) > 5 else ''}")
    tasks, labels = [], set()
    for name, masks in present:
        results = []
        for k, (segmentation, label, score) in enumerate(masks):
            results.append(brush_result(decode_rle(segmentation), label, k, score))
            labels.add(label)
        # Quoted: a name with "&", "#", "?", "%" or a space would otherwise end or split the URL's query.
        path, url_name = quote(str(project.data / name), safe="/"), quote(name, safe="")
        tasks.append({"data": {"image": image_url.format(path=path, name=url_name), "grounded_file_name": name,
                               "grounded_image_id": project.state["image_ids"].get(name)},
                      "predictions": [{"model_version": project.state["model"]["current"], "result": results}]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks))
    out.with_name(out.name + ".config.xml").write_text(label_config(sorted(labels) or ["object"]))
    return len(tasks)


def task_masks(task: dict) -> Tuple[str, Optional[List[Tuple[np.ndarray, str]]]]:
    """A (reviewed) Label Studio task -> its image's file name and masks with labels from the newest
    annotation that was not cancelled (skipped); None when the task has no such annotation (not reviewed:
    its pre-annotations are proposals nobody accepted). An annotation with no brush results is a review
    that found nothing: an empty list. A task not in Label Studio's shape is refused, naming it."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError(f"a task {str(task)[:60]!r} is not a Label Studio task (an object with data)")
    name = task["data"].get("grounded_file_name")
    if not name:
        raise ValueError(f"task {task.get('id')} has no data.grounded_file_name (not exported by grounded engine export-ls)")
    where = f"task {task['id']} ({name})" if task.get("id") is not None else f"the task of {name}"
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise ValueError(f"{where}: annotations should be a list of Label Studio annotations")
    annotations = [a for a in annotations if not a.get("was_cancelled")]
    if not annotations:
        return name, None
    newest = max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    results = newest.get("result") or []
    if not isinstance(results, list):
        raise ValueError(f"{where}: annotation {newest.get('id')}'s result should be a list")
    masks = []
    for r in results:
        if not isinstance(r, dict) or str(r.get("type", "")).lower() != "brushlabels":
            continue
        try:
            value = r["value"]
            rle, height, width = value["rle"], int(r["original_height"]), int(r["original_width"])
            labels = value.get("brushlabels") or ["object"]
            masks.append((decode_brush(rle, height, width), str(labels[0])))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            detail = f"lacks {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"{where}: brush result {r.get('id')!r} {detail}") from None
    return name, masks


def checked_reviews(project, tasks_file, tasks: list):
    """The tasks' (image, masks) pairs, the reviewed ones among them and each reviewed image's size,
    every one checked before an import's round begins: a refused import leaves no round behind."""
    from ..io.image import load_image

    parsed = [task_masks(t) for t in tasks]
    unknown = [n for n, _ in parsed if n not in project.state["image_ids"]]
    if unknown:
        raise ValueError(f"tasks name images the project does not know: {unknown[:5]}")
    reviewed = [(n, m) for n, m in parsed if m is not None]
    heldout = sorted({n for n, _ in reviewed} & set(project.heldout_names()))
    if heldout:  # the held-out split is never trained on, so never in a dataset version
        raise ValueError(f"{tasks_file} reviews held-out images {heldout[:5]}: they are never labelled into the "
                         "dataset (they measure the models); leave their tasks out")
    if not reviewed:
        raise ValueError(f"no task in {tasks_file} has an annotation: nothing was reviewed (export from Label Studio "
                         "after annotating; a task's pre-annotations count once they are submitted as an annotation)")
    names = [n for n, _ in reviewed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{tasks_file} reviews {twice[:5]} in more than one task: keep one task per image")
    sizes = {}
    for name, masks in reviewed:
        path = project.data / name
        if not path.is_file():
            raise ValueError(f"{tasks_file} reviews {name}, which is gone from the data folder {project.data}")
        sizes[name] = load_image(path).shape[:2]
        for k, (mask, _) in enumerate(masks):
            if mask.shape != sizes[name]:
                raise ValueError(f"{tasks_file}: the review of {name} has a {mask.shape[1]}x{mask.shape[0]} brush mask "
                                 f"(mask {k + 1}), but the image is {sizes[name][1]}x{sizes[name][0]} (width x height)")
    return parsed, reviewed, sizes


def import_tasks(project, tasks_file) -> Tuple[Path, int]:
    """Reviewed tasks -> a `review` round (its labels saved as the page's are) and the dataset version
    after it. A task's newest annotation is the review of its image: its masks replace what the image
    had, and an empty annotation (every mask deleted) leaves the image with none. A task nobody annotated
    was not reviewed: its image keeps what the dataset held (its pre-annotations are not accepted).
    An interrupted import resumes when run again with the same file: images already imported are kept,
    a half-written one is written again. Returns the new version's path and the number of masks imported."""
    import time

    from .project import read_json
    from .rounds import write_dataset
    from .stages import open_store

    tasks = read_json(Path(tasks_file), "the Label Studio tasks file")
    if not isinstance(tasks, list):
        raise ValueError(f"{tasks_file} is not a Label Studio JSON export (a list of tasks)")
    unfinished = project.unfinished()
    # The same file however it is named (relative or absolute, from any folder): the source is kept resolved.
    source = str(Path(tasks_file).resolve())
    resumed = (unfinished is not None and unfinished["stage"] == "review"
               and str(Path(unfinished["source"]).resolve()) == source)
    if unfinished is not None and not resumed:
        if unfinished["stage"] == "review":
            raise ValueError(f"round {unfinished['index']} is unfinished (an import of {unfinished['source']}): run "
                             f"grounded engine import-ls {project.root} {unfinished['source']} to finish it first")
        raise ValueError(f"round {unfinished['index']} is unfinished: finish it before importing")
    parsed, reviewed, sizes = checked_reviews(project, tasks_file, tasks)
    names = [n for n, _ in reviewed]
    if resumed and unfinished["images"] != names:
        raise ValueError(f"{tasks_file} changed since round {unfinished['index']} began importing it")
    entry = unfinished if resumed else {
        "index": len(project.rounds) + 1, "stage": "review", "images": names, "status": "labelling",
        "model": project.model_spec(), "finetune": False, "started": time.time(), "source": source,
        "not_reviewed": len(parsed) - len(reviewed), "imported": []}
    if not resumed:
        project.rounds.append(entry)
        project.save()
    store = open_store(project, entry)
    by_name = {r.file_name: r for r in store.images}
    imported = entry.setdefault("imported", [])
    for name, masks in reviewed:
        if name in imported:
            continue
        record = by_name[name]
        record.height, record.width = sizes[name]
        # Cleared first: a killed import may have written some of this image's labels; an empty review
        # is saved as such, so the dataset drops the image's earlier masks.
        version = store.clear(record.key, store.get(record.key)["version"])["version"]
        for label in sorted({lab for _, lab in masks}):
            chosen = [m for m, lab in masks if lab == label]
            logs = [{"clicks": [], "box": None, "num_clicks": 0, "seconds": None, "candidate": None, "score": 1.0,
                     "label_studio": True}] * len(chosen)
            version = store.add_many(record.key, version, np.stack(chosen), label, [1.0] * len(chosen), logs)["version"]
        imported.append(name)
        project.save()
    count = sum(len(masks) for _, masks in reviewed)
    entry["status"] = "dataset"
    project.save()
    path = write_dataset(project, entry)
    entry["status"] = "done"
    entry["finished"] = time.time()
    project.save()
    return path, count
