"""Masked forms of a client's credential header (clientauth, boundary.mask_client_auth)."""
import pytest

from keypool.redact import is_masked, mask_credential

TOKEN = "kmx-client-token-abcdef123456"


@pytest.mark.parametrize("value, shown", [
    (f"Bearer {TOKEN}", "Bearer kmx…3456"),
    (f"bearer   {TOKEN} ", "bearer kmx…3456"),
    (TOKEN, "kmx…3456"),
    ("Basic dXNlcjpwYXNzd29yZA==", "Basic dXN…ZA=="),
    ("short", "…rt"),
    ("", "…"),
    ("Bearer", "…er"),
])
def test_mask_credential_keeps_the_scheme_and_hides_the_secret(value, shown):
    assert mask_credential(value) == shown


@pytest.mark.parametrize("value", [f"Bearer {TOKEN}", TOKEN, "short", "", "Basic abc def ghi"])
def test_a_masked_form_is_recognised_and_a_secret_is_not(value):
    assert is_masked(mask_credential(value))
    assert not is_masked(value)


def test_an_ellipsis_does_not_hide_a_long_secret():
    assert not is_masked("Bearer kmx-client-token…abcdef123456")
