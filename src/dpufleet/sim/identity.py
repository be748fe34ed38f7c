"""Emulated device identities: one vendor CA per manufacturer, an IDevID for every DPU and host.

Real DPUs and servers leave the factory with an IEEE 802.1AR IDevID: a key in a
secure element and a certificate from the manufacturer's CA naming the serial
number. The emulator gives each device the same, in its OS root under
`etc/dpufleet/idevid/` (device.crt, device.key 0600), so the agent enrolls
exactly as on hardware, and the operator's step is the real one: trust the
vendor CA (`dpufleet enroll trust-vendor-ca`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..crypto.pki import cert_pem, key_pem, new_key, self_signed_ca, utcnow, write_private
from .fleet import Fleet

IDEVID_DIR = Path("etc/dpufleet/idevid")
IDEVID_CERT = IDEVID_DIR / "device.crt"
IDEVID_KEY = IDEVID_DIR / "device.key"
LIFETIME = dt.timedelta(days=3650)


@dataclass
class VendorCA:
    vendor: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, vendor: str) -> VendorCA:
        key = new_key()
        cert = self_signed_ca(key, vendor, f"{vendor} device identity CA (emulated)", dt.timedelta(days=1), LIFETIME)
        return cls(vendor, key, cert)

    def idevid(self, serial: str, model: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = new_key()
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.vendor),
                        x509.NameAttribute(NameOID.COMMON_NAME, model),
                        x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert


@dataclass
class SimIdentities:
    """The emulated manufacturers' CAs; `cas` is what an operator would be handed to trust."""

    cas: dict[str, VendorCA] = field(default_factory=dict)

    def ca_for(self, vendor: str) -> VendorCA:
        if vendor not in self.cas:
            self.cas[vendor] = VendorCA.create(vendor)
        return self.cas[vendor]

    def provision(self, fleet: Fleet, directory: Path | None = None) -> None:
        """Write an IDevID into every device's OS root; the vendor CAs go to `directory/vendor-cas`."""
        for host in fleet.hosts:
            if host.osroot is not None:
                self._write(host.osroot, self.ca_for(host.model.vendor), host.serial, host.model.product)
            for dpu in host.dpus:
                if dpu.osroot is not None:
                    self._write(dpu.osroot, self.ca_for(dpu.profile.vendor), dpu.serial, dpu.profile.model)
        if directory is not None:
            for vendor, ca in self.cas.items():
                path = directory / "vendor-cas" / f"{re.sub(r'[^A-Za-z0-9]+', '-', vendor).strip('-').lower()}.pem"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(cert_pem(ca.certificate))

    @staticmethod
    def _write(root: Path, ca: VendorCA, serial: str, model: str) -> None:
        key, cert = ca.idevid(serial, model)
        write_private(root / IDEVID_KEY, key_pem(key))
        (root / IDEVID_CERT).write_bytes(cert_pem(cert))
