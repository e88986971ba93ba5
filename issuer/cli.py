"""``wimse-issuer``: serve, and manage clients, keys, policy and the audit log.

Every command takes ``--home`` (state folder, default ``.``) and
``--config`` (TOML file); see docs/configuration.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .clients import ClientRegistry, RegistrationError
from .config import ConfigError, Settings, load_settings
from .errors import EvidenceError, OAuthError
from .keys import KeyRing, SecretHasher
from .policy import Policy, PolicyError
from .storage import Database, StoreUnavailable, sqlite_file

#: Seconds ``serve`` waits for requests in progress when told to stop,
#: before it kills the workers that still hold one.
SHUTDOWN_SECONDS = 10

__all__ = ["main"]


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    opts = ctx.find_root().params
    try:
        return load_settings(
            opts.get("config"), overrides={"home": opts.get("home"), **overrides}
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _registry(settings: Settings) -> ClientRegistry:
    db = Database(settings.resolved_database_url())
    db.migrate()
    hasher = SecretHasher(settings.keys_dir)
    return ClientRegistry(db, hasher, settings.secret_grace_period)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=_as_text))


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=_as_text)


def _as_text(value: Any) -> str:
    """JSON for a value no writer stores but an edited database may hold
    (bytes in a text column): its text, undecodable bytes replaced."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _Commands(click.Group):
    """The command group: a database that cannot be reached or read ends
    any command with a one-line error and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from .audit import TrailChanged

        try:
            return super().invoke(ctx)
        except StoreUnavailable as exc:
            raise click.ClickException(
                f"database unavailable or unreadable ({exc})"
            ) from None
        except TrailChanged as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands)
@click.option("--home", default=None, help="State folder (database, keys/). Default: .")
@click.option("--config", default=None, help="Configuration file (TOML).")
def main(home: str | None, config: str | None) -> None:
    """Workload token issuer with machine assurance levels."""


@main.command()
@click.option("--host", default=None, help="Listen address. Default 127.0.0.1.")
@click.option("--port", type=int, default=None, help="Listen port. Default 8080.")
@click.option(
    "--issuer-url", default=None, help="Issuer identifier. Default http://HOST:PORT."
)
@click.option("--workers", type=int, default=None, help="Worker processes. Default 1.")
@click.option(
    "--tls-cert",
    default=None,
    help="Server certificate chain (PEM): terminate TLS in the issuer (cheroot).",
)
@click.option("--tls-key", default=None, help="Private key (PEM) of --tls-cert.")
@click.option(
    "--tls-client-ca",
    default=None,
    help="CAs (PEM) client certificates may chain to, besides mtls_ca_file.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    issuer_url: str | None,
    workers: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
) -> None:
    """Run the issuer: on granian, or on cheroot when it terminates TLS."""
    from . import metrics
    from .service import IssuerService

    settings = _settings(
        ctx,
        host=host,
        port=port,
        issuer_url=issuer_url,
        workers=workers,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_client_ca,
    )
    # Build the service once here so tables and keys exist before workers
    # start, and so configuration errors stop the command with a message.
    try:
        IssuerService(settings).close()
        # This process serves nothing: its policy gauge would go stale.
        metrics.forget_process(os.getpid())
    except (ConfigError, PolicyError) as exc:
        raise click.ClickException(str(exc)) from None
    except StoreUnavailable as exc:
        raise click.ClickException(f"database unreachable ({exc})") from None
    except (ArgumentError, NoSuchModuleError):
        # The URL itself is not echoed: it may hold a password.
        raise click.ClickException(
            "database_url is not a valid SQLAlchemy URL or names an unknown driver"
        ) from None
    except ValueError:
        raise click.ClickException("redis_url is not a valid Redis URL") from None
    env = {
        "WIMSE_ISSUER_HOME": str(settings.home_path),
        "WIMSE_ISSUER_HOST": settings.host,
        "WIMSE_ISSUER_PORT": str(settings.port),
        "WIMSE_ISSUER_ISSUER_URL": settings.resolved_issuer_url(),
        "WIMSE_ISSUER_WORKERS": str(settings.workers),
    }
    config = ctx.find_root().params.get("config")
    if config:
        env["WIMSE_ISSUER_CONFIG"] = str(Path(config).resolve())
    if settings.terminates_tls:
        _serve_tls(settings, env)
        return
    _check_address(settings.host, settings.port)
    os.environ.update(env)
    click.echo(
        f"wimse-issuer: serving {settings.resolved_issuer_url()} on "
        f"{settings.host}:{settings.port} (home {settings.home_path})",
        err=True,
    )
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "issuer.wsgi:app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.WSGI,
        workers=settings.workers,
        # Each thread can be held by a client sending its body slowly, which
        # granian does not time out; see docs/operations.md for the proxy
        # that buffers bodies in front of the issuer.
        blocking_threads=settings.threads,
        backpressure=64,
        # A worker that dies (killed, or a fatal fault) is replaced instead
        # of taking the whole server down.
        respawn_failed_workers=True,
        # A client that never finishes its body would otherwise hold a
        # graceful shutdown open forever.
        workers_kill_timeout=SHUTDOWN_SECONDS,
        log_access=False,
    ).serve()
    _fold_wal(settings)


def _fold_wal(settings: Settings) -> None:
    """Once every worker is gone, fold SQLite's WAL into the database file.

    Each worker closes its connections as it stops, and the last connection
    to close folds the WAL and removes it; but two workers closing at the
    same moment can each see the other's and both leave it. One connection
    opened and closed here, with no worker left, always is the last.
    """
    url = settings.resolved_database_url()
    if not url.startswith("sqlite"):
        return
    database = Database(url)
    try:
        with database.connection():
            pass
    except StoreUnavailable:
        pass  # the next start recovers the WAL all the same
    finally:
        database.dispose()


def _check_address(host: str, port: int) -> None:
    """Fail with a message, not granian's traceback, when the address cannot
    be bound (in use, no permission, not local)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot serve on {host}:{port}: {reason}") from None


