"""The embedded sample: real face photographs taken from packages on PyPI.

No image is committed to this repository and none is fetched from the open internet:
`pip download` takes three published distributions from the package registry, and the
photos they ship (as test data or example data) are extracted into a CASIA-WebFace-style
tree, one folder per identity. Every file is checked against the SHA-256 recorded here,
so the sample is the same on every machine.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from denseface.paths import cache_dir


@dataclass(frozen=True)
class SamplePhoto:
    identity: str
    name: str  # file name in the identity folder
    package: str  # pip requirement that ships the photo
    member: str  # path inside the downloaded archive
    sha256: str
    note: str


_FR = "face_recognition==1.3.0"  # sdist: tests/test_images (photos of public figures)
_SK = "scikit-image==0.26.0"  # wheel: skimage/data (public-domain NASA / classic test photos)
_IF = "insightface==2.1"  # wheel: insightface/data/images (demo photos)

PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("obama", "obama.jpg", _FR, "face_recognition-1.3.0/tests/test_images/obama.jpg",
                "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6", "official portrait"),
    SamplePhoto("obama", "obama2.jpg", _FR, "face_recognition-1.3.0/tests/test_images/obama2.jpg",
                "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6", "speech, frontal"),
    SamplePhoto("obama", "obama3.jpg", _FR, "face_recognition-1.3.0/tests/test_images/obama3.jpg",
                "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3", "large photo, small face"),
    SamplePhoto("obama", "obama_rgba.png", _FR, "face_recognition-1.3.0/tests/test_images/32bit.png",
                "44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627", "RGBA PNG"),
    SamplePhoto("obama", "obama_partial_face.jpg", _FR,
                "face_recognition-1.3.0/tests/test_images/obama_partial_face.jpg",
                "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117", "face cut by the border"),
    SamplePhoto("obama", "obama_partial_face2.jpg", _FR,
                "face_recognition-1.3.0/tests/test_images/obama_partial_face2.jpg",
                "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028", "face cut by the border"),
    SamplePhoto("biden", "biden.jpg", _FR, "face_recognition-1.3.0/tests/test_images/biden.jpg",
                "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c", "official portrait"),
    SamplePhoto("eileen_collins", "astronaut.png", _SK, "skimage/data/astronaut.png",
                "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "NASA portrait, public domain"),
    SamplePhoto("cameraman", "camera.png", _SK, "skimage/data/camera.png",
                "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", "grayscale, small profile face"),
    SamplePhoto("tom_hanks", "tom_hanks.png", _IF, "insightface/data/images/Tom_Hanks_54745.png",
                "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083", "112x112 aligned crop"),
    SamplePhoto("group_photo", "t1.jpg", _IF, "insightface/data/images/t1.jpg",
                "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
                "six people: kept on purpose, rejected as multiple faces"),
)

_COMPLETE = ".complete.json"


def default_sample_root() -> Path:
    return cache_dir() / "sample"


def sample_casia_dir(root: Path | None = None) -> Path:
    return (root or default_sample_root()) / "casia"


def _download(requirement: str, dest: Path) -> Path:
    """One distribution, no dependencies, straight from the package index."""
    sdist = requirement.startswith("face_recognition")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    subprocess.run(cmd, check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if not found:
        raise RuntimeError(f"pip download {requirement} produced no archive in {dest}")
    return found[0]


def _read_member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        fh = tf.extractfile(member)
        if fh is None:
            raise KeyError(member)
        return fh.read()


def fetch_sample(root: Path | None = None) -> Path:
    """Download the distributions, extract and verify the photos; returns the CASIA tree."""
    root = root or default_sample_root()
    casia = sample_casia_dir(root)
    with tempfile.TemporaryDirectory(prefix="denseface-sample-") as tmp:
        archives: dict[str, Path] = {}
        for photo in PHOTOS:
            if photo.package not in archives:
                archives[photo.package] = _download(photo.package, Path(tmp))
            data = _read_member(archives[photo.package], photo.member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != photo.sha256:
                raise RuntimeError(f"{photo.package}:{photo.member} has sha256 {digest}, expected {photo.sha256}")
            out = casia / photo.identity / photo.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
    (root / _COMPLETE).write_text(json.dumps([asdict(p) for p in PHOTOS], indent=1))
    return casia


def ensure_sample(root: Path | None = None) -> Path:
    """The CASIA tree of the sample, fetched once and reused."""
    root = root or default_sample_root()
    marker = root / _COMPLETE
    if marker.exists() and json.loads(marker.read_text()) == [asdict(p) for p in PHOTOS]:
        return sample_casia_dir(root)
    return fetch_sample(root)


def sample_photo(stem: str, root: Path | None = None) -> Path:
    """Path of one sample photo by file stem, e.g. ``sample_photo("obama2")``."""
    casia = ensure_sample(root)
    for photo in PHOTOS:
        if Path(photo.name).stem == stem:
            return casia / photo.identity / photo.name
    raise KeyError(f"no sample photo named {stem!r}; have {[Path(p.name).stem for p in PHOTOS]}")
