"""The trainer on the input a demanding user gives it: images that are not 8-bit RGB, 0/255 masks,
label images with a channel or page axis, COCO files with holes, a resume whose config changed,
damaged checkpoints and cached embeddings. Each test failed before its fix."""

import json

import numpy as np
import pytest
import torch

from grounded.sam import build_sam
from grounded.sam.training import TrainConfig, Trainer
from grounded.sam.training.data import (
    ArrayDataset, CocoDataset, Sa1bDataset, TrainItem, checked_item, read_label_image,
)
from grounded.testing import tiny_sam_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model():
    torch.manual_seed(0)
    return build_sam(tiny_sam_config()).eval()


def disc_item(key="disc", size=(40, 50)) -> TrainItem:
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    image = np.full((h, w, 3), 30, np.uint8)
    mask = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < 64
    image[mask] = 200
    return TrainItem(key, image, mask[None])


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), steps=1, lr=3e-3, progress=False, trainable=["mask_decoder"],
                checkpoint_every=1000, interactive=dict(point_rounds=1, no_point_rounds=0, box_prob=0.0))
    base.update(kw)
    return TrainConfig(**base)


def test_grey_rgba_and_16_bit_images_and_0_255_masks_train(tmp_path):
    """Before: a grey or RGBA array crashed in the resize, a 16-bit one in PIL, and uint8 0/255 masks
    counted 255 per pixel, so every mask was 'over 90% of the image' and nothing trained."""
    item = disc_item()
    grey = TrainItem("grey", item.image[..., 0], (item.masks * 255).astype(np.uint8))
    rgba = TrainItem("rgba", np.dstack([item.image, np.full(item.image.shape[:2], 255, np.uint8)]), item.masks)
    deep = TrainItem("16-bit", item.image.astype(np.uint16) * 257, item.masks)
    for converted in map(checked_item, (grey, rgba, deep)):
        assert converted.image.shape == (40, 50, 3) and converted.image.dtype == np.uint8
        assert converted.masks.dtype == bool and np.array_equal(converted.masks, item.masks)
    assert checked_item(item) is item  # already as training takes it: not copied
    trainer = Trainer(config(tmp_path, grad_accum=3), model=tiny_model(), dataset=ArrayDataset([grey, rgba, deep]))
    record = trainer.train_step()
    assert np.isfinite(record["loss"]) and np.isfinite(record["miou"])
    with pytest.raises(ValueError, match=r"'small'.*masks must be N x H x W at the image's size \(40, 50\)"):
        checked_item(TrainItem("small", item.image, item.masks[:, :30]))


def test_label_images_with_a_channel_or_page_axis_or_alpha(tmp_path):
    """Before: H x W x 1 TIFFs and grey+alpha PNGs raised IndexError, a 1 x H x W TIFF read as 1 x H."""
    import tifffile
    from PIL import Image

    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 3:9] = 4
    labels[10:15, 12:20] = 9
    tifffile.imwrite(tmp_path / "channel.tif", labels[..., None])
    tifffile.imwrite(tmp_path / "page.tif", labels[None])
    Image.fromarray(np.dstack([labels, np.full_like(labels, 255)]), "LA").save(tmp_path / "alpha.png")
    for name in ("channel.tif", "page.tif", "alpha.png"):
        np.testing.assert_array_equal(read_label_image(tmp_path / name), labels, err_msg=name)


