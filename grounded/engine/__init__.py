"""The data engine (`grounded engine`): label a folder of images in rounds, as the SAM paper's data
engine made SA-1B: assisted-manual (the annotation page with SAM), semi-automatic (the model pre-fills
its confident masks; the person accepts, corrects, deletes and adds), fully automatic (automatic
masks with the paper's settings), with the model fine-tuned between rounds and kept only when it is
better on a held-out split.

    from grounded.engine import Project, init_project, start_round, run_round
    project = init_project("images/", "proj/", coco="existing.json", heldout=["img_07.png"])
    with Project.open("proj/") as project:            # the lock: one round at a time
        entry = start_round(project, "manual", take=10)
        run_round(project, entry, truth="truth.json")  # the simulated annotator; or serve=... for the page

The folder format is in project.py, the stages in stages.py (the semi stage's text-grounded pre-fill
in text_prefill.py), the simulated annotator in
annotator.py, fine-tuning and the acceptance rule in finetune.py, the report in report.py, Label
Studio interchange in labelstudio.py.
"""

_EXPORTS = {
    "Project": "project", "ProjectBusy": "project", "ProjectError": "project", "init_project": "project",
    "start_round": "rounds", "run_round": "rounds", "write_report": "report", "status_text": "report",
}
__all__ = ["Project", "ProjectBusy", "ProjectError", "init_project", "run_round", "start_round", "status_text", "write_report"]


def __getattr__(name):
    # Lazily: `grounded --help` must not import torch through the engine.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
