"""Agent settings: flags > environment (TTS_AGENT_*) > config file (TOML or JSON) > defaults.

Validated once at start; a bad value stops the process with a message naming the field.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .protocol import BargeIn, DanmuRules

DEV_KEY = "devkey"
DEV_SECRET = "secret"
MIN_SECRET_BYTES = 32


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_AGENT_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # API key -> secret. Several pairs allow rotation. Empty: the dev pair, loopback only.
    api_keys: dict[str, str] = Field(default_factory=dict)
    # ICE host candidates offered to peers; empty: follow --host (loopback only on loopback).
    ice_addresses: list[str] = Field(default_factory=list)
    public_url: str | None = None  # how clients reach the control plane (printed, returned with tokens)
    # Host header names accepted besides the listen address (and loopback names on loopback); "*": any
    allowed_hosts: list[str] = Field(default_factory=list)
    # origins of web apps that may call the API from a browser (CORS); none: same-origin only
    cors_origins: list[str] = Field(default_factory=list)
    # longest token lifetime accepted (exp - now), even for a valid signature
    max_token_ttl_s: int = Field(7 * 86400, ge=60)
    # tests only: accept API secrets shorter than 32 bytes (still loopback only)
    allow_short_secrets: bool = False

    voice: str | None = None  # default voice id or language tag; None: best English voice
    speed: float = Field(1.0, ge=0.5, le=2.0)
    voices_dir: list[Path] = Field(default_factory=list)
    cache_mb: int = Field(64, ge=0, le=65536)  # PCM cache for repeated phrases; 0 disables it
    danmu: DanmuRules = Field(default_factory=DanmuRules)
    barge_in: BargeIn = Field(default_factory=BargeIn)

    max_text_chars: int = Field(5000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0)  # a request body must arrive within this
    max_rooms: int = Field(500, ge=1)
    max_peers_per_room: int = Field(50, ge=1)
    max_peers_per_identity: int = Field(5, ge=1)  # WHEP sessions one identity (token) may hold in a room
    # always-on queue caps (agent/queue_caps.py): over one, the sender gets `queue_full`
    max_queue_per_room: int = Field(256, ge=1)
    max_queue_chars_per_room: int = Field(200_000, ge=1)
    max_queue_per_sender: int = Field(64, ge=1)
    max_queue_chars_per_sender: int = Field(50_000, ge=1)
    room_grace_s: float = Field(30.0, ge=0)
    rate_limit_per_min: int = Field(600, ge=1)  # per token/IP on speak, synthesize and WHEP
    opus_bitrate: int = Field(32_000, ge=6_000, le=510_000)
    # Opus encoding is most of the per-room CPU. CELT ("lowdelay") at complexity 0 costs
    # ~34 µs a frame here against ~200 µs for SILK/hybrid ("voip") at complexity 10.
    opus_application: Literal["lowdelay", "voip", "audio"] = "lowdelay"
    opus_complexity: int = Field(0, ge=0, le=10)
    token_ttl_s: int = Field(6 * 3600, ge=60)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    livekit_url: str | None = None  # LiveKit mode: the server's ws(s):// URL
    livekit_agent_name: str = "tts-agent"  # the name LiveKit dispatches workers by

    @field_validator("voices_dir", mode="before")
    @classmethod
    def _split_paths(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.split(":") if p]
        return v

    @property
    def dev_mode(self) -> bool:
        return not self.api_keys

    @property
    def keys(self) -> dict[str, str]:
        return self.api_keys or {DEV_KEY: DEV_SECRET}

    @model_validator(mode="after")
    def _refuse_dev_keys_off_loopback(self) -> "Settings":
        if self.dev_mode and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} with the dev key pair {DEV_KEY}/{DEV_SECRET}: "
                "set TTS_AGENT_API_KEYS='{\"<key>\": \"<secret>\"}' (or api_keys in the config file)"
            )
        for key, secret in self.api_keys.items():
            # HS256 with a short secret is recovered from one token by brute force
            if len(secret.encode()) < MIN_SECRET_BYTES and not (self.allow_short_secrets and is_loopback(self.host)):
                raise ValueError(f"the secret of API key {key!r} is shorter than {MIN_SECRET_BYTES} bytes "
                                 "(allow_short_secrets is for tests on loopback only)")
        return self

    @model_validator(mode="after")
    def _queue_caps_fit_one_message(self) -> "Settings":
        for name in ("max_queue_chars_per_room", "max_queue_chars_per_sender"):
            if getattr(self, name) < self.max_text_chars:
                raise ValueError(f"{name} ({getattr(self, name)}) is below max_text_chars ({self.max_text_chars}): "
                                 "a message of the longest allowed text could never be queued")
        return self

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a config file (if any), then the environment, then explicit overrides."""
    data: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix in (".toml", ".tml") else json.loads(text)
    overrides = {k: v for k, v in overrides.items() if v is not None}

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
            # flags (init) > environment > config file
            from pydantic_settings import InitSettingsSource

            return (init_settings, env_settings, InitSettingsSource(settings_cls, data))

    return _FromFile(**overrides)
