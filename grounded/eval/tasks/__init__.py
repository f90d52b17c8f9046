"""The evaluation tasks of `grounded eval`, one module each (see grounded.eval)."""

TASK_NAMES = ("points", "boxes", "proposals", "instances", "edges", "text")
