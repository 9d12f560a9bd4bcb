"""Certificates for TLS tests, made with the ``openssl`` command: a CA, a server certificate
for ``localhost`` (and nothing else: a test connecting to 127.0.0.1 sees a name mismatch),
and a client certificate for mutual TLS."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_certs(directory: Path) -> Certs:
    """A CA and certificates signed by it, in ``directory`` (skips without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=riverbed test CA", cwd=directory)
    for name, extensions in (("server", ("subjectAltName=DNS:localhost\n"
                                         "extendedKeyUsage=serverAuth\n")),
                             ("client", "extendedKeyUsage=clientAuth\n")):
        (directory / f"{name}.ext").write_text(
            extensions + "authorityKeyIdentifier=keyid\nbasicConstraints=CA:FALSE\n")
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=riverbed test {name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=directory)
    return Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                 directory / "client.pem", directory / "client.key")
