"""`dpufleet image keygen|sign` (offline, a publisher's tools), `image upload|approve`, and `dpufleet
publisher trust` (an admin's)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import typer
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from pydantic import ValidationError

from ..crypto.signing import Manifest, PublisherClass, key_id, load_public_key, sign_manifest
from .common import UserError, note, options

image_app = typer.Typer(
    help="Images: make a publisher key, sign a manifest, upload content, approve an image for agents to pull.",
    no_args_is_help=True,
)
publisher_app = typer.Typer(help="Trusted image publishers (admins only).", no_args_is_help=True)


@image_app.command("upload")
def upload(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="an OS image, a firmware file, or a service's OCI archive (a tar of its layout)"
    ),
) -> None:
    """Put a file into the control plane's image repository under its sha256; print the digest to name it by."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UserError(f"{file}: {exc.strerror}") from None
    with options(ctx).client() as client:
        blob = client.upload_blob(data)
    print(f"sha256:{blob['sha256']} ({blob['size']} bytes)")
    note(f"a DPUService runs it as artifact.image.reference: <name>@sha256:{blob['sha256']}")


@image_app.command("keygen")
def keygen(
    out: Path = typer.Option(
        ..., "--out", help="private key file to write (PEM, mode 0600); KEYFILE.pub gets the public key"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite an existing key file"),
) -> None:
    """Make an ed25519 signing key: the private key stays with the publisher, the .pub goes to `publisher trust`."""
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(out, 0o600)
    public = out.with_name(out.name + ".pub")
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    print(f"private key: {out} (0600)\npublic key:  {public}\nkey id:      {key_id(key.public_key())}")


def _load_private(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not an unencrypted PEM private key ({str(exc)[:100]})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"{path}: not an ed25519 key")
    return key


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from None


@image_app.command("approve")
def approve_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the Image"),
    revoke: bool = typer.Option(False, "--revoke", help="withdraw the approval"),
    project: str | None = typer.Option(None, "-p", "--project", help="project of the image"),
) -> None:
    """Approve an image for DPU agents to pull (label dpufleet.io/approved); their requests still pass
    the update policy (signature, DPUSet, windows)."""
    config = options(ctx).config(project)
    labels = {"dpufleet.io/approved": None if revoke else "true"}
    with options(ctx).client() as client:
        client.patch("images", name, {"metadata": {"labels": labels}}, config.project)
    print(f"image/{name} {'no longer approved' if revoke else 'approved'} for agents to pull")


@image_app.command("sign")
def sign(
    manifest_file: Path = typer.Argument(..., metavar="MANIFEST.yaml", help="name, version, sequence, components, ..."),
    key_file: Path = typer.Option(..., "--key", help="the publisher's private key (from `image keygen`)"),
    valid_for: int = typer.Option(365, "--valid-days", help="expiry when the manifest has none, in days"),
    embed: Path | None = typer.Option(
        None,
        "--embed",
        help="an Image YAML (sets spec.signedManifest) or a DPUService YAML (sets spec.artifact.signedManifest)",
    ),
    output: str = typer.Option("json", "--output", "-o", help="json or yaml"),
) -> None:
    """Sign a manifest; print the signed manifest (or the Image embedding it) to apply."""
    doc = _load_yaml(manifest_file)
    if not isinstance(doc, dict):
        raise UserError(f"{manifest_file}: a manifest is a mapping (name, version, sequence, components, publisher)")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    doc.setdefault("issued", now.isoformat())
    doc.setdefault("expires", (now + dt.timedelta(days=valid_for)).isoformat())
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UserError(f"{manifest_file}: {where}: {first.get('msg')}") from None
    signed = sign_manifest(manifest, _load_private(key_file))
    result: Any = json.loads(signed.to_json())
    if embed is not None:
        target = _load_yaml(embed)
        kind = target.get("kind") if isinstance(target, dict) else None
        if kind == "Image":
            target.setdefault("spec", {})["signedManifest"] = result
        elif kind == "DPUService":
            artifact = (target.get("spec") or {}).get("artifact")
            if not isinstance(artifact, dict):
                raise UserError(f"{embed}: spec.artifact: the service names no artifact to sign")
            artifact["signedManifest"] = result
        else:
            raise UserError(f"{embed}: not an Image or DPUService document")
        result = target
    if output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    elif output == "json":
        print(json.dumps(result, indent=2))
    else:
        raise UserError(f"--output {output!r}: use json or yaml")


@publisher_app.command("trust")
def trust(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the publisher's name, as its manifests name it"),
    publisher_class: PublisherClass = typer.Option(..., "--class", help="vendor, official, third-party or private"),
    public_key: Path = typer.Option(..., "--public-key", help="its ed25519 public key: PEM, or base64 of 32 bytes"),
) -> None:
    """Trust a publisher's key for its class (creates the Publisher object; admins only)."""
    try:
        text = public_key.read_text().strip()
        key = load_public_key(text)
    except OSError as exc:
        raise UserError(f"{public_key}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{public_key}: {exc}") from None
    doc = {
        "kind": "Publisher",
        "metadata": {"name": name},
        "spec": {"publisherClass": publisher_class.value, "publicKey": text},
    }
    with options(ctx).client() as client:
        client.create(doc)
    print(f"publisher/{name} created")
    note(
        f"{publisher_class.value} key {key_id(key)[:16]}...: its signed images may be installed by projects allowing {publisher_class.value}"
    )
