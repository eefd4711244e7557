"""Images for training and evaluation: offline bundled photographs and the SR benchmarks.

Every loader returns the Y channel (BT.601 luma, see :func:`tutorial_lib.metrics.rgb_to_y`)
as a float64 array of shape (H, W) with values in [0, 1].

Three sources of images:

- **bundled** (the offline default, no network needed): natural photographs that ship inside
  the scikit-image and scikit-learn wheels, with a fixed train/test split
  (:data:`BUNDLED_TRAIN`, :data:`BUNDLED_TEST`, :func:`bundled_images`).
- **benchmarks** T91 (training), Set5, Set14 and B100 (testing), downloaded once from the
  pinned URLs in ``benchmarks.json`` and checked against their sha256
  (:func:`fetch_benchmark`, :func:`find_local_benchmark`).
- **a local folder** of image files (:func:`load_folder`).

:func:`load_images` picks one of the three from a single string, as notebooks and the
command line do (``"bundled"``, ``"Set5"``, ``"path/to/folder"``).

Where downloaded benchmarks are kept (:func:`default_data_dir`): the environment variable
``TUTORIAL_DATA_DIR`` if set, else the ``data/`` folder of a source checkout, else
``~/.cache/tutorial_lib``.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tutorial_lib.config import folder_from_environment, new_file_mode
from tutorial_lib.degradations import modcrop  # noqa: F401  (re-exported; one implementation)
from tutorial_lib.metrics import rgb_to_y

__all__ = [
    "BENCHMARKS",
    "BUNDLED_TEST",
    "BUNDLED_TRAIN",
    "IMAGE_EXTENSIONS",
    "DataError",
    "bundled_images",
    "default_data_dir",
    "fetch_benchmark",
    "find_local_benchmark",
    "load_folder",
    "load_image_y",
    "load_images",
    "modcrop",
    "motion_blurred_clock",
]

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
"""File name endings :func:`load_folder` reads (compared case-insensitively)."""

_OFFLINE_HINT = (
    "Use the offline default: load_images('bundled') / --images bundled, "
    "or pass a local folder of images."
)


class DataError(ValueError):
    """A file, folder, name or argument given to :mod:`tutorial_lib.data` is not usable."""


# --------------------------------------------------------------------------------------------
# Reading one image as Y
# --------------------------------------------------------------------------------------------


def _array_to_y(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 / uint16 / float array, (H, W) or (H, W, 3 or 4) -> float64 Y (H, W) in [0, 1].

    A 2-D array is taken as luma already; a 4th channel (alpha) is dropped; RGB goes through
    :func:`rgb_to_y`. ``what`` names the source in error messages.
    """
    if array.dtype == np.uint8:
        values = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float64) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
            raise DataError(
                f"{what}: float image values must lie in [0, 1], "
                f"got range [{np.nanmin(values):.4g}, {np.nanmax(values):.4g}]"
            )
    else:
        raise DataError(f"{what}: expected uint8, uint16 or float pixels, got {array.dtype}")
    if values.ndim == 2:
        return values
    if values.ndim == 3 and values.shape[-1] in (3, 4):
        return rgb_to_y(values[..., :3])
    raise DataError(
        f"{what}: expected a gray (H, W) or colour (H, W, 3|4) image, got shape {array.shape}"
    )


