"""Who owns a run: a visitor's browser, and the teacher key that lifts a visitor's limits.

A run belongs to the browser that started it, so a reload (or a second tab) still sees it as
its own. The browser is known by the token of the cookie that the Streamlit server sets on
every visitor against cross-site requests; only a hash of the token is kept, never the token.
Without that cookie (a test, a server with XSRF protection off) the session's own random id
serves, and ownership lasts as long as the session.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os

TEACHER_ENV = "EXPLORER_TEACHER_KEY"
MAX_COOKIE = 400  # longer cookie values are not Streamlit's


def _token(cookie: str) -> bytes | None:
    """The token inside a Streamlit/Tornado XSRF cookie ("2|mask|masked|time"), or None."""
    value = cookie.strip("\"'")
    parts = value.split("|")
    try:
        if len(parts) == 4 and parts[0] == "2":
            mask = binascii.a2b_hex(parts[1])
            masked = binascii.a2b_hex(parts[2])
            if not mask:
                return None
            return bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked))
        return binascii.a2b_hex(value) if value else None  # version 1: the token in hex
    except (binascii.Error, ValueError):
        return None


def visitor_id(cookie: str | None, fallback: str) -> str:
    """A stable, anonymous id of the visitor's browser: a hash of the cookie's token, else a
    hash of ``fallback`` (the session's own random id)."""
    token = _token(cookie) if isinstance(cookie, str) and len(cookie) <= MAX_COOKIE else None
    source = b"cookie:" + token if token else b"session:" + fallback.encode()
    return hashlib.sha256(source).hexdigest()[:24]


def teacher_key_set() -> bool:
    """True when the server's owner set a teacher key."""
    return bool(os.environ.get(TEACHER_ENV))


def is_teacher_key(text: str) -> bool:
    """True when ``text`` is the server's teacher key (compared in constant time)."""
    key = os.environ.get(TEACHER_ENV, "")
    if not key or not isinstance(text, str) or len(text) > 200:
        return False
    return hmac.compare_digest(text.encode(), key.encode())
