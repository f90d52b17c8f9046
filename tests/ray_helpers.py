"""A node for the Ray tests, importable by Ray's worker processes (tests/ is put on their PYTHONPATH)."""

import time

from grounded.pipeline import Node, Param


class Pause(Node):
    """Waits a moment per item, so a test can interrupt a run half-way."""

    name = "pause"
    reads = {}
    writes = {}
    params = {"seconds": Param(0.3, float, "how long")}

    def process(self, sample):
        time.sleep(self.seconds)
