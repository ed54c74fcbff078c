"""Remembered answers to repeated GETs (``ResponseMemo``): a packument or small tarball asked
again with the same path and headers is sent from memory, and every change that could alter
the answer (a publish, a revocation, a role, another process's write, a token's expiry, a
different caller, form, encoding or host) is honoured at the very next request.
"""

from __future__ import annotations

import time
import types
from typing import Any

import orjson
import pytest
from tests.api.conftest import Api, bearer, publish_body

from entrepot.admin import Admin
from entrepot.http import app as http_app
from entrepot.lru import SizedLRU
from entrepot.settings import load_settings
from entrepot.storage import sqlite as sqlite_store
from entrepot.storage.base import seq_memo
from entrepot.storage.open import open_local_stores

CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


def versions(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return set(orjson.loads(response.content)["versions"])


def memo_size(api: Api) -> int:
    return len(api.app._memo)


def test_a_repeated_get_is_remembered_and_a_publish_is_seen_at_once(api: Api) -> None:
    api.publish("memo-pkg", "1.0.0")
    first = api.get("/npm/main/memo-pkg", auth=api.alice)
    assert versions(first) == {"1.0.0"}
    before = memo_size(api)
    again = api.get("/npm/main/memo-pkg", auth=api.alice)
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert memo_size(api) == before >= 1  # answered from memory: nothing new remembered

    api.publish("memo-pkg", "1.1.0")
    assert versions(api.get("/npm/main/memo-pkg", auth=api.alice)) == {"1.0.0", "1.1.0"}


def test_variants_are_remembered_apart(api: Api) -> None:
    api.publish("memo-variants", "1.0.0")
    path = "/npm/main/memo-variants"
    for _ in range(2):  # the second round comes from memory
        full = api.get(path, auth=api.alice, headers={"Accept": "application/json"})
        corgi = api.get(path, auth=api.alice, headers={"Accept": CORGI})
        assert full.headers["content-type"].startswith("application/json")
        assert corgi.headers["content-type"].startswith("application/vnd.npm.install-v1+json")
        assert "readme" not in orjson.loads(corgi.content)
        raw = api.run(
            api.client.get(path, headers={"Authorization": api.alice, "Accept-Encoding": "gzip"})
        )
        assert raw.headers["content-encoding"] == "gzip"  # httpx decoded it
        plain = api.run(
            api.client.get(
                path, headers={"Authorization": api.alice, "Accept-Encoding": "identity"}
            )
        )
        assert "content-encoding" not in plain.headers
        assert raw.content == plain.content
        assert int(raw.headers["content-length"]) < len(plain.content)
        other_host = api.get(path, auth=api.alice, headers={"Host": "mirror.example.test:8080"})
        tarball = orjson.loads(other_host.content)["versions"]["1.0.0"]["dist"]["tarball"]
        assert tarball.startswith("http://mirror.example.test:8080/npm/main/")
        here = orjson.loads(full.content)["versions"]["1.0.0"]["dist"]["tarball"]
        assert here.startswith("http://testserver/npm/main/")


def test_head_after_get_sends_the_headers_without_the_body(api: Api) -> None:
    api.publish("memo-head", "1.0.0")
    got = api.get("/npm/main/memo-head", auth=api.alice)
    head = api.request("HEAD", "/npm/main/memo-head", auth=api.alice)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]
    tarball = "/npm/main/memo-head/-/memo-head-1.0.0.tgz"
    body = api.get(tarball, auth=api.alice).content
    assert api.get(tarball, auth=api.alice).content == body
    assert api.request("HEAD", tarball, auth=api.alice).content == b""


def test_another_caller_never_gets_a_remembered_answer(api: Api) -> None:
    admin = Admin(api.app.meta)
    api.run(admin.grant("team", "alice", "reader"))
    response = api.put(
        "/npm/team/secret-lib",
        auth=api.alice,
        json=publish_body("secret-lib", "1.0.0"),
    )
    assert response.status_code == 403  # a reader may not publish: publish as admin instead
    api.run(admin.grant("team", "alice", "publisher"))
    response = api.put(
        "/npm/team/secret-lib", auth=api.alice, json=publish_body("secret-lib", "1.0.0")
    )
    assert response.status_code == 201, response.text
    for _ in range(2):
        assert versions(api.get("/npm/team/secret-lib", auth=api.alice)) == {"1.0.0"}
        assert api.get("/npm/team/secret-lib").status_code == 401
        assert api.get("/npm/team/secret-lib", auth=bearer(api.bob_token)).status_code == 404


