"""`python -m gatewayd`: the same as the `gatewayd` command."""

from gatewayd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
