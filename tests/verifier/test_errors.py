"""The exception tree: one root, a token branch, a key branch, all exported,
each carrying its OAuth error code and HTTP status."""

from __future__ import annotations

import inspect

import pytest

import verifier
from verifier import errors
from verifier.errors import render_challenge


def _exception_classes() -> list[type[BaseException]]:
    found = {}
    for module in (errors, verifier.requirements):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("verifier"):
                found[obj.__name__] = obj
    return list(found.values())


def test_every_exception_is_exported() -> None:
    for cls in _exception_classes():
        assert cls.__name__ in verifier.__all__, cls.__name__
        assert getattr(verifier, cls.__name__) is cls


def test_every_export_resolves() -> None:
    for name in verifier.__all__:
        assert getattr(verifier, name) is not None


def test_one_root_two_branches() -> None:
    for cls in _exception_classes():
        assert issubclass(cls, verifier.VerifierError)
        if cls not in (verifier.VerifierError,):
            assert issubclass(cls, verifier.TokenError) != issubclass(
                cls, verifier.KeySourceError
            ), cls.__name__


@pytest.mark.parametrize(
    ("cls", "code", "status"),
    [
        (verifier.MalformedToken, "invalid_token", 401),
        (verifier.ExpiredToken, "invalid_token", 401),
        (verifier.InvalidRequest, "invalid_request", 400),
        (verifier.InsufficientScope, "insufficient_scope", 403),
        (verifier.InvalidDPoPProof, "invalid_dpop_proof", 401),
        (verifier.ReplayedDPoPProof, "invalid_dpop_proof", 401),
        (verifier.UnknownKeyId, "invalid_token", 401),
        (verifier.KeyFetchError, "temporarily_unavailable", 503),
        (verifier.InsufficientAssurance, "insufficient_workload_assurance", 401),
    ],
)
def test_wire_codes(cls: type[verifier.VerifierError], code: str, status: int) -> None:
    assert (cls.error, cls.status) == (code, status)


def test_detail_stays_apart_from_description() -> None:
    exc = verifier.WrongAudience(detail="aud was https://x")

    assert exc.description == verifier.WrongAudience.default_description
    assert "https://x" not in exc.www_authenticate()
    assert "https://x" in str(exc)


def test_challenge_values_are_sanitised() -> None:
    challenge = render_challenge("Bearer", [("error_description", 'a "b" \\ c\n')])

    assert challenge == 'Bearer error_description="a ?b? ? c?"'


def test_missing_token_challenge_has_no_error_code() -> None:
    assert verifier.MissingToken().www_authenticate() == "Bearer"
    assert (
        verifier.MissingToken().www_authenticate("DPoP", realm="api")
        == 'DPoP realm="api"'
    )
