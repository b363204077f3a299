"""TLS of ``marketcare.mail.send`` against a real aiosmtpd server with a throwaway CA.

The certificates are made with the ``openssl`` command-line tool (tests/support/tls.py).
The client trusts the CA through ``SSL_CERT_FILE``, which ``ssl.create_default_context()``
honours via the default verify paths, so ``send`` is tested exactly as it runs.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from marketcare.reports.mail import DeliveryError, SmtpConfig, build_message, send

from .support.smtp import Handler, free_port
from .support.tls import Certificates, make_certificates, openssl_available

#: nothing here touches a database: it runs once, on the SQLite run (see conftest.py)
pytestmark = pytest.mark.no_database

# `make test` installs openssl; without it these tests fail rather than skip
assert openssl_available(), "the openssl tool is needed to make throwaway certificates"

SENDER = "marketcare@licheng.example.org"
RECIPIENT = "jianguan@licheng.example.org"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


class Server:
    def __init__(self, **controller_kwargs: Any) -> None:
        self.port = free_port()
        self.handler = Handler()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, **controller_kwargs
        )


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Server] = []

    def start(**controller_kwargs: Any) -> Server:
        server = Server(**controller_kwargs)
        server.controller.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.controller.stop()


@pytest.fixture
def trust_ca(certs: Certificates, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_cert))


@pytest.fixture
def default_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def config(port: int, security: str) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=port,
        security=security,  # type: ignore[arg-type]
        user=None,
        password=None,
        sender=SENDER,
        timeout=10.0,
    )


def message() -> Any:
    return build_message(
        sender=SENDER,
        recipient=RECIPIENT,
        subject="周报 2026-W48",
        body="正文",
        attachment=b"PK\x03\x04 not really a workbook",
        filename="周报_2026-W48.xlsx",
        msg_id="<marketcare.tls-test@licheng.example.org>",
        date=datetime(2026, 11, 27, 2, 0, tzinfo=UTC),
    )


def test_the_ca_file_is_trusted_through_ssl_cert_file(certs: Certificates, trust_ca: None) -> None:
    assert ssl.get_default_verify_paths().cafile == str(certs.ca_cert)


def test_starttls_delivers_to_a_server_whose_certificate_is_trusted(
    certs: Certificates, serve: Any, trust_ca: None
) -> None:
    server = serve(tls_context=certs.server_context(), require_starttls=True)
    send(config(server.port, "starttls"), message(), RECIPIENT)
    assert len(server.handler.received) == 1
    got = server.handler.received[0]
    assert got.rcpt_tos == [RECIPIENT]
    assert got.message["Message-ID"] == "<marketcare.tls-test@licheng.example.org>"


def test_starttls_to_an_untrusted_certificate_fails_permanently(
    certs: Certificates, serve: Any, default_trust: None
) -> None:
    server = serve(tls_context=certs.server_context(), require_starttls=True)
    with pytest.raises(DeliveryError) as caught:
        send(config(server.port, "starttls"), message(), RECIPIENT)
    assert caught.value.permanent
    assert "TLS certificate of 127.0.0.1 not trusted" in str(caught.value)
    assert server.handler.received == []


def test_implicit_tls_delivers_to_a_server_whose_certificate_is_trusted(
    certs: Certificates, serve: Any, trust_ca: None
) -> None:
    server = serve(ssl_context=certs.server_context())
    send(config(server.port, "tls"), message(), RECIPIENT)
    assert [r.rcpt_tos for r in server.handler.received] == [[RECIPIENT]]


def test_implicit_tls_to_an_untrusted_certificate_fails_permanently(
    certs: Certificates, serve: Any, default_trust: None
) -> None:
    server = serve(ssl_context=certs.server_context())
    with pytest.raises(DeliveryError) as caught:
        send(config(server.port, "tls"), message(), RECIPIENT)
    assert caught.value.permanent
    assert "not trusted" in str(caught.value)
    assert server.handler.received == []


def test_starttls_required_but_not_offered_fails_permanently(serve: Any, trust_ca: None) -> None:
    server = serve()  # plain SMTP, no STARTTLS in its EHLO answer
    with pytest.raises(DeliveryError) as caught:
        send(config(server.port, "starttls"), message(), RECIPIENT)
    assert caught.value.permanent
    assert "smtp_security" in str(caught.value)
    assert server.handler.received == []
