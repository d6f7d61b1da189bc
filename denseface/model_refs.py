"""Model references: a local path or a Hugging Face hub id, resolved the same way for every loader.

Why one module: users give ``stabilityai/stable-diffusion-2-1-base`` or ``/models/sd21`` alike,
expect the libraries' own download and cache online, and need a missing model reported as one
line, before any work starts, when they are offline. Nothing here downloads: `Resolved.pretrained_args`
gives the ``from_pretrained`` arguments (the libraries download into the Hugging Face cache on
first use), and the checks look only at the local disk and the cache.

Forms of a reference:

* an existing local path (folder of a ``save_pretrained`` model, or a weights file);
* ``owner/name`` or ``owner/name@revision`` (branch, tag or commit), when no such local path
  exists, as diffusers and transformers decide;
* ``$DENSEFACE_WEIGHTS/...`` in a path: the dense-face weights folder (`weights_dir`), where
  files that are not on the hub (CodeFormer, Hopenet, ArcFace) are looked for by the presets.

Offline means ``HF_HUB_OFFLINE=1`` (read when asked, not only at import). A hub id is then usable
only from the cache; otherwise the error names it and ``hf download ID``. Online, a hub id not yet
cached is "downloads on first use"; `probe_hub` asks the hub (metadata only) whether it is there.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from denseface.errors import ConfigError, MissingFileError
from denseface.paths import cache_dir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHTS_VAR = "DENSEFACE_WEIGHTS"
Status = Literal["found", "missing", "download", "mismatch"]


class MissingModel(MissingFileError):
    """A model the run needs is not available; the message is one line per model."""


class ChecksumMismatch(ConfigError):
    """A weights file differs from the published one."""


def weights_dir() -> Path:
    """``$DENSEFACE_WEIGHTS`` or ``<dense-face cache>/weights``: where off-hub weight files go."""
    return Path(os.environ.get(WEIGHTS_VAR) or cache_dir() / "weights")


def offline() -> bool:
    """The hub's offline switch, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def expand(ref: str | os.PathLike) -> str:
    """``$DENSEFACE_WEIGHTS`` (defaulted), other variables and ``~`` expanded."""
    text = str(ref).replace("${" + WEIGHTS_VAR + "}", str(weights_dir())).replace("$" + WEIGHTS_VAR, str(weights_dir()))
    return os.path.expanduser(os.path.expandvars(text))


def split_hub_ref(ref: str) -> tuple[str, str | None] | None:
    """``owner/name[@revision]`` -> (id, revision); None when ``ref`` is no hub id."""
    repo, _, revision = str(ref).partition("@")
    if not HUB_ID.match(repo):  # also rules out "./x", "~/x", "/x" and deeper paths
        return None
    return repo, revision or None


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links followed, as the cache uses them)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Resolved:
    """Where one model of a run is looked for, and whether it is there."""

    what: str  # "Stable Diffusion", "restore (CodeFormer)", ...
    ref: str  # as the user gave it
    kind: Literal["path", "hub", "file"]
    location: str  # the local path, or the cache folder of a hub id
    status: Status
    revision: str | None = None
    how: str = ""  # how to get it, for the error line
    expected_sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("found", "download")

    @property
    def repo_id(self) -> str:
        return self.ref.partition("@")[0] if self.kind == "hub" else self.ref

    def pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """(name_or_path, kwargs) for ``from_pretrained``: a local folder with ``local_files_only``;
        a hub id with its revision, and ``local_files_only`` only when offline."""
        if self.kind != "hub":
            return self.location, {"local_files_only": True}
        kw: dict[str, Any] = {"cache_dir": str(hub_cache())}  # the libraries read HF_HUB_CACHE only at import
        if self.revision:
            kw["revision"] = self.revision
        if offline():
            kw["local_files_only"] = True
        return self.repo_id, kw

    def size(self) -> int | None:
        p = Path(self.location)
        return disk_size(p) if self.status in ("found", "mismatch") and p.exists() else None

    def sha256(self) -> str | None:
        p = Path(self.location)
        return file_sha256(p) if self.status in ("found", "mismatch") and p.is_file() else None

    def error(self) -> str:
        """The one line that says what is missing, where it was looked for, and how to get it."""
        if self.kind == "hub":
            rev = f" --revision {self.revision}" if self.revision else ""
            why = "; ".join(self.notes) or "the hub is offline (HF_HUB_OFFLINE=1)"
            return (f"{self.what}: hub id {self.ref} is not in the Hugging Face cache ({hub_cache()}) and {why}; "
                    f"get it beforehand with `hf download {self.repo_id}{rev}` on a machine with network "
                    f"(same HF_HOME), or give a local folder")
        if self.status == "mismatch":
            return (f"{self.what}: {self.location} has SHA-256 {self.sha256()}, expected {self.expected_sha256}; "
                    f"it is not the published file. {self.how}")
        return f"{self.what}: {self.location} not found. {self.how}".strip()


def resolve_pretrained(ref: str | os.PathLike, what: str, how: str = "") -> Resolved:
    """A ``save_pretrained`` folder or a hub id (``owner/name[@revision]``); looks, never downloads."""
    text = expand(ref)
    hub = None if Path(text).exists() else split_hub_ref(text)
    if hub is None:
        path = Path(text)
        return Resolved(what, str(ref), "path", str(path), "found" if path.is_dir() else "missing", how=how)
    repo, revision = hub
    cached = cached_snapshot(repo, revision)
    if cached is not None:
        return Resolved(what, text, "hub", str(cached), "found", revision, how)
    status: Status = "missing" if offline() else "download"
    where = str(hub_cache() / ("models--" + repo.replace("/", "--")))
    return Resolved(what, text, "hub", where, status, revision, how)


def cached_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub model, or None (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=hub_cache(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def resolve_file(ref: str | os.PathLike | None, what: str, how: str, setting: str,
                 sha256: str | None = None) -> Resolved:
    """A weights file that is not on the hub: a local path (``setting`` names where it is set)."""
    if not ref:
        return Resolved(what, "", "file", f"({setting} is unset: set it to the weights path)", "missing", how=how)
    path = Path(expand(ref))
    status: Status = "found" if path.is_file() else "missing"
    r = Resolved(what, str(ref), "file", str(path), status, how=how, expected_sha256=sha256)
    if status == "found" and sha256 and file_sha256(path) != sha256.lower():
        r.status = "mismatch"
    return r


def require(needed: list[Resolved]) -> None:
    """Raise `MissingModel` (one line per missing model) or `ChecksumMismatch`; before any work.
    Online, hub ids not yet cached are probed, so no network or a wrong id fails here too."""
    for r in needed:
        probe_hub(r)
    bad = [r for r in needed if r.status == "mismatch"]
    if bad:
        raise ChecksumMismatch("\n".join(r.error() for r in bad))
    missing = [r for r in needed if not r.ok]
    if missing:
        raise MissingModel("\n".join(r.error() for r in missing))


def probe_hub(resolved: Resolved, timeout: float = 10.0) -> Resolved:
    """Online and not cached: ask the hub (metadata only) whether the id exists and is reachable;
    an unreachable hub or an unknown id makes the model missing, with the hub's reason."""
    if resolved.kind != "hub" or resolved.status != "download":
        return resolved
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(resolved.repo_id, revision=resolved.revision, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot be downloaded now
        resolved.status = "missing"
        first = str(exc).splitlines()[0] if str(exc) else ""
        resolved.notes.append(f"the hub cannot give it ({type(exc).__name__}: {first})")
    return resolved
