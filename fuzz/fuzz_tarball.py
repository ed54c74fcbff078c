"""Coverage-guided fuzzing of the tarball reader with atheris (libFuzzer); not part of pytest.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_tarball.py -runs=20000 -max_len=65536

The one property: whatever the bytes, ``inspect_tarball`` returns a ``TarballInfo`` or raises
``InvalidPublish``; any other exception is a crash that libFuzzer reports and saves as
``crash-<sha1>`` (replay it with ``fuzz/fuzz_tarball.py crash-<sha1>``).

Random bytes rarely get past gzip, so the inputs are mutated *decompressed* and compressed
again (a custom mutator), starting from seeds that are real npm-style tarballs: plain, with
pax headers (long paths, non-ASCII names), with GNU long names, and empty. Decompression is
bounded to 1 MiB, so each run stays small in time and memory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import sys
import zlib

import atheris  # type: ignore[import-untyped]

# tarfile too: most of the parsing the reader relies on is there.
with atheris.instrument_imports():
    import tarfile

    from entrepot.errors import InvalidPublish
    from entrepot.npm.tarball import inspect_tarball

LIMIT = 1024 * 1024
PACKAGE_JSON = b'{"name":"demo","version":"1.0.0","scripts":{"install":"x"}}'


def _tar(files: dict[str, bytes], tar_format: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000.25 if tar_format == tarfile.PAX_FORMAT else 0
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


SEEDS = [
    _tar({"package/package.json": PACKAGE_JSON, "package/index.js": b"1"}, tarfile.GNU_FORMAT),
    _tar(
        {
            "package/package.json": PACKAGE_JSON,
            "package/" + "long/" * 30 + "caf\u00e9.js": b"x",
            "package/npm-shrinkwrap.json": b"{}",
        },
        tarfile.PAX_FORMAT,
    ),
    _tar({"package/" + "n" * 150 + ".js": b"x", "package/package.json": b"[]"}, tarfile.GNU_FORMAT),
    _tar({}, tarfile.USTAR_FORMAT),
]


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(InvalidPublish):
        inspect_tarball(data, max_unpacked=LIMIT)


def _inflate(data: bytes) -> bytes:
    try:
        inflate = zlib.decompressobj(wbits=31)
        return inflate.decompress(data, LIMIT)
    except zlib.error:
        return SEEDS[len(data) % len(SEEDS)]


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Mutate the tar inside the gzip, then compress it again (a bad gzip now and then)."""
    if seed % 20 == 0:
        return bytes(atheris.Mutate(data, max_size))
    tar = _inflate(data) if data[:2] == b"\x1f\x8b" else SEEDS[seed % len(SEEDS)]
    mutated = atheris.Mutate(tar, max(len(tar) * 2, 1024))
    return gzip.compress(mutated, compresslevel=1, mtime=0)[:max_size]


def main() -> None:
    argv = list(sys.argv)
    corpus = [a for a in argv[1:] if not a.startswith("-")]
    if not corpus:
        # No corpus folder given: start from the seeds, through a temporary one.
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp(prefix="fuzz-tarball-"))
        for i, seed in enumerate(SEEDS):
            (folder / f"seed-{i}").write_bytes(gzip.compress(seed, mtime=0))
        argv.append(str(folder))
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
