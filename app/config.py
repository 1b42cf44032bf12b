"""Settings: embedded defaults, then `config.yaml`, then environment variables.

The dataclass defaults below are the embedded defaults, so the gateway starts with no file at all;
`config.yaml` at the repository root repeats them with comments (a test keeps the two equal).
Any key can be overridden by an environment variable named after its path: `rasa.url` ->
`RASA_URL`. The old server's variable names are kept as aliases.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

# The softphone's token travels in a URL and a Sec-WebSocket-Protocol header: URL-safe token chars.
SOFTPHONE_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,}")
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.yaml"

LEGACY_ENV = {
    "PORT": "server.port",
    "PUBLIC_URL": "server.public_url",
    "DEBUG": "server.debug",
    "RASA_WEBHOOK_URL": "rasa.url",
    "FALLBACK_PHONE_NUMBER": "twilio.fallback_phone_number",
}


# Settings that moved: a file still using the old name is told the new one.
MOVED = {
    "vad.hangover_ms": "stt.endpoint_silence_ms",
    "stt.google.phrase_hints": "stt.phrase_hints",
}


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range; the message names the key."""


@dataclass(frozen=True, slots=True)
class SoftphoneSettings:
    enabled: bool = False
    token: str = ""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 5001
    public_url: str = ""
    workers: int = 1
    mode: Literal["stream", "gather"] = "stream"
    drain_timeout_seconds: float = 300
    max_active_calls: int = 100
    debug: bool = False
    softphone: SoftphoneSettings = field(default_factory=SoftphoneSettings)


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    account_sid: str = ""
    auth_token: str = ""
    validate_signatures: bool = True
    api_base_url: str = "https://api.twilio.com"
    api_timeout_seconds: float = 10.0
    fallback_phone_number: str = ""
    dial_timeout_seconds: int = 30


@dataclass(frozen=True, slots=True)
class RasaSettings:
    url: str = "http://localhost:5005/webhooks/rest/webhook"
    connect_timeout_seconds: float = 2.0
    timeout_seconds: float = 8.0
    max_connections: int = 100
    health_cache_seconds: float = 10


@dataclass(frozen=True, slots=True)
class LanguageSettings:
    code: str = "es-ES"
    say_voice: str = "Polly.Lucia"


@dataclass(frozen=True, slots=True)
class GreetingSettings:
    timezone: str = "Europe/Madrid"
    morning: str = "Buenos días"
    afternoon: str = "Buenas tardes"
    night: str = "Buenas noches"
    text: str = (
        "{salutation}, le atiende el asistente virtual de bloqueo de tarjetas. "
        "¿En qué puedo ayudarle?"
    )


@dataclass(frozen=True, slots=True)
class PromptSettings:
    reprompt: str = "¿Sigue ahí? Dígame en qué puedo ayudarle."
    apology: str = "Lo siento, estamos teniendo problemas técnicos."
    transfer: str = "Le paso con un ejecutivo. Un momento, por favor."
    no_answer: str = (
        "En este momento no hay ejecutivos disponibles. Por favor, llame más tarde. Adiós."
    )
    goodbye: str = "Gracias por llamar. Adiós."
    resume: str = "Disculpe la interrupción. ¿En qué puedo ayudarle?"


@dataclass(frozen=True, slots=True)
class GatherSettings:
    no_input_limit: int = 2
    speech_timeout: str = "auto"
    speech_model: str = "phone_call"
    enhanced: bool = True
    timeout_seconds: int = 6


@dataclass(frozen=True, slots=True)
class CallSettings:
    no_input_seconds: float = 8.0
    max_reprompts: int = 2
    barge_in_min_speech_ms: int = 240
    dtmf_timeout_seconds: float = 3.0
    dtmf_finish_key: str = "#"
    outbound_chunk_ms: int = 40


@dataclass(frozen=True, slots=True)
class VadSettings:
    energy_threshold: int = 500


@dataclass(frozen=True, slots=True)
class PocketsphinxSettings:
    phrases: tuple[str, ...] = ()
    language: str = "en-US"
    workers: int = 2


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    model_dir: str = ""
    cache_dir: str = ""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    beam_size: int = 5
    cpu_threads: int = 2
    workers: int = 1
    max_utterance_seconds: float = 15.0
    max_queue_seconds: float = 3.0


@dataclass(frozen=True, slots=True)
class GoogleSttSettings:
    model: str = "phone_call"
    use_enhanced: bool = True
    interim_results: bool = True
    restart_seconds: float = 240
    endpoint: str = ""
    insecure: bool = False
    timeout_seconds: float = 10