def _serve_tls(settings: Settings, env: dict[str, str]) -> None:
    """``serve`` with TLS terminated by the issuer (issuer/tlsserve.py)."""
    from .tlsserve import build_context, client_ca_files
    from .tlsserve import serve as serve_tls

    try:
        context = build_context(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    # The app (issuer.wsgi) reads its settings from the environment: it must
    # see TLS on, or it would ignore the handshake's client certificates.
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, name)
        env[f"WIMSE_ISSUER_{name.upper()}"] = str(Path(path).resolve()) if path else ""
    os.environ.update(env)
    cas = ", ".join(name for name, _ in client_ca_files(settings))
    click.echo(
        f"wimse-issuer: serving {settings.resolved_issuer_url()} on "
        f"{settings.host}:{settings.port} over TLS (cheroot; client certificates "
        f"{'optional, from ' + cas if cas else 'not requested'}; "
        f"home {settings.home_path})",
        err=True,
    )
    try:
        serve_tls(settings, context)
    except OSError as exc:
        # Binding failed (address in use, no permission); cheroot's message
        # names the address and the reason.
        raise click.ClickException(f"cannot serve: {exc}") from None


# -- clients -------------------------------------------------------------


@main.group()
def client() -> None:
    """Register and manage clients."""


def _declared(items: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit() or name.split(".")[0] not in ("mial", "maal"):
            raise click.BadParameter(
                f"{item!r}: use kind.dimension=N", param_hint="--declare"
            )
        out[name] = int(value)
    return out


def _client_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--grant", "grants", multiple=True, help="Allowed grant type (repeat)."
            ),
            click.option(
                "--scope", "scopes", multiple=True, help="Allowed scope (repeat)."
            ),
            click.option(
                "--audience",
                "audiences",
                multiple=True,
                help="Allowed audience (repeat); the first is the default.",
            ),
            click.option(
                "--subject", default=None, help="Token sub for client_credentials."
            ),
            click.option(
                "--subject-pattern",
                "patterns",
                multiple=True,
                help="Glob the subject_token's identity must match (repeat).",
            ),
            click.option(
                "--declare",
                "declared",
                multiple=True,
                help="Operator-declared rating, e.g. mial.configuration=1 (caps at 1).",
            ),
            click.option(
                "--jwks",
                "jwks_file",
                type=click.Path(exists=True, dir_okay=False),
                help="JWKS file: authenticate with private_key_jwt.",
            ),
            click.option(
                "--resource-server/--no-resource-server",
                default=None,
                help="May introspect tokens for its audiences.",
            ),
            click.option(
                "--dpop-bound/--no-dpop-bound",
                default=None,
                help="Only DPoP-bound tokens (RFC 9449 dpop_bound_access_tokens).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _grant_names(grants: tuple[str, ...]) -> list[str] | None:
    if not grants:
        return None
    alias = {"token_exchange": "urn:ietf:params:oauth:grant-type:token-exchange"}
    return [alias.get(g, g) for g in grants]


def _load_jwks(path: str | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"cannot read JWKS: {exc}", param_hint="--jwks"
        ) from None


def _tls_auth(values: tuple[str, ...]) -> dict[str, str] | None:
    """``subject_dn=CN=x`` or ``san_uri=spiffe://...`` as RFC 8705 metadata."""
    if not values:
        return None
    if len(values) > 1:
        raise click.BadParameter(
            "give it once: a client registers exactly one subject (RFC 8705 "
            "section 2.1.2)",
            param_hint="--tls-auth",
        )
    value = values[0]
    name, sep, subject = value.partition("=")
    if not sep or not subject:
        raise click.BadParameter(
            f"{value!r}: use subject_dn=..., san_dns=..., san_uri=..., san_ip=... "
            "or san_email=...",
            param_hint="--tls-auth",
        )
    return {"tls_client_auth_" + name.removeprefix("tls_client_auth_"): subject}


@client.command("add")
@click.argument("name")
@_client_options
@click.option(
    "--tls-auth",
    "tls_auth",
    multiple=True,
    help="Authenticate with a CA-issued certificate (RFC 8705 tls_client_auth) "
    'whose subject matches, e.g. subject_dn="CN=a,O=b" or san_uri=spiffe://td/w.',
)
@click.option(
    "--self-signed-tls",
    is_flag=True,
    help="With --jwks: authenticate with a self-signed certificate holding one "
    "of those keys (RFC 8705 self_signed_tls_client_auth).",
)
@click.option(
    "--spiffe-id",
    default=None,
    help="Authenticate with JWT-SVIDs for this SPIFFE ID as client assertions "
    "(it also becomes the token sub).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def client_add(
    ctx: click.Context,
    name: str,
    grants: tuple[str, ...],
    scopes: tuple[str, ...],
    audiences: tuple[str, ...],
    subject: str | None,
    patterns: tuple[str, ...],
    declared: tuple[str, ...],
    jwks_file: str | None,
    resource_server: bool | None,
    dpop_bound: bool | None,
    tls_auth: tuple[str, ...],
    self_signed_tls: bool,
    spiffe_id: str | None,
    as_json: bool,
) -> None:
    """Register a client; its secret is printed once."""
    registry = _registry(_settings(ctx))
    try:
        record, secret = registry.add(
            name,
            jwks=_load_jwks(jwks_file),
            grant_types=_grant_names(grants),
            scopes=list(scopes),
            audiences=list(audiences),
            subject=subject,
            subject_patterns=list(patterns),
            declared=_declared(declared),
            resource_server=bool(resource_server),
            dpop_bound=bool(dpop_bound),
            tls_auth=_tls_auth(tls_auth),
            self_signed_tls=self_signed_tls,
            spiffe_id=spiffe_id,
        )
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from None
    out = {"client_id": record.client_id, **record.public_view()}
    if secret is not None:
        out["client_secret"] = secret
    if as_json:
        _echo_json(out)
    else:
        click.echo(f"client_id:     {record.client_id}")
        if secret is not None:
            click.echo(f"client_secret: {secret}")
            click.echo("(the secret is shown only now)")


@client.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def client_list(ctx: click.Context, as_json: bool) -> None:
    """List clients."""
    clients = _registry(_settings(ctx)).all()
    if as_json:
        _echo_json([c.public_view() for c in clients])
        return
    for c in clients:
        state = "disabled" if c.disabled else "enabled"
        click.echo(f"{c.client_id}  {c.name}  {state}  {','.join(c.auth_methods)}")


def _get(registry: ClientRegistry, client_id: str) -> Any:
    found = registry.get(client_id)
    if found is None:
        raise click.ClickException(f"no client {client_id}")
    return found


@client.command("show")
@click.argument("client_id")
@click.pass_context
def client_show(ctx: click.Context, client_id: str) -> None:
    """Show one client as JSON (never its secret)."""
    _echo_json(_get(_registry(_settings(ctx)), client_id).public_view())


@client.command("update")
@click.argument("client_id")
@_client_options
@click.option(
    "--rotate-secret",
    is_flag=True,
    help="Issue a new secret; the old one stays valid for the grace period.",
)
@click.option("--enable", is_flag=True, help="Re-enable a disabled client.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def client_update(
    ctx: click.Context,
    client_id: str,
    grants: tuple[str, ...],
    scopes: tuple[str, ...],
    audiences: tuple[str, ...],
    subject: str | None,
    patterns: tuple[str, ...],
    declared: tuple[str, ...],
    jwks_file: str | None,
    resource_server: bool | None,
    dpop_bound: bool | None,
    rotate_secret: bool,
    enable: bool,
    as_json: bool,
) -> None:
    """Change a client; repeatable options replace the stored list."""
    registry = _registry(_settings(ctx))
    changes: dict[str, Any] = {
        "grant_types": _grant_names(grants),
        "scopes": list(scopes) or None,
        "audiences": list(audiences) or None,
        "subject": subject,
        "subject_patterns": list(patterns) or None,
        "declared": _declared(declared) or None,
        "jwks": _load_jwks(jwks_file),
        "resource_server": resource_server,
        "dpop_bound": dpop_bound,
        "disabled": False if enable else None,
    }
    try:
        record, secret = registry.update(
            client_id, rotate_secret=rotate_secret, **changes
        )
    except KeyError:
        raise click.ClickException(f"no client {client_id}") from None
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from None
    out = record.public_view()
    if secret is not None:
        out["client_secret"] = secret
    if as_json:
        _echo_json(out)
    elif secret is not None:
        click.echo(f"client_secret: {secret}")
        click.echo(
            "(the secret is shown only now; the previous one stays valid "
            "for the grace period)"
        )
    else:
        click.echo(f"updated {client_id}")


@client.command("disable")
@click.argument("client_id")
@click.pass_context
def client_disable(ctx: click.Context, client_id: str) -> None:
    """Stop a client from authenticating."""
    try:
        _registry(_settings(ctx)).update(client_id, disabled=True)
    except KeyError:
        raise click.ClickException(f"no client {client_id}") from None
    click.echo(f"disabled {client_id}")


@client.command("delete")
@click.argument("client_id")
@click.pass_context
def client_delete(ctx: click.Context, client_id: str) -> None:
    """Remove a client (its audit records stay)."""
    try:
        _registry(_settings(ctx)).delete(client_id)
    except KeyError:
        raise click.ClickException(f"no client {client_id}") from None
    click.echo(f"deleted {client_id}")


# -- keys ----------------------------------------------------------------


def _existing_keyring(settings: Settings) -> KeyRing:
    """The signing keys for checking or signing audit checkpoints; refused
    when the keys folder holds none, rather than made there: checkpoints
    checked against fresh keys would fail, or be signed by keys no issuer
    publishes."""
    if not KeyRing.exists_in(settings.keys_dir):
        folder = settings.keys_dir / "signing"
        raise click.ClickException(
            f"no signing keys in {folder}: check --home; audit checkpoints "
            "are signed with the issuer's keys"
        )
    return _keyring(settings)


def _keyring(settings: Settings) -> KeyRing:
    return KeyRing(
        settings.keys_dir,
        alg=settings.signing_alg,
        jwks_max_age=settings.jwks_max_age,
        max_token_lifetime=settings.max_token_lifetime,
        clock_skew=settings.clock_skew,
    )


@main.group()
def keys() -> None:
    """Signing keys."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List signing keys and their state."""
    status = _keyring(_settings(ctx)).status()
    if as_json:
        _echo_json(status)
        return
    for k in status:
        click.echo(
            f"{k['kid']}  {k['alg']}  {k['state']}  not_before={k['not_before']}"
        )


@keys.command("rotate-secret-key")
@click.pass_context
def keys_rotate_secret_key(ctx: click.Context) -> None:
    """Add a new client-secret hashing key; old hashes still verify and are
    re-hashed under the new key when their client next authenticates."""
    kid = SecretHasher(_settings(ctx).keys_dir).rotate()
    click.echo(f"added secret hashing key {kid}")


@keys.command("rotate")
@click.option(
    "--alg", type=click.Choice(["ES256", "EdDSA", "PS256", "RS256"]), default=None
)
@click.pass_context
def keys_rotate(ctx: click.Context, alg: str | None) -> None:
    """Add a key; it signs after one JWKS max-age, the old one then retires."""
    settings = _settings(ctx)
    ring = _keyring(settings)
    kid = ring.rotate(alg)
    # The time the ring stored, which also counts the reload delay and the
    # clock margin, not just one max-age from now.
    stored = ring.keys()  # a list of SigningKey, not a dict view
    not_before = next(k.not_before for k in stored if k.kid == kid)
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_before))
    click.echo(f"added {kid}; it starts signing at {start}")


