"""Ready-to-paste client configuration for a feed: npm, pnpm, yarn 4 and Unity."""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import urlsplit

TOKEN_VARIABLE = "ENTREPOT_TOKEN"  # noqa: S105 (the name of a variable)


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One file's worth of configuration (or one command)."""

    key: str
    client: str
    file: str
    text: str


def nerf_dart(feed_url: str) -> str:
    """``http://h:p/npm/f/`` -> ``//h:p/npm/f/``: the key npm matches credentials by (the
    trailing slash matters)."""
    parts = urlsplit(feed_url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"//{parts.netloc}{path}"


def connect_snippets(feed_url: str, feed_name: str) -> list[Snippet]:
    """What a developer pastes to use the feed; the token is read from ``$ENTREPOT_TOKEN``."""
    token = "${" + TOKEN_VARIABLE + "}"
    auth_line = f"{nerf_dart(feed_url)}:_authToken={token}"
    parts = urlsplit(feed_url)
    yarn = [
        f'npmRegistryServer: "{feed_url}"',
        "npmAlwaysAuth: true",
        f'npmAuthToken: "{token}"',
    ]
    if parts.scheme == "http":
        yarn += ["unsafeHttpWhitelist:", f'  - "{parts.hostname}"']
    unity_url = feed_url.rstrip("/")
    manifest = {
        "scopedRegistries": [
            {"name": f"Entrepot {feed_name}", "url": unity_url, "scopes": ["com.example"]}
        ]
    }
    return [
        Snippet("connect", "Any client", "command", f"entrepot connect {feed_url}"),
        Snippet("npm-project", "npm", ".npmrc (in the project)", f"registry={feed_url}\n"),
        Snippet("npm-user", "npm", "~/.npmrc (your user file)", auth_line + "\n"),
        Snippet(
            "pnpm",
            "pnpm",
            ".npmrc (project) and ~/.npmrc (user)",
            f"registry={feed_url}\n{auth_line}\n",
        ),
        Snippet("yarn", "yarn 4", ".yarnrc.yml", "\n".join(yarn) + "\n"),
        Snippet(
            "unity-manifest",
            "Unity",
            "Packages/manifest.json (merge into yours)",
            json.dumps(manifest, indent=2) + "\n",
        ),
        Snippet(
            "unity-auth",
            "Unity",
            "~/.upmconfig.toml",
            f'[npmAuth."{unity_url}"]\ntoken = "YOUR_TOKEN"\nalwaysAuth = true\n',
        ),
    ]
