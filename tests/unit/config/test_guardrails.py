"""The filters and policies sections."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from gatewayd.config import load
from gatewayd.config.schema import (
    Action,
    BreakerConfig,
    CustomPattern,
    InjectionFilterConfig,
    KeywordsFilterConfig,
    Mode,
    PiiFilterConfig,
    PolicyConfig,
    PresidioFilterConfig,
    SecretsFilterConfig,
)

from .conftest import Problems, Write


def test_every_filter_kind(write: Write, tmp_path: Path) -> None:
    """Each kind builds its own dataclass from its own keys."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "words.txt").write_text("project falcon\n")
    path = write(
        "gw.yaml",
        r"""
        filters:
          pii:
            kind: pii
            on_error: allow
            entities: [EMAIL_ADDRESS, US_SSN]
            custom:
              EMPLOYEE_ID: 'EMP-[0-9]{6}'
              TICKET: '\bT-\d+$'
          secrets:
            kind: secrets
            entities: [AWS_ACCESS_KEY]
          words:
            kind: keywords
            words: [falcon, "yes"]
            file: lists/words.txt
            entity: CODENAME
          injection:
            kind: injection
            threshold: 1.5
          presidio:
            kind: presidio
            url: http://127.0.0.1:5002/
            timeout: 200ms
            score_threshold: 0.7
            entities: [PERSON]
            language: no
            allow_list: [Acme, "1.0"]
            max_in_flight: 4
            queue_timeout: 0
            cache_size: 0
            cache_ttl: 1h
            redis_url: redis://127.0.0.1:6379/2
            on_error: block
            breaker:
              failure_threshold: 2
        """,
    )
    filters = load(path, {}).filters
    assert list(filters) == ["pii", "secrets", "words", "injection", "presidio"]
    assert filters["pii"] == PiiFilterConfig(
        name="pii",
        on_error="allow",
        entities=("EMAIL_ADDRESS", "US_SSN"),
        custom=(CustomPattern("EMPLOYEE_ID", "EMP-[0-9]{6}"), CustomPattern("TICKET", r"\bT-\d+$")),
    )
    assert filters["secrets"] == SecretsFilterConfig(name="secrets", entities=("AWS_ACCESS_KEY",))
    assert filters["words"] == KeywordsFilterConfig(
        name="words",
        words=("falcon", "yes"),
        file=tmp_path / "lists" / "words.txt",
        entity="CODENAME",
    )
    assert filters["injection"] == InjectionFilterConfig(name="injection", threshold=1.5)
    assert filters["presidio"] == PresidioFilterConfig(
        name="presidio",
        url="http://127.0.0.1:5002",
        on_error="block",
        timeout=0.2,
        score_threshold=0.7,
        entities=("PERSON",),
        language="no",
        allow_list=("Acme", "1.0"),
        max_in_flight=4,
        queue_timeout=0.0,
        cache_size=0,
        cache_ttl=3600.0,
        redis_url="redis://127.0.0.1:6379/2",
        breaker=BreakerConfig(failure_threshold=2),
    )


def test_filters_ini(write: Write) -> None:
    """INI filters use [filters.NAME.custom] for patterns and commas for lists."""
    path = write(
        "gw.ini",
        r"""
        [filters.pii]
        kind = pii
        entities = EMAIL_ADDRESS, PHONE_NUMBER
        [filters.pii.custom]
        EMPLOYEE_ID = EMP-[0-9]{6}$
        [filters.words]
        kind = keywords
        words = falcon, project x
        """,
    )
    filters = load(path, {}).filters
    assert filters["pii"] == PiiFilterConfig(
        name="pii",
        entities=("EMAIL_ADDRESS", "PHONE_NUMBER"),
        custom=(CustomPattern("EMPLOYEE_ID", "EMP-[0-9]{6}$"),),
    )
    assert filters["words"] == KeywordsFilterConfig(name="words", words=("falcon", "project x"))


def test_kind_is_required_and_checked(write: Write, problems: Problems) -> None:
    """A missing or unknown kind is one problem; the filter's other keys are not judged."""
    path = write(
        "gw.yaml",
        """
        filters:
          a:
            entities: [X]
          b:
            kind: regex
            whatever: 1
        """,
    )
    assert [str(p) for p in problems(path)] == [
        f"{path}:2: filters.a.kind: is required",
        f"{path}:5: filters.b.kind: must be one of pii, secrets, keywords, injection, presidio;"
        " got 'regex'",
    ]


