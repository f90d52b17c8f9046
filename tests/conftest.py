import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def mobile_sam_checkpoint():
    """The official MobileSAM weights from the verified cache (fetched from the registry on first use)."""
    from grounded import weights

    return weights.locate("mobile_sam") or weights.fetch("mobile_sam")
