"""Running a pipeline over data into an output folder, so that a run killed at any moment (even
with kill -9) resumes where it stopped, redoing nothing finished and duplicating nothing.

The output folder:

    run.json         what ran (nodes and parameters, fingerprint, inputs); a resume must match it
    journal.jsonl    one line per finished item, appended after the item's files are all written
    manifest.jsonl   one line per item (status, outputs, notes such as "EXIF rotated"), in input order
    errors.jsonl     one line per bad item: its source, the stage that failed and why
    ...              whatever the pipeline's writer nodes write (per item, atomically)

The progress bar counts images: it moves when an item finishes and, within a batch, as far as
its nodes report (`Node.report_progress`: automatic masks report per decoder batch of every
image), so it moves at least once per image even when a batch takes minutes.

Items are read a little ahead on two threads while the nodes work on the current batch. A bad
file (corrupt, truncated, empty, not an image, a decompression bomb, a dangling link, unreadable)
or a node failing on one item is journalled as an error and the run goes on; the manifest, the
errors file and the writers' run-level files (a COCO JSON) are assembled from the journal at the
end of every run, so they always agree with it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..io.image import DEFAULT_MAX_PIXELS, load_image_with_info
from ..io.results import Journal, RunLock, atomic_write_json, atomic_write_jsonl, remove_stale_temporaries
from ..io.sources import InputError, Item, discover, fields_of
from ..types import Sample, type_name, value_fits
from .context import ItemFailure, PipelineError, RunContext
from .models import ModelCache
from .node import report_progress_to

Progress = Union[bool, Callable[[float, int], None]]

if TYPE_CHECKING:
    from .core import Pipeline

RUN_INFO, JOURNAL, MANIFEST, ERRORS = "run.json", "journal.jsonl", "manifest.jsonl", "errors.jsonl"


@dataclass
class RunReport:
    """How a run went. Counts cover the whole job (earlier runs of a resumed one included),
    except `processed`, the items this run did."""

    out_dir: Path
    total: int
    done_before: int
    processed: int
    ok: int
    errors: int
    seconds: float
    error_rows: List[Dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        rate = f", {self.processed / self.seconds:.2f} items/s" if self.processed and self.seconds > 0 else ""
        lines = [f"{self.total} items: {self.ok} done, {self.errors} failed"
                 + (f" ({self.done_before} finished by an earlier run)" if self.done_before else "")
                 + f"; this run processed {self.processed} in {self.seconds:.1f} s{rate}",
                 f"results in {self.out_dir}/ (manifest: {self.out_dir / MANIFEST})"]
        if self.errors:
            lines.append(f"errors in {self.out_dir / ERRORS}:")
            for row in self.error_rows[:10]:
                lines.append(f"  {row['source']}: {row['error']}")
            if len(self.error_rows) > 10:
                lines.append(f"  ... and {len(self.error_rows) - 10} more")
        return "\n".join(lines)


def run(pipeline: Pipeline, inputs: Union[str, Sequence[str]], out_dir: Union[str, Path], *,
        models: Optional[ModelCache] = None, resume: bool = False, retry_errors: bool = False, progress: Progress = True,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, spec: Optional[Dict[str, Any]] = None,
        log: Optional[Callable[[str], None]] = None) -> RunReport:
    """Run `pipeline` over `inputs` (images, folders, globs, .txt lists, .jsonl manifests) into
    `out_dir`. `resume=True` continues a run in that folder; without it a folder that already
    holds a run is refused; `retry_errors=True` (with resume) tries the failed items again.
    `models` shares loaded models with other runs (else the run makes and closes its own cache).
    `progress`: a bar on stderr (True), none (False), or a function called with (items done, total)
    as the run goes, fractions of an item included. Returns a `RunReport`; bad items never raise."""
    start = time.perf_counter()
    with prepared_run(pipeline, inputs, out_dir, resume=resume, retry_errors=retry_errors, spec=spec, log=log) as prep:
        out, items, journal, done, todo = prep.out, prep.items, prep.journal, prep.done, prep.todo
        done_before = prep.done_before

        shown: Optional[RunProgress] = None  # made once the models are loaded: its rate and ETA count only the work
        say = log or (lambda message: _write(message, shown))
        say(f"{pipeline.name}: {len(items)} items" + (f", {done_before} already done" if done_before else "")
            + f"; batches of {pipeline.batch_size}; results in {out}/")

        own_models = models is None
        if own_models:
            models = ModelCache(log=say)
        ctx = RunContext(models=models, out_dir=out, finished=lambda: _finished(journal, items), log=say)
        processed = 0
        failed = sum(1 for item in items if done.get(item.id, {}).get("status", "ok") != "ok")
        try:
            pipeline.open(ctx=ctx)
            shown = RunProgress(len(items), done_before, pipeline.name, progress if todo else False)
            report_progress_to(pipeline.nodes, shown.within_batch)
            with journal, ThreadPoolExecutor(max_workers=2, thread_name_prefix="grounded-read") as pool:
                for batch in _batches(todo, pipeline.batch_size, pool, max_pixels):
                    batch_start = time.perf_counter()
                    shown.batch_started(len(batch))
                    entries = _process(pipeline, batch)
                    seconds = (time.perf_counter() - batch_start) / max(len(batch), 1)
                    for entry in entries:
                        if entry["status"] == "ok":
                            entry["seconds"] = round(seconds, 3)
                        else:
                            shown.write(f"skipped {entry['id']}: {entry['error']}")
                        journal.append(entry)
                    processed += len(batch)
                    failed += sum(1 for e in entries if e["status"] != "ok")
                    shown.finished(len(batch), failed)
            shown.close()
            pipeline.finish()
        except KeyboardInterrupt:
            say(f"interrupted: {done_before + processed} of {len(items)} items are safely finished; "
                "run the same command with --resume to go on")
            raise
        finally:
            if shown is not None:
                shown.close()
            report_progress_to(pipeline.nodes, None)
            pipeline.close()
            if own_models:
                models.close()

        return prep.conclude(processed, start)


# ---- starting and resuming --------------------------------------------------------------------

@dataclass
class PreparedRun:
    """A run's output folder, locked and ready: the inputs found, the journal, and what is left to do.
    The local and the Ray runner both start (and end) a run through this."""

    out: Path
    items: List[Item]
    journal: Journal
    done: Dict[str, Dict[str, Any]]
    todo: List[Item]

    @property
    def done_before(self) -> int:
        return len(self.items) - len(self.todo)

    def conclude(self, processed: int, start: float) -> RunReport:
        """Write the manifest and errors files from the journal; the report of the run."""
        rows = _manifest_rows(self.journal.load(), self.items)
        atomic_write_jsonl(self.out / MANIFEST, rows)
        errors = [{"id": r["id"], "source": r["source"], "stage": r.get("stage"), "error": r.get("error")}
                  for r in rows if r["status"] != "ok"]
        atomic_write_jsonl(self.out / ERRORS, errors)
        return RunReport(out_dir=self.out, total=len(self.items), done_before=self.done_before, processed=processed,
                         ok=sum(1 for r in rows if r["status"] == "ok"), errors=len(errors),
                         seconds=time.perf_counter() - start, error_rows=errors)


@contextmanager
def prepared_run(pipeline: Pipeline, inputs: Union[str, Sequence[str]], out_dir: Union[str, Path], *,
                 resume: bool, retry_errors: bool, spec: Optional[Dict[str, Any]],
                 log: Optional[Callable[[str], None]] = None) -> Iterator[PreparedRun]:
    """Find the inputs (inputs named twice are reported to `log`), check the pipeline's wiring
    against them, then hold the folder's lock while the run starts (or resumes: `run.json` must
    match) and goes on."""
    out = Path(out_dir)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    items = discover(inputs, exclude=[out], report=log or (lambda message: _write(message, None)))
    if not items:
        from ..io.sources import IMAGE_EXTENSIONS

        raise InputError(f"no inputs found in {', '.join(map(str, inputs))} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    problems = pipeline.check(fields_of(items))
    if problems:
        raise PipelineError(problems)

    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        _start_or_resume(out, pipeline, inputs, resume, spec)
        remove_stale_temporaries(out)
        journal = Journal(out / JOURNAL)
        done = journal.load()
        if retry_errors:  # their new journal line will supersede the error's
            done = {key: entry for key, entry in done.items() if entry.get("status") == "ok"}
        todo = [item for item in items if item.id not in done]
        yield PreparedRun(out=out, items=items, journal=journal, done=done, todo=todo)


def _start_or_resume(out: Path, pipeline: Pipeline, inputs: List[str], resume: bool, spec) -> None:
    import json

    from .. import __version__

    info_path = out / RUN_INFO
    info = {"grounded": __version__, "name": pipeline.name, "fingerprint": pipeline.fingerprint(),
            "pipeline": pipeline.describe(), "inputs": [str(i) for i in inputs], "spec": spec}
    if info_path.exists():
        try:
            previous = json.loads(info_path.read_text())
        except ValueError:
            previous = {}
        finished = len(Journal(out / JOURNAL).load())
        if finished == 0:  # nothing finished yet (say, a model failed to load): start afresh
            previous, resume = {}, False
        elif not resume:
            raise RuntimeError(f"{out} already holds a run ({finished} items finished); pass --resume to continue it, "
                               "or choose another --out")
        if resume and previous.get("fingerprint") != info["fingerprint"]:
            unimportant = {(node_id, name) for node_id, node in zip(pipeline.ids, pipeline.nodes)
                           for name, param in type(node).params.items() if not param.fingerprint}
            changes = pipeline_changes(previous.get("pipeline") or [], info["pipeline"], unimportant)
            raise RuntimeError(
                f"cannot resume in {out}: the pipeline differs from the one that started this run: "
                + ("; ".join(changes) if changes else "its nodes' code changed")
                + "; resume with the same spec and --set values, or choose another --out")
    if info_path.exists() and resume:
        info["started"] = previous.get("started")
        info["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    else:
        info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(info_path, info, indent=2)


def pipeline_changes(then: List[Dict[str, Any]], now: List[Dict[str, Any]], unimportant=frozenset()) -> List[str]:
    """What differs between two pipelines (`Pipeline.describe()`), in words: "segment_auto.
    points_per_side was 32, now 16", "node 'clip_score' was not there". Parameters named in
    `unimportant` ((node id, name): devices) are left out."""
    import json

    def shown(value: Any) -> str:
        return json.dumps(value)

    then_nodes = {n["id"]: n for n in then}
    now_nodes = {n["id"]: n for n in now}
    changes = []
    for node_id, node in now_nodes.items():
        before = then_nodes.get(node_id)
        if before is None:
            changes.append(f"node {node_id!r} ({node['node']}) was not there")
        elif before["node"] != node["node"]:
            changes.append(f"node {node_id!r} was {before['node']}, now {node['node']}")
        else:
            for name in sorted(set(before["params"]) | set(node["params"])):
                old, new = before["params"].get(name), node["params"].get(name)
                if old != new and (node_id, name) not in unimportant:
                    changes.append(f"{node_id}.{name} was {shown(old)}, now {shown(new)}")
    changes += [f"node {node_id!r} ({node['node']}) is gone" for node_id, node in then_nodes.items()
                if node_id not in now_nodes]
    if not changes and [n["id"] for n in then] != [n["id"] for n in now]:
        changes.append(f"the nodes were in the order {', '.join(n['id'] for n in then)}")
    return changes


def _finished(journal: Journal, items: List[Item]) -> List[Dict[str, Any]]:
    return [row for row in _manifest_rows(journal.load(), items) if row["status"] == "ok"]


def _manifest_rows(entries: Dict[str, Dict[str, Any]], items: List[Item]) -> List[Dict[str, Any]]:
    """Journal entries in input order; entries of items no longer among the inputs (an earlier
    run's) follow, in the order they finished."""
    rows, seen = [], set()
    for item in items:
        if item.id in entries:
            rows.append(entries[item.id])
            seen.add(item.id)
    rows += [entry for key, entry in entries.items() if key not in seen]
    return rows


# ---- reading and processing -------------------------------------------------------------------

Loaded = Tuple[Item, Optional[Sample], Optional[ItemFailure]]


def _batches(items: List[Item], size: int, pool: ThreadPoolExecutor, max_pixels):
    """Batches of loaded items, reading up to two batches ahead on the pool's threads."""
    pending = iter(items)
    window: deque = deque()

    def refill():
        while len(window) < 2 * size:
            item = next(pending, None)
            if item is None:
                return
            window.append((item, pool.submit(_load, item, max_pixels)))

    refill()
    while window:
        batch: List[Loaded] = []
        while window and len(batch) < size:
            item, future = window.popleft()
            refill()
            batch.append(future.result())
        yield batch


def _load(item: Item, max_pixels) -> Loaded:
    sample = Sample(image_path=item.source, image_id=item.id)
    try:
        types = Sample.field_types()
        for name, value in item.fields.items():
            if name in types and not value_fits(value, types[name]):
                raise ValueError(f"manifest field {name!r} must be {type_name(types[name])}, got {type(value).__name__}")
            sample.set(name, value)
        if item.path is not None:
            image, info = load_image_with_info(item.path, max_pixels=max_pixels)
            sample.image = image
            for note in load_notes(info):
                sample.note(note)
    except Exception as err:  # noqa: BLE001 - whatever a bad file raises, it is that item's error
        return item, None, ItemFailure("load", err)
    return item, sample, None


def load_notes(info: Dict[str, Any]) -> List[str]:
    """What was done to make an awkward image RGB, in words for the manifest."""
    notes = []
    if info.get("frames", 1) > 1:
        notes.append(f"{info.get('format') or 'image'} with {info['frames']} frames: used the first")
    if info.get("exif_rotated"):
        notes.append("EXIF orientation applied: rotated upright")
    mode = str(info.get("original_mode"))
    if mode not in ("RGB", "None"):
        notes.append(f"converted from {mode} to RGB")
    if info.get("had_alpha"):
        notes.append("transparency composited onto black")
    return notes


def _process(pipeline: Pipeline, batch: List[Loaded]) -> List[Dict[str, Any]]:
    entries: Dict[int, Dict[str, Any]] = {}
    good = [(i, item, sample) for i, (item, sample, failure) in enumerate(batch) if failure is None]
    for i, (item, _, failure) in enumerate(batch):
        if failure is not None:
            entries[i] = _error_entry(item, failure)
    if good:
        results = pipeline.run_batch([sample for _, _, sample in good])
        for (i, item, _), (sample, failure) in zip(good, results):
            entries[i] = _error_entry(item, failure) if failure is not None else _ok_entry(item, sample)
    return [entries[i] for i in range(len(batch))]


def _ok_entry(item: Item, sample: Sample) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"id": item.id, "source": item.source, "status": "ok"}
    if sample.image is not None:
        entry["height"], entry["width"] = sample.image_size
    if sample.detections is not None:
        entry["detections"] = len(sample.detections)
    entry["outputs"] = dict(sample.outputs)
    notes = sample.meta.get("notes")
    if notes:
        entry["notes"] = list(notes)
    return entry


