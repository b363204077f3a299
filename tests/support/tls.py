"""A throwaway certificate authority and a server certificate for 127.0.0.1.

Made at test time with the ``openssl`` command-line tool (the ``cryptography`` package
is not a dependency of the project).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

CA_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        return ctx


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_certificates(directory: Path) -> Certificates:
    """A CA (``ca.pem``) and a certificate it signed for 127.0.0.1 (``server.pem``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.ext").write_text(CA_EXTENSIONS, encoding="ascii")
    (directory / "server.ext").write_text(SERVER_EXTENSIONS, encoding="ascii")
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=directory)
    _openssl(
        "req", "-new", "-key", "ca.key", "-subj", "/CN=marketcare test CA", "-out", "ca.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "2",
        "-extfile", "ca.ext", "-out", "ca.pem",
        cwd=directory,
    )  # fmt: skip
    _openssl("genrsa", "-out", "server.key", "2048", cwd=directory)
    _openssl(
        "req", "-new", "-key", "server.key", "-subj", "/CN=127.0.0.1", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
        cwd=directory,
    )  # fmt: skip
    return Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
