"""Make what a TLS deployment with SuperNode authentication needs, without openssl.

    python certificates.py certs --host 192.168.1.10 --host superlink.local --supernodes 3

writes into `certs/`:

- `ca.crt`: a private certificate authority. Give it to every SuperNode
  (`--root-certificates`), to `flower-superlink` (`--ssl-ca-certfile`) and to the
  machine that runs `flwr` (`root-certificates` in its config.toml).
- `server.pem`, `server.key`: the SuperLink's certificate, signed by that CA for every
  `--host` (IP addresses and DNS names the SuperNodes dial), and its key.
- `supernode-I`, `supernode-I.pub` for I < `--supernodes`: EC P-384 key pairs in OpenSSH
  format (what `ssh-keygen -t ecdsa -b 384` makes). The private key stays on device I
  (`flower-supernode --auth-supernode-private-key`); the public one is registered with
  `flwr supernode register`.

Keys are written unencrypted and readable by their owner only; the CA's key is not
kept, so no one can sign more certificates with it (run this again for new ones).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NO_ENCRYPTION = serialization.NoEncryption()
_CA_NAME = "flcomp deployment CA"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _host(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS name SAN for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_certificates(directory: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path, Path]:
    """Write ca.crt, server.pem and server.key (PEM) into `directory`; return their paths.

    The server certificate is valid for `days` days from five minutes ago (clock skew)
    for every name in `hosts`; ValueError if `hosts` is empty or `days` is not positive.
    """
    if not hosts:
        raise ValueError("name at least one host the SuperNodes connect to")
    if not days > 0:
        raise ValueError(f"days must be positive, not {days}")
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=days)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())

    def certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.CertificateBuilder:
        # Key identifiers and key usage: strict verifiers (Python 3.13's default) want them.
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name(_CA_NAME))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )

    ca = certificate(_name(_CA_NAME), ca_key, ca=True).sign(ca_key, hashes.SHA384())
    server = (
        certificate(_name(hosts[0]), server_key, ca=False)
        .add_extension(x509.SubjectAlternativeName([_host(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.crt", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    _write_private(paths[2], server_key.private_bytes(serialization.Encoding.PEM, pkcs8, _NO_ENCRYPTION))
    return paths


def write_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a SuperNode's EC P-384 key pair (OpenSSH format) as NAME and NAME.pub into
    `directory`; return their paths (private, public)."""
    key = ec.generate_private_key(ec.SECP384R1())
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / name, directory / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, _NO_ENCRYPTION),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("directory", type=Path, help="where to write the files")
    parser.add_argument(
        "--host",
        action="append",
        required=True,
        help="an IP address or DNS name of the SuperLink, as the SuperNodes dial it (repeatable)",
    )
    parser.add_argument("--supernodes", type=int, default=0, help="SuperNode key pairs to make")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates")
    args = parser.parse_args(argv)
    if args.supernodes < 0:
        parser.error("--supernodes must not be negative")
    try:
        write_certificates(args.directory, args.host, args.days)
    except ValueError as e:
        parser.error(str(e))
    for i in range(args.supernodes):
        write_node_key(args.directory, f"supernode-{i}")


if __name__ == "__main__":
    main()
