"""The caption node (BLIP through transformers) on a tiny random BLIP saved as a Hugging Face folder:
loaded by folder and by hub id from a temporary Hugging Face cache, its captions equal the model's
own `generate` + decode on the same inputs, batching changes nothing, and its settings reach
`generate`; broken folders give errors that name what was tried."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from grounded.nodes import Caption, node_class  # noqa: E402
from grounded.caption import DEFAULT_MODEL, load_blip  # noqa: E402
from grounded.pipeline import ModelCache, Pipeline  # noqa: E402
from grounded.transformers_compat import pil_processor_kwargs  # noqa: E402
from grounded.testing.blip import DEFAULT_CORPUS, tiny_blip  # noqa: E402
from grounded.testing.hf_cache import install_in_hf_cache, point_hf_cache_at  # noqa: E402
from grounded.testing.tokenizers import assert_no_unknown_tokens  # noqa: E402
from grounded.types import Sample  # noqa: E402

PROMPT = "a picture of"
FAST = dict(num_beams=1, max_new_tokens=6, min_new_tokens=0)  # small settings for the tiny model


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("blip") / "blip-tiny"
    tiny_blip(folder)
    return folder


@pytest.fixture(scope="module")
def reference(blip_dir):
    """transformers' own model and processor, read from the same folder."""
    model = transformers.BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
    processor = transformers.BlipProcessor.from_pretrained(blip_dir, **pil_processor_kwargs())
    return model, processor


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 56), (32, 32), (61, 23), (48, 40), (20, 30)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def _reference_captions(reference, images, prompt=None, **kwargs):
    model, processor = reference
    inputs = processor(images=images, text=[prompt] * len(images) if prompt else None, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, **kwargs)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)], ids


def _node_captions(node, images, models=None):
    pipe = Pipeline([node], batch_size=len(images))
    cache = ModelCache() if models is None else models
    try:
        out = pipe.process([Sample(image=im) for im in images], models=cache)
    finally:
        pipe.close()
        if models is None:
            cache.close()
    return [s.caption for s in out]


def test_the_tiny_tokenizer_knows_the_test_words(reference):
    tokenizer = reference[1].tokenizer
    assert tokenizer.bos_token == "[DEC]" and reference[0].config.text_config.bos_token_id == tokenizer.bos_token_id
    assert_no_unknown_tokens(tokenizer, list(DEFAULT_CORPUS) + [PROMPT])


def test_node_equals_the_models_own_generate(blip_dir, reference):
    images = _images(3)
    node = Caption(model=str(blip_dir), device="cpu", **FAST)
    expected, ids = _reference_captions(reference, images, **FAST)
    assert _node_captions(node, images) == expected
    assert all(isinstance(c, str) for c in expected) and len(set(expected)) > 1  # images give different captions


def test_beam_search_equals_generate_with_the_same_settings(blip_dir, reference):
    images = _images(2, seed=1)
    settings = dict(num_beams=3, max_new_tokens=5, min_new_tokens=2, repetition_penalty=1.3)
    expected, _ = _reference_captions(reference, images, **settings)
    assert _node_captions(Caption(model=str(blip_dir), device="cpu", **settings), images) == expected


def test_prompt_is_continued(blip_dir, reference):
    images = _images(2, seed=2)
    expected, ids = _reference_captions(reference, images, prompt=PROMPT, **FAST)
    got = _node_captions(Caption(model=str(blip_dir), device="cpu", prompt=PROMPT, **FAST), images)
    assert got == expected
    assert all(c.startswith(PROMPT) for c in got)
    assert (ids[:, 0] == reference[0].config.text_config.bos_token_id).all()  # [DEC], then the prompt's tokens


def test_batching_gives_the_same_captions_as_one_by_one(blip_dir):
    images = _images(5, seed=3)
    captioner = load_blip(blip_dir)
    together = captioner.caption(images, batch_size=5, **FAST)
    in_twos = captioner.caption(images, batch_size=2, **FAST)
    one_by_one = [captioner.caption([im], batch_size=1, **FAST)[0] for im in images]
    assert together == in_twos == one_by_one
    beams = dict(FAST, num_beams=2)
    assert captioner.caption(images, batch_size=5, **beams) == [captioner.caption([im], **beams)[0] for im in images]


