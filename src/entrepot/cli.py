"""The ``entrepot`` command line: serve, and administer feeds, users and tokens.

Admin commands open the same store as the server (SQLite allows both at once), so they work
while the server runs; the server sees their writes through the change counter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import getpass
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from entrepot import __version__
from entrepot.admin import Admin
from entrepot.connect import CLIENTS
from entrepot.errors import RegistryError
from entrepot.settings import Settings, SettingsError, load_settings
from entrepot.storage.base import SchemaMismatch, StoreUnavailable
from entrepot.storage.open import open_stores


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data folder (default ./entrepot-data, or ENTREPOT_DATA_DIR)",
    )
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML config file (or ENTREPOT_CONFIG)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="entrepot", description="A self-hosted npm registry.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"entrepot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the registry server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 4880; 0: any free)")
    serve.add_argument("--public-url", default=None, help="URL clients use to reach this server")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")

    feed = commands.add_parser("feed", help="manage feeds").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = feed.add_parser("create", parents=[common], help="create a feed")
    create.add_argument("name")
    create.add_argument("--private", action="store_true", help="only signed-in users may read")
    create.add_argument("--upstream", default=None, help="add one connector to this URL")
    feed.add_parser("list", parents=[common], help="list feeds")
    delete = feed.add_parser("delete", parents=[common], help="delete a feed and its packages")
    delete.add_argument("name")
    grant = feed.add_parser(
        "grant", parents=[common], help="give a user a role: reader, publisher or owner"
    )
    grant.add_argument("name", metavar="FEED")
    grant.add_argument("user")
    grant.add_argument("role", choices=["reader", "publisher", "owner"])
    frevoke = feed.add_parser("revoke", parents=[common], help="take away a user's role")
    frevoke.add_argument("name", metavar="FEED")
    frevoke.add_argument("user")
    members = feed.add_parser("members", parents=[common], help="list users' roles on a feed")
    members.add_argument("name", metavar="FEED")
    merge = feed.add_parser(
        "upstream-names",
        parents=[common],
        help="names (globs) whose local and upstream versions may be merged; none: clear",
    )
    merge.add_argument("name", metavar="FEED")
    merge.add_argument("patterns", nargs="*")

    connector = commands.add_parser("connector", help="manage a feed's upstreams").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    cadd = connector.add_parser("add", parents=[common], help="add an upstream to a feed")
    cadd.add_argument("feed")
    cadd.add_argument("url", help="a registry URL, or feed:OTHER for another feed here")
    cadd.add_argument("--name", default=None)
    auth = cadd.add_mutually_exclusive_group()
    auth.add_argument("--token-env", default=None, help="variable holding a Bearer token")
    auth.add_argument("--basic-env", default=None, help="variable holding user:password")
    cadd.add_argument("--allow", action="append", default=[], help="only these names (glob)")
    cadd.add_argument("--block", action="append", default=[], help="never these names (glob)")
    cadd.add_argument("--min-age", type=float, default=None, help="hide versions younger (hours)")
    cadd.add_argument("--ttl", type=int, default=300, help="seconds a packument stays fresh")
    cadd.add_argument(
        "--allow-internal",
        action="store_true",
        help="allow link-local addresses or this server itself (refused by default: SSRF)",
    )
    clist = connector.add_parser("list", parents=[common], help="list a feed's connectors")
    clist.add_argument("feed")
    cremove = connector.add_parser("remove", parents=[common], help="remove a connector")
    cremove.add_argument("feed")
    cremove.add_argument("name")

    conn = commands.add_parser(
        "connect", help="set up npm/yarn/pnpm/Unity for a registry (token in user files only)"
    )
    conn.add_argument("url", help="the feed's registry URL, e.g. http://host:4880/npm/main/")
    where = conn.add_mutually_exclusive_group()
    where.add_argument("--scope", default=None, help="only this npm scope (@acme) uses the feed")
    where.add_argument("--upm-scope", default=None, help="Unity scope (com.company) for UPM")
    conn.add_argument(
        "--client",
        action="append",
        choices=[*CLIENTS, "all"],
        default=None,
        help="which clients to configure (repeatable; default npm, which pnpm and bun read)",
    )
    conn.add_argument("--project", type=Path, default=Path(), help="project folder (default .)")
    how = conn.add_mutually_exclusive_group()
    how.add_argument("--token-stdin", action="store_true", help="read the token from stdin")
    how.add_argument("--login", action="store_true", help="sign in with user name and password")
    how.add_argument("--web", action="store_true", help="sign in in a browser (npm's web login)")
    disc = commands.add_parser("disconnect", help="remove what `entrepot connect` wrote")
    disc.add_argument("url")
    disc.add_argument("--scope", default=None)
    disc.add_argument("--project", type=Path, default=Path())
    doc = commands.add_parser(
        "doctor", help="explain why npm/yarn/pnpm/Unity cannot install (E401 and friends)"
    )
    doc.add_argument("--project", type=Path, default=Path())

    gc = commands.add_parser(
        "gc", parents=[common], help="remove tarballs that no version refers to any more"
    )
    gc.add_argument("--grace-hours", type=float, default=1.0, help="spare blobs younger than this")
    gc.add_argument("--dry-run", action="store_true")
    commands.add_parser(
        "fsck", parents=[common], help="check every version's tarball exists and matches"
    )
    export = commands.add_parser(
        "export", parents=[common], help="write a backup bundle (tar) of all or some feeds"
    )
    export.add_argument("feeds", nargs="*", metavar="FEED")
    export.add_argument("--out", type=Path, required=True)
    imp = commands.add_parser(
        "import", parents=[common], help="load a bundle (verified; importing twice is harmless)"
    )
    imp.add_argument("bundle", type=Path)
    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="copy an embedded data dir into the configured stores (PostgreSQL + S3)",
    )
    migrate.add_argument("--from-data-dir", type=Path, required=True)
    db = commands.add_parser("db", help="the metadata database").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    db.add_parser("upgrade", parents=[common], help="bring the schema up to date")

    mirror = commands.add_parser(
        "mirror",
        parents=[common],
        help="pull everything a lockfile names into a feed's cache (for offline installs)",
    )
    mirror.add_argument("feed")
    mirror.add_argument(
        "lockfile",
        type=Path,
        help="package-lock.json, npm-shrinkwrap.json, pnpm-lock.yaml or yarn.lock",
    )
    mirror.add_argument("--concurrency", type=int, default=8)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = user.add_parser("add", parents=[common], help="add a user")
    add.add_argument("name")
    add.add_argument("--email", required=True)
    add.add_argument("--admin", action="store_true", help="a server administrator")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user.add_parser("list", parents=[common], help="list users")

    token = commands.add_parser("token", help="manage tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    tcreate = token.add_parser(
        "create", parents=[common], help="create a token; prints it, alone, on stdout"
    )
    tcreate.add_argument("--user", required=True)
    tcreate.add_argument("--read-only", action="store_true")
    tcreate.add_argument(
        "--feed", action="append", default=[], help="limit to this feed (repeatable)"
    )
    tcreate.add_argument("--expires-days", type=float, default=None)
    tcreate.add_argument("--description", default="")
    tlist = token.add_parser("list", parents=[common], help="list live tokens (never secrets)")
    tlist.add_argument("--user", default=None)
    trevoke = token.add_parser("revoke", parents=[common], help="revoke a token")
    trevoke.add_argument("key", help="the key shown by `token list`, or the token itself")
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    for key in ("host", "port", "public_url", "workers"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return load_settings(getattr(args, "config", None), environ, overrides)


def run() -> NoReturn:
    """The ``entrepot`` command: :func:`main`, then exit without interpreter finalization.

    The S3 store's client (obstore) runs requests on Rust threads that take the GIL once
    more after a request has completed. If that lands while the interpreter finalizes,
    CPython ends the thread with ``pthread_exit`` and the Rust frames abort the process
    (SIGABRT after the command printed its result; about one exit in five on a loaded
    machine). Every store is closed by then, so flushing and leaving is safe.
    """
    code = main()  # argparse's --help and usage errors exit before any store is opened
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("connect", "disconnect", "doctor"):
        return _client_setup(args, dict(os.environ))
    try:
        settings = settings_from(args, dict(os.environ))
        if args.command == "serve":
            return serve(settings, getattr(args, "config", None))
        if args.command == "mirror":
            return asyncio.run(_mirror(args, settings))
        if args.command in ("gc", "fsck"):
            return asyncio.run(_maintenance(args, settings))
        if args.command == "db":
            return asyncio.run(_db_upgrade(settings))
        if args.command in ("export", "import", "migrate"):
            return asyncio.run(_bundle_command(args, settings))
        return asyncio.run(_admin_command(args, settings))
    except (SettingsError, RegistryError, SchemaMismatch, StoreUnavailable) as exc:
        print(f"entrepot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _admin_command(args: argparse.Namespace, settings: Settings) -> int:
    meta, _ = await open_stores(settings, environ=os.environ)
    try:
        handler = _HANDLERS[(args.command, args.action)]
        return await handler(Admin(meta, own_ports={settings.port}), args)
    finally:
        await meta.close()


async def _feed_create(admin: Admin, args: argparse.Namespace) -> int:
    feed = await admin.create_feed(args.name, private=args.private)
    print(f"created feed {feed.name} ({'private' if feed.private else 'public'})")
    if args.upstream:
        connector = await admin.add_connector(feed.name, args.upstream)
        print(f"added connector {connector.name} -> {connector.url}")
    return 0


async def _feed_upstream_names(admin: Admin, args: argparse.Namespace) -> int:
    feed = await admin.feed(args.name)
    await admin.meta.set_upstream_names(feed.id, args.patterns)
    print(f"feed {feed.name} merges upstream versions for: {', '.join(args.patterns) or 'none'}")
    return 0


async def _connector_add(admin: Admin, args: argparse.Namespace) -> int:
    connector = await admin.add_connector(
        args.feed,
        args.url,
        name=args.name,
        token_env=args.token_env,
        basic_env=args.basic_env,
        allow=args.allow,
        block=args.block,
        min_age_hours=args.min_age,
        ttl=args.ttl,
        allow_internal=args.allow_internal,
        own_ports=admin.own_ports,
    )
    print(f"added connector {connector.name} -> {connector.url} to feed {args.feed}")
    return 0


async def _connector_list(admin: Admin, args: argparse.Namespace) -> int:
    feed = await admin.feed(args.feed)
    for c in await admin.meta.list_connectors(feed.id):
        extras = [f"ttl {c.ttl}s"]
        if c.credential_env:
            extras.append(f"{c.credential_kind} from ${c.credential_env}")
        if c.allow:
            extras.append("allow " + ",".join(c.allow))
        if c.block:
            extras.append("block " + ",".join(c.block))
        if c.min_age_hours:
            extras.append(f"min age {c.min_age_hours:g}h")
        print(f"{c.position}\t{c.name}\t{c.url}\t{'; '.join(extras)}")
    return 0


async def _connector_remove(admin: Admin, args: argparse.Namespace) -> int:
    await admin.remove_connector(args.feed, args.name)
    print(f"removed connector {args.name} from feed {args.feed}")
    return 0


async def _feed_list(admin: Admin, args: argparse.Namespace) -> int:
    for feed in await admin.meta.list_feeds():
        count = await admin.meta.count_packages(feed.id)
        print(f"{feed.name}\t{'private' if feed.private else 'public'}\t{count} packages")
    return 0


async def _feed_delete(admin: Admin, args: argparse.Namespace) -> int:
    await admin.delete_feed(args.name)
    print(f"deleted feed {args.name}")
    return 0


async def _feed_grant(admin: Admin, args: argparse.Namespace) -> int:
    await admin.grant(args.name, args.user, args.role)
    print(f"{args.user} is now {args.role} on feed {args.name}")
    return 0


async def _feed_revoke(admin: Admin, args: argparse.Namespace) -> int:
    await admin.revoke(args.name, args.user)
    print(f"{args.user} has no role on feed {args.name} any more")
    return 0


async def _feed_members(admin: Admin, args: argparse.Namespace) -> int:
    feed = await admin.feed(args.name)
    for user, role in await admin.meta.list_roles(feed.id):
        print(f"{user}\t{role}")
    return 0


async def _user_add(admin: Admin, args: argparse.Namespace) -> int:
    password: str | None = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password (empty: token-only user): ") or None
        if password is not None and getpass.getpass("Again: ") != password:
            print("entrepot: the passwords differ", file=sys.stderr)
            return 2
    user = await admin.add_user(args.name, args.email, password, admin=args.admin)
    print(f"added user {user.name}{' (admin)' if user.admin else ''}")
    return 0


async def _user_list(admin: Admin, args: argparse.Namespace) -> int:
    for user in await admin.meta.list_users():
        print(f"{user.name}\t{user.email}\t{'admin' if user.admin else 'user'}")
    return 0


async def _token_create(admin: Admin, args: argparse.Namespace) -> int:
    secret, _ = await admin.create_token(
        args.user,
        read_only=args.read_only,
        feeds=args.feed,
        expires_days=args.expires_days,
        description=args.description,
    )
    print(secret)
    return 0


async def _token_list(admin: Admin, args: argparse.Namespace) -> int:
    user_id = (await admin.user(args.user)).id if args.user else None
    for token in await admin.meta.list_tokens(user_id):
        expires = (
            dt.datetime.fromtimestamp(token.expires, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            if token.expires
            else "never"
        )
        scope = ",".join(token.feeds) or "all feeds"
        mode = "read-only" if token.read_only else "read-write"
        print(
            f"{token.key}\t{token.user_name}\t{mode}\t{scope}\texpires {expires}\t"
            f"{token.description}"
        )
    return 0


async def _token_revoke(admin: Admin, args: argparse.Namespace) -> int:
    token = await admin.revoke_token(args.key)
    print(f"revoked token {token.key} of {token.user_name}")
    return 0


_HANDLERS: dict[tuple[str, str], Callable[[Admin, argparse.Namespace], Awaitable[int]]] = {
    ("feed", "create"): _feed_create,
    ("feed", "list"): _feed_list,
    ("feed", "delete"): _feed_delete,
    ("feed", "grant"): _feed_grant,
    ("feed", "revoke"): _feed_revoke,
    ("feed", "members"): _feed_members,
    ("feed", "upstream-names"): _feed_upstream_names,
    ("connector", "add"): _connector_add,
    ("connector", "list"): _connector_list,
    ("connector", "remove"): _connector_remove,
    ("user", "add"): _user_add,
    ("user", "list"): _user_list,
    ("token", "create"): _token_create,
    ("token", "list"): _token_list,
    ("token", "revoke"): _token_revoke,
}


async def _bundle_command(args: argparse.Namespace, settings: Settings) -> int:
    from entrepot.bundle import BundleError, copy_store, export_bundle, import_bundle

    meta, blobs = await open_stores(settings, environ=os.environ)
    try:
        if args.command == "export":
            for name in args.feeds:
                if await meta.get_feed(name) is None:
                    print(f"entrepot: no feed named {name!r}", file=sys.stderr)
                    return 2
            report = await export_bundle(meta, blobs, args.out, args.feeds or None)
            print(f"wrote {args.out}: {report.blobs_copied} tarballs")
        elif args.command == "import":
            try:
                report = await import_bundle(meta, blobs, args.bundle)
            except BundleError as exc:
                print(f"entrepot: {exc}", file=sys.stderr)
                return 2
            added = ", ".join(f"{n} {k}" for k, n in report.added.items() if n) or "nothing new"
            print(f"imported {args.bundle}: {added}; {report.blobs_copied} tarballs stored")
        else:
            source = load_settings(overrides={"data_dir": args.from_data_dir})
            source_meta, source_blobs = await open_stores(source, environ=os.environ)
            try:
                report = await copy_store(source_meta, source_blobs, meta, blobs)
            except BundleError as exc:
                print(f"entrepot: {exc}", file=sys.stderr)
                return 2
            finally:
                await source_meta.close()
            added = ", ".join(f"{n} {k}" for k, n in report.added.items() if n) or "nothing new"
            print(
                f"migrated {args.from_data_dir}: {added}; {report.blobs_copied} tarballs "
                f"copied and verified, {report.blobs_present} already there"
            )
        for key in report.missing:
            print(f"warning: tarball {key[:16]}... is missing from the source", file=sys.stderr)
        return 1 if report.missing else 0
    finally:
        await meta.close()


async def _db_upgrade(settings: Settings) -> int:
    meta, _ = await open_stores(settings, upgrade=True, environ=os.environ)
    try:
        before = getattr(meta, "upgraded_from", None)
        print(
            f"upgraded the schema from version {before}"
            if before is not None
            else "the schema is up to date"
        )
        return 0
    finally:
        await meta.close()


async def _maintenance(args: argparse.Namespace, settings: Settings) -> int:
    from entrepot.maintenance import check_consistency, collect_garbage

    meta, blobs = await open_stores(settings, environ=os.environ)
    try:
        if args.command == "gc":
            report = await collect_garbage(
                meta, blobs, grace=args.grace_hours * 3600, dry_run=args.dry_run
            )
            verb = "would remove" if args.dry_run else "removed"
            print(
                f"{verb} {len(report.removed)} unreferenced tarballs; kept {report.kept}; "
                f"spared {report.too_young} younger than {args.grace_hours:g} h; "
                f"removed {report.partial} leftovers of interrupted writes"
            )
            return 0
        fsck = await check_consistency(meta, blobs)
        for problem in fsck.problems:
            print(problem)
        print(f"checked {fsck.checked} versions: {len(fsck.problems)} problems")
        return 1 if fsck.problems else 0
    finally:
        await meta.close()


async def _mirror(args: argparse.Namespace, settings: Settings) -> int:
    from entrepot.http.app import ServerApp
    from entrepot.lockfiles import LockfileError, parse_lockfile
    from entrepot.mirror import MirrorReport, mirror

    try:
        text = args.lockfile.read_text(encoding="utf-8")
        packages = parse_lockfile(args.lockfile.name, text)
    except OSError as exc:
        print(f"entrepot: cannot read {args.lockfile}: {exc.strerror}", file=sys.stderr)
        return 2
    except LockfileError as exc:
        print(f"entrepot: {exc}", file=sys.stderr)
        return 2
    app = await ServerApp(settings, os.environ).ready()
    feed = await app.registry.known_feed(args.feed)
    tty = sys.stderr.isatty()

    def progress(report: MirrorReport, total: int, spec: str) -> None:
        width = 30
        filled = width * report.done // max(total, 1)
        line = f"[{'#' * filled}{'-' * (width - filled)}] {report.done}/{total} {spec}"
        if tty:
            print(f"\r{line[:100]:<100}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr)

    try:
        report = await mirror(
            app.registry, feed, packages, progress=progress, concurrency=args.concurrency
        )
    finally:
        if app.upstreams is not None:
            await app.upstreams.close()
        await app.meta.close()
    if tty:
        print(file=sys.stderr)
    print(
        f"{len(packages)} packages: {len(report.fetched)} fetched, {len(report.cached)} "
        f"already cached, {len(report.local)} local, {len(report.failed)} failed"
    )
    for spec, why in sorted(report.failed):
        print(f"  failed {spec}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def _client_setup(args: argparse.Namespace, env: dict[str, str]) -> int:
    """connect / disconnect / doctor: run on a developer's machine, not on the server."""
    import httpx

    from entrepot.clientconfig import ClientConfigError
    from entrepot.connect import (
        ConnectError,
        Doctor,
        UserFiles,
        connect,
        disconnect,
        login_on_the_web,
        login_with_password,
        whoami,
    )

    files = UserFiles.from_env(env, Path.home())
    try:
        with httpx.Client(timeout=30, trust_env=True) as client:
            if args.command == "doctor":
                registry = env.get("npm_config_registry") or _npm_default_registry()
                findings = Doctor(args.project, files, env, client, registry).run()
                for f in findings:
                    print(f"{'PROBLEM' if f.problem else 'ok':7} {f.client:4} {f.text}")
                problems = sum(f.problem for f in findings)
                print(f"{problems} problem{'s' if problems != 1 else ''} found")
                return 1 if problems else 0
            if args.command == "disconnect":
                changed = disconnect(args.url, scope=args.scope, project=args.project, files=files)
                print("\n".join(f"updated {p}" for p in changed) or "nothing to remove")
                return 0
            url = args.url if args.url.endswith("/") else args.url + "/"
            token = _obtain_token(args, client, url, login_with_password, login_on_the_web)
            status, user = whoami(client, url, {"Authorization": f"Bearer {token}"})
            if status != 200:
                print(
                    f"entrepot: {url} does not accept that token (HTTP {status})", file=sys.stderr
                )
                return 1
            clients = set(args.client or ["npm"])
            if "all" in clients:
                clients = set(CLIENTS)
            if args.upm_scope:
                clients.add("upm")
            changed = connect(
                url,
                token,
                clients=clients,
                scope=args.scope,
                upm_scope=args.upm_scope,
                project=args.project,
                files=files,
            )
            print(f"signed in to {url} as {user}")
            print("\n".join(f"updated {p}" for p in changed) or "everything was already set up")
            return 0
    except (ConnectError, ClientConfigError, ValueError) as exc:
        print(f"entrepot: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"entrepot: cannot reach the registry ({type(exc).__name__})", file=sys.stderr)
        return 2


def _obtain_token(
    args: argparse.Namespace,
    client: Any,
    url: str,
    with_password: Callable[..., str],
    on_the_web: Callable[..., str],
) -> str:
    from entrepot.connect import ConnectError

    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise ConnectError("no token on standard input")
        return token
    if args.web:

        def show(login_url: str) -> None:
            print(f"Sign in at: {login_url}", flush=True)
            import webbrowser

            webbrowser.open(login_url)

        return on_the_web(client, url, show)
    if not args.login and not sys.stdin.isatty():
        raise ConnectError("give the token with --token-stdin, or sign in with --login or --web")
    name = input("User name: ").strip()
    password = getpass.getpass("Password: ")
    return with_password(client, url, name, password, lambda: input("One-time password: "))


def _npm_default_registry() -> str | None:
    """What ``npm config get registry`` says, for the doctor's default (None without npm)."""
    import shutil
    import subprocess

    npm = shutil.which("npm")
    if npm is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env["NPM_CONFIG_USERCONFIG"] = os.devnull  # npm's own default, not the user's choice
    try:
        done = subprocess.run(
            [npm, "config", "get", "registry"],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
            cwd=Path.home().anchor,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return value if value.startswith(("http://", "https://")) else None


# -- serve ----------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as ``ENTREPOT_*`` variables, for worker processes."""
    env: dict[str, str] = {}
    for key, value in vars(settings).items():
        if value is None or isinstance(value, Mapping):
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        env[f"ENTREPOT_{key.upper()}"] = text
    return env


def serve(settings: Settings, config_file: Path | None = None) -> int:
    import uvicorn

    from entrepot.http.app import ServerApp

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every upstream request at INFO; our own log says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    password_file = asyncio.run(_bootstrap(settings))
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = settings.public_url.rstrip("/") if settings.public_url else f"http://{host}:{port}"
    if password_file is not None:
        print(f"Created feed 'main' and user 'admin'; the admin password is in {password_file}")
    print(f"Entrepot {__version__} listening on http://{host}:{port}", flush=True)
    print(f"Feed 'main': {base}/npm/main/", flush=True)
    common = uvicorn_options(settings)
    settings = dataclasses.replace(settings, port=port)
    if settings.workers == 1:
        app = ServerApp(settings, os.environ)
        uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        return 0
    os.environ.update(_settings_environment(settings))
    if config_file is not None:
        # Workers read the file again for what variables cannot carry (credentials).
        os.environ["ENTREPOT_CONFIG"] = str(config_file.resolve())
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "entrepot.http.app:create_app_from_environment",
        factory=True,
        workers=settings.workers,
        **common,
    )
    Multiprocess(config, sockets=[sock]).run()
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How ``serve`` configures uvicorn (besides the app, the socket and the workers)."""
    return {
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "log_level": settings.log_level,
        "timeout_keep_alive": 30,
    }


async def _bootstrap(settings: Settings) -> Path | None:
    """Open the stores once before serving: fail fast with a clear message when they are
    unreachable or out of date, and set up an empty store."""
    meta, _ = await open_stores(settings, environ=os.environ)
    try:
        return await Admin(meta).bootstrap(settings.data_dir)
    finally:
        await meta.close()


if __name__ == "__main__":
    run()
