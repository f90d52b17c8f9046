"""Evaluation: the SAM paper's zero-shot protocols on any data set, side by side with the reference.

    from grounded.eval import Options, Selection, evaluate, load_dataset, load_segmenters
    data = load_dataset(["coco/instances_val.json"], images_dir="coco/val", selection=Selection(limit=50))
    models = load_segmenters(["mobile_sam"], reference=True)
    results = evaluate(["points", "boxes"], data, models, "out/eval", Options(clicks=20))

Tasks (`grounded/eval/tasks/`): `points` (single point: centre and random, top-score and oracle;
interactive up to 20 clicks, NoC@85/90), `boxes` (mIoU by area), `proposals` (mask AR@10/100/1000),
`instances` (mask AP from detector boxes, COCOeval / LVISEval rules), `edges` (BSDS-style ODS, OIS,
AP, R50), `text` (SA-Co cgF1, IL_MCC, pmF1, per-phrase mIoU for every text mode). The metrics live in
`coco_metrics.py`, `boundaries.py`, `cgf1.py`; data sets in `datasets.py`; models in `segmenters.py`;
the resumable loop in `runner.py`; results.json / results.md in `report.py`; PNG plots in `plots.py`.
"""

_EXPORTS = {
    "Dataset": "datasets", "DatasetError": "datasets", "Selection": "datasets", "load_dataset": "datasets",
    "TASKS": "tasks.registry", "evaluate": "runner", "load_segmenters": "segmenters", "Options": "tasks.base",
}
__all__ = ["Dataset", "DatasetError", "Options", "Selection", "TASKS", "evaluate", "load_dataset", "load_segmenters"]


def __getattr__(name):
    # Lazily: `grounded --help` must not import torch through the evaluation code.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
