"""The node's settings: a TOML file merged with command-line overrides, checked at start-up.

Every setting has a documented default; a bad one stops the node with a
``ConfigError`` whose message names it, e.g.
``config: tenants.alice.allowed_roots[0]: not an absolute path``.

File layout (every key optional)::

    host = "127.0.0.1"
    port = 8080                      # 0 picks an ephemeral port
    state_dir = "/var/lib/transferd" # embedded redis socket + AOF live here
    redis_url = "redis://redis:6379/0"   # absent: start an embedded redis-server
    workers = 4                      # in-process worker threads
    public_url = "https://transferd.example.org"
    allow_roots = ["/data/shared"]   # file:// roots every tenant may use
    confine_file_sources = true      # file:// sources must lie inside the roots too

    [links]
    default_limit = 8                # concurrent transfers per source→destination host pair
    [links.limits]
    "archive.surf.nl -> proc.example.org" = 16

    [tenants.lofar]
    allowed_roots = ["/data/lofar"]

    [[oidc.issuers]]
    issuer = "https://iam.example.org/"
    jwks_uri = "https://iam.example.org/jwk"   # absent: discovered from the issuer
    audience = ["transferd", "https://wlcg.cern.ch/jwt/v1/any"]
    tenant_claim = "tenant"
    default_tenant = "escape"        # used when the token has no tenant claim
    default_role = "submitter"
    leeway_s = 30
    jwks_ttl_s = 300
    [oidc.issuers.roles]             # scope or group → role; the highest role wins
    "transferd.admin" = "admin"
    "transferd.operator" = "operator"

    [ocm]                            # Open Cloud Mesh (transferd/ocm); absent: OCM off
    provider = "transferd"           # our provider name in discovery
    public_url = "https://transferd.example.org"  # absent: the node's public/listen URL
    directory_file = "/etc/transferd/mesh.json"   # trusted providers (CS3 list or OCM directory)
    directory_url = "https://mesh.example.org/providers"
    directory_refresh_s = 300
    trusted_providers = ["cernbox.cern.ch"]       # trusted in addition to the directory
    criteria = ["must-use-http-sig"] # also "must-exchange-token" for the shares we send
    key_file = "/etc/transferd/ocm-ed25519.pem"   # absent: generated under state_dir
    allow_http = false               # discover peers over plain http (labs, loopback tests)
    token_ttl_s = 300                # lifetime of the tokens our tokenEndPoint issues
    signature_skew_s = 300           # how old (or new) a signature's `created` may be
    [ocm.recipients.bob]             # OCM user "bob" here receives into tenant lofar
    tenant = "lofar"
    root = "/data/incoming/bob"
    auto_accept = false              # true: shares start without an accept (pipelines)

    [fts3]                           # the FTS3-compatible REST façade under /fts3
    anonymous_tenant = "rucio"       # callers WITHOUT a credential act as this tenant's
                                     # submitter (Rucio's FTS3 transfertool sends none to
                                     # an http:// FTS); absent: every call needs a bearer
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from transferd.models import Role

__all__ = [
    "DEFAULT_ROLE_MAP",
    "TENANT_NAME_RE",
    "ConfigError",
    "NodeConfig",
    "OcmConfig",
    "OcmRecipient",
    "OidcIssuer",
    "TenantConfig",
    "default_state_dir",
    "load_config",
    "parse_config",
]

DEFAULT_ROLE_MAP: Mapping[str, Role] = {
    "transferd.admin": Role.ADMIN,
    "transferd.operator": Role.OPERATOR,
    "transferd.reader": Role.READER,
}

TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """A setting is missing, mistyped or out of range; the message names it."""


@dataclass(frozen=True)
class TenantConfig:
    """What one tenant may touch on this node."""

    allowed_roots: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class OidcIssuer:
    """One trusted OIDC issuer and how its tokens map to a tenant and a role."""

    issuer: str
    audience: list[str]
    jwks_uri: str | None = None  # None: read from {issuer}/.well-known/openid-configuration
    tenant_claim: str = "tenant"
    default_tenant: str | None = None  # None: a token without the tenant claim is refused
    roles: Mapping[str, Role] = field(default_factory=lambda: dict(DEFAULT_ROLE_MAP))
    default_role: Role = Role.SUBMITTER
    leeway_s: float = 30.0  # clock skew allowed on exp/nbf/iat
    jwks_ttl_s: float = 300.0  # how long fetched keys are trusted before a refetch


@dataclass(frozen=True)
class OcmRecipient:
    """A local OCM user: the tenant its shares run under and where they land."""

    tenant: str
    root: Path
    auto_accept: bool = False


OCM_CRITERIA = ("must-use-http-sig", "must-exchange-token")


@dataclass(frozen=True)
class OcmConfig:
    """The ``[ocm]`` section: who we are in the mesh and whom we trust."""

    provider: str = "transferd"
    public_url: str | None = None  # None: the node's public_url, else its listen URL
    directory_file: Path | None = None
    directory_url: str | None = None
    directory_refresh_s: float = 300.0
    trusted_providers: list[str] = field(default_factory=list)  # host[:port]
    criteria: list[str] = field(default_factory=list)
    key_file: Path | None = None  # None: {state_dir}/ocm-ed25519.pem, generated once
    allow_http: bool = False
    token_ttl_s: float = 300.0
    signature_skew_s: float = 300.0
    recipients: dict[str, OcmRecipient] = field(default_factory=dict)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "transferd"


@dataclass(frozen=True)
class NodeConfig:
    """Everything `transferd serve` needs to know, validated."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0: an ephemeral port
    state_dir: Path = field(default_factory=default_state_dir)
    redis_url: str | None = None  # None: an embedded redis-server under state_dir
    workers: int = 4  # in-process worker threads; 0 when workers run elsewhere
    public_url: str | None = None  # None: http://{host}:{port}
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    allow_roots: list[Path] = field(default_factory=list)  # apply to every tenant
    confine_file_sources: bool = True
    oidc_issuers: list[OidcIssuer] = field(default_factory=list)
    default_link_limit: int = 8
    link_limits: dict[str, int] = field(default_factory=dict)
    ocm: OcmConfig | None = None  # None: no [ocm] section, OCM routes are not mounted
    fts3_anonymous_tenant: str | None = None  # [fts3] anonymous_tenant; None: bearer required

    def roots_for(self, tenant: str) -> list[Path]:
        """The directories ``tenant`` may name in file:// URLs (its own plus the global ones)."""
        own = self.tenants[tenant].allowed_roots if tenant in self.tenants else []
        return [*own, *self.allow_roots]

    def link_limit(self, link: str) -> int:
        return self.link_limits.get(link, self.default_link_limit)

    def issuer(self, iss: str) -> OidcIssuer | None:
        for candidate in self.oidc_issuers:
            if candidate.issuer == iss:
                return candidate
        return None


