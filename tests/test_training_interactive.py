"""The SAM paper's 11-round interactive training loop: which rounds add points, where the points come
from, the mask feedback, single vs multi-mask output, and the mask sampling."""

import numpy as np
import pytest
import torch

from grounded.sam.training.data import select_masks
from grounded.sam.training.interactive import (
    InteractiveConfig, error_points, initial_points, noisy_boxes, round_schedule, run_interactive,
)
from grounded.testing import tiny_sam


def test_round_schedule_has_8_point_rounds_and_2_without_one_last():
    seen_positions = set()
    for seed in range(40):
        schedule = round_schedule(np.random.default_rng(seed))
        assert len(schedule) == 10 and sum(schedule) == 8
        assert schedule[-1] is False
        seen_positions.add(schedule[:-1].index(False))
    assert len(seen_positions) >= 5  # the other no-point round moves around among the 8


def test_error_points_come_from_false_negatives_and_false_positives():
    truth = np.zeros((3, 8, 8), bool)
    pred = np.zeros((3, 8, 8), bool)
    truth[0, 2:4, 2:4] = True  # mask 0: prediction empty -> only false negatives
    pred[1, 5:7, 5:7] = True  # mask 1: prediction where there is nothing -> false positives
    truth[2, :3, :3] = pred[2, :3, :3] = True  # mask 2: exact -> no point
    rng = np.random.default_rng(0)
    for _ in range(20):
        coords, labels = error_points(pred, truth, (8, 8), rng, scale=4.0)
        assert labels[:, 0].tolist() == [1, 0, -1]
        x, y = coords[0, 0] / 4
        assert truth[0, int(y), int(x)]
        x, y = coords[1, 0] / 4
        assert pred[1, int(y), int(x)] and not truth[1, int(y), int(x)]
    # errors in the padding (outside the image) are never sampled
    pad_pred = np.zeros((1, 8, 8), bool)
    pad_pred[0, 6:, :] = True
    coords, labels = error_points(pad_pred, np.zeros((1, 8, 8), bool), (6, 8), rng, 4.0)
    assert labels[0, 0] == -1


def test_initial_points_lie_inside_their_masks():
    truth = np.zeros((2, 16, 16), bool)
    truth[0, 3:5, 10:14] = True
    truth[1, 12, 1] = True
    rng = np.random.default_rng(1)
    for _ in range(20):
        pts = initial_points(truth, rng, 4.0)
        for k in range(2):
            x, y = pts[k, 0] / 4
            assert truth[k, int(y), int(x)]


def test_box_noise_is_10_percent_of_the_side_capped_at_20_pixels():
    truth = np.zeros((2, 256, 256), bool)
    truth[0, 10:35, 10:60] = True  # 100 x 200 input pixels at scale 4: std 10 and 20
    truth[1, 10:250, 10:250] = True  # 960 pixels a side: std capped at 20
    rng = np.random.default_rng(0)
    boxes = np.stack([noisy_boxes(truth, rng, 4.0, (1024, 1024)) for _ in range(2000)])
    exact = np.array([[40, 40, 240, 140], [40, 40, 1000, 1000]], float)
    noise = boxes - exact
    std = noise.std(0)
    assert std[0] == pytest.approx([20, 10, 20, 10], rel=0.1)
    assert std[1] == pytest.approx([20, 20, 20, 20], rel=0.12)
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


def test_select_masks_drops_empty_and_over_90_percent_and_caps_at_64():
    masks = np.zeros((100, 10, 10), bool)
    for i in range(100):
        masks[i].flat[: i + 1] = True
    keep = select_masks(masks, np.random.default_rng(0))
    assert len(keep) == 64 and keep.max() <= 89  # areas 91..100 of 100 dropped
    masks[5] = False
    keep = select_masks(masks[:20], np.random.default_rng(0))
    assert 5 not in keep and len(keep) == 19


@pytest.mark.parametrize("box_prob", [0.0, 1.0])
def test_eleven_rounds_feedback_and_output_choice(box_prob):
    sam = tiny_sam()
    torch.manual_seed(0)
    emb = torch.randn(1, 32, 8, 8)
    targets = torch.zeros(3, 32, 32)
    targets[0, 4:12, 4:12] = 1
    targets[1, 20:30, 2:9] = 1
    targets[2, 10:20, 15:31] = 1
    calls = []
    decoder_forward = sam.mask_decoder.forward

    def spy(**kw):
        out = decoder_forward(**kw)
        calls.append((kw["multimask_output"], kw["sparse_prompt_embeddings"].shape[1], kw["dense_prompt_embeddings"], out))
        return out

    sam.mask_decoder.forward = spy
    rng = np.random.default_rng(3)
    result = run_interactive(sam, emb, targets, (128, 128), rng, InteractiveConfig(box_prob=box_prob),
                             keep_mask_inputs=True)
    rounds = result.rounds
    assert len(rounds) == 11 and len(calls) == 11
    assert [r.added_point for r in rounds].count(True) == 8
    assert rounds[-1].added_point is False and rounds[0].added_point is False
    # only the first round (one point or one box) uses the multimask outputs
    assert [r.multimask for r in rounds] == [True] + [False] * 10
    assert [c[0] for c in calls] == [True] + [False] * 10
    assert calls[0][3][0].shape[1] == 3 and all(c[3][0].shape[1] == 1 for c in calls[1:])
    # a mask prompt from round 1 on, equal to the previous round's unthresholded low-res logits
    assert not rounds[0].had_mask_prompt and all(r.had_mask_prompt for r in rounds[1:])
    first_logits = calls[0][3][0]
    assert rounds[1].mask_input.shape == (3, 1, 32, 32)
    # round 1 receives, per mask, one of round 0's three outputs (the lowest-loss one), unthresholded
    for k in range(3):
        diffs = [(rounds[1].mask_input[k, 0] - first_logits[k, j].detach()).abs().max().item() for j in range(3)]
        assert min(diffs) == 0.0
    for r in range(2, 11):
        assert torch.equal(rounds[r].mask_input[:, 0], calls[r - 1][3][0][:, 0].detach())
    # points: none or one at first (a box instead), then +1 exactly in the rounds that add one
    start = 0 if box_prob == 1.0 else 1
    counts = [r.num_points for r in rounds]
    assert counts[0] == start
    for r in range(1, 11):
        assert counts[r] == counts[r - 1] + (1 if rounds[r].added_point else 0)
    # the dense prompt differs per mask once masks are fed back
    assert calls[0][2].stride(0) == 0 and calls[1][2].stride(0) != 0


def test_backward_is_called_once_per_round_with_the_round_loss():
    sam = tiny_sam()
    emb = torch.randn(1, 32, 8, 8)
    targets = torch.zeros(2, 32, 32)
    targets[:, 5:15, 5:15] = 1
    seen = []
    result = run_interactive(sam, emb, targets, (128, 128), np.random.default_rng(0),
                             InteractiveConfig(point_rounds=3, no_point_rounds=1), backward=lambda l: seen.append(l.item()))
    assert len(seen) == 5
    assert np.allclose(np.array(seen) * 5, [r.loss for r in result.rounds], rtol=1e-5)
    assert result.loss == pytest.approx(np.mean([r.loss for r in result.rounds]))
