"""Settings: embedded defaults, then `config.yaml`, then environment variables; and what about
them deserves a warning at startup.

Each field below is declared once, with its default and its limits (`Annotated` metadata from
streaming/settings.py, which also holds the `call`, `vad` and `prompts` sections the real-time
core reads: streaming never imports app). `config.yaml` at the repository root repeats the
defaults with comments (a test keeps the two equal), so the gateway also starts without the
file. Any key can be overridden by an environment variable named after its path: `rasa.url` ->
`RASA_URL`, `stt.google.model` -> `STT_GOOGLE_MODEL`; the old server's names are aliases.

Why our own loader and not pydantic-settings (measured on this 2-core VM, Python 3.11, the same
settings modelled with pydantic-settings 2.16: nested models, `Field` limits, a YAML source):
- startup: a cold `import` + first load takes 190-320 ms with pydantic-settings against 60-105 ms
  for this module (medians of 15 cold starts, two runs); every process pays it: each uvicorn
  worker and each pocketsphinx decoder process (spawned, it re-imports `app.__main__`). A load
  itself costs the same, 9-14 ms.
- names: its environment source cannot read our documented variables, where one `_` joins path
  parts and words alike (`STT_GOOGLE_PHRASE_HINTS`): it needs a delimiter of its own
  (`STT__GOOGLE__PHRASE_HINTS`), or a source we write anyway, as the legacy aliases need.
- messages: its errors read "Input should be greater than or equal to 1 [type=greater_than_equal,
  input_value='0', input_type=str] For further information visit https://errors.pydantic.dev/..."
  and show a regex for a phone number; ours say `server.port: must be between 1 and 65535, got
  0`, with the hint an operator needs ("quoted in YAML"). We would translate every error back.
What we keep is what pydantic would replace: coercing YAML and environment text to the field's
type (`_coerce`), then checking the limits the field declares.
"""

from __future__ import annotations

import dataclasses
import re
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.config_loader import ConfigError as ConfigError  # raised for every bad setting
from app.config_loader import apply_environment, build, leaf_paths, merge, read_yaml
from streaming.actions import is_dialable
from streaming.settings import (
    CallSettings,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PromptSettings,
    Rule,
    VadSettings,
    at_least,
    at_most,
    below,
    between,
)

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


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# Field types with a rule of their own, named here: annotations are read as text, where a lambda
# would not see this module's names.
HttpUrl = Annotated[str, Rule(is_http_url, "must be an absolute http(s) URL")]
OptionalHttpUrl = Annotated[str, Rule(lambda url: not url or is_http_url(url),
                                      "must be empty or an absolute http(s) URL")]
# YAML reads an unquoted +34911234567 as the integer 34911234567: the + is lost.
OptionalPhoneNumber = Annotated[str, Rule(
    lambda number: not number or is_dialable(number),
    'must be an E.164 number like "+34911234567" (quoted in YAML) or a sip: URI')]
TimeZone = Annotated[str, Rule(is_time_zone, "must be a time zone name like Europe/Madrid")]
GreetingText = Annotated[str, Rule(lambda text: "{salutation}" in text, "must contain {salutation}")]
SpeechTimeout = Annotated[str, Rule(lambda value: value == "auto" or value.isdigit(),
                                    "must be auto or whole seconds")]


@dataclass(frozen=True, slots=True)
class SoftphoneSettings:
    enabled: bool = False
    token: str = ""

    def problems(self) -> dict[str, str]:
        """The token is required once the softphone is on (off, it is not looked at)."""
        if self.enabled and not SOFTPHONE_TOKEN.fullmatch(self.token):
            return {"token": (
                "required when server.softphone.enabled is true: 16 or more letters, digits, "
                "'-', '_', '.' or '~' (make one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe())')")}
        return {}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: Annotated[int, between(1, 65535)] = 5001
    public_url: OptionalHttpUrl = ""
    workers: Annotated[int, at_least(1)] = 1
    mode: Literal["stream", "gather"] = "stream"
    drain_timeout_seconds: PositiveFloat = 300
    max_active_calls: PositiveInt = 100
    debug: bool = False
    softphone: SoftphoneSettings = field(default_factory=SoftphoneSettings)


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    account_sid: str = ""
    auth_token: str = ""
    validate_signatures: bool = True
    api_base_url: HttpUrl = "https://api.twilio.com"
    api_timeout_seconds: PositiveFloat = 10.0
    fallback_phone_number: OptionalPhoneNumber = ""
    dial_timeout_seconds: PositiveInt = 30


@dataclass(frozen=True, slots=True)
class RasaSettings:
    url: HttpUrl = "http://localhost:5005/webhooks/rest/webhook"
    connect_timeout_seconds: PositiveFloat = 2.0
    timeout_seconds: PositiveFloat = 8.0
    max_connections: PositiveInt = 100
    health_cache_seconds: float = 10


@dataclass(frozen=True, slots=True)
class LanguageSettings:
    code: str = "es-ES"
    say_voice: str = "Polly.Lucia"


@dataclass(frozen=True, slots=True)
class GreetingSettings:
    timezone: TimeZone = "Europe/Madrid"
    morning: str = "Buenos días"
    afternoon: str = "Buenas tardes"
    night: str = "Buenas noches"
    text: GreetingText = (
        "{salutation}, le atiende el asistente virtual de bloqueo de tarjetas. "
        "¿En qué puedo ayudarle?"
    )