def test_keys_of_another_kind(write: Write, problems: Problems) -> None:
    """A key that belongs to another kind of filter is a problem saying so."""
    path = write(
        "gw.yaml",
        """
        filters:
          pii:
            kind: pii
            url: http://h
            threshold: 0.5
        """,
    )
    assert [str(p) for p in problems(path)] == [
        f"{path}:4: filters.pii.url: not a key of pii filters",
        f"{path}:5: filters.pii.threshold: not a key of pii filters",
    ]


def test_bad_custom_patterns(write: Write, problems: Problems) -> None:
    """A pattern that fails to compile or matches empty text is reported by entity, not text."""
    path = write(
        "gw.yaml",
        """
        filters:
          pii:
            kind: pii
            custom:
              EMPLOYEE_ID: 'EMP-(secret-[0-9]'
              ANYTHING: 'x*'
              lower_case: 'x'
              EMPTY: ''
        """,
    )
    found = [str(p) for p in problems(path)]
    assert found == [
        f"{path}:5: filters.pii.custom.EMPLOYEE_ID: invalid regular expression:"
        " missing ), unterminated subpattern at position 4",
        f"{path}:6: filters.pii.custom.ANYTHING: the regular expression matches the empty string",
        f"{path}:7: filters.pii.custom.lower_case: an entity name is upper-case letters, digits"
        " and _, starting with a letter (like US_SSN); got 'lower_case'",
        f"{path}:8: filters.pii.custom.EMPTY: is required",
    ]
    assert not any("secret-" in line for line in found)


def test_phone_regions(write: Write, problems: Problems) -> None:
    """phone_regions takes region codes in any case and refuses one without phone metadata."""
    good = write("gw.yaml", "filters:\n  pii:\n    kind: pii\n    phone_regions: [us, FR]\n")
    pii = load(good).filters["pii"]
    assert isinstance(pii, PiiFilterConfig)
    assert pii.phone_regions == ("US", "FR")
    assert "US" in PiiFilterConfig(name="x").phone_regions
    bad = write("bad.yaml", "filters:\n  pii:\n    kind: pii\n    phone_regions: [US, EU]\n")
    assert [str(p) for p in problems(bad)] == [
        f"{bad}:4: filters.pii.phone_regions: not a region with phone metadata: 'EU'"
    ]


def test_patterns_re2_cannot_run_are_config_errors(write: Write, problems: Problems) -> None:
    """Look-around and back-references are refused at their file:line, saying why, not what."""
    path = write(
        "gw.yaml",
        r"""
        filters:
          pii:
            kind: pii
            custom:
              AFTER: '(?<=id=)secret-[0-9]+'
              TWICE: '(secret-x)\1'
              CLASS: '\p{Lu}{3}-[0-9]{4}'
        """,
    )
    found = [str(p) for p in problems(path)]
    assert found == [
        f"{path}:5: filters.pii.custom.AFTER: the linear-time engine (RE2) cannot run this"
        " pattern: invalid perl operator (it has no look-around, back-references or"
        " possessive repeats; $ is the end of the text)",
        f"{path}:6: filters.pii.custom.TWICE: the linear-time engine (RE2) cannot run this"
        " pattern: invalid escape sequence (it has no look-around, back-references or"
        " possessive repeats; $ is the end of the text)",
    ]
    assert not any("secret-" in line for line in found)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "kind: secrets\n    entities: [aws_key]",
            "filters.f.entities: an entity name is upper-case",
        ),
        ("kind: keywords", "filters.f.words: a keywords filter needs words, a file, or both"),
        ("kind: keywords\n    words: []", "filters.f.words: a keywords filter needs words"),
        ("kind: keywords\n    file: nope.txt", "filters.f.file: no such file: "),
        ("kind: keywords\n    words: [x]\n    entity: 9LIVES", "filters.f.entity: an entity name"),
        ("kind: injection\n    threshold: 0", "filters.f.threshold: must be greater than 0"),
        ("kind: presidio", "filters.f.url: is required"),
        ("kind: presidio\n    url: h:5002", "filters.f.url: must be a URL starting with http://"),
        (
            "kind: presidio\n    url: http://h\n    score_threshold: 2",
            "filters.f.score_threshold: must be between 0 and 1",
        ),
        (
            "kind: presidio\n    url: http://h\n    redis_url: http://r",
            "filters.f.redis_url: must be a URL starting with redis:// or rediss:// or unix://",
        ),
        (
            "kind: presidio\n    url: http://h\n    language: English",
            "filters.f.language: expected a language code such as en or de; got 'English'",
        ),
        ("kind: pii\n    on_error: ignore", "filters.f.on_error: must be one of allow, block"),
    ],
)
def test_filter_problems(write: Write, problems: Problems, body: str, message: str) -> None:
    """Kind-specific values are checked and reported under their key."""
    path = write("gw.yaml", f"filters:\n  f:\n    {body}\n")
    (problem,) = problems(path)
    assert str(problem).startswith(f"{path}:")
    assert f": {message}" in str(problem)


