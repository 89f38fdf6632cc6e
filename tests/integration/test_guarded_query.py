"""A guarded route reads the query string as it reads the body: scanned, refused
when it cannot be read, and sent upstream as read."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.conftest import FakeUpstream
from tests.harness import running_gateway, write_config


def _config(tmp_path: Path, upstream_url: str, mode: str) -> str:
    return f"""
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream_url}
            api_key: sk-upstream-secret
            retry:
              attempts: 1
        routes:
          v1:
            prefix: /v1/
            upstream: fake
            policy: guard
          open:
            prefix: /open/
            upstream: fake
            strip_prefix: true
        filters:
          pii:
            kind: pii
          secrets:
            kind: secrets
        policies:
          guard:
            mode: {mode}
            input: [secrets, pii]
        audit:
          sink: off
    """


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    # encoded=True: the query goes as written, not as yarl would normalise it.
    async with client.get(URL(url, encoded=True)) as resp:
        return resp.status, await resp.read()


async def test_a_value_in_the_query_is_redacted(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """An e-mail address in a query value reaches the upstream as a placeholder."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, "redact"))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        status, _ = await _get(client, f"{gw.url}/v1/models?limit=2&user=jane.doe%40example.com")
    assert status == 200
    path = fake_upstream.state.received[-1].path
    assert "jane.doe" not in path
    assert path.startswith("/v1/models?limit=2&user=%3CEMAIL_ADDRESS_")


async def test_a_secret_in_a_query_name_is_blocked(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Names are read too; a block never reaches the upstream, and its message quotes nothing."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, "block"))
    key = "AKIA" + "IOSFODNN7EXAMPLE"
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        status, body = await _get(client, f"{gw.url}/v1/models?{key}=1")
    assert status == 400
    assert key.encode() not in body
    assert orjson.loads(body)["error"]["code"] == "guardrail_violation"
    assert fake_upstream.state.received == []


@pytest.mark.parametrize(
    "query",
    [
        "flag",  # a name without =
        "a=%ff",  # not UTF-8
        "a=1&&b=2",  # an empty pair
    ],
)
async def test_a_query_that_cannot_be_read_is_refused(
    tmp_path: Path, fake_upstream: FakeUpstream, query: str
) -> None:
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, "redact"))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        status, body = await _get(client, f"{gw.url}/v1/models?{query}")
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "invalid_query"
    assert fake_upstream.state.received == []


async def test_a_clean_query_goes_as_read_and_an_unguarded_one_as_sent(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Azure's api-version passes unchanged; `+` is read as a space and sent as %20,
    so no other reader can take it for something else; an unguarded route forwards bytes."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, "redact"))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        assert (await _get(client, f"{gw.url}/v1/models?api-version=2024-02-01"))[0] == 200
        assert fake_upstream.state.received[-1].path == "/v1/models?api-version=2024-02-01"
        assert (await _get(client, f"{gw.url}/v1/models?order=a+b"))[0] == 200
        assert fake_upstream.state.received[-1].path == "/v1/models?order=a%20b"
        await _get(client, f"{gw.url}/open/models?flag&x=a+b")
        assert fake_upstream.state.received[-1].path == "/models?flag&x=a+b"
