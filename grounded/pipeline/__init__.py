"""Composable pipelines: nodes that declare what they read, write and take, a `Pipeline` that
checks the wiring when it is built, YAML specs, a shared `ModelCache`, and a runner over data
that journals every item so a killed run resumes.

    from grounded.pipeline import ModelCache, Pipeline, load_pipeline
    from grounded.nodes import SegmentAuto, WriteCoco

    pipe = SegmentAuto(points_per_side=16) | WriteCoco()           # in Python
    pipe = load_pipeline("pipelines/auto_masks.yaml")               # or from a spec
    with ModelCache() as models:
        report = pipe.run(["samples/"], "out/auto", models=models, resume=True)
    print(report.summary())
"""

from .core import IMAGE_INPUTS, ItemFailure, Pipeline, PipelineError, Problem, RunContext
from .models import ModelCache
from .node import REQUIRED, Node, Param, ParamError


def load_pipeline(path, overrides=(), **kwargs):
    """A Pipeline from a YAML spec file; see `grounded.pipeline.spec.load_pipeline`."""
    from .spec import load_pipeline as load

    return load(path, overrides, **kwargs)


def run(pipeline, inputs, out_dir, **kwargs):
    """Run a pipeline over data into a folder; see `grounded.pipeline.runner.run`."""
    from .runner import run as run_over_data

    return run_over_data(pipeline, inputs, out_dir, **kwargs)


__all__ = ["IMAGE_INPUTS", "ItemFailure", "ModelCache", "Node", "Param", "ParamError", "Pipeline", "PipelineError",
           "Problem", "REQUIRED", "RunContext", "load_pipeline", "run"]