def _error_entry(item: Item, failure: ItemFailure) -> Dict[str, Any]:
    return {"id": item.id, "source": item.source, "status": "error", "stage": failure.stage, "error": failure.reason}


# ---- display ----------------------------------------------------------------------------------

class RunProgress:
    """A run's progress in items: the finished ones, plus how far the current batch (local) or the
    batches in flight (Ray) are, as the nodes report it. It only moves forward. Shown as a tqdm bar
    on stderr (count, rate in images/s, time left), given to a function, or not at all."""

    def __init__(self, total: int, initial: int, name: str, show: Progress):
        self.total, self.done, self.position = total, float(initial), float(initial)
        self._batch = 0
        self._lock = threading.Lock()
        self._call = show if callable(show) else None
        self._bar = _progress_bar(total, initial, name) if show is True else None

    def batch_started(self, size: int) -> None:
        self._batch = size

    def within_batch(self, fraction: float) -> None:
        """A node of the current batch is `fraction` of the way through it (local runs)."""
        self._move(self.done + fraction * self._batch)

    def in_flight(self, items: float) -> None:
        """The batches in flight are worth `items` finished items, as their nodes report (Ray)."""
        self._move(self.done + items)

    def finished(self, count: int, failed: int = 0) -> None:
        with self._lock:
            self.done += count
            if self._bar is not None and failed:
                self._bar.set_postfix(failed=failed, refresh=False)
        self._move(self.done)

    def _move(self, position: float) -> None:
        with self._lock:
            position = min(position, float(self.total))
            if position <= self.position:
                return
            step, self.position = position - self.position, position
            if self._bar is not None:
                self._bar.update(step)
        if self._call is not None:
            self._call(position, self.total)

    def write(self, message: str) -> None:
        _write(message, self)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_bar(total: int, initial: int, name: str):
    from tqdm.auto import tqdm

    class Count(float):
        def __str__(self) -> str:  # "2.4/8" within a batch, "3/8" between
            return f"{self:.1f}".rstrip("0").rstrip(".")

    class ItemBar(tqdm):
        @property
        def format_dict(self):
            info = super().format_dict
            info["n"] = Count(info["n"])
            return info

    return ItemBar(total=total, initial=initial, desc=name, unit="img", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 5.0, smoothing=0.1)


def _write(message: str, shown: Optional[RunProgress]) -> None:
    bar = shown._bar if shown is not None else None
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
