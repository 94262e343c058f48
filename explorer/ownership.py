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
import threading
import time
from collections.abc import Callable

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


class TeacherBrowsers:
    """The browsers (visitor ids) that entered the teacher key, kept by the server process: the
    key is entered once, and a reload or a second tab of that browser is still the teacher's.
    A browser is remembered with a hash of the key it entered, so a new key forgets them all.

    Wrong keys are counted per browser: after ``tries`` within ``window`` seconds that browser's
    next guesses are refused unread until the window has passed.
    """

    def __init__(self, tries: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tries, self.window, self.clock = tries, window, clock
        self._lock = threading.Lock()
        self._known: dict[str, bytes] = {}
        self._wrong: dict[str, list[float]] = {}

    @staticmethod
    def _digest() -> bytes:
        return hashlib.sha256(os.environ.get(TEACHER_ENV, "").encode()).digest()

    def knows(self, visitor: str) -> bool:
        """True when this browser entered the server's current key."""
        with self._lock:
            kept = self._known.get(visitor)
        return teacher_key_set() and kept is not None and hmac.compare_digest(kept, self._digest())

    def wait_s(self, visitor: str) -> float:
        """Seconds before this browser may try a key again (0: now)."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._wrong.get(visitor, []) if now - t < self.window]
            if visitor in self._wrong:
                self._wrong[visitor] = recent
        return self.window - (now - recent[0]) if len(recent) >= self.tries else 0.0

    def enter(self, visitor: str, text: str) -> bool:
        """Try a key for this browser: True (and remembered) when it is the server's; a wrong
        one counts, and one tried while the browser must wait is not read at all."""
        if self.wait_s(visitor) > 0:
            return False
        if is_teacher_key(text):
            with self._lock:
                self._known[visitor] = self._digest()
                self._wrong.pop(visitor, None)
            return True
        now = self.clock()
        with self._lock:
            if len(self._wrong) > 10_000:  # browsers that guessed long ago: forgotten
                self._wrong = {v: ts for v, ts in self._wrong.items()
                               if ts and now - ts[-1] < self.window}
            self._wrong.setdefault(visitor, []).append(now)
        return False

    def forget(self, visitor: str) -> None:
        """This browser leaves teacher mode (a shared machine, the lecture over)."""
        with self._lock:
            self._known.pop(visitor, None)


TEACHERS = TeacherBrowsers()  # the server's one list
