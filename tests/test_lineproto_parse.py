"""Reading line protocol written by others: the drop-in's ``write_api`` parses what
influxdb-client's ``Point`` (the encoder Wolfinch's trade logger uses) produces, and
re-encodes it in the hub's own encoding. Checked against that library's encoder and
InfluxDB 1.x's documented reading of a line (escapes, string fields, precisions)."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from hub import Hub, HubConfig, ValidationError
from hub.compat._records import points
from hubdomain import lineproto as lp


def lines(record: object, precision: str) -> list[str]:
    """What the drop-in's write_api hands InfluxDB for ``record`` (a hub that is not
    started checks and encodes the same way)."""
    return Hub(HubConfig()).intake.points(points(record, precision)).lines

# printable text without control characters (which influxdb-client would turn into
# two-character escapes InfluxDB 1.x does not read back); a trailing backslash makes
# any line ambiguous, for every encoder
text = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")),
               min_size=1, max_size=12).filter(lambda s: not s.endswith("\\"))
names = text.filter(lambda s: not s.startswith("#") and s != "time")


def _backslash_before(s: str, chars: str, odd_only: bool = False) -> bool:
    run = 0
    for ch in s:
        if ch == "\\":
            run += 1
            continue
        if run and ch in chars and (run % 2 or not odd_only):
            return True
        run = 0
    return False


# what influxdb-client's Point can carry to InfluxDB 1.x: it escapes measurements (',',
# ' ') and keys (',', '=', ' ') once and never '"', while 1.x unescapes a measurement twice
# and a field key's '\"': those names it cannot write for 1.x, whatever the reader
measurements = names.filter(lambda s: not _backslash_before(s, ',"= '))
field_keys = names.filter(lambda s: not _backslash_before(s, '"')
                          and not _backslash_before(s, ",= ", odd_only=True))
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(alphabet=string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", ""),
            max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(measurement=measurements, tags=st.dictionaries(names, text, max_size=3),
       fields=st.dictionaries(field_keys, field_values, min_size=1, max_size=4),
       seconds=st.integers(min_value=0, max_value=4_102_444_800))
def test_points_written_by_influxdb_client_read_back_exactly(
        measurement: str, tags: dict[str, str], fields: dict[str, object],
        seconds: int) -> None:
    point = Point(measurement)
    for key, value in tags.items():
        point.tag(key, value)
    for key, value in fields.items():
        point.field(key, value)
    point.time(seconds, WritePrecision.S)
    (line,) = list(lp.split_lines(point.to_line_protocol()))
    parsed = lp.parse_line(line, "s")
    assert parsed.measurement == measurement
    assert parsed.tags == tags
    assert parsed.ns == seconds * 10**9
    assert parsed.fields.keys() == fields.keys()
    for key, value in fields.items():
        got = parsed.fields[key]
        assert type(got) is type(value), (key, value, got)
        assert got == value or (isinstance(value, float) and math.isclose(got, value))


def test_a_repeated_field_is_the_last_one_as_influxd_stores_it() -> None:
    assert lp.parse_line("m v=1,w=2,v=3i", "ns").fields == {"w": 2.0, "v": 3}


def test_precisions_and_missing_time() -> None:
    assert lp.parse_line("m v=1 1697529600123", "ms").ns == 1697529600123 * 10**6
    assert lp.parse_line("m v=1 -5", "us").ns == -5000
    assert lp.parse_line("m v=1", "ns").ns is None
    with pytest.raises(ValidationError, match="write_precision"):
        lp.parse_line("m v=1 1", "h")


@pytest.mark.parametrize(("line", "problem"), [
    ("m", "missing fields"),
    ("m,t v=1", "missing tag value"),
    ("m,t=a=b v=1", "invalid tag format"),
    ("m,t=1,t=2 v=1", "duplicate tag"),
    ("m,time=1 v=1", "invalid tag key 'time'"),
    ("m time=1", "invalid field name 'time'"),
    ('m v="open', "unbalanced quotes"),
    ("m v=1x", "invalid number"),
    ("m v=1u", "unsigned"),
    ("m v=1 12:00", "bad timestamp"),
    ("m v=99999999999999999999i", "out of range"),
    ("m v=1 9999999999999999999", "out of InfluxDB's range"),
    ("m v=tru", "invalid boolean"),
    ("m v=1 1 x", "text after the timestamp"),
])
def test_lines_influxdb_would_refuse_are_refused_naming_the_record(line: str,
                                                                    problem: str) -> None:
    with pytest.raises(ValidationError, match="record") as refused:
        lp.parse_line(line, "ns")
    assert problem in str(refused.value)


def test_string_fields_may_span_lines_and_comments_are_skipped() -> None:
    body = '# a comment\n\nm s="one\ntwo",v=1 1\n  n v=2i 2\n'
    assert [(p.measurement, p.fields) for p in map(lp.parse_line, lp.split_lines(body))] == [
        ("m", {"s": "one\ntwo", "v": 1.0}), ("n", {"v": 2})]
    # a CRLF line ending leaves '\r' in the timestamp: influxd 1.6.7 refuses it as well
    with pytest.raises(ValidationError, match="bad timestamp"):
        lp.parse_line(next(lp.split_lines("n v=2i 2\r\n")), "ns")


def test_records_are_re_encoded_in_the_hubs_encoding() -> None:
    point = Point("trade_event").tag("event_type", "order placed").field("n", 3) \
        .field("price", 1.5).time(1697529600, WritePrecision.S)
    assert lines(point, "ns") == [
        r"trade_event,event_type=order\ placed n=3i,price=1.5 1697529600000000000"]
    # a dict as influxdb-client takes it; its time in the call's precision
    assert lines({"measurement": "m", "tags": {"a": "b", "skip": None},
                  "fields": {"v": 2.0, "none": None}, "time": 1697529600}, "s") == [
        "m,a=b v=2.0 1697529600000000000"]
    assert lines([b"m v=1 1", "m v=2 2"], "ns") == ["m v=1.0 1", "m v=2.0 2"]
    with pytest.raises(ValidationError, match="record"):
        lines(["m v=1 1", "m,broken 2"], "ns")  # all or nothing
    with pytest.raises(ValidationError, match="record"):
        lines(42, "ns")
    with pytest.raises(ValidationError, match="UTF-8"):
        lines(b"m v=\xff 1", "ns")


def test_one_write_cannot_give_a_field_two_types() -> None:
    # influxd refuses the whole request then ("field type conflict"); refused at the call
    hub = Hub(HubConfig())
    with pytest.raises(ValidationError, match="'v' of 'm' is a float field"):
        hub.intake.points(points("m v=1 1\nm v=2i 2", "ns"))
    hub.intake.points(points("m v=1 1", "ns"))
    with pytest.raises(ValidationError, match="float field in InfluxDB, got a string"):
        hub.intake.points(points('m v="x" 2', "ns"))  # learnt from the write before
    assert hub.intake.points(points('m w="x" 2', "ns")).lines == ['m w="x" 2']
