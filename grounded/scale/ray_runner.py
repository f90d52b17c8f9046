"""A pipeline over a dataset on Ray Data, into the same output folder layout as the local runner.

    items ──► read (Ray tasks, in parallel) ──► pipeline actors (a pool) ──► driver: journal
              load + validate each image          every node of the spec,       appends each
              (a bad file becomes its error)      models loaded once per actor, finished item;
                                                  batch_size from the spec,     manifest, errors,
                                                  writers write per-item files  run-level files

What is the same as a local run (it is the local runner's code: `grounded.pipeline.runner`):
discovering inputs, the wiring check, `run.json` and the resume check, the journal (only the
driver writes it, one line per finished item), the manifest and errors files, and the writers'
run-level files (a COCO JSON) assembled from the journal at the end. So a Ray run killed at any
moment resumes (on Ray or locally) without redoing or duplicating finished items, and a bad file
is an error line, never the end of the run.

The model stages are fused into one actor class running the whole pipeline: every node shares
the actor's `ModelCache` (one SAM encoding per image for every node prompting it), and only small
journal entries travel back. Each actor runs with `OMP_NUM_THREADS` threads (default 1) and asks
Ray for `actor_cpus` CPUs (fractional on small machines, so the read tasks always find a CPU and
the pool cannot starve them) and `gpus_per_actor` GPUs when the cluster has GPUs.

The writers in the actors write into `out_dir`: on a cluster it must be a filesystem every node
sees (NFS, a mounted bucket) at the same path.

The progress bar counts finished items and, while batches are in the actors, what their nodes
report (`Node.report_progress`, gathered by a small actor the driver reads twice a second). A
local Ray started for the run goes with it: shut down at the end, and, should the driver be
killed outright, ended by a watcher process (`grounded.scale.reaper`). An address that cannot
work is refused within seconds, saying why.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..io.image import DEFAULT_MAX_PIXELS
from ..pipeline.core import ItemFailure, Pipeline, RunContext
from ..pipeline.models import ModelCache
from ..pipeline.node import Node, report_progress_to
from ..pipeline.runner import (Progress, RunProgress, RunReport, _error_entry, _finished, _load, _process, _write,
                               prepared_run)
from .reaper import Reaper

DEFAULT_OBJECT_STORE_MB = 256  # a local Ray's shared-memory object store; images pass through it briefly


def run_on_ray(pipeline: Pipeline, inputs: Union[str, Sequence[str]], out_dir: Union[str, Path], *,
               resume: bool = False, retry_errors: bool = False, progress: Progress = True,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, spec: Optional[Dict[str, Any]] = None,
               address: Optional[str] = None, num_cpus: Optional[int] = None,
               object_store_mb: int = DEFAULT_OBJECT_STORE_MB, actors: Optional[int] = None,
               actor_cpus: Optional[float] = None, gpus_per_actor: Optional[float] = None, read_cpus: float = 0.25,
               threads_per_actor: int = 1, log: Optional[Callable[[str], None]] = None) -> RunReport:
    """Run `pipeline` over `inputs` into `out_dir` on Ray, with the local runner's folder layout
    and resume rules (see `grounded.pipeline.runner.run` for `resume`, `retry_errors`, `max_pixels`,
    `progress`).

    Ray: an already initialised Ray is used as it is; else `address` connects to a cluster
    ("auto": the one this machine belongs to; "host:6379": its head), or a local Ray starts with
    `num_cpus` CPUs, no dashboard and an object store of `object_store_mb` MB (and is shut down at
    the end). Ray Client addresses ("ray://...") cannot run Ray Data and are refused.
    The pool: `actors` actors (default: one per GPU, else 1), each asking for `actor_cpus` CPUs
    (default 1, 0.5 on a machine of fewer than 4) and `gpus_per_actor` GPUs (default 1 when the
    cluster has GPUs, else 0), with `threads_per_actor` torch/OpenMP threads. Read tasks ask for
    `read_cpus` CPUs each."""
    start = time.perf_counter()
    if address:
        check_address(address)  # before anything else: a wrong address is the first thing to hear of
    with prepared_run(pipeline, inputs, out_dir, resume=resume, retry_errors=retry_errors, spec=spec, log=log) as prep:
        out, items, journal, todo = prep.out, prep.items, prep.journal, prep.todo
        done_before = prep.done_before
        shown: Optional[RunProgress] = None
        say = log or (lambda message: _write(message, shown))

        reaper: Optional[Reaper] = None
        started_ray = False
        processed = 0
        try:
            if todo:
                import ray

                if not ray.is_initialized() and not address:
                    reaper = Reaper()  # a local Ray is about to start: no process of it may outlive the run
                started_ray = connect(address, num_cpus, object_store_mb)
                if reaper is not None:
                    reaper.record()
                board = ray.remote(num_cpus=0)(ProgressBoard).remote()
                dataset = _dataset(pipeline, todo, out, max_pixels, actors, actor_cpus, gpus_per_actor, read_cpus,
                                   threads_per_actor, say, board)
                say(f"{pipeline.name} on Ray: {len(items)} items" + (f", {done_before} already done" if done_before else "")
                    + f"; batches of {pipeline.batch_size}; results in {out}/")
                shown = RunProgress(len(items), done_before, pipeline.name, progress)
                failed = 0
                with journal, _watching(board, shown, reaper):
                    for row in _rows_as_they_come(dataset):
                        entry = json.loads(row["entry"])
                        if entry["status"] != "ok":
                            failed += 1
                            shown.write(f"skipped {entry['id']}: {entry['error']}")
                        journal.append(entry)
                        processed += 1
                        shown.finished(1, failed)
                shown.close()
            _finish_writers(pipeline, RunContext(models=ModelCache(), out_dir=out,
                                                 finished=lambda: _finished(journal, items), log=say))
        except KeyboardInterrupt:
            say(f"interrupted: {len(journal.load())} of {len(items)} items are safely finished; "
                "run the same command with --resume to go on")
            raise
        finally:
            if shown is not None:
                shown.close()
            if started_ray:
                import ray

                ray.shutdown()
            if reaper is not None:
                reaper.done()

        return prep.conclude(processed, start)


def _rows_as_they_come(dataset):
    """The dataset's rows, each block as soon as an actor hands it over (no read-ahead, which holds
    finished items back from the journal until the next block is ready)."""
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for entry in block["entry"]:
            yield {"entry": entry}


class ProgressBoard:
    """A small actor: for each batch in an actor, how many items' worth of it its nodes have done."""

    def __init__(self) -> None:
        self.parts: Dict[str, float] = {}

    def report(self, key: str, items: float) -> None:
        if items > 0:
            self.parts[key] = items
        else:
            self.parts.pop(key, None)

    def total(self) -> float:
        return sum(self.parts.values())


