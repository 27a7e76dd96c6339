"""Mutual TLS between the platform's own processes (DRTECH_INTERNAL_MTLS=1).

One switch turns every internal gRPC hop (gateway to auth, to each model service and the router)
into mutual TLS: each server asks for a client certificate signed by the internal CA and each client
checks the server's. The files are PEM, named as cert-manager's Secrets name them (tls.crt, tls.key,
ca.crt) so a mounted Secret is used as it is:

    DRTECH_INTERNAL_MTLS      1/true: on (default off: plaintext, as before)
    DRTECH_INTERNAL_TLS_CERT  this process's certificate  (default $DRTECH_HOME/tls/<component>.crt)
    DRTECH_INTERNAL_TLS_KEY   its private key              (default $DRTECH_HOME/tls/<component>.key)
    DRTECH_INTERNAL_TLS_CA    the CA both sides trust      (default $DRTECH_HOME/tls/ca.crt)

`make run` (services/supervisor.py) creates a throwaway CA and one certificate per component under
$DRTECH_HOME/tls when the switch is on and they are missing (`ensure_certificates`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InternalTLSSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRTECH_INTERNAL_", extra="ignore")

    mtls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    home: Path = Field(default=Path("var"), validation_alias="DRTECH_HOME")

    def paths(self, component: str) -> tuple[Path, Path, Path]:
        """(certificate, key, CA) of `component`: the set variables, else the files under DRTECH_HOME."""
        folder = self.home / "tls"
        return (self.tls_cert or folder / f"{component}.crt",
                self.tls_key or folder / f"{component}.key",
                self.tls_ca or folder / "ca.crt")


@dataclass(frozen=True)
class InternalTLS:
    """One process's PEM material: its certificate chain, its key and the CA it trusts."""

    certificate: bytes
    key: bytes
    ca: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        # require_client_auth: a caller without a certificate from our CA gets no RPC at all,
        # Health included.
        return grpc.ssl_server_credentials([(self.key, self.certificate)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.certificate)


def load(component: str, settings: InternalTLSSettings | None = None) -> InternalTLS | None:
    """`component`'s TLS material when DRTECH_INTERNAL_MTLS is on, None when it is off.

    Raises ValueError naming the variable and file when a file is missing or unreadable: a process
    told to use mTLS never falls back to plaintext.
    """
    settings = settings or InternalTLSSettings()
    if not settings.mtls:
        return None
    contents = []
    variables = ("DRTECH_INTERNAL_TLS_CERT", "DRTECH_INTERNAL_TLS_KEY", "DRTECH_INTERNAL_TLS_CA")
    for path, variable in zip(settings.paths(component), variables):
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ValueError(f"DRTECH_INTERNAL_MTLS is on but {path} ({variable}) cannot be read: "
                             f"{error.strerror}") from None
        if b"-----BEGIN" not in data:
            raise ValueError(f"{path} ({variable}) is not a PEM file")
        contents.append(data)
    return InternalTLS(*contents)


def add_port(server: grpc.Server, address: str, tls: InternalTLS | None) -> int:
    """Bind `address` with mutual TLS when `tls` is given, plaintext otherwise; the port bound
    (0 or RuntimeError when it cannot be, as grpcio's add_*_port)."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


def secure_channel(target: str, tls: InternalTLS | None, options: list | None = None) -> grpc.Channel:
    """A blocking channel to `target`: mutual TLS with `tls`, plaintext without."""
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.channel_credentials(), options=options)


# --- the throwaway CA of `make run` ----------------------------------------------------------------

def _write(path: Path, data: bytes, private: bool) -> None:
    # A key is created 0600 from the start (never world-readable, not even for a moment).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_ca(common_name: str = "Dr.Tech internal CA", days: int = 365) -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def make_leaf(ca_cert_pem: bytes, ca_key_pem: bytes, component: str, hosts: Iterable[str] = (),
              days: int = 365) -> tuple[bytes, bytes]:
    """A certificate for `component` signed by the CA: (certificate PEM, key PEM). Its SANs: the
    component's name, localhost, 127.0.0.1 and `hosts`; usable as server and as client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys((component, "localhost", "127.0.0.1", *hosts)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, component)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def ensure_certificates(home: Path, components: Iterable[str]) -> list[Path]:
    """Create $home/tls/ca.{crt,key} and <component>.{crt,key} for those missing (keys 0600); the
    files written. A new CA re-issues every component's certificate (the old ones would not verify)."""
    folder = home / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_crt, ca_key = folder / "ca.crt", folder / "ca.key"
    written: list[Path] = []
    new_ca = not (ca_crt.exists() and ca_key.exists())
    if new_ca:
        cert, key = make_ca()
        _write(ca_key, key, private=True)
        _write(ca_crt, cert, private=False)
        written += [ca_crt, ca_key]
    ca_cert_pem, ca_key_pem = ca_crt.read_bytes(), ca_key.read_bytes()
    for component in components:
        crt, key_path = folder / f"{component}.crt", folder / f"{component}.key"
        if new_ca or not (crt.exists() and key_path.exists()):
            cert, key = make_leaf(ca_cert_pem, ca_key_pem, component)
            _write(key_path, key, private=True)
            _write(crt, cert, private=False)
            written += [crt, key_path]
    return written
