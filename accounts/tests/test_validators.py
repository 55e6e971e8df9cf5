from __future__ import annotations

import pytest

from accounts.validators import orcid_error, orcid_normalize


@pytest.mark.parametrize(
    "value", ["0000-0002-1825-0097", "0000-0001-5109-3700", "0000-0002-1694-233X"]
)
def test_real_orcid_ids_pass(value):
    assert orcid_error(value) is None


def test_urls_and_bare_digits_are_normalised():
    assert orcid_normalize("https://orcid.org/0000-0002-1694-233x") == "0000-0002-1694-233X"
    assert orcid_normalize("0000000218250097") == "0000-0002-1825-0097"
    assert orcid_error("https://orcid.org/0000-0002-1825-0097") is None


@pytest.mark.parametrize("value", ["0000-0002-1825-0098", "0000-0002-1694-2330"])
def test_a_wrong_check_digit_is_refused(value):
    assert "check digit" in orcid_error(value)


@pytest.mark.parametrize("value", ["1234", "0000-0002-1825-009", "abcd-0002-1825-0097", ""])
def test_a_malformed_id_is_refused(value):
    assert "looks like" in orcid_error(value)
