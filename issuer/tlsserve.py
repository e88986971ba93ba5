"""The issuer terminating (mutual) TLS itself, on the cheroot WSGI server.

``wimse-issuer serve`` runs this module instead of granian when
``tls_cert_file`` is set. granian, hypercorn and uvicorn verify client
certificates but never hand them to the application; cheroot lets an SSL
adapter add per-connection entries to the WSGI environ, and this module's
adapter adds the verified client certificate as ``SSL_CLIENT_CERT`` (PEM,
mod_ssl's name). The application reads that key only when its settings say
the issuer terminates TLS (issuer/web.py), and no request header can
produce it (headers arrive as ``HTTP_*``).

The TLS layer proves possession of the certificate's key; issuer/mtls.py
still decides which client, if any, the certificate authenticates (chain,
registered subject, JWK Set) exactly as for a certificate forwarded by a
proxy.

- ``build_context``: TLS 1.2 or later, the server chain, and when any
  client CA is configured ``CERT_OPTIONAL`` with those CAs
  (``tls_client_ca_file``, ``mtls_ca_file`` and the ``spiffe_bundles``
  roots): a client may connect without a certificate and authenticate
  otherwise, but a certificate it does send must chain to one of them, or
  the handshake fails (Python's ssl module has no verify callback that
  could let other certificates through).
- ``make_server``: a cheroot server for a WSGI app, with TLS when given a
  context. A new connection waits in cheroot's selector until the client
  sends something, so silent clients hold no thread; the handshake then
  runs in a worker thread (not in cheroot's accepting thread), bounded by
  ``HANDSHAKE_TIMEOUT``.
- ``run``: serve until SIGTERM or SIGINT, then stop gracefully: no new
  connections, requests in progress finish (within ``SHUTDOWN_TIMEOUT``).
- ``serve``: all of that for ``issuer.wsgi:app``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from cheroot import wsgi
from cheroot.makefile import MakeFile
from cheroot.server import HTTPConnection
from cheroot.ssl import Adapter

from .config import ConfigError, Settings

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "SOCKET_TIMEOUT",
    "build_context",
    "client_ca_files",
    "make_server",
    "run",
    "serve",
]

log = logging.getLogger(__name__)

#: Seconds a connection may stay silent: in the handshake, between the
#: pieces of a request line, headers or body, and idle between keep-alive
#: requests. It bounds each wait, not a whole request: a client that keeps
#: trickling bytes keeps its thread.
SOCKET_TIMEOUT = 10
#: Seconds a TLS handshake may take in all, once the client has sent its
#: first bytes.
HANDSHAKE_TIMEOUT = 5
#: Seconds ``run`` waits for requests in progress when stopping.
SHUTDOWN_TIMEOUT = 10
#: Listen backlog (cheroot's default of 5 drops connections under load).
LISTEN_BACKLOG = 128
#: Idle keep-alive connections kept open (cheroot's default is 10).
KEEP_ALIVE_LIMIT = 256
#: Largest request line plus headers, bytes (cheroot's default: unlimited).
MAX_HEADER_BYTES = 65536
#: Seconds a connection whose handshake failed is drained before closing.
LINGER_SECONDS = 0.5

WsgiApp = Callable[..., Any]


def client_ca_files(settings: Settings) -> list[tuple[str, str]]:
    """The CA files a client certificate may chain to in the handshake, as
    (setting name, path): ``tls_client_ca_file``, ``mtls_ca_file`` and each
    ``spiffe_bundles`` file, each path once."""
    named = [
        ("tls_client_ca_file", settings.tls_client_ca_file),
        ("mtls_ca_file", settings.mtls_ca_file),
        *(
            (f"spiffe_bundles.{domain}", path)
            for domain, path in sorted(settings.spiffe_bundles.items())
        ),
    ]
    seen: set[str] = set()
    out = []
    for name, path in named:
        if path and path not in seen:
            seen.add(path)
            out.append((name, path))
    return out


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an
    # encrypted key; refuse instead.
    raise ConfigError("tls_key_file must not be encrypted")


def build_context(settings: Settings) -> ssl.SSLContext:
    """The server-side ``SSLContext`` for ``settings``; raises ``ConfigError``.

    TLS 1.2 minimum, Python's default cipher suites, no renegotiation. With
    client CAs (``client_ca_files``) the server asks for a certificate
    (``CERT_OPTIONAL``) and the handshake fails for one that does not chain
    to them or is outside its validity period; without, it asks for none.
    An intermediate CA may serve as trust anchor (partial chains), as in
    issuer/mtls.py's own path validation.
    """
    if not settings.terminates_tls:
        raise ConfigError("tls_cert_file and tls_key_file are not set")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file, password=_no_password
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            "tls_cert_file and tls_key_file must hold a PEM certificate chain and "
            f"its matching unencrypted private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read tls_cert_file or tls_key_file: {exc}") from None
    cafiles = client_ca_files(settings)
    for name, path in cafiles:
        try:
            context.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{name} {path} holds no usable PEM certificate ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {name} {path}: {exc.strerror}") from None
    if cafiles:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class _TlsAdapter(Adapter):
    """A cheroot SSL adapter around a ready ``SSLContext``.

    ``wrap`` does not shake hands: ``_TlsConnection`` does, in the worker
    thread that serves the connection, and then asks ``get_environ`` for the
    entries every request on the connection gets.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        # The base class only stores file names cheroot's own adapters use.
        super().__init__(None, None)
        self.context = context

    def bind(self, sock: Any) -> Any:
        return sock

    def wrap(self, sock: Any) -> tuple[ssl.SSLSocket, dict[str, str]]:
        tls = self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return tls, {}

    def get_environ(self, sock: ssl.SSLSocket | None = None) -> dict[str, str]:
        env = {"wsgi.url_scheme": "https", "HTTPS": "on", "SSL_CLIENT_VERIFY": "NONE"}
        if sock is None:
            return env
        cipher = sock.cipher()
        if cipher is not None:
            env["SSL_CIPHER"], env["SSL_PROTOCOL"] = cipher[0], cipher[1]
        if self.context.verify_mode != ssl.CERT_NONE:
            # With verification on, the ssl module returns a peer
            # certificate only after it chained to a loaded CA.
            der = sock.getpeercert(binary_form=True)
            if der:
                env["SSL_CLIENT_VERIFY"] = "SUCCESS"
                env["SSL_CLIENT_CERT"] = ssl.DER_cert_to_PEM_cert(der)
        return env

    def makefile(self, sock: Any, mode: str = "r", bufsize: int = -1) -> Any:
        return MakeFile(sock, mode, bufsize)


