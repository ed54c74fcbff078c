"""The shared read behind ``seq(fresh=True)`` on PostgreSQL: one round trip for many
callers, and never an answer that was read before a caller asked."""

from __future__ import annotations

import asyncio

import pytest

from entrepot.storage.postgres import _Coalesced


class Reads:
    """A database stand-in: each read returns the number of reads started so far, and
    finishes only when the test lets it."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> int:
        self.started += 1
        started = self.started
        await self.release.wait()
        self.release.clear()
        if self.fail is not None:
            raise self.fail
        return started


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_callers_during_a_read_share_the_next_one() -> None:
    async def body() -> None:
        reads = Reads()
        read = _Coalesced(reads)
        first = asyncio.create_task(read())
        await settle()
        assert reads.started == 1
        # These ask after read 1 was sent: its answer may predate them, so they get read 2.
        later = [asyncio.create_task(read()) for _ in range(5)]
        await settle()
        assert reads.started == 1
        reads.release.set()
        await settle()
        assert first.done() and first.result() == 1
        assert reads.started == 2
        reads.release.set()
        assert await asyncio.gather(*later) == [2] * 5
        await settle()
        assert reads.started == 2  # nobody waiting: no read

    asyncio.run(body())


def test_a_failed_read_reaches_its_callers_and_the_next_call_reads_again() -> None:
    async def body() -> None:
        reads = Reads()
        read = _Coalesced(reads)
        reads.fail = ConnectionError("down")
        reads.release.set()
        with pytest.raises(ConnectionError, match="down"):
            await read()
        reads.fail = None
        reads.release.set()
        assert await read() == 2

    asyncio.run(body())


def test_a_caller_that_gives_up_does_not_cancel_the_others_read() -> None:
    async def body() -> None:
        reads = Reads()
        read = _Coalesced(reads)
        quitter = asyncio.create_task(read())
        stayer = asyncio.create_task(read())
        await settle()
        quitter.cancel()
        await settle()
        reads.release.set()
        assert await stayer == 1
        assert quitter.cancelled()

    asyncio.run(body())