def test_keywords_file_relative_to_config(write: Write, tmp_path: Path) -> None:
    """A keywords file is found next to the config file, not in the working directory."""
    (tmp_path / "words.txt").write_text("x\n")
    path = write("gw.ini", "[filters.k]\nkind = keywords\nfile = words.txt\n")
    filter_config = load(path, {}).filters["k"]
    assert isinstance(filter_config, KeywordsFilterConfig)
    assert filter_config.file == tmp_path / "words.txt"


def test_policy(write: Write) -> None:
    """Every policy key converts; entity overrides become Actions."""
    path = write(
        "gw.yaml",
        """
        filters:
          pii: {kind: pii}
          secrets: {kind: secrets}
        policies:
          strict:
            mode: block
            input: [secrets, pii]
            output: [pii]
            restore: true
            on_error: allow
            summary_header: true
            entities:
              EMAIL_ADDRESS: monitor
              PHONE_NUMBER: redact
        """,
    )
    assert load(path, {}).policies["strict"] == PolicyConfig(
        name="strict",
        mode=Mode.BLOCK,
        input=("secrets", "pii"),
        output=("pii",),
        restore=True,
        on_error="allow",
        entities=MappingProxyType({"EMAIL_ADDRESS": Action.MONITOR, "PHONE_NUMBER": Action.REDACT}),
        summary_header=True,
    )


@pytest.mark.parametrize("written", ["off", "no", "false", "OFF", "'off'"])
def test_mode_off_as_false(write: Write, written: str) -> None:
    """`mode: off`, which PyYAML reads as false, means Mode.OFF."""
    path = write("gw.yaml", f"policies:\n  p:\n    mode: {written}\n")
    assert load(path, {}).policies["p"].mode is Mode.OFF


def test_mode_off_ini(write: Write) -> None:
    """In INI, off is simply the word off."""
    path = write("gw.ini", "[policies.p]\nmode = off\n")
    assert load(path, {}).policies["p"].mode is Mode.OFF


def test_mode_true_is_a_problem(write: Write, problems: Problems) -> None:
    """A YAML true is no mode at all."""
    path = write("gw.yaml", "policies:\n  p:\n    mode: on\n")
    assert [str(p) for p in problems(path)] == [
        f"{path}:3: policies.p.mode: must be one of off, monitor, redact, block; got 'on'"
    ]


def test_policy_problems(write: Write, problems: Problems) -> None:
    """Undeclared or repeated filters and bad entity overrides are each reported."""
    path = write(
        "gw.ini",
        """
        [filters.pii]
        kind = pii
        [policies.p]
        input = pii, presidio, pii
        output = secrets
        restore = maybe
        [policies.p.entities]
        CREDIT_CARD = off
        email = block
        """,
    )
    assert [str(p) for p in problems(path)] == [
        f"{path}:4: policies.p.input: no filter named 'presidio' is declared",
        f"{path}:4: policies.p.input: filter pii is listed more than once",
        f"{path}:5: policies.p.output: no filter named 'secrets' is declared",
        f"{path}:6: policies.p.restore: expected true or false, got 'maybe'",
        f"{path}:8: policies.p.entities.CREDIT_CARD: must be one of monitor, redact, block;"
        " got 'off'",
        f"{path}:9: policies.p.entities.email: an entity name is upper-case letters, digits"
        " and _, starting with a letter (like US_SSN); got 'email'",
    ]


def test_broken_filter_is_still_declared(write: Write, problems: Problems) -> None:
    """A policy naming a filter with problems does not add a second problem about the name."""
    path = write(
        "gw.yaml",
        """
        filters:
          presidio:
            kind: presidio
        policies:
          p:
            input: [presidio]
        """,
    )
    assert [str(p) for p in problems(path)] == [f"{path}:2: filters.presidio.url: is required"]


def test_unknown_builtin_entity_is_a_problem(write: Write, problems: Problems) -> None:
    """A pii or secrets entity the filter cannot find is reported with its line, not at start."""
    path = write(
        "gatewayd.yaml",
        """
        filters:
          pii:
            kind: pii
            entities: [EMAIL_ADDRESS, EMAIL_ADRESS]
          keys:
            kind: secrets
            entities: [AWS_ACCESS_KEY, AWS_SECRET]
        """,
    )
    found = [(p.line, p.key) for p in problems(path)]
    assert found == [(4, "filters.pii.entities"), (7, "filters.keys.entities")]
    assert "EMAIL_ADRESS" in str(problems(path)[0])
