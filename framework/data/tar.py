"""The members of an uncompressed tar, read with a few bytes operations per header.

The training stream's hot path was Python's tarfile: it parses every field of every header (and a
pax header per member) into a TarInfo, about two thirds of a loader worker's CPU time on pre-tokenised
shards (bench/loader_throughput.py). A shard needs only each regular member's name, data and where its
headers start, so this reads just those: the ustar name (with prefix), the size, the type flag and the
checksum (a damaged header is an error, not garbage), plus what pax ('x'), global pax ('g') and GNU
long-name ('L') records say about the next member's path and size. Other types (directories, links)
are seeked over, as tarfile's `isfile()` leaves them out. Errors raise `TarFormatError`;
tests/test_tar.py checks the members against tarfile's on every format tarfile writes.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

BLOCK = 512
_ZERO = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_EXTENDED = (b"x", b"g", b"L", b"K")


class TarFormatError(Exception):
    """The tar is truncated or damaged at some point."""


class Header(NamedTuple):
    """One regular file of the tar (its data follows: TarReader.data reads it, or it is seeked over)."""

    name: str
    """Path inside the tar."""
    offset: int
    """Where its first header block starts (an extended header's, when it has one)."""
    size: int
    """Bytes of data."""


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256, for values octal cannot hold
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[:1] == b"\xff" else value
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarFormatError(f"header field {field!r} is not an octal number") from None


def _check(header: bytes, offset: int) -> None:
    """The header checksum: unsigned (POSIX) or signed (old writers) byte sum, the field as spaces."""
    stored = _number(header[148:156])
    unsigned = sum(header[:148]) + sum(header[156:]) + 8 * 32
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    if stored != signed:
        raise TarFormatError(f"bad header checksum at byte {offset}: the tar is damaged there")


def _pax(data: bytes) -> dict[str, str]:
    """Records "LEN key=value\\n" of a pax extended header."""
    out, pos = {}, 0
    try:
        while pos < len(data) and data[pos] != 0:
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
            out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos += length
    except ValueError:
        raise TarFormatError(f"malformed pax record at {data[pos:pos + 40]!r}") from None
    return out


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class TarReader:
    """Iterates the regular members from byte `offset` of an open file; `data()` reads the current
    member's content, which is otherwise seeked over when the iteration moves on."""

    def __init__(self, handle: BinaryIO, offset: int = 0):
        self.handle, self.offset = handle, offset
        self._unread = 0  # padded data bytes of the current member not read yet
        self._size = 0

    def data(self) -> bytes:
        """The current member's content."""
        padded, self._unread = self._unread, 0
        return self._read(padded)[:self._size]

    def _read(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) < size:
            raise TarFormatError(f"unexpected end of data at byte {self.offset + len(data)}: the tar is truncated")
        self.offset += size
        return data

    def __iter__(self) -> Iterator[Header]:
        fields: dict[str, str] = {}
        shared: dict[str, str] = {}
        start = None
        while True:
            if self._unread:
                self.handle.seek(self._unread, 1)
                self.offset, self._unread = self.offset + self._unread, 0
            start = self.offset if start is None else start
            header = self.handle.read(BLOCK)
            if len(header) < BLOCK:
                if header or start != self.offset:  # a partial block, or an extended header without its member
                    raise TarFormatError(f"truncated header at byte {self.offset}: the tar is truncated")
                return  # end of file without the end-of-archive blocks: tarfile accepts it too
            if header == _ZERO:
                return  # the end-of-archive marker
            _check(header, self.offset)
            self.offset += BLOCK
            size, kind = _number(header[124:136]), header[156:157]
            if kind in _EXTENDED:
                payload = self._read(_padded(size))[:size]
                if kind == b"L":
                    fields["path"] = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif kind != b"K":  # a link target: only links have one, and they are skipped
                    (fields if kind == b"x" else shared).update(_pax(payload))
                continue
            values = {**shared, **fields}
            self._size = int(values["size"]) if "size" in values else size
            self._unread = _padded(self._size)
            name, begin, fields, start = values.get("path") or _ustar_name(header), start, {}, None
            if kind in _REGULAR:
                yield Header(name, begin, self._size)