@dataclass(frozen=True, slots=True)
class SttSettings:
    engine: Literal["whisper", "pocketsphinx", "google", "null"] = "whisper"
    # Words callers say: Google's speech contexts, Whisper's decoder prompt.
    phrase_hints: tuple[str, ...] = (
        "sí",
        "no",
        "por favor",
        "gracias",
        "bloquear tarjeta",
        "tarjeta de crédito",
        "tarjeta de débito",
        "ejecutivo",
    )
    # Silence that ends an utterance: the session's VAD and the Whisper utterance cut.
    endpoint_silence_ms: int = 400
    whisper: WhisperSettings = field(default_factory=WhisperSettings)
    pocketsphinx: PocketsphinxSettings = field(default_factory=PocketsphinxSettings)
    google: GoogleSttSettings = field(default_factory=GoogleSttSettings)


@dataclass(frozen=True, slots=True)
class EspeakSettings:
    voice: str = ""
    words_per_minute: int = 160
    pitch: int = 50


@dataclass(frozen=True, slots=True)
class GoogleTtsSettings:
    voice_name: str = "es-ES-Standard-A"
    ssml_gender: Literal["FEMALE", "MALE", "NEUTRAL", "SSML_VOICE_GENDER_UNSPECIFIED"] = "FEMALE"
    speaking_rate: float = 1.0
    pitch: float = 0.0
    volume_gain_db: float = 0.0
    endpoint: str = ""
    insecure: bool = False
    timeout_seconds: float = 10


