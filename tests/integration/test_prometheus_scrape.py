"""A real Prometheus (Debian's package) scrapes a running gatewayd every second with
contrib's rules loaded; the recording rules and alerts are read back through its
HTTP API, so metric names, labels and rule expressions are proven against each other."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import REQUIRE_SERVICES, FakeUpstream, free_port
from tests.e2e.conftest import DaemonProcess, start_daemon  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "gatewayd.rules.yml"
StartDaemon = Callable[..., Awaitable[DaemonProcess]]
Sample = tuple[dict[str, str], float]


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def query(self, expr: str) -> list[Sample]:
        """An instant query's samples as (labels, value)."""
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", body
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    async def until(
        self, expr: str, holds: Callable[[list[Sample]], bool], within: float = 30.0
    ) -> list[Sample]:
        """Poll `expr` every half second until `holds(samples)`; fail after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        samples = await self.query(expr)
        while not holds(samples):
            if loop.time() > deadline:
                raise AssertionError(f"{expr} never held; last: {samples}")
            await asyncio.sleep(0.5)
            samples = await self.query(expr)
        return samples


def prometheus_binary() -> str:
    """Debian's prometheus server; skips without it, fails when services are required."""
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus not installed (Debian: apt-get install prometheus)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} (GATEWAYD_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return path


@pytest.fixture
async def start_prometheus(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Prometheus]]]:
    """A factory: start_prometheus("127.0.0.1:PORT") -> a ready Prometheus scraping that
    target each second as job `gatewayd`, evaluating contrib's rules each second."""
    binary = prometheus_binary()
    procs: list[asyncio.subprocess.Process] = []
    session = aiohttp.ClientSession()

    async def start(target: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            textwrap.dedent(f"""
                global:
                  scrape_interval: 1s
                  evaluation_interval: 1s
                rule_files: ["{RULES}"]
                scrape_configs:
                  - job_name: gatewayd
                    static_configs:
                      - targets: ["{target}"]
            """)
        )
        listen = f"127.0.0.1:{free_port()}"
        log = (tmp_path / "prometheus.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={listen}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
        )
        log.close()
        procs.append(proc)
        url = f"http://{listen}"
        for _ in range(100):
            try:
                async with session.get(f"{url}/-/ready") as r:
                    if r.status == 200:
                        return Prometheus(url, session)
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError((tmp_path / "prometheus.log").read_text())

    yield start

    await session.close()
    for proc in procs:
        proc.terminate()
        await proc.wait()


_RETRY = "{attempts: 2, backoff_base: 10ms, backoff_max: 20ms, budget_ratio: 1}"


def _config(upstream_url: str, dead_url: str) -> str:
    # `dead` keeps answering 502 (its breaker never opens); `tripped` opens
    # its breaker at the first failure and answers 503 from then on.
    return f"""
        server:
          listen: "{{listen}}"
          workers: 2
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream_url}
          fake_v1:
            url: {upstream_url}/v1
          guarded_v1:
            url: {upstream_url}/v1
          dead:
            url: {dead_url}
            retry: {_RETRY}
            breaker:
              failure_threshold: 1000
          tripped:
            url: {dead_url}
            retry: {_RETRY}
            breaker:
              failure_threshold: 1
              open_for: 5m
        routes:
          chat:
            prefix: /v1/
            upstream: fake
          guarded:
            prefix: /guarded/
            upstream: guarded_v1
            strip_prefix: true
            policy: strict
          dead:
            prefix: /dead/
            upstream: dead
            strip_prefix: true
          broken:
            prefix: /broken/
            upstream: tripped
            strip_prefix: true
          limited:
            prefix: /limited/
            upstream: fake_v1
            strip_prefix: true
            ratelimit: {{requests_per_minute: 6, burst: 1}}
        filters:
          codenames:
            kind: keywords
            words: [bluebird]
        policies:
          strict:
            mode: block
            input: [codenames]
        audit:
          sink: jsonl
          path: ${{STATE_DIRECTORY}}/audit.jsonl
          flush_interval: 50ms
    """


def _chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-fake", "messages": [{"role": "user", "content": text}]}


def _value(samples: list[Sample], **labels: str) -> float:
    """The value of the one sample whose labels include `labels`."""
    found = [v for s, v in samples if labels.items() <= s.items()]
    assert len(found) == 1, (labels, samples)
    return found[0]