def test_settings_reach_generate(blip_dir, monkeypatch):
    captioner = load_blip(blip_dir)
    calls = []
    real_generate = captioner.model.generate

    def spy(**kwargs):
        calls.append({k: v for k, v in kwargs.items() if k not in ("pixel_values", "input_ids", "attention_mask")})
        return real_generate(**kwargs)

    monkeypatch.setattr(captioner.model, "generate", spy)
    node = Caption(model=str(blip_dir), device="cpu", num_beams=2, max_new_tokens=3, min_new_tokens=2,
                   repetition_penalty=1.5, batch_size=2)
    node.captioner = captioner
    node.process_batch([Sample(image=im) for im in _images(3)])
    assert calls == [dict(num_beams=2, max_new_tokens=3, min_new_tokens=2, repetition_penalty=1.5)] * 2  # 2 + 1 images

    # And they act: the caption length stays within [min, max] new tokens.
    for lo, hi in ((0, 2), (6, 6)):
        ids = captioner.generate(_images(2), num_beams=1, max_new_tokens=hi, min_new_tokens=lo)
        new = ids.shape[1] - 1  # after [DEC]
        assert new <= hi
        sep = captioner.processor.tokenizer.sep_token_id
        assert all((row[1:lo + 1] != sep).all() for row in ids)


def test_hub_id_from_the_hugging_face_cache(blip_dir, tmp_path, monkeypatch, reference):
    cache = install_in_hf_cache(blip_dir, tmp_path / "hub", DEFAULT_MODEL)
    point_hf_cache_at(monkeypatch, cache)
    images = _images(2, seed=4)
    node = Caption(device="cpu", **FAST)  # the default model id
    assert node.model == DEFAULT_MODEL
    expected, _ = _reference_captions(reference, images, **FAST)
    with ModelCache() as models:
        assert _node_captions(node, images, models) == expected
        assert [k[:2] for k in models.loaded()] == [("blip", DEFAULT_MODEL)]


def test_two_nodes_share_one_model(blip_dir):
    with ModelCache() as models:
        a = Caption(model=str(blip_dir), device="cpu", **FAST)
        b = Caption(model=str(blip_dir), device="cpu", prompt=PROMPT, **FAST)
        pipe = Pipeline([a, b])
        pipe.process([Sample(image=_images(1)[0])], models=models)
        assert len(models) == 1 and a.captioner is b.captioner


def test_caption_then_tags_in_one_pipeline(blip_dir):
    from grounded.nodes import Tags
    from grounded.tags import caption_tags, detection_prompt

    # The prompt ends in "with" so that a random word piece glued on cannot change "beach".
    pipe = Pipeline([Caption(model=str(blip_dir), device="cpu", prompt="a dog on the beach with", **FAST),
                     Tags(write_text=True)])
    with ModelCache() as models:
        sample = pipe.process([Sample(image=_images(1)[0])], models=models)[0]
    assert sample.caption.startswith("a dog on the beach with")
    assert sample.tags[:2] == ["dog", "beach"] and sample.tags == caption_tags(sample.caption)
    assert sample.text == detection_prompt(sample.tags)


# ---------------------------------------------------------------- bad models and parameters


def _copy(blip_dir, tmp_path, drop=(), name="broken"):
    folder = tmp_path / name
    folder.mkdir()
    for f in blip_dir.iterdir():
        if f.name not in drop:
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_folder_without_weights_lists_what_was_tried(blip_dir, tmp_path):
    folder = _copy(blip_dir, tmp_path, drop=("model.safetensors",))
    with pytest.raises(FileNotFoundError) as err:
        load_blip(folder)
    message = str(err.value)
    assert "Tried" in message and str(folder) in message and "model.safetensors" in message and "weights" in message


def test_folder_without_tokenizer_or_image_processor(blip_dir, tmp_path):
    folder = _copy(blip_dir, tmp_path, drop=("vocab.txt", "tokenizer.json", "preprocessor_config.json",
                                             "processor_config.json"))
    with pytest.raises(FileNotFoundError, match="no image processor .*; no tokenizer"):
        load_blip(folder)


