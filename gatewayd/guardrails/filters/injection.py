"""The injection filter: heuristics for prompt-injection and jailbreak attempts.

Each rule is a phrase shape with a weight. A text's score is the sum of the
weights of the distinct rules it matches (a rule repeated counts once); when
the score reaches the configured threshold the text yields one span: the
strongest match (highest weight, then first), scored min(1, score). A single
strong rule (0.8-0.9) is enough at the default threshold 0.8; weak ones
(mentions of "jailbreak", "developer mode", a "System:" line) only count
together.

Every rule starts with one of its head words and never crosses a sentence end
or newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatewayd.config.schema import InjectionFilterConfig, OnError
from gatewayd.guardrails.filters._phrases import longest_match, prefix_pattern, trie_pattern
from gatewayd.guardrails.filters._spans import clear_of_findings, fold_case, tail_holdback
from gatewayd.guardrails.types import Span

# Rules are written with single spaces; each stands for 1-8 blanks (no newline),
# so an optional blank is "(?: )?".
_BLANKS = "[ \t]{1,8}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Head phrases, then what must follow one of them; lower case, spaces as blanks."""

    name: str
    weight: float
    heads: tuple[str, ...]
    rest: str


_OVERRIDE_VERB = ("ignore", "disregard", "forget", "override", "bypass", "skip")
# Not "my": a user taking back their own earlier request is no attack.
_FILLER = "(?:(?:all|any|every|each|the|your|these|those|of) ){0,3}"
_EARLIER = "(?:previous|prior|above|earlier|preceding|initial|original|system|developer|safety)"
_ORDERS = (
    "(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance"
    "|context|messages?|commands?|restrictions|constraints|polic(?:y|ies)|programming)"
)
_REVEAL_VERB = (
    "reveal", "print", "show", "display", "output", "repeat", "recite", "leak", "dump",
    "expose", "disclose", "tell me", "give me", "write out", "spell out", "what is", "what are",
)  # fmt: skip
_HIDDEN_ADJ = "(?:(?:full|entire|exact|complete|original|initial|hidden|secret|internal) ){0,2}"
_LIMITS = (
    "(?:restrictions|rules|limits|limitations|filters|guidelines|boundaries|censorship"
    "|constraints|policies|morals|ethics|guardrails)"
)

RULES = (
    Rule("override", 0.9, _OVERRIDE_VERB, f" {_FILLER}{_EARLIER} {_ORDERS}"),
    Rule("override-above", 0.6, _OVERRIDE_VERB, " (?:(?:all|everything) )?(?:of )?(?:the )?above"),
    Rule("new-orders", 0.5, ("new", "updated", "real", "actual"), f" {_ORDERS}(?: )?:"),
    Rule(
        "persona",
        0.9,
        ("you are now", "you're now", "from now on you are", "you will now be"),
        " (?:dan|an? (?:unrestricted|unfiltered|uncensored|jailbroken|evil) \\w+|jailbroken"
        "|in (?:developer|god|jailbreak|dan) mode|free (?:from|of) (?:all )?" + _LIMITS + ")",
    ),
    Rule("do-anything-now", 0.7, ("do anything now",), ""),
    Rule(
        "act-unrestricted",
        0.7,
        ("act as", "pretend to be", "roleplay as", "role-play as"),
        " (?:dan|an? (?:unrestricted|unfiltered|uncensored|jailbroken|evil) )",
    ),
    Rule(
        "no-limits",
        0.9,
        ("pretend", "imagine", "act as if", "behave as if", "suppose"),
        " (?:that )?you (?:have|had|are|were) (?:no|not bound by(?: any)?|free (?:of|from))"
        f" (?:(?:any|your|the) )?(?:\\w+ )?{_LIMITS}",
    ),
    Rule("jailbreak-mode", 0.8, ("jailbreak", "dan", "god", "unrestricted"), " mode"),
    Rule("developer-mode", 0.4, ("developer mode", "debug mode"), " (?:enabled|activated|on)"),
    Rule("jailbreak", 0.3, ("jailbreak", "jailbroken", "jailbreaking"), ""),
    Rule(
        "reveal-your-prompt",
        0.9,
        _REVEAL_VERB,
        f" (?:me )?(?:back )?(?:(?:all|of) ){{0,2}}your {_HIDDEN_ADJ}"
        "(?:system (?:prompt|message|instructions?)|instructions|prompt)",
    ),
    Rule(
        "reveal-the-prompt",
        0.5,
        _REVEAL_VERB,
        f" (?:me )?(?:back )?(?:(?:all|of) ){{0,2}}the {_HIDDEN_ADJ}"
        "(?:system (?:prompt|message)|hidden instructions|initial prompt|instructions above)",
    ),
    Rule("repeat-above", 0.8, ("repeat", "print", "output"), " (?:all )?the (?:words|text) above"),
    Rule("chatml-tag", 0.9, ("<|im_start|>",), "(?: )?(?:system|assistant)"),
    Rule("special-token", 0.8, ("<|system|>", "<|im_end|>", "<|endoftext|>", "<<sys>>"), ""),
    Rule("inst-tag", 0.6, ("[inst]", "[/inst]"), ""),
    Rule("markdown-system", 0.8, ("###", "##"), "(?: )?system(?: )?:"),
    Rule("markdown-instruction", 0.5, ("###", "##"), "(?: )?instructions?(?: )?:"),
    Rule("system-line", 0.3, ("system:",), ""),
)
# Longer than any rule can match (heads, fillers and blanks at their widest).
_WINDOW = 320
# A rule never crosses these, so only text after the last one can hold a match.
_CLAUSE_END = re.compile(r"[.!?\n][^.!?\n]*\Z")
_WORD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _rules_pattern(rules: tuple[Rule, ...], heads: list[str]) -> tuple[str, dict[str, Rule]]:
    """Regex source for the rules with these heads; an empty group at each rule's
    end names it (one per head: a group name may occur only once)."""
    tails: dict[str, list[str]] = {}
    by_group: dict[str, Rule] = {}
    for i, rule in enumerate(rules):
        # A rule that is only its heads must still end where a word ends.
        rest = rule.rest.replace(" ", _BLANKS) if rule.rest else "(?![a-z0-9_])"
        for j, head in enumerate(rule.heads):
            if head in heads:
                group = f"r{i}h{j}"
                by_group[group] = rule
                tails.setdefault(head, []).append(f"{rest}(?P<{group}>)")
    after = {head: "(?:" + "|".join(alts) + ")" for head, alts in tails.items()}
    return trie_pattern(heads, after), by_group


