"""Budgets in Redis, shared by every gatewayd instance: one Lua call per decision.

The script runs GCRA (gatewayd.ratelimit.gcra is its reference) on Redis's
own clock (`TIME`), so instances with skewed clocks still share one budget,
and it checks every limit of a request before it takes from any. A key's
budgets sit under one hash tag, `{scope:identity}`, so on Redis Cluster the
script's keys are always in one slot.

Each budget key expires when its budget is whole again; concurrency slots
are a sorted set of leases scored by their expiry, so a slot held by an
instance killed with -9 frees itself after the lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from gatewayd.errors import RateLimiterUnavailable
from gatewayd.ratelimit.backend import Answer, Ask, Limit
from gatewayd.ratelimit.gcra import Rate, Take
from gatewayd.redis_client import RedisClient, RedisReplyError, RedisUnavailable, Script

# Both scripts: Redis's own clock, a TAT stored to expire when its budget is
# whole again, and a TAT moved by `delta` units (more used, or fewer: given
# back); a TAT in the past is a whole budget, so more used starts from now.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function put(key, tat)
  redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
end

local function move(key, iv, delta)
  if delta == 0 then return end
  local tat = tonumber(redis.call('GET', key) or '0')
  if delta > 0 and tat < now then tat = now end
  tat = tat + delta * iv
  if tat > now then put(key, tat) else redis.call('DEL', key) end
end
"""

# ARGV: requests interval, capacity (0: no limit); tokens interval, capacity,
# cost; max concurrent (0: none), lease id, lease seconds; then requests and
# tokens wanted (1 and cost are needed, more is taken only if it fits: an
# instance's lease, gatewayd.ratelimit.leases) and requests and tokens given
# back first (an earlier lease's leftovers).
# Returns: refused (0 none, 1 requests, 2 tokens, 3 concurrency), retry after
# in microseconds, remaining and reset (microseconds) of requests and of
# tokens, then requests and tokens taken. Lua numbers become integers on the
# way out, hence microseconds.
_ACQUIRE = (
    _PRELUDE
    + """
local r_iv, r_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local t_iv, t_cap, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_c = tonumber(ARGV[6])
local r_want, t_want = tonumber(ARGV[9]), tonumber(ARGV[10])

local function left(tat, iv, cap)
  local l = math.floor((cap * iv - (tat - now)) / iv + 1e-9)
  if l < 0 then l = 0 end
  return l
end

-- At least `need` units, and up to `want` of what fits.
local function take(key, iv, cap, need, want)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local fit = left(tat, iv, cap)
  if fit < need then
    return false, tat + need * iv - cap * iv - now, tat, 0
  end
  if want > fit then want = fit end
  return true, 0, tat + want * iv, want
end

local function us(s) return math.floor(s * 1000000) end

if r_cap > 0 then move(KEYS[1], r_iv, -tonumber(ARGV[11])) end
if t_cap > 0 then move(KEYS[2], t_iv, -tonumber(ARGV[12])) end
if max_c > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_c then
    return {3, 1000000, -1, 0, -1, 0, 0, 0}
  end
end
local r_tat, t_tat, r_got, t_got = now, now, 0, 0
if r_cap > 0 then
  local ok, wait, tat, got = take(KEYS[1], r_iv, r_cap, 1, r_want)
  if not ok then
    return {1, us(wait), left(tat, r_iv, r_cap), us(tat - now), -1, 0, 0, 0}
  end
  r_tat, r_got = tat, got
end
if t_cap > 0 then
  local ok, wait, tat, got = take(KEYS[2], t_iv, t_cap, cost, t_want)
  if not ok then
    local r_left = -1
    if r_cap > 0 then r_left = left(r_tat, r_iv, r_cap) end
    return {2, us(wait), r_left, us(r_tat - now), left(tat, t_iv, t_cap), us(tat - now), 0, 0}
  end
  t_tat, t_got = tat, got
end
if r_cap > 0 then put(KEYS[1], r_tat) end
if t_cap > 0 then put(KEYS[2], t_tat) end
if max_c > 0 then
  local lease_for = tonumber(ARGV[8])
  redis.call('ZADD', KEYS[3], now + lease_for, ARGV[7])
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease_for * 1000))
end
local r_left, t_left = -1, -1
if r_cap > 0 then r_left = left(r_tat, r_iv, r_cap) end
if t_cap > 0 then t_left = left(t_tat, t_iv, t_cap) end
return {0, 0, r_left, us(r_tat - now), t_left, us(t_tat - now), r_got, t_got}
"""
)

