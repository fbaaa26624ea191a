"""How a session id becomes a storage key that cannot escape its namespace or collide with another id's."""

from __future__ import annotations

import hashlib
import re

_SAFE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def session_key(session_id: str) -> str:
    """Plain ids map to themselves; anything else (braces, colons, spaces, long or non-ASCII ids) maps to `~` plus
    a digest. `~` is outside the plain alphabet, so an encoded id never equals a plain one, and neither can contain
    `{`, `}` or `:`, so a key's Redis Cluster hash tag is always exactly the session's."""
    if _SAFE.fullmatch(session_id):
        return session_id
    return "~" + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()
