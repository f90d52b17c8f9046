"""Independent chunks of CPU work run side by side on threads of the calling process.

Mask thresholding and the decoder's work per prompt are many small operations, which torch's
intra-op threads share poorly. On 2 cores, chunks side by side, each on one thread, thresholded
64x3 masks 1.5x faster than torch's 2 threads did, and decoded 64 boxes 1.05x faster
(bench/README.md). Torch releases the GIL inside its operations, so Python threads run them in parallel.

Each worker gets its share of torch's thread count. Torch's thread count, grad mode and inference
mode are per thread: `map_chunks` carries grad mode and inference mode over.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_pools: Dict[Tuple[int, int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_worker = threading.local()  # set on the pools' threads: work they submit runs where it is


def map_chunks(fn: Callable[[T], R], items: Sequence[T], workers: int = 2) -> List[R]:
    """[fn(item) for item in items], on `workers` threads when torch has at least that many (1 runs
    every item on the calling thread); items are taken in order as workers free up, results come
    back in order. The caller checks that the work is CPU work."""
    threads = torch.get_num_threads()
    nested = getattr(_worker, "active", False)  # waiting on its own pool could deadlock it
    if not 2 <= workers <= threads or len(items) < 2 or nested:
        return [fn(item) for item in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(item: T) -> R:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    return list(_pool(workers, threads).map(run, items))


def _pool(workers: int, threads: int) -> ThreadPoolExecutor:
    key = (os.getpid(), workers, threads)  # a forked child has the pool object but not its threads
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = _start_pool(workers, threads // workers)
    return pool


def _start_pool(workers: int, threads_each: int) -> ThreadPoolExecutor:
    started = threading.Barrier(workers + 1)

    def init() -> None:
        torch.get_num_threads()  # a thread takes torch's default count on first use: before setting its own
        torch.set_num_threads(threads_each)
        _worker.active = True

    pool = ThreadPoolExecutor(workers, thread_name_prefix="grounded-sam", initializer=init)
    for _ in range(workers):  # every worker started and set up before the default is restored
        pool.submit(started.wait)
    started.wait()
    # set_num_threads also changed the count that new threads start with: give it back.
    torch.set_num_threads(torch.get_num_threads())
    return pool
