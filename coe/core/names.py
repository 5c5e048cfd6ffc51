"""File names that are not valid UTF-8, through text formats.

POSIX allows any bytes but "/" and NUL in a name. Python hands a name that is not valid UTF-8 to
coe as a str with lone surrogates (PEP 383: byte 0xff becomes U+DCFF), which opens the right file
but cannot be written as UTF-8: JSON, CSV and HTML need another spelling. Text everywhere is written
`readable`: each such byte as `\\xff`. Where a path identifies a file (a result row's `path`), the
exact bytes travel beside it as base64 (`name_bytes`), so that reading a row back gives the path
that opens the file."""

from __future__ import annotations

import base64
import os
import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def is_utf8(text: str) -> bool:
    return _LONE_SURROGATE.search(text) is None


def readable(text: str) -> str:
    """`text` as valid Unicode: a byte that was not UTF-8 as `\\xNN`, any other lone surrogate (which
    no file name can hold) as `\\uNNNN`."""
    if is_utf8(text):
        return text
    return _LONE_SURROGATE.sub(_spell, text)


def _spell(match: re.Match) -> str:
    point = ord(match.group())
    return f"\\x{point - 0xDC00:02x}" if 0xDC80 <= point <= 0xDCFF else f"\\u{point:04x}"


def is_file_name(text: str) -> bool:
    """Whether `text` spells bytes a file system can hold (lone surrogates only for undecodable bytes)."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return "\0" not in text


def exact_bytes(path: str) -> str | None:
    """The exact bytes of a path that is not valid UTF-8, base64; None for one that is (its text is
    exact) and for text no file system could hold."""
    if is_utf8(path) or not is_file_name(path):
        return None
    return base64.b64encode(os.fsencode(path)).decode("ascii")


def from_name_bytes(encoded: str) -> str:
    return os.fsdecode(base64.b64decode(encoded, validate=True))
