"""bench.soak in small: a real mitmdump with the addon, every kind of call of the soak, one row each.

The RSS verdict needs hundreds of thousands of calls (`python -m bench.soak`);
here the soak's own machinery runs end to end on a few, and its verdict is
checked on made-up samples, so that it is known to fail on a leak.
"""

from __future__ import annotations

from bench.soak import MIX, Sample, Soak, memory_verdict

QUICK_CALLS = 1500  # enough for the tight key (rpm 60) to be refused: 79 of its calls


def test_soak_core_gives_every_call_exactly_one_row():
    soak = Soak(QUICK_CALLS, clients=4, db=None, sample_s=0.5, max_seconds=300)
    try:
        result = soak.run()
    finally:
        soak.cleanup()
    assert result.errors == {} and result.answered == QUICK_CALLS
    assert (result.rows, result.distinct_paths) == (QUICK_CALLS, QUICK_CALLS)
    assert result.problems == []  # every kind got only the statuses it must, the rpm limit held
    assert set(result.statuses) == {kind.name for kind in MIX}
    assert result.statuses["over-limit"].get("429", 0) > 0
    assert len(result.samples) >= 3 and all(s.rss > 50 << 20 for s in result.samples)  # the proxy's, sampled
    assert result.memory["verdict"] == "too short" and result.memory["rss_end"] == result.samples[-1].rss
    assert result.exit_status == 0


def _samples(calls: int, bytes_per_call: float, base: int = 100 << 20) -> list[Sample]:
    step = calls // 100
    return [Sample(i, n, base + int(n * bytes_per_call)) for i, n in enumerate(range(0, calls + 1, step))]


def test_verdict_fails_a_leak_like_issue_8s():
    verdict = memory_verdict(_samples(300_000, 280), 300_000)
    assert verdict["verdict"] == "GROWS"
    assert 270 < verdict["last_bytes_per_call"] < 290


def test_verdict_passes_memory_that_levelled_off_after_warm_up():
    samples = [Sample(s.seconds, s.answered, min(s.rss, (100 << 20) + 8_000_000))
               for s in _samples(300_000, 280)]  # grew 8 MB in the first third, then flat
    samples[-1].rss += 1_500_000  # noise within the 2 MB floor
    verdict = memory_verdict(samples, 300_000)
    assert verdict["verdict"] == "LEVELS OFF"


def test_verdict_on_few_calls_does_not_judge():
    assert memory_verdict(_samples(20_000, 280), 20_000)["verdict"] == "too short"