# -- policy --------------------------------------------------------------


@main.group()
def policy() -> None:
    """Issuance policy."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def policy_check(file: str) -> None:
    """Validate a policy file."""
    try:
        loaded = Policy.load(file)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    kinds = ", ".join(loaded.evidence.kinds()) or "none"
    click.echo(
        f"policy {loaded.version}: {len(loaded.rules)} rules, "
        f"evidence kinds accepted: {kinds}, valid"
    )


@policy.command("explain")
@click.option("--client", "client_id", required=True, help="Client to decide for.")
@click.option(
    "--evidence",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File holding a platform token (subject_token) to rate.",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help='JSON file: a list of saved evidence pieces, each {"kind", "value"}.',
)
@click.option(
    "--audience", "audiences", multiple=True, help="Requested audience (repeat)."
)
@click.option("--scope", "scopes", multiple=True, help="Requested scope (repeat).")
@click.option(
    "--policy",
    "policy_file",
    default=None,
    help="Policy file. Default: the configured one.",
)
@click.option("--at", "at", type=int, default=None, help="Decide as of this Unix time.")
@click.pass_context
def policy_explain(
    ctx: click.Context,
    client_id: str,
    evidence: str | None,
    bundle: str | None,
    audiences: tuple[str, ...],
    scopes: tuple[str, ...],
    policy_file: str | None,
    at: int | None,
) -> None:
    """Dry-run a decision: ratings, levels, reasons and the verdict."""
    from .service import IssuerService

    settings = _settings(ctx, policy_file=policy_file)
    try:
        service = IssuerService(settings)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    token = Path(evidence).read_text().strip() if evidence else None
    pieces: list[str] = []
    if bundle is not None:
        try:
            saved = json.loads(Path(bundle).read_text())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(
                f"cannot read: {exc}", param_hint="--bundle"
            ) from None
        if not isinstance(saved, list):
            raise click.BadParameter("a JSON list of pieces", param_hint="--bundle")
        pieces = [json.dumps(p) for p in saved]
    try:
        result = service.explain(
            client_id,
            subject_token=token,
            evidence=pieces,
            audiences=audiences,
            scopes=scopes,
            now=at,
        )
    except KeyError:
        raise click.ClickException(f"no client {client_id}") from None
    except EvidenceError as exc:
        raise click.ClickException(f"evidence rejected: {exc.reason}: {exc}") from None
    except OAuthError as exc:
        raise click.ClickException(f"{exc.error}: {exc.description}") from None
    _echo_json(result)
    if result["decision"] != "issue":
        sys.exit(1)


# -- audit ---------------------------------------------------------------


@main.group()
def audit() -> None:
    """Read the audit trail."""


def _audit_log(settings: Settings) -> Any:
    """The audit trail of an existing database. A home or ``database_url``
    naming no SQLite file is refused, not created: an empty trail made by a
    typo would verify as clean."""
    from .audit import AuditLog

    url = settings.resolved_database_url()
    path = sqlite_file(url)
    # An empty file would get an empty schema and verify as clean too.
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        raise click.ClickException(
            f"no database at {path}: check --home (or database_url); "
            "the audit trail is in the database the issuer serves from"
        )
    db = Database(url)
    db.migrate()
    return AuditLog(db)


@audit.command("show")
@click.argument("jti")
@click.pass_context
def audit_show(ctx: click.Context, jti: str) -> None:
    """Show the record of the token with this jti."""
    record = _audit_log(_settings(ctx)).by_jti(jti)
    if record is None:
        raise click.ClickException(f"no audit record for jti {jti}")
    _echo_json(record)


@audit.command("list")
@click.option("--client", "client_id", default=None, help="Only this client.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def audit_list(ctx: click.Context, client_id: str | None, limit: int) -> None:
    """List the newest records as JSON lines."""
    for record in _audit_log(_settings(ctx)).recent(client_id, limit):
        click.echo(_json_line(record))


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the hash chains and checkpoint signatures; exit 1 on any fault."""
    settings = _settings(ctx)
    count, problems = _audit_log(settings).verify(_existing_keyring(settings))
    for p in problems:
        click.echo(f"chain {p.chain} seq {p.seq}: {p.problem}")
    if problems:
        raise click.ClickException(f"{len(problems)} problems in {count} records")
    click.echo(f"ok: {count} records verified")