# ARGV: tokens interval, tokens more used than reserved (negative: fewer),
# lease id ('' when no slot was held).
_SETTLE = (
    _PRELUDE
    + """
local iv = tonumber(ARGV[1])
if iv > 0 then move(KEYS[1], iv, tonumber(ARGV[2])) end
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
end
return 0
"""
)


class Taken(NamedTuple):
    """Redis's answer, and how much of each budget it took (0 when refused)."""

    answer: Answer
    requests: int
    tokens: int


_REFUSED: tuple[Limit | None, ...] = (None, "requests", "tokens", "concurrency")
_US = 1_000_000
_ACQUIRE_SCRIPT = Script(_ACQUIRE)
_SETTLE_SCRIPT = Script(_SETTLE)


class RedisBackend:
    """Budgets on the Redis `client` talks to; every failure is a RateLimiterUnavailable."""

    name = "redis"

    def __init__(self, client: RedisClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        # A moving average of recent decisions' round trips, for /health/detailed.
        self._latency: float | None = None
        self._healthy = True

    async def warm(self) -> None:
        """Connect before the first decision, so that one does not pay for it."""
        await self._client.warm()

    async def acquire(self, ask: Ask) -> Answer:
        return (await self.take(ask, 1, ask.cost, 0, 0)).answer

    async def take(
        self, ask: Ask, want_requests: int, want_tokens: int, back_requests: int, back_tokens: int
    ) -> Taken:
        """Like acquire, but take up to `want_requests` and `want_tokens` where
        they fit (one and ask.cost are needed), after giving back
        `back_requests` and `back_tokens` taken earlier."""
        requests, tokens = ask.requests, ask.tokens
        args = (
            *_rate_args(requests),
            *_rate_args(tokens),
            ask.cost,
            ask.max_concurrent,
            ask.lease,
            ask.lease_for,
            want_requests,
            want_tokens,
            back_requests,
            back_tokens,
        )
        started = time.perf_counter()
        reply = await self._run(_ACQUIRE_SCRIPT, _keys(ask.key), args)
        self._measure(time.perf_counter() - started)
        refused = _REFUSED[int(reply[0])]
        answer = Answer(
            refused,
            int(reply[1]) / _US,
            _take(requests, refused is None, reply[2], reply[3]),
            _take(tokens, refused is None, reply[4], reply[5]),
        )
        return Taken(answer, int(reply[6]), int(reply[7]))

    async def settle(self, ask: Ask, used: int | None) -> None:
        delta = 0 if used is None or ask.tokens is None else used - ask.cost
        if not delta and not ask.max_concurrent:
            return
        interval = ask.tokens.interval if ask.tokens is not None else 0
        lease = ask.lease if ask.max_concurrent else ""
        await self._run(_SETTLE_SCRIPT, _keys(ask.key)[1:], (interval, delta, lease))

    async def _run(self, script: Script, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await script(self._client, keys, args)
        except TimeoutError:
            self._healthy = False
            raise RateLimiterUnavailable("timeout") from None
        except RedisUnavailable as exc:
            self._healthy = False
            raise RateLimiterUnavailable(exc.kind) from exc
        except RedisReplyError as exc:
            self._healthy = False
            raise RateLimiterUnavailable("error") from exc

    def _measure(self, seconds: float) -> None:
        self._healthy = True
        ms = seconds * 1000
        self._latency = ms if self._latency is None else self._latency * 0.9 + ms * 0.1

    def status(self) -> dict[str, Any]:
        latency = round(self._latency, 3) if self._latency is not None else None
        return {"backend": self.name, "healthy": self._healthy, "latency_ms": latency}


def _keys(key: str) -> tuple[str, str, str]:
    tag = f"gatewayd:rl:{{{key}}}"
    return (f"{tag}:r", f"{tag}:t", f"{tag}:c")


def _rate_args(rate: Rate | None) -> tuple[float, int]:
    return (rate.interval, rate.capacity) if rate is not None else (0.0, 0)


def _take(rate: Rate | None, allowed: bool, remaining: Any, reset: Any) -> Take | None:
    if rate is None or int(remaining) < 0:
        return None
    return Take(allowed, 0.0, 0.0, int(remaining), int(reset) / _US)
