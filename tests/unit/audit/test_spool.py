"""The on-disk spool: records, segments, sets left by dead processes, and a model of crashes."""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.audit import spool as spool_module
from gatewayd.audit.event import AuditEvent
from gatewayd.audit.jsonl import encode_lines
from gatewayd.audit.spool import DEAD_LETTER, Spool, frame, unframe

MakeEvent = Callable[[int], AuditEvent]


def drain(spool: Spool, limit: int = 100) -> list[AuditEvent]:
    """Take and done everything the spool holds, as a replay to a healthy sink does."""
    events: list[AuditEvent] = []
    while (taken := spool.take(limit)) is not None:
        events.extend(taken.events)
        spool.done(taken)
    return events


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """An opened spool in tmp_path/spool, closed afterwards."""
    opened = Spool(tmp_path / "spool")
    opened.open()
    yield opened
    opened.close()


def test_a_record_is_its_line_behind_a_checksum() -> None:
    """frame and unframe round-trip a line; a torn or altered record reads as None."""
    line = b'{"a":1}\n'
    record = frame(line)
    assert unframe(record) == line
    assert unframe(record[:-1]) is None
    assert unframe(record.replace(b"1", b"2")) is None
    assert unframe(b"\0" * len(record)) is None


def test_events_come_back_as_they_went_in(spool: Spool, make_event: MakeEvent) -> None:
    """Every field of a spooled event survives the round trip, ts to the microsecond."""
    events = [make_event(n) for n in range(3)]
    assert spool.append(events) == 0
    assert spool.stats.segments == 1
    assert spool.stats.oldest_ts == events[0].ts
    back = drain(spool, limit=2)
    assert [e.as_dict() for e in back] == [e.as_dict() for e in events]
    assert not spool.backlog
    assert list(spool.directory.glob("*.spool")) == []


def test_take_is_not_done(spool: Spool, make_event: MakeEvent) -> None:
    """Events taken but never done are taken again: a failed replay loses nothing."""
    spool.append([make_event(n) for n in range(4)])
    first = spool.take(3)
    assert first is not None
    again = spool.take(3)
    assert again is not None
    assert [e.request_id for e in again.events] == ["req-0", "req-1", "req-2"]
    spool.done(again)
    rest = spool.take(3)
    assert rest is not None
    assert [e.request_id for e in rest.events] == ["req-3"]


def test_segments_roll_and_are_removed_as_they_are_replayed(
    spool: Spool, make_event: MakeEvent
) -> None:
    """Past SEGMENT_BYTES a new segment starts; each is removed once replayed."""
    with mock.patch.object(spool_module, "SEGMENT_BYTES", 1):
        for n in range(3):
            spool.append([make_event(n)])
    assert len(list(spool.directory.glob("*.spool"))) == 3
    assert [e.request_id for e in drain(spool, limit=1)] == ["req-0", "req-1", "req-2"]
    assert list(spool.directory.glob("*.spool")) == []


def test_a_set_whose_writer_lives_is_left_alone(tmp_path: Path, make_event: MakeEvent) -> None:
    """A set is not replayed by another spool while its writer holds the lock, only after."""
    directory = tmp_path / "spool"
    writer, other = Spool(directory), Spool(directory)
    writer.open()
    writer.append([make_event(1)])
    other.open()
    assert drain(other) == []
    writer.close()
    other.scan()
    assert [e.request_id for e in drain(other)] == ["req-1"]
    other.close()
    assert list(directory.iterdir()) == []


def test_a_torn_last_record_is_skipped(tmp_path: Path, make_event: MakeEvent) -> None:
    """Bytes of a record cut short by a crash are skipped; the whole records before it are kept."""
    directory = tmp_path / "spool"
    crashed = Spool(directory)
    crashed.open()
    crashed.append([make_event(1)])
    crashed.close()
    (segment,) = directory.glob("*.spool")
    lines, _ = encode_lines([make_event(2)])
    with segment.open("ab") as file:
        file.write(frame(lines[0])[:20])
    after = Spool(directory)
    after.open()
    assert [e.request_id for e in drain(after)] == ["req-1"]
    after.close()


