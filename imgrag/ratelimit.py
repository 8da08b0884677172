"""A request-rate limiter that learns a service's quota from its throttling answers (AIMD).

One instance is shared by every thread that calls one model during a run.

- Start: no rate limit, but like TCP's slow start at most ``initial_window`` requests plus
  one per success so far are in flight, so the opening volley into an unknown quota is small.
- A throttled answer cuts the rate to ``decrease`` times the lower of the current rate and what
  the service just accepted (successes answered in the last ``window`` seconds plus requests
  in flight); the next send waits one interval at the new rate. A throttle answering a request
  sent before the last cut does not cut again: a volley of 429s counts once.
- After the first cut, which may only know the opening volley, the rate grows fast (by
  1/``slow_start_calls`` per success) until a cut that follows a success; from then on each
  success adds a constant step, so the share lost at a cut returns after ``recovery_calls``
  successes, and the rate keeps probing upwards until the next throttle.
- Sends are spaced evenly at the current rate (no bursts).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

Outcome = Literal["ok", "throttled", "error"]
_WINDOW_POLL = 0.01  # seconds; how often a caller held by the slow-start window re-checks


class AdaptiveRateLimiter:
    """Paces requests at a rate learnt from throttling; thread-safe."""

    def __init__(
        self,
        *,
        decrease: float = 0.9,
        recovery_calls: int = 60,
        slow_start_calls: int = 8,
        initial_window: int = 8,
        min_rate: float = 0.5,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < decrease < 1 or min(recovery_calls, slow_start_calls, initial_window) < 1:
            raise ValueError("need 0 < decrease < 1 and call counts >= 1")
        if min_rate <= 0 or window <= 0:
            raise ValueError("need min_rate > 0 and window > 0")
        self.decrease = decrease
        self.recovery_calls = recovery_calls
        self.slow_start_calls = slow_start_calls
        self.initial_window = initial_window
        self.min_rate = min_rate
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rate: float | None = None  # requests per second; None: not limited (yet)
        self._step = 0.0  # added to the rate per success, after slow start
        self._slow_start = True
        self._ok_since_cut = 0
        self._next_send = 0.0
        self._last_cut = float("-inf")
        self._inflight = 0
        self._successes = 0
        self._answered: deque[float] = deque()  # times of accepted answers within the window

    @property
    def rate(self) -> float | None:
        """The current rate limit in requests per second (None until the first throttle)."""
        return self._rate

    def reserve(self) -> float:
        """Take a send slot now and return 0.0, or return the seconds to wait before retrying."""
        with self._lock:
            now = self._clock()
            if self._rate is None and self._inflight >= self.initial_window + self._successes:
                return _WINDOW_POLL
            if self._rate is not None:
                if self._next_send > now:
                    return self._next_send - now
                self._next_send = max(self._next_send, now) + 1.0 / self._rate
            self._inflight += 1
            return 0.0

    def acquire(self) -> float:
        """Block until this caller may send; returns the send time, to pass to ``finished``.

        Waiting callers re-check after sleeping, so a cut applies to them at once.
        """
        while (wait := self.reserve()) > 0:
            self._sleep(wait)
        return self._clock()

    def finished(self, sent_at: float, outcome: Outcome) -> None:
        """Report the answer to a request sent at ``sent_at`` (every acquire needs one)."""
        with self._lock:
            now = self._clock()
            self._inflight -= 1
            if outcome == "ok":
                self._answered.append(now)
                self._forget_before(now - self.window)
                self._successes += 1
                self._ok_since_cut += 1
                if self._rate is not None and self._slow_start:
                    self._rate += self._rate / self.slow_start_calls
                elif self._rate is not None:
                    self._rate += self._step
            elif outcome == "throttled" and sent_at >= self._last_cut:
                self._cut(now)

    def _forget_before(self, horizon: float) -> None:
        while self._answered and self._answered[0] < horizon:
            self._answered.popleft()

    def _cut(self, now: float) -> None:
        self._forget_before(now - self.window)
        accepted = len(self._answered) / self.window + self._inflight
        current = accepted if self._rate is None else min(self._rate, accepted)
        new = max(self.min_rate, self.decrease * current)
        if self._rate is not None and self._ok_since_cut:
            self._slow_start = False  # this cut measured the rate the service accepts
        self._step = max(current - new, self.min_rate * (1 - self.decrease)) / self.recovery_calls
        self._rate = new
        self._ok_since_cut = 0
        self._last_cut = now
        self._next_send = max(self._next_send, now + 1.0 / new)
