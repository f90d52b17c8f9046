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
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..io.image import DEFAULT_MAX_PIXELS
from ..pipeline.core import ItemFailure, Pipeline, RunContext
from ..pipeline.models import ModelCache
from ..pipeline.node import Node
from ..pipeline.runner import (RunReport, _error_entry, _finished, _load, _process, _progress_bar, _write,
                               prepared_run)

DEFAULT_OBJECT_STORE_MB = 256  # a local Ray's shared-memory object store; images pass through it briefly


def run_on_ray(pipeline: Pipeline, inputs: Union[str, Sequence[str]], out_dir: Union[str, Path], *,
               resume: bool = False, retry_errors: bool = False, progress: bool = True,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, spec: Optional[Dict[str, Any]] = None,
               address: Optional[str] = None, num_cpus: Optional[int] = None,
               object_store_mb: int = DEFAULT_OBJECT_STORE_MB, actors: Optional[int] = None,
               actor_cpus: Optional[float] = None, gpus_per_actor: Optional[float] = None, read_cpus: float = 0.25,
               threads_per_actor: int = 1, log: Optional[Callable[[str], None]] = None) -> RunReport:
    """Run `pipeline` over `inputs` into `out_dir` on Ray, with the local runner's folder layout
    and resume rules (see `grounded.pipeline.runner.run` for `resume`, `retry_errors`, `max_pixels`).

    Ray: an already initialised Ray is used as it is; else `address` connects to a cluster
    ("auto", "ray://host:10001", "host:6379"), or a local Ray starts with `num_cpus` CPUs, no
    dashboard and an object store of `object_store_mb` MB (and is shut down at the end).
    The pool: `actors` actors (default: one per GPU, else 1), each asking for `actor_cpus` CPUs
    (default 1, 0.5 on a machine of fewer than 4) and `gpus_per_actor` GPUs (default 1 when the
    cluster has GPUs, else 0), with `threads_per_actor` torch/OpenMP threads. Read tasks ask for
    `read_cpus` CPUs each."""
    start = time.perf_counter()
    with prepared_run(pipeline, inputs, out_dir, resume=resume, retry_errors=retry_errors, spec=spec) as prep:
        out, items, journal, todo = prep.out, prep.items, prep.journal, prep.todo
        done_before = prep.done_before
        bar = None
        say = log or (lambda message: _write(message, bar))

        started_ray = False
        processed = 0
        try:
            if todo:
                started_ray = connect(address, num_cpus, object_store_mb)
                dataset = _dataset(pipeline, todo, out, max_pixels, actors, actor_cpus, gpus_per_actor, read_cpus,
                                   threads_per_actor, say)
                say(f"{pipeline.name} on Ray: {len(items)} items" + (f", {done_before} already done" if done_before else "")
                    + f"; batches of {pipeline.batch_size}; results in {out}/")
                bar = _progress_bar(len(items), done_before, pipeline.name, progress)
                failed = 0
                with journal:
                    for row in dataset.iter_rows():
                        entry = json.loads(row["entry"])
                        if entry["status"] != "ok":
                            failed += 1
                            _write(f"skipped {entry['id']}: {entry['error']}", bar)
                        journal.append(entry)
                        processed += 1
                        if bar is not None:
                            if failed:
                                bar.set_postfix(failed=failed, refresh=False)
                            bar.update(1)
                if bar is not None:
                    bar.close()
                    bar = None
            _finish_writers(pipeline, RunContext(models=ModelCache(), out_dir=out,
                                                 finished=lambda: _finished(journal, items), log=say))
        except KeyboardInterrupt:
            say(f"interrupted: {len(journal.load())} of {len(items)} items are safely finished; "
                "run the same command with --resume to go on")
            raise
        finally:
            if bar is not None:
                bar.close()
            if started_ray:
                import ray

                ray.shutdown()

        return prep.conclude(processed, start)


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None,
            object_store_mb: int = DEFAULT_OBJECT_STORE_MB) -> bool:
    """Make sure Ray is initialised; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        # A cluster's resources and object store are the cluster's own business.
        ray.init(address=address, logging_level="WARNING")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=int(object_store_mb) * 2**20,
                 logging_level="WARNING")
    return True


def _dataset(pipeline: Pipeline, todo, out: Path, max_pixels, actors, actor_cpus, gpus_per_actor, read_cpus,
             threads_per_actor: int, say):
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run's own bar counts finished items
    context.print_on_execution_start = False
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
    return (ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(_read_batch, batch_size=batch, fn_kwargs={"max_pixels": max_pixels}, num_cpus=read_cpus,
                         runtime_env={"env_vars": threads})
            .map_batches(PipelineWorker, batch_size=batch, fn_constructor_kwargs={"pipeline": pipeline, "out_dir": str(out)},
                         compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus, num_gpus=gpus_per_actor,
                         runtime_env={"env_vars": threads}))


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

    def __init__(self, pipeline: Pipeline, out_dir: str):
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.pipeline = pipeline
        self.models = ModelCache()
        # Writers need the folder; run-level files are assembled by the driver, so `finished` stays empty here.
        self.pipeline.open(ctx=RunContext(models=self.models, out_dir=Path(out_dir), log=_print))

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, List[str]]:
        loaded = [pickle.loads(blob) for blob in batch["loaded"]]
        started = time.perf_counter()
        try:
            entries = _process(self.pipeline, loaded)
        except Exception as err:  # noqa: BLE001 - a node that breaks outside run_batch's care still fails only its items
            entries = [_error_entry(item, ItemFailure("pipeline", err)) for item, _, _ in loaded]
        seconds = (time.perf_counter() - started) / max(len(loaded), 1)
        for entry in entries:
            if entry["status"] == "ok":
                entry["seconds"] = round(seconds, 3)
        return {"entry": [json.dumps(entry, ensure_ascii=False) for entry in entries]}


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
