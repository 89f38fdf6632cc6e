"""The labelled corpus: every built-in filter at 100% recall with no false positive."""

from __future__ import annotations

from tests.corpus.evaluate import CORPUS, Report, load, run


def test_the_corpus_is_big_enough_to_mean_something() -> None:
    """At least 150 labelled findings over every pii and secrets entity, and 150 near misses."""
    samples = load(CORPUS.glob("*.jsonl"))
    labels = [entity for s in samples for entity, _ in s.expected]
    near_misses = [s for s in samples if not s.expected]
    assert len(labels) >= 150
    assert len(near_misses) >= 150
    assert {
        "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS",
        "AWS_ACCESS_KEY", "GITHUB_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "SLACK_TOKEN",
        "STRIPE_KEY", "GOOGLE_API_KEY", "PRIVATE_KEY", "JWT", "PASSWORD",
        "KEYWORD", "PROMPT_INJECTION",
    } <= set(labels)  # fmt: skip


def test_every_label_is_found_and_nothing_else() -> None:
    """Recall is 100% and there is no false positive (what scripts/guardrail-eval checks)."""
    report: Report = run()
    mistakes = [f"{m.where}: {m.kind} {m.entity} {m.value!r}" for m in report.mistakes]
    assert report.passed, "\n".join(mistakes)
    assert all(recall == 1.0 and precision == 1.0 for *_, precision, recall in report.rows())
