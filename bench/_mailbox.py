"""The actors' mailbox beside anyio's memory object stream, the library the design named
for it: fire-and-forget sends drained in batches (how writes reach the actors), and a
request with its reply (how reads do). Same loop, same sizes, one after the other."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import anyio

from actors.runtime import Mailbox

BATCH = 512
BOUND = 10_000


async def _mailbox_tells(n: int) -> float:
    box: Mailbox[int] = Mailbox("bench", BOUND)

    async def drain() -> None:
        while await box.receive_batch(BATCH):
            pass
    task = asyncio.create_task(drain())
    began = time.perf_counter()
    for i in range(n):
        await box.send(i)
    box.close()
    await task
    return time.perf_counter() - began


async def _stream_tells(n: int) -> float:
    send, receive = anyio.create_memory_object_stream[int](BOUND)

    async def drain() -> None:
        async with receive:
            while True:
                try:
                    await receive.receive()
                except anyio.EndOfStream:
                    return
                for _ in range(BATCH - 1):  # the rest of a batch, as the mailbox takes it
                    try:
                        receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
    task = asyncio.create_task(drain())
    began = time.perf_counter()
    async with send:
        for i in range(n):
            await send.send(i)
    await task
    return time.perf_counter() - began


async def _mailbox_calls(n: int) -> float:
    box: Mailbox[asyncio.Future[int]] = Mailbox("bench", BOUND)

    async def serve() -> None:
        while batch := await box.receive_batch(BATCH):
            for future in batch:
                future.set_result(1)
    task = asyncio.create_task(serve())
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    for _ in range(n):
        future: asyncio.Future[int] = loop.create_future()
        await box.send(future)
        await future
    elapsed = time.perf_counter() - began
    box.close()
    await task
    return elapsed


async def _stream_calls(n: int) -> float:
    send, receive = anyio.create_memory_object_stream[asyncio.Future[int]](BOUND)

    async def serve() -> None:
        async with receive:
            async for future in receive:
                future.set_result(1)
    task = asyncio.create_task(serve())
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    async with send:
        for _ in range(n):
            future: asyncio.Future[int] = loop.create_future()
            await send.send(future)
            await future
        elapsed = time.perf_counter() - began
    await task
    return elapsed


async def mailbox_vs_stream(tells: int, calls: int, rounds: int = 5) -> list[dict[str, Any]]:
    """Messages per second (tells) and µs per request/reply (calls), median of rounds."""
    rows: list[dict[str, Any]] = []
    for name, tell, call in (("actors.runtime.Mailbox", _mailbox_tells, _mailbox_calls),
                             ("anyio memory object stream", _stream_tells, _stream_calls)):
        tell_s = statistics.median([await tell(tells) for _ in range(rounds)])
        call_s = statistics.median([await call(calls) for _ in range(rounds)])
        rows.append({"queue": name, "tells_per_s": tells / tell_s,
                     "call_round_trip": call_s / calls})
    return rows
