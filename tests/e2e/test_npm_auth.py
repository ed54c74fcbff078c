"""The real npm CLI and the server's authentication: legacy login, private feeds, scopes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    NpmFactory,
    PackageFactory,
    Server,
    assert_log_has_no_secrets,
    quote_name,
)

pytestmark = pytest.mark.e2e


def test_legacy_login(server: Server, npm: NpmFactory) -> None:
    password = server.remember("correct horse battery staple")
    server.admin(
        "user",
        "add",
        "bob",
        "--email",
        "bob@example.com",
        "--password-stdin",
        input=password + "\n",
    )

    client = npm()
    result = client.login_legacy("bob", password)
    assert result.returncode == 0, result.output
    assert "Username:" in result.output
    assert "Password:" in result.output
    assert "Logged in" in result.output
    assert password not in result.output
    saved = client.saved_config()
    prefix = re.escape(f"//127.0.0.1:{server.port}/npm/main/:_authToken=")
    found = re.search(rf"^{prefix}(\S+)$", saved, re.MULTILINE)
    assert found is not None, saved
    server.remember(found.group(1))
    assert client.ok("whoami").strip() == "bob"
    tokens = server.admin("token", "list", "--user", "bob")
    assert "npm login" in tokens
    assert found.group(1) not in tokens

    # npm logout revokes the token on the server (DELETE /-/user/token/<token>).
    client.ok("logout")
    assert "_authToken" not in client.saved_config()
    client.set_token(found.group(1))
    revoked = client("whoami")
    assert revoked.returncode != 0
    assert "E401" in revoked.output
    assert "npm login" not in server.admin("token", "list", "--user", "bob")

    wrong = server.remember("not bob's password at all")
    other = npm()
    before = other.saved_config()
    failed = other.login_legacy("bob", wrong)
    assert failed.returncode != 0
    assert "E401" in failed.output
    assert other.saved_config() == before
    assert "_authToken" not in other.saved_config()
    unknown = other.login_legacy("nobody-here", wrong)
    assert unknown.returncode != 0
    assert "_authToken" not in other.saved_config()


def test_private_feed(
    server: Server,
    admin_token: str,
    npm: NpmFactory,
    make_package: PackageFactory,
    tmp_path: Path,
) -> None:
    name = "@acme/lib-secret"
    server.admin("feed", "create", "secret", "--private")
    assert "secret\tprivate" in server.admin("feed", "list")
    publisher = npm(token=admin_token, feed="secret")
    publisher.ok("publish", cwd=make_package(name, "1.0.0"))

    anonymous = npm(feed="secret")
    refused = anonymous("view", name)
    assert refused.returncode != 0
    assert "E401" in refused.output
    assert server.packument(name, feed="secret").status == 401
    tarball = f"/npm/secret/{quote_name(name)}/-/lib-secret-1.0.0.tgz"
    assert server.request("GET", tarball).status == 401
    # The same name on the public feed is another package, which does not exist.
    assert server.packument(name).status == 404

    reader_token = server.token("--read-only")
    reader = npm(token=reader_token, feed="secret")
    assert reader.ok("view", name, "version").strip() == "1.0.0"
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "consumer", "private": True}))
    reader.ok("install", name, cwd=project)
    installed = json.loads((project / "node_modules" / name / "package.json").read_text())
    assert installed["version"] == "1.0.0"

    denied = reader("publish", cwd=make_package(name, "1.1.0"))
    assert denied.returncode != 0
    assert "E403" in denied.output
    assert list(server.packument(name, feed="secret", token=reader_token).body["versions"]) == [
        "1.0.0"
    ]

    # A token limited to another feed does not open this one.
    main_only = npm(token=server.token("--feed", "main"), feed="secret")
    elsewhere = main_only("view", name)
    assert elsewhere.returncode != 0
    assert "E404" in elsewhere.output


def test_server_log_has_no_secrets(server: Server) -> None:
    """Runs last in this module: nothing above wrote a token or password to the log."""
    assert_log_has_no_secrets(server)
