"""Tests for entrepot.npm.tarball: reading a published tarball without trusting it."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
import tracemalloc
import zlib
from base64 import b64encode

import orjson
import pytest

from entrepot.errors import InvalidPublish
from entrepot.npm.tarball import MAX_PACKAGE_JSON, digests, inspect_tarball

LIMIT = 10 * 1024 * 1024
PACKAGE_JSON = orjson.dumps({"name": "demo", "version": "1.0.0"})


def _member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info, data


def make_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """An uncompressed tar of the given members, in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def make_tgz(files: dict[str, bytes]) -> bytes:
    """A gzip-compressed tar with one regular file per entry, as ``npm pack`` makes."""
    return gzip.compress(make_tar([_member(name, data) for name, data in files.items()]), mtime=0)


def tgz_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    return gzip.compress(make_tar(members), mtime=0)


def valid_tgz() -> bytes:
    return make_tgz(
        {"package/package.json": PACKAGE_JSON, "package/index.js": b"module.exports = 1\n"}
    )


def test_valid_tarball_is_read() -> None:
    info = inspect_tarball(valid_tgz(), max_unpacked=LIMIT)
    assert info.package_json == {"name": "demo", "version": "1.0.0"}
    assert info.file_count == 2
    assert info.unpacked_size == len(PACKAGE_JSON) + len(b"module.exports = 1\n")
    assert info.has_shrinkwrap is False


def test_file_count_and_unpacked_size_count_regular_files_only() -> None:
    data = tgz_of(
        [
            _member("package/", kind=tarfile.DIRTYPE),
            _member("package/package.json", PACKAGE_JSON),
            _member("package/lib/", kind=tarfile.DIRTYPE),
            _member("package/lib/a.js", b"a" * 1000),
            _member("package/lib/b.js", b""),
            _member("package/README.md", b"# demo\n"),
        ]
    )
    info = inspect_tarball(data, max_unpacked=LIMIT)
    assert info.file_count == 4
    assert info.unpacked_size == len(PACKAGE_JSON) + 1000 + 0 + len(b"# demo\n")


def test_root_folder_need_not_be_called_package() -> None:
    # GitHub tarballs and some tools use another top-level folder name; npm accepts them.
    data = make_tgz({"demo-1.0.0/package.json": PACKAGE_JSON})
    assert inspect_tarball(data, max_unpacked=LIMIT).package_json["name"] == "demo"


def test_leading_dot_slash_is_accepted() -> None:
    data = make_tgz({"./package/package.json": PACKAGE_JSON})
    assert inspect_tarball(data, max_unpacked=LIMIT).package_json["version"] == "1.0.0"


def test_shrinkwrap_is_detected_at_the_package_root_only() -> None:
    at_root = make_tgz({"package/package.json": PACKAGE_JSON, "package/npm-shrinkwrap.json": b"{}"})
    deeper = make_tgz(
        {"package/package.json": PACKAGE_JSON, "package/sub/npm-shrinkwrap.json": b"{}"}
    )
    assert inspect_tarball(at_root, max_unpacked=LIMIT).has_shrinkwrap is True
    assert inspect_tarball(deeper, max_unpacked=LIMIT).has_shrinkwrap is False


def test_package_json_at_a_deeper_level_is_ignored() -> None:
    nested = orjson.dumps({"name": "impostor", "version": "9.9.9"})
    data = make_tgz(
        {
            "package/node_modules/impostor/package.json": nested,
            "package/package.json": PACKAGE_JSON,
            "package/lib/package.json": nested,
        }
    )
    assert inspect_tarball(data, max_unpacked=LIMIT).package_json["name"] == "demo"


def test_only_a_deeper_package_json_is_no_package_json() -> None:
    data = make_tgz({"package/lib/package.json": PACKAGE_JSON, "package.json": PACKAGE_JSON})
    with pytest.raises(InvalidPublish, match=r"no package\.json"):
        inspect_tarball(data, max_unpacked=LIMIT)


def test_no_package_json() -> None:
    with pytest.raises(InvalidPublish, match=r"no package\.json"):
        inspect_tarball(make_tgz({"package/index.js": b"x"}), max_unpacked=LIMIT)


