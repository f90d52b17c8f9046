"""SAM's training losses against values computed by hand on small tensors."""

import math

import pytest
import torch

from grounded.sam.training.losses import dice_loss, locator_loss, mask_iou, sam_loss, sigmoid_focal_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_focal_loss_by_hand():
    logits = torch.tensor([[[2.0, -1.0], [0.0, 3.0]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    expected = []
    for x, t in [(2.0, 1), (-1.0, 1), (0.0, 0), (3.0, 0)]:
        p = sig(x)
        ce = -math.log(p) if t else -math.log(1 - p)
        p_t = p if t else 1 - p
        a = 0.25 if t else 0.75
        expected.append(a * (1 - p_t) ** 2 * ce)
    got = sigmoid_focal_loss(logits, targets)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(sum(expected) / 4, rel=1e-6)


def test_dice_loss_by_hand():
    logits = torch.tensor([[[2.0, -1.0], [0.0, 3.0]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    p = [sig(2.0), sig(-1.0), sig(0.0), sig(3.0)]
    inter = p[0] + p[1]
    expected = 1 - (2 * inter + 1) / (sum(p) + 2 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_mask_iou_by_hand():
    logits = torch.tensor([[[1.0, 1.0], [-1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # first: pred {00, 01, 11}, truth {00, 10, 11}: inter 2, union 4; second: both empty -> 1
    assert mask_iou(logits, targets).tolist() == [0.5, 1.0]


def test_sam_loss_backpropagates_only_the_lowest_mask_loss_and_iou_for_all_outputs():
    torch.manual_seed(0)
    targets = torch.zeros(2, 4, 4)
    targets[0, :2, :2] = 1
    targets[1, 1:, 1:] = 1
    good = targets * 8 - 4  # logits that agree with the target
    logits = torch.stack([torch.randn(2, 4, 4), good, torch.randn(2, 4, 4)], dim=1).requires_grad_(True)
    iou_pred = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.7]], requires_grad=True)
    out = sam_loss(logits, iou_pred, targets)

    per_output = 20 * sigmoid_focal_loss(logits, targets[:, None].expand_as(logits)) + dice_loss(
        logits, targets[:, None].expand_as(logits))
    assert out.chosen.tolist() == [1, 1]
    assert out.mask_loss.item() == pytest.approx(per_output[:, 1].mean().item(), rel=1e-6)
    true_iou = mask_iou(logits, targets[:, None].expand_as(logits))
    assert torch.equal(out.ious, true_iou)
    assert out.ious[:, 1].tolist() == [1.0, 1.0]
    expected_iou_loss = ((iou_pred - true_iou) ** 2).mean()
    assert out.iou_loss.item() == pytest.approx(expected_iou_loss.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(out.mask_loss.item() + out.iou_loss.item(), rel=1e-6)

    out.loss.backward()
    # only the chosen output's logits get a gradient; every IoU prediction gets one
    assert logits.grad[:, 1].abs().sum() > 0
    assert logits.grad[:, [0, 2]].abs().sum() == 0
    assert (iou_pred.grad != 0).all()
    assert torch.allclose(iou_pred.grad, 2 * (iou_pred - true_iou).detach() / iou_pred.numel())


def test_single_output_and_weights():
    logits = torch.tensor([[[[3.0, -3.0], [-3.0, -3.0]]]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    iou = torch.tensor([[0.5]])
    out = sam_loss(logits, iou, targets, focal_weight=0.0, dice_weight=1.0, iou_weight=0.0)
    assert out.loss.item() == pytest.approx(dice_loss(logits, targets[:, None]).item())
    assert out.ious.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="do not fit"):
        sam_loss(logits, iou, torch.zeros(1, 3, 3))


def test_locator_loss_by_hand():
    # a 1 x 2 x 2 heat map against a 4 x 4 mask: each cell's target is the fraction of its 2 x 2 pixels in the mask
    heat = torch.tensor([[[2.0, -1.0], [0.0, -3.0]]])
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # cell (0, 0) full
    mask[0, 2, 0] = 1  # cell (1, 0) a quarter
    expected = []
    for x, t in [(2.0, 1.0), (-1.0, 0.0), (0.0, 0.25), (-3.0, 0.0)]:
        expected.append(-(10 * t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x))))
    assert locator_loss(heat, mask).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    # pos_weight 1: plain binary cross-entropy; targets already on the heat grid are used as they are
    cells = torch.tensor([[[1.0, 0.0], [0.25, 0.0]]])
    plain = sum(-(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))
                for x, t in [(2.0, 1.0), (-1.0, 0.0), (0.0, 0.25), (-3.0, 0.0)]) / 4
    assert locator_loss(heat, cells, pos_weight=1.0).item() == pytest.approx(plain, rel=1e-6)
