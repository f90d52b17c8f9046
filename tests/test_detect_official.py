"""Grounding DINO through groundingdino-py (official checkpoint + .py config), the official ->
transformers converter, and parity: the same random weights in both layouts, given the same
pixels and text, give the same logits, boxes, scores and phrases."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from grounded.cli import main as cli
from grounded.detect import load_detector, parse_prompt
from grounded.detect.convert import convert_checkpoint, convert_state_dict, map_key
from grounded.detect.official import load_official_state_dict, read_config
from grounded.nodes.detect import Detect
from grounded.pipeline import ModelCache, Pipeline
from grounded.testing.dino import tiny_official, write_official_config

PROMPT = "dog. cat. red car."
SIZE = dict(size=64, max_size=100)


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_official(tmp_path_factory.mktemp("gdino_official"), seed=2)


@pytest.fixture(scope="module")
def official(official_files):
    checkpoint, config, bert = official_files
    return load_detector(checkpoint, config, text_encoder=bert, **SIZE)


@pytest.fixture(scope="module")
def converted(official_files, tmp_path_factory):
    checkpoint, config, bert = official_files
    out = tmp_path_factory.mktemp("gdino_converted") / "hf"
    assert cli(["convert", "grounding-dino", str(checkpoint), str(config), "--text-encoder", str(bert),
                "--out", str(out)]) == 0
    return out


def images(seed=0, shapes=((60, 80), (72, 50))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def clean(phrase):
    for token in ("[CLS]", "[SEP]", "[PAD]", "."):
        phrase = phrase.replace(token, " ")
    return " ".join(phrase.split())


def test_config_is_parsed_not_run(tmp_path):
    import groundingdino
    from groundingdino.util.slconfig import SLConfig

    shipped = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    assert read_config(shipped) == dict(SLConfig.fromfile(str(shipped))._cfg_dict.to_dict())
    with_code = tmp_path / "evil.py"
    with_code.write_text("import os\nhidden_dim = 256\n")
    with pytest.raises(ValueError, match="line 1: only `name = value`"):
        read_config(with_code)
    with_code.write_text("hidden_dim = int('256')\n")
    with pytest.raises(ValueError, match="'hidden_dim' is not a literal"):
        read_config(with_code)
    with pytest.raises(FileNotFoundError):
        read_config(tmp_path / "absent.py")


def test_node_equals_groundingdino_predict(official_files, official):
    """The node's boxes, scores and phrases against groundingdino.util.inference's own predict and
    post-processing, on the library's own preprocessing (load_image's transform at our size)."""
    import groundingdino.datasets.transforms as T
    from groundingdino.util.inference import Model, predict
    from PIL import Image

    checkpoint, config, bert = official_files
    transform = T.Compose([T.RandomResize([SIZE["size"]], max_size=SIZE["max_size"]), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    caption = parse_prompt(PROMPT).caption
    with ModelCache() as models:
        node = Detect(model=str(checkpoint), model_config=str(config), text_encoder=str(bert), prompt=PROMPT,
                      device="cpu", **SIZE)
        for image in images():
            sample = Pipeline([node]).process([image], models=models)[0]
            tensor, _ = transform(Image.fromarray(image), None)
            boxes, logits, phrases = predict(official.model, tensor, caption, 0.3, 0.25, device="cpu")
            ref = Model.post_process_result(image.shape[0], image.shape[1], boxes, logits)
            dets = sample.detections
            assert len(dets) == len(ref.xyxy) > 0
            np.testing.assert_allclose(dets.xyxy, ref.xyxy, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(dets.scores, ref.confidence, rtol=1e-6, atol=1e-6)
            assert dets.data["phrase"] == [clean(p) for p in phrases]
            assert set(dets.labels) <= {"dog", "cat", "red car"}
        assert len(models) == 1  # one detector for every item


def test_converted_weights_give_the_same_logits_boxes_and_phrases(official, converted):
    hf = load_detector(converted, **SIZE)
    prompts = [parse_prompt(PROMPT), parse_prompt("a person. a bicycle.")]
    imgs = images()
    # identical inputs: the official backend's pixels (a padded batch with its mask) for both
    pixels, mask = official.prepare(imgs)
    assert not mask.all()  # the second image is padded: masks are part of the parity
    captions = [p.caption for p in prompts]
    lo, bo = official.forward(pixels, mask, captions)
    lh, bh = hf.forward(pixels, mask, captions)
    finite = torch.isfinite(lo)
    assert torch.equal(finite, torch.isfinite(lh)) and finite.any()
    assert (lo[finite] - lh[finite]).abs().max().item() <= 1e-4
    assert (bo - bh).abs().max().item() <= 1e-4
    sizes = [im.shape[:2] for im in imgs]
    for threshold in (0.3, 0.8):
        a = official.detect_tensors(pixels, mask, prompts, sizes, box_threshold=threshold)
        b = hf.detect_tensors(pixels, mask, prompts, sizes, box_threshold=threshold)
        for x, y in zip(a, b):
            assert len(x) == len(y) > 0
            np.testing.assert_allclose(x.xyxy, y.xyxy, atol=1e-3)
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
            assert x.labels == y.labels and x.data["phrase"] == y.data["phrase"]
            assert x.class_id.tolist() == y.class_id.tolist()
    # End to end, each backend on its own preprocessing: on these images transformers' image processor
    # and groundingdino-py's transform give the same pixels (both resize with PIL bilinear and pad
    # bottom-right), so the detections agree too. (Measured here, not promised for every image.)
    hf_pixels, hf_mask = hf.prepare(imgs)
    assert torch.equal(hf_mask, mask) and (hf_pixels - pixels).abs().max().item() < 1e-6
    texts = [PROMPT, "a person. a bicycle."]
    for x, y in zip(official.detect(imgs, texts), hf.detect(imgs, texts)):
        assert len(x) == len(y) > 0 and x.labels == y.labels
        np.testing.assert_allclose(x.xyxy, y.xyxy, atol=1e-3)


def test_converter_output_folder(converted):
    names = {p.name for p in converted.iterdir()}
    # transformers 5 writes the processor as processor_config.json and the tokenizer as tokenizer.json only
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= names


def test_every_official_key_has_a_rule(official_files):
    state = load_official_state_dict(official_files[0])
    converted = convert_state_dict(state)
    # fused q/k/v split in three, BERT's pooler dropped, nothing else lost
    fused = [k for k in state if map_key(k).__class__ is tuple]
    pooler = [k for k in state if k.startswith("bert.pooler.")]
    assert fused and pooler
    assert len(converted) == len(state) + 2 * len(fused) - len(pooler)
    with pytest.raises(ValueError, match="transformer.mystery.weight"):
        convert_state_dict({**state, "transformer.mystery.weight": torch.zeros(1)})


@pytest.mark.parametrize("change, expected", [
    (dict(dec_layers=3), r"40 weights missing \(bbox_embed\.2\.layers"),
    (dict(num_queries=40), r"transformer\.tgt_embed\.weight: \(30, 256\) in the checkpoint groundingdino_tiny\.pth, "
                           r"\(40, 256\) in the model"),
])
def test_checkpoint_that_does_not_match_its_config(official_files, tmp_path, change, expected):
    checkpoint, config, bert = official_files
    cfg = read_config(config)
    cfg.update(change)
    wrong = write_official_config(tmp_path / "wrong.py", cfg)
    with pytest.raises(ValueError, match=expected):
        load_detector(checkpoint, wrong, text_encoder=bert)
    with pytest.raises(ValueError, match="does not match the model its config describes"):
        convert_checkpoint(checkpoint, wrong, bert, tmp_path / "out")


def test_text_encoder_must_be_a_local_folder(official_files, tmp_path):
    checkpoint, config, _ = official_files
    with pytest.raises(FileNotFoundError, match="(?s)must be a local folder.*nowhere"):
        load_detector(checkpoint, config, text_encoder=tmp_path / "nowhere")
    cfg = read_config(config)
    cfg["text_encoder_type"] = "bert-base-uncased"  # the shipped configs' hub name
    with pytest.raises(FileNotFoundError, match="'bert-base-uncased'"):
        load_detector(checkpoint, write_official_config(tmp_path / "hub.py", cfg))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_detector(tmp_path / "absent.pth", config, text_encoder=official_files[2])


def test_official_backend_runs_its_pure_pytorch_deformable_attention_on_cpu(official):
    # groundingdino-py 0.4.0 ships no compiled _C extension: deformable attention is the
    # multi_scale_deformable_attn_pytorch fallback, which the tests above ran on the CPU.
    assert importlib.util.find_spec("groundingdino._C") is None
    assert next(official.model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="float32"):
        load_detector("x.pth", "x.py", dtype=torch.bfloat16)


def test_different_prompts_in_one_batch(official):
    """groundingdino-py run on a batch of two captions gives the shorter-caption image other logits
    than alone (its text masks are repeated batch-major); the backend batches per caption."""
    from groundingdino.util.misc import NestedTensor

    image = images()[0]
    a, b = parse_prompt(PROMPT).caption, parse_prompt("a person. a bicycle.").caption
    pixels, mask = official.prepare([image, image])
    with torch.no_grad():
        mixed = official.model(NestedTensor(pixels, ~mask), captions=[a, b])["pred_logits"][1]
    alone, _ = official.forward(pixels[1:], mask[1:], [b])
    ours, _ = official.forward(pixels, mask, [a, b])
    finite = torch.isfinite(alone[0])
    assert (mixed[finite] - alone[0][finite]).abs().max() > 1e-2  # the library's batching bug is real
    torch.testing.assert_close(ours[1], alone[0], rtol=0, atol=1e-5)


def test_convert_command_errors(official_files, tmp_path, capsys):
    checkpoint, config, bert = official_files
    code = cli(["convert", "grounding-dino", str(tmp_path / "absent.pth"), str(config), "--text-encoder", str(bert),
                "--out", str(tmp_path / "out")])
    assert code == 1 and "absent.pth does not exist" in capsys.readouterr().err
    code = cli(["convert", "grounding-dino", str(checkpoint), str(config), "--text-encoder", str(tmp_path),
                "--out", str(tmp_path / "out")])
    assert code == 1 and "has no config.json" in capsys.readouterr().err


def test_released_checkpoint_extras_are_skipped(official_files, official, tmp_path):
    """Released official checkpoints also hold the training-only `label_enc.weight` and BERT's old
    `position_ids` buffer (groundingdino-py's strict=False load reports both): both backends take them."""
    checkpoint, config, bert = official_files
    state = load_official_state_dict(checkpoint)
    extras = {"label_enc.weight": torch.randn(2001, 256), "bert.embeddings.position_ids": torch.arange(256)[None]}
    released = tmp_path / "released.pth"
    torch.save({"model": {f"module.{k}": v for k, v in {**state, **extras}.items()}}, released)
    again = load_detector(released, config, text_encoder=bert, **SIZE)
    image = images()[0]
    np.testing.assert_array_equal(again.detect(image, PROMPT)[0].xyxy, official.detect(image, PROMPT)[0].xyxy)
    assert "label_enc.weight" not in {k for k in convert_state_dict({**state, **extras})}
    with pytest.raises(ValueError, match="unexpected weights \\(transformer\\.extra\\.weight\\)"):
        torch.save({"model": {**state, "transformer.extra.weight": torch.zeros(1)}}, released)
        load_detector(released, config, text_encoder=bert)


def test_shipped_swint_config_converts_to_transformers_grounding_dino_tiny(official_files):
    """The real GroundingDINO_SwinT_OGC.py (full size: 6+6 layers, 900 queries, 2048-wide FFNs)
    gives transformers' default GroundingDinoConfig, which is grounding-dino-tiny's architecture,
    and every weight of the full-size official model lands on a weight of the same shape."""
    import groundingdino
    from transformers import BertConfig, GroundingDinoConfig

    from grounded.detect.convert import check_converted, hf_config_from_official
    from grounded.detect.official import build_official_model

    bert = official_files[2]
    cfg = read_config(Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py")
    cfg["text_encoder_type"] = str(bert)  # a tiny BERT; everything else full size
    ours = hf_config_from_official(cfg, BertConfig.from_pretrained(bert).to_dict())
    default = GroundingDinoConfig()
    for field in ("d_model", "num_queries", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
                  "encoder_attention_heads", "decoder_attention_heads", "num_feature_levels", "encoder_n_points",
                  "decoder_n_points", "two_stage", "max_text_len", "decoder_bbox_embed_share",
                  "two_stage_bbox_embed_share", "positional_embedding_temperature", "embedding_init_target",
                  "activation_function", "query_dim"):
        assert getattr(ours, field) == getattr(default, field), field
    for field in ("embed_dim", "depths", "num_heads", "window_size", "out_indices"):
        assert list(np.atleast_1d(getattr(ours.backbone_config, field))) == \
            list(np.atleast_1d(getattr(default.backbone_config, field))), field
    state = build_official_model(cfg).state_dict()
    check_converted(convert_state_dict(state), ours)
    # the shipped Swin-B config maps to Swin-B at 384 (window 12), as grounding-dino-base
    swin_b = read_config(Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinB_cfg.py")
    base = hf_config_from_official(swin_b, BertConfig.from_pretrained(bert).to_dict()).backbone_config
    assert (base.embed_dim, list(base.depths), base.window_size, list(base.out_indices)) == (128, [2, 2, 18, 2], 12, [2, 3, 4])


def test_a_bfloat16_text_encoder_folder_still_runs_in_float32(official_files, official, tmp_path):
    """transformers 5 builds the official model's BERT in its folder's saved dtype; the backend runs
    float32 (the BERT's weights come from the checkpoint), so the detections do not change."""
    from grounded.testing.bf16 import bfloat16_copy

    checkpoint, config, bert = official_files
    det = load_detector(checkpoint, config, text_encoder=bfloat16_copy(bert, tmp_path / "bert-bf16"), **SIZE)
    assert {p.dtype for p in det.model.parameters()} == {torch.float32}
    image = images()[0]
    a, b = det.detect(image, PROMPT)[0], official.detect(image, PROMPT)[0]
    np.testing.assert_array_equal(a.xyxy, b.xyxy)


def test_bert_helpers_are_restored_only_when_the_official_backend_builds(official):
    """groundingdino-py needs three BERT mask helpers transformers 5 removed: they are put back when
    the official backend builds a model, and importing grounded (its detectors, nodes, pipelines)
    does not touch transformers' classes."""
    import subprocess
    import sys

    from transformers import BertModel

    from grounded.detect.bert_compat import HELPERS, restore_bert_mask_helpers

    code = ("import grounded, grounded.detect, grounded.detect.official, grounded.nodes, grounded.pipeline, "
            "grounded.cli\nfrom transformers import BertModel\n"
            f"print([hasattr(BertModel, name) for name in {HELPERS!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[False, False, False]"  # transformers 5 has none of them
    assert all(hasattr(BertModel, name) for name in HELPERS)  # this process built the official model
    assert restore_bert_mask_helpers() == []  # once is enough


def test_restored_bert_helpers_compute_what_transformers_4_did(official):
    """transformers 4.57's arithmetic: ones attend (0 added), zeros are masked (the dtype's lowest
    value added); no head mask is one None per layer."""
    bert = official.model.bert
    low = torch.finfo(torch.float32).min
    padding = torch.tensor([[1, 1, 0]])
    extended = bert.get_extended_attention_mask(padding, (1, 3), "cpu")
    assert extended.shape == (1, 1, 1, 3) and extended.dtype == torch.float32
    assert extended.flatten().tolist() == [0.0, 0.0, low]
    square = torch.tensor([[[1, 0], [1, 1]]])
    assert bert.get_extended_attention_mask(square, (1, 2))[0, 0].tolist() == [[0.0, low], [0.0, 0.0]]
    assert bert.invert_attention_mask(padding).flatten().tolist() == [0.0, 0.0, low]
    layers = bert.config.num_hidden_layers
    assert bert.get_head_mask(None, layers) == [None] * layers
    heads = torch.tensor([1.0, 0.0])
    assert bert.get_head_mask(heads, layers).shape == (layers, 1, 2, 1, 1)
