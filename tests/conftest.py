"""Shared fixtures: the real sample photos (from PyPI packages) and a corpus of bad inputs
generated here, never downloaded."""
from __future__ import annotations

import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denseface.etl.sample_data import ensure_sample, sample_photo


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """Tests use tiny tensors: one thread is as fast, and immune to OpenMP threads spinning
    against each other when the machine's two cores are shared."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sample_casia() -> Path:
    return ensure_sample()


@pytest.fixture(scope="session")
def built_sample(tmp_path_factory, sample_casia) -> Path:
    """The embedded sample, built as the pipeline builds it today; tests only read it."""
    from denseface.config import BuildConfig
    from denseface.etl.build import build_dataset

    out = tmp_path_factory.mktemp("built_sample") / "ds"
    build_dataset(BuildConfig(sources=[f"casia:{sample_casia}"], out=out, runner="local", workers=1), progress=False)
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data: a bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# file name -> (expected status, expected words in the reason)
BAD_EXPECTED = {
    "zero_bytes.jpg": ("rejected", "empty file"),
    "truncated.jpg": ("rejected", "decode error"),
    "text.jpg": ("rejected", "not an image"),
    "one_pixel.png": ("rejected", "too small"),
    "bomb.png": ("rejected", "decompression-bomb"),
    "noise.png": ("rejected", "no face"),
    "two_faces.jpg": ("rejected", "multiple faces"),
    "sixteen_bit.png": ("ok", ""),
    "cmyk.jpg": ("ok", ""),
    "grayscale.jpg": ("ok", ""),
}


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory, sample_casia) -> Path:
    """A CASIA-style tree ``bad/<file>`` holding one of each kind of awkward input."""
    root = tmp_path_factory.mktemp("bad_corpus")
    d = root / "bad"
    d.mkdir()
    obama = sample_photo("obama")
    (d / "zero_bytes.jpg").write_bytes(b"")
    data = obama.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.jpg").write_text("this is not an image\n")
    Image.new("RGB", (1, 1), (128, 128, 128)).save(d / "one_pixel.png")
    (d / "bomb.png").write_bytes(png_header_only(20000, 20000))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(d / "noise.png")
    face = Image.open(obama).convert("RGB")
    gray16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(d / "sixteen_bit.png")
    assert Image.open(d / "sixteen_bit.png").mode.startswith("I")
    face.convert("CMYK").save(d / "cmyk.jpg")
    Image.open(sample_photo("biden")).convert("L").save(d / "grayscale.jpg")
    a = Image.open(sample_photo("obama2")).convert("RGB").resize((313, 600))
    b = Image.open(sample_photo("biden")).convert("RGB").resize((313, 600))
    pair = Image.new("RGB", (626, 600))
    pair.paste(a, (0, 0))
    pair.paste(b, (313, 0))
    pair.save(d / "two_faces.jpg")
    assert sorted(p.name for p in d.iterdir()) == sorted(BAD_EXPECTED)
    return root


def face_mesh(rgb: np.ndarray) -> np.ndarray:
    """(478, 3) landmarks of the one face in an RGB image, by the pipeline's face mesh."""
    from denseface.annotators.landmarks import FaceMesh

    lmk = FaceMesh()(rgb)
    assert lmk is not None, "face mesh found no face"
    return lmk


def photo_face(stem: str) -> tuple[np.ndarray, np.ndarray]:
    """(512 x 512 RGB aligned crop, (478, 3) landmarks) of a sample photo, through the real
    decode, detect+align and landmark stages: the pipeline's own framing."""
    from denseface.annotators.base import Item
    from denseface.annotators.decode import Decode
    from denseface.annotators.detect_align import DetectAlign
    from denseface.annotators.landmarks import Landmarks
    from denseface.config import BuildConfig

    cfg = BuildConfig()
    item = Item(key=stem, identity=stem, source="casia", source_path=str(sample_photo(stem)), unit=0)
    for stage in (Decode(cfg), DetectAlign(cfg), Landmarks(cfg)):
        stage.process([item])
    assert item.ok, item.reason
    return item.image, item.arrays["lmk"]


@pytest.fixture(scope="session")
def aligned_face() -> tuple[np.ndarray, np.ndarray]:
    """The real sample photo "obama", aligned, with its landmarks."""
    return photo_face("obama")


@pytest.fixture()
def sample_copy(tmp_path, sample_casia) -> Path:
    dst = tmp_path / "casia"
    shutil.copytree(sample_casia, dst)
    return dst
