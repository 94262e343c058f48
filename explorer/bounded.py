"""Text from users, bounded before any work is done on it: JSON, Python-literal tuples, run ids.

A link, an upload or a pasted box can carry anything: 20,000 nested brackets (``json.loads``
raises RecursionError), an integer of 5,000 digits (Python refuses to convert more than 4,300),
``1`` followed by 400 zeros (``float()`` overflows), a 25-digit run id (SQLite's integers are
64-bit). Each check here is a cheap scan of the text, so a refusal costs microseconds and is
one ``ConfigError`` sentence; nothing else escapes.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from typing import Any

from explorer.errors import ConfigError

MAX_DEPTH = 16  # a spec nests 4 deep (GoogLeNet: stages of rows), a run export 4
MAX_DIGITS = 40  # a spec needs 10 digits at most; a float's repr has 17 plus its exponent
MAX_ID = 2**63 - 1  # SQLite's largest integer
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string, escapes included
_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""", re.DOTALL)  # Python's too
_NOT_BRACKET = re.compile(r"[^\[\]{}()]+")
_LONG_NUMBER = re.compile(rf"\d{{{MAX_DIGITS + 1},}}")
_DEPTH_STEP = {"[": 1, "{": 1, "(": 1, "]": -1, "}": -1, ")": -1}


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a message (never raises)."""
    try:
        text = repr(value)
    except ValueError:  # an int over Python's 4,300-digit limit cannot be written out
        return "a number too long to show"
    if len(text) <= limit:
        return text
    quote = text[0] if text[0] in "'\"" else ""  # a cut string still closes its quote
    return text[:limit - 1 - len(quote)] + "…" + quote


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} characters"


def check_text(text: str, what: str, max_chars: int, max_depth: int = MAX_DEPTH,
               quotes: re.Pattern[str] = _STRING) -> None:
    """Refuse ``text`` that is too long, nests too deeply or holds a too-long number.

    The scan ignores what lies inside quoted strings (a run's name may hold brackets and digits).
    """
    if len(text) > max_chars:
        raise ConfigError(f"{what} is {_size(len(text))} long; at most {_size(max_chars)} are "
                          f"accepted.")
    bare = quotes.sub('""', text)
    if _LONG_NUMBER.search(bare):
        raise ConfigError(f"{what} holds a number of more than {MAX_DIGITS} digits; no setting "
                          f"needs one that long.")
    brackets = _NOT_BRACKET.sub("", bare)
    if len(brackets) > 2 * max_depth:
        deepest = max(itertools.accumulate(_DEPTH_STEP.get(c, 0) for c in brackets))
        if deepest > max_depth:
            raise ConfigError(f"{what} is nested too deeply: its brackets go {deepest:,} levels "
                              f"deep, and at most {max_depth} are accepted.")


def loads(text: str, what: str, max_chars: int, max_depth: int = MAX_DEPTH,
          fix: str = "") -> Any:
    """``json.loads`` after ``check_text``; a syntax error is one sentence naming ``what`` (and
    ``fix``, what to do about it)."""
    check_text(text, what, max_chars, max_depth)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                          f"{exc.colno}){'; ' + fix if fix else ''}.") from None
    except (RecursionError, ValueError, OverflowError, MemoryError):  # the scan prevents these
        raise ConfigError(f"{what} cannot be read as JSON.") from None


def literal(text: str, what: str, max_chars: int) -> Any:
    """A Python literal (a pasted tuple such as ``((1, 64), (2, 128))``), never ``eval``."""
    check_text(text, what, max_chars, quotes=_QUOTED)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
        raise ConfigError(f"{what} is not a tuple of numbers.") from None


def parse_id(raw: Any, what: str) -> int:
    """A database id from a URL: ASCII digits only (``'²'.isdigit()`` is true), 1 to 2**63 − 1."""
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 1 <= int(text) <= MAX_ID:
        raise ConfigError(f"{what} must be a run number such as 12, not {shown(text, 30)}.")
    return int(text)
