"""The control plane's short answer cache: identical requests within the TTL share one
computation, concurrent ones wait for the running one, no-cache and a clear compute anew,
a failure is not kept."""

from __future__ import annotations

import asyncio

import pytest

from llm_proxy.control.answers import AnswerCache


def test_identical_requests_share_one_answer_within_the_ttl_only() -> None:
    async def run() -> None:
        calls = []

        async def compute() -> int:
            calls.append(1)
            await asyncio.sleep(0.05)
            return len(calls)

        cache = AnswerCache(ttl=0.3)
        first = await asyncio.gather(*(cache.get(("a",), compute) for _ in range(5)))
        assert first == [1] * 5 and len(calls) == 1  # concurrent viewers: one computation
        assert await cache.get(("a",), compute) == 1  # within the TTL
        assert await cache.get(("b",), compute) == 2  # another query
        assert await cache.get(("a",), compute, fresh=True) == 3  # Cache-Control: no-cache
        await asyncio.sleep(0.35)
        assert await cache.get(("a",), compute) == 4  # older than the TTL
        cache.clear()
        assert await cache.get(("a",), compute) == 5

    asyncio.run(run())


def test_a_failed_computation_is_not_kept() -> None:
    async def run() -> None:
        answers = iter([ValueError("database down"), 7])

        async def compute() -> int:
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        cache = AnswerCache(ttl=5)
        with pytest.raises(ValueError):
            await cache.get(("a",), compute)
        assert await cache.get(("a",), compute) == 7

    asyncio.run(run())
