"""``wimse-workload``: enroll a workload's TPM keys and get attested tokens.

Commands (docs/workload.md has the whole flow with the issuer's side):

- ``enroll``: create the attestation key and the ES256 signing key in the
  TPM, print the JWKS to register with ``wimse-issuer client add NAME
  --jwks FILE``, and activate the AK's credential when the client is known.
- ``challenge``: fetch a nonce from ``POST /challenge`` (for evidence made
  elsewhere, such as an EAR from an attestation verifier).
- ``token``: challenge, TPM quote and certify, extra evidence, a
  ``private_key_jwt`` assertion signed in the TPM, and the token request.
- ``jwks``: print the JWKS of the enrolled key again.

Every command takes ``--state`` (``WIMSE_WORKLOAD_STATE``), ``--tcti``
(``WIMSE_WORKLOAD_TCTI``), ``--issuer`` (``WIMSE_WORKLOAD_ISSUER``) and
``--client-id`` (``WIMSE_WORKLOAD_CLIENT_ID``); the last two are saved in
the state folder on first use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .client import (
    EVIDENCE_KINDS,
    DPoPKey,
    Evidence,
    IssuerError,
    MemoryDPoPKey,
    StateError,
    TokenResult,
    Workload,
    WorkloadError,
    load_evidence,
)
from .tpm import TpmToolError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _common(fn: F) -> F:
    options = [
        click.option(
            "--state",
            "state",
            envvar="WIMSE_WORKLOAD_STATE",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="State folder (TPM object files, workload.json).",
        ),
        click.option(
            "--tcti",
            envvar="WIMSE_WORKLOAD_TCTI",
            default=None,
            help="TPM access, e.g. device:/dev/tpmrm0 or "
            "swtpm:host=127.0.0.1,port=2321. Default: tpm2-tools' own.",
        ),
        click.option(
            "--issuer",
            envvar="WIMSE_WORKLOAD_ISSUER",
            default=None,
            help="Issuer identifier (URL). Default: the one saved in --state.",
        ),
        click.option(
            "--client-id",
            envvar="WIMSE_WORKLOAD_CLIENT_ID",
            default=None,
            help="Registered client id. Default: the one saved in --state.",
        ),
        click.option(
            "--timeout",
            type=float,
            default=30.0,
            show_default=True,
            help="Seconds each HTTP request may take.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@contextmanager
def _workload(
    state: Path,
    tcti: str | None,
    issuer: str | None,
    client_id: str | None,
    timeout: float,
    as_json: bool = False,
) -> Iterator[Workload]:
    """A locked ``Workload``; its errors become one-line messages."""
    try:
        workload = Workload(
            state, tcti=tcti, issuer=issuer, client_id=client_id, timeout=timeout
        )
        with workload.lock():
            yield workload
            workload.save()
    except IssuerError as exc:
        if as_json:
            body = {"error": exc.error, "error_description": exc.description}
            click.echo(json.dumps(body, indent=2, sort_keys=True))
        raise click.ClickException(f"the issuer refused: {exc}") from None
    except (StateError, WorkloadError, TpmToolError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group()
def main() -> None:
    """Workload side of the WIMSE assurance issuer: TPM keys and evidence."""


# -- enroll ---------------------------------------------------------------


def _selection(text: str | None) -> dict[str, list[int]] | None:
    if not text:
        return None
    out: dict[str, list[int]] = {}
    for part in text.split("+"):
        bank, sep, indexes = part.partition(":")
        try:
            values = [int(i) for i in indexes.split(",")]
        except ValueError:
            values = []
        if not sep or not values or not all(0 <= i <= 23 for i in values):
            raise click.BadParameter(
                f"{part!r}: use BANK:I,J (e.g. sha256:0,7)", param_hint="--key-pcrs"
            )
        out[bank] = values
    return out


def _chain(paths: tuple[Path, ...]) -> list[bytes]:
    out: list[bytes] = []
    for path in paths:
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(
                f"{path}: {exc}", param_hint="--ek-chain"
            ) from None
        out += [c.public_bytes(Encoding.DER) for c in certs]
    return out


@main.command()
@_common
@click.option(
    "--ek-chain",
    "ek_chain",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM file of CA certificates between the EK certificate and the "
    "manufacturer root (repeat; sent after the EK certificate).",
)
@click.option(
    "--key-pcrs",
    default=None,
    help="Bind a new signing key to the current values of these PCRs "
    "(e.g. sha256:0,7). Default: not bound.",
)
@click.option(
    "--new-keys",
    is_flag=True,
    help="Make the AK and the signing key again (the new key must be "
    "registered again).",
)
@click.option(
    "--jwks-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JWKS to this file.",
)
@click.option(
    "--no-activate", is_flag=True, help="Do not contact the issuer, only the TPM."
)
def enroll(
    state: Path,
    tcti: str | None,
    issuer: str | None,
    client_id: str | None,
    timeout: float,
    ek_chain: tuple[Path, ...],
    key_pcrs: str | None,
    new_keys: bool,
    jwks_out: Path | None,
    no_activate: bool,
) -> None:
    """Create the TPM keys and print the JWKS to register.

    When the client is already registered (--client-id and --issuer known),
    the AK is also activated with the issuer (TPM 2.0 credential
    activation); otherwise that happens on the first `token`.
    """
    chain = _chain(ek_chain)
    selection = _selection(key_pcrs)
    with _workload(state, tcti, issuer, client_id, timeout) as workload:
        jwks = workload.enroll(ek_chain=chain, key_pcrs=selection, new_keys=new_keys)
        if jwks_out is not None:
            jwks_out.write_text(json.dumps(jwks, indent=2) + "\n")
        _echo_json(jwks)
        known = _saved(workload, "issuer") and _saved(workload, "client_id")
        if no_activate or not known:
            click.echo(
                "register this JWKS with `wimse-issuer client add NAME --jwks FILE`; "
                "the AK is activated on the first `wimse-workload token`",
                err=True,
            )
            return
        try:
            workload.activate()
        except IssuerError as exc:
            if exc.error != "invalid_client":
                raise
            click.echo(
                "the issuer does not know this client yet: register the JWKS "
                "above; the AK is activated on the first `wimse-workload token`",
                err=True,
            )
            return
        click.echo("AK activated with the issuer", err=True)


def _saved(workload: Workload, name: str) -> bool:
    try:
        getattr(workload, name)
    except StateError:
        return False
    return True


@main.command()
@_common
def jwks(
    state: Path,
    tcti: str | None,
    issuer: str | None,
    client_id: str | None,
    timeout: float,
) -> None:
    """Print the JWKS of the enrolled signing key."""
    with _workload(state, tcti, issuer, client_id, timeout) as workload:
        _echo_json(workload.jwks())


# -- challenge and token -----------------------------------------------------


@main.command()
@_common
@click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")
def challenge(
    state: Path,
    tcti: str | None,
    issuer: str | None,
    client_id: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Fetch a single-use nonce from POST /challenge and print it."""
    with _workload(state, tcti, issuer, client_id, timeout, as_json) as workload:
        answer = workload.challenge()
        if as_json:
            _echo_json({"nonce": answer.nonce, "expires_in": answer.expires_in})
        else:
            click.echo(answer.nonce)