async def test_recording_rules_and_alerts_hold_over_a_real_scrape(
    start_daemon: StartDaemon,  # noqa: F811 - the imported fixture
    start_prometheus: Callable[[str], Awaitable[Prometheus]],
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """Allowed, blocked, rate-limited and failed traffic on two workers shows in the
    recording rules by route, status, entity, limit and upstream; the open breaker and
    a killed worker raise their alerts, and the failing routes a pending 5xx alert."""
    run = tmp_path / "run"
    run.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = await start_daemon(
        _config(fake_upstream.url, dead), env={"RUNTIME_DIRECTORY": str(run)}
    )
    prometheus = await start_prometheus(daemon.url.removeprefix("http://"))
    await prometheus.until('up{job="gatewayd"}', lambda s: [v for _, v in s] == [1.0])

    async with aiohttp.ClientSession() as client:

        async def post(path: str, text: str) -> int:
            async with client.post(f"{daemon.url}{path}", json=_chat(text)) as r:
                await r.read()
                return r.status

        # One round, so every counter exists when scraped, then more over
        # three scrapes: rate() sees each of them grow.
        sent = {
            "chat": "/v1",
            "guarded": "/guarded",
            "dead": "/dead",
            "broken": "/broken",
            "limited": "/limited",
        }
        statuses: dict[str, set[int]] = {route: set() for route in sent}
        for count in (1, 5, 5, 5):
            for _ in range(count):
                for route, prefix in sent.items():
                    text = "what is bluebird?" if route == "guarded" else "hello"
                    statuses[route].add(await post(f"{prefix}/chat/completions", text))
            await asyncio.sleep(1.2)
        assert statuses == {
            "chat": {200},
            "guarded": {400},
            "dead": {502},
            "broken": {502, 503},
            "limited": {200, 429},
        }

        await prometheus.until(
            'route_status:gatewayd_requests:rate1m{job="gatewayd"} > 0',
            lambda s: (
                {(m["route"], m["status"]) for m, _ in s}
                >= {
                    ("chat", "200"),
                    ("guarded", "400"),
                    ("dead", "502"),
                    ("broken", "503"),
                    ("limited", "429"),
                }
            ),
        )
        rejected = await prometheus.query("route_limit:gatewayd_ratelimit_rejections:rate1m > 0")
        assert [(m["route"], m["limit"]) for m, _ in rejected] == [("limited", "requests")]
        ratio = await prometheus.query("route:gatewayd_requests_5xx:ratio_rate1m")
        assert _value(ratio, route="dead") == _value(ratio, route="broken") == 1.0
        # Neither has ever answered a 5xx, so neither has a 5xx series: still 0.
        assert _value(ratio, route="guarded") == _value(ratio, route="chat") == 0.0

        p50 = await prometheus.query("route:gatewayd_request_duration_seconds:p50_rate1m")
        p99 = await prometheus.query("route:gatewayd_request_duration_seconds:p99_rate1m")
        assert 0 < _value(p50, route="chat") <= _value(p99, route="chat") < 1

        blocks = await prometheus.until(
            "entity:gatewayd_guardrail_blocks:rate1m > 0", lambda s: len(s) > 0
        )
        assert [(m["entity"], m["stage"]) for m, _ in blocks] == [("KEYWORD", "input")]

        attempts = await prometheus.query("upstream:gatewayd_upstream_attempts:rate1m > 0")
        # Blocked requests never reach guarded_v1.
        assert {m["upstream"] for m, _ in attempts} == {"fake", "fake_v1", "dead", "tripped"}
        retries = await prometheus.query("upstream_reason:gatewayd_upstream_retries:rate1m > 0")
        assert ("dead", "connect-failure") in {(m["upstream"], m["reason"]) for m, _ in retries}
        assert {m["reason"] for m, _ in retries} == {"connect-failure"}
        errors = await prometheus.query("route:gatewayd_upstream_errors:rate1m > 0")
        assert "dead" in {m["route"] for m, _ in errors}
        assert {m["route"] for m, _ in errors} <= {"dead", "broken"}

        # Open on one worker or both: the rule takes the highest, per target.
        breakers = await prometheus.query("upstream_target:gatewayd_circuit_open:max")
        assert {(m["upstream"], v) for m, v in breakers} == {
            ("fake", 0.0),
            ("fake_v1", 0.0),
            ("guarded_v1", 0.0),
            ("dead", 0.0),
            ("tripped", 1.0),
        }
        await prometheus.until(
            'ALERTS{alertname="GatewaydCircuitOpen", alertstate="pending"}',
            lambda s: [(m["upstream"], m["target"]) for m, _ in s] == [("tripped", dead)],
        )

        written = await prometheus.until(
            'outcome:gatewayd_audit_events:rate1m{outcome="written"}',
            lambda s: bool(s) and s[0][1] > 0,
        )
        assert len(written) == 1

        async with client.get(f"{daemon.url}/health/detailed") as r:
            worker = (await r.json())["pid"]
    os.kill(worker, signal.SIGKILL)

    await prometheus.until(
        'ALERTS{alertname="GatewaydWorkerRestarts", alertstate="firing"}',
        lambda s: [m["instance"] for m, _ in s] == [daemon.url.removeprefix("http://")],
    )
    # Every request on dead and broken failed: their 5xx alert waits out its 5 minutes.
    high_5xx = await prometheus.query('ALERTS{alertname="GatewaydHigh5xxRatio"}')
    assert {(m["route"], m["alertstate"]) for m, _ in high_5xx} == {
        ("dead", "pending"),
        ("broken", "pending"),
    }
    # Nothing else is wrong: no other alert is pending or firing.
    others = await prometheus.query(
        'ALERTS{alertname!~"GatewaydCircuitOpen|GatewaydWorkerRestarts|GatewaydHigh5xxRatio"}'
    )
    assert others == []
