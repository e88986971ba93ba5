"""The issuer's use cases, free of any web framework.

``IssuerService`` is built once per process from ``Settings`` and answers
token, introspection and revocation requests given plain parameters. The
Flask layer only parses HTTP and renders results and ``OAuthError``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError

from verifier.levels import Requirement, load_scheme

from . import metrics
from .access_token import AccessTokenMinter, read_own_token
from .assurance import (
    Assessment,
    Assessor,
    CredentialRating,
    EvidenceItem,
    Rating,
    rate_client_credential,
    rate_platform_identity,
)
from .assurance.rules import (
    CREDENTIAL_ONLY,
    bearer_boundary,
    dpop_boundary,
    governance_for,
    mtls_boundary,
    sender_constrained_reuse,
    upgrade_credential,
)
from .audit import AuditEntry, AuditLog
from .clientauth import (
    ASSERTION_ALGORITHMS,
    ASSERTION_TYPE,
    SPIFFE_ASSERTION_TYPE,
    AuthenticatedClient,
    ClientAuthenticator,
)
from .clients import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_TOKEN_EXCHANGE,
    Client,
    ClientRegistry,
)
from .config import ConfigError, Settings
from .dpop import DEFAULT_ALGORITHMS as DPOP_ALGORITHMS
from .dpop import DPoPVerifier, single_proof
from .errors import (
    EvidenceError,
    InsufficientAssurance,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    RateLimited,
    ServerUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from .evidence.intake import Intake, parse_pieces
from .evidence.tpm import make_activation_challenge
from .keys import KeyRing, SecretHasher, load_or_create_secret
from .mtls import (
    TlsClientAuth,
    X509Bundle,
    certificate_thumbprint,
    client_cert_from_header,
    client_cert_from_pem,
    from_trusted_proxy,
    parse_trusted_proxies,
)
from .platforms import PlatformIdentity, TrustSources
from .policy import Policy, PolicyError
from .ratelimit import RateLimiter
from .replay import (
    DatabaseReplayStore,
    MemoryReplayStore,
    RedisReplayStore,
    ReplayStore,
)
from .storage import Database, Revocation, StoreUnavailable

__all__ = ["IssuerService", "PresentedCertificate", "TokenResponse"]

log = logging.getLogger(__name__)
#: How long ``/readyz`` waits for the SQLite writer lock before 503.
READY_LOCK_WAIT_SECONDS = 0.5

TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
TOKEN_TYPE_ID = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
SUBJECT_TOKEN_TYPES = (TOKEN_TYPE_JWT, TOKEN_TYPE_ID)
#: Seconds a verified platform token is reused without verifying it again.
PLATFORM_CACHE_SECONDS = 60
# Parameters that RFC 8707 and RFC 8693 allow more than once.
REPEATABLE = frozenset({"resource", "audience", "evidence"})


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response (RFC 6749 section 5.1)."""

    body: dict[str, Any]
    jti: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    """How an issued token is bound to its holder.

    ``kind`` is ``bearer``, ``dpop`` or ``mtls``; ``cnf`` the RFC 7800 confirmation
    claim, if any; ``boundary`` the MAAL boundary rating it earns.
    """

    kind: str
    cnf: dict[str, str] | None
    boundary: Rating

    @property
    def token_type(self) -> str:
        """``DPoP`` for DPoP-bound tokens (RFC 9449 section 5), else
        ``Bearer``."""
        return "DPoP" if self.kind == "dpop" else "Bearer"


@dataclass(frozen=True)
class PresentedCertificate:
    """A client certificate whose key a TLS handshake proved (RFC 8705).

    ``der`` is the certificate; ``via_proxy`` tells whose handshake it was:
    a trusted TLS-terminating proxy's (forwarded in ``mtls_proxy_header``)
    or the issuer's own TLS server's.
    """

    der: bytes
    via_proxy: bool


@dataclass
class _Grant:
    """What a grant contributes: the token's subject, the rated credential,
    the verified evidence, an ``act`` claim, the RFC 8693 issued type."""

    subject: str
    credential_rating: CredentialRating
    evidence: list[EvidenceItem]
    actor: dict[str, Any] | None
    issued_token_type: str | None


