"""Test-only, put on PYTHONPATH of a gatewayd started by tests/e2e/test_recycling.py.

SIGUSR1 makes the process that receives it block its main thread, where the
event loop runs, for a minute: a worker stuck in a callback that never
yields. gatewayd itself has no such switch.
"""

import signal
import time


def _hang(signum: int, frame: object) -> None:
    time.sleep(60)


signal.signal(signal.SIGUSR1, _hang)
