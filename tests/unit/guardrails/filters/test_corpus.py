"""The labelled corpus at its recall targets with no false positive, and the prose corpus."""

from __future__ import annotations

from tests.corpus.evaluate import CORPUS, PROSE, TARGETS, Report, load, prose, run


def test_the_corpus_is_big_enough_to_mean_something() -> None:
    """At least 350 labelled findings over every pii and secrets entity, and 250 near misses."""
    samples = load(CORPUS.glob("*.jsonl"))
    labels = [entity for s in samples for entity, _ in s.expected]
    near_misses = [s for s in samples if not s.expected]
    assert len(labels) >= 350
    assert len(near_misses) >= 250
    assert {
        "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS",
        "AWS_ACCESS_KEY", "AWS_BEDROCK_API_KEY", "GITHUB_TOKEN", "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY", "SLACK_TOKEN", "SLACK_WEBHOOK_URL", "STRIPE_KEY", "GOOGLE_API_KEY",
        "PRIVATE_KEY", "JWT", "PASSWORD", "KEYWORD", "PROMPT_INJECTION",
    } <= set(labels)  # fmt: skip
    assert sum(e == "PASSWORD" for e in labels) >= 75
    assert sum(e == "PHONE_NUMBER" for e in labels) >= 75


def test_every_entity_meets_its_recall_target_with_no_false_positive() -> None:
    """What scripts/guardrail-eval checks: no false positive, recall at each entity's target."""
    report: Report = run()
    mistakes = [f"{m.where}: {m.kind} {m.entity} {m.value!r}" for m in report.mistakes]
    assert report.passed, "\n".join(report.failures() + mistakes)
    assert not report.fp
    assert TARGETS["PASSWORD"] == 0.85
    assert TARGETS["PHONE_NUMBER"] == 0.90


def test_the_prose_corpus_is_a_few_hundred_kilobytes_of_real_text() -> None:
    """License texts and standard-library docstrings, each shipped with its licence."""
    report = prose(PROSE)
    assert sum(report.sizes.values()) > 500_000
    assert "python-3.11-LICENSE.txt" in report.sizes
    assert "GPL-3.txt" in report.sizes


def test_prose_holds_no_number_or_token_finding() -> None:
    """No phone, card, SSN, IBAN or token is found in prose; licence texts have no finding."""
    report = prose(PROSE)
    for name, found in report.findings.items():
        if not name.startswith("python-3.11-docstrings"):
            assert not found, name
    # The docstrings show example addresses, their authors' e-mail addresses
    # and one literal password (urllib.request: passwd='geheim$parole').
    found = report.findings["python-3.11-docstrings.txt"]
    assert set(found) <= {"IP_ADDRESS", "EMAIL_ADDRESS", "PASSWORD"}
    assert found["PASSWORD"] <= 1
    assert found["EMAIL_ADDRESS"] <= 10