class _TlsConnection(HTTPConnection):
    """A connection whose TLS handshake completes on its first use."""

    _handshake_done = False
    #: Set once the connection waited in the selector for its first bytes.
    _parked = False

    def communicate(self) -> bool:
        if not self._handshake_done:
            sock = self.socket
            try:
                sock.settimeout(HANDSHAKE_TIMEOUT)
                sock.do_handshake()
                sock.settimeout(SOCKET_TIMEOUT)
            except (ssl.SSLError, OSError) as exc:
                # Unknown CA, expired certificate, plain HTTP, a timeout:
                # the client gets a TLS alert (or nothing) and no request is
                # read. The reason names the check, never key material.
                reason = getattr(exc, "verify_message", None) or getattr(
                    exc, "reason", None
                )
                fields = {
                    "peer": self.remote_addr,
                    "error": type(exc).__name__,
                    "reason": str(reason or exc)[:200],
                }
                log.info("tls handshake failed", extra={"fields": fields})
                _close_gently(sock)
                return False
            self._handshake_done = True
            self.ssl_env = self.server.ssl_adapter.get_environ(sock)
        return bool(super().communicate())  # type: ignore[no-untyped-call]


def _close_gently(sock: ssl.SSLSocket) -> None:
    """Let the client read the TLS alert before the connection closes.

    With TLS 1.3 a client sends its request before it learns that its
    certificate was refused. Closing a socket with that request unread makes
    the kernel reset the connection, and the reset can overtake the alert:
    the client would see a bare reset instead of "unknown ca" or
    "certificate expired". So: send FIN after the alert, read and drop what
    the client sent until it closes, for at most ``LINGER_SECONDS``.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        sock.settimeout(LINGER_SECONDS)
        while time.monotonic() < deadline and sock.recv(4096):
            pass


class _Server(wsgi.Server):
    """cheroot's WSGI server, logging through the issuer's logging.

    cheroot hands a newly accepted connection straight to a worker thread,
    where the TLS handshake would wait for a client that sends nothing: a
    few idle sockets would hold every worker. Here a new TLS connection
    first waits in cheroot's selector, like an idle keep-alive connection,
    and reaches a worker only once the client has sent something; one that
    stays silent is closed after ``SOCKET_TIMEOUT`` without holding a
    thread. The handshake itself is bounded by ``HANDSHAKE_TIMEOUT``.
    """

    def process_conn(self, conn: Any) -> None:
        if isinstance(conn, _TlsConnection) and not conn._parked:
            conn._parked = True
            self.put_conn(conn)
            return
        super().process_conn(conn)

    def error_log(
        self, msg: str = "", level: int = 20, traceback: bool = False
    ) -> None:
        # cheroot's messages name peers and socket errors; a traceback could
        # quote request data, so only the message is kept.
        log.log(level, "server: %s", str(msg)[:300])


def make_server(
    app: WsgiApp, settings: Settings, context: ssl.SSLContext | None
) -> Any:
    """A cheroot WSGI server for ``app`` on ``settings.host``/``port``, with
    ``settings.threads`` threads, over TLS when ``context`` is given."""
    server = _Server(
        (settings.host, settings.port),
        app,
        numthreads=settings.threads,
        max=settings.threads,
        server_name="wimse-issuer",
        request_queue_size=LISTEN_BACKLOG,
        timeout=SOCKET_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    server.keep_alive_conn_limit = KEEP_ALIVE_LIMIT
    server.max_request_header_size = MAX_HEADER_BYTES
    if context is not None:
        server.ssl_adapter = _TlsAdapter(context)
        server.ConnectionClass = _TlsConnection
    return server


def run(server: Any) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully.

    Must be called from the main thread (signal handlers). cheroot's loop
    runs in a thread of its own; the main thread waits for a signal and then
    stops the server: the listening socket closes, idle connections are
    dropped, and worker threads finish the requests they hold.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.prepare()
        loop = threading.Thread(target=server.serve, name="cheroot", daemon=True)
        loop.start()
        while not stop.wait(1.0):
            if not loop.is_alive():
                raise RuntimeError("the server loop ended unexpectedly")
        log.info("shutting down", extra={"fields": {"timeout": SHUTDOWN_TIMEOUT}})
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(settings: Settings, context: ssl.SSLContext | None = None) -> None:
    """Run ``issuer.wsgi:app`` over TLS on cheroot until SIGTERM or SIGINT.

    The ``WIMSE_ISSUER_*`` variables must already describe ``settings``
    (``wimse-issuer serve`` sets them), since the app reads its settings
    from the environment. Raises ``ConfigError``.
    """
    if settings.workers != 1:
        raise ConfigError("workers must be 1 when the issuer terminates TLS")
    if context is None:
        context = build_context(settings)
    from .wsgi import app

    run(make_server(app, settings, context))