@dataclass(frozen=True, slots=True)
class TtsSettings:
    engine: Literal["espeak", "google", "null"] = "espeak"
    cache_size: int = 256
    espeak: EspeakSettings = field(default_factory=EspeakSettings)
    google: GoogleTtsSettings = field(default_factory=GoogleTtsSettings)


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    rasa: RasaSettings = field(default_factory=RasaSettings)
    language: LanguageSettings = field(default_factory=LanguageSettings)
    greeting: GreetingSettings = field(default_factory=GreetingSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    gather: GatherSettings = field(default_factory=GatherSettings)
    call: CallSettings = field(default_factory=CallSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    stt: SttSettings = field(default_factory=SttSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def replace(self, **changes: Mapping[str, Any]) -> Settings:
        """A copy with some keys of some sections changed: `s.replace(rasa={"url": u})`."""
        merged = _to_plain(self)
        for section, values in changes.items():
            _deep_merge(merged, {section: dict(values)}, "")
        settings = _build(Settings, merged, "")
        _check(settings)
        return settings


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings; raises ConfigError naming the offending key."""
    environ = os.environ if environ is None else environ
    data = _to_plain(Settings())
    chosen = path or environ.get("GATEWAY_CONFIG")
    file = Path(chosen) if chosen else DEFAULT_CONFIG_PATH
    if chosen or file.exists():
        _deep_merge(data, _read_yaml(file), "")
    _apply_environment(data, environ)
    settings = _build(Settings, data, "")
    _check(settings)
    return settings


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file}: the top level must be a mapping")
    return loaded


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any], prefix: str) -> None:
    for key, value in override.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in base:
            moved = f" (it is now {MOVED[dotted]})" if dotted in MOVED else ""
            raise ConfigError(f"{dotted}: unknown setting{moved}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted}: must be a mapping of settings")
            _deep_merge(base[key], value, dotted)
        else:
            base[key] = value


def _leaf_paths(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Environment variable name -> dotted path, for every leaf setting."""
    names: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            names.update(_leaf_paths(value, dotted))
        else:
            names[dotted.replace(".", "_").upper()] = dotted
    return names


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    names = {**LEGACY_ENV, **_leaf_paths(data)}
    for name, dotted in names.items():
        if name not in environ:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = _parse_env_value(environ[name], node[leaf], name)


def _parse_env_value(raw: str, current: Any, name: str) -> Any:
    if isinstance(current, (list, tuple)):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    return raw


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        values[f.name] = _coerce(hints[f.name], data[f.name], dotted)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            choices = ", ".join(map(str, allowed))
            raise ConfigError(f"{key}: must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list")
        return tuple(str(item) for item in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: must be a whole number, got {value!r}")
        return number
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: must be text, got {type(value).__name__}")
        return str(value)
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional settings today
        return value
    raise TypeError(f"unsupported setting type {hint!r} for {key}")


def _check(s: Settings) -> None:
    """Cross-field and range checks that a type alone cannot express."""
    if not 1 <= s.server.port <= 65535:
        raise ConfigError(f"server.port: must be between 1 and 65535, got {s.server.port}")
    if s.server.workers < 1:
        raise ConfigError("server.workers: must be at least 1")
    if s.server.public_url:
        parts = urlsplit(s.server.public_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(
                f"server.public_url: must be an absolute http(s) URL, got {s.server.public_url!r}"
            )
    for key, url in (("rasa.url", s.rasa.url), ("twilio.api_base_url", s.twilio.api_base_url)):
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"{key}: must be an absolute http(s) URL, got {url!r}")
    positive = {
        "server.drain_timeout_seconds": s.server.drain_timeout_seconds,
        "server.max_active_calls": s.server.max_active_calls,
        "rasa.connect_timeout_seconds": s.rasa.connect_timeout_seconds,
        "rasa.timeout_seconds": s.rasa.timeout_seconds,
        "rasa.max_connections": s.rasa.max_connections,
        "twilio.dial_timeout_seconds": s.twilio.dial_timeout_seconds,
        "twilio.api_timeout_seconds": s.twilio.api_timeout_seconds,
        "call.no_input_seconds": s.call.no_input_seconds,
        "call.dtmf_timeout_seconds": s.call.dtmf_timeout_seconds,
        "call.outbound_chunk_ms": s.call.outbound_chunk_ms,
        "stt.google.restart_seconds": s.stt.google.restart_seconds,
        "stt.google.timeout_seconds": s.stt.google.timeout_seconds,
        "tts.google.timeout_seconds": s.tts.google.timeout_seconds,
        "stt.pocketsphinx.workers": s.stt.pocketsphinx.workers,
        "stt.endpoint_silence_ms": s.stt.endpoint_silence_ms,
        "stt.whisper.beam_size": s.stt.whisper.beam_size,
        "stt.whisper.workers": s.stt.whisper.workers,
        "stt.whisper.max_queue_seconds": s.stt.whisper.max_queue_seconds,
        "tts.google.speaking_rate": s.tts.google.speaking_rate,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {value}")
    non_negative = {
        "gather.no_input_limit": s.gather.no_input_limit,
        "call.max_reprompts": s.call.max_reprompts,
        "call.barge_in_min_speech_ms": s.call.barge_in_min_speech_ms,
        "tts.cache_size": s.tts.cache_size,
        "vad.energy_threshold": s.vad.energy_threshold,
        "stt.whisper.cpu_threads": s.stt.whisper.cpu_threads,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
    if s.call.outbound_chunk_ms % 20:
        raise ConfigError("call.outbound_chunk_ms: must be a multiple of 20")
    if len(s.call.dtmf_finish_key) != 1 or s.call.dtmf_finish_key not in "0123456789*#":
        raise ConfigError("call.dtmf_finish_key: must be one DTMF key (0-9, * or #)")
    if s.stt.whisper.max_utterance_seconds < 2:
        raise ConfigError("stt.whisper.max_utterance_seconds: must be at least 2")
    if s.stt.google.restart_seconds >= 300:
        raise ConfigError("stt.google.restart_seconds: must be under Google's 300 s stream limit")
    try:
        ZoneInfo(s.greeting.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"greeting.timezone: unknown time zone {s.greeting.timezone!r}") from None
    if "{salutation}" not in s.greeting.text:
        raise ConfigError("greeting.text: must contain {salutation}")
    number = s.twilio.fallback_phone_number
    if number and not re.fullmatch(r"\+[1-9][0-9]{6,14}|sip:\S+", number):
        # YAML reads an unquoted +34911234567 as the integer 34911234567: the + is lost.
        raise ConfigError(
            "twilio.fallback_phone_number: must be an E.164 number like \"+34911234567\" (quoted "
            f"in YAML) or a sip: URI, got {number!r}"
        )
    if s.server.softphone.enabled and not SOFTPHONE_TOKEN.fullmatch(s.server.softphone.token):
        raise ConfigError(
            "server.softphone.token: required when server.softphone.enabled is true: 16 or more "
            "letters, digits, '-', '_', '.' or '~' "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if s.gather.speech_timeout != "auto" and not s.gather.speech_timeout.isdigit():
        raise ConfigError(
            f"gather.speech_timeout: must be auto or whole seconds, got {s.gather.speech_timeout!r}"
        )
