"""OCM pure parts: RFC 9421 vectors, share shapes, directory formats, CS3 mapping, config."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from transferd.config import ConfigError, parse_config
from transferd.ocm import signatures as sig
from transferd.ocm.cs3 import tx_status
from transferd.ocm.directory import parse_directory
from transferd.ocm.discovery import split_address
from transferd.ocm.shares import ShareInvalid, ShareUnsupported, parse_share
from transferd.states import JobState

# RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2 (the test request)
RFC_ED25519 = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_HEADERS = {
    "host": ["example.com"], "date": ["Tue, 20 Apr 2021 02:07:55 GMT"],
    "content-type": ["application/json"], "content-length": ["18"],
    "content-digest": ["sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7B"
                       "NNyealdVLvRwEmTHWXvJwew==:"],
}
RFC_B26_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@method": POST\n'
    '"@path": /foo\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"content-length": 18\n'
    '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    '"content-length");created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIG = ("wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgw"
               "UPiu4A0w6vuQv5lIp5WPpBKRCw==")


def rfc_key() -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(RFC_ED25519, None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def test_rfc9421_b26_signature_base_and_value() -> None:
    components = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    params = sig.serialize_params(components, [("created", 1618884473),
                                               ("keyid", "test-key-ed25519")])
    base = sig.signature_base("POST", "https://example.com/foo?param=Value&Pet=dog",
                              RFC_HEADERS, components, params)
    assert base == RFC_B26_BASE
    assert base64.b64encode(rfc_key().sign(base.encode())).decode() == RFC_B26_SIG


def test_rfc9421_b26_verifies_from_the_headers_as_sent() -> None:
    parsed = sig.parse_signature(
        'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
        ';created=1618884473;keyid="test-key-ed25519"',
        f"sig-b26=:{RFC_B26_SIG}:", label="sig-b26",
    )
    base = sig.signature_base("POST", "https://example.com/foo?param=Value&Pet=dog",
                              RFC_HEADERS, parsed.components, parsed.params_text)
    rfc_key().public_key().verify(parsed.signature, base.encode())
    assert parsed.keyid == "test-key-ed25519" and parsed.created == 1618884473


@pytest.mark.parametrize(("name", "value"), [
    ("@target-uri", "https://www.example.com/path?param=value"),  # RFC 9421 §2.2.2
    ("@authority", "www.example.com"),  # §2.2.3
    ("@scheme", "https"),  # §2.2.4
    ("@request-target", "/path?param=value"),  # §2.2.5
    ("@path", "/path"),  # §2.2.6
    ("@query", "?param=value"),  # §2.2.7
])
def test_rfc9421_derived_components(name: str, value: str) -> None:
    base = sig.signature_base("POST", "https://www.example.com/path?param=value", {}, [name],
                              "()")
    assert base.splitlines()[0] == f'"{name}": {value}'


def test_ocm_sign_then_verify_and_tamper() -> None:
    key = Ed25519PrivateKey.generate()
    body = b'{"a":1}'
    url = "https://b.example/ocm/shares"
    added = sig.sign_request("POST", url, {"Content-Type": "application/json"}, body, key, "k1")
    headers = {k.lower(): [v] for k, v in added.items()}
    headers["content-length"] = [str(len(body))]
    parsed = sig.parse_signature(added["Signature-Input"], added["Signature"])
    assert parsed.components == sig.OCM_COMPONENTS
    now = time.time()
    sig.verify_ed25519(parsed, "POST", url, headers, body, key.public_key(), now=now, skew_s=60)
    with pytest.raises(sig.SignatureError, match="Content-Digest"):
        sig.verify_ed25519(parsed, "POST", url, headers, b'{"a":2}', key.public_key(),
                           now=now, skew_s=60)
    with pytest.raises(sig.SignatureError, match="created"):
        sig.verify_ed25519(parsed, "POST", url, headers, body, key.public_key(),
                           now=now + 3600, skew_s=60)
    with pytest.raises(sig.SignatureError, match="does not verify"):
        sig.verify_ed25519(parsed, "POST", url + "x", headers, body, key.public_key(),
                           now=now, skew_s=60)


def test_cavage_rsa_sha256_verify() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = b'{"shareWith":"bob"}'
    import hashlib
    from email.utils import formatdate

    headers = {"content-length": [str(len(body))], "date": [formatdate(usegmt=True)],
               "digest": ["SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()],
               "host": ["b.example"]}
    signing = "\n".join([
        "(request-target): post /ocm/shares", f"content-length: {len(body)}",
        f"date: {headers['date'][0]}", f"digest: {headers['digest'][0]}", "host: b.example",
    ])
    signature = base64.b64encode(key.sign(signing.encode(), padding.PKCS1v15(),
                                          hashes.SHA256())).decode()
    headers["signature"] = [f'keyId="nc.example#main-key",algorithm="rsa-sha256",headers='
                            f'"(request-target) content-length date digest host",'
                            f'signature="{signature}"']
    keyid = sig.cavage_verify("POST", "/ocm/shares", headers, body, pem, now=time.time(),
                              skew_s=300)
    assert keyid == "nc.example#main-key"
    with pytest.raises(sig.SignatureError):
        sig.cavage_verify("POST", "/ocm/shares", headers, body + b" ", pem, now=time.time(),
                          skew_s=300)


BASE_SHARE = {"shareWith": "bob@b.example", "name": "run42", "providerId": "p1",
              "owner": "alice@a.example", "sender": "alice@a.example", "shareType": "user",
              "resourceType": "folder"}


def test_both_datatx_shapes_parse() -> None:
    current = parse_share({**BASE_SHARE, "protocol": {"name": "multi", "webdav": {
        "uri": "https://a.example/dav/x/", "sharedSecret": "s3", "permissions": ["read"],
        "accessTypes": ["datatx"], "size": 5, "requirements": ["must-exchange-token"]}}})
    assert (current.shape, current.must_exchange_token, current.share_with) == (
        "webdav", True, "bob")
    legacy = parse_share({**BASE_SHARE, "protocol": {"name": "multi", "datatx": {
        "sharedSecret": "s3", "srcUri": "https://a.example/dav/x/", "size": 5}}})
    assert (legacy.shape, legacy.uri, legacy.size, legacy.sender_host) == (
        "datatx", "https://a.example/dav/x/", 5, "a.example")


def test_share_validation_errors_and_unsupported() -> None:
    with pytest.raises(ShareInvalid) as err:
        parse_share({"name": "../x", "protocol": {}})
    names = {n for n, _ in err.value.errors}
    assert {"shareWith", "providerId", "owner", "sender", "name"} <= names
    with pytest.raises(ShareUnsupported):
        parse_share({**BASE_SHARE, "protocol": {"name": "webdav",
                                                "options": {"sharedSecret": "s"}}})


def test_directory_formats() -> None:
    cs3 = [{"name": "a", "full_name": "A", "domain": "a.example", "services": [
        {"host": "ocm.a.example:8443", "endpoint": {"type": {"name": "OCM"}, "path": "/ocm"}},
        {"host": "gw.a.example", "endpoint": {"type": {"name": "GATEWAY"}, "path": "/"}}]},
        {"name": "c", "domain": "c.example", "services": []}]
    assert parse_directory(json.dumps(cs3)) == {"ocm.a.example:8443", "c.example"}
    ods = {"federation": "mesh", "servers": [{"url": "https://b.example", "displayName": "B"}]}
    assert parse_directory(json.dumps(ods)) == {"b.example"}
    payload = base64.urlsafe_b64encode(json.dumps(ods).encode()).rstrip(b"=").decode()
    assert parse_directory(f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln") == {"b.example"}
    with pytest.raises(ValueError):
        parse_directory('{"nothing": 1}')


def test_address_splits_at_last_at() -> None:
    assert split_address("a@b@host:8080") == ("a@b", "host:8080")
    with pytest.raises(ValueError):
        split_address("nohost@")


@pytest.mark.parametrize(("state", "share", "status"), [
    (JobState.AWAITING_ACCEPTANCE, True, "STATUS_TRANSFER_AWAITING_ACCEPTANCE"),
    (JobState.SUBMITTED, True, "STATUS_TRANSFER_ACCEPTED"),
    (JobState.SUBMITTED, False, "STATUS_TRANSFER_NEW"),
    (JobState.ACTIVE, True, "STATUS_TRANSFER_IN_PROGRESS"),
    (JobState.FINISHED, True, "STATUS_TRANSFER_COMPLETE"),
    (JobState.FINISHEDDIRTY, True, "STATUS_TRANSFER_FAILED"),
    (JobState.FAILED, True, "STATUS_TRANSFER_FAILED"),
    (JobState.CANCELED, True, "STATUS_TRANSFER_CANCELLED"),
    (JobState.EXPIRED, True, "STATUS_TRANSFER_EXPIRED"),
])
def test_cs3_status_mapping(state: JobState, share: bool, status: str) -> None:
    assert tx_status(state, from_share=share) == status


def test_ocm_config_section() -> None:
    config = parse_config({"ocm": {"provider": "X", "criteria": ["must-use-http-sig"],
                                   "recipients": {"bob": {"tenant": "lab", "root": "/data/bob",
                                                          "auto_accept": True}}}})
    assert config.ocm is not None and config.ocm.recipients["bob"].auto_accept
    with pytest.raises(ConfigError, match=r"ocm.criteria\[0\]"):
        parse_config({"ocm": {"criteria": ["be-nice"]}})
    with pytest.raises(ConfigError, match=r"ocm.recipients.bob.root"):
        parse_config({"ocm": {"recipients": {"bob": {"tenant": "lab"}}}})
    with pytest.raises(ConfigError, match=r"ocm.bogus"):
        parse_config({"ocm": {"bogus": 1}})


def test_openapi_documents_the_share_contract_when_ocm_is_on() -> None:
    from transferd.openapi import openapi_document

    paths = openapi_document(ocm=True)["paths"]
    assert {"/shares", "/shares/{share_id}/accept", "/shares/{share_id}/decline",
            "/transfers", "/transfers/{tx_id}"} <= set(paths)
    assert "/shares" not in openapi_document()["paths"]
