"""`${VAR}` and `${VAR:-default}` in string values, filled from the environment.

As in the shell, `:-` uses the default when the variable is unset or empty.
`$$` is a literal dollar; a `$` followed by anything else stays as it is, so
regexes ending in `$` need no escaping. Defaults are literal text (no nesting).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Return `text` with references replaced; ValueError names what is wrong."""
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        body = match.group("body")
        if body is None:
            raise ValueError("unterminated ${ (a literal dollar is written $$)")
        reference = _BODY.fullmatch(body)
        if reference is None:
            # The body is not shown: it may be a pasted value rather than a name.
            raise ValueError("malformed reference: expected ${NAME} or ${NAME:-default}")
        name, default = reference.group("name", "default")
        value = env.get(name)
        if default is not None:
            return value or default
        if value is None:
            raise ValueError(
                f"environment variable {name} is not set"
                f" (write ${{{name}:-}} to allow it to be empty)"
            )
        return value

    return _REFERENCE.sub(replace, text)
