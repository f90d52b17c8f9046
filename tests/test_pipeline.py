"""grounded.pipeline: nodes, the wiring check, composition, the model cache, the registry and the
SAM nodes (tiny random models)."""

from typing import List

import numpy as np
import pytest
from PIL import Image

from grounded.nodes import NodeNotFoundError, node_class, producers_of
from grounded.pipeline import ModelCache, Node, Param, ParamError, Pipeline, PipelineError
from grounded.types import Detections, Sample


class Caption(Node):
    """Writes a caption from the image size."""

    name = "caption_test"
    reads = {"image": np.ndarray}
    writes = {"caption": str}
    params = {"prefix": Param("a photo", str, "first words"), "scale": Param(1.0, float),
              "mode": Param("short", str, choices=("short", "long"))}

    def process(self, sample):
        sample.caption = f"{self.prefix} {sample.image.shape[1]}x{sample.image.shape[0]}"


class Tags(Node):
    name = "tags_test"
    reads = {"caption": str}
    writes = {"tags": List[str]}

    def process(self, sample):
        sample.tags = sample.caption.split()


class WantsDetections(Node):
    name = "wants_detections"
    reads = {"detections": Detections}


class CaptionAsInt(Node):
    name = "caption_as_int"
    writes = {"caption": int}


class ReadsCaptionAsInt(Node):
    name = "reads_caption_as_int"
    reads = {"caption": int}


class FailsOnOdd(Node):
    """Raises for odd image widths; batches like a model would (one call for the whole batch)."""

    name = "fails_on_odd"
    reads = {"image": np.ndarray}
    writes = {"caption": str}

    def process_batch(self, samples):
        for s in samples:
            if s.image.shape[1] % 2:
                raise ValueError(f"odd width {s.image.shape[1]}")
            s.caption = "even"
        return samples


class LiesAboutItsOutput(Node):
    name = "lies"
    writes = {"caption": str}

    def process(self, sample):
        sample.caption = 42


def image(w=8, h=6):
    return np.full((h, w, 3), 100, np.uint8)


# ---- parameters -------------------------------------------------------------------------------

def test_params_become_attributes_with_defaults_and_lossless_conversion():
    node = Caption(prefix="hi", scale=2)
    assert node.prefix == "hi" and node.scale == 2.0 and isinstance(node.scale, float) and node.mode == "short"
    assert node.config == {"prefix": "hi", "scale": 2.0, "mode": "short"}


@pytest.mark.parametrize("kwargs, match", [
    ({"prefx": "x"}, r"unknown parameter 'prefx'.*did you mean 'prefix'"),
    ({"scale": "big"}, r"'scale' must be float, got str 'big'"),
    ({"scale": True}, r"'scale' must be float"),
    ({"mode": "shrt"}, r"not one of \['short', 'long'\].*did you mean 'short'"),
])
def test_bad_params_name_the_node_and_the_fix(kwargs, match):
    with pytest.raises(ParamError, match=match) as err:
        Caption(**kwargs)
    assert str(err.value).startswith("caption_test:")


def test_required_param():
    class Needs(Node):
        name = "needs"
        params = {"file": Param(help="where to write")}

    with pytest.raises(ParamError, match="'file' is required"):
        Needs()
    assert Needs(file="x").file == "x"


def test_reserved_param_names_are_refused_at_class_definition():
    with pytest.raises(TypeError, match="reserved"):
        class Bad(Node):
            params = {"process": Param(1)}


# ---- wiring -----------------------------------------------------------------------------------

def test_a_good_pipeline_by_list_and_by_chaining():
    by_list = Pipeline([Caption(), Tags()])
    chained = Caption() | Tags()
    assert isinstance(chained, Pipeline) and [n.name for n in chained.nodes] == ["caption_test", "tags_test"]
    assert by_list.ids == chained.ids == ["caption_test", "tags_test"]
    longer = chained | Caption(node_id="again")
    assert longer.ids == ["caption_test", "tags_test", "again"] and len(longer) == 3


def test_a_field_nobody_writes_names_the_node_and_who_could_write_it():
    with pytest.raises(PipelineError) as err:
        Pipeline([Caption(), WantsDetections()])
    (problem,) = err.value.problems
    assert problem.node == "wants_detections" and problem.index == 1 and problem.field == "detections"
    assert "reads 'detections', which nothing before it writes" in problem.message
    assert "segment_auto" in problem.fix  # a built-in node that writes detections


