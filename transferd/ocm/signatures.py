"""HTTP message signatures for OCM: RFC 9421 (ed25519) and draft-cavage rsa-sha256 (verify only).

The signature base construction is ours (RFC 9421 §2.5) and is checked
against the RFC's own test vectors (Appendix B.2.6); the cryptography
library only signs and verifies bytes.  OCM uses one signature labelled
``ocm`` covering ``@method @target-uri content-digest content-length``
(+ ``date`` when the request has one), with ``created``, ``keyid`` and
``alg="ed25519"``.

Everything here is pure: callers hand in the method, the target URI as the
signer saw it, the headers and the body, and get headers or a verdict back.
Errors are ``SignatureError`` with a sentence that is safe to show.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "LABEL",
    "OCM_COMPONENTS",
    "ParsedSignature",
    "SignatureError",
    "cavage_verify",
    "content_digest",
    "jwk_of",
    "load_or_create_key",
    "parse_signature",
    "public_key_from_jwk",
    "serialize_params",
    "sign_request",
    "signature_base",
    "verify_ed25519",
]

LABEL = "ocm"
OCM_COMPONENTS = ("@method", "@target-uri", "content-digest", "content-length")


class SignatureError(Exception):
    """A signature is missing, malformed, stale or does not verify."""


Headers = Mapping[str, Sequence[str]]  # lower-case field name -> values in order


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` value (RFC 9530) of ``body`` with sha-256."""
    return f"sha-256=:{_b64(hashlib.sha256(body).digest())}:"


# -- RFC 9421 signature base -----------------------------------------------------------------


def _param_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    if any(c in value for c in '"\\') or not value.isprintable():
        raise SignatureError("a signature parameter holds a character it may not")
    return f'"{value}"'


def serialize_params(components: Sequence[str], params: Sequence[tuple[str, str | int]]) -> str:
    """The ``@signature-params`` value: ``("a" "b");created=1;keyid="k"``."""
    inner = " ".join(f'"{c}"' for c in components)
    return f"({inner})" + "".join(f";{k}={_param_value(v)}" for k, v in params)


def _derived(name: str, method: str, target_uri: str) -> str:
    parts = urlsplit(target_uri)
    if name == "@method":
        return method.upper()
    if name == "@target-uri":
        return target_uri
    if name == "@authority":
        return parts.netloc.lower()
    if name == "@scheme":
        return parts.scheme.lower()
    if name == "@path":
        return parts.path or "/"
    if name == "@query":
        return f"?{parts.query}"
    if name == "@request-target":
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raise SignatureError(f"unsupported derived component {name}")


def signature_base(
    method: str, target_uri: str, headers: Headers, components: Sequence[str], params: str
) -> str:
    """The RFC 9421 signature base for a request (§2.5)."""
    lines: list[str] = []
    for name in components:
        if name != name.lower() or not name or '"' in name:
            raise SignatureError(f"malformed component name {name!r}")
        if name.startswith("@"):
            value = _derived(name, method, target_uri)
        else:
            values = headers.get(name)
            if not values:
                raise SignatureError(f"the signed field {name} is not in the request")
            value = ", ".join(v.strip() for v in values)
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines)


def sign_request(
    method: str,
    target_uri: str,
    headers: Mapping[str, str],
    body: bytes,
    key: Ed25519PrivateKey,
    keyid: str,
    *,
    created: int | None = None,
) -> dict[str, str]:
    """Headers to add to a request so it carries an ``ocm`` signature (and its digest)."""
    lower = {k.lower(): [v] for k, v in headers.items()}
    lower["content-digest"] = [content_digest(body)]
    lower["content-length"] = [str(len(body))]
    components = [*OCM_COMPONENTS] + (["date"] if "date" in lower else [])
    params = serialize_params(
        components,
        [("created", int(time.time()) if created is None else created), ("keyid", keyid),
         ("alg", "ed25519")],
    )
    base = signature_base(method, target_uri, lower, components, params)
    signature = key.sign(base.encode())
    return {
        "Content-Digest": lower["content-digest"][0],
        "Signature-Input": f"{LABEL}={params}",
        "Signature": f"{LABEL}=:{_b64(signature)}:",
    }


