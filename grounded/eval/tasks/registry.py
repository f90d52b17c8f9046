"""Every task class by its name (the runner builds them; the report reads their headline metrics)."""

from .boxes import BoxesTask
from .edges import EdgesTask
from .instances import InstancesTask
from .points import PointsTask
from .proposals import ProposalsTask
from .text import TextTask

TASKS = {t.name: t for t in (PointsTask, BoxesTask, ProposalsTask, InstancesTask, EdgesTask, TextTask)}
