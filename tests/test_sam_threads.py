"""Chunks of CPU work side by side (grounded/sam/threads.py): order, grad mode, torch's thread
counts, nesting, and the decoder and mask thresholding giving the same results either way."""

import threading

import pytest
import torch

from grounded.sam import threads
from grounded.sam.utils.mask_upsample import threshold_upsampled
from test_sam_decoder_fast import decoder, inputs



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

    assert threads.map_chunks(square, range(40), "cpu") == [x * x for x in range(40)]
    assert any(name.startswith("grounded-sam") for name in names)


def test_grad_mode_is_carried_to_the_workers():
    with torch.no_grad():
        modes = threads.map_chunks(lambda _: torch.is_grad_enabled(), range(4), "cpu")
    assert modes == [False] * 4
    assert threads.map_chunks(lambda _: torch.is_grad_enabled(), range(4), "cpu") == [True] * 4


def test_workers_share_the_threads_and_leave_the_defaults_alone():
    before = torch.get_num_threads()
    counts = threads.map_chunks(lambda _: torch.get_num_threads(), range(4), "cpu")
    assert counts == [before // threads.WORKERS] * 4
    assert torch.get_num_threads() == before
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [before]  # a new thread still starts with the process's count


def test_nested_and_non_cpu_work_stays_on_the_calling_thread():
    def inner(_):
        here = threading.current_thread()
        return all(t is here for t in threads.map_chunks(lambda _: threading.current_thread(), range(3), "cpu"))

    assert all(threads.map_chunks(inner, range(4), "cpu"))
    here = threading.current_thread()
    assert all(t is here for t in threads.map_chunks(lambda _: threading.current_thread(), range(3), "meta"))


@pytest.mark.parametrize("per_prompt_dense", [False, True])
def test_decoder_equals_on_one_thread_and_several(per_prompt_dense, monkeypatch):
    dec = decoder(depth=2, seed=3)
    dec.prompt_chunk_size = 2  # 7 prompts: 4 chunks
    image, pe, sparse, dense = inputs(32, 7, 4, per_prompt_dense=per_prompt_dense)
    results = []
    for workers in (1, 2):
        monkeypatch.setattr(threads, "WORKERS", workers)
        with torch.no_grad():
            results.append(dec(image, pe, sparse, dense, True))
    (m1, i1), (m2, i2) = results
    torch.testing.assert_close(m2, m1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(i2, i1, rtol=1e-5, atol=1e-5)


def test_thresholds_equal_on_one_thread_and_several(monkeypatch):
    low_res = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cumsum(-1)  # smooth-ish contours
    monkeypatch.setattr("grounded.sam.utils.mask_upsample._PIXELS_PER_CHUNK", 4 * 200 * 150)  # 6 chunks of 4 masks
    results = []
    for workers in (1, 2):
        monkeypatch.setattr(threads, "WORKERS", workers)
        results.append(threshold_upsampled(low_res, 256, (256, 192), (200, 150), 0.0))
    assert results[0].shape == (7, 3, 200, 150) and 0 < results[0].float().mean() < 1
    assert torch.equal(results[0], results[1])