def test_revoking_a_role_or_a_token_holds_at_the_next_request(api: Api) -> None:
    admin = Admin(api.app.meta)
    api.run(admin.grant("team", "alice", "publisher"))
    api.put("/npm/team/held", auth=api.alice, json=publish_body("held", "1.0.0"))
    secret = api.run(admin.create_token("alice", read_only=True, feeds=[], expires_days=None))[0]
    for _ in range(2):
        assert versions(api.get("/npm/team/held", auth=bearer(secret))) == {"1.0.0"}
    api.run(admin.revoke("team", "alice"))
    assert api.get("/npm/team/held", auth=bearer(secret)).status_code == 404  # hidden
    api.run(admin.grant("team", "alice", "reader"))
    assert versions(api.get("/npm/team/held", auth=bearer(secret))) == {"1.0.0"}
    api.run(admin.revoke_token(secret))
    assert api.get("/npm/team/held", auth=bearer(secret)).status_code == 401


def remembered_with_a_token(api: Api, name: str) -> str:
    """Publish ``name``, and GET it twice with a new read-only token of alice's (the second
    answer from memory); the token's secret."""
    api.publish(name, "1.0.0")
    secret = api.run(
        Admin(api.app.meta).create_token("alice", read_only=True, feeds=[], expires_days=None)
    )[0]
    for _ in range(2):
        assert versions(api.get(f"/npm/main/{name}", auth=bearer(secret))) == {"1.0.0"}
    return secret


def revoke_from_another_process(api: Api) -> None:
    """Revoke alice's read-only tokens through stores of their own, as `entrepot token
    revoke` opens them."""
    settings = load_settings(overrides={"data_dir": api.data_dir})
    other, _ = open_local_stores(settings)
    try:
        alice = api.run(other.get_user("alice"))
        assert alice is not None
        for token in api.run(other.list_tokens(alice.id)):
            if token.read_only:
                assert api.run(other.revoke_token(token.key))
    finally:
        api.run(other.close())


def test_a_write_by_another_process_holds_at_the_next_request(api: Api) -> None:
    secret = remembered_with_a_token(api, "memo-far")
    revoke_from_another_process(api)
    assert api.get("/npm/main/memo-far", auth=bearer(secret)).status_code == 401


