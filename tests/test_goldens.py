"""The text models give today the outputs they gave under transformers 4.57.6: each tiny seeded
model (grounded/testing/goldens.py), loaded through grounded's own loaders, against the golden file
tests/goldens/make_goldens.py wrote then, from a checkpoint holding the golden's weights (the layout
the earlier version saved). Floats within 1e-5; token ids, classes and weight names exactly."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from grounded.testing import goldens

GOLDENS = Path(__file__).parent / "goldens"
TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the goldens were made (sums in the same order)
    yield
    torch.set_num_threads(threads)


def test_goldens_were_made_before_the_move_to_transformers_5():
    made_with = json.loads((GOLDENS / "versions.json").read_text())
    assert made_with["transformers"] == "4.57.6" and made_with["tokenizers"] == "0.22.2"


# Weights a version saves beyond the golden's: transformers 5's Swin backbone holds a SwinModel whose
# final layernorm it never uses (and ignores when a checkpoint lacks it).
NEW_WEIGHTS = {"hf_grounding_dino": r"model\.backbone\.conv_encoder\.model\.swin\.layernorm\.(weight|bias) .*"}


@pytest.mark.parametrize("name", list(goldens.MODELS))
def test_outputs_equal_the_goldens(name, tmp_path):
    """The checkpoint is written with the golden's weights only (as the earlier version saved it)
    and loaded through grounded's loader; every output within TOLERANCE of the golden's."""
    golden = dict(np.load(GOLDENS / f"{name}.npz"))
    now = goldens.MODELS[name](tmp_path, keep=golden["keys"])
    diffs = goldens.compare(golden, now)
    print(f"{name}: max abs differences {diffs}")
    assert set(now) == set(golden)
    saved, wanted = set(now.pop("keys")), set(golden.pop("keys"))
    assert not wanted - saved, f"{name}: this version saves no {sorted(wanted - saved)[:5]}"
    assert all(re.fullmatch(NEW_WEIGHTS.get(name, "$^"), line) for line in saved - wanted), sorted(saved - wanted)
    for key in ("input_ids", "vocab_sha256", "greedy_ids", "beam_ids", "class_id_0", "class_id_1"):
        assert diffs.get(key, 0.0) == 0.0, f"{name}: {key} changed"
    if "logits_tail_is_inf" in now:
        assert now["logits_tail_is_inf"]
    worst = {k: v for k, v in diffs.items() if k != "keys" and v > TOLERANCE}
    assert not worst, f"{name}: outputs moved by more than {TOLERANCE}: {worst}"


def test_a_changed_output_is_caught():
    golden = dict(np.load(GOLDENS / "clip.npz"))
    moved = dict(golden, text=golden["text"] + 2e-5)
    assert goldens.compare(golden, moved)["text"] == pytest.approx(2e-5, rel=0.01)
    assert goldens.compare(golden, dict(golden, keys=golden["keys"][1:]))["keys"] == float("inf")
    assert goldens.compare(golden, {k: v for k, v in golden.items() if k != "images"})["images"] == float("inf")
