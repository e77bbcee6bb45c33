"""One parser of subject and seed lists for every command."""
import pytest

from bench.ids import IdListError, parse_ids, parse_optional_ids


def test_lists_ranges_all_and_errors():
    assert parse_ids("1-3,5", "subjects") == [1, 2, 3, 5] and parse_ids("0,1,2", "seeds") == [0, 1, 2]
    assert parse_ids("3,1-2,2", "seeds") == [1, 2, 3]
    assert parse_ids("all", "subjects", [1, 2, 4]) == [1, 2, 4]
    assert parse_optional_ids(None, "expect-seeds") is None and parse_optional_ids("", "expect-seeds") is None
    for text, message in [("1-x", "expected 'all'"), ("3-1", "empty range"), (",", "names nothing"),
                          ("all", "not defined here")]:
        with pytest.raises(IdListError, match=message):
            parse_ids(text, "seeds")
    with pytest.raises(IdListError, match=r"--subjects: \[7\] not in the dataset"):
        parse_ids("1,7", "subjects", [1, 2])
