"""The annotation page's local server (`grounded annotate`).

It serves the built page and onnxruntime-web's files (grounded/annotate/static, built from web/annotate
by `npm ci` + `npm run build`), the page's ONNX graphs (`grounded.export.export_onnx`), the images
(as PNG, at most DISPLAY_SIDE pixels on the long side; prompts stay in the original pixels), their
embeddings (computed here with any SAM grounded loads) and the annotations; it saves every accepted
mask at once (`AnnotationStore`).

/api/embedding/N answers the float32 bytes of what the model's graph takes per image: SAM's image
embedding (1xCxhxw), or for a SAM 2 / 2.1 model (manifest family "sam2") the image embedding, then the
high-res maps at stride 4 and 8, one after another in C order, with the names and shapes of the
manifest's "image_inputs" (the page cuts the blob by them).

Security of a server that writes files:
- it binds 127.0.0.1 unless told otherwise;
- it answers only fixed routes, and static files only from its own folders, after decoding the URL
  (`..`, absolute, backslash, NUL and encoded forms of them are refused);
- the Host header must be a localhost name (or the address it was told to bind): a DNS-rebinding page
  gets 403;
- every write carries the per-session token (header X-Grounded-Token) that only the page's own origin
  can read (/api/session sends no CORS headers), and a custom header makes browsers preflight
  cross-site posts, which this server never allows;
- every answer carries the cross-origin isolation headers onnxruntime-web's threads need.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import numpy as np

from .store import AnnotationStore, ImageRecord, VersionConflict

STATIC_DIR = Path(__file__).parent / "static"
DISPLAY_SIDE = 2048
LOCAL_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def safe_file(root: Path, relative: str) -> Path:
    """root/relative if it is a file inside root; Refused otherwise (the URL part is already decoded)."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative or ":" in relative
            or any(p in ("", ".", "..") for p in parts)):
        raise Refused(404, "no such file")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise Refused(404, "no such file")
    return path


