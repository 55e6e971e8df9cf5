"""Task files are checked line by line: every malformed line is refused with its number and
field, never with a crash, and a good file gives its items in order."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidInput, PortalError, TooLarge
from evaluations.formats import FIELDS, task_file_parse

GOOD = {
    "multiple_choice": {"context": "The sky is", "choices": ["blue", "green"], "answer": 0},
    "paired_sentences": {"sent_more": "A b.", "sent_less": "A c.", "bias_type": "age"},
    "loglikelihood": {"text": "Some text."},
}


def parse(text, kind, **kw):
    return task_file_parse(text, kind=kind, max_items=kw.get("max_items", 100), max_bytes=10**6)


@pytest.mark.parametrize("kind", list(FIELDS))
def test_it_reads_a_good_file_keeping_line_numbers(kind):
    text = json.dumps(GOOD[kind]) + "\n\n" + json.dumps(GOOD[kind]) + "\n"
    items = parse(text, kind)
    assert [i["line"] for i in items] == [1, 3]


@pytest.mark.parametrize(
    ("kind", "line", "field"),
    [
        ("multiple_choice", {"context": "x", "choices": ["a", "b"], "answer": 2}, "answer"),
        ("multiple_choice", {"context": "x", "choices": ["a", "b"], "answer": True}, "answer"),
        ("multiple_choice", {"context": "x", "choices": ["a"], "answer": 0}, "choices"),
        ("multiple_choice", {"context": "x", "choices": ["a", ""], "answer": 0}, "choices[1]"),
        ("multiple_choice", {"choices": ["a", "b"], "answer": 0}, "context"),
        ("paired_sentences", {"sent_more": "a", "sent_less": 3, "bias_type": "age"}, "sent_less"),
        ("paired_sentences", {"sent_more": "a", "sent_less": "b"}, "bias_type"),
        ("loglikelihood", {"text": " "}, "text"),
    ],
)
def test_it_names_the_line_and_field(kind, line, field):
    text = json.dumps(GOOD[kind]) + "\n" + json.dumps(line) + "\n"
    with pytest.raises(InvalidInput) as caught:
        parse(text, kind)
    errors = caught.value.extra["errors"]
    assert errors[0]["line"] == 2 and errors[0]["field"] == field
    assert f"line 2, field `{field}`" in caught.value.message


def test_it_refuses_files_over_the_limits():
    line = json.dumps(GOOD["loglikelihood"]) + "\n"
    with pytest.raises(TooLarge) as caught:
        parse(line * 4, "loglikelihood", max_items=3)
    assert caught.value.extra["line"] == 4
    with pytest.raises(TooLarge):
        task_file_parse(line * 10, kind="loglikelihood", max_items=100, max_bytes=len(line) * 9)


def test_it_names_the_line_of_bad_utf8():
    data = (json.dumps(GOOD["loglikelihood"]) + "\n").encode() * 2 + b'{"text": "\xff"}\n'
    with pytest.raises(InvalidInput) as caught:
        task_file_parse(data, kind="loglikelihood", max_items=10, max_bytes=10**6)
    assert caught.value.extra["errors"][0]["line"] == 3


junk_line = st.one_of(
    st.text(st.characters(exclude_characters="\n"), max_size=40),
    st.builds(json.dumps, st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["context", "choices", "answer", "sent_more", "sent_less",
                             "bias_type", "text", "x"]), inner, max_size=4),
        max_leaves=8,
    )),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(FIELDS)), good=st.integers(0, 3), bad=junk_line)
def test_any_line_is_either_an_item_or_an_error_naming_it(kind, good, bad):
    lines = [json.dumps(GOOD[kind])] * good + [bad] + [json.dumps(GOOD[kind])]
    bad_number = good + 1
    try:
        items = parse("\n".join(lines), kind)
    except PortalError as exc:  # never anything else: a 400/413 with a reason, not a 500
        assert exc.status_code in (400, 413)
        errors = exc.extra.get("errors")
        assert errors and errors[0]["line"] == bad_number
        assert f"line {bad_number}" in exc.message
    else:
        numbers = [i["line"] for i in items]
        assert numbers == sorted(numbers) and numbers[-1] == len(lines)
        assert len(items) == good + 1 + (bad.strip() != "")
