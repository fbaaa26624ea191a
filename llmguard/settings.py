"""`GuardSettings`: every knob of llmguard, read from `LLMGUARD_*` environment variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmguard.types import Scope

__all__ = ["GuardSettings", "ModelPrice", "SessionLimits"]


class ModelPrice(BaseModel):
    """A user price for a model genai-prices does not know (fine-tuned, self-hosted), in USD per million tokens."""

    input_mtok: float
    output_mtok: float
    cache_read_mtok: float | None = None
    cache_write_mtok: float | None = None


class SessionLimits(BaseModel):
    """Per-session caps. `None` means the cap is off."""

    budget_usd: float | None = None
    max_llm_calls: int | None = None
    max_tool_calls: int | None = None
    max_tokens: int | None = None


class GuardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMGUARD_", extra="ignore", validate_default=True)

    # Sessions and features. The resolvers take the ASGI scope; they are code, so they never come from the env.
    session_header: str = "x-session-id"
    session_resolver: Callable[[Scope], str | None] | None = None
    feature_resolver: Callable[[Scope], str | None] | None = None
    limits_resolver: Callable[[Scope], SessionLimits | None] | None = None
    feature_header: str | None = None
    metrics_path: str = "/metrics"
    max_session_id_length: int = 256
    max_models: int = 50  # distinct model label values before the rest collapse to "other"
    max_features: int = 200

    # Storage.
    redis_url: SecretStr | None = None
    redis_cluster: bool = False
    redis_prefix: str = "llmguard"
    redis_timeout_seconds: float = 0.05  # per command on the charge path
    redis_connect_timeout_seconds: float = 0.5  # opening a connection (a cold pool under a burst needs more)
    session_ttl_seconds: int = 24 * 3600
    hold_ttl_seconds: int = 600
    store_failure: Literal["open", "closed"] = "open"

    # Caps (off when unset).
    session_budget_usd: float | None = None
    session_max_llm_calls: int | None = None
    session_max_tool_calls: int | None = 50
    session_max_tokens: int | None = None
    feature_daily_budget_usd: float | None = None
    daily_budget_usd: float | None = None
    default_max_output_tokens: int = 4096
    unpriced_models: Literal["deny", "allow"] = "deny"
    reject_blocked_sessions: bool = True

    # Loop detection.
    loop_repeat_threshold: int = 5
    loop_warn_threshold: int = 3
    loop_history: int = 25

    # Prices the price data does not know, keyed by model name (JSON in the environment).
    prices: dict[str, ModelPrice] = Field(default_factory=dict)


def build_settings(settings: GuardSettings | None, overrides: Mapping[str, Any]) -> GuardSettings:
    """Keyword overrides win over the given settings object, which wins over the environment."""
    unknown = set(overrides) - set(GuardSettings.model_fields)
    if unknown:
        raise TypeError(f"Unknown llmguard setting(s): {', '.join(sorted(unknown))}")
    if settings is None:
        return GuardSettings(**overrides)
    if not overrides:
        return settings
    merged = {name: getattr(settings, name) for name in GuardSettings.model_fields}
    merged.update(overrides)
    return GuardSettings(**merged)
