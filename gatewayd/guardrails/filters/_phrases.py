"""Regex sources built from a list of literal phrases, factored as a trie.

A plain alternation `a|b|c` makes the regex engine try every phrase at every
position; the trie form tries one branch per character, and because every
branch starts with a plain character the engine skips ahead to positions
where some phrase could start. The same trie also yields the pattern for
"a phrase could still start here", which holdback needs.

Phrases are bounded like words: a phrase that starts (ends) with a word
character does not match right after (before) another word character.
Scripts written without spaces (Chinese, Japanese kana, Thai) have no word
boundaries to find, so their characters never block a match.
Words of a phrase match across any run of 1 to `MAX_GAP` whitespace
characters; the bound keeps every match, and so every holdback, finite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MAX_GAP = 8
_GAP = rf"\s{{1,{MAX_GAP}}}"
# A word character of a script that separates words with spaces.
_W = r"[^\W\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
# After a phrase's first character: not a word character glued to a word
# character. (Here rather than in front, so the pattern starts with a literal.)
_START_GUARD = rf"(?<!{_W}(?={_W}).)"
END_GUARD = rf"(?!(?<={_W}){_W})"
"""After a phrase: no word character glued to a word character."""
START_BOUNDARY = rf"(?<!{_W}(?={_W}))"
"""Before a phrase (where it is not consumed yet): the same rule as the start guard."""
_WORD_START = re.compile(_W)
# Up to this many distinct first characters, a phrase list is "short".
_FEW_STARTS = 8
NEVER = "(?!)"
"""A regex that matches nothing: the pattern of an empty list."""

_END = ""  # trie key: phrases end here; its child's keys are those phrases
_SPACE = " "  # trie key: the gap between two words

Trie = dict[str, "Trie"]


def _trie(phrases: Iterable[str]) -> Trie:
    root: Trie = {}
    for phrase in phrases:
        words = phrase.split()
        if not words:
            continue
        node = root
        for i, word in enumerate(words):
            if i:
                node = node.setdefault(_SPACE, {})
            for ch in word:
                node = node.setdefault(ch, {})
        node.setdefault(_END, {})[phrase] = {}
    return root


def _edge(key: str) -> str:
    return _GAP if key == _SPACE else re.escape(key)


def _whole(node: Trie, after: Mapping[str, str]) -> str:
    branches = [_edge(k) + _whole(child, after) for k, child in node.items() if k != _END]
    # Ending here is tried last, so the longest phrase wins.
    branches += [after.get(phrase, END_GUARD) for phrase in node.get(_END, {})]
    if len(branches) == 1:
        return branches[0]
    return "(?:" + "|".join(branches) + ")"


def _prefix(node: Trie) -> str:
    branches = []
    for key, child in node.items():
        if key == _END:
            continue
        rest = _prefix(child)
        branches.append(_edge(key) + (f"(?:{rest})?" if rest else ""))
    if not branches:
        return ""
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def whole_pattern(phrases: Iterable[str], after: Mapping[str, str] | None = None) -> str:
    """Regex source matching any whole phrase, longest first.

    `after` maps a phrase to the regex that must follow it (instead of the
    end-of-word guard), so one trie can carry many rules that share words.
    """
    trie = _trie(phrases)
    if not trie:
        return NEVER
    after = after or {}
    if sum(_WORD_START.match(k) is not None for k in trie) <= _FEW_STARTS:
        # Few first characters: the engine skips straight to them.
        return _branches(trie, after, _START_GUARD)
    # Many (a long word list starts with nearly every letter): skipping ahead
    # gains little, so rule out positions inside a word before anything else.
    words = {k: v for k, v in trie.items() if _WORD_START.match(k)}
    others = {k: v for k, v in trie.items() if k not in words}
    inside = f"(?<!{_W})" + _branches(words, after, "")
    return f"(?:{inside}|{_branches(others, after, '')})" if others else inside


def _branches(trie: Trie, after: Mapping[str, str], guard: str) -> str:
    if not trie:
        return NEVER
    branches = [_edge(k) + guard + _whole(child, after) for k, child in trie.items()]
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def trie_pattern(phrases: Iterable[str], after: Mapping[str, str], guard: str = "") -> str:
    """Regex source matching any phrase followed by its `after` regex, for callers
    that check boundaries their own way: `guard` goes after the first character."""
    return _branches(_trie(phrases), after, guard)


def prefix_pattern(phrases: Iterable[str]) -> str:
    """Regex source matching any non-empty prefix of a phrase (no boundary check)."""
    trie = _trie(phrases)
    return _prefix(trie) if trie else NEVER


def longest_match(phrases: Iterable[str]) -> int:
    """The most characters a match of any phrase can span, gaps at their widest."""
    return max(
        (sum(len(w) for w in p.split()) + MAX_GAP * (len(p.split()) - 1) for p in phrases),
        default=0,
    )