class IssuerService:
    """Everything a running issuer needs, wired from settings."""

    def __init__(self, settings: Settings, *, policy: Policy | None = None) -> None:
        self.settings = settings
        self.issuer = settings.resolved_issuer_url()
        self.token_endpoint = f"{self.issuer}/token"
        self.db = Database(settings.resolved_database_url())
        self.db.migrate()
        settings.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keyring = KeyRing(
            settings.keys_dir,
            alg=settings.signing_alg,
            jwks_max_age=settings.jwks_max_age,
            max_token_lifetime=settings.max_token_lifetime,
            clock_skew=settings.clock_skew,
        )
        self.clients = ClientRegistry(
            self.db,
            SecretHasher(settings.keys_dir),
            settings.secret_grace_period,
            settings.client_cache_seconds,
        )
        kind = settings.resolved_replay_store()
        replay: ReplayStore
        if kind == "redis":
            replay = RedisReplayStore(settings.redis_url, settings.redis_prefix)
        elif kind == "database":
            replay = DatabaseReplayStore(self.db)
        else:
            replay = MemoryReplayStore()
        self.replay = replay
        # DPoP nonces are stateless HMACs under a key every instance shares
        # through keys/ (docs/sender-constraints.md).
        self.dpop = DPoPVerifier(
            replay,
            max_age=settings.dpop_max_age,
            clock_skew=min(settings.clock_skew, 5),
            nonce_secret=load_or_create_secret(settings.keys_dir, "dpop-nonce.key"),
            require_nonce=settings.dpop_require_nonce,
            shared_replay=kind != "memory" or settings.workers == 1,
        )
        self.trusted_proxies = parse_trusted_proxies(settings.mtls_trusted_proxies)
        self.authenticator = ClientAuthenticator(
            self.clients,
            replay,
            audiences=(self.issuer, self.token_endpoint),
            max_assertion_lifetime=settings.max_assertion_lifetime,
            clock_skew=settings.clock_skew,
            max_token_bytes=settings.max_token_bytes,
            tls=_tls_client_auth(settings),
            spiffe_bundles=_spiffe_bundles(settings),
        )
        self.scheme = load_scheme()
        self.assessor = Assessor(self.scheme)
        # TPM credential activation secrets are HMACs under this key, kept
        # in keys/ so every instance recomputes them (docs/evidence.md).
        self.activation_key = load_or_create_secret(
            settings.keys_dir, "tpm-activation.key"
        )
        self._policy_mtime = self._policy_file_mtime()
        if policy is None:
            policy = (
                Policy.load(settings.policy_file, self.scheme, self.activation_key)
                if settings.policy_file
                else Policy.empty()
            )
        self.policy = policy
        metrics.POLICY_INFO.labels(policy.version).set(1)
        self._policy_checked = time.monotonic()
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_limit_burst)
        self._assessments: dict[tuple[Any, ...], _CachedAssessment] = {}
        self._verified: dict[str, tuple[PlatformIdentity, float, float]] = {}
        self.trust = TrustSources(
            settings.trust_sources,
            issuer_url=self.issuer,
            clock_skew=settings.clock_skew,
            max_token_bytes=settings.max_token_bytes,
        )
        self.authenticator.svid_verifier = self.trust.verify
        self.minter = AccessTokenMinter(self.keyring, self.issuer)
        self.audit = AuditLog(self.db)

    # -- policy reload ---------------------------------------------------

    def _policy_file_mtime(self) -> int:
        if not self.settings.policy_file:
            return 0
        try:
            return os.stat(self.settings.policy_file).st_mtime_ns
        except OSError:
            return 0

    def reload_policy_if_changed(self) -> None:
        """Re-read the policy file when it changed (checked at most once a
        second). An invalid new file is logged and the old policy stays."""
        now = time.monotonic()
        if not self.settings.policy_file or now - self._policy_checked < 1.0:
            return
        self._policy_checked = now
        mtime = self._policy_file_mtime()
        if mtime == self._policy_mtime:
            return
        self._policy_mtime = mtime
        try:
            policy = Policy.load(
                self.settings.policy_file, self.scheme, self.activation_key
            )
        except PolicyError as exc:
            log.error("policy reload failed", extra={"fields": {"error": str(exc)}})
            return
        metrics.POLICY_INFO.remove(self.policy.version)
        metrics.POLICY_INFO.labels(policy.version).set(1)
        log.info(
            "policy reloaded",
            extra={"fields": {"old": self.policy.version, "new": policy.version}},
        )
        self.policy = policy

    def _limit(self, client_id: str) -> None:
        wait = self.limiter.allow(client_id)
        if wait:
            # Logged, not audited: a flood must not fill the audit table.
            log.info(
                "request rate limited",
                extra={"fields": {"client_id": client_id, "retry_after": wait}},
            )
            raise RateLimited(wait)

    # -- token endpoint -------------------------------------------------

    def token(
        self,
        params: Mapping[str, Sequence[str]],
        authorization: str | None,
        now: float | None = None,
        *,
        dpop: Sequence[str] = (),
        client_cert: PresentedCertificate | bytes | None = None,
    ) -> TokenResponse:
        """Handle a token request (RFC 6749 section 4.4, RFC 8693 section 2).

        ``params`` maps each body parameter to all its values; ``dpop`` holds
        the values of every ``DPoP`` header field; ``client_cert`` is the
        client certificate of the mutual-TLS connection (RFC 8705), from
        ``client_certificate`` (bare DER bytes count as forwarded by a
        trusted proxy). Raises ``OAuthError``; every decision after
        client authentication is audited, and a token is returned only once
        its record is committed.
        """
        self.reload_policy_if_changed()
        if isinstance(client_cert, bytes):
            client_cert = PresentedCertificate(client_cert, via_proxy=True)
        single = _single_values(params)
        now_f = time.time() if now is None else now
        auth = self._authenticate(single, authorization, client_cert, now_f)
        client = auth.client
        self._limit(client.client_id)
        grant_type = single.get("grant_type", "")
        entry = AuditEntry(client.client_id, grant_type or "-", self.policy.version)
        try:
            response = self._issue(
                auth, single, params, entry, now_f, dpop, client_cert
            )
        except StoreUnavailable:
            raise
        except OAuthError as exc:
            self._refuse(entry, exc)
            raise
        return response

    def _refuse(self, entry: AuditEntry, exc: OAuthError) -> None:
        log.info(
            "token refused",
            extra={
                "fields": {
                    "decision": "refused",
                    "client_id": entry.client_id,
                    "error": exc.error,
                    "mial": entry.mial,
                    "maal": entry.maal,
                }
            },
        )
        self.audit.write(
            entry, decision="refused", error=exc.error, reasons=[exc.detail]
        )

    def _issue(
        self,
        auth: AuthenticatedClient,
        single: Mapping[str, str],
        params: Mapping[str, Sequence[str]],
        entry: AuditEntry,
        now_f: float,
        dpop: Sequence[str],
        client_cert: PresentedCertificate | None,
    ) -> TokenResponse:
        client = auth.client
        grant_type = single.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        if grant_type not in (GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE):
            raise UnsupportedGrantType("grant_type not supported")
        if grant_type not in client.grant_types:
            raise UnauthorizedClient("client may not use this grant_type")
        now = int(now_f)
        scopes = self._scopes(client.scopes, single.get("scope"))
        audiences = self._audiences(client.audiences, params)
        entry.audience = audiences
        requested = _request_requirement(single)

        if grant_type == GRANT_CLIENT_CREDENTIALS and auth.identity is not None:
            # A JWT-SVID client assertion is platform evidence as well as the
            # credential: rated like a SPIFFE subject token.
            item, cred = rate_platform_identity(auth.identity)
            grant = _Grant(client.subject, cred, [item], None, None)
            entry.evidence.append(item.summary())
        elif grant_type == GRANT_CLIENT_CREDENTIALS:
            grant = _Grant(
                client.subject, rate_client_credential(auth.credential), [], None, None
            )
        else:
            grant = self._token_exchange(auth, single, entry, now_f)
        entry.subject = grant.subject
        binding = self._binding(client, dpop, client_cert, now_f)
        caps = self._take_evidence(auth, single, params, binding, grant, entry, now_f)

        lifetime = self.settings.token_lifetime
        assessment, verdict = self._assess_cached(client, grant, now, binding, caps)
        entry.mial, entry.maal = assessment.mial_level, assessment.maal_level
        entry.ratings = _ratings_record(assessment)
        self._enforce(assessment, client.client_id, audiences, scopes, requested)

        expires_at = now + lifetime
        if assessment.evidence_expiry is not None:
            expires_at = min(expires_at, assessment.evidence_expiry)
        if expires_at <= now:
            raise InvalidRequest("the evidence expires before a token could be used")
        claims = self.minter.build_claims(
            subject=grant.subject,
            client_id=client.client_id,
            audiences=audiences,
            scopes=scopes,
            assessment=assessment,
            policy_version=self.policy.version,
            now=now,
            expires_at=expires_at,
            actor=grant.actor,
            cnf=binding.cnf,
        )
        token = self.minter.sign(claims)
        self.audit.write(
            entry,
            decision="issued",
            reasons=verdict,
            jti=claims["jti"],
            expires_at=expires_at,
        )
        metrics.labelled(
            metrics.ISSUED,
            grant_type,
            str(assessment.mial_level),
            str(assessment.maal_level),
        ).inc()
        log.info(
            "token issued",
            extra={
                "fields": {
                    "decision": "issued",
                    "client_id": client.client_id,
                    "jti": claims["jti"],
                    "mial": assessment.mial_level,
                    "maal": assessment.maal_level,
                }
            },
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": binding.token_type,
            "expires_in": expires_at - now,
        }
        if scopes:
            body["scope"] = " ".join(scopes)
        if grant.issued_token_type:
            body["issued_token_type"] = grant.issued_token_type
        headers = {}
        if binding.kind == "dpop" and self.dpop.uses_nonces:
            # RFC 9449 section 8.2: a fresh nonce for the client's next proof.
            headers["DPoP-Nonce"] = self.dpop.new_nonce(now_f)
        return TokenResponse(body, claims["jti"], headers)

    def _binding(
        self,
        client: Client,
        dpop: Sequence[str],
        client_cert: PresentedCertificate | None,
        now: float,
    ) -> Binding:
        """How the issued token is bound: DPoP (RFC 9449), to the client
        certificate (RFC 8705 section 3), or bearer.

        A DPoP proof, when sent, decides; otherwise a token requested over
        mutual TLS is bound to that certificate, whatever method
        authenticated the client.
        """
        if not dpop:
            if client.dpop_bound:
                # RFC 9449 section 5.2: such a client gets no bearer token.
                raise InvalidRequest("this client must send a DPoP proof")
            if client_cert is not None:
                cnf = {"x5t#S256": certificate_thumbprint(client_cert.der)}
                boundary = mtls_boundary(via_proxy=client_cert.via_proxy)
                return Binding("mtls", cnf, boundary)
            return Binding("bearer", None, bearer_boundary())
        proof = self.dpop.verify(
            single_proof(list(dpop)), htm="POST", htu=self.token_endpoint, now=now
        )
        return Binding("dpop", {"jkt": proof.jkt}, dpop_boundary(proof, self.dpop))

    def client_certificate(
        self,
        header_value: str | None,
        remote_addr: str | None,
        handshake_pem: str | None = None,
    ) -> PresentedCertificate | None:
        """The client certificate of this request, or ``None``.

        Two sources: the certificate a trusted TLS-terminating proxy
        forwarded in ``mtls_proxy_header`` (``header_value``), and the one
        the issuer's own TLS server verified in the handshake
        (``handshake_pem``, the ``SSL_CLIENT_CERT`` of issuer/tlsserve.py),
        which counts only when the settings say the issuer terminates TLS.
        A connection from a trusted proxy speaks for its client through the
        header, so its own handshake certificate is ignored.

        ``None`` when neither applies, or the header is absent or empty (the
        proxy saw no certificate). Raises ``InvalidClient`` when the header
        comes from an address outside ``mtls_trusted_proxies`` and
        ``InvalidRequest`` when a value does not hold one certificate.
        """
        proxy_mode = bool(self.settings.mtls_proxy_header)
        # nginx sends no header for an empty variable; another proxy may
        # send an empty one when the client presented no certificate.
        if proxy_mode and header_value is not None and header_value.strip():
            der = client_cert_from_header(
                header_value,
                remote_addr=remote_addr or "",
                trusted_proxies=self.trusted_proxies,
                header_format=self.settings.mtls_proxy_header_format,
            )
            return PresentedCertificate(der, via_proxy=True)
        if not handshake_pem or not self.settings.terminates_tls:
            return None
        if proxy_mode and from_trusted_proxy(remote_addr, self.trusted_proxies):
            return None
        return PresentedCertificate(client_cert_from_pem(handshake_pem), False)

    def _assess_cached(
        self,
        client: Client,
        grant: _Grant,
        now: int,
        binding: Binding,
        caps: Mapping[str, Rating],
    ) -> tuple[Assessment, list[str]]:
        """The assessment and its verdict (the audit record's reasons; the
        per-dimension reasons travel in its ratings), reused for requests
        that carry no evidence: then it depends only on the client's
        declarations, the credential kind and the binding, all in the key,
        so only the appraisal time differs between two such requests."""
        if grant.evidence or caps:
            assessment = self._assess(client.declared, grant, now, binding, caps)
            return assessment, assessment.verdict()
        key = (
            client.client_id,
            tuple(sorted(client.declared.items())),
            grant.credential_rating.kind,
            tuple(
                sorted((d, r.value) for d, r in grant.credential_rating.ratings.items())
            ),
            binding.kind,
            binding.boundary,
        )
        hit = self._assessments.get(key)
        if hit is None:
            assessment = self._assess(client.declared, grant, now, binding, caps)
            hit = _CachedAssessment(assessment, assessment.verdict())
            if len(self._assessments) > 10000:
                self._assessments.clear()
            self._assessments[key] = hit
        return hit.at(now), hit.verdict

    def _assess(
        self,
        declared: Mapping[str, int],
        grant: _Grant,
        now: int,
        binding: Binding | None = None,
        caps: Mapping[str, Rating] | None = None,
    ) -> Assessment:
        binding = binding or Binding("bearer", None, bearer_boundary())
        credential = grant.credential_rating
        if binding.cnf is not None:
            credential = sender_constrained_reuse(credential)
        return self.assessor.assess(
            evidence=grant.evidence,
            credential=credential,
            identity_floor=CREDENTIAL_ONLY,
            boundary=binding.boundary,
            governance=governance_for(self.settings.token_lifetime),
            declared=declared,
            now=now,
            caps=caps,
        )

    def _take_evidence(
        self,
        auth: AuthenticatedClient,
        single: Mapping[str, str],
        params: Mapping[str, Sequence[str]],
        binding: Binding,
        grant: _Grant,
        entry: AuditEntry,
        now: float,
    ) -> dict[str, Rating]:
        """Verify the request's attestation evidence (docs/evidence.md) and
        fold it into ``grant``; return the caps it imposes.

        The nonce is consumed before anything is verified, so a failed
        attempt still uses it up. Every failure is ``invalid_request``.
        """
        values = params.get("evidence", ())
        if not values:
            return {}
        try:
            pieces = parse_pieces(values, self.settings.max_evidence_bytes)
            nonce = single.get("nonce")
            if nonce is not None and not self.db.consume_nonce(
                auth.client.client_id, nonce, now
            ):
                raise EvidenceError(
                    "nonce_unknown", "nonce unknown, expired, used or not yours"
                )
            credential = {auth.key_thumbprint} - {None}
            held = credential | ({(binding.cnf or {}).get("jkt")} - {None})
            result = Intake(self.policy.evidence).verify(
                pieces,
                nonce=nonce,
                bound_keys=held,  # type: ignore[arg-type]
                credential_keys=credential,  # type: ignore[arg-type]
                now=now,
                audit=entry.evidence,
            )
        except EvidenceError as exc:
            raise InvalidRequest(
                f"evidence rejected: {exc.reason}",
                detail=f"evidence: {exc.reason}: {exc}",
            ) from None
        grant.evidence.extend(result.items)
        if result.maal:
            grant.credential_rating = upgrade_credential(
                grant.credential_rating, result.maal
            )
        return result.caps

    def tpm_activate(
        self,
        params: Mapping[str, Sequence[str]],
        authorization: str | None,
        *,
        client_cert: PresentedCertificate | None = None,
    ) -> dict[str, str]:
        """``POST /tpm/activate``: the issuer's half of TPM credential
        activation (TPM 2.0 Part 1 section 24) for the caller's AK.

        Stateless: the secret is an HMAC under the issuer's activation key,
        recomputed from each later quote bundle.
        """
        self.reload_policy_if_changed()
        single = _single_values(params)
        client = self._authenticate(single, authorization, client_cert).client
        self._limit(client.client_id)
        policy = self.policy.evidence.tpm
        if policy is None:
            raise InvalidRequest("TPM evidence is not accepted by this issuer")
        try:
            chain = json.loads(single.get("ek_certificates", ""))
            if not isinstance(chain, list) or not 0 < len(chain) <= 5:
                raise ValueError
            ek_certificates = [base64.b64decode(c, validate=True) for c in chain]
            ek_public = base64.b64decode(single.get("ek_public", ""), validate=True)
            ak_public = base64.b64decode(single.get("ak_public", ""), validate=True)
        except (ValueError, TypeError, binascii.Error, RecursionError):
            raise InvalidRequest(
                "ek_certificates (JSON array), ek_public and ak_public (base64) needed"
            ) from None
        try:
            challenge = make_activation_challenge(
                ek_certificates=ek_certificates,
                ek_public=ek_public,
                ak_public=ak_public,
                policy=policy,
                now=time.time(),
            )
        except EvidenceError as exc:
            raise InvalidRequest(
                f"activation refused: {exc.reason}", detail=f"activation: {exc}"
            ) from None
        return challenge.to_json()

    def explain(
        self,
        client_id: str,
        *,
        subject_token: str | None = None,
        evidence: Sequence[str] = (),
        audiences: Sequence[str] = (),
        scopes: Sequence[str] = (),
        now: float | None = None,
    ) -> dict[str, Any]:
        """Dry-run a decision for ``client_id`` without issuing or auditing.

        With ``subject_token`` the decision is that of a token exchange,
        otherwise that of client_credentials with the client's own
        credential. ``evidence`` holds saved pieces in the wire format
        (``{"kind", "value"}`` JSON texts); they are verified without a
        nonce, so no piece rates above 2 where freshness is required, and
        key-bound MAAL ratings are not applied (no key was presented).
        Raises ``KeyError`` for an unknown client, ``EvidenceError`` when a
        token or piece does not verify, and ``OAuthError`` for an audience
        or scope the endpoint would refuse.
        """
        client = self.clients.get(client_id)
        if client is None:
            raise KeyError(client_id)
        now_f = time.time() if now is None else now
        if subject_token is not None:
            identity = self.trust.verify(subject_token, now_f)
            item, cred = rate_platform_identity(identity)
            grant = _Grant(identity.subject, cred, [item], None, None)
        else:
            cred = rate_client_credential(client.auth_methods[0])
            grant = _Grant(client.subject, cred, [], None, None)
        caps: dict[str, Rating] = {}
        if evidence:
            pieces = parse_pieces(evidence, self.settings.max_evidence_bytes)
            result = Intake(self.policy.evidence).verify(
                pieces, nonce=None, bound_keys=set(), now=now_f, require_nonce=False
            )
            grant.evidence.extend(result.items)
            caps = result.caps
        assessment = self._assess(client.declared, grant, int(now_f), caps=caps)
        # The same checks /token makes, so the dry run cannot approve what
        # the endpoint refuses; raises InvalidTarget or InvalidScope.
        auds = self._audiences(client.audiences, {"audience": list(audiences)})
        if scopes:
            self._scopes(client.scopes, " ".join(scopes))
        requirement, rules = self.policy.requirement_for(client_id, auds, scopes)
        unmet = requirement.unmet(
            assessment.mial_level, assessment.maal_level, assessment.vectors(), 0
        )
        return {
            "client_id": client_id,
            "subject": grant.subject,
            "mial": assessment.mial_level,
            "maal": assessment.maal_level,
            "assurance_levels": assessment.claim(self.policy.version),
            "explanation": assessment.explain(),
            "policy_version": self.policy.version,
            "policy_rules": rules,
            "requirement": requirement.compact(),
            "decision": "refuse" if unmet else "issue",
            "unmet": [s.describe() for s in unmet],
        }

    @staticmethod
    def _scopes(allowed: Sequence[str], requested: str | None) -> list[str]:
        """RFC 6749 section 3.3: omitted means every registered scope."""
        if requested is None:
            return list(allowed)
        wanted = [s for s in requested.split(" ") if s]
        if not wanted or len(wanted) > 50:
            raise InvalidScope("scope is empty or too long")
        unknown = [s for s in wanted if s not in allowed]
        if unknown:
            raise InvalidScope("scope not allowed for this client")
        return list(dict.fromkeys(wanted))

    @staticmethod
    def _audiences(
        allowed: Sequence[str], params: Mapping[str, Sequence[str]]
    ) -> list[str]:
        """RFC 8707 ``resource`` and RFC 8693 ``audience``; omitted means the
        client's first registered audience."""
        wanted = [*params.get("resource", ()), *params.get("audience", ())]
        if len(wanted) > 10:
            raise InvalidTarget("too many resource or audience values")
        if not wanted:
            if not allowed:
                raise InvalidTarget("no audience registered for this client")
            return [allowed[0]]
        unknown = [a for a in wanted if a not in allowed]
        if unknown:
            raise InvalidTarget("resource or audience not allowed for this client")
        return list(dict.fromkeys(wanted))

    def _token_exchange(
        self,
        auth: AuthenticatedClient,
        single: Mapping[str, str],
        entry: AuditEntry,
        now: float,
    ) -> _Grant:
        """RFC 8693 section 2.1; invalid subject tokens are ``invalid_request``
        (section 2.2.2)."""
        subject_token = single.get("subject_token")
        subject_type = single.get("subject_token_type")
        if not subject_token or not subject_type:
            raise InvalidRequest("subject_token and subject_token_type are required")
        if subject_type not in SUBJECT_TOKEN_TYPES:
            raise InvalidRequest("subject_token_type not supported")
        requested_type = single.get("requested_token_type")
        if requested_type not in (None, TOKEN_TYPE_ACCESS):
            raise InvalidRequest("only access tokens can be requested")
        identity = self._verify_platform_token(subject_token, "subject_token", now)
        entry.subject = identity.subject
        evidence, cred = rate_platform_identity(identity)
        entry.evidence.append(evidence.summary())
        patterns = auth.client.subject_patterns
        if patterns and not any(
            fnmatch.fnmatchcase(identity.subject, p) for p in patterns
        ):
            raise InvalidRequest(
                "subject_token names a subject this client may not use"
            )
        actor = None
        actor_token = single.get("actor_token")
        if actor_token is not None:
            if single.get("actor_token_type") not in SUBJECT_TOKEN_TYPES:
                raise InvalidRequest("actor_token_type missing or not supported")
            actor_identity = self._verify_platform_token(
                actor_token, "actor_token", now
            )
            actor = {"sub": actor_identity.subject}
            entry.evidence.append(
                {
                    "kind": actor_identity.evidence_kind,
                    "digest": actor_identity.digest,
                    "role": "actor",
                    "subject": actor_identity.subject,
                }
            )
        elif "actor_token_type" in single:
            raise InvalidRequest("actor_token_type given without actor_token")
        return _Grant(identity.subject, cred, [evidence], actor, TOKEN_TYPE_ACCESS)

    def _verify_platform_token(
        self, token: str, name: str, now: float
    ) -> PlatformIdentity:
        started = time.perf_counter()
        # A compact JWT holds no whitespace; a trailing newline from a token
        # file is dropped rather than refused.
        token = token.strip()
        cached = self._verified.get(token)
        if cached is not None:
            identity, verified_at, cached_at = cached
            # The same bytes verified earlier under the same trust sources:
            # reuse the result while the token is still within its validity
            # and for at most PLATFORM_CACHE_SECONDS, so a platform key
            # withdrawn from a fetched JWKS stops counting soon after.
            fresh = time.monotonic() - cached_at < PLATFORM_CACHE_SECONDS
            if fresh and verified_at <= now < identity.expires_at:
                return identity
        try:
            identity = self.trust.verify(token, now)
        except EvidenceError as exc:
            # The descriptions of EvidenceError are fixed sentences that never
            # quote the token, so they can go to the client.
            raise InvalidRequest(
                f"{name} rejected: {exc.reason}: {exc}",
                detail=f"{name}: {exc.reason}: {exc}",
            ) from None
        metrics.labelled(metrics.EVIDENCE_SECONDS, identity.evidence_kind).observe(
            time.perf_counter() - started
        )
        if len(self._verified) > 10000:
            self._verified.clear()
        self._verified[token] = (identity, now, time.monotonic())
        return identity

    def _enforce(
        self,
        assessment: Assessment,
        client_id: str,
        audiences: Sequence[str],
        scopes: Sequence[str],
        requested: Requirement,
    ) -> None:
        requirement, rules = self.policy.requirement_for(client_id, audiences, scopes)
        requirement = requirement.combine(requested)
        unmet = requirement.unmet(
            assessment.mial_level, assessment.maal_level, assessment.vectors(), 0
        )
        if unmet:
            parts = []
            for short in unmet:
                parts.append(short.describe())
                if short.item in ("mial", "maal"):
                    table = self.scheme.table(short.item)  # type: ignore[arg-type]
                    gaps = table.shortfalls(
                        assessment.vectors()[short.item], short.required
                    )
                    parts.extend(f"  {g.describe()}" for g in gaps)
            text = "; ".join(p.strip() for p in parts)
            raise InsufficientAssurance(
                f"{text} (policy {self.policy.version})",
                detail=f"{text}; rules {', '.join(rules)}",
            )

    # -- freshness -----------------------------------------------------

    def challenge(
        self,
        params: Mapping[str, Sequence[str]],
        authorization: str | None,
        now: float | None = None,
        *,
        client_cert: PresentedCertificate | None = None,
    ) -> dict[str, Any]:
        """``POST /challenge``: a single-use nonce bound to the caller.

        Evidence that must be fresh (TPM quotes, Nitro documents, attestation
        results) carries it; the token request names it in ``nonce``.
        """
        self.reload_policy_if_changed()
        single = _single_values(params)
        client = self._authenticate(single, authorization, client_cert).client
        self._limit(client.client_id)
        now = time.time() if now is None else now
        nonce = secrets.token_urlsafe(32)
        self.db.issue_nonce(
            client.client_id,
            nonce,
            now,
            self.settings.nonce_lifetime,
            self.settings.max_outstanding_nonces,
        )
        return {"nonce": nonce, "expires_in": self.settings.nonce_lifetime}

    # -- introspection and revocation ----------------------------------

    def introspect(
        self,
        params: Mapping[str, Sequence[str]],
        authorization: str | None,
        now: float | None = None,
        *,
        client_cert: PresentedCertificate | None = None,
    ) -> dict[str, Any]:
        """RFC 7662 section 2: the token's claims when active and visible to
        the caller, else ``{"active": false}``."""
        caller, claims, now = self._about_token(params, authorization, now, client_cert)
        if claims is None:
            return {"active": False}
        aud = claims.get("aud")
        token_aud = set(aud) if isinstance(aud, list) else {aud}
        holder = self.clients.get(str(claims.get("client_id")))
        if holder is None or holder.disabled:
            return {"active": False}
        own = claims.get("client_id") == caller.client_id
        serves = caller.resource_server and bool(token_aud & set(caller.audiences))
        if not (own or serves):
            return {"active": False}
        bound = isinstance(claims.get("cnf"), dict) and "jkt" in claims["cnf"]
        out: dict[str, Any] = {
            "active": True,
            "token_type": "DPoP" if bound else "Bearer",
        }
        for name in (
            "scope",
            "client_id",
            "sub",
            "aud",
            "iss",
            "exp",
            "iat",
            "nbf",
            "jti",
            "act",
            "cnf",
            "mial",
            "maal",
            "assurance_levels",
        ):
            if name in claims:
                out[name] = claims[name]
        return out

    def _authenticate(
        self,
        single: Mapping[str, str],
        authorization: str | None,
        client_cert: PresentedCertificate | None,
        now: float | None = None,
    ) -> AuthenticatedClient:
        """Client authentication at any endpoint, by every method the token
        endpoint accepts, mutual TLS included (RFC 8705 section 2 applies to
        every endpoint that authenticates clients)."""
        der = client_cert.der if client_cert is not None else None
        return self.authenticator.authenticate(
            single, authorization, client_cert=der, now=now
        )

    def _about_token(
        self,
        params: Mapping[str, Sequence[str]],
        authorization: str | None,
        now: float | None,
        client_cert: PresentedCertificate | None,
    ) -> tuple[Client, dict[str, Any] | None, float]:
        """Authenticate the caller of /introspect or /revoke and read the
        ``token`` parameter: the caller, the token's claims (``None`` when it
        is not an active token of ours) and the time used."""
        single = _single_values(params)
        caller = self._authenticate(single, authorization, client_cert).client
        token = single.get("token")
        if not token:
            raise InvalidRequest("token is required")
        now = time.time() if now is None else now
        return caller, self._lookup(token, now), now

    def _lookup(self, token: str, now: float) -> dict[str, Any] | None:
        if len(token) > self.settings.max_token_bytes:
            return None
        claims = read_own_token(token, self.keyring, self.issuer, now)
        if claims is None or not isinstance(claims.get("jti"), str):
            return None
        if self.db.is_revoked(claims["jti"]):
            return None
        return claims

    def revoke(
        self,
        params: Mapping[str, Sequence[str]],
        authorization: str | None,
        now: float | None = None,
        *,
        client_cert: PresentedCertificate | None = None,
    ) -> None:
        """RFC 7009 section 2.1: revoke one of the caller's own tokens.

        Unknown, invalid or expired tokens succeed silently (section 2.2);
        a token of another client is refused with ``unauthorized_client``.
        """
        caller, claims, now = self._about_token(params, authorization, now, client_cert)
        if claims is None:
            return
        if claims.get("client_id") != caller.client_id:
            raise UnauthorizedClient("token was issued to another client")
        try:
            with self.db.session() as s:
                if s.get(Revocation, claims["jti"]) is None:
                    s.add(
                        Revocation(
                            jti=claims["jti"],
                            client_id=caller.client_id,
                            revoked_at=now,
                            expires_at=float(claims["exp"]),
                        )
                    )
        except IntegrityError:
            # A concurrent revocation of the same token won the insert; the
            # token is revoked either way (RFC 7009 section 2.2).
            pass
        log.info(
            "token revoked",
            extra={"fields": {"client_id": caller.client_id, "jti": claims["jti"]}},
        )

    # -- metadata ------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 section 2 server metadata plus our extensions."""
        # One authenticator serves every endpoint that authenticates clients
        # (RFC 8705 section 2 for the certificate methods).
        methods = [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "tls_client_auth",
            "self_signed_tls_client_auth",
            "spiffe_jwt",
        ]
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": f"{self.issuer}/jwks.json",
            "introspection_endpoint": f"{self.issuer}/introspect",
            "revocation_endpoint": f"{self.issuer}/revoke",
            "challenge_endpoint": f"{self.issuer}/challenge",
            "tpm_activation_endpoint": f"{self.issuer}/tpm/activate",
            "grant_types_supported": [GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": methods,
            "client_assertion_types_supported": [ASSERTION_TYPE, SPIFFE_ASSERTION_TYPE],
            "token_endpoint_auth_signing_alg_values_supported": list(
                ASSERTION_ALGORITHMS
            ),
            "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
            "tls_client_certificate_bound_access_tokens": True,
            "introspection_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
            "access_token_signing_alg_values_supported": sorted(
                {k.alg for k in self.keyring.published()}
            ),
            "response_types_supported": [],
            "workload_assurance_scheme": self.scheme.id,
            "mial_levels_supported": list(range(self.scheme.mial.top + 1)),
            "maal_levels_supported": list(range(self.scheme.maal.top + 1)),
            "workload_assurance_dimensions": {
                "mial": list(self.scheme.mial.dimensions),
                "maal": list(self.scheme.maal.dimensions),
            },
            "evidence_kinds_supported": [
                "k8s_sa_token",
                "github_oidc",
                "spiffe_jwt_svid",
                "oidc_token",
                *self.policy.evidence.kinds(),
            ],
            "subject_token_types_supported": list(SUBJECT_TOKEN_TYPES),
            "policy_version": self.policy.version,
        }

    def close(self) -> None:
        """Release database connections and the Redis client."""
        self.audit.close()
        self.db.dispose()
        if isinstance(self.replay, RedisReplayStore):
            self.replay.close()

    def check_ready(self) -> None:
        """Raise ``ServerUnavailable`` when the database or Redis cannot be
        reached, or the SQLite writer lock cannot be taken."""
        try:
            # Not the writers' full wait: a probe should answer promptly.
            with self.db.writing(wait=READY_LOCK_WAIT_SECONDS):
                pass
            with self.db.session() as s:
                s.get(Revocation, "-")
            if isinstance(self.replay, RedisReplayStore):
                self.replay.ping()
        except StoreUnavailable:
            raise ServerUnavailable("a backing store is unavailable") from None