@dataclass(frozen=True, slots=True)
class GatherSettings:
    no_input_limit: NonNegativeInt = 2
    speech_timeout: SpeechTimeout = "auto"
    speech_model: str = "phone_call"
    enhanced: bool = True
    timeout_seconds: int = 6


@dataclass(frozen=True, slots=True)
class PocketsphinxSettings:
    phrases: tuple[str, ...] = ()
    language: str = "en-US"
    workers: PositiveInt = 2


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    model_dir: str = ""
    cache_dir: str = ""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    beam_size: PositiveInt = 5
    cpu_threads: NonNegativeInt = 2
    workers: PositiveInt = 1
    # Whisper's encoder hears 30 s at most: longer speech is cut and decoded in pieces.
    max_utterance_seconds: Annotated[
        float, at_least(2),
        at_most(30, "the Whisper encoder hears 30 s: the rest of a longer utterance would be "
                "dropped unheard")] = 15.0
    max_queue_seconds: PositiveFloat = 3.0


@dataclass(frozen=True, slots=True)
class GoogleClientSettings:
    """How a Google engine reaches its service (both engines' sections end with these)."""

    endpoint: str = ""
    insecure: bool = False
    timeout_seconds: PositiveFloat = 10


@dataclass(frozen=True, slots=True)
class GoogleSttSettings(GoogleClientSettings):
    model: str = "phone_call"
    use_enhanced: bool = True
    interim_results: bool = True
    # Google ends a stream after about 5 minutes: it is replaced by a new one before that.
    restart_seconds: Annotated[PositiveFloat, below(300, "Google's 300 s stream limit")] = 240
    # At the end of the caller's speech by the gateway's VAD (stt.endpoint_silence_ms), ask
    # Google for the final at once instead of waiting for its own endpointer.
    early_finalization: bool = True


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
    endpoint_silence_ms: PositiveInt = 400
    whisper: WhisperSettings = field(default_factory=WhisperSettings)
    pocketsphinx: PocketsphinxSettings = field(default_factory=PocketsphinxSettings)
    google: GoogleSttSettings = field(default_factory=GoogleSttSettings)


@dataclass(frozen=True, slots=True)
class EspeakSettings:
    voice: str = ""
    words_per_minute: int = 160
    pitch: int = 50


@dataclass(frozen=True, slots=True)
class GoogleTtsSettings(GoogleClientSettings):
    voice_name: str = "es-ES-Standard-A"
    ssml_gender: Literal["FEMALE", "MALE", "NEUTRAL", "SSML_VOICE_GENDER_UNSPECIFIED"] = "FEMALE"
    speaking_rate: PositiveFloat = 1.0
    pitch: float = 0.0
    volume_gain_db: float = 0.0


@dataclass(frozen=True, slots=True)
class TtsSettings:
    engine: Literal["espeak", "google", "null"] = "espeak"
    cache_size: NonNegativeInt = 256
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
        merged = dataclasses.asdict(self)
        for section, values in changes.items():
            merge(merged, {section: dict(values)}, moved=MOVED)
        return build(Settings, merged)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings; raises ConfigError naming the offending key."""
    environ = os.environ if environ is None else environ
    data = dataclasses.asdict(Settings())
    chosen = path or environ.get("GATEWAY_CONFIG")
    file = Path(chosen) if chosen else DEFAULT_CONFIG_PATH
    if chosen or file.exists():
        merge(data, read_yaml(file), moved=MOVED)
    apply_environment(data, environ, LEGACY_ENV)
    return build(Settings, data)


def environment_variables() -> dict[str, str]:
    """Every environment variable the settings read -> the dotted key it sets (aliases too)."""
    return {**LEGACY_ENV, **leaf_paths(dataclasses.asdict(Settings()))}


def startup_warnings(settings: Settings) -> list[str]:
    """Settings that work but are dangerous or surprising, in words an operator acts on."""
    twilio, server, stt = settings.twilio, settings.server, settings.stt
    language = settings.language.code
    warnings = {
        "SECURITY: twilio.validate_signatures is false: Twilio signatures are NOT checked and "
        "anyone can forge webhook and websocket requests. Never run like this in production.":
            not twilio.validate_signatures,
        "twilio.auth_token (TWILIO_AUTH_TOKEN) is empty: every webhook and websocket request "
        "will be refused with 403 until it is set.":
            twilio.validate_signatures and not twilio.auth_token,
        "twilio.fallback_phone_number is empty: callers cannot be transferred to an agent; "
        "they hear the no-answer prompt and the call ends.":
            not twilio.fallback_phone_number,
        "server.public_url is empty: URLs are derived from each request, so signatures fail "
        "behind a TLS-terminating proxy. Set it to the https URL Twilio calls.":
            not server.public_url,
        "server.softphone.enabled is true: /softphone lets anyone holding "
        "server.softphone.token talk to the bot through this gateway from a browser. "
        "For development only; turn it off in production.":
            server.softphone.enabled,
        f"stt.engine is pocketsphinx, which recognizes English only (language.code is "
        f"{language}): callers will not be understood. Use stt.engine=whisper (the offline "
        "default) or google.":
            stt.engine == "pocketsphinx" and not language.lower().startswith("en"),
    }
    return [warning for warning, applies in warnings.items() if applies]
