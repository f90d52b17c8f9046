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


class Steps(Node):
    """Works through each item in `steps` pauses, reporting its progress after each."""

    name = "steps"
    reads = {}
    writes = {}
    params = {"steps": Param(4, int, "pauses per item"), "seconds": Param(0.3, float, "each pause")}

    def process_batch(self, samples):
        for i in range(len(samples)):
            for k in range(self.steps):
                time.sleep(self.seconds)
                self.report_progress(i + (k + 1) / self.steps, len(samples))
        return samples