def test_empty_tar_has_no_package_json() -> None:
    with pytest.raises(InvalidPublish, match=r"no package\.json"):
        inspect_tarball(tgz_of([]), max_unpacked=LIMIT)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"\xff\xfe{}", b'{"name": "demo",}'],
    ids=["broken", "empty", "not-utf8", "trailing-comma"],
)
def test_package_json_not_json(raw: bytes) -> None:
    with pytest.raises(InvalidPublish, match="not valid JSON"):
        inspect_tarball(make_tgz({"package/package.json": raw}), max_unpacked=LIMIT)


@pytest.mark.parametrize("raw", [b"[]", b'"demo"', b"42", b"null", b"true"])
def test_package_json_not_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidPublish, match="not a JSON object"):
        inspect_tarball(make_tgz({"package/package.json": raw}), max_unpacked=LIMIT)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_package_json_nested_10000_deep_is_refused_cleanly(opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    raw = opening * 10_000 + b"1" + closing * 10_000
    if opening == b"[":
        raw = b'{"name":"demo","x":' + raw + b"}"
    with pytest.raises(InvalidPublish, match="not valid JSON"):
        inspect_tarball(make_tgz({"package/package.json": raw}), max_unpacked=LIMIT)


def test_package_json_over_the_size_cap_is_refused_before_reading() -> None:
    raw = b'{"name":"demo","pad":"' + b" " * MAX_PACKAGE_JSON + b'"}'
    with pytest.raises(InvalidPublish, match="larger than"):
        inspect_tarball(make_tgz({"package/package.json": raw}), max_unpacked=2 * LIMIT)


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04zipfile", make_tar([_member("package/package.json", PACKAGE_JSON)])],
    ids=["empty", "zip", "plain-tar"],
)
def test_not_gzip(data: bytes) -> None:
    with pytest.raises(InvalidPublish, match="not a gzip"):
        inspect_tarball(data, max_unpacked=LIMIT)


def test_gzip_of_something_that_is_not_a_tar() -> None:
    with pytest.raises(InvalidPublish):
        inspect_tarball(gzip.compress(b"hello, this is not a tar archive" * 40), max_unpacked=LIMIT)


def test_corrupt_gzip_stream() -> None:
    data = bytearray(valid_tgz())
    for i in range(12, len(data) - 8):
        data[i] ^= 0x5A
    with pytest.raises(InvalidPublish):
        inspect_tarball(bytes(data), max_unpacked=LIMIT)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_gzip(keep: float) -> None:
    # Incompressible content, so every cut falls inside the file data.
    data = make_tgz(
        {
            "package/package.json": PACKAGE_JSON,
            "package/blob.bin": random.Random(0).randbytes(128_000),
        }
    )
    with pytest.raises(InvalidPublish):
        inspect_tarball(data[: int(len(data) * keep)], max_unpacked=LIMIT)


def test_gzip_missing_only_its_trailer_is_refused() -> None:
    # Everything of the tar is there, but the gzip stream ends early (no CRC-32 and size):
    # npm's extraction fails with "unexpected end of file", so the registry must refuse it.
    data = valid_tgz()
    with pytest.raises(InvalidPublish):
        inspect_tarball(data[:-8], max_unpacked=LIMIT)


def test_gzip_with_a_wrong_crc_is_refused() -> None:
    data = bytearray(valid_tgz())
    data[-8] ^= 0xFF
    with pytest.raises(InvalidPublish):
        inspect_tarball(bytes(data), max_unpacked=LIMIT)


