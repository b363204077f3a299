"""A local RFC 3161 time-stamping authority: ``openssl ts -reply`` behind a small HTTP server.

A throwaway CA signs a TSA certificate (critical extended key usage ``timeStamping``);
each POSTed request (``application/timestamp-query``) is answered by ``openssl ts``. No
outside network: the server listens on 127.0.0.1 only and stops with the test.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CA_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

TSA_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""

TSA_CONFIG = """\
[ tsa ]
default_tsa = local

[ local ]
dir = {folder}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _openssl(*args: str, cwd: Path) -> bytes:
    return subprocess.run(
        ["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60
    ).stdout


def make_authority(folder: Path, name: str = "Local Test TSA") -> Path:
    """CA and TSA keys and certificates in ``folder``; returns the CA certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.ext").write_text(CA_EXTENSIONS)
    (folder / "tsa.ext").write_text(TSA_EXTENSIONS)
    (folder / "serial").write_text("01\n")
    (folder / "tsa.cnf").write_text(TSA_CONFIG.format(folder=folder))
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
        "-subj", f"/CN={name} CA", "-extensions", "v3_ca", "-addext",
        "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl("req", *key, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", f"/CN={name}",
             cwd=folder)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "tsa.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tsa.crt", "-days", "30", "-extfile", "tsa.ext",
        cwd=folder,
    )  # fmt: skip
    return folder / "ca.crt"


@dataclass
class Authority:
    url: str
    ca_cert: Path
    folder: Path
    requests: list[bytes] = field(default_factory=list)


@contextmanager
def local_authority() -> Iterator[Authority]:
    """A running authority for the length of the block."""
    with tempfile.TemporaryDirectory(prefix="marketcare-tsa-") as name:
        folder = Path(name)
        ca = make_authority(folder)
        lock = threading.Lock()
        received: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    received.append(body)
                    (folder / "q.tsq").write_bytes(body)
                    try:
                        _openssl(
                            "ts", "-reply", "-config", "tsa.cnf", "-queryfile", "q.tsq",
                            "-out", "r.tsr", cwd=folder,
                        )  # fmt: skip
                        answer = (folder / "r.tsr").read_bytes()
                    except subprocess.CalledProcessError:
                        self.send_error(400, "bad timestamp request")
                        return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            yield Authority(f"http://127.0.0.1:{port}/tsa", ca, folder, received)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
