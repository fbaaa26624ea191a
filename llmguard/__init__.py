"""llmguard: meter, price and guard every outbound LLM call of an ASGI service, per session."""

from __future__ import annotations

from llmguard.errors import BudgetExceeded, GuardBlocked, LoopDetected
from llmguard.guard import Guard
from llmguard.middleware import LLMGuardMiddleware
from llmguard.settings import GuardSettings, ModelPrice, SessionLimits
from llmguard.store.base import SessionState

__all__ = [
    "BudgetExceeded",
    "Guard",
    "GuardBlocked",
    "GuardSettings",
    "LLMGuardMiddleware",
    "LoopDetected",
    "ModelPrice",
    "SessionLimits",
    "SessionState",
]

__version__ = "0.1.0"