class InjectionFilter:
    """Scores a text against prompt-injection rules; one span when the score is high.

    The rules run on lower-cased text in two passes that let the regex engine
    skip ahead: heads that start with a letter are tried only after a
    non-word character (the pattern starts with that character), heads that
    start with a symbol ("<|im_start|>", "###") only at their symbol.
    """

    def __init__(self, config: InjectionFilterConfig, rules: tuple[Rule, ...] = RULES) -> None:
        self.name = config.name
        self.on_error: OnError | None = config.on_error
        self.entity = config.entity
        self.threshold = config.threshold
        heads = sorted({head for rule in rules for head in rule.heads})
        words = [h for h in heads if h[0] in _WORD_CHARS]
        symbols = [h for h in heads if h[0] not in _WORD_CHARS]
        word_rules, self._word_rules = _rules_pattern(rules, words)
        self._words = re.compile(f"[^a-z0-9_](?:{word_rules})")
        symbol_rules, self._symbol_rules = _rules_pattern(rules, symbols)
        self._symbols = re.compile(symbol_rules)
        # Holdback: where a rule could start, or a head still arriving.
        self._heads = re.compile(
            rf"(?<![a-z0-9_])(?:{trie_pattern(words, {})})|(?:{trie_pattern(symbols, {})})",
            re.IGNORECASE,
        )
        self._head_tail = re.compile(
            rf"(?:(?<![a-z0-9_])(?:{prefix_pattern(words)})|(?:{prefix_pattern(symbols)}))\Z",
            re.IGNORECASE,
        )
        self._head_window = longest_match(heads)

    def scan(self, text: str) -> list[Span]:
        """One span at the strongest match when the summed score reaches the threshold."""
        lowered = fold_case(text)
        seen: dict[Rule, tuple[int, int]] = {}
        # A newline in front gives a head at the very start its non-word character.
        for m in self._words.finditer("\n" + lowered):
            if m.lastgroup is not None:
                seen.setdefault(self._word_rules[m.lastgroup], (m.start(), m.end() - 1))
        for m in self._symbols.finditer(lowered):
            if m.lastgroup is not None:
                seen.setdefault(self._symbol_rules[m.lastgroup], m.span())
        if not seen:
            return []
        score = sum(rule.weight for rule in seen)
        if score < self.threshold:
            return []
        strongest = max(seen, key=lambda rule: (rule.weight, -seen[rule][0]))
        start, end = seen[strongest]
        return [Span(self.entity, start, end, min(1.0, score))]

    def holdback(self, text: str) -> int:
        """From the first head word in the unfinished sentence (or a head still arriving)."""
        return clear_of_findings(text, self.open_tail(text), self.scan)

    def open_tail(self, text: str) -> int:
        """Where a rule could still complete, finished matches aside (see holdback)."""
        held = tail_holdback(self._head_tail, text, self._head_window)
        size = len(text)
        clause = _CLAUSE_END.search(text, max(0, size - _WINDOW))
        start = clause.start() + 1 if clause else max(0, size - _WINDOW)
        head = self._heads.search(text, start)
        if head is not None:
            held = max(held, size - head.start())
        return held
