"""Bytes and header text to clean Unicode, whatever the sender declared.

Real mail lies about its charsets; every function here answers a ``str`` and never raises,
so one badly labelled part cannot quarantine an otherwise readable message.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from itertools import groupby
from operator import itemgetter
from email.message import Message

# Labels whose real-world content is a superset encoding: decoding with the superset is
# correct for the labelled subset and also for what senders actually put there.
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "gb_2312-80": "gb18030", "chinese": "gb18030",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "iso-2022-jp": "iso2022_jp_ext", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "iso_8859-1": "cp1252",
    "tis-620": "cp874", "iso-8859-11": "cp874",
}
# Labels that promise nothing about 8-bit bytes: treat the content as undeclared.
_MEANINGLESS = {"us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default", "charset", "8bit"}
_UNDECLARED = ("utf-8", "cp1252")

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_WHITESPACE = re.compile(r"\s+")


def _try(data: bytes, codec: str, errors: str = "strict") -> str | None:
    try:
        return data.decode(codec, errors)
    except (LookupError, UnicodeError, ValueError):  # unknown or non-text codec, or bad bytes
        return None


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Decode ``data`` per its declared charset (via its real-world superset), falling back to
    UTF-8, then windows-1252/latin-1 for undeclared or unusable labels; never fails."""
    label = (charset or "").strip().strip("\"'").lower().partition("*")[0]
    if label and label not in _MEANINGLESS:
        best = _SUPERSETS.get(label, label)
        # Strictly as declared, else as mislabelled UTF-8, else as declared with U+FFFD.
        for codec, errors in ((best, "strict"), (label, "strict"), ("utf-8", "strict"), (best, "replace")):
            text = _try(data, codec, errors)
            if text is not None:
                return text
    # Undeclared 7-bit ISO-2022-JP is still common in Japanese headers.
    for codec in (("iso2022_jp_ext",) if b"\x1b$" in data else ()) + _UNDECLARED:
        text = _try(data, codec)
        if text is not None:
            return text
    return data.decode("latin-1")  # maps every byte: the last resort cannot fail


def from_wire(value: str) -> str:
    """Undo the stdlib's surrogate-escaping of raw 8-bit header bytes (undeclared, usually UTF-8)."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    return decode_bytes(value.encode("utf-8", "surrogateescape"))


def wire_bytes(value: str) -> bytes:
    """The exact bytes the stdlib parser read for a header value or payload string."""
    return value.encode("utf-8", "surrogateescape")


def fold(value: str) -> str:
    """One line: whitespace runs (incl. CR/LF) become one space, control characters go."""
    value = "".join(ch for ch in value if ch.isspace() or unicodedata.category(ch) != "Cc")
    return _WHITESPACE.sub(" ", value).strip()


def lenient_b64(text: str) -> bytes:
    """Base64 that decodes what it can: stray characters are skipped, each run between padding
    is decoded on its own (some encoders pad every line), a dangling sixth bit-group is dropped."""
    out = []
    for run in re.split(r"=+", re.sub(r"[^A-Za-z0-9+/=]", "", text)):
        run = run[: len(run) - 1] if len(run) % 4 == 1 else run
        out.append(binascii.a2b_base64(run + "=" * (-len(run) % 4)))
    return b"".join(out)


def _word_bytes(encoding: str, text: str) -> bytes:
    if encoding in "bB":
        return lenient_b64(text)
    return binascii.a2b_qp(text.encode("ascii", "replace"), header=True)


def decode_header(raw: str) -> str:
    """Decode RFC 2047 encoded-words (adjacent words of one charset are joined before decoding,
    so a character split across two words survives) and raw 8-bit text; returns one folded line."""
    text = from_wire(raw)
    pieces: list[str] = []
    pending: list[tuple[str, bytes]] = []  # consecutive encoded words not yet decoded
    last = 0

    def flush() -> None:
        for charset, words in groupby(pending, key=itemgetter(0)):
            pieces.append(decode_bytes(b"".join(word for _, word in words), charset))
        pending.clear()

    for match in _ENCODED_WORD.finditer(text):
        gap = text[last:match.start()]
        if gap and not (pending and gap.isspace()):
            flush()
            pieces.append(gap)
        charset = match.group(1).lower().partition("*")[0]
        pending.append((charset, _word_bytes(match.group(2), match.group(3))))
        last = match.end()
    flush()
    pieces.append(text[last:])
    return fold("".join(pieces))


_EXTENDERS = {"\u200d", "\u034f"}


def _continues_cluster(ch: str) -> bool:
    """True for characters that attach to the one before (combining marks, ZWJ, selectors, skin tones)."""
    return (
        unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or ch in _EXTENDERS
        or "\ufe00" <= ch <= "\ufe0f"
        or "\U0001f3fb" <= ch <= "\U0001f3ff"
        or "\U000e0100" <= ch <= "\U000e01ef"
    )


def utf16_len(text: str) -> int:
    """Length as Zoho counts it: UTF-16 code units (Java chars)."""
    return len(text.encode("utf-16-le")) // 2


def truncate(text: str, limit: int, marker: str = "…") -> str:
    """Cut ``text`` to ``limit`` UTF-16 code units (Zoho counts Java chars), ending with ``marker``.

    The cut never splits a code point and backs off so no combining mark, ZWJ sequence or
    variation selector loses its base character.
    """
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(marker)
    cut = 0
    used = 0
    for ch in text:
        used += utf16_len(ch)
        if used > budget:
            break
        cut += 1
    while cut > 0 and (_continues_cluster(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    return text[:cut].rstrip() + marker


def raw_values(message: Message, name: str) -> list[str]:
    """Every value of header ``name`` exactly as stored (the stdlib would wrap 8-bit ones in Header objects)."""
    wanted = name.lower()
    return [value for key, value in message.raw_items() if key.lower() == wanted and isinstance(value, str)]
