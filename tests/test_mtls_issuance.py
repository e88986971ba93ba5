"""Mutual TLS at the token endpoint (RFC 8705): certificate client
authentication, X.509-SVIDs, certificate-bound tokens and their ratings,
with the certificate forwarded by a trusted TLS-terminating proxy.

Test CAs are made with cryptography (helpers from tests/test_mtls.py); the
real SPIRE samples in ../shared/data/spiffe-x509-svid are checked with the
clock pinned through ``IssuerService.token(now=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from issuer.config import ConfigError, Settings, load_settings
from issuer.errors import OAuthError
from issuer.mtls import certificate_thumbprint
from issuer.web import create_app

from .conftest import basic
from .test_mtls import (
    DAY,
    HELPER_NOW,
    PROVIDER_NOW,
    SVID,
    Issued,
    at,
    issue,
    make_ca,
    public_jwk,
)

HEADER = "X-SSL-Client-Cert"
CC = {"grant_type": "client_credentials"}
SPIFFE_ID = "spiffe://example.test/ns/prod/sa/api"
DN = "CN=workload-a,O=Example Corp,C=US"


def forwarded(cert: Issued | bytes) -> str:
    """The header value nginx sends: ``$ssl_client_escaped_cert``."""
    der = cert if isinstance(cert, bytes) else cert.der
    pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    return quote(pem.decode(), safe="")


def claims_of(body: dict[str, Any]) -> dict[str, Any]:
    token = body["access_token"]
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def der_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("Client Root")


@pytest.fixture(scope="module")
def spiffe_ca() -> Issued:
    return make_ca("SPIFFE Root")


@pytest.fixture
def mtls_service(
    make_service: Callable[..., Any], tmp_path: Path, ca: Issued, spiffe_ca: Issued
) -> Any:
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_bytes(ca.pem)
    bundle = tmp_path / "example.test.pem"
    bundle.write_bytes(spiffe_ca.pem)
    return make_service(
        mtls_ca_file=str(ca_file),
        spiffe_bundles={"example.test": str(bundle)},
        mtls_proxy_header=HEADER,
        mtls_trusted_proxies=["127.0.0.1/32"],
    )


@pytest.fixture
def app(mtls_service: Any) -> Any:
    return create_app(mtls_service).test_client()


def register(service: Any, **kwargs: Any) -> str:
    client, _ = service.clients.add("m", audiences=["https://api.test"], **kwargs)
    return str(client.client_id)


def post(app: Any, client_id: str, cert: Issued | None, **extra: Any) -> Any:
    headers = {HEADER: forwarded(cert)} if cert is not None else {}
    return app.post(
        "/token", data={**CC, "client_id": client_id}, headers=headers, **extra
    )


# -- tls_client_auth -----------------------------------------------------------


def test_tls_client_auth_by_subject_dn_gets_a_certificate_bound_token(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client_id = register(mtls_service, tls_auth={"tls_client_auth_subject_dn": DN})
    leaf = issue(ca)

    resp = post(app, client_id, leaf)

    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["token_type"] == "Bearer"
    claims = claims_of(body)
    assert claims["client_id"] == client_id
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(leaf.der)}
    maal = claims["assurance_levels"]["maal"]
    assert maal["boundary"] == 3
    assert maal["reuse"] == 2
    assert (maal["provenance"], maal["enrollment"], maal["containment"]) == (1, 1, 1)
    assert (maal["unlocking"], maal["recovery"]) == (0, 1)


def test_certificate_bound_token_rates_higher_boundary_than_bearer(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client, secret = mtls_service.clients.add("s", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    leaf = issue(ca)

    bearer = app.post("/token", data=CC, headers=auth).get_json()
    bound = app.post(
        "/token", data=CC, headers={**auth, HEADER: forwarded(leaf)}
    ).get_json()

    plain, tied = claims_of(bearer), claims_of(bound)
    assert "cnf" not in plain
    assert tied["cnf"] == {"x5t#S256": certificate_thumbprint(leaf.der)}
    assert plain["assurance_levels"]["maal"]["boundary"] == 1
    assert tied["assurance_levels"]["maal"]["boundary"] == 3


def test_x509_svid_authenticates_the_client_registered_for_its_spiffe_id(
    app: Any, mtls_service: Any, spiffe_ca: Issued
) -> None:
    client_id = register(mtls_service, tls_auth={"tls_client_auth_san_uri": SPIFFE_ID})
    svid = issue(spiffe_ca, sans=[x509.UniformResourceIdentifier(SPIFFE_ID)])

    resp = post(app, client_id, svid)

    assert resp.status_code == 200, resp.get_json()
    claims = claims_of(resp.get_json())
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(svid.der)}
    maal = claims["assurance_levels"]["maal"]
    assert (maal["provenance"], maal["enrollment"], maal["containment"]) == (1, 2, 1)
    assert (maal["unlocking"], maal["reuse"], maal["recovery"]) == (2, 2, 2)
    assert maal["boundary"] == 3


def test_self_signed_certificate_matching_registered_jwks(
    app: Any, mtls_service: Any
) -> None:
    leaf = issue(None, cn="self-signed")
    client_id = register(
        mtls_service, jwks={"keys": [public_jwk(leaf.key)]}, self_signed_tls=True
    )

    resp = post(app, client_id, leaf)

    assert resp.status_code == 200, resp.get_json()
    claims = claims_of(resp.get_json())
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(leaf.der)}
    assert claims["assurance_levels"]["maal"]["boundary"] == 3


def test_flask_route_binds_like_the_fast_path(mtls_service: Any, ca: Issued) -> None:
    flask_app = create_app(mtls_service)
    # Unwrap TokenFastPath so the request reaches the Flask /token route.
    flask_app.wsgi_app = flask_app.wsgi_app.app  # type: ignore[attr-defined]
    client_id = register(mtls_service, tls_auth={"tls_client_auth_subject_dn": DN})
    leaf = issue(ca)

    resp = post(flask_app.test_client(), client_id, leaf)

    assert resp.status_code == 200, resp.get_json()
    assert claims_of(resp.get_json())["cnf"]["x5t#S256"] == certificate_thumbprint(
        leaf.der
    )
    untrusted = post(
        flask_app.test_client(),
        client_id,
        leaf,
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert untrusted.get_json()["error"] == "invalid_client"


# -- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["other-ca", "expired", "wrong-san", "svid-other-ca", "svid-wrong-id"]
)
def test_refuses_certificates_that_do_not_authenticate(
    app: Any, mtls_service: Any, ca: Issued, spiffe_ca: Issued, case: str
) -> None:
    metadata = {"tls_client_auth_san_dns": "workload.example.test"}
    sans: list[x509.GeneralName] = [x509.DNSName("workload.example.test")]
    issuer = ca
    kwargs: dict[str, Any] = {}
    if case == "other-ca":
        issuer = make_ca("Unrelated Root")
    elif case == "expired":
        kwargs = {"not_before": at(-10 * DAY), "not_after": at(-DAY)}
    elif case == "wrong-san":
        sans = [x509.DNSName("other.example.test")]
    else:
        metadata = {"tls_client_auth_san_uri": SPIFFE_ID}
        uri = SPIFFE_ID if case == "svid-other-ca" else SPIFFE_ID + "-other"
        sans = [x509.UniformResourceIdentifier(uri)]
        issuer = make_ca("Foreign Root") if case == "svid-other-ca" else spiffe_ca
    client_id = register(mtls_service, tls_auth=metadata)

    resp = post(app, client_id, issue(issuer, sans=sans, **kwargs))

    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_refuses_forwarded_header_from_an_untrusted_address(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client_id = register(mtls_service, tls_auth={"tls_client_auth_subject_dn": DN})

    resp = post(app, client_id, issue(ca), environ_base={"REMOTE_ADDR": "10.9.8.7"})

    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"


def test_untrusted_header_is_refused_even_for_a_secret_client(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client, secret = mtls_service.clients.add("s", audiences=["https://api.test"])
    headers = {
        "Authorization": basic(client.client_id, secret),
        HEADER: forwarded(issue(ca)),
    }

    resp = app.post(
        "/token", data=CC, headers=headers, environ_base={"REMOTE_ADDR": "10.9.8.7"}
    )

    assert resp.get_json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "value",
    ["not-a-certificate", quote("-----BEGIN CERTIFICATE-----\nAAAA\n", safe="")],
)
def test_refuses_malformed_certificate_header(
    app: Any, mtls_service: Any, value: str
) -> None:
    client_id = register(mtls_service, tls_auth={"tls_client_auth_subject_dn": DN})

    resp = app.post(
        "/token", data={**CC, "client_id": client_id}, headers={HEADER: value}
    )

    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"


def test_mtls_client_without_a_certificate_is_invalid_client(
    app: Any, mtls_service: Any
) -> None:
    client_id = register(mtls_service, tls_auth={"tls_client_auth_subject_dn": DN})

    resp = post(app, client_id, None)

    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"
    assert "client certificate required" in resp.get_json()["error_description"]
    # An unknown client id gets the generic text.
    unknown = post(app, "no-such-client", None)
    assert unknown.get_json()["error_description"] == "client authentication required"


def test_forwarded_certificate_authenticates_at_introspection_and_revocation(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client_id = register(mtls_service, tls_auth={"tls_client_auth_subject_dn": DN})
    leaf = issue(ca)
    token = post(app, client_id, leaf).get_json()["access_token"]
    headers = {HEADER: forwarded(leaf)}
    form = {"client_id": client_id, "token": token}

    seen = app.post("/introspect", data=form, headers=headers)
    assert seen.status_code == 200, seen.get_json()
    assert seen.get_json()["active"] is True
    assert app.post("/revoke", data=form, headers=headers).status_code == 200
    assert app.post("/introspect", data=form, headers=headers).get_json() == {
        "active": False
    }
    # The same header from an address that is not a trusted proxy.
    untrusted = app.post(
        "/introspect",
        data=form,
        headers=headers,
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert untrusted.status_code == 401
    assert untrusted.get_json()["error"] == "invalid_client"


def test_certificate_of_another_method_does_not_authenticate_a_secret_client(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client, _ = mtls_service.clients.add("s", audiences=["https://api.test"])

    resp = post(app, client.client_id, issue(ca))

    assert resp.get_json()["error"] == "invalid_client"


def test_header_is_ignored_when_proxy_mode_is_off(
    make_service: Callable[..., Any], ca: Issued
) -> None:
    service = make_service()
    app = create_app(service).test_client()
    client, secret = service.clients.add("s", audiences=["https://api.test"])
    headers = {
        "Authorization": basic(client.client_id, secret),
        HEADER: forwarded(issue(ca)),
    }

    resp = app.post("/token", data=CC, headers=headers)

    assert resp.status_code == 200
    assert "cnf" not in claims_of(resp.get_json())


# -- real SPIRE X.509-SVIDs, clock pinned where the core takes it --------------------


@pytest.fixture
def svid_service(make_service: Callable[..., Any]) -> Any:
    # The SPIRE sample roots have serial number 0 (see SOURCE.md).
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        return make_service(
            spiffe_bundles={
                "example.org": str(SVID / "provider-bundle.pem"),
                "other.org": str(SVID / "helper-bundle.pem"),
            },
            mtls_proxy_header=HEADER,
            mtls_trusted_proxies=["127.0.0.1/32"],
        )


def token_with(service: Any, client_id: str, der: bytes, now: float) -> Any:
    params = {**{k: [v] for k, v in CC.items()}, "client_id": [client_id]}
    return service.token(params, None, now=now, client_cert=der)


@pytest.mark.parametrize(
    ("spiffe_id", "cert", "now"),
    [
        ("spiffe://example.org/test", "provider-cert.pem", PROVIDER_NOW),
        ("spiffe://example.org/workload-server", "helper-svid.pem", HELPER_NOW),
    ],
)
def test_real_svids_authenticate_inside_their_validity(
    make_service: Callable[..., Any], spiffe_id: str, cert: str, now: int
) -> None:
    bundle = (
        "provider-bundle.pem" if cert.startswith("provider") else "helper-bundle.pem"
    )
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        service = make_service(spiffe_bundles={"example.org": str(SVID / bundle)})
    client_id = register(service, tls_auth={"tls_client_auth_san_uri": spiffe_id})
    der = der_of(SVID / cert)

    result = token_with(service, client_id, der, now)

    claims = claims_of(result.body)
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(der)}
    assert claims["assurance_levels"]["maal"]["enrollment"] == 2
    with pytest.raises(OAuthError) as info:  # the same SVID today: expired
        token_with(service, client_id, der, now + 365 * 86400)
    assert info.value.error == "invalid_client"


def test_real_svid_of_another_trust_domain_is_refused(svid_service: Any) -> None:
    client_id = register(
        svid_service, tls_auth={"tls_client_auth_san_uri": "spiffe://other.org/test"}
    )

    with pytest.raises(OAuthError) as info:
        token_with(
            svid_service,
            client_id,
            der_of(SVID / "provider-cert2.pem"),
            1584648000,  # inside provider-cert2.pem's validity
        )

    assert info.value.error == "invalid_client"


def test_real_svid_does_not_authenticate_a_client_of_another_id(
    svid_service: Any,
) -> None:
    client_id = register(
        svid_service, tls_auth={"tls_client_auth_san_uri": "spiffe://example.org/x"}
    )

    with pytest.raises(OAuthError) as info:
        token_with(
            svid_service, client_id, der_of(SVID / "provider-cert.pem"), PROVIDER_NOW
        )

    assert info.value.error == "invalid_client"


# -- metadata, introspection, registration, settings ---------------------------------


def test_metadata_advertises_mtls(app: Any) -> None:
    meta = app.get("/.well-known/oauth-authorization-server").get_json()

    assert meta["tls_client_certificate_bound_access_tokens"] is True
    certificates = {"tls_client_auth", "self_signed_tls_client_auth"}
    # Certificates authenticate clients at every endpoint that asks for it.
    for endpoint in ("token", "introspection", "revocation"):
        assert certificates <= set(meta[f"{endpoint}_endpoint_auth_methods_supported"])


def test_introspection_returns_the_certificate_confirmation(
    app: Any, mtls_service: Any, ca: Issued
) -> None:
    client, secret = mtls_service.clients.add("s", audiences=["https://api.test"])
    auth = {"Authorization": basic(client.client_id, secret)}
    leaf = issue(ca)
    token = app.post(
        "/token", data=CC, headers={**auth, HEADER: forwarded(leaf)}
    ).get_json()["access_token"]

    body = app.post("/introspect", data={"token": token}, headers=auth).get_json()

    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["cnf"] == {"x5t#S256": certificate_thumbprint(leaf.der)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tls_auth": {}},
        {
            "tls_auth": {
                "tls_client_auth_subject_dn": DN,
                "tls_client_auth_san_dns": "a",
            }
        },
        {"tls_auth": {"tls_client_auth_san_ip": "not-an-ip"}},
        {"tls_auth": {"tls_client_auth_subject_dn": DN}, "jwks": {"keys": []}},
        {"self_signed_tls": True},
    ],
)
def test_registration_refuses_bad_tls_metadata(mtls_service: Any, kwargs: Any) -> None:
    from issuer.clients import RegistrationError

    with pytest.raises(RegistrationError):
        mtls_service.clients.add("bad", **kwargs)


def test_mtls_clients_get_no_secret(mtls_service: Any) -> None:
    client, secret = mtls_service.clients.add(
        "m", tls_auth={"tls_client_auth_san_uri": SPIFFE_ID}
    )

    assert secret is None
    assert client.auth_methods == ("tls_client_auth",)
    assert client.public_view()["tls_client_auth_san_uri"] == SPIFFE_ID


def test_new_keys_keep_a_self_signed_client_on_its_method(
    app: Any, mtls_service: Any
) -> None:
    old, new = issue(None, cn="old"), issue(None, cn="new")
    client_id = register(
        mtls_service, jwks={"keys": [public_jwk(old.key)]}, self_signed_tls=True
    )

    client, _ = mtls_service.clients.update(
        client_id, jwks={"keys": [public_jwk(new.key)]}
    )

    assert client.auth_methods == ("self_signed_tls_client_auth",)
    assert post(app, client_id, new).status_code == 200
    assert post(app, client_id, old).get_json()["error"] == "invalid_client"


def test_settings_for_proxy_mode(tmp_path: Path) -> None:
    env = {
        "WIMSE_ISSUER_MTLS_PROXY_HEADER": HEADER,
        "WIMSE_ISSUER_MTLS_TRUSTED_PROXIES": "127.0.0.1/32, ::1/128",
    }
    settings = load_settings(environ=env, overrides={"home": str(tmp_path)})
    assert settings.mtls_trusted_proxies == ["127.0.0.1/32", "::1/128"]
    with pytest.raises(ConfigError):
        Settings(mtls_proxy_header=HEADER).validate()
    with pytest.raises(ConfigError):
        Settings(mtls_trusted_proxies=["10.0.0.1/8"]).validate()
    with pytest.raises(ConfigError):
        Settings(
            mtls_proxy_header="X_Bad Header", mtls_trusted_proxies=["127.0.0.1/32"]
        ).validate()