@audit.command("export")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default="-",
    help="File to write (JSON lines). Default: standard output.",
)
@click.pass_context
def audit_export(ctx: click.Context, output: str) -> None:
    """Write every record as JSON lines, by chain and position."""
    records = _audit_log(_settings(ctx)).export()
    if output == "-":
        for record in records:
            click.echo(_json_line(record))
        return
    # Written beside the target and renamed into place once complete, so a
    # failed export leaves no partial file. mkstemp makes it readable by the
    # owner only, as the database is: records name clients and subjects.
    target = Path(output)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        # A pipe, a device or a link the operator named: write through it.
        with click.open_file(output, "w") as fh:
            _write_lines(fh, records)
        return
    try:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    # SIGTERM ends the process without unwinding; as SystemExit it does, so
    # the temporary file is removed on the way out.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with os.fdopen(fd, "w") as fh:
            _write_lines(fh, records)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_lines(fh: IO[str], records: Iterable[Mapping[str, Any]]) -> None:
    for record in records:
        fh.write(_json_line(record) + "\n")


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@audit.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=1),
    required=True,
    help="Remove records older than this many days.",
)
@click.pass_context
def audit_prune(ctx: click.Context, days: int) -> None:
    """Remove old records, keeping each chain checkable from a signed checkpoint."""
    settings = _settings(ctx)
    before = time.time() - days * 86400
    removed = _audit_log(settings).prune(before, _existing_keyring(settings))
    click.echo(f"removed {removed} records older than {days} days")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply schema migrations (also done on every start)."""
    database = Database(_settings(ctx).resolved_database_url())
    try:
        database.migrate()
    except StoreUnavailable as exc:
        raise click.ClickException(f"database unavailable: {exc}") from None
    click.echo(f"schema at revision {database.revision()}")