def _padded(size: int) -> int:
    return -(-size // 512) * 512


def _zeros_bomb(unpacked: int) -> bytes:
    """A tar whose one file is ``unpacked`` zero bytes, gzipped without ever holding it whole."""
    header = tarfile.TarInfo("package/zeros.bin")
    header.size = unpacked
    # package.json's header and padded data, without the tar's end blocks, then the header.
    head = make_tar([_member("package/package.json", PACKAGE_JSON)])[
        : 512 + _padded(len(PACKAGE_JSON))
    ]
    head += header.tobuf(format=tarfile.GNU_FORMAT)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [deflate.compress(head)]
    chunk = bytes(1 << 20)
    left = unpacked
    while left > 0:
        parts.append(deflate.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(deflate.compress(bytes(_padded(unpacked) - unpacked + 1024)))
    parts.append(deflate.flush())
    return b"".join(parts)


def test_small_gzip_bomb_is_refused() -> None:
    bomb = _zeros_bomb(2 * 1024 * 1024)
    assert len(bomb) < 10_000
    with pytest.raises(InvalidPublish, match="more than 1000000 bytes"):
        inspect_tarball(bomb, max_unpacked=1_000_000)


def test_large_gzip_bomb_is_refused_in_bounded_memory() -> None:
    bomb = _zeros_bomb(256 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(InvalidPublish, match="more than 1000000 bytes"):
            inspect_tarball(bomb, max_unpacked=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decompression works in 64 KiB steps and stops at the limit, whatever the bomb's size.
    assert peak < 4 * 1024 * 1024


def test_bomb_just_under_the_limit_is_accepted() -> None:
    info = inspect_tarball(_zeros_bomb(500_000), max_unpacked=1_000_000)
    assert info.unpacked_size == 500_000 + len(PACKAGE_JSON)


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "/package/package.json", "C:/Windows/evil.js", "c:\\evil.js"],
)
def test_absolute_paths_are_refused(name: str) -> None:
    data = tgz_of([_member("package/package.json", PACKAGE_JSON), _member(name, b"x")])
    with pytest.raises(InvalidPublish, match="absolute path"):
        inspect_tarball(data, max_unpacked=LIMIT)


@pytest.mark.parametrize(
    "name",
    ["package/../../evil.js", "../evil.js", "package/..", "package\\..\\..\\evil.js", "a/./../b"],
)
def test_dot_dot_entries_are_refused(name: str) -> None:
    data = tgz_of([_member("package/package.json", PACKAGE_JSON), _member(name, b"x")])
    with pytest.raises(InvalidPublish, match=r"'\.\.'"):
        inspect_tarball(data, max_unpacked=LIMIT)


def test_symlinks_are_refused() -> None:
    link, _ = _member("package/passwd", kind=tarfile.SYMTYPE)
    link.linkname = "/etc/passwd"
    data = tgz_of([_member("package/package.json", PACKAGE_JSON), (link, b"")])
    with pytest.raises(InvalidPublish, match="link"):
        inspect_tarball(data, max_unpacked=LIMIT)


def test_hard_links_are_refused() -> None:
    link, _ = _member("package/copy.json", kind=tarfile.LNKTYPE)
    link.linkname = "package/package.json"
    data = tgz_of([_member("package/package.json", PACKAGE_JSON), (link, b"")])
    with pytest.raises(InvalidPublish, match="link"):
        inspect_tarball(data, max_unpacked=LIMIT)


@pytest.mark.parametrize(
    "kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE], ids=["char", "block", "fifo"]
)
def test_device_files_and_fifos_are_refused(kind: bytes) -> None:
    device, _ = _member("package/dev", kind=kind)
    device.devmajor, device.devminor = 1, 3
    data = tgz_of([_member("package/package.json", PACKAGE_JSON), (device, b"")])
    with pytest.raises(InvalidPublish, match="special file"):
        inspect_tarball(data, max_unpacked=LIMIT)


def test_unsafe_entry_after_package_json_is_still_refused() -> None:
    # Reading stops at nothing: an entry at the very end is checked like the first.
    members = [_member("package/package.json", PACKAGE_JSON)]
    members += [_member(f"package/f{i}.js", b"x") for i in range(50)]
    members.append(_member("package/../../../tmp/evil", b"x"))
    with pytest.raises(InvalidPublish):
        inspect_tarball(tgz_of(members), max_unpacked=LIMIT)


def test_digests() -> None:
    data = valid_tgz()
    sums = digests(data)
    sha512 = hashlib.sha512(data).digest()
    assert sums.sha512_hex == sha512.hex()
    assert sums.integrity == "sha512-" + b64encode(sha512).decode()
    assert sums.shasum == hashlib.sha1(data, usedforsecurity=False).hexdigest()


def test_digests_of_known_bytes() -> None:
    sums = digests(b"")
    assert sums.shasum == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert sums.integrity.startswith("sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8")
    assert len(sums.sha512_hex) == 128
