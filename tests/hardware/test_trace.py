"""Availability traces: parsed, resolved against the fleet, and every bad trace refused
with its file, line and column."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogsim.hardware.tables import TableError
from fogsim.hardware.trace import COLUMNS, read_trace, resolve

IDS = [str(i) for i in range(4)]
CLASSES = ["big", "small"]

GOOD = """\
# a note: skipped, but counted as a line
node,class,start_s,end_s,battery
0,,0,3600,0.9
0,,7200,10800,
,small,100,200,0.5

1,,3600,7200,0.2
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return str(path)


def test_a_good_trace_gives_each_key_its_sorted_windows(tmp_path) -> None:
    windows = resolve(read_trace(write(tmp_path, GOOD)), IDS, CLASSES)
    node0 = windows[("node", "0")]
    assert node0.start.tolist() == [0, 7200] and node0.end.tolist() == [3600, 10800]
    assert node0.battery[0] == 0.9 and np.isnan(node0.battery[1])
    assert node0.at(0) == 0 and node0.at(3599.9) == 0 and node0.at(3600) is None
    assert node0.at(9000) == 1 and node0.at(-1) is None and node0.at(1e9) is None
    assert windows[("class", "small")].start.tolist() == [100]
    assert set(windows) == {("node", "0"), ("node", "1"), ("class", "small")}


HEADER = "node,class,start_s,end_s,battery\n"
BAD = [
    # (rows after the header, words the error must hold: line and column first)
    ("0,,0,100,\n0,,50,200,\n", ["line 3, column 3 (start_s)", "[50, 200)", "overlaps", "line 2"]),
    ("9,,0,100,\n", ["line 2, column 1 (node)", "'9' is no node", "allowed: 0..3"]),
    (",tiny,0,100,\n", ["line 2, column 2 (class)", "'tiny'", "allowed: big, small"]),
    ("0,,-5,100,\n", ["line 2, column 3 (start_s)", "'-5'", "out of range", ">= 0"]),
    ("0,,0,-1,\n", ["line 2, column 4 (end_s)", "'-1'", ">= 0"]),
    ("0,,100,100,\n", ["line 2, column 4 (end_s)", "not after start_s 100"]),
    ("0,,0,1e400,\n", ["line 2, column 4 (end_s)", "out of range"]),
    ("0,,0,ten,\n", ["line 2, column 4 (end_s)", "'ten' is not a number"]),
    ("0,,0,100,1.5\n", ["line 2, column 5 (battery)", "<= 1"]),
    ("0,big,0,100,\n", ["line 2, column 2 (class)", "give node or class (both given)"]),
    (",,0,100,\n", ["line 2:", "give node or class (neither given)"]),
    ("0,,,100,\n", ["line 2, column 3 (start_s)", "blank"]),
    ("0,,0,100\n", ["line 2:", "4 fields, but the header has 5"]),
]


@pytest.mark.parametrize(("rows", "words"), BAD, ids=[w[1] for _, w in BAD])
def test_bad_traces_name_line_and_column(tmp_path, rows, words) -> None:
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(TableError) as info:
        resolve(read_trace(path), IDS, CLASSES)
    message = str(info.value)
    assert message.startswith(path), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["empty"]),
        ("node,start_s,end_s\n", ["a header but no rows"]),
        ("node,start,end_s\n0,0,1\n", ["line 1, column 2", "unknown column 'start'", "'start_s'"]),
        ("node,end_s\n0,1\n", ["line 1", "no column 'start_s'"]),
        ("start_s,end_s\n0,1\n", ["no column 'node' or 'class'"]),
        ("node,node,start_s,end_s\n", ["column 2", "'node' repeated"]),
    ],
)
def test_bad_headers_are_named(tmp_path, text, words) -> None:
    with pytest.raises(TableError) as info:
        read_trace(write(tmp_path, text))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_a_missing_or_binary_file_is_named(tmp_path) -> None:
    with pytest.raises(TableError, match="file not found"):
        read_trace(str(tmp_path / "nope.csv"))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TableError, match="not UTF-8"):
        read_trace(str(tmp_path / "bin.csv"))


def test_an_edited_trace_is_read_again(tmp_path) -> None:
    path = write(tmp_path, HEADER + "0,,0,100,\n")
    assert len(read_trace(path).windows) == 1
    write(tmp_path, HEADER + "0,,0,100,\n1,,0,100,\n")  # a new size: a new version
    assert len(read_trace(path).windows) == 2


CELLS = ["0", "1", "-1", "x", "", "1e999", "nan", "0.5", "big", "small", "#", '"', ",", "é"]


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    header=st.lists(st.sampled_from([*COLUMNS, "junk", ""]), min_size=1, max_size=6),
    rows=st.lists(st.lists(st.sampled_from(CELLS) | st.text(max_size=4), max_size=6), max_size=5),
)
def test_garbage_traces_are_refused_or_read(header, rows) -> None:
    """Whatever the file holds: a trace, or one TableError naming the file."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(",".join(r) for r in [header, *rows]))
        try:
            resolve(read_trace(path), IDS, CLASSES)
        except TableError as e:
            assert str(e).startswith(path)
