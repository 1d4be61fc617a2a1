"""UTF-8 text, one segment per line: the one reader behind corpora, sources to translate and hypotheses.

Lines end at "\\n" only: the other characters `str.splitlines` breaks at (U+2028, form feed, ...) are
content, and splitting at them would shift every later line of a parallel corpus or a translation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from txkit.errors import TxkitError

ERRORS = ("strict", "replace")


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


# File signatures of formats that are not text, so that `train.en.gz` fails with a clear message.
_SIGNATURES = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PAR1", "Parquet"),
    (b"ARROW1", "Arrow"),
]


def check_text_file(path: str | Path) -> Path:
    """`path` as a Path, after checking that it exists and is not a compressed or binary file."""
    path = Path(path)
    if not path.exists():
        raise TxkitError(f"{path}: no such file")
    if path.is_dir():
        raise TxkitError(f"{path}: is a directory, not a text file")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            raise TxkitError(f"{path}: unknown format (a {kind} file); expected plain UTF-8 text, one sentence per line")
    if b"\x00" in head:
        raise TxkitError(f"{path}: unknown format (binary data); expected plain UTF-8 text, one sentence per line")
    return path


def iter_lines(path: str | Path, errors: str = "strict") -> Iterator[str]:
    """The lines of a UTF-8 file without their line ending, streamed.

    Lines end at "\\n" only (not at the other characters `str.splitlines` splits on, which would
    misalign a parallel corpus). errors="strict" raises a TxkitError naming the file and line of
    the first invalid byte; "replace" substitutes U+FFFD and goes on.
    """
    if errors not in ERRORS:
        raise TxkitError(f"unknown errors mode {errors!r} (choose strict or replace)")
    with open(path, "rb") as fh:
        yield from decode_lines(fh, str(path), errors, hint="; use --errors replace to go on")


def count_lines(path: str | Path) -> int:
    """Number of lines (a last line without "\\n" counts), by a fast binary pass."""
    count, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
