"""UTF-8 text, one segment per line: the one reader behind corpora, sources to translate and hypotheses.

Lines end at "\\n" only: the other characters `str.splitlines` breaks at (U+2028, form feed, ...) are
content, and splitting at them would shift every later line of a parallel corpus or a translation.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from txkit.errors import TxkitError


def decode_lines(raw_lines: Iterable[bytes], name: str, errors: str = "strict", hint: str = "") -> Iterator[str]:
    """Decode raw lines (a binary file, `iter(stream.readline, b"")`) one at a time, so a pipe streams.

    Drops each line's "\\n" or "\\r\\n" and a byte-order mark at the start. errors="strict" raises a
    TxkitError naming `name`, the line and the first invalid byte (then `hint`); "replace" puts U+FFFD
    in place of invalid bytes.
    """
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise TxkitError(f"{name} line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}){hint}") from None
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        yield line