def test_a_node_in_the_wrong_order_is_told_to_move():
    with pytest.raises(PipelineError, match="move 'caption_test' before 'tags_test'"):
        Pipeline([Tags(), Caption()])


def test_type_mismatches_are_named():
    with pytest.raises(PipelineError) as err:
        Pipeline([CaptionAsInt()])
    assert "writes 'caption' as int, but Sample.caption is str" in str(err.value)
    with pytest.raises(PipelineError) as err:
        Pipeline([Caption(), ReadsCaptionAsInt()])
    assert "reads 'caption' as int, but 'caption_test' gives it as str" in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(PipelineError) as err:
        Pipeline([WantsDetections(), Tags(), Caption(node_id="x"), Caption(node_id="x")])
    messages = [p.message for p in err.value.problems]
    assert len(messages) == 3 and "used twice" in messages[2]


def test_inputs_decide_what_is_available():
    assert Pipeline([Tags()], inputs=["caption"]).check() == []
    assert Pipeline([Caption()]).check(inputs=["text"])[0].field == "image"


# ---- running in memory ------------------------------------------------------------------------

def test_pipeline_on_one_image_and_in_batches():
    pipe = Caption() | Tags()
    with pipe:
        out = pipe(image(8, 6))
        assert out.caption == "a photo 8x6" and out.tags == ["a", "photo", "8x6"]
        many = pipe.process([image(2, 2), Sample(image=image(4, 2))])
        assert [s.caption for s in many] == ["a photo 2x2", "a photo 4x2"]


def test_one_failing_item_does_not_take_its_batch_down():
    pipe = Pipeline([FailsOnOdd(), Tags()], batch_size=3)
    with pipe:
        results = pipe.run_batch([Sample(image=image(w)) for w in (4, 5, 6)])
    assert [s.tags for s, _ in results] == [["even"], None, ["even"]]
    failure = results[1][1]
    assert failure.stage == "fails_on_odd" and failure.reason == "odd width 5"
    with pipe, pytest.raises(ValueError, match="odd width"):
        pipe(image(5))


def test_a_node_writing_the_wrong_type_fails_that_item():
    pipe = Pipeline([LiesAboutItsOutput()])
    with pipe:
        (_, failure), = pipe.run_batch([Sample()])
    assert failure.stage == "lies" and "declares it writes 'caption' as str but wrote a int" in failure.reason


def test_writers_need_an_output_folder():
    from grounded.nodes.export import WriteCoco

    with pytest.raises(RuntimeError, match="needs an output folder"):
        Pipeline([WriteCoco()], inputs={"image": np.ndarray, "detections": Detections}).open(ModelCache())


# ---- model cache ------------------------------------------------------------------------------

def test_model_cache_loads_once_and_has_a_lifetime(tmp_path):
    loads = []

    def loader(cache, name, device, dtype):
        loads.append((name, device, dtype))
        return object()

    folder = tmp_path / "m"
    folder.mkdir()
    with ModelCache(loaders={"toy": loader}) as models:
        a = models.get("toy", str(folder), "cpu")
        b = models.get("toy", folder / "." , "cpu")  # the same folder by another spelling
        c = models.get("toy", "hub/name", "cpu", "bf16")
        assert a is b and c is not a and len(loads) == 2 and len(models) == 2
        assert models.loaded()[1] == ("toy", "hub/name", "cpu", "bfloat16")
    assert models.closed and len(models) == 0
    with pytest.raises(RuntimeError, match="closed"):
        models.get("toy", "x")
    with pytest.raises(ValueError, match="no loader for model kind 'nope'"), ModelCache() as other:
        other.get("nope", "x")


def test_node_modules_register_the_model_kinds_they_use():
    import grounded.nodes.caption  # noqa: F401
    import grounded.nodes.segment  # noqa: F401
    from grounded.pipeline.models import registered_kinds

    assert {"blip", "sam", "sam_predictor", "sam_predictor_openvino"} <= set(registered_kinds())


# ---- registry ---------------------------------------------------------------------------------