def test_coco_files_with_holes_get_errors_that_name_them(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    nested = [[2, 2, 12, 2, 12, 10, 2, 10]]

    def coco(annotations, images=({"id": 1, "file_name": "a.png"},)):
        (tmp_path / "c.json").write_text(json.dumps({"images": list(images), "annotations": annotations}))
        return CocoDataset(tmp_path / "c.json")

    # a flat polygon (some exporters write one) is the same polygon (before: TypeError)
    flat = coco([{"id": 1, "image_id": 1, "segmentation": nested[0]}])[0].masks
    assert np.array_equal(flat, coco([{"id": 1, "image_id": 1, "segmentation": nested}])[0].masks) and flat.sum() > 0
    with pytest.raises(ValueError, match="annotation 7 has no 'segmentation'"):  # before: KeyError
        coco([{"id": 7, "image_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match="annotation 8 has no 'image_id'"):
        coco([{"id": 8, "segmentation": nested}])
    # an image that is not there: found when the data set is made, not at the step that reaches it
    with pytest.raises(FileNotFoundError, match="1 image.*nope.png"):
        coco([{"id": 1, "image_id": 1, "segmentation": nested}], [{"id": 1, "file_name": "nope.png"}])
    # a width without a height (before: KeyError 'height' while writing the message)
    with pytest.raises(ValueError, match=r"says \?x31, the file is 20x30"):
        coco([{"id": 1, "image_id": 1, "segmentation": nested}], [{"id": 1, "file_name": "a.png", "width": 31}])[0]


def test_resume_refuses_a_changed_config_but_takes_a_longer_run_and_a_new_schedule(tmp_path):
    """Before: a changed lr or weight decay was silently replaced by the checkpoint's, a changed
    `trainable` failed inside torch's optimizer with no word of the config."""
    data = ArrayDataset([disc_item()])
    Trainer(config(tmp_path, steps=2), model=tiny_model(), dataset=data).train()
    for change, named in ((dict(lr=1e-2), "lr: 0.003 -> 0.01"), (dict(weight_decay=0.5), "weight_decay"),
                          (dict(trainable=["mask_decoder", "prompt_encoder"]), "trainable"),
                          (dict(max_masks=1), "max_masks")):
        with pytest.raises(ValueError, match=f"config differs from the run's in {named}"):
            Trainer(config(tmp_path, steps=4, **change), model=tiny_model(), dataset=data).load_checkpoint()
    resumed = Trainer(config(tmp_path, steps=4, warmup_steps=10), model=tiny_model(), dataset=data)
    resumed.load_checkpoint()
    assert resumed.step == 2 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 3 / 10)
    assert resumed.train()[-1]["step"] == 4


def test_damaged_checkpoints_are_named_and_stray_files_are_not_checkpoints(tmp_path):
    data = ArrayDataset([disc_item()])
    trainer = Trainer(config(tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=2), model=tiny_model(), dataset=data)
    trainer.checkpoint_dir.mkdir(parents=True)
    stray = trainer.checkpoint_dir / "step_backup.pt"
    stray.write_bytes(b"not a checkpoint")
    trainer.train()
    # not taken for the newest checkpoint (before, it sorted after step_0000002.pt), nor counted in
    # the two kept (before, step_0000001.pt was pruned for it)
    last = trainer.latest_checkpoint()
    assert last.name == "step_0000002.pt" and stray.exists()
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step_0000001.pt", "step_0000002.pt",
                                                                        "step_backup.pt"]
    last.write_bytes(last.read_bytes()[:1000])  # cut short
    with pytest.raises(ValueError, match=r"step_0000002.pt cannot be read .*delete it to resume from step_0000001.pt"):
        Trainer(config(tmp_path, steps=2), model=tiny_model(), dataset=data).load_checkpoint()
    torch.save({"weights": torch.zeros(1)}, last)  # readable, but not a training checkpoint
    with pytest.raises(ValueError, match=r"not a checkpoint of `grounded train`.*holds \['weights'\]"):
        Trainer(config(tmp_path, steps=2), model=tiny_model(), dataset=data).load_checkpoint()


def test_a_damaged_cached_embedding_is_encoded_again(tmp_path):
    data = ArrayDataset([disc_item()])
    cfg = config(tmp_path)
    Trainer(cfg, model=tiny_model(), dataset=data).train()
    (cached,) = (tmp_path / "run" / "embeddings").glob("*.pt")
    good = torch.load(cached, weights_only=True)
    cached.write_bytes(cached.read_bytes()[:100])
    history = Trainer(config(tmp_path, out_dir=str(tmp_path / "again"), embedding_cache=str(cached.parent)),
                      model=tiny_model(), dataset=data).train()
    assert np.isfinite(history[-1]["loss"])
    assert torch.equal(torch.load(cached, weights_only=True), good)  # and written again


def test_config_takes_one_data_set_without_a_list_and_refuses_keeping_no_checkpoint(tmp_path):
    """Before: `data: {type: coco, ...}` failed in dict() with 'dictionary update sequence element';
    keep_checkpoints: 0 kept every checkpoint."""
    (tmp_path / "c.yaml").write_text("data: {type: sa1b, folder: sa}\n")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml").data == [{"type": "sa1b", "folder": "sa"}]
    with pytest.raises(ValueError, match="data must be a list of data sets"):
        TrainConfig(data=["train.json"])
    with pytest.raises(ValueError, match="keep_checkpoints must be at least 1"):
        TrainConfig(keep_checkpoints=0)


def test_sa1b_folders_leave_other_json_files_out(tmp_path):
    """Before: a COCO file or metadata beside sa_N.json counted as an image and stopped the run at the
    step that drew it ("has no 'annotations'")."""
    from PIL import Image

    from grounded.rle import encode_rle

    square = np.zeros((20, 30), bool)
    square[2:8, 3:12] = True
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "sa_1.jpg")
    (tmp_path / "sa_1.json").write_text(json.dumps({"image": {"file_name": "sa_1.jpg"},
                                                    "annotations": [{"segmentation": encode_rle(square)}]}))
    (tmp_path / "meta.json").write_text(json.dumps({"source": "SA-1B", "files": 1}))
    dataset = Sa1bDataset(tmp_path)
    assert len(dataset) == 1 and np.array_equal(dataset[0].masks[0], square)
