"""Running a pipeline over a dataset on Ray (`grounded run ... --executor ray`); the local loop in
`grounded.pipeline.runner` stays the default.

    from grounded.pipeline import load_pipeline
    from grounded.scale import run_on_ray

    report = run_on_ray(load_pipeline("auto_masks"), ["photos/"], "out/photos", address="auto", resume=True)

Ray is imported only when a run starts; see `grounded.scale.ray_runner`.
"""


def run_on_ray(pipeline, inputs, out_dir, **kwargs):
    """Run `pipeline` over `inputs` into `out_dir` on Ray; see `grounded.scale.ray_runner.run_on_ray`."""
    from .ray_runner import run_on_ray as run

    return run(pipeline, inputs, out_dir, **kwargs)


__all__ = ["run_on_ray"]
