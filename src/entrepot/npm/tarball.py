"""Reading a published tarball without trusting it.

Decompression is bounded (a gzip bomb stops at the configured unpacked size), the archive is
read as a stream (never extracted to disk), and entries that could escape a package folder
when a client unpacks it (absolute paths, ``..``, links, devices) are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import zlib
from base64 import b64encode
from typing import Any

import orjson

from entrepot.errors import InvalidPublish

MAX_PACKAGE_JSON = 4 * 1024 * 1024
#: Largest pax header or GNU long name accepted; npm writes a few hundred bytes at most.
MAX_EXTENDED_HEADER = 64 * 1024
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_EXTENDED_TYPES = (*_PAX_TYPES, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_DIGIT_RUN = re.compile(rb"[0-9]{65}")


@dataclasses.dataclass(frozen=True)
class TarballInfo:
    """What the registry needs from a tarball's contents."""

    package_json: dict[str, Any]
    file_count: int
    unpacked_size: int
    has_shrinkwrap: bool


@dataclasses.dataclass(frozen=True)
class Digests:
    """The hashes npm records in ``dist``."""

    sha512_hex: str
    integrity: str
    shasum: str


def digests(data: bytes) -> Digests:
    """sha512 (hex and SRI form) and sha1 hex of some bytes."""
    sha512 = hashlib.sha512(data).digest()
    return Digests(
        sha512_hex=sha512.hex(),
        integrity="sha512-" + b64encode(sha512).decode(),
        shasum=hashlib.sha1(data, usedforsecurity=False).hexdigest(),
    )


class _BoundedGunzip(io.RawIOBase):
    """A readable stream of the decompressed bytes that refuses to grow past ``limit``."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._limit = limit
        self._total = 0
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending: bytes = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._inflate.eof:
                return 0
            chunk: bytes | memoryview
            if self._inflate.unconsumed_tail:
                chunk = self._inflate.unconsumed_tail
            elif self._pos < len(self._data):
                chunk = self._data[self._pos : self._pos + 65536]
                self._pos += len(chunk)
            else:
                raise InvalidPublish("the tarball's gzip stream is truncated")
            self._pending = self._inflate.decompress(chunk, 1 << 16)
            self._total += len(self._pending)
            if self._total > self._limit:
                raise InvalidPublish(
                    f"the tarball unpacks to more than {self._limit} bytes, the configured limit"
                )
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _check_pax_records(buf: bytes) -> None:
    """Refuse a pax header that is not a clean run of ``<length> <key>=<value>\\n`` records,
    in linear time, before tarfile's own parser (quadratic on long digit runs) sees it."""
    pos = 0
    while pos < len(buf) and buf[pos] != 0:
        match = _PAX_LENGTH.match(buf, pos)
        end = pos + int(match.group(1)) if match else pos
        if match is None or end - pos < 5 or end > len(buf) or buf[end - 1] != 0x0A:
            raise InvalidPublish("the tarball has a malformed pax header")
        if b"=" not in buf[match.end() : end]:
            raise InvalidPublish("the tarball has a malformed pax header")
        pos = end
    if _DIGIT_RUN.search(buf):
        raise InvalidPublish("the tarball has a pax header with an implausibly long number")


class _Replay:
    """A stream that gives ``head`` back first, then reads on from ``rest``."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return bytes(self._rest.read(size))
        if size < 0 or size > len(self._head):
            out, self._head = self._head, b""
            return out + bytes(self._rest.read(-1 if size < 0 else size - len(out)))
        out, self._head = self._head[:size], self._head[size:]
        return out

    def tell(self) -> int:
        return int(self._rest.tell()) - len(self._head)


class _CheckedTarInfo(tarfile.TarInfo):
    """Checks extended headers before :mod:`tarfile` parses them: it reads one whole into
    memory, and its pax parser before Python 3.11.10 is quadratic on long runs of digits
    (CVE-2024-6232), so 200 bytes of gzip could hold the event loop for hours."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > MAX_EXTENDED_HEADER:
            raise InvalidPublish(
                f"the tarball has an extended header of {self.size} bytes "
                f"(the limit is {MAX_EXTENDED_HEADER})"
            )
        if self.type not in _PAX_TYPES:
            return tarfile.TarInfo._proc_member(self, archive)  # type: ignore[attr-defined,no-any-return]
        stream = archive.fileobj
        raw = bytes(stream.read(-(-self.size // 512) * 512))
        _check_pax_records(raw[: self.size])
        archive.fileobj = _Replay(raw, stream)  # type: ignore[assignment]
        try:
            return tarfile.TarInfo._proc_member(self, archive)  # type: ignore[attr-defined,no-any-return]
        finally:
            archive.fileobj = stream


def _check_member(member: tarfile.TarInfo) -> list[str]:
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidPublish(f"the tarball has an absolute path: {member.name[:200]!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPublish(f"the tarball has a path with '..': {member.name[:200]!r}")
    if "\x00" in name:
        raise InvalidPublish("the tarball has a path with a NUL byte")
    if member.issym() or member.islnk():
        raise InvalidPublish(f"the tarball has a link, which npm never packs: {name[:200]!r}")
    if not (member.isfile() or member.isdir()):
        raise InvalidPublish(f"the tarball has a special file: {name[:200]!r}")
    return parts


def inspect_tarball(data: bytes, *, max_unpacked: int) -> TarballInfo:
    """Read ``package.json`` and the file count and size out of an npm tarball.

    Raises :class:`InvalidPublish` for anything that is not a gzip-compressed tar of a
    package: not gzip, truncated, over ``max_unpacked`` bytes unpacked, unsafe entries, no
    ``package.json`` at the package root, or one that is not a JSON object.
    """
    if data[:2] != b"\x1f\x8b":
        raise InvalidPublish("the attachment is not a gzip-compressed tarball")
    package_json: dict[str, Any] | None = None
    file_count = 0
    unpacked = 0
    shrinkwrap = False
    stream = io.BufferedReader(_BoundedGunzip(data, max_unpacked), buffer_size=1 << 16)
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_CheckedTarInfo) as archive:
            for member in archive:
                parts = _check_member(member)
                if not member.isfile():
                    continue
                file_count += 1
                unpacked += member.size
                if len(parts) != 2:
                    continue
                if parts[1] == "npm-shrinkwrap.json":
                    shrinkwrap = True
                if parts[1] != "package.json" or package_json is not None:
                    continue
                if member.size > MAX_PACKAGE_JSON:
                    raise InvalidPublish(
                        f"package.json is larger than {MAX_PACKAGE_JSON // (1024 * 1024)} MiB"
                    )
                handle = archive.extractfile(member)
                assert handle is not None
                package_json = _parse_package_json(handle.read())
        # tarfile stops at the end-of-archive block; read the gzip stream to its end so a
        # missing trailer or a bad CRC is refused here, not by npm at install time.
        while stream.read(1 << 16):
            pass
    # ValueError: tarfile's GNU sparse handling calls int() on header fields unchecked.
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise InvalidPublish(f"the attachment is not a valid tarball: {exc}") from None
    if package_json is None:
        raise InvalidPublish("the tarball has no package.json at its root (package/package.json)")
    return TarballInfo(package_json, file_count, unpacked, shrinkwrap)


def _parse_package_json(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPublish(f"the tarball's package.json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidPublish("the tarball's package.json is not a JSON object")
    return value
