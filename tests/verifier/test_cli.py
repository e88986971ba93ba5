"""``wimse-verify``: output, exit statuses, and no issuer dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.verifier import AUDIENCE, ISSUER, MAAL_3, MIAL_3, FakeIssuer
from verifier.cli import EXIT_INVALID, EXIT_OK, EXIT_UNMET, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer("ES256")


@pytest.fixture
def jwks_file(issuer: FakeIssuer, tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return str(path)


def _args(token: str, jwks: str, *extra: str) -> list[str]:
    return [token, "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks", jwks, *extra]


def test_prints_claims_and_levels_and_exits_zero(
    issuer: FakeIssuer, jwks_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.mint(issuer.claims(mial_vector=MIAL_3, maal_vector=MAAL_3))

    status = main(_args(token, jwks_file))

    out = capsys.readouterr().out
    assert status == EXIT_OK
    assert "mial = 3 (token says 3)" in out
    assert "maal = 2 (token says 3)" in out
    assert "  maal.boundary = 1" in out
    assert "lowered maal.boundary 3 -> 1" in out
    assert "mial 4 not reached: mial.deployment_environment is 1, 2 required" in out
    assert token not in out


def test_json_output(
    issuer: FakeIssuer, jwks_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = issuer.claims()
    status = main(_args(issuer.mint(claims), jwks_file, "--json"))

    report = json.loads(capsys.readouterr().out)
    assert status == EXIT_OK
    assert report["claims"]["jti"] == claims["jti"]
    assert report["levels"]["mial"]["level"] == 1
    assert report["levels"]["maal"]["dimensions"]["containment"] == 0


def test_unmet_requirement_exits_two(
    issuer: FakeIssuer, jwks_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        _args(
            issuer.mint(),
            jwks_file,
            "--require-mial",
            "2",
            "--require",
            "maal.containment>=1",
        )
    )

    err = capsys.readouterr().err
    assert status == EXIT_UNMET
    assert 'error="insufficient_workload_assurance"' in err
    assert 'min_assurance="maal.containment>=1"' in err


def test_met_requirement_exits_zero(issuer: FakeIssuer, jwks_file: str) -> None:
    token = issuer.mint(issuer.claims(mial_vector=MIAL_3))

    assert main(_args(token, jwks_file, "--require-mial", "3")) == EXIT_OK


def test_invalid_token_exits_one(
    issuer: FakeIssuer, jwks_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.mint(issuer.claims(aud="https://other.test"))

    status = main(_args(token, jwks_file))

    assert status == EXIT_INVALID
    assert "WrongAudience" in capsys.readouterr().err


def test_reads_token_from_stdin(
    issuer: FakeIssuer,
    jwks_file: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(issuer.mint() + "\n"))

    assert main(_args("-", jwks_file)) == EXIT_OK


@pytest.mark.parametrize(
    "extra",
    [["--require", "maal.nothing>=2"], ["--require-mial", "9"], ["--bogus"]],
)
def test_usage_errors_exit_64(
    issuer: FakeIssuer, jwks_file: str, extra: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        status = main(_args(issuer.mint(), jwks_file, *extra))
        raise SystemExit(status)

    assert caught.value.code == EXIT_USAGE


def test_http_issuer_refused_without_allow_http(issuer: FakeIssuer) -> None:
    status = main([issuer.mint(), "--issuer", "http://127.0.0.1:9", "--audience", "a"])

    assert status == EXIT_INVALID


def test_runs_without_issuer_or_web_dependencies(
    issuer: FakeIssuer, jwks_file: str
) -> None:
    # A meta-path hook makes flask, authlib, requests, click and the issuer
    # package unimportable, as in an install without the [issuer] extra.
    script = (
        "import sys\n"
        "BLOCKED = {'issuer', 'flask', 'authlib', 'requests', 'click', 'werkzeug'}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in BLOCKED:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib, pkgutil, verifier, verifier.integrations\n"
        "for mod in pkgutil.walk_packages(verifier.__path__, 'verifier.'):\n"
        "    importlib.import_module(mod.name)\n"
        "from verifier.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *_args(issuer.mint(), jwks_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )

    assert result.returncode == EXIT_OK, result.stderr
    assert "mial = 1" in result.stdout
