"""Write the golden outputs of the text models (see grounded/testing/goldens.py) into this folder:
one small .npz per model and versions.json (the libraries they were made with).

They were made once under transformers 4.57.6 (tokenizers 0.22.2, huggingface_hub 0.36.2: the pins
before the move to transformers 5), and tests/test_goldens.py checks every later environment against
them. grounded's loaders run under 4.x and 5.x alike (grounded/transformers_compat.py), so to make
them again, put the old pins back for a moment (bin/env builds or reuses the environment of whatever
constraints.txt holds) and run this script from the repository root:

    git show <the commit before "Pins: transformers 5.23.0">:constraints.txt > constraints.txt
    bin/python tests/goldens/make_goldens.py              # every model (or name some: clip blip)
    git checkout constraints.txt

Rewriting them under newer libraries would hide the very changes they exist to catch; versions.json
says what made them, and the test checks it."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from grounded.testing import goldens

HERE = Path(__file__).parent


def main(names) -> None:
    torch.set_num_threads(1)
    for name in names or list(goldens.MODELS):
        with tempfile.TemporaryDirectory() as tmp:
            out = goldens.MODELS[name](Path(tmp))
        np.savez_compressed(HERE / f"{name}.npz", **out)
        print(f"{name}: {', '.join(f'{k} {v.shape}' for k, v in out.items())}")
    goldens.write_versions(HERE / "versions.json")


if __name__ == "__main__":
    main(sys.argv[1:])
