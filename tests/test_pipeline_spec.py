"""Pipeline spec files: the schema, errors with file, line and fix, vars and --set, the shipped specs."""

import textwrap
from pathlib import Path

import pytest

from grounded.pipeline.spec import SCHEMA, SpecError, find_spec, load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[1]


def spec(text):
    return textwrap.dedent(text).lstrip("\n")


def problems(text, overrides=()):
    with pytest.raises(SpecError) as err:
        parse_pipeline(spec(text), "x.yaml", overrides)
    return err.value.problems


def test_shipped_specs_load_and_validate():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    specs = sorted((REPO / "pipelines").glob("*.yaml"))
    assert {p.name for p in specs} >= {"auto_masks.yaml", "point_masks.yaml"}
    for path in specs:
        if path.name == "text_to_mask_native.yaml":
            # Needs the user's trained projection; without one it stops at once and says what to set.
            with pytest.raises(ValueError, match="projection=PATH"):
                load_pipeline(path)
            continue
        pipeline = load_pipeline(path)
        assert pipeline.description and pipeline.spec["file"] == str(path)
    auto = load_pipeline("auto_masks")  # a shipped spec by name
    assert auto.ids == ["segment_auto", "write_coco", "write_overlays"] and auto.batch_size == 4
    assert auto.node("segment_auto").model == "mobile_sam" and auto.node("segment_auto").points_per_side == 32


def test_vars_and_set_overrides_keep_their_types():
    text = """
        vars:
          model: mobile_sam
          side: 32
        nodes:
          - node: segment_auto
            params:
              model: ${model}
              points_per_side: ${side}
              device: cpu-${side}
          - node: write_coco
            id: coco
    """
    p = parse_pipeline(spec(text), "x.yaml", ["side=8", "model=facebook/sam-vit-huge", "coco.file=all.json",
                                              "segment_auto.pred_iou_thresh=0.5", "batch_size=2"])
    auto = p.node("segment_auto")
    assert auto.points_per_side == 8 and auto.model == "facebook/sam-vit-huge" and auto.device == "cpu-8"
    assert auto.pred_iou_thresh == 0.5 and p.node("coco").file == "all.json" and p.batch_size == 2
    # a value YAML would read as a bool stays text where the target is text
    assert parse_pipeline(spec(text), "x.yaml", ["model=no"]).node("segment_auto").model == "no"


def test_yaml_syntax_error_gives_the_line():
    (p,) = problems("""
        nodes:
          - node: segment_auto
           params: {}
    """)
    assert p.location == "x.yaml:3" and "YAML syntax error" in p.message and "indentation" in p.fix


def test_schema_errors_give_line_and_fix():
    found = problems("""
        version: 1
        batch_size: four
        nodes:
          - node: segment_auto
            points_per_side: 8
          - nod: write_coco
    """)
    by_line = {p.location: p for p in found}
    assert "x.yaml:2" in by_line and "whole number" in by_line["x.yaml:2"].message
    assert "x.yaml:5" in by_line and "unknown key 'points_per_side'" in by_line["x.yaml:5"].message
    assert "params:" in by_line["x.yaml:5"].fix
    assert any(p.location == "x.yaml:6" and "did you mean 'node'" in p.fix for p in found)
    assert [p.location for p in found] == sorted([p.location for p in found], key=lambda s: int(s.split(":")[1]))


def test_missing_nodes_and_unknown_top_level_key():
    found = problems("""
        descripton: hi
    """)
    messages = {p.message for p in found}
    assert "no `nodes:` list" in messages and "unknown key 'descripton'" in messages
    assert any("did you mean 'description'" in p.fix for p in found)
    (empty,) = problems("\n")
    assert "empty" in empty.message


def test_unknown_node_and_param_point_at_their_lines():
    found = problems("""
        nodes:
          - node: segment_autoo
          - node: write_coco
            params:
              fil: x.json
    """)
    (node_problem,) = found  # unknown node names are reported before parameters are checked
    assert node_problem.location == "x.yaml:2" and "did you mean 'segment_auto'" in node_problem.fix
    found = problems("""
        nodes:
          - node: segment_auto
          - node: write_coco
            params:
              fil: x.json
              categories: 3
    """)
    (param_problem, type_problem) = found
    assert param_problem.location == "x.yaml:5" and "unknown parameter 'fil'" in param_problem.message
    assert "did you mean 'file'" in param_problem.fix
    assert type_problem.location == "x.yaml:6" and "'categories' must be list or null, got int 3" in type_problem.message


def test_bad_param_type_and_choice():
    found = problems("""
        nodes:
          - node: segment_auto
            params:
              points_per_side: many
              dtype: fp64
    """)
    assert [p.location for p in found] == ["x.yaml:4", "x.yaml:5"]
    assert "'points_per_side' must be int" in found[0].message and "e.g. points_per_side: 8" in found[0].fix
    assert "not one of ['fp32', 'bf16', 'fp16']" in found[1].message


def test_wiring_errors_point_at_the_node():
    (p,) = problems("""
        nodes:
          - node: write_coco
    """)
    assert p.location == "x.yaml:2" and "reads 'detections'" in p.message and "segment_auto" in p.fix


def test_unknown_var_and_bad_set():
    found = problems("""
        vars: {model: mobile_sam}
        nodes:
          - node: segment_auto
            params:
              model: ${modle}
    """, overrides=["nope=1", "segment_autox.model=x", "segment_auto.points_per_side=lots", "oops"])
    text = "\n".join(str(p) for p in found)
    assert "x.yaml:5: nodes[0].params.model: unknown var ${modle}" in text and "did you mean 'model'" in text
    assert "--set nope=1: 'nope' is neither a var" in text
    assert "--set segment_autox.model=x: no node 'segment_autox'" in text and "did you mean 'segment_auto'" in text
    assert "--set oops: expected KEY=VALUE" in text
    assert "--set segment_auto.points_per_side=lots" in text and "must be int" in text


def test_duplicate_keys_are_caught():
    (p,) = problems("""
        nodes:
          - node: segment_auto
            node: write_coco
    """)
    assert p.location == "x.yaml:3" and "appears twice" in p.message


def test_user_node_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_nodes.py").write_text(textwrap.dedent("""
        import numpy as np
        from grounded.pipeline import Node, Param

        class Shout(Node):
            '''Upper-cases the caption.'''
            name = "shout"
            reads = {"caption": str}
            writes = {"caption": str}
            params = {"times": Param(1, int)}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    p = parse_pipeline(spec("""
        inputs: [caption]
        nodes:
          - node: my_nodes:Shout
            params: {times: 2}
    """), "x.yaml")
    assert p.ids == ["shout"] and p.node("shout").times == 2
    (missing,) = problems("""
        nodes:
          - node: my_nodes:Shuot
    """)
    assert missing.location == "x.yaml:2" and "did you mean 'Shout'" in missing.fix


def test_find_spec_lists_shipped_specs():
    assert find_spec("auto_masks") == REPO / "pipelines" / "auto_masks.yaml"
    with pytest.raises(FileNotFoundError, match="auto_masks.yaml"):
        find_spec("nope")