def test_registry_short_names_import_paths_and_mistakes():
    from grounded.nodes.segment import SegmentAuto

    assert node_class("segment_auto") is SegmentAuto
    assert node_class("grounded.nodes.segment:SegmentAuto") is SegmentAuto
    assert node_class("grounded.nodes.segment.SegmentAuto") is SegmentAuto
    assert node_class(f"{__name__}:Caption") is Caption
    with pytest.raises(NodeNotFoundError, match="did you mean 'segment_auto'"):
        node_class("segment_autoo")
    with pytest.raises(NodeNotFoundError, match="cannot import 'no_such_module'"):
        node_class("no_such_module:Node")
    with pytest.raises(NodeNotFoundError, match="did you mean 'Caption'"):
        node_class(f"{__name__}:Captoin")
    with pytest.raises(NodeNotFoundError, match="not a Node class"):
        node_class("numpy:ndarray")
    assert producers_of("detections") == ["clip_score", "detect", "refine_points", "segment_auto", "segment_boxes",
                                          "segment_concepts", "segment_points", "segment_text_native", "target_boxes"]
    assert producers_of("transcript") == ["transcribe"] and producers_of("caption") == ["caption"]


# ---- SAM nodes on a tiny random model ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    return str(save_pretrained(tiny_sam("vit"), tmp_path_factory.mktemp("tiny_sam")))


def count_encoder_calls(model):
    calls = []
    forward = model.image_encoder.forward

    def counting(x):
        calls.append(x.shape[0])
        return forward(x)

    model.image_encoder.forward = counting
    return calls


def photo(seed, h=90, w=120):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def test_segment_auto_encodes_a_batch_at_once_and_writes_rle_detections(tiny_model_dir):
    from grounded.nodes.segment import SegmentAuto

    node = SegmentAuto(model=tiny_model_dir, device="cpu", points_per_side=4, pred_iou_thresh=0.0,
                       stability_score_thresh=0.0)
    pipe = Pipeline([node], batch_size=3)
    with ModelCache() as models:
        pipe.open(models)
        calls = count_encoder_calls(models.get("sam", tiny_model_dir, "cpu"))
        out = pipe.process([photo(0), photo(1), photo(2, 40, 30)])
        pipe.close()
    assert calls == [3]  # one encoder call for the whole batch
    for s in out:
        d = s.detections
        assert len(d) > 0 and d.has_masks and d.image_size == s.image_size and d.scores is not None
        assert isinstance(d.rles[0]["counts"], str) and "stability_score" in d.data


def test_sam_nodes_share_one_model_and_one_embedding(tiny_model_dir):
    from grounded.nodes.segment import SegmentBoxes, SegmentPoints, sam_predictor

    class Boxes(Node):
        name = "boxes"
        reads = {"image": np.ndarray}
        writes = {"detections": Detections}

        def process(self, sample):
            sample.detections = Detections([[5, 5, 60, 40], [10, 20, 130, 95], [0, 0, 0, 0]], scores=[0.9, 0.8, 0.1],
                                           labels=["a", "b", "c"])

    pipe = Pipeline([Boxes(), SegmentBoxes(model=tiny_model_dir, device="cpu"),
                     SegmentPoints(model=tiny_model_dir, device="cpu", node_id="pts", points=[[10, 10], [[30, 30, 1], [50, 50, 0]]])],
                    batch_size=2)
    with ModelCache() as models:
        pipe.open(models)
        predictor = sam_predictor(models, tiny_model_dir, "cpu")
        calls = count_encoder_calls(predictor.model)
        decoder_calls = []
        predict_many = predictor.predict_many
        predictor.predict_many = lambda **kw: decoder_calls.append(kw) or predict_many(**kw)
        out = pipe.process([photo(3), photo(4)])
        assert len(models) == 2  # one model + its predictor, for both nodes
        pipe.close()
    assert calls == [2]  # both images encoded once, in one batch, for both nodes
    assert len(decoder_calls) == 4  # one call per image per node: all boxes (or points) at once
    assert decoder_calls[0]["boxes"].shape == (3, 4)
    d = out[0].detections
    assert len(d) == 2 and d.has_masks  # the points' masks replaced the boxes' (last writer wins)
    assert d.data["point_coords"] == [[[10.0, 10.0]], [[30.0, 30.0], [50.0, 50.0]]]


def test_segment_boxes_keeps_the_detections_and_adds_masks(tiny_model_dir):
    from grounded.nodes.segment import SegmentBoxes

    pipe = Pipeline([SegmentBoxes(model=tiny_model_dir, device="cpu", multimask=True)],
                    inputs={"image": np.ndarray, "detections": Detections})
    boxes = Detections([[-5, 2, 50, 30], [60, 10, 125, 95]], scores=[0.9, 0.4], labels=["cat", "dog"])
    with pipe:
        out = pipe(Sample(image=photo(5), detections=boxes))
        empty = pipe(Sample(image=photo(6), detections=Detections.empty()))
    d = out.detections
    np.testing.assert_array_equal(d.xyxy, boxes.xyxy)  # the detector's boxes (even one poking out) stay
    assert d.labels == ["cat", "dog"] and d.mask.shape == (2, 90, 120) and "mask_score" in d.data
    assert len(empty.detections) == 0 and empty.detections.has_masks


