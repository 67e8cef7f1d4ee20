"""Every JSON-lines reader reports a bad line at FILE:LINE and the column an editor shows (characters from 1, a
byte order mark not counted): the data readers (ftlab.records, for training data) and ftlab.io.read_jsonl (task
files, evaluation samples)."""

import pytest

from ftlab.config import DataConfig
from ftlab.errors import DataError
from ftlab.io import read_jsonl
from ftlab.records import read_records

READERS = {"records": lambda path: list(read_records(str(path), DataConfig())), "read_jsonl": read_jsonl}
GOOD = b'{"prompt": "a", "completion": "b"}\n'
# column 44 is where the value of "x" should start: `tru` is not a JSON value
AT_44 = '{"prompt": "caf\u00e9", "completion": "o", "x": tru}'

CASES = {
    "error at column 44": (AT_44.encode(), "not valid JSON (Expecting value at column 44)"),
    "the same after a byte order mark": (b"\xef\xbb\xbf" + AT_44.encode(),
                                         "not valid JSON (Expecting value at column 44)"),
    "a byte that is not UTF-8": (b'{"prompt": "caf\xc3\xa9", "completion": "\xff"}',
                                 "not UTF-8 (invalid start byte: byte 0xff at column 35)"),
    "a trailing comma": (b'{"prompt": "a", "completion": "b",}', "not valid JSON (a trailing comma at column 34)"),
    "a trailing comma in a list": (b'{"prompt": "a", "completion": "b", "tags": [1, 2,  ]}',
                                   "not valid JSON (a trailing comma at column 49)"),
    "valid JSON, not an object": (b'["a", "b"]', "expected a JSON object, got a JSON list"),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_line_is_named_with_its_line_and_column(tmp_path, reader, case):
    line, message = CASES[case]
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD + b"\n" + line + b"\n" + GOOD)  # the bad line is line 3 (line 2 is blank)
    with pytest.raises(DataError) as error:
        READERS[reader](path)
    assert str(error.value).startswith(f"{path}:3: {message}"), str(error.value)


@pytest.mark.parametrize("reader", list(READERS))
def test_a_byte_order_mark_at_the_start_of_a_file_is_read_past(tmp_path, reader):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD + GOOD)
    assert len(READERS[reader](path)) == 2