def test_dead_letters_are_json_lines_with_the_refusal(spool: Spool, make_event: MakeEvent) -> None:
    """Each refused event is one JSON object: its columns and the refusal's fixed word."""
    spool.dead_letter([(make_event(1), "SQLSTATE 22021"), (make_event(2), "SQLSTATE 23514")])
    records = [
        orjson.loads(line) for line in (spool.directory / DEAD_LETTER).read_bytes().splitlines()
    ]
    assert [(r["request_id"], r["refused"]) for r in records] == [
        ("req-1", "SQLSTATE 22021"),
        ("req-2", "SQLSTATE 23514"),
    ]


# --- a model of appends, crashes and replays --------------------------------

Op = tuple[str, int]

_OPS = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6)),
    # A crash while appending that many events: some prefix of their bytes lands.
    st.tuples(st.just("crash"), st.integers(0, 6)),
    # A replay whose sink fails after that many batches.
    st.tuples(st.just("replay"), st.integers(0, 4)),
    # A crash after that many batches were stored, the last one not yet done.
    st.tuples(st.just("crash_replay"), st.integers(1, 4)),
)


@dataclass
class Model:
    """What the spool promises: acknowledged events, and what may show up beyond them."""

    acked: list[str] = field(default_factory=list)
    # Whole records of a crashed append: never acknowledged, may be replayed.
    maybe: set[str] = field(default_factory=set)
    delivered: list[str] = field(default_factory=list)
    # Stored but not done when a replay crashed: may be stored twice.
    repeatable: set[str] = field(default_factory=set)


def _event(number: int) -> AuditEvent:
    return AuditEvent(request_id=f"e{number}", method="POST", path="/v1", ts=1_780_000_000.0)


def run(ops: list[Op], cut: int, directory: Path) -> Model:
    """Play `ops` against real spools in `directory`, one per process lifetime."""
    model = Model()
    numbers = itertools.count()
    spool = Spool(directory)
    spool.open()
    for op, arg in ops:
        if op == "append":
            events = [_event(next(numbers)) for _ in range(arg)]
            spool.append(events)
            model.acked += [e.request_id for e in events]
        elif op == "crash":
            torn = [_event(next(numbers)) for _ in range(arg)]
            _crash_while_appending(spool, torn, cut, model)
            spool = Spool(directory)
            spool.open()
        else:
            stored = 0
            while stored < arg and (taken := spool.take(2)) is not None:
                model.delivered += [e.request_id for e in taken.events]
                stored += 1
                if op == "crash_replay" and stored == arg:
                    model.repeatable |= {e.request_id for e in taken.events}
                    break
                spool.done(taken)
            if op == "crash_replay":
                spool.close()
                spool = Spool(directory)
                spool.open()
    model.delivered += [e.request_id for e in drain(spool, limit=3)]
    spool.close()
    return model


def _crash_while_appending(spool: Spool, torn: list[AuditEvent], cut: int, model: Model) -> None:
    """Close `spool` as a kill would leave it: `cut` bytes of `torn`'s records at its tail."""
    segments = sorted(spool.directory.glob("*.spool"))
    spool.close()
    if not torn or not segments:
        return
    lines, _ = encode_lines(torn)
    records = [frame(line) for line in lines]
    data = b"".join(records)[: cut % (sum(map(len, records)) + 1)]
    with segments[-1].open("ab") as file:
        file.write(data)
    whole = 0
    for event, record in zip(torn, records, strict=True):
        whole += len(record)
        if whole <= len(data):
            model.maybe.add(event.request_id)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_OPS, max_size=25), cut=st.integers(0, 10_000))
def test_no_acknowledged_event_is_lost_or_duplicated(ops: list[Op], cut: int) -> None:
    """After any appends, crashes and replays, each acknowledged event is stored, in order,
    and twice only when a replay crashed between storing it and moving past it."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(spool_module, "SEGMENT_BYTES", 700),
    ):
        model = run(ops, cut, Path(tmp) / "spool")
        left = list((Path(tmp) / "spool").iterdir())
    counts = Counter(model.delivered)
    assert set(model.acked) <= set(counts)
    assert set(counts) <= set(model.acked) | model.maybe
    assert {i for i, n in counts.items() if n > 1} <= model.repeatable
    first_seen = list(dict.fromkeys(model.delivered))
    assert [i for i in first_seen if i in set(model.acked)] == model.acked
    assert left == []
