"""The adaptive rate limiter: deterministic behaviour on a fake clock, a simulated token-bucket
quota, and the real Titan client against the emulator's quota."""

from __future__ import annotations

import heapq
import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgrag.embedders import TitanEmbedder
from imgrag.ratelimit import AdaptiveRateLimiter
from tests.conftest import COLOURS, image_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: FakeClock, **kwargs) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(clock=clock, sleep=clock.sleep, **kwargs)


def test_unlimited_until_a_throttle_then_paced_at_a_share_of_what_was_accepted():
    clock = FakeClock()
    lim = limiter(clock, decrease=0.8, initial_window=100)
    for _ in range(20):  # 20 calls answered within one second, all accepted
        lim.finished(lim.acquire(), "ok")
        clock.now += 0.01
    assert lim.rate is None and clock.now == pytest.approx(0.2)

    lim.finished(lim.acquire(), "throttled")

    assert lim.rate == pytest.approx(0.8 * 20)
    first = lim.acquire()
    second = lim.acquire()
    assert second - first == pytest.approx(1 / lim.rate)


def test_a_volley_of_throttles_for_requests_sent_before_the_cut_cuts_once():
    clock = FakeClock()
    lim = limiter(clock, initial_window=10)
    sent = [lim.acquire() for _ in range(10)]
    clock.now += 0.001

    lim.finished(sent[0], "throttled")
    cut = lim.rate
    assert cut == pytest.approx(0.9 * 9)  # nothing answered yet: the 9 in flight
    for sent_at in sent[1:6]:
        lim.finished(sent_at, "throttled")

    assert lim.rate == cut
    late = lim.acquire()
    lim.finished(late, "throttled")  # sent after the cut: cuts again, from the 4 in flight
    assert lim.rate == pytest.approx(0.9 * 4)


def test_slow_start_window_holds_the_opening_volley_until_answers_come_back():
    clock = FakeClock()
    lim = limiter(clock, initial_window=3)
    sent = [lim.acquire() for _ in range(3)]

    assert lim.reserve() > 0  # a 4th caller waits
    lim.finished(sent[0], "ok")
    assert lim.reserve() == 0.0  # one answer back: one more, and the window grew by one
    assert lim.reserve() == 0.0
    assert lim.reserve() > 0


def test_rate_grows_fast_after_the_first_cut_then_linearly_after_a_measured_cut():
    clock = FakeClock()
    lim = limiter(clock, initial_window=2, slow_start_calls=4, recovery_calls=10)
    lim.finished(lim.acquire(), "throttled")  # nothing answered yet: rate from 1 in flight
    assert lim.rate == pytest.approx(0.5)  # floor: min_rate

    for _ in range(8):
        lim.finished(lim.acquire(), "ok")
    assert lim.rate == pytest.approx(0.5 * 1.25**8)  # slow start: x1.25 per success

    clock.now += 1.0  # nothing answered in the last second any more
    before = lim.rate
    lim.finished(lim.acquire(), "throttled")  # follows successes: the measured cut
    after = lim.rate
    for _ in range(10):
        lim.finished(lim.acquire(), "ok")
    assert lim.rate == pytest.approx(after + (min(before, 1.0) - after))


def simulate(quota: float, latency: float, workers: int, items: int) -> tuple[float, float]:
    """Workers retrying throttled calls through one limiter against a token-bucket quota
    (burst = one second of quota, 429s answered at once). Returns (calls/s achieved,
    share of calls throttled). Deterministic: a discrete-event simulation on a fake clock."""
    clock = FakeClock()
    lim = AdaptiveRateLimiter(clock=clock, sleep=clock.sleep)
    tokens, refilled = quota, 0.0
    events: list[tuple[float, int, str, float]] = []
    order = itertools.count()

    def at(time: float, kind: str, sent: float = 0.0) -> None:
        heapq.heappush(events, (time, next(order), kind, sent))

    for _ in range(workers):
        at(0.0, "next")
    todo, calls, throttled, finished_at = items, 0, 0, 0.0
    while events:
        clock.now, _, kind, sent = heapq.heappop(events)
        if kind in ("next", "retry"):
            if kind == "next":
                if todo == 0:
                    continue
                todo -= 1
            wait = lim.reserve()
            at(clock.now + wait, "retry" if wait else "send")
        elif kind == "send":
            calls += 1
            tokens = min(quota, tokens + (clock.now - refilled) * quota)
            refilled = clock.now
            if tokens >= 1:
                tokens -= 1
                at(clock.now + latency, "ok", clock.now)
            else:
                at(clock.now + 0.002, "throttled", clock.now)
        else:
            lim.finished(sent, kind)  # type: ignore[arg-type]
            if kind == "ok":
                finished_at = clock.now
                at(clock.now, "next")
            else:
                throttled += 1
                at(clock.now, "retry")
    return items / finished_at, throttled / calls


@pytest.mark.parametrize("quota", [5, 20, 100])
@pytest.mark.parametrize("workers", [16, 64])
def test_shared_limiter_reaches_90_percent_of_a_quota_with_at_most_5_percent_throttled(
    quota, workers
):
    rate, throttled = simulate(quota, latency=0.1, workers=workers, items=quota * 60)

    assert rate >= 0.9 * quota
    assert throttled <= 0.05


def test_titan_client_learns_the_emulator_quota_and_embeds_everything(bedrock):
    quota = 10
    bedrock.set_quota(quota, burst=2)
    bedrock.latency_ms = 20
    images = [image_bytes(COLOURS["red"], seed=i) for i in range(40)]
    embedder = TitanEmbedder(1024, max_attempts=8)

    with ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(lambda img: embedder.embed_images([img])[0], images))

    stats = bedrock.stats

    assert len(vectors) == len(images) and all(len(v) == 1024 for v in vectors)
    assert stats.image_calls == len(images)
    # 16 threads at 20 ms could send ~800 calls/s: without pacing nearly all would be 429s
    assert stats.throttled <= 12
    assert embedder.limiter.rate is not None and embedder.limiter.rate <= 2 * quota