def _pil_to_array(image: Image.Image, what: str) -> np.ndarray:
    """Pixels of a PIL image as an array :func:`_array_to_y` accepts (see load_image_y)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La"):
        return np.asarray(image.convert("LA"))[..., 0]
    if mode in ("RGBA", "RGBa", "RGBX", "P", "PA"):
        return np.asarray(image.convert("RGBA"))[..., :3]
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{what}: 32-bit integer image with values outside the 16-bit range "
                f"[0, 65535] (got [{values.min()}, {values.max()}]); convert it to 8 or 16 bit"
            )
        return values.astype(np.uint16)
    if mode == "F":
        return np.asarray(image)
    # CMYK, YCbCr, LAB, HSV: let Pillow convert to RGB.
    return np.asarray(image.convert("RGB"))


def load_image_y(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG, BMP, JPEG, TIFF, ...) as its Y channel.

    Returns a float64 array (H, W) in [0, 1]. How each kind of file becomes Y:

    - RGB (8 bit): BT.601 luma via :func:`tutorial_lib.metrics.rgb_to_y`, so values lie in
      [16/255, 235/255].
    - RGBA, LA and palette images: the alpha channel is *dropped* (not composited over a
      background); palette images are expanded to RGB first.
    - 8-bit grayscale (mode ``L``) and 1-bit: the gray value / 255 is taken as the luma
      already, as the MATLAB evaluation code of the SR literature does for gray images (a gray
      image is not remapped to the [16, 235] studio range).
    - 16-bit grayscale (``I;16``, or ``I`` with values in [0, 65535]): value / 65535.
    - 32-bit float (``F``): used as is, and must already lie in [0, 1].
    - CMYK, YCbCr, LAB: converted to RGB by Pillow, then as RGB.

    Multi-frame files give their first frame; EXIF orientation is ignored (pixels as stored);
    16-bit-per-channel colour PNGs are reduced to 8 bit by Pillow; 16-bit gray + alpha PNGs
    are refused (Pillow decodes them as wrong colour values).

    Raises :class:`DataError` naming the path for a missing, unreadable or corrupt file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image file {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"image path {str(path)!r} is not a file")
    what = f"image file {str(path)!r}"
    try:
        with Image.open(path) as image:
            raw_modes = [str(getattr(tile, "args", None) or "") for tile in (image.tile or [])]
            if image.mode == "RGBA" and any(raw.startswith("LA;16") for raw in raw_modes):
                raise DataError(f"{what} is a 16-bit gray + alpha PNG, which Pillow does not decode "
                                "correctly; save it as 16-bit gray without alpha, or as 8-bit")
            image.load()
            array = _pil_to_array(image, what)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(f"could not read {what}: {type(err).__name__}: {err}") from None
    return _array_to_y(array, what)


# --------------------------------------------------------------------------------------------
# Bundled photographs (offline default)
# --------------------------------------------------------------------------------------------


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    left, _right, _disparity = skimage.data.stereo_motorcycle()
    return left


def _sklearn(file_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(file_name)

    return load


# Natural photographs only (no synthetic, binary or microscopy images); all are files inside
# the installed wheels, so no download is needed. Gray ones are taken as luma already.
_BUNDLED_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),  # 512 x 512 colour, portrait
    "coffee": _skimage("coffee"),  # 400 x 600 colour, cup on a table
    "rocket": _skimage("rocket"),  # 427 x 640 colour, launch pad
    "motorcycle": _motorcycle,  # 500 x 741 colour, left view of a stereo pair
    "china": _sklearn("china.jpg"),  # 427 x 640 colour, temple
    "coins": _skimage("coins"),  # 303 x 384 gray, coins
    "brick": _skimage("brick"),  # 512 x 512 gray, brick wall texture
    "grass": _skimage("grass"),  # 512 x 512 gray, grass texture
    "gravel": _skimage("gravel"),  # 512 x 512 gray, gravel texture
    "camera": _skimage("camera"),  # 512 x 512 gray, cameraman
    "chelsea": _skimage("chelsea"),  # 300 x 451 colour, cat (fur)
    "flower": _sklearn("flower.jpg"),  # 427 x 640 colour, flower
}

BUNDLED_TRAIN: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "rocket",
    "motorcycle",
    "china",
    "coins",
    "brick",
    "grass",
    "gravel",
)
"""Bundled photographs for training (fixed; disjoint from :data:`BUNDLED_TEST`)."""

BUNDLED_TEST: tuple[str, ...] = ("camera", "chelsea", "flower")
"""Bundled photographs for testing (fixed): one gray, two colour."""

_SPLITS = {"train": BUNDLED_TRAIN, "test": BUNDLED_TEST, "all": BUNDLED_TRAIN + BUNDLED_TEST}


@functools.cache
def _bundled_y(name: str) -> np.ndarray:
    """Y of one bundled photograph, cached for the process (callers get copies)."""
    return _array_to_y(np.asarray(_BUNDLED_LOADERS[name]()), f"bundled image {name!r}")


def bundled_images(split: str = "test") -> dict[str, np.ndarray]:
    """The bundled photographs of ``split`` ('train', 'test' or 'all'), no network needed.

    Returns ``{name: Y}`` in the fixed order of :data:`BUNDLED_TRAIN` / :data:`BUNDLED_TEST`;
    each Y is a fresh float64 (H, W) array in [0, 1] at the photograph's full size (not
    resized or cropped; from 303 x 384 (coins) and 300 x 451 (chelsea) to 500 x 741).
    """
    if split not in _SPLITS:
        raise DataError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    return {name: _bundled_y(name).copy() for name in _SPLITS[split]}


def motion_blurred_clock() -> np.ndarray:
    """A real motion-blurred photograph: scikit-image's ``clock`` (300 x 400, gray).

    The camera moved roughly horizontally during the exposure, so the blur kernel is real and
    unknown (not one of the Gaussian kernels). Not part of the train/test split. Returns
    float64 (300, 400) in [0, 1], gray taken as luma.
    """
    return _array_to_y(np.asarray(_skimage("clock")()), "bundled image 'clock'")


# --------------------------------------------------------------------------------------------
# Benchmarks: manifest, cache folder, download
# --------------------------------------------------------------------------------------------


def _load_manifest() -> dict:
    text = resources.files("tutorial_lib").joinpath("benchmarks.json").read_text("utf-8")
    return json.loads(text)


# {"source": ..., "datasets": {name: {"files": [{name, url, sha256, bytes}, ...]}}}
_MANIFEST: dict = _load_manifest()

BENCHMARKS: tuple[str, ...] = tuple(_MANIFEST["datasets"])
"""Names of the downloadable benchmarks: ('T91', 'Set5', 'Set14', 'B100')."""


def _benchmark_name(name: str) -> str:
    """Canonical spelling of a benchmark name given in any case, or DataError."""
    by_lower = {known.lower(): known for known in _MANIFEST["datasets"]}
    canonical = by_lower.get(str(name).strip().lower())
    if canonical is None:
        known = tuple(_MANIFEST["datasets"])
        raise DataError(f"unknown benchmark {name!r}; expected one of {known}")
    return canonical


def default_data_dir() -> Path:
    """Folder where downloaded benchmarks are cached, one sub-folder per benchmark.

    The environment variable ``TUTORIAL_DATA_DIR`` if set; else ``<checkout>/data`` when
    running from a source checkout (a ``data/`` folder and a ``pyproject.toml`` next to the
    package); else ``~/.cache/tutorial_lib``.
    """
    from_env = os.environ.get("TUTORIAL_DATA_DIR")
    if from_env:
        return Path(from_env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "data").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.home() / ".cache" / "tutorial_lib"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_complete(folder: Path, name: str) -> bool:
    """Does ``folder`` hold every file of benchmark ``name`` with the right size and sha256?
    (Hashing a whole benchmark takes a fraction of a second; a file changed on disk after its
    download is caught here, not trusted.)"""
    entries = _MANIFEST["datasets"][name]["files"]
    for entry in entries:  # sizes first: a missing or partial file is found without reading
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
    return all(_sha256(folder / entry["name"]) == entry["sha256"] for entry in entries)


def find_local_benchmark(name: str) -> Path | None:
    """A folder holding benchmark ``name`` already, or None: nothing is downloaded.

    Looks at the environment variable ``TUTORIAL_<NAME>_DIR`` (e.g. ``TUTORIAL_SET5_DIR``,
    any folder of images, used as is), then at the cache ``default_data_dir() / name``, which
    counts only when every file of the benchmark is there with its expected size and sha256.
    Notebooks use this to take Set5 when it is available and the bundled images otherwise.
    """
    name = _benchmark_name(name)
    folder = folder_from_environment(f"TUTORIAL_{name.upper()}_DIR", DataError)
    if folder is not None:
        return folder
    folder = default_data_dir() / name
    return folder if folder.is_dir() and _is_complete(folder, name) else None


class _Unreachable(Exception):
    """The server could not be reached or the connection broke (network-level failure)."""


def _download(
    url: str, destination: Path, expected_bytes: int, timeout: float, progress_bar: Any
) -> str | None:
    """Stream ``url`` into ``destination``; None on success, else why the server refused.

    Raises :class:`_Unreachable` for network-level failures. Stops reading as soon as more
    than ``expected_bytes`` arrive (the size check then fails).
    """
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} {err.reason}"
    except urllib.error.URLError as err:
        if isinstance(err.reason, FileNotFoundError):  # a file:// mirror without this file
            return "file not found"
        raise _Unreachable(err.reason) from err
    except (OSError, http.client.HTTPException) as err:  # refused, unreachable, timed out
        raise _Unreachable(err) from err
    received = 0
    with response, open(destination, "wb") as out:
        while received <= expected_bytes:
            try:
                chunk = response.read(1 << 16)
            except (OSError, http.client.HTTPException) as err:
                raise _Unreachable(err) from err
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            progress_bar.update(len(chunk))
    return None


def fetch_benchmark(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """Download benchmark ``name`` (T91, Set5, Set14, B100) into ``root/<name>/``; return it.

    ``root`` defaults to :func:`default_data_dir`. Files already present with the right
    sha256 are kept; the others are downloaded to a temporary file in the same folder and
    moved into place only after their size and sha256 match the manifest, so no half-written
    file is ever left. A file that fails its check is deleted, the remaining files are still
    tried, and one :class:`DataError` lists every failure at the end.

    ``base_url`` replaces the pinned URLs with ``base_url/<name>/<file name>`` (a mirror, a
    local HTTP server, or a ``file://`` folder). A network failure (no route, refused
    connection, timeout after ``timeout`` seconds) stops at once with a DataError that points
    to the offline default. ``progress`` shows a tqdm bar of bytes downloaded.
    """
    from tqdm.auto import tqdm

    name = _benchmark_name(name)
    folder = Path(root).expanduser() if root is not None else default_data_dir()
    folder = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the benchmark folder {str(folder)!r}: {err}") from None

    missing = []
    for entry in _MANIFEST["datasets"][name]["files"]:
        target = folder / entry["name"]
        if target.is_file():
            if target.stat().st_size == entry["bytes"] and _sha256(target) == entry["sha256"]:
                continue
            try:
                target.unlink()  # stale or corrupt copy: fetch it again
            except OSError as err:
                raise DataError(
                    f"cannot replace {str(target)!r}, which no longer matches its sha256: "
                    f"{err.strerror or err}; set TUTORIAL_DATA_DIR to a folder you can write to"
                ) from None
        missing.append(entry)
    if not missing:
        return folder

    failures: list[str] = []
    total = sum(entry["bytes"] for entry in missing)
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
        for entry in missing:
            if base_url is None:
                url = entry["url"]
            else:
                url = f"{base_url.rstrip('/')}/{name}/{entry['name']}"
            if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
                raise DataError(
                    f"bad URL {url!r} for {name}: expected http://, https:// or file://"
                )
            try:
                handle, temp_name = tempfile.mkstemp(
                    prefix=f".{entry['name']}.", suffix=".part", dir=folder
                )
            except OSError as err:  # e.g. a folder this user may read but not write
                raise DataError(
                    f"cannot write into the benchmark folder {str(folder)!r}: {err.strerror or err}; "
                    "set TUTORIAL_DATA_DIR to a folder you can write to"
                ) from None
            os.close(handle)
            temp = Path(temp_name)
            try:
                try:
                    refused = _download(url, temp, entry["bytes"], timeout, bar)
                except _Unreachable as err:
                    raise DataError(
                        f"could not download {name} ({url}: {err}): no network? {_OFFLINE_HINT}"
                    ) from None
                except ValueError as err:  # malformed URL that urllib rejects
                    raise DataError(f"bad URL {url!r} for {name}: {err}") from None
                if refused is not None:
                    failures.append(f"{entry['name']}: {refused} ({url})")
                    continue
                size = temp.stat().st_size
                if size != entry["bytes"]:
                    failures.append(
                        f"{entry['name']}: expected {entry['bytes']} bytes, got "
                        f"{'more' if size > entry['bytes'] else size} ({url}); deleted"
                    )
                    continue
                digest = _sha256(temp)
                if digest != entry["sha256"]:
                    failures.append(
                        f"{entry['name']}: sha256 {digest} does not match "
                        f"{entry['sha256']} ({url}); deleted"
                    )
                    continue
                os.chmod(temp, new_file_mode())  # mkstemp made it 0600: other users may read the data
                os.replace(temp, folder / entry["name"])
            finally:
                temp.unlink(missing_ok=True)
    if failures:
        listing = "\n  ".join(failures)
        raise DataError(
            f"{len(failures)} of {len(missing)} file(s) of {name} failed to download into "
            f"{str(folder)!r}:\n  {listing}"
        )
    return folder


# --------------------------------------------------------------------------------------------
# Folders and the one-string entry point
# --------------------------------------------------------------------------------------------


def load_folder(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every image file directly inside ``path``, as ``{file stem: Y}`` sorted by file name.

    Reads the extensions in :data:`IMAGE_EXTENSIONS` (any case), skips other files, hidden
    files and sub-folders. Each Y is float64 (H, W) in [0, 1] (see :func:`load_image_y`).
    A missing folder, a path that is not a folder, a folder with no image, or two files with
    the same stem (``a.png`` and ``a.jpg``) give a :class:`DataError`.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} is not a folder")
    files = sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"image folder {str(folder)!r} holds no image file (expected one of {IMAGE_EXTENSIONS})"
        )
    images: dict[str, np.ndarray] = {}
    first_file: dict[str, Path] = {}
    for file in files:
        if file.stem in images:
            raise DataError(
                f"image folder {str(folder)!r}: {first_file[file.stem].name!r} and {file.name!r} "
                "share the name stem; rename one"
            )
        first_file[file.stem] = file
        images[file.stem] = load_image_y(file)
    return images


_BUNDLED_SOURCES = {
    "bundled": "test",
    "bundled-test": "test",
    "bundled-train": "train",
    "bundled-all": "all",
}


def load_images(
    source: str | os.PathLike,
    *,
    download: bool = True,
    root: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Images named by one string, as ``{name: Y}`` with Y float64 (H, W) in [0, 1].

    ``source`` is one of

    - ``"bundled"`` (the test split), ``"bundled-train"``, ``"bundled-test"``,
      ``"bundled-all"``: the offline photographs of :func:`bundled_images`;
    - a benchmark name, any case (``"Set5"``, ``"set14"``, ``"T91"``, ``"B100"``): taken from
      ``root/<name>`` if given, else from :func:`find_local_benchmark`; downloaded with
      :func:`fetch_benchmark` when missing and ``download`` is true;
    - a path to a local folder of images (:func:`load_folder`); a folder whose name is also
      one of the names above is reached as ``Path("Set5")`` or ``"./Set5"``.
    """
    if not isinstance(source, os.PathLike):
        key = str(source).strip().lower()
        if key in _BUNDLED_SOURCES:
            return bundled_images(_BUNDLED_SOURCES[key])
        if key in {known.lower() for known in _MANIFEST["datasets"]}:
            name = _benchmark_name(key)
            if root is not None:
                cached = Path(root).expanduser() / name
                local = cached if cached.is_dir() and _is_complete(cached, name) else None
            else:
                local = find_local_benchmark(name)
            if local is None:
                if not download:
                    where = Path(root).expanduser() if root is not None else default_data_dir()
                    raise DataError(
                        f"benchmark {name} is not in {str(where / name)!r} and download=False; "
                        f"get it with fetch_benchmark({name!r}) (or load_images({name!r}, "
                        f"download=True)), set TUTORIAL_{name.upper()}_DIR to a folder holding "
                        f"it, or use the offline default load_images('bundled')"
                    )
                local = fetch_benchmark(name, root)
            return load_folder(local)
    folder = Path(source).expanduser()
    if not folder.exists():
        raise DataError(
            f"source {str(source)!r} is neither 'bundled', 'bundled-train', 'bundled-test', "
            f"'bundled-all', a benchmark name {tuple(_MANIFEST['datasets'])} nor an existing folder"
        )
    return load_folder(folder)
