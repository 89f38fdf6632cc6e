"""The app's resources: what serving changes in the process is undone at shutdown."""

from __future__ import annotations

import gc
from pathlib import Path

from gatewayd.app import _GC_YOUNG
from tests.harness import running_gateway, write_config


async def test_serving_collects_young_garbage_less_often_and_restores_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        server: {listen: "127.0.0.1:0"}
        logging: {level: warning}
        upstreams: {fake: {url: "http://127.0.0.1:9"}}
        routes: {all: {prefix: /, upstream: fake}}
        audit: {sink: "off"}
        """,
    )
    before = gc.get_threshold()
    async with running_gateway(config):
        assert gc.get_threshold() == (_GC_YOUNG, *before[1:])
    assert gc.get_threshold() == before