def test_unknown_hub_id_offline_lists_both_places(tmp_path, monkeypatch):
    point_hf_cache_at(monkeypatch, tmp_path / "empty-hub")
    with pytest.raises(FileNotFoundError) as err:
        load_blip("Salesforce/no-such-blip")
    message = str(err.value)
    assert "local folder Salesforce/no-such-blip (does not exist)" in message
    assert "Hugging Face hub id 'Salesforce/no-such-blip' (offline" in message and str(tmp_path / "empty-hub") in message
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        load_blip(str(tmp_path / "nowhere"))


def test_truncated_weights_are_a_clear_error(blip_dir, tmp_path):
    folder = _copy(blip_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"cannot load the BLIP weights in {folder}"):
        load_blip(folder)


def test_config_that_does_not_match_the_weights(blip_dir, tmp_path):
    folder = _copy(blip_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="BLIP weights|do not fit"):
        load_blip(folder)
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type is 'bert', not 'blip'"):
        load_blip(folder)


def test_bad_parameters_and_images():
    assert node_class("caption") is Caption
    with pytest.raises(ValueError, match="num_beams must be at least 1"):
        Caption(num_beams=0)
    with pytest.raises(ValueError, match="min_new_tokens .* is above max_new_tokens"):
        Caption(min_new_tokens=9, max_new_tokens=4)


def test_non_rgb_image_is_named(blip_dir):
    captioner = load_blip(blip_dir)
    with pytest.raises(ValueError, match=r"image 1 must be an HxWx3 RGB array, got \(8, 8\)"):
        captioner.caption([_images(1)[0], np.zeros((8, 8), np.uint8)], **FAST)


def test_importing_the_nodes_loads_no_transformers():
    code = ("import sys, grounded.nodes.caption, grounded.nodes.tags, grounded.tags, grounded.testing.blip\n"
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_reduced_precision_reaches_the_model(blip_dir):
    with ModelCache() as models:
        node = Caption(model=str(blip_dir), device="cpu", dtype="bf16", **FAST)
        captions = _node_captions(node, _images(2), models)
        captioner = models.get("blip", str(blip_dir), "cpu", "bf16")
        assert next(captioner.model.parameters()).dtype == torch.bfloat16
        assert len(models) == 1  # the node's model is the one asked for
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_caption_and_tags_from_a_spec(blip_dir):
    from grounded.pipeline.spec import parse_pipeline

    spec = f"""
version: 1
nodes:
  - node: caption
    params: {{model: "{blip_dir}", device: cpu, prompt: "a dog and a man on the beach with", num_beams: 1,
              max_new_tokens: 4, min_new_tokens: 0}}
  - node: tags
    params: {{vocabulary: [dog, person], write_text: true}}
"""
    pipe = parse_pipeline(spec)
    with ModelCache() as models:
        sample = pipe.process([Sample(image=_images(1)[0])], models=models)[0]
        pipe.close()
    assert sample.tags == ["dog", "person"] and sample.text == "dog. person."


def test_weights_missing_a_tensor_are_refused_not_randomly_filled(blip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(blip_dir, tmp_path)
    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if k.startswith("text_decoder.bert.encoder.layer.0"))
    del state[dropped]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"do not fit its config.json: missing \\['{dropped}'\\]"):
        load_blip(folder)


def test_a_bfloat16_save_loads_in_float32_unless_asked(blip_dir, tmp_path):
    """transformers 5 keeps a checkpoint's saved dtype; `load_blip` gives float32 unless asked."""
    from grounded.testing.bf16 import bfloat16_copy

    folder = bfloat16_copy(blip_dir, tmp_path / "bf16")
    assert next(transformers.BlipForConditionalGeneration.from_pretrained(folder).parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in load_blip(folder).model.parameters()} == {torch.float32}
    assert {p.dtype for p in load_blip(folder, dtype=torch.bfloat16).model.parameters()} == {torch.bfloat16}