class _watching:
    """While the driver reads results: a thread that, twice a second, moves the progress with the
    batches in flight and tells the reaper which processes are Ray's."""

    def __init__(self, board, shown: RunProgress, reaper: Optional[Reaper]):
        self.board, self.shown, self.reaper = board, shown, reaper
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="grounded-ray-progress", daemon=True)

    def __enter__(self):
        if self.reaper is not None:
            self.reaper.record()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        import ray

        while not self.stop.wait(0.5):
            if self.reaper is not None:
                self.reaper.record()
            try:
                self.shown.in_flight(ray.get(self.board.total.remote(), timeout=5))
            except Exception:  # noqa: BLE001 - Ray shutting down; the bar is only a display
                return


def check_address(address: str) -> None:
    """A clear error, within seconds, for an address that cannot work: a Ray Client address, or
    HOST:PORT where nothing answers. ("auto" is left to Ray, which says at once when it finds no
    cluster.)"""
    if address.startswith("ray://"):
        raise ValueError(f"--ray-address {address}: Ray Client (ray://) addresses cannot run Ray Data, which "
                         "--executor ray uses; run grounded on a node of the cluster with --ray-address auto (or "
                         "the head's HOST:6379), the output folder on a filesystem every node sees")
    if address == "auto" or address.startswith(("local", "anyscale://")):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: give auto, or the head node's HOST:PORT (its GCS port, 6379 "
                         "unless `ray start --head --port` said otherwise)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            pass
    except OSError as err:
        reason = "nothing listens there" if isinstance(err, ConnectionRefusedError) else (str(err) or type(err).__name__)
        raise RuntimeError(f"--ray-address {address}: cannot reach a Ray head there ({reason}); start one with "
                           f"`ray start --head --port {port}` on {host}, or leave --ray-address out to start a local "
                           "Ray for this run") from None


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None,
            object_store_mb: int = DEFAULT_OBJECT_STORE_MB) -> bool:
    """Make sure Ray is initialised; True when this call did (the caller shuts Ray down, or disconnects)."""
    import ray

    if ray.is_initialized():
        return False
    _quiet_ray_logs()
    if address:
        check_address(address)
        try:
            # A cluster's resources and object store are the cluster's own business.
            ray.init(address=address, logging_level="WARNING")
        except (ConnectionError, TimeoutError) as err:
            found = " (no cluster runs on this machine; start one with `ray start --head`)" if address == "auto" else ""
            raise RuntimeError(f"--ray-address {address}: cannot connect to a Ray cluster{found}: {err}") from None
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=int(object_store_mb) * 2**20,
             logging_level="WARNING")
    return True


