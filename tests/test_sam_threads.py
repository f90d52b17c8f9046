"""Chunks of CPU work side by side (grounded/sam/cpu/threads.py): order, grad and inference mode,
torch's thread counts, nesting, and thresholding giving the same results on one thread and several.
(The decoder on one worker and on two: the path matrix, test_sam_paths.py.)"""

import threading

import pytest
import torch

from grounded.sam.cpu.masks import threshold_upsampled
from grounded.sam.cpu.threads import map_chunks


@pytest.fixture(autouse=True)
def two_torch_threads():
    """Other tests leave torch on one thread; these need two (on one core too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_results_come_back_in_order_from_several_threads():
    names = set()

    def square(x):
        names.add(threading.current_thread().name)
        return x * x

    assert map_chunks(square, range(40)) == [x * x for x in range(40)]
    assert any(name.startswith("grounded-sam") for name in names)


def test_grad_and_inference_mode_are_carried_to_the_workers():
    def modes(_):
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with torch.no_grad():
        assert map_chunks(modes, range(4)) == [(False, False)] * 4
    with torch.inference_mode():
        assert map_chunks(modes, range(4)) == [(False, True)] * 4
    assert map_chunks(modes, range(4)) == [(True, False)] * 4


def test_workers_share_the_threads_and_leave_the_defaults_alone():
    before = torch.get_num_threads()
    counts = map_chunks(lambda _: torch.get_num_threads(), range(4), workers=2)
    assert counts == [before // 2] * 4
    assert torch.get_num_threads() == before
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [before]  # a new thread still starts with the process's count


def test_nested_work_and_one_worker_stay_on_the_calling_thread():
    def inner(_):
        here = threading.current_thread()
        return all(t is here for t in map_chunks(lambda _: threading.current_thread(), range(3)))

    assert all(map_chunks(inner, range(4)))
    here = threading.current_thread()
    assert all(t is here for t in map_chunks(lambda _: threading.current_thread(), range(3), workers=1))


def test_thresholds_equal_on_one_thread_and_several():
    low_res = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cumsum(-1)  # smooth-ish contours
    # 21 masks of 600x400, chunks of 4M pixels (17 masks): two chunks
    results = [threshold_upsampled(low_res, 256, (256, 171), (600, 400), 0.0, workers=workers) for workers in (1, 2)]
    assert results[0].shape == (7, 3, 600, 400) and 0 < results[0].float().mean() < 1
    assert torch.equal(results[0], results[1])