def test_segment_points_from_the_sample_field(tiny_model_dir):
    from grounded.nodes.segment import SegmentPoints

    node = SegmentPoints(model=tiny_model_dir, device="cpu")
    assert "points" in node.reads
    with pytest.raises(PipelineError, match="reads 'points'"):
        Pipeline([node])
    pipe = Pipeline([node], inputs=["image", "points"])
    with pipe:
        out = pipe(Sample(image=photo(7), points=[[5, 5], [100.5, 80]]))
        with pytest.raises(ValueError, match="outside"):
            pipe(Sample(image=photo(7), points=[[500, 5]]))
    assert len(out.detections) == 2 and out.detections.scores.shape == (2,)


def test_a_tiny_image_gives_each_mask_once_and_a_note_in_the_manifest(tiny_model_dir, tmp_path):
    from PIL import Image

    from grounded.io.results import read_jsonl
    from grounded.nodes.segment import SegmentAuto

    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    # Every threshold off: all 32 x 32 x 3 of SAM's answers come back, and on one pixel they repeat.
    node = SegmentAuto(model=tiny_model_dir, device="cpu", pred_iou_thresh=-100.0, stability_score_thresh=0.0)
    report = Pipeline([node]).run([str(tmp_path / "dot.png")], tmp_path / "out", progress=False)
    assert report.ok == 1
    [row] = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert 1 <= row["detections"] <= 2  # the pixel set, or not: each mask once
    assert any("smaller than the 32x32 point grid" in note and "repeating another exactly were dropped" in note
               for note in row["notes"])


def test_reduced_precision_shares_the_float32_model(tiny_model_dir):
    from grounded.nodes.segment import SegmentAuto, SegmentPoints, sam_predictor

    auto = SegmentAuto(model=tiny_model_dir, device="cpu", dtype="bf16", points_per_side=2, pred_iou_thresh=0.0,
                       stability_score_thresh=0.0)
    points = SegmentPoints(model=tiny_model_dir, device="cpu", points=[[5, 5]])
    with ModelCache() as models, Pipeline([auto, points], batch_size=2) as pipe:
        pipe.open(models)
        out = pipe.process([photo(8), photo(9)])
        assert sam_predictor(models, tiny_model_dir, "cpu", "bf16").autocast_dtype is not None
        assert len([key for key in models.loaded() if key[0] == "sam"]) == 1  # one float32 model for both
    assert all(len(s.detections) == 1 for s in out)


@pytest.mark.parametrize("param, said", [
    (Param(3, "help"), "its type is 'help', which is no type (the arguments are Param(default=REQUIRED, type=None, "
                       "help='', choices=None, fingerprint=True)); e.g. Param(3, int, 'help')"),
    (Param(3, int, 7), "its help is 7, not text (the arguments are Param(default=REQUIRED, type=None, help='', "
                       "choices=None, fingerprint=True))"),
    (Param("a", str, "x", choices="abc"), "its choices are 'abc'; give a list of the allowed values"),
    (Param("x", float, "radius"), "its default 'x' is no float"),
    (Param("b", str, "mode", choices=["a", "c"]), "its default 'b' is not one of its choices ['a', 'c']"),
])
def test_a_param_written_wrongly_is_refused_when_its_node_is_defined(param, said):
    """Issue 28: `Param(3, "help")` (the type left out) gave a raw TypeError at run time."""
    with pytest.raises(TypeError) as err:
        class Blur(Node):
            params = {"radius": param}
    assert str(err.value) == f"node Blur ({__name__}), parameter 'radius': {said}"


def test_a_wrong_param_in_a_spec_node_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from grounded.cli import main

    (tmp_path / "my_wrong_nodes.py").write_text(
        "from grounded.pipeline import Node, Param\n\n"
        "class Blur(Node):\n    reads = {}\n    writes = {}\n    params = {'radius': Param(3, 'help')}\n\n"
        "    def process(self, sample):\n        return sample\n")
    (tmp_path / "spec.yaml").write_text("version: 1\nnodes:\n  - node: my_wrong_nodes:Blur\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["run", str(tmp_path / "spec.yaml"), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "node Blur (my_wrong_nodes), parameter 'radius': its type is 'help'" in err and "Traceback" not in err