# -- parsing -------------------------------------------------------------------------------

_TOP_KEYS = {
    "host", "port", "state_dir", "redis_url", "workers", "public_url", "allow_roots",
    "confine_file_sources", "links", "tenants", "oidc", "ocm", "fts3",
}
_OVERRIDE_KEYS = {"host", "port", "state_dir", "redis_url", "workers", "public_url", "allow_roots"}
_ISSUER_KEYS = {
    "issuer", "jwks_uri", "audience", "tenant_claim", "default_tenant", "roles", "default_role",
    "leeway_s", "jwks_ttl_s",
}


def load_config(
    path: Path | str | None = None, overrides: Mapping[str, Any] | None = None
) -> NodeConfig:
    """Read ``path`` (TOML) if given, apply command-line ``overrides``, validate.

    Overrides whose value is None are ignored (an option not given); ``allow_roots``
    from the command line is added to the file's list rather than replacing it.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path}: not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDE_KEYS:
            raise ConfigError(f"config: {key}: not a setting the command line may override")
        if value is None:
            continue
        if key == "allow_roots":
            data["allow_roots"] = [*data.get("allow_roots", []), *(str(v) for v in value)]
        elif isinstance(value, Path):
            data[key] = str(value)
        else:
            data[key] = value
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> NodeConfig:
    """Validate a mapping shaped like the TOML file into a ``NodeConfig``."""
    _no_unknown(data, _TOP_KEYS, "")
    defaults = NodeConfig()
    host = _str(data, "host", "host", defaults.host)
    if not host:
        raise ConfigError("config: host: must not be empty")
    port = _int(data, "port", "port", defaults.port, 0, 65535)
    state_dir = defaults.state_dir
    if "state_dir" in data:
        raw_state_dir = _str(data, "state_dir", "state_dir", "")
        if not raw_state_dir:
            raise ConfigError("config: state_dir: must not be empty")
        state_dir = Path(raw_state_dir).expanduser().absolute()
    redis_url = _opt_str(data, "redis_url", "redis_url")
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("config: redis_url: must start with redis://, rediss:// or unix://")
    workers = _int(data, "workers", "workers", defaults.workers, 0, 1024)
    public_url = _opt_str(data, "public_url", "public_url")
    if public_url is not None:
        _http_url(public_url, "public_url")
    allow_roots = _roots(data.get("allow_roots", []), "allow_roots")
    confine = _bool(data, "confine_file_sources", "confine_file_sources", True)

    links = _table(data.get("links", {}), "links")
    _no_unknown(links, {"default_limit", "limits"}, "links.")
    default_limit = _int(links, "default_limit", "links.default_limit", 8, 1, 100_000)
    link_limits: dict[str, int] = {}
    for link, _ in _table(links.get("limits", {}), "links.limits").items():
        where = f"links.limits.{link}"
        if "->" not in link:
            raise ConfigError(f'config: {where}: a link is written "source-host -> dest-host"')
        link_limits[link] = _int(links["limits"], link, where, 0, 1, 100_000)

    tenants: dict[str, TenantConfig] = {}
    for name, raw in _table(data.get("tenants", {}), "tenants").items():
        where = f"tenants.{name}"
        if not TENANT_NAME_RE.match(name):
            raise ConfigError(f"config: {where}: a tenant name is 1-64 of A-Z a-z 0-9 . _ -")
        table = _table(raw, where)
        _no_unknown(table, {"allowed_roots"}, where + ".")
        tenants[name] = TenantConfig(
            allowed_roots=_roots(table.get("allowed_roots", []), where + ".allowed_roots")
        )

    oidc = _table(data.get("oidc", {}), "oidc")
    _no_unknown(oidc, {"issuers"}, "oidc.")
    raw_issuers = oidc.get("issuers", [])
    if not isinstance(raw_issuers, list):
        raise ConfigError("config: oidc.issuers: expected a list of tables ([[oidc.issuers]])")
    issuers = [_issuer(raw, f"oidc.issuers[{i}]") for i, raw in enumerate(raw_issuers)]
    seen: set[str] = set()
    for i, iss in enumerate(issuers):
        if iss.issuer in seen:
            raise ConfigError(f"config: oidc.issuers[{i}].issuer: {iss.issuer} is listed twice")
        seen.add(iss.issuer)

    ocm = _ocm(data["ocm"]) if "ocm" in data else None
    fts3 = _table(data.get("fts3", {}), "fts3")
    _no_unknown(fts3, {"anonymous_tenant"}, "fts3.")
    anonymous = _opt_str(fts3, "anonymous_tenant", "fts3.anonymous_tenant")
    if anonymous is not None and not TENANT_NAME_RE.match(anonymous):
        raise ConfigError(
            "config: fts3.anonymous_tenant: a tenant name is 1-64 of A-Z a-z 0-9 . _ -"
        )
    return NodeConfig(
        host=host, port=port, state_dir=state_dir, redis_url=redis_url, workers=workers,
        public_url=public_url, tenants=tenants, allow_roots=allow_roots,
        confine_file_sources=confine, oidc_issuers=issuers,
        default_link_limit=default_limit, link_limits=link_limits, ocm=ocm,
        fts3_anonymous_tenant=anonymous,
    )


_OCM_KEYS = {
    "provider", "public_url", "directory_file", "directory_url", "directory_refresh_s",
    "trusted_providers", "criteria", "key_file", "allow_http", "token_ttl_s",
    "signature_skew_s", "recipients",
}


def _ocm(raw: Any) -> OcmConfig:
    table = _table(raw, "ocm")
    _no_unknown(table, _OCM_KEYS, "ocm.")
    provider = _str(table, "provider", "ocm.provider", "transferd")
    if not provider:
        raise ConfigError("config: ocm.provider: must not be empty")
    public_url = _opt_str(table, "public_url", "ocm.public_url")
    if public_url is not None:
        _http_url(public_url, "ocm.public_url")
    directory_url = _opt_str(table, "directory_url", "ocm.directory_url")
    if directory_url is not None:
        _http_url(directory_url, "ocm.directory_url")
    directory_file = _opt_path(table, "directory_file", "ocm.directory_file")
    key_file = _opt_path(table, "key_file", "ocm.key_file")
    trusted = _str_list(table, "trusted_providers", "ocm.trusted_providers")
    for i, host in enumerate(trusted):
        if "/" in host or "@" in host or not host:
            raise ConfigError(f"config: ocm.trusted_providers[{i}]: expected host[:port]")
    criteria = _str_list(table, "criteria", "ocm.criteria")
    for i, word in enumerate(criteria):
        if word not in OCM_CRITERIA:
            raise ConfigError(
                f"config: ocm.criteria[{i}]: {word!r} is not one of {', '.join(OCM_CRITERIA)}"
            )
    recipients: dict[str, OcmRecipient] = {}
    for user, entry in _table(table.get("recipients", {}), "ocm.recipients").items():
        where = f"ocm.recipients.{user}"
        if not user or "@" in user or "/" in user:
            raise ConfigError(f"config: {where}: a user name has no '@' or '/'")
        item = _table(entry, where)
        _no_unknown(item, {"tenant", "root", "auto_accept"}, where + ".")
        tenant = _str(item, "tenant", where + ".tenant", "")
        if not TENANT_NAME_RE.match(tenant):
            raise ConfigError(f"config: {where}.tenant: a tenant name is 1-64 of A-Z a-z 0-9 . _ -")
        if "root" not in item:
            raise ConfigError(f"config: {where}.root: required")
        root = _roots([item["root"]], where + ".root")[0]
        recipients[user] = OcmRecipient(
            tenant=tenant, root=root,
            auto_accept=_bool(item, "auto_accept", where + ".auto_accept", False),
        )
    return OcmConfig(
        provider=provider, public_url=public_url, directory_file=directory_file,
        directory_url=directory_url,
        directory_refresh_s=_float(
            table, "directory_refresh_s", "ocm.directory_refresh_s", 300.0, 0.1, 86_400.0
        ),
        trusted_providers=trusted, criteria=criteria, key_file=key_file,
        allow_http=_bool(table, "allow_http", "ocm.allow_http", False),
        token_ttl_s=_float(table, "token_ttl_s", "ocm.token_ttl_s", 300.0, 1.0, 86_400.0),
        signature_skew_s=_float(
            table, "signature_skew_s", "ocm.signature_skew_s", 300.0, 1.0, 86_400.0
        ),
        recipients=recipients,
    )


def _opt_path(table: Mapping[str, Any], key: str, where: str) -> Path | None:
    raw = _opt_str(table, key, where)
    if raw is None:
        return None
    if "\x00" in raw:
        raise ConfigError(f"config: {where}: contains a NUL byte")
    return Path(raw).expanduser().absolute()


def _str_list(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config: {where}: expected a list of strings")
    return list(value)


def _issuer(raw: Any, where: str) -> OidcIssuer:
    table = _table(raw, where)
    _no_unknown(table, _ISSUER_KEYS, where + ".")
    if "issuer" not in table:
        raise ConfigError(f"config: {where}.issuer: required")
    issuer = _str(table, "issuer", where + ".issuer", "")
    _http_url(issuer, where + ".issuer")
    jwks_uri = _opt_str(table, "jwks_uri", where + ".jwks_uri")
    if jwks_uri is not None:
        _http_url(jwks_uri, where + ".jwks_uri")
    if "audience" not in table:
        raise ConfigError(f"config: {where}.audience: required (no audience, no trust)")
    audience_raw = table["audience"]
    audience = [audience_raw] if isinstance(audience_raw, str) else audience_raw
    if (
        not isinstance(audience, list)
        or not audience
        or not all(isinstance(a, str) and a for a in audience)
    ):
        raise ConfigError(f"config: {where}.audience: expected a string or a list of strings")
    tenant_claim = _str(table, "tenant_claim", where + ".tenant_claim", "tenant")
    if not tenant_claim:
        raise ConfigError(f"config: {where}.tenant_claim: must not be empty")
    default_tenant = _opt_str(table, "default_tenant", where + ".default_tenant")
    if default_tenant is not None and not TENANT_NAME_RE.match(default_tenant):
        raise ConfigError(
            f"config: {where}.default_tenant: a tenant name is 1-64 of A-Z a-z 0-9 . _ -"
        )
    roles: dict[str, Role] = dict(DEFAULT_ROLE_MAP)
    if "roles" in table:
        roles = {}
        for scope, role in _table(table["roles"], where + ".roles").items():
            roles[scope] = _role(role, f"{where}.roles.{scope}")
    default_role = _role(table.get("default_role", "submitter"), where + ".default_role")
    leeway_s = _float(table, "leeway_s", where + ".leeway_s", 30.0, 0.0, 300.0)
    jwks_ttl_s = _float(table, "jwks_ttl_s", where + ".jwks_ttl_s", 300.0, 1.0, 86_400.0)
    return OidcIssuer(
        issuer=issuer, audience=list(audience), jwks_uri=jwks_uri, tenant_claim=tenant_claim,
        default_tenant=default_tenant, roles=roles, default_role=default_role,
        leeway_s=leeway_s, jwks_ttl_s=jwks_ttl_s,
    )


# -- small typed readers; each error names the setting ------------------------------------


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "a list", dict: "a table",
    }.get(type(value), type(value).__name__)


def _no_unknown(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"config: {prefix}{key}: unknown setting")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config: {where}: expected a table, got {_type_name(value)}")
    return value


def _str(table: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"config: {where}: expected a string, got {_type_name(value)}")
    return value


def _opt_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    if table.get(key) is None:
        return None
    value = _str(table, key, where, "")
    if not value:
        raise ConfigError(f"config: {where}: must not be empty")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"config: {where}: expected true or false, got {_type_name(value)}")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config: {where}: expected an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"config: {where}: {value} is outside {lo}..{hi}")
    return value


def _float(
    table: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config: {where}: expected a number, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"config: {where}: {value} is outside {lo}..{hi}")
    return float(value)


def _role(value: Any, where: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise ConfigError(f"config: {where}: {value!r} is not a role ({choices})") from None


def _http_url(value: str, where: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"config: {where}: expected an http(s) URL with a host")


def _roots(value: Any, where: str) -> list[Path]:
    if not isinstance(value, list):
        raise ConfigError(f"config: {where}: expected a list of paths, got {_type_name(value)}")
    roots: list[Path] = []
    for i, raw in enumerate(value):
        item = f"{where}[{i}]"
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"config: {item}: expected a path string")
        if "\x00" in raw:
            raise ConfigError(f"config: {item}: contains a NUL byte")
        if not raw.startswith("/"):
            raise ConfigError(f"config: {item}: not an absolute path")
        if ".." in PurePosixPath(raw).parts:
            raise ConfigError(f"config: {item}: must not contain '..'")
        roots.append(Path(os.path.normpath(raw)))
    return roots
