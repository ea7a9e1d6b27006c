"""The node's configuration: defaults, a full file, command-line overrides, and bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferd.config import ConfigError, NodeConfig, load_config, parse_config
from transferd.models import Role

FULL = """
host = "0.0.0.0"
port = 9090
state_dir = "/var/lib/transferd"
redis_url = "redis://redis:6379/0"
workers = 2
public_url = "https://transferd.example.org"
allow_roots = ["/data/shared"]

[links]
default_limit = 4
[links.limits]
"archive.surf.nl -> proc.example.org" = 16

[tenants.lofar]
allowed_roots = ["/data/lofar", "/scratch/lofar"]

[tenants.escape]

[[oidc.issuers]]
issuer = "https://iam.example.org/"
audience = "transferd"
tenant_claim = "vo"
default_tenant = "escape"
leeway_s = 10
[oidc.issuers.roles]
"transferd.admin" = "admin"
"/escape/ops" = "operator"

[[oidc.issuers]]
issuer = "https://other.example.org"
jwks_uri = "https://other.example.org/keys"
audience = ["a", "b"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "transferd.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    config = load_config()
    assert config == NodeConfig(state_dir=config.state_dir)
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 8080, 4)
    assert config.redis_url is None
    assert config.link_limit("a -> b") == 8
    assert config.roots_for("anyone") == []


def test_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert (config.host, config.port, config.workers) == ("0.0.0.0", 9090, 2)
    assert config.state_dir == Path("/var/lib/transferd")
    assert config.redis_url == "redis://redis:6379/0"
    assert config.public_url == "https://transferd.example.org"
    assert config.link_limit("archive.surf.nl -> proc.example.org") == 16
    assert config.link_limit("x -> y") == 4
    assert config.roots_for("lofar") == [
        Path("/data/lofar"), Path("/scratch/lofar"), Path("/data/shared")
    ]
    assert config.roots_for("escape") == [Path("/data/shared")]
    first, second = config.oidc_issuers
    assert first.audience == ["transferd"]
    assert first.tenant_claim == "vo" and first.default_tenant == "escape"
    assert first.roles == {"transferd.admin": Role.ADMIN, "/escape/ops": Role.OPERATOR}
    assert first.default_role is Role.SUBMITTER and first.leeway_s == 10.0
    assert second.jwks_uri == "https://other.example.org/keys"
    assert second.audience == ["a", "b"]
    assert second.roles["transferd.operator"] is Role.OPERATOR  # the default map
    assert config.issuer("https://other.example.org") is second
    assert config.issuer("https://evil.example.org") is None


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, FULL),
        {"host": "127.0.0.1", "port": 0, "workers": None, "state_dir": tmp_path,
         "redis_url": None, "allow_roots": [str(tmp_path)]},
    )
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 0, 2)
    assert config.state_dir == tmp_path
    assert config.redis_url == "redis://redis:6379/0"  # None means "not given"
    assert config.allow_roots == [Path("/data/shared"), tmp_path]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[tenants.alice]\nallowed_roots = ["data/alice"]',
         "config: tenants.alice.allowed_roots[0]: not an absolute path"),
        ('allow_roots = ["/data/../etc"]', "config: allow_roots[0]: must not contain '..'"),
        ('allow_roots = "/data"', "config: allow_roots: expected a list of paths"),
        ("port = 70000", "config: port: 70000 is outside 0..65535"),
        ('port = "80"', "config: port: expected an integer, got a string"),
        ("workers = -1", "config: workers: -1 is outside 0..1024"),
        ("workers = true", "config: workers: expected an integer, got a boolean"),
        ('host = ""', "config: host: must not be empty"),
        ("colour = 1", "config: colour: unknown setting"),
        ('redis_url = "http://redis:6379"', "config: redis_url: must start with redis://"),
        ('public_url = "transferd.example.org"', "config: public_url: expected an http(s) URL"),
        ('[links]\ndefault_limit = 0', "config: links.default_limit: 0 is outside 1..100000"),
        ('[links.limits]\n"a" = 3', 'config: links.limits.a: a link is written'),
        ('[tenants."bad name"]', "config: tenants.bad name: a tenant name is"),
        ('[tenants.alice]\nroots = ["/x"]', "config: tenants.alice.roots: unknown setting"),
        ('tenants = 3', "config: tenants: expected a table, got an integer"),
        ('[[oidc.issuers]]\nissuer = "https://iam.example.org"',
         "config: oidc.issuers[0].audience: required"),
        ('[[oidc.issuers]]\naudience = "x"', "config: oidc.issuers[0].issuer: required"),
        ('[[oidc.issuers]]\nissuer = "iam"\naudience = "x"',
         "config: oidc.issuers[0].issuer: expected an http(s) URL"),
        ('[[oidc.issuers]]\nissuer = "https://i.org"\naudience = []',
         "config: oidc.issuers[0].audience: expected a string or a list of strings"),
        ('[[oidc.issuers]]\nissuer = "https://i.org"\naudience = "x"\ndefault_role = "root"',
         "config: oidc.issuers[0].default_role: 'root' is not a role"),
        ('[[oidc.issuers]]\nissuer = "https://i.org"\naudience = "x"\n'
         '[oidc.issuers.roles]\n"transferd.admin" = "god"',
         "config: oidc.issuers[0].roles.transferd.admin: 'god' is not a role"),
        ('[[oidc.issuers]]\nissuer = "https://i.org"\naudience = "x"\nsecret = "s"',
         "config: oidc.issuers[0].secret: unknown setting"),
        ('[[oidc.issuers]]\nissuer = "https://i.org"\naudience = "x"\n'
         '[[oidc.issuers]]\nissuer = "https://i.org"\naudience = "y"',
         "config: oidc.issuers[1].issuer: https://i.org is listed twice"),
        ('[oidc]\nissuers = "https://i.org"', "config: oidc.issuers: expected a list of tables"),
        ("port = ", "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="tenants: not a setting the command line may override"):
        load_config(None, {"tenants": {}})


def test_bad_override_is_named_like_a_file_setting() -> None:
    with pytest.raises(ConfigError, match=r"allow_roots\[0\]: not an absolute path"):
        load_config(None, {"allow_roots": ["relative/dir"]})
    with pytest.raises(ConfigError, match="port: 99999 is outside"):
        parse_config({"port": 99999})