# -- parsing Signature-Input / Signature (the subset of RFC 8941 they use) -----------------

_TOKEN = re.compile(r'\s*([a-z*][a-z0-9_.*-]*)')
_ITEM_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ITEM_INT = re.compile(r"-?\d{1,15}")


def _split_members(value: str) -> dict[str, str]:
    """A structured dictionary's members, raw, split at top-level commas."""
    members: dict[str, str] = {}
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(value + ","):
        if quoted:
            if ch == '"' and value[i - 1] != "\\":
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            member = value[start:i].strip()
            start = i + 1
            if not member:
                continue
            key, sep, rest = member.partition("=")
            if not sep:
                raise SignatureError("malformed signature header")
            members[key.strip()] = rest.strip()
    return members


def _parse_params(text: str) -> list[tuple[str, str | int]]:
    params: list[tuple[str, str | int]] = []
    pos = 0
    while pos < len(text):
        if text[pos] != ";":
            raise SignatureError("malformed signature parameters")
        match = _TOKEN.match(text, pos + 1)
        if not match or match.end() >= len(text) or text[match.end()] != "=":
            raise SignatureError("malformed signature parameters")
        pos = match.end() + 1
        if (s := _ITEM_STR.match(text, pos)) is not None:
            params.append((match.group(1), s.group(1)))
            pos = s.end()
        elif (n := _ITEM_INT.match(text, pos)) is not None:
            params.append((match.group(1), int(n.group(0))))
            pos = n.end()
        else:
            raise SignatureError("malformed signature parameters")
    return params


@dataclass(frozen=True)
class ParsedSignature:
    """One labelled signature from a request: what it covers and its bytes."""

    label: str
    components: tuple[str, ...]
    params: dict[str, str | int]
    params_text: str  # as received: the base must use these exact bytes
    signature: bytes

    @property
    def keyid(self) -> str:
        return str(self.params.get("keyid", ""))

    @property
    def created(self) -> int | None:
        value = self.params.get("created")
        return value if isinstance(value, int) else None


def parse_signature(
    signature_input: str | None, signature: str | None, label: str = LABEL
) -> ParsedSignature:
    """The signature labelled ``label`` from the two headers (SignatureError if absent/bad)."""
    if not signature_input or not signature:
        raise SignatureError("the request is not signed")
    inputs, sigs = _split_members(signature_input), _split_members(signature)
    if label not in inputs or label not in sigs:
        raise SignatureError(f"no signature labelled {label!r}")
    raw = inputs[label]
    if not raw.startswith("(") or ")" not in raw:
        raise SignatureError("malformed Signature-Input")
    inner, _, rest = raw[1:].partition(")")
    components = tuple(_ITEM_STR.findall(inner))
    if " ".join(f'"{c}"' for c in components) != " ".join(inner.split()):
        raise SignatureError("malformed Signature-Input component list")
    params = _parse_params(rest)
    sig_raw = sigs[label]
    if not (sig_raw.startswith(":") and sig_raw.endswith(":") and len(sig_raw) > 2):
        raise SignatureError("malformed Signature")
    try:
        sig_bytes = base64.b64decode(sig_raw[1:-1], validate=True)
    except ValueError:
        raise SignatureError("malformed Signature") from None
    return ParsedSignature(label, components, dict(params), raw, sig_bytes)


