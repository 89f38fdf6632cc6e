"""Score the built-in filters against the labelled corpus in this directory.

Each `*.jsonl` line is `{"text": ..., "entities": [{"entity": ..., "value": ...}]}`
listing every finding expected in the text (none for a near miss). Every
filter runs on every text; a finding counts as correct when an expected
(entity, value) pair is left to match it. All values are synthetic.

The corpus passes when no finding is false and each entity's recall meets
its target (TARGETS; 97% for the rest). Some labels are known misses, kept
so the figures stay honest: national phone formats of regions not in the
default `pii.phone_regions`, passwords of letters only.

`prose/` holds real text with no personal data or credentials in it by
intent (license texts, and Python 3.11's standard-library docstrings);
`prose` counts what the pii and secrets filters find there.

`scripts/guardrail-eval` prints both; `test_corpus.py` asserts them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.config.schema import (
    InjectionFilterConfig,
    KeywordsFilterConfig,
    PiiFilterConfig,
    SecretsFilterConfig,
)
from gatewayd.guardrails.filters.injection import InjectionFilter
from gatewayd.guardrails.filters.keywords import KeywordsFilter
from gatewayd.guardrails.filters.regex_pii import PiiFilter
from gatewayd.guardrails.filters.secrets import SecretsFilter
from gatewayd.guardrails.types import InlineFilter

CORPUS = Path(__file__).resolve().parent
PROSE = CORPUS / "prose"
DEFAULT_TARGET = 0.97
TARGETS = {"PASSWORD": 0.85, "PHONE_NUMBER": 0.90}
"""Recall each entity must reach on the corpus (the rest: DEFAULT_TARGET)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled text and where it came from (file:line)."""

    where: str
    text: str
    expected: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Mistake:
    """A finding that should not be there (fp) or one that is missing (fn)."""

    where: str
    kind: str
    entity: str
    value: str


@dataclass(slots=True)
class Report:
    """Per-entity counts of true positives, false positives and false negatives."""

    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    mistakes: list[Mistake] = field(default_factory=list)
    samples: int = 0

    @property
    def passed(self) -> bool:
        """No false positive, and every entity's recall at or above its target."""
        return not self.failures()

    def failures(self) -> list[str]:
        """What keeps the corpus from passing, one line each."""
        out = [f"{entity}: {fp} false positive(s)" for entity, fp in sorted(self.fp.items())]
        for entity, _, _, _, _, recall in self.rows():
            if recall < (target := TARGETS.get(entity, DEFAULT_TARGET)):
                out.append(f"{entity}: recall {recall:.1%} below {target:.0%}")
        return out

    def rows(self) -> list[tuple[str, int, int, int, float, float]]:
        """(entity, tp, fp, fn, precision, recall) per entity, sorted by entity."""
        out = []
        for entity in sorted(set(self.tp) | set(self.fp) | set(self.fn)):
            tp, fp, fn = self.tp[entity], self.fp[entity], self.fn[entity]
            precision = tp / (tp + fp) if tp + fp else 1.0
            recall = tp / (tp + fn) if tp + fn else 1.0
            out.append((entity, tp, fp, fn, precision, recall))
        return out


def load(paths: Iterable[Path]) -> list[Sample]:
    """Every sample in the given JSONL files, in order."""
    samples = []
    for path in sorted(paths):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            expected = tuple((e["entity"], e["value"]) for e in row["entities"])
            samples.append(Sample(f"{path.name}:{number}", row["text"], expected))
    return samples


def corpus_filters(corpus: Path = CORPUS) -> list[InlineFilter]:
    """The four built-in inline filters as the corpus expects them configured."""
    return [
        PiiFilter(PiiFilterConfig(name="pii")),
        SecretsFilter(SecretsFilterConfig(name="secrets")),
        KeywordsFilter(KeywordsFilterConfig(name="keywords", file=corpus / "keywords.txt")),
        InjectionFilter(InjectionFilterConfig(name="injection")),
    ]


def evaluate(samples: Sequence[Sample], filters: Sequence[InlineFilter]) -> Report:
    """Run every filter on every sample and compare with the labels."""
    report = Report(samples=len(samples))
    for sample in samples:
        found = [
            (span.entity, sample.text[span.start : span.end])
            for f in filters
            for span in f.scan(sample.text)
        ]
        missing = Counter(sample.expected)
        for entity, value in found:
            if missing[(entity, value)] > 0:
                missing[(entity, value)] -= 1
                report.tp[entity] += 1
            else:
                report.fp[entity] += 1
                report.mistakes.append(Mistake(sample.where, "fp", entity, value))
        for (entity, value), count in missing.items():
            for _ in range(count):
                report.fn[entity] += 1
                report.mistakes.append(Mistake(sample.where, "fn", entity, value))
    return report


def run(corpus: Path = CORPUS) -> Report:
    """Evaluate the filters on every JSONL file of `corpus`."""
    return evaluate(load(corpus.glob("*.jsonl")), corpus_filters(corpus))


def table(report: Report) -> str:
    """The report as a fixed-width precision/recall table with targets and a total row."""
    head = f"{'entity':<20} {'tp':>5} {'fp':>5} {'fn':>5} {'precision':>10} {'recall':>8}"
    lines = [f"{head} {'target':>7}"]
    for entity, tp, fp, fn, precision, recall in report.rows():
        target = TARGETS.get(entity, DEFAULT_TARGET)
        lines.append(
            f"{entity:<20} {tp:>5} {fp:>5} {fn:>5} {precision:>10.1%} {recall:>8.1%} {target:>7.0%}"
        )
    tp, fp, fn = (sum(c.values()) for c in (report.tp, report.fp, report.fn))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    lines.append(f"{'all':<20} {tp:>5} {fp:>5} {fn:>5} {precision:>10.1%} {recall:>8.1%}")
    lines.append(f"{report.samples} samples")
    return "\n".join(lines)


@dataclass(slots=True)
class ProseReport:
    """What the pii and secrets filters find in each prose file, and the files' sizes."""

    sizes: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Counter[str]] = field(default_factory=dict)

    def per_100k(self) -> float:
        """Findings per 100 KB of prose, all files together."""
        total = sum(sum(c.values()) for c in self.findings.values())
        return total * 100_000 / max(1, sum(self.sizes.values()))


def prose(directory: Path = PROSE) -> ProseReport:
    """Scan every `*.txt` in `directory` with the pii and secrets filters."""
    filters = corpus_filters()[:2]
    report = ProseReport()
    for path in sorted(directory.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        report.sizes[path.name] = len(text.encode())
        report.findings[path.name] = Counter(span.entity for f in filters for span in f.scan(text))
    return report


def prose_table(report: ProseReport) -> str:
    """Findings per prose file and entity, and the rate over all of it."""
    lines = [f"{'prose file':<32} {'KB':>6}  findings"]
    for name, size in report.sizes.items():
        found = ", ".join(f"{e} {n}" for e, n in sorted(report.findings[name].items())) or "none"
        lines.append(f"{name:<32} {size / 1000:>6.1f}  {found}")
    total = sum(report.sizes.values()) / 1000
    lines.append(f"{'all':<32} {total:>6.1f}  {report.per_100k():.1f} per 100 KB")
    return "\n".join(lines)