def _tls_client_auth(settings: Settings) -> TlsClientAuth:
    """RFC 8705 section 2.1 trust roots from ``mtls_ca_file``; none without."""
    if not settings.mtls_ca_file:
        return TlsClientAuth()
    try:
        with open(settings.mtls_ca_file, "rb") as fh:
            return TlsClientAuth.from_pem(fh.read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mtls_ca_file: {exc}") from None


def _spiffe_bundles(settings: Settings) -> tuple[X509Bundle, ...]:
    """X.509-SVID roots per trust domain from ``spiffe_bundles``."""
    bundles = []
    for domain, path in settings.spiffe_bundles.items():
        try:
            with open(path, "rb") as fh:
                bundles.append(X509Bundle.from_pem(domain, fh.read()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"spiffe_bundles.{domain}: {exc}") from None
    return tuple(bundles)


def _single_values(params: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """RFC 6749 section 3.2: parameters must not repeat (except RFC 8707's
    ``resource`` and RFC 8693's ``audience``)."""
    out: dict[str, str] = {}
    for name, values in params.items():
        if name in REPEATABLE:
            continue
        if len(values) != 1:
            raise InvalidRequest(f"parameter {name} repeated")
        out[name] = values[0]
    return out


class _CachedAssessment:
    """An assessment reused for requests without evidence, and its copy
    stamped with the current second (one copy per second, not per token).

    Threads may race to stamp a second; each builds an equal copy.
    """

    __slots__ = ("_stamped", "assessment", "verdict")

    def __init__(self, assessment: Assessment, verdict: list[str]) -> None:
        self.assessment = assessment
        self.verdict = verdict
        self._stamped = assessment

    def at(self, now: int) -> Assessment:
        stamped = self._stamped
        if stamped.appraised_at != now:
            stamped = dataclasses.replace(self.assessment, appraised_at=now)
            self._stamped = stamped
        return stamped


def _request_requirement(single: Mapping[str, str]) -> Requirement:
    try:
        return Requirement.parse(
            single.get("min_mial"), single.get("min_maal"), single.get("min_assurance")
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _ratings_record(assessment: Assessment) -> dict[str, Any]:
    return {
        "mial": assessment.mial,
        "maal": assessment.maal,
        "reasons": assessment.reasons,
        "credential": assessment.credential,
    }
