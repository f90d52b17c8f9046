"""Loading SAM weights from every supported place, and the errors when that fails."""

import pytest
import torch

from grounded.sam import CheckpointError, from_pretrained, sam_model_registry, save_pretrained
from grounded.sam.checkpoint import infer_config
from grounded.testing import tiny_sam


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


@pytest.fixture(scope="module")
def model():
    return tiny_sam("vit", seed=7)


def test_pth_file_plain_and_wrapped(tmp_path, model):
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pt"
    torch.save(model.state_dict(), plain)
    torch.save({"model": model.state_dict(), "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        loaded = from_pretrained(path)
        assert loaded.config == model.config
        assert _same_weights(loaded, model)


def test_safetensors_file_and_saved_folder(tmp_path, model):
    from safetensors.torch import save_file

    file = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    assert _same_weights(from_pretrained(file), model)
    folder = save_pretrained(model, tmp_path / "saved")
    assert _same_weights(from_pretrained(str(folder)), model)


def test_device_and_dtype_arguments(tmp_path, model):
    folder = save_pretrained(model, tmp_path / "saved")
    loaded = from_pretrained(folder, device="cpu", dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert not loaded.training


def test_infer_config_recovers_tiny_vit_dimensions():
    model = tiny_sam("tiny_vit")
    assert infer_config(model.state_dict()) == model.config


def test_pickle_carrying_code_is_refused(tmp_path, model):
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "hook": CheckpointError("not a tensor")}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        from_pretrained(path)


def test_checkpoint_of_another_variant_names_keys_and_the_variant_that_fits(mobile_sam_checkpoint):
    with pytest.raises(CheckpointError) as err:
        sam_model_registry["vit_b"](checkpoint=mobile_sam_checkpoint)
    message = str(err.value)
    assert "missing keys" in message and "image_encoder.blocks.0" in message
    assert "unexpected keys" in message and "image_encoder.layers" in message
    assert "'vit_t'" in message
    with pytest.raises(CheckpointError, match="'vit_t'"):
        from_pretrained(mobile_sam_checkpoint, model_type="vit_h")


def test_missing_weights_name_every_place_tried(tmp_path):
    missing = tmp_path / "nothing-here.pth"
    with pytest.raises(FileNotFoundError) as err:
        from_pretrained(str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        from_pretrained("no-such-org/no-such-sam", cache_dir=tmp_path / "hf")
    message = str(err.value)
    assert "no-such-org/no-such-sam" in message and "offline" in message and "hub" in message
