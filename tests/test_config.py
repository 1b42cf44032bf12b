"""Settings: config.yaml mirrors the embedded defaults; environment overrides; clear errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    load_settings,
    startup_warnings,
)

REPO = Path(__file__).resolve().parent.parent


def _key_tree(data: object) -> object:
    if isinstance(data, dict):
        return {key: _key_tree(value) for key, value in data.items()}
    return None


def test_config_yaml_equals_embedded_defaults() -> None:
    assert load_settings(DEFAULT_CONFIG_PATH, environ={}) == Settings()


def test_config_yaml_lists_every_setting() -> None:
    written = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    assert _key_tree(written) == _key_tree(dataclasses.asdict(Settings()))


def test_legacy_environment_names() -> None:
    settings = load_settings(
        environ={
            "PORT": "6001",
            "RASA_WEBHOOK_URL": "http://rasa.internal:5005/webhooks/rest/webhook",
            "TWILIO_ACCOUNT_SID": "AC0123",
            "TWILIO_AUTH_TOKEN": "secret",
            "FALLBACK_PHONE_NUMBER": "+34911234567",
            "DEBUG": "true",
            "PUBLIC_URL": "https://voice.bank.example",
        }
    )
    assert settings.server.port == 6001
    assert settings.rasa.url == "http://rasa.internal:5005/webhooks/rest/webhook"
    assert settings.twilio.account_sid == "AC0123"
    assert settings.twilio.auth_token == "secret"
    assert settings.twilio.fallback_phone_number == "+34911234567"
    assert settings.server.debug is True
    assert settings.server.public_url == "https://voice.bank.example"


def test_environment_names_follow_the_key_path() -> None:
    settings = load_settings(
        environ={
            "SERVER_MODE": "gather",
            "RASA_TIMEOUT_SECONDS": "2.5",
            "GATHER_NO_INPUT_LIMIT": "3",
            "TWILIO_VALIDATE_SIGNATURES": "off",
            "STT_PHRASE_HINTS": "bloquear tarjeta, ejecutivo ,",
            "LANGUAGE_CODE": "es-MX",
        }
    )
    assert settings.server.mode == "gather"
    assert settings.rasa.timeout_seconds == 2.5
    assert settings.gather.no_input_limit == 3
    assert settings.twilio.validate_signatures is False
    assert settings.stt.phrase_hints == ("bloquear tarjeta", "ejecutivo")
    assert settings.language.code == "es-MX"


def test_path_name_wins_over_legacy_name() -> None:
    assert load_settings(environ={"PORT": "6001", "SERVER_PORT": "6002"}).server.port == 6002


def test_file_from_gateway_config_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("server:\n  port: 7001\nrasa:\n  timeout_seconds: 3\n", encoding="utf-8")
    settings = load_settings(environ={"GATEWAY_CONFIG": str(file), "RASA_TIMEOUT_SECONDS": "4"})
    assert settings.server.port == 7001
    assert settings.rasa.timeout_seconds == 4.0
    assert settings.language == Settings().language


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"SERVER_PORT": "abc"}, "server.port"),
        ({"PORT": "70000"}, "server.port"),
        ({"SERVER_MODE": "websocket"}, "server.mode"),
        ({"RASA_URL": "localhost:5005/webhooks/rest/webhook"}, "rasa.url"),
        ({"PUBLIC_URL": "voice.bank.example"}, "server.public_url"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"RASA_TIMEOUT_SECONDS": "0"}, "rasa.timeout_seconds"),
        ({"SERVER_MAX_ACTIVE_CALLS": "0"}, "server.max_active_calls"),
        ({"RASA_TIMEOUT_SECONDS": "nan"}, "rasa.timeout_seconds"),
        ({"RASA_CONNECT_TIMEOUT_SECONDS": "inf"}, "rasa.connect_timeout_seconds"),
        ({"STT_GOOGLE_TIMEOUT_SECONDS": "0"}, "stt.google.timeout_seconds"),
        ({"TTS_GOOGLE_TIMEOUT_SECONDS": "-1"}, "tts.google.timeout_seconds"),
        ({"GATHER_NO_INPUT_LIMIT": "-1"}, "gather.no_input_limit"),
        ({"GATHER_SPEECH_TIMEOUT": "soon"}, "gather.speech_timeout"),
        ({"GREETING_TIMEZONE": "Mars/Olympus"}, "greeting.timezone"),
        ({"GREETING_TEXT": "Hola"}, "greeting.text"),
        ({"CALL_OUTBOUND_CHUNK_MS": "30"}, "call.outbound_chunk_ms"),
        ({"LOGGING_LEVEL": "verbose"}, "logging.level"),
        ({"FALLBACK_PHONE_NUMBER": "34911234567"}, "twilio.fallback_phone_number"),
        ({"SERVER_SOFTPHONE_ENABLED": "true"}, "server.softphone.token"),
        ({"SERVER_SOFTPHONE_ENABLED": "yes", "SERVER_SOFTPHONE_TOKEN": "short"},
         "server.softphone.token"),
        ({"SERVER_SOFTPHONE_ENABLED": "1", "SERVER_SOFTPHONE_TOKEN": "sixteen chars, no"},
         "server.softphone.token"),
    ],
)
def test_bad_environment_value_names_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(environ=environ)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("rasa:\n  uri: http://x\n", "rasa.uri"),
        ("server: 5\n", "server"),
        ("server:\n  port: .inf\n", "server.port"),
        ("server:\n  workers: 1.5\n", "server.workers"),
        ("twilio:\n  validate_signatures: sometimes\n", "twilio.validate_signatures"),
        ("stt:\n  phrase_hints: {a: 1}\n", "stt.phrase_hints"),
        # Settings that moved say where they went.
        ("stt:\n  google:\n    phrase_hints: [a]\n", "now stt.phrase_hints"),
        ("vad:\n  hangover_ms: 400\n", "now stt.endpoint_silence_ms"),
        ("stt:\n  whisper:\n    device: tpu\n", "stt.whisper.device"),
        ("stt:\n  whisper:\n    max_utterance_seconds: 1\n", "stt.whisper.max_utterance_seconds"),
        # Whisper's encoder hears 30 s: the rest of a longer utterance would be dropped unheard.
        ("stt:\n  whisper:\n    max_utterance_seconds: 31\n",
         "stt.whisper.max_utterance_seconds: must be at most 30"),
        ("stt:\n  whisper:\n    workers: 0\n", "stt.whisper.workers"),
        # Unquoted, YAML reads the number as an integer and the + is lost.
        ("twilio:\n  fallback_phone_number: +34911234567\n", "twilio.fallback_phone_number"),
        ("server: [\n", "not valid YAML"),
        ("- a\n- b\n", "top level"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(file, environ={})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_softphone_is_off_by_default_and_on_with_a_token() -> None:
    assert Settings().server.softphone.enabled is False
    settings = load_settings(environ={"SERVER_SOFTPHONE_ENABLED": "true",
                                      "SERVER_SOFTPHONE_TOKEN": "Xy7-_.~abcdefghij"})
    assert settings.server.softphone.enabled is True
    assert settings.server.softphone.token == "Xy7-_.~abcdefghij"
    # Off, the token is not looked at.
    assert load_settings(environ={"SERVER_SOFTPHONE_TOKEN": "x"}).server.softphone.token == "x"


def test_replace_validates() -> None:
    settings = Settings().replace(rasa={"timeout_seconds": 1}, stt={"engine": "null"})
    assert settings.rasa.timeout_seconds == 1.0 and settings.stt.engine == "null"
    assert settings.rasa.url == Settings().rasa.url
    with pytest.raises(ConfigError, match=r"server\.port"):
        Settings().replace(server={"port": 0})


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"PORT", "GATEWAY_CONFIG"}}
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_a_bad_setting_exits_naming_the_key(tmp_path: Path) -> None:
    result = _serve({"SERVER_PORT": "not-a-port"})
    assert result.returncode != 0
    assert "server.port" in result.stderr

    file = tmp_path / "gateway.yaml"
    file.write_text("rasa:\n  timeout_seconds: -1\n", encoding="utf-8")
    result = _serve({}, "--config", str(file))
    assert result.returncode != 0
    assert "rasa.timeout_seconds" in result.stderr


def test_startup_warnings() -> None:
    safe = Settings().replace(
        twilio={"auth_token": "t", "fallback_phone_number": "+34911234567"},
        server={"public_url": "https://voice.bank.example"},
        stt={"engine": "google"},
    )
    assert startup_warnings(safe) == []
    unsafe = startup_warnings(Settings().replace(twilio={"validate_signatures": False}))
    assert any("SECURITY" in w and "validate_signatures" in w for w in unsafe)
    no_token = startup_warnings(Settings())
    assert any("auth_token" in w and "refused" in w for w in no_token)
    assert any("fallback_phone_number" in w for w in no_token)
    assert any("public_url" in w for w in no_token)
    assert not any("English" in w for w in no_token)  # the default recognizer speaks Spanish
    english_only = startup_warnings(Settings().replace(stt={"engine": "pocketsphinx"}))
    assert any("pocketsphinx" in w and "English only" in w for w in english_only)
    assert not any("English" in w for w in startup_warnings(Settings().replace(
        stt={"engine": "pocketsphinx"}, language={"code": "en-US"})))
    assert not any("softphone" in w for w in no_token)
    softphone = startup_warnings(Settings().replace(
        server={"softphone": {"enabled": True, "token": "Xy7-_.~abcdefghij"}}))
    assert any("softphone" in w and "development only" in w.lower() for w in softphone)