def _quiet_ray_data_console() -> None:
    """Ray Data (once imported) prints INFO notes to the console; its log file keeps them all."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
            if _drop_progress_bar_note not in handler.filters:
                handler.addFilter(_drop_progress_bar_note)


def _drop_progress_bar_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Progress bars disabled")


def _quiet_ray_logs() -> None:
    """Ray's notes that say nothing to a grounded user: that a local Ray uses token authentication
    (its default), that Ray Data's progress bars are off (the run has its own), how long its
    dataset took."""
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


def _dataset(pipeline: Pipeline, todo, out: Path, max_pixels, actors, actor_cpus, gpus_per_actor, read_cpus,
             threads_per_actor: int, say, board):
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run's own bar counts finished items
    context.print_on_execution_start = False
    _quiet_ray_data_console()
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
    if gpus_per_actor is None:
        gpus_per_actor = 1 if gpus else 0
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus and gpus_per_actor else 1
    if actor_cpus is None:
        actor_cpus = 1.0 if cpus >= 4 else 0.5
    say(f"Ray: {cpus:g} CPUs, {gpus:g} GPUs; {actors} pipeline actor(s) with {actor_cpus:g} CPU, "
        f"{gpus_per_actor:g} GPU, {threads_per_actor} thread(s) each")
    threads = {"OMP_NUM_THREADS": str(threads_per_actor), "MKL_NUM_THREADS": str(threads_per_actor)}
    batch = pipeline.batch_size
    rows = [{"item": pickle.dumps(item)} for item in todo]
    blocks = max(1, min(len(rows), -(-len(rows) // batch)))
    read = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _read_batch, batch_size=batch, fn_kwargs={"max_pixels": max_pixels}, num_cpus=read_cpus,
        runtime_env={"env_vars": threads})
    with warnings.catch_warnings():
        # max_restarts has no named parameter in Ray 2.60 yet; Ray's own docs name it for this.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return read.map_batches(
            PipelineWorker, batch_size=batch,
            fn_constructor_kwargs={"pipeline": pipeline, "out_dir": str(out), "board": board},
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus, num_gpus=gpus_per_actor,
            runtime_env={"env_vars": threads},
            # An actor that dies ends the run (--resume goes on from the journal): Ray could not
            # promise a restart anyway, its constructor's objects being references, which it
            # otherwise logs as an error for every actor.
            max_restarts=0)


def _read_batch(batch: Dict[str, Any], max_pixels) -> Dict[str, List[bytes]]:
    """The read stage: each item loaded and validated exactly as the local runner does (a bad file
    becomes that item's failure)."""
    loaded = []
    for blob in batch["item"]:
        item, sample, failure = _load(pickle.loads(blob), max_pixels)
        if failure is not None:
            failure = ItemFailure(failure.stage, _portable(failure.error))
        loaded.append(pickle.dumps((item, sample, failure)))
    return {"loaded": loaded}


def _portable(error: BaseException) -> BaseException:
    """The exception itself when it survives pickling; else one of a plain type with its message."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - exceptions with odd constructors do not unpickle
        kind = ValueError if isinstance(error, ValueError) else RuntimeError
        return kind(f"{type(error).__name__}: {error}")


class PipelineWorker:
    """A Ray actor running the whole pipeline: opened once (its models loaded once), then batches
    of loaded items in, one journal entry per item out."""

    def __init__(self, pipeline: Pipeline, out_dir: str, board=None):
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.pipeline = pipeline
        self.models = ModelCache()
        self.board, self.key = board, f"{os.uname().nodename}:{os.getpid()}"
        # Writers need the folder; run-level files are assembled by the driver, so `finished` stays empty here.
        self.pipeline.open(ctx=RunContext(models=self.models, out_dir=Path(out_dir), log=_print))

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, List[str]]:
        loaded = [pickle.loads(blob) for blob in batch["loaded"]]
        started = time.perf_counter()
        self._report_progress(len(loaded))
        try:
            entries = _process(self.pipeline, loaded)
        except Exception as err:  # noqa: BLE001 - a node that breaks outside run_batch's care still fails only its items
            entries = [_error_entry(item, ItemFailure("pipeline", err)) for item, _, _ in loaded]
        finally:
            report_progress_to(self.pipeline.nodes, None)
            if self.board is not None:
                self.board.report.remote(self.key, 0)  # the batch's items now count as finished ones
        seconds = (time.perf_counter() - started) / max(len(loaded), 1)
        for entry in entries:
            if entry["status"] == "ok":
                entry["seconds"] = round(seconds, 3)
        return {"entry": [json.dumps(entry, ensure_ascii=False) for entry in entries]}


    def _report_progress(self, size: int) -> None:
        """The nodes' reports go to the board (at most 4 a second), in items of this batch."""
        if self.board is None:
            return
        last = [0.0]

        def report(fraction: float) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                self.board.report.remote(self.key, fraction * size)

        report_progress_to(self.pipeline.nodes, report)


def _finish_writers(pipeline: Pipeline, ctx: RunContext) -> None:
    """The run-level files, on the driver: only nodes that have a `finish` step are set up (writers
    need no models), so the driver never loads a model."""
    for node in pipeline.nodes:
        if type(node).finish is not Node.finish:
            node.setup(ctx)
            try:
                node.finish(ctx)
            finally:
                node.close()


def _print(message: str) -> None:
    print(message, flush=True)