def verify_ed25519(
    parsed: ParsedSignature,
    method: str,
    target_uri: str,
    headers: Headers,
    body: bytes,
    key: Ed25519PublicKey,
    *,
    now: float,
    skew_s: float,
    required: Sequence[str] = OCM_COMPONENTS,
) -> None:
    """Check an ``ocm`` signature; SignatureError says what is wrong."""
    missing = [c for c in required if c not in parsed.components]
    if missing:
        raise SignatureError(f"the signature does not cover {', '.join(missing)}")
    alg = parsed.params.get("alg")
    if alg not in (None, "ed25519"):
        raise SignatureError(f"unsupported signature algorithm {alg!r}")
    created = parsed.created
    if created is None:
        raise SignatureError("the signature has no created time")
    if abs(now - created) > skew_s:
        raise SignatureError("the signature's created time is outside the allowed window")
    if "content-digest" in parsed.components:
        declared = [v.strip() for v in headers.get("content-digest", [])]
        if content_digest(body) not in ", ".join(declared).split(", "):
            raise SignatureError("Content-Digest does not match the body")
    if "content-length" in parsed.components:
        declared_len = [v.strip() for v in headers.get("content-length", [])]
        if declared_len != [str(len(body))]:
            raise SignatureError("Content-Length does not match the body")
    base = signature_base(method, target_uri, headers, parsed.components, parsed.params_text)
    try:
        key.verify(parsed.signature, base.encode())
    except InvalidSignature:
        raise SignatureError("the signature does not verify") from None


# -- draft-cavage (older Nextcloud), verify only --------------------------------------------

_CAVAGE_PARAM = re.compile(r'\s*([A-Za-z]+)="([^"]*)"\s*(?:,|$)')


def cavage_verify(
    method: str,
    path_qs: str,
    headers: Headers,
    body: bytes,
    public_key_pem: str,
    *,
    now: float,
    skew_s: float,
) -> str:
    """Check a draft-cavage ``rsa-sha256`` ``Signature`` header; returns its keyId."""
    raw = ", ".join(headers.get("signature", []))
    fields = {m.group(1): m.group(2) for m in _CAVAGE_PARAM.finditer(raw)}
    if not {"keyId", "headers", "signature"} <= fields.keys():
        raise SignatureError("malformed draft-cavage Signature header")
    if fields.get("algorithm", "rsa-sha256") not in ("rsa-sha256", "hs2019"):
        raise SignatureError("unsupported draft-cavage algorithm")
    names = fields["headers"].lower().split()
    lines = []
    for name in names:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {path_qs}")
            continue
        values = headers.get(name)
        if not values:
            raise SignatureError(f"the signed field {name} is not in the request")
        lines.append(f"{name}: {', '.join(v.strip() for v in values)}")
    if "digest" in names:
        want = "SHA-256=" + _b64(hashlib.sha256(body).digest())
        if want.lower() not in [d.strip().lower() for d in headers["digest"][0].split(",")]:
            raise SignatureError("Digest does not match the body")
    elif body:
        raise SignatureError("the draft-cavage signature does not cover the body")
    if "date" in names:
        from email.utils import parsedate_to_datetime

        try:
            sent = parsedate_to_datetime(headers["date"][0]).timestamp()
        except (TypeError, ValueError):
            raise SignatureError("unreadable Date header") from None
        if abs(now - sent) > skew_s:
            raise SignatureError("the signature's Date is outside the allowed window")
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
        signature = base64.b64decode(fields["signature"], validate=True)
    except ValueError:
        raise SignatureError("unreadable public key or signature") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("the sender's public key is not RSA")
    try:
        key.verify(signature, "\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("the signature does not verify") from None
    return fields["keyId"]


# -- keys ------------------------------------------------------------------------------------


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Our ed25519 signing key from ``path`` (PEM), generated there (mode 0600) if absent."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(pem)
    tmp.replace(path)
    return key


def jwk_of(key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    """The public JWK (RFC 8037 OKP) of ``key``."""
    raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": "EdDSA",
            "use": "sig"}


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        raise SignatureError("the sender's key is not an Ed25519 JWK")
    try:
        return Ed25519PublicKey.from_public_bytes(_unb64url(jwk["x"]))
    except ValueError:
        raise SignatureError("the sender's key is not an Ed25519 JWK") from None