def postprocess_low_res(logits: np.ndarray, image_size: int, original_size: Tuple[int, int],
                        family: str = "sam") -> np.ndarray:
    """Low-res logits (256x256) -> the HxW boolean mask, as `Sam.threshold_masks` makes it (family
    "sam2": as `SAM2ImagePredictor` does, one bilinear resize of the whole square to the image)."""
    import torch
    import torch.nn.functional as F

    from ..sam.utils.transforms import ResizeLongestSide

    masks = torch.tensor(np.asarray(logits, np.float32))[None, None]
    if family == "sam2":
        masks = F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)
        return (masks[0, 0] > 0.0).numpy()
    input_size = ResizeLongestSide.get_preprocess_shape(*original_size, image_size)
    masks = F.interpolate(masks, (image_size, image_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)
    return (masks[0, 0] > 0.0).numpy()


class Session:
    """What one `grounded annotate` run serves: images, the store, graphs and an embedding function."""

    def __init__(self, images: List[ImageRecord], store: AnnotationStore, model_dir: Optional[Path],
                 embed: Optional[Callable[[np.ndarray], np.ndarray]], image_size: int = 1024,
                 labels: Optional[List[str]] = None, embed_in_page: bool = False, stage: Optional[str] = None) -> None:
        self.images, self.store, self.model_dir, self.embed = images, store, model_dir, embed
        self.stage = stage  # the engine's round stage (manual, semi), shown in the page
        self.image_size, self.labels, self.embed_in_page = image_size, labels or ["object"], embed_in_page
        self.token = secrets.token_urlsafe(24)
        self._embeddings: Dict[str, bytes] = {}
        self._lock = threading.Lock()
        if embed_in_page and self.family == "sam2":
            raise ValueError("a SAM 2 model's embeddings come from the server: its graphs have no in-page encoder")

    def record(self, index: str) -> ImageRecord:
        if not index.isdigit() or int(index) >= len(self.images):
            raise Refused(404, f"no image {index}")
        return self.images[int(index)]

    def pixels(self, record: ImageRecord) -> np.ndarray:
        from ..io.image import ImageError, load_image

        try:
            image = load_image(record.path)
        except (ImageError, OSError) as err:
            raise Refused(422, f"cannot read {record.file_name}: {err}") from None
        record.height, record.width = image.shape[:2]
        return image

    def display_png(self, record: ImageRecord) -> bytes:
        from PIL import Image

        image = Image.fromarray(self.pixels(record))
        if max(image.size) > DISPLAY_SIDE:  # huge images: the page shows a smaller copy
            scale = DISPLAY_SIDE / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def embedding(self, record: ImageRecord) -> bytes:
        if self.embed is None:
            raise Refused(404, "this session computes embeddings in the page")
        with self._lock:
            if record.key not in self._embeddings:
                self._embeddings[record.key] = np.ascontiguousarray(self.embed(self.pixels(record)), np.float32).tobytes()
                if len(self._embeddings) > 8:
                    self._embeddings.pop(next(iter(self._embeddings)))
            return self._embeddings[record.key]

    def manifest(self) -> Optional[dict]:
        return json.loads((self.model_dir / "manifest.json").read_text()) if self.model_dir else None

    @property
    def family(self) -> str:
        """The graphs' model family: "sam", or "sam2" for SAM 2 / 2.1 (older manifests are SAM's)."""
        return (self.manifest() or {}).get("family", "sam")

    def info(self) -> dict:
        return {"token": self.token, "labels": self.labels, "manifest": self.manifest(), "embed_in_page": self.embed_in_page,
                "stage": self.stage,
                "images": [{"index": i, "key": r.key, "file_name": r.file_name} for i, r in enumerate(self.images)]}

    def accept(self, record: ImageRecord, body: dict) -> dict:
        logits = np.frombuffer(base64.b64decode(body["low_res_logits"]), np.float32)
        side = int(round(logits.size ** 0.5))
        if side * side != logits.size:
            raise Refused(400, "low_res_logits must be a square float32 array")
        if not record.width:
            self.pixels(record)
        mask = postprocess_low_res(logits.reshape(side, side), self.image_size, (record.height, record.width), self.family)
        log = {k: body.get(k) for k in ("clicks", "box", "seconds", "candidate")}
        log["num_clicks"] = len(body.get("clicks") or []) + (1 if body.get("box") else 0)
        log["score"] = float(body.get("score", 0.0))
        return self.store.add(record.key, body["version"], mask, str(body.get("label") or "object"), log["score"], log,
                              body.get("replaces"))


class Handler(BaseHTTPRequestHandler):
    session: Session
    allowed_hosts: set
    server_version = "grounded-annotate"

    def log_message(self, format, *args):  # quiet: the terminal shows the command's own lines
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value).encode())

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in self.allowed_hosts:
            raise Refused(403, f"Host {host!r} is not this local server")

    def _route(self, method: str) -> None:
        try:
            self._check_host()
            raw = urlsplit(self.path).path
            path = unquote(raw)
            if path != unquote(path):  # double-encoded: never needed by the page
                raise Refused(404, "no such file")
            if method == "POST":
                return self._post(path)
            return self._get(path)
        except Refused as err:
            self._json(err.status, {"error": str(err)})
        except VersionConflict as err:
            self._json(409, {"error": str(err), "version": err.current})
        except (KeyError, ValueError, TypeError) as err:
            self._json(400, {"error": f"bad request: {err}"})

    def do_GET(self):  # noqa: N802 (http.server's name)
        self._route("GET")

    def do_POST(self):  # noqa: N802
        self._route("POST")

    def _get(self, path: str) -> None:
        s = self.session
        if path in ("/", "/index.html"):
            return self._file(safe_file(STATIC_DIR, "index.html"))
        if path.startswith("/static/"):
            return self._file(safe_file(STATIC_DIR, path[len("/static/"):]))
        if path.startswith("/models/"):
            name = path[len("/models/"):]
            if s.model_dir is None or name not in s.info()["manifest"]["files"]:
                raise Refused(404, "no such model file")
            return self._file(safe_file(s.model_dir, name))
        if path == "/api/session":
            return self._json(200, s.info())
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "api":
            record = s.record(parts[3])
            if parts[2] == "image":
                return self._send(200, s.display_png(record), "image/png")
            if parts[2] == "embedding":
                return self._send(200, s.embedding(record), "application/octet-stream")
            if parts[2] == "annotations":
                if not record.width:
                    s.pixels(record)
                return self._json(200, {**s.store.get(record.key), "width": record.width, "height": record.height})
        raise Refused(404, "no such page")

    def _post(self, path: str) -> None:
        s = self.session
        if not secrets.compare_digest(self.headers.get("X-Grounded-Token", ""), s.token):
            raise Refused(403, "write without this session's token")
        length = int(self.headers.get("Content-Length") or 0)
        if length > 64 << 20:
            raise Refused(413, "request too large")
        body = json.loads(self.rfile.read(length) or b"{}")
        parts = path.split("/")
        if len(parts) != 5 or parts[1] != "api" or parts[2] != "annotations":
            raise Refused(404, "no such page")
        record = s.record(parts[3])
        action = parts[4]
        if action == "accept":
            return self._json(200, s.accept(record, body))
        if action == "delete":
            return self._json(200, s.store.delete(record.key, body["version"], int(body["id"])))
        if action == "confirm":
            seconds = body.get("seconds")
            return self._json(200, s.store.confirm(record.key, body["version"], int(body["id"]), body.get("label"),
                                                   None if seconds is None else float(seconds)))
        if action == "relabel":
            return self._json(200, s.store.relabel(record.key, body["version"], int(body["id"]), str(body["label"])))
        raise Refused(404, "no such action")

    def _file(self, path: Path) -> None:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".mjs", ".js"):
            kind = "text/javascript"
        elif path.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, path.read_bytes(), kind)


def make_server(session: Session, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    allowed = set(LOCAL_NAMES) | {host.lower()}
    handler = type("SessionHandler", (Handler,), {"session": session, "allowed_hosts": allowed})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
