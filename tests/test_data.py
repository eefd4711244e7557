"""Tests of tutorial_lib.data: image reading, bundled images, benchmark downloads (no network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tutorial_lib import data
from tutorial_lib.data import DataError
from tutorial_lib.metrics import rgb_to_y

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def rgb_uint8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    """Keep the user's data-folder environment variables out of the tests, and a proxy (common on
    CI machines) away from the local servers and closed ports the download tests talk to."""
    for variable in ("TUTORIAL_DATA_DIR", "TUTORIAL_SET5_DIR", "TUTORIAL_FAKE_DIR", "http_proxy", "HTTP_PROXY",
                     "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)


# ------------------------------------------------------------------------------------------
# load_image_y
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_rgb_file_equals_rgb_to_y(tmp_path, rgb_uint8, suffix):
    path = tmp_path / f"image{suffix}"
    Image.fromarray(rgb_uint8).save(path)
    y = data.load_image_y(path)
    assert y.dtype == np.float64 and y.shape == rgb_uint8.shape[:2]
    np.testing.assert_allclose(y, rgb_to_y(rgb_uint8 / 255.0), atol=1e-12)
    assert 16 / 255 - 1e-12 <= y.min() and y.max() <= 235 / 255 + 1e-12


def test_jpeg_is_read(tmp_path, rgb_uint8):
    path = tmp_path / "image.JPG"
    Image.fromarray(rgb_uint8).save(path, format="JPEG", quality=95)
    y = data.load_image_y(path)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(y, rgb_to_y(decoded / 255.0), atol=1e-12)


def test_rgba_drops_alpha(tmp_path, rgb_uint8):
    alpha = np.linspace(0, 255, rgb_uint8.shape[0] * rgb_uint8.shape[1]).astype(np.uint8)
    rgba = np.dstack([rgb_uint8, alpha.reshape(rgb_uint8.shape[:2])])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_allclose(data.load_image_y(path), rgb_to_y(rgb_uint8 / 255.0), atol=1e-12)


def test_gray_and_gray_alpha_are_taken_as_luma(tmp_path, rgb_uint8):
    gray = rgb_uint8[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_allclose(data.load_image_y(tmp_path / "gray.png"), gray / 255.0, atol=0)
    gray_alpha = np.dstack([gray, rgb_uint8[..., 1]])
    Image.fromarray(gray_alpha, mode="LA").save(tmp_path / "gray_alpha.png")
    np.testing.assert_allclose(data.load_image_y(tmp_path / "gray_alpha.png"), gray / 255.0, atol=0)


def test_palette_image_is_expanded_to_rgb(tmp_path, rgb_uint8):
    palette_image = Image.fromarray(rgb_uint8).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16
    )
    path = tmp_path / "palette.png"
    palette_image.save(path)
    with Image.open(path) as saved:
        assert saved.mode == "P"
    expected = rgb_to_y(np.asarray(palette_image.convert("RGB")) / 255.0)
    np.testing.assert_allclose(data.load_image_y(path), expected, atol=1e-12)


def test_16_bit_gray_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 1, 256], [32768, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as saved:
        assert saved.mode in ("I;16", "I")
    np.testing.assert_allclose(data.load_image_y(path), values / 65535.0, atol=1e-15)


def test_16_bit_gray_alpha_png_is_refused_not_misread(tmp_path):
    # Pillow opens a 16-bit gray + alpha PNG as 8-bit RGBA with wrong values; such a file is refused
    import struct
    import zlib

    gray = (np.arange(20).reshape(4, 5) * 3000).astype(">u2")
    alpha = np.full((4, 5), 65535, dtype=">u2")
    rows = b"".join(b"\x00" + np.stack([gray[i], alpha[i]], -1).tobytes() for i in range(4))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 5, 4, 16, 4, 0, 0, 0)  # 16 bit, colour type 4: gray + alpha
    path = tmp_path / "gray_alpha16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    with pytest.raises(data.DataError, match="16-bit gray \\+ alpha PNG"):
        data.load_image_y(path)


def test_float_image_must_lie_in_unit_interval(tmp_path):
    inside = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(inside, mode="F").save(tmp_path / "inside.tif")
    np.testing.assert_allclose(data.load_image_y(tmp_path / "inside.tif"), inside, atol=0)
    Image.fromarray(inside * 255, mode="F").save(tmp_path / "outside.tif")
    with pytest.raises(DataError, match=r"outside\.tif.*\[0, 1\]"):
        data.load_image_y(tmp_path / "outside.tif")


def test_missing_corrupt_and_truncated_files_raise_data_error(tmp_path, rgb_uint8):
    with pytest.raises(DataError, match="nope.png.*does not exist"):
        data.load_image_y(tmp_path / "nope.png")
    with pytest.raises(DataError, match="not a file"):
        data.load_image_y(tmp_path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match="corrupt.png"):
        data.load_image_y(corrupt)
    Image.fromarray(rgb_uint8).save(tmp_path / "whole.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.png"):
        data.load_image_y(truncated)


def test_agrees_with_skimage_rgb2ycbcr_on_a_real_photograph(tmp_path):
    from skimage.color import rgb2ycbcr
    from skimage.data import astronaut

    rgb = astronaut()
    Image.fromarray(rgb).save(tmp_path / "astronaut.png")
    expected = rgb2ycbcr(rgb)[..., 0] / 255.0
    np.testing.assert_allclose(data.load_image_y(tmp_path / "astronaut.png"), expected, atol=1e-12)


# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------
# Bundled images
# ------------------------------------------------------------------------------------------


def test_bundled_split_is_fixed_and_disjoint():
    assert data.BUNDLED_TEST == ("camera", "chelsea", "flower")
    assert set(data.BUNDLED_TRAIN).isdisjoint(data.BUNDLED_TEST)
    assert len(data.BUNDLED_TRAIN) + len(data.BUNDLED_TEST) >= 8
    assert "clock" not in data.BUNDLED_TRAIN + data.BUNDLED_TEST


def test_bundled_images_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    data._bundled_y.cache_clear()
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    images = data.bundled_images("all")
    assert tuple(images) == data.BUNDLED_TRAIN + data.BUNDLED_TEST
    for name, y in images.items():
        assert y.dtype == np.float64 and y.ndim == 2, name
        assert min(y.shape) >= 300, name
        assert 0.0 <= y.min() and y.max() <= 1.0, name
        assert y.std() > 0.05, f"{name} looks flat, not a natural photograph"
    clock = data.motion_blurred_clock()
    assert clock.shape == (300, 400) and 0.0 <= clock.min() and clock.max() <= 1.0


def test_bundled_images_returns_copies_and_splits():
    first = data.bundled_images("test")
    assert tuple(first) == data.BUNDLED_TEST
    first["camera"][:] = -1.0
    assert data.bundled_images()["camera"].min() >= 0.0
    assert tuple(data.bundled_images("train")) == data.BUNDLED_TRAIN
    assert tuple(data.load_images("bundled")) == data.BUNDLED_TEST
    assert tuple(data.load_images("Bundled-Train")) == data.BUNDLED_TRAIN
    assert len(data.load_images("bundled-all")) == len(data.BUNDLED_TRAIN + data.BUNDLED_TEST)
    with pytest.raises(DataError, match="split"):
        data.bundled_images("validation")


# ------------------------------------------------------------------------------------------
# Folders, data directory, source strings
# ------------------------------------------------------------------------------------------


def test_load_folder_reads_images_sorted_and_skips_other_files(tmp_path, rgb_uint8):
    Image.fromarray(rgb_uint8).save(tmp_path / "b.PNG")
    Image.fromarray(rgb_uint8[..., 0]).save(tmp_path / "a.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    images = data.load_folder(tmp_path)
    assert list(images) == ["a", "b"]
    np.testing.assert_allclose(images["b"], rgb_to_y(rgb_uint8 / 255.0), atol=1e-12)
    assert data.load_images(str(tmp_path)).keys() == images.keys()
    assert data.load_images(tmp_path).keys() == images.keys()


def test_load_folder_errors(tmp_path, rgb_uint8):
    with pytest.raises(DataError, match="does not exist"):
        data.load_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        data.load_folder(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image file"):
        data.load_folder(empty)
    clash = tmp_path / "clash"
    clash.mkdir()
    Image.fromarray(rgb_uint8).save(clash / "a.png")
    Image.fromarray(rgb_uint8).save(clash / "a.bmp")
    with pytest.raises(DataError, match="stem"):
        data.load_folder(clash)
    with pytest.raises(DataError, match="neither 'bundled'"):
        data.load_images("Set6")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TUTORIAL_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("TUTORIAL_DATA_DIR")
    checkout = Path(data.__file__).resolve().parents[1]
    if (checkout / "data").is_dir() and (checkout / "pyproject.toml").is_file():
        assert data.default_data_dir() == checkout / "data"
    else:
        assert data.default_data_dir() == Path.home() / ".cache" / "tutorial_lib"


def test_benchmark_names():
    assert data.BENCHMARKS == ("T91", "Set5", "Set14", "B100")
    with pytest.raises(DataError, match="unknown benchmark"):
        data.fetch_benchmark("Set6")


# ------------------------------------------------------------------------------------------
# Downloads from a local HTTP server
# ------------------------------------------------------------------------------------------


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve():
    """serve(folder) -> (base_url, list of requested paths); servers stop after the test."""
    servers = []

    def start(folder: Path):
        requests: list[str] = []
        handler = type("Handler", (_CountingHandler,), {"requests": requests})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _fake_dataset(tmp_path: Path, rng_seed: int = 1) -> tuple[Path, dict[str, bytes]]:
    """A served folder tmp_path/served/Fake/ with three small PNGs; returns (served, contents)."""
    folder = tmp_path / "served" / "Fake"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(rng_seed)
    contents = {}
    for index in range(3):
        path = folder / f"img_{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(path)
        contents[path.name] = path.read_bytes()
    return folder.parent, contents


def _use_manifest(monkeypatch, base_url: str, contents: dict[str, bytes]) -> None:
    files = [
        {
            "name": name,
            "url": f"{base_url}/Fake/{name}",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
        }
        for name, blob in contents.items()
    ]
    manifest = {"source": "test", "datasets": {"Fake": {"files": files}}}
    monkeypatch.setattr(data, "_MANIFEST", manifest)


def test_fetch_downloads_verifies_and_skips_present_files(tmp_path, serve, monkeypatch):
    served, contents = _fake_dataset(tmp_path)
    base_url, requests = serve(served)
    _use_manifest(monkeypatch, base_url, contents)
    root = tmp_path / "cache"

    folder = data.fetch_benchmark("fake", root, progress=False)
    assert folder == root / "Fake"
    assert sorted(p.name for p in folder.iterdir()) == sorted(contents)
    for name, blob in contents.items():
        assert (folder / name).read_bytes() == blob
    assert len(requests) == 3

    data.fetch_benchmark("Fake", root, progress=False)
    assert len(requests) == 3, "files already present must not be downloaded again"

    (folder / "img_001.png").write_bytes(b"stale")
    data.fetch_benchmark("Fake", root, progress=False)
    assert len(requests) == 4 and (folder / "img_001.png").read_bytes() == contents["img_001.png"]

    monkeypatch.setenv("TUTORIAL_DATA_DIR", str(root))
    assert data.find_local_benchmark("FAKE") == folder
    images = data.load_images("fake", download=False)
    assert list(images) == ["img_000", "img_001", "img_002"]
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {0o666 & ~umask}  # readable by others

    # a cached file changed on disk (same size) is not trusted: the next fetch replaces it
    blob = contents["img_002.png"]
    (folder / "img_002.png").write_bytes(bytes(len(blob)))
    assert data.find_local_benchmark("fake") is None
    data.fetch_benchmark("Fake", root, progress=False)
    assert len(requests) == 5 and (folder / "img_002.png").read_bytes() == blob
    assert data.find_local_benchmark("fake") == folder


def test_fetch_deletes_and_reports_a_file_with_wrong_content(tmp_path, serve, monkeypatch):
    served, contents = _fake_dataset(tmp_path)
    base_url, _ = serve(served)
    _use_manifest(monkeypatch, "http://unused.invalid", contents)
    bad = served / "Fake" / "img_001.png"
    bad.write_bytes(bytes(reversed(bad.read_bytes())))  # same size, wrong content
    (served / "Fake" / "img_002.png").write_bytes(contents["img_002.png"] + b"extra")
    root = tmp_path / "cache"

    with pytest.raises(DataError) as caught:
        data.fetch_benchmark("Fake", root, base_url=base_url + "/", progress=False)
    message = str(caught.value)
    assert "2 of 3" in message
    assert "img_001.png: sha256" in message and "img_002.png: expected" in message
    left = sorted(p.name for p in (root / "Fake").iterdir())
    assert left == ["img_000.png"], "no bad or temporary file may be left behind"


def test_fetch_into_a_folder_it_cannot_write_is_a_data_error(tmp_path, serve, monkeypatch):
    served, contents = _fake_dataset(tmp_path)
    base_url, requests = serve(served)
    _use_manifest(monkeypatch, base_url, contents)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data.tempfile, "mkstemp", refused)
    with pytest.raises(DataError, match="cannot write into the benchmark folder .*Permission denied.*TUTORIAL_DATA_DIR"):
        data.fetch_benchmark("fake", tmp_path / "cache", progress=False)
    assert requests == []


def test_a_changed_file_that_cannot_be_replaced_is_a_data_error(tmp_path, serve, monkeypatch):
    served, contents = _fake_dataset(tmp_path)
    base_url, _ = serve(served)
    _use_manifest(monkeypatch, base_url, contents)
    folder = data.fetch_benchmark("fake", tmp_path / "cache", progress=False)
    (folder / "img_001.png").write_bytes(bytes(len(contents["img_001.png"])))  # changed on disk, same size
    real_unlink = Path.unlink

    def refused(path, *args, **kwargs):
        if path.parent == folder and not path.name.startswith("."):
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refused)
    with pytest.raises(DataError, match="cannot replace .*img_001.png.*no longer matches its sha256.*Permission"):
        data.fetch_benchmark("fake", tmp_path / "cache", progress=False)


def test_fetch_reports_missing_file_on_server(tmp_path, serve, monkeypatch):
    served, contents = _fake_dataset(tmp_path)
    base_url, _ = serve(served)
    _use_manifest(monkeypatch, base_url, contents)
    (served / "Fake" / "img_000.png").unlink()
    with pytest.raises(DataError, match="img_000.png: HTTP 404"):
        data.fetch_benchmark("Fake", tmp_path / "cache", progress=False)
    left = sorted(p.name for p in (tmp_path / "cache" / "Fake").iterdir())
    assert left == ["img_001.png", "img_002.png"]


def test_unreachable_server_gives_one_clear_error(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _use_manifest(monkeypatch, f"http://127.0.0.1:{port}", {"a.png": b"x", "b.png": b"y"})
    root = tmp_path / "cache"
    expected = r"could not download Fake .*no network\?.*load_images\('bundled'\)"
    with pytest.raises(DataError, match=expected):
        data.fetch_benchmark("Fake", root, timeout=5, progress=False)
    assert list((root / "Fake").iterdir()) == []
    with pytest.raises(DataError, match="bad URL"):
        data.fetch_benchmark("Fake", root, base_url=f"127.0.0.1:{port}", progress=False)
    with pytest.raises(DataError, match="offline default"):
        data.load_images("fake", root=root)


def test_load_images_without_download_explains_how_to_get_it(tmp_path, monkeypatch):
    _use_manifest(monkeypatch, "http://unused.invalid", {"a.png": b"x"})
    monkeypatch.setenv("TUTORIAL_DATA_DIR", str(tmp_path))
    assert data.find_local_benchmark("Fake") is None
    with pytest.raises(DataError, match=r"download=False.*fetch_benchmark\('Fake'\)"):
        data.load_images("Fake", download=False)


def test_find_local_benchmark_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_DATA_DIR", str(tmp_path / "empty-cache"))
    assert data.find_local_benchmark("set5") is None
    monkeypatch.setenv("TUTORIAL_SET5_DIR", str(tmp_path))
    assert data.find_local_benchmark("Set5") == tmp_path
    monkeypatch.setenv("TUTORIAL_SET5_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="TUTORIAL_SET5_DIR"):
        data.find_local_benchmark("Set5")


# ------------------------------------------------------------------------------------------
# The real benchmark manifest and the shared copies (skipped when absent)
# ------------------------------------------------------------------------------------------


def test_packaged_manifest_matches_shared_manifest():
    shared_manifest = SHARED_DATASETS / "MANIFEST.json"
    if not shared_manifest.is_file():
        pytest.skip(f"{shared_manifest} is not available")
    shared = json.loads(shared_manifest.read_text())
    packaged = json.loads((Path(data.__file__).parent / "benchmarks.json").read_text())
    assert packaged["datasets"].keys() == shared["datasets"].keys()
    for name, dataset in shared["datasets"].items():
        expected = [
            {key: entry[key] for key in ("name", "url", "sha256", "bytes")}
            for entry in dataset["files"]
        ]
        assert packaged["datasets"][name]["files"] == expected, name
    counts = [len(packaged["datasets"][name]["files"]) for name in data.BENCHMARKS]
    assert counts == [91, 5, 14, 100]


def test_shared_set5_folder_loads_five_images():
    folder = SHARED_DATASETS / "Set5"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available")
    images = data.load_folder(folder)
    assert len(images) == 5
    for y in images.values():
        assert y.ndim == 2 and 0.0 <= y.min() and y.max() <= 1.0


def test_fetch_set5_from_local_server_checks_the_real_hashes(tmp_path, serve):
    if not (SHARED_DATASETS / "Set5").is_dir():
        pytest.skip(f"{SHARED_DATASETS / 'Set5'} is not available")
    base_url, requests = serve(SHARED_DATASETS)
    folder = data.fetch_benchmark("Set5", tmp_path, base_url=base_url, progress=False)
    assert len(requests) == 5
    assert sorted(p.name for p in folder.iterdir()) == [f"img_00{i}.png" for i in range(1, 6)]
    images = data.load_images("set5", root=tmp_path, download=False)
    assert images.keys() == data.load_folder(folder).keys()


def test_load_folder_skips_hidden_files(tmp_path):
    """Hidden files are skipped: macOS leaves ``._name.png``
    AppleDouble files (not images) beside every image it copies to a non-Apple disk."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble header, not a PNG
    Image.fromarray(rng.integers(0, 256, (12, 9), dtype=np.uint8)).save(tmp_path / ".hidden.png")
    assert list(data.load_folder(tmp_path)) == ["a"]