def test_a_remembered_answer_to_a_token_waits_for_no_notification(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a process learns of other processes' writes by notification, a moment
    after they commit. A store whose counter lags like that must still refuse a token
    revoked elsewhere at the very next request, remembered answer or not."""
    secret = remembered_with_a_token(api, "memo-lag")
    store = api.app.meta
    real_seq = store.seq
    heard = api.run(real_seq())  # what the notifications have told this process so far

    async def lagging_seq(*, fresh: bool = False) -> int:
        return await real_seq(fresh=True) if fresh else heard

    monkeypatch.setattr(store, "seq", lagging_seq)
    revoke_from_another_process(api)
    assert api.get("/npm/main/memo-lag", auth=bearer(secret)).status_code == 401
    # Anonymous answers may lag by that moment: they are still remembered.
    assert api.get("/npm/main/memo-lag").status_code == 200


def test_an_expiring_token_is_not_served_past_its_expiry(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.publish("memo-exp", "1.0.0")
    secret = api.run(
        Admin(api.app.meta).create_token("alice", read_only=True, feeds=[], expires_days=1)
    )[0]
    for _ in range(2):
        assert versions(api.get("/npm/main/memo-exp", auth=bearer(secret))) == {"1.0.0"}
    real_time, real_monotonic = time.time, time.monotonic
    later = types.SimpleNamespace(
        time=lambda: real_time() + 2 * 86400,
        monotonic=lambda: real_monotonic() + 2 * 86400,
        perf_counter=time.perf_counter,
    )
    monkeypatch.setattr("entrepot.auth.time", later)
    monkeypatch.setattr(http_app, "time", later)
    response = api.get("/npm/main/memo-exp", auth=bearer(secret))
    assert response.status_code == 401, response.text
    assert "expired" in response.json()["error"]


def test_duplicate_authorization_headers_are_never_remembered(api: Api) -> None:
    api.publish("memo-dup", "1.0.0")
    assert api.get("/npm/main/memo-dup", auth=api.alice).status_code == 200
    answer = api.raw(
        "GET",
        b"/npm/main/memo-dup",
        headers=[("authorization", api.alice), ("authorization", bearer(api.bob_token))],
    )
    assert answer.status == 400, answer
    assert (
        http_app.memo_key(
            {
                "path": "/npm/main/x",
                "query_string": b"",
                "headers": [(b"authorization", b"a"), (b"authorization", b"b")],
            }
        )
        is None
    )


def test_the_caches_are_bounded_in_entries_and_bytes() -> None:
    memo: SizedLRU[tuple[Any, ...], bytes] = SizedLRU(len, max_bytes=1000, max_entries=3)
    for i in range(5):
        memo.put((i,), b"x" * 100)
    assert len(memo) == 3 and memo.size_bytes == 300
    assert memo.get((0,)) is None and memo.get((4,)) is not None
    memo.get((3,))  # now the most recent of the small ones
    memo.put(("big",), b"x" * 900)
    assert memo.get(("big",)) is not None and memo.get((3,)) is not None
    assert len(memo) == 2 and memo.size_bytes == 1000
    memo.put(("huge",), b"x" * 5000)  # over the bound alone: kept, everything else goes
    assert len(memo) == 1 and memo.size_bytes == 5000
    picky: SizedLRU[str, bytes] = SizedLRU(len, max_bytes=1000, max_item=10)
    picky.put("small", b"x" * 10)
    picky.put("large", b"x" * 11)
    assert picky.get("small") is not None and picky.get("large") is None
    assert (picky.hits, picky.misses) == (1, 1)


def test_the_change_signal_is_shared_and_the_database_stays_the_truth(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit stores the counter in the shared signal (seen by every process at once); a
    write that bypassed it (a writer that died between its commit and that store) is seen
    within ``SIGNAL_RECHECK`` seconds."""
    meta = api.app.meta
    assert isinstance(meta, sqlite_store.SQLiteMetadataStore)

    async def seq_of_a_new_request() -> int:
        seq_memo.set(None)  # what a request before this one read is not reused
        return await meta.seq()

    start = api.run(meta.seq())
    api.publish("memo-signal", "1.0.0")
    assert api.run(seq_of_a_new_request()) > start
    path = str(api.data_dir / "entrepot.db")
    signal = sqlite_store.ChangeSignal.open(path + "-seq")
    assert signal is not None
    assert signal.load() == api.run(seq_of_a_new_request())

    import sqlite3

    bypass = sqlite3.connect(path)
    try:
        bypass.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
        bypass.commit()
        truth = int(bypass.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
    finally:
        bypass.close()
    # The signal did not move, so this process still trusts the counter it read...
    assert api.run(seq_of_a_new_request()) == truth - 1
    real = time.monotonic
    monkeypatch.setattr(  # ...until the recheck interval has passed
        sqlite_store,
        "time",
        types.SimpleNamespace(monotonic=lambda: real() + sqlite_store.SIGNAL_RECHECK + 0.01),
    )

    assert api.run(seq_of_a_new_request()) == truth


def test_a_signal_file_that_cannot_be_mapped_falls_back_to_the_database(tmp_path: Any) -> None:
    assert sqlite_store.ChangeSignal.open(str(tmp_path / "missing" / "x-seq")) is None


def test_names_with_a_scope_are_remembered_under_their_raw_path(api: Api) -> None:
    api.publish("@memo/scoped", "1.0.0")
    for spelling in ("@memo%2fscoped", "@memo%2Fscoped", "@memo/scoped"):
        for _ in range(2):
            assert versions(api.get(f"/npm/main/{spelling}", auth=api.alice)) == {"1.0.0"}