def _evidence(items: tuple[str, ...]) -> list[Evidence]:
    out = []
    for item in items:
        kind, sep, path = item.partition("=")
        if not sep or kind not in EVIDENCE_KINDS:
            raise click.BadParameter(
                f"{item!r}: use KIND=FILE, KIND one of {', '.join(EVIDENCE_KINDS)}",
                param_hint="--evidence",
            )
        try:
            out.append(load_evidence(kind, Path(path)))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--evidence") from None
    return out


def _explain(result: TokenResult) -> None:
    claims = result.unverified_claims()
    levels: Mapping[str, Any] = claims.get("assurance_levels", {})
    for kind in ("mial", "maal"):
        vector = levels.get(kind, {})
        parts = " ".join(f"{dim}={value}" for dim, value in vector.items())
        click.echo(f"{kind} {claims.get(kind)}: {parts}", err=True)
    for piece in levels.get("evidence", []):
        click.echo(f"evidence {piece.get('kind')} {piece.get('digest')}", err=True)
    if "cnf" in claims:
        click.echo(f"bound to DPoP key {claims['cnf'].get('jkt')}", err=True)


@main.command()
@_common
@click.option(
    "--evidence",
    "evidence",
    multiple=True,
    metavar="KIND=FILE",
    help="Extra evidence (repeat): ear=JWT file, nitro_attestation=document, "
    "slsa_provenance=sigstore bundle JSON.",
)
@click.option("--nonce", default=None, help="Use this challenge nonce (default: new).")
@click.option("--audience", "audiences", multiple=True, help="Audience (repeat).")
@click.option("--scope", default=None, help="Requested scope (space separated).")
@click.option(
    "--min-mial", type=click.IntRange(0, 4), default=None, help="Lowest MIAL accepted."
)
@click.option(
    "--min-maal", type=click.IntRange(0, 4), default=None, help="Lowest MAAL accepted."
)
@click.option(
    "--min-assurance", default=None, help="Per-dimension demands, e.g. mial.x>=3."
)
@click.option(
    "--subject-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Exchange this token (RFC 8693) instead of client_credentials.",
)
@click.option(
    "--subject-token-type",
    default="urn:ietf:params:oauth:token-type:jwt",
    show_default=True,
)
@click.option("--dpop", is_flag=True, help="Ask for a DPoP-bound token (RFC 9449).")
@click.option(
    "--dpop-key",
    type=click.Choice(["tpm", "memory"]),
    default="tpm",
    show_default=True,
    help="Where the DPoP key lives: in the TPM (kept), or in memory (this run).",
)
@click.option(
    "--no-tpm-evidence", is_flag=True, help="Send only the --evidence pieces."
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole response.")
@click.option("--explain", is_flag=True, help="Print the levels to stderr.")
def token(
    state: Path,
    tcti: str | None,
    issuer: str | None,
    client_id: str | None,
    timeout: float,
    evidence: tuple[str, ...],
    nonce: str | None,
    audiences: tuple[str, ...],
    scope: str | None,
    min_mial: int | None,
    min_maal: int | None,
    min_assurance: str | None,
    subject_token_file: Path | None,
    subject_token_type: str,
    dpop: bool,
    dpop_key: str,
    no_tpm_evidence: bool,
    as_json: bool,
    explain: bool,
) -> None:
    """Get an access token backed by TPM evidence and print it.

    Prints the access token alone, or with --json the token response.
    """
    pieces = _evidence(evidence)
    requirement = {
        name: str(value)
        for name, value in (
            ("min_mial", min_mial),
            ("min_maal", min_maal),
            ("min_assurance", min_assurance),
        )
        if value is not None
    }
    subject_token = None
    if subject_token_file is not None:
        subject_token = subject_token_file.read_text().strip()
    with _workload(state, tcti, issuer, client_id, timeout, as_json) as workload:
        key: DPoPKey | None = None
        if dpop:
            key = workload.dpop_key() if dpop_key == "tpm" else MemoryDPoPKey()
        result = workload.fetch_token(
            evidence=pieces,
            nonce=nonce,
            tpm=not no_tpm_evidence,
            dpop=key,
            audiences=audiences,
            scope=scope,
            requirement=requirement,
            subject_token=subject_token,
            subject_token_type=subject_token_type,
        )
        if as_json:
            _echo_json(dict(result.response))
        else:
            click.echo(result.access_token)
        if explain:
            _explain(result)
