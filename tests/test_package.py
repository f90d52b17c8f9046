"""Packaging promises: a light import, the command line, the environment's pins."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["transformers", "cv2", "torchvision", "scipy", "pycocotools", "gradio", "ray", "diffusers", "open_clip",
         "whisper", "faster_whisper", "groundingdino", "tifffile", "huggingface_hub", "safetensors", "timm"]


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_grounded_loads_only_torch_numpy_pillow():
    out = _python(
        "import sys, grounded, grounded.sam, grounded.io, grounded.weights\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    assert out.strip() == "[]"


def test_cli_help_lists_every_command_with_a_line_each():
    out = _python("from grounded.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    for command in ("segment", "weights", "run", "nodes", "label", "demo"):
        assert command in out


def test_constraints_pin_every_package_exactly():
    lines = [l.strip() for l in (REPO / "constraints.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines and all("==" in l for l in lines)
    names = {l.split("==")[0].lower() for l in lines}
    assert "opencv-python-headless" not in names
    assert {"torch", "torchvision", "transformers", "segment-anything", "mobilesam-mirror"} <= names
