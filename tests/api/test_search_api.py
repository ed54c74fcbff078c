"""``/-/v1/search`` (npm, and Unity's "My Registries" list), in-process.

The response shape npm 11 and UPM read, ``size``/``from`` paging, the ranking (exact name,
name prefix, name containing, then description and keyword matches), short queries, and
that search follows unpublishing and the feed's read access.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from tests.api.conftest import Api, bearer, publish_body, quote_name

from entrepot.admin import Admin
from entrepot.storage.base import NewVersion

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def search(api: Api, query: str, *, feed: str = "main", auth: str | None = None) -> Any:
    response = api.get(f"/npm/{feed}/-/v1/search?{query}", auth=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def names(body: Any) -> list[str]:
    return [hit["package"]["name"] for hit in body["objects"]]


def found(api: Api, text: str, *, feed: str = "main", auth: str | None = None) -> list[str]:
    body = search(api, "text=" + text.replace(" ", "+") + "&size=250", feed=feed, auth=auth)
    assert body["total"] == len(body["objects"]), body
    return names(body)


def packument(api: Api, name: str) -> dict[str, Any]:
    response = api.get("/npm/main/" + quote_name(name))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def seed(api: Api, count: int, prefix: str) -> list[str]:
    """``count`` packages written straight through the store (a search does not look at
    tarballs), named ``<prefix>-00000`` and up."""

    async def write() -> list[str]:
        feed = await api.app.meta.get_feed("main")
        assert feed is not None
        made = []
        for i in range(count):
            name = f"{prefix}-{i:05d}"
            manifest = {"name": name, "version": "1.0.0", "description": f"seeded {i}"}
            new = NewVersion(
                version="1.0.0",
                manifest=manifest,
                blob_key="0" * 128,
                size=1,
                tag="latest",
                readme="",
                maintainer={"name": "alice", "email": "alice@example.test"},
            )
            await api.app.meta.publish(feed.id, name, new)
            made.append(name)
        return made

    return api.run(write())


# -- the response -----------------------------------------------------------------------------


def test_a_hit_has_every_field_npm_reads(api: Api) -> None:
    api.publish(
        "shape-demo",
        "1.0.0",
        extra={
            "description": "Shows the shape of a search hit",
            "keywords": ["shape", "demo"],
            "author": {"name": "Alice", "email": "alice@example.test"},
            "license": "ISC",
        },
    )
    body = search(api, "text=shape-demo")
    assert body["total"] == 1
    assert isinstance(body["time"], str) and body["time"]
    (hit,) = body["objects"]
    package = hit["package"]
    assert package["name"] == "shape-demo"
    assert package["version"] == "1.0.0"
    assert package["description"] == "Shows the shape of a search hit"
    assert package["keywords"] == ["shape", "demo"]
    assert ISO_TIME.match(package["date"]), package["date"]
    assert package["date"] == packument(api, "shape-demo")["time"]["1.0.0"]
    assert package["publisher"] == {"username": "alice", "email": "alice@example.test"}
    # npm 11's format-search-stream throws on a hit without maintainers.
    assert package["maintainers"] == [{"username": "alice", "email": "alice@example.test"}]
    assert isinstance(package["links"], dict)
    assert package["author"] == {"name": "Alice", "email": "alice@example.test"}
    assert package["license"] == "ISC"
    for value in (hit["score"]["final"], hit["searchScore"], *hit["score"]["detail"].values()):
        assert isinstance(value, int | float) and 0 < value <= 1


def test_a_hit_has_the_fields_unity_reads(api: Api) -> None:
    unity = {"displayName": "Company Tools", "unity": "2021.3", "keywords": ["tools"]}
    api.publish("com.company.tools", "1.0.0", extra=unity)
    api.publish("com.company.tools", "1.1.0-preview.1", tag="preview", extra=unity)
    api.publish("com.company.plain", "2.0.0")
    body = search(api, "text=com.company&from=0&size=250")
    assert names(body) == ["com.company.plain", "com.company.tools"]
    tools = body["objects"][1]["package"]
    document = packument(api, "com.company.tools")
    assert tools["displayName"] == "Company Tools"
    assert tools["time"] == {"modified": document["time"]["modified"]}
    assert (
        tools["dist-tags"]
        == document["dist-tags"]
        == {
            "latest": "1.0.0",
            "preview": "1.1.0-preview.1",
        }
    )
    assert tools["versions"] == {"1.0.0": "latest", "1.1.0-preview.1": "preview"}
    assert tools["version"] == "1.0.0"
    # Without a displayName, UPM shows the name.
    assert body["objects"][0]["package"]["displayName"] == "com.company.plain"


def test_the_hit_follows_the_latest_tag(api: Api) -> None:
    api.publish("moving", "1.0.0", extra={"description": "first words"})
    api.publish("moving", "2.0.0", extra={"description": "second words"})
    (hit,) = search(api, "text=moving")["objects"]
    assert (hit["package"]["version"], hit["package"]["description"]) == ("2.0.0", "second words")
    assert found(api, "first words") == []
    assert found(api, "second words") == ["moving"]
    tagged = api.put("/npm/main/-/package/moving/dist-tags/latest", auth=api.alice, json="1.0.0")
    assert tagged.status_code in (200, 201), tagged.text
    (hit,) = search(api, "text=moving")["objects"]
    assert hit["package"]["version"] == "1.0.0"
    assert hit["package"]["versions"] == {"1.0.0": "latest", "2.0.0": ""}


# -- size, from, total ------------------------------------------------------------------------


def test_size_is_capped_at_250_and_from_pages_through_the_rest(api: Api) -> None:
    made = seed(api, 260, "bulk")
    first = search(api, "text=bulk&size=1000")
    assert first["total"] == 260
    assert names(first) == made[:250]
    rest = search(api, "text=bulk&size=250&from=250")
    assert rest["total"] == 260
    assert names(rest) == made[250:]
    assert search(api, "text=bulk&from=260")["objects"] == []
    # npm's default page is 20.
    assert names(search(api, "text=bulk")) == made[:20]


def test_from_and_size_page_without_gaps_or_repeats(api: Api) -> None:
    made = seed(api, 7, "page")
    pages = [search(api, f"text=page&size=3&from={start}") for start in (0, 3, 6)]
    assert [len(page["objects"]) for page in pages] == [3, 3, 1]
    assert all(page["total"] == 7 for page in pages)
    assert [name for page in pages for name in names(page)] == made


@pytest.mark.parametrize("query", ["size=0", "size=-5", "size=abc", "from=-1", "from=x"])
def test_odd_paging_values_do_not_fail(api: Api, query: str) -> None:
    seed(api, 3, "odd")
    body = search(api, f"text=odd&{query}")
    assert body["total"] == 3
    assert 1 <= len(body["objects"]) <= 3
    assert set(names(body)) <= {"odd-00000", "odd-00001", "odd-00002"}


# -- ranking and matching ---------------------------------------------------------------------


def publish_widgets(api: Api) -> None:
    api.publish("zz-widget", "1.0.0", extra={"description": "a name containing the word"})
    api.publish("widget-core", "1.0.0", extra={"description": "a name starting with it"})
    api.publish("gadget", "1.0.0", extra={"description": "the finest widget maker"})
    api.publish("gizmo", "1.0.0", extra={"description": "a gizmo", "keywords": ["widget"]})
    api.publish("widget", "1.0.0", extra={"description": "the exact name"})
    api.publish("sprocket", "1.0.0", extra={"description": "nothing to do with it"})
    api.publish("aa-widgetry", "1.0.0", extra={"description": "contains it too"})


def test_ranking_exact_then_prefix_then_containing_then_other_fields(api: Api) -> None:
    publish_widgets(api)
    ranked = found(api, "widget")
    assert ranked[:2] == ["widget", "widget-core"]
    assert set(ranked[2:4]) == {"zz-widget", "aa-widgetry"}
    assert set(ranked[4:]) == {"gadget", "gizmo"}
    assert len(ranked) == 6
    # The same order on every page.
    assert names(search(api, "text=widget&size=2&from=2")) == ranked[2:4]


def test_search_ignores_case(api: Api) -> None:
    publish_widgets(api)
    assert found(api, "WIDGET") == found(api, "widget")
    assert found(api, "Maker") == ["gadget"]


def test_several_words_must_all_match(api: Api) -> None:
    publish_widgets(api)
    assert found(api, "widget maker") == ["gadget"]
    assert found(api, "finest maker widget") == ["gadget"]
    assert found(api, "widget core") == ["widget-core"]
    assert found(api, "widget sprocket") == []


def test_unity_display_names_are_searched(api: Api) -> None:
    api.publish("com.company.audio", "1.0.0", extra={"displayName": "Sound Mixer"})
    api.publish("com.company.video", "1.0.0", extra={"displayName": "Video Player"})
    assert found(api, "mixer") == ["com.company.audio"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("w", ["widget", "widget-core"]),
        ("wi", ["widget", "widget-core"]),
        ("g", ["gadget", "gizmo"]),
        ("gi", ["gizmo"]),
        # Short words match the start of a name only, not its middle nor the description.
        ("et", []),
        ("a", ["aa-widgetry"]),
    ],
)
def test_short_queries_match_the_start_of_names(api: Api, text: str, expected: list[str]) -> None:
    publish_widgets(api)
    assert found(api, text) == expected


def test_a_short_word_with_a_long_one(api: Api) -> None:
    """``ui`` is too short for the trigram index, ``react`` is not: a package whose name
    has both must be found (npm users type such queries)."""
    api.publish("react-ui-kit", "1.0.0", extra={"description": "components"})
    api.publish("react-dom-tools", "1.0.0", extra={"description": "dom tools"})
    assert found(api, "react ui") == ["react-ui-kit"]


def test_empty_text_lists_every_package_by_name(api: Api) -> None:
    publish_widgets(api)
    everything = sorted(
        ["zz-widget", "widget-core", "gadget", "gizmo", "widget", "sprocket", "aa-widgetry"]
    )
    for query in ("text=&size=250", "size=250", "text=+&size=250"):
        body = search(api, query)
        assert body["total"] == 7
        assert names(body) == everything


def test_quotes_and_operators_in_the_text_are_just_text(api: Api) -> None:
    publish_widgets(api)
    for text in ('"widget', "widget OR gizmo", "wid*", "NOT widget", "widget)", "%_"):
        response = api.run(
            api.client.get("/npm/main/-/v1/search", params={"text": text, "size": "250"})
        )
        assert response.status_code == 200, (text, response.text)
        assert isinstance(response.json()["objects"], list)
    assert found(api, "widget OR gizmo") == []


# -- what search shows ------------------------------------------------------------------------


def test_unpublished_packages_and_versions_leave_search(api: Api) -> None:
    api.publish("going", "1.0.0", extra={"description": "soon unpublished"})
    api.publish("going", "1.1.0", extra={"description": "soon unpublished"})
    api.publish("staying", "1.0.0", extra={"description": "stays published"})
    assert found(api, "published") == ["going", "staying"]

    document = api.get("/npm/main/going?write=true", auth=api.alice).json()
    del document["versions"]["1.1.0"]
    document["dist-tags"] = {"latest": "1.0.0"}
    put = api.put(f"/npm/main/going/-rev/{document['_rev']}", auth=api.alice, json=document)
    assert put.status_code == 201, put.text
    (hit,) = search(api, "text=going")["objects"]
    assert hit["package"]["version"] == "1.0.0"
    assert hit["package"]["versions"] == {"1.0.0": "latest"}

    rev = api.get("/npm/main/going?write=true", auth=api.alice).json()["_rev"]
    deleted = api.delete(f"/npm/main/going/-rev/{rev}", auth=api.alice)
    assert deleted.status_code == 200, deleted.text
    assert found(api, "published") == ["staying"]
    assert found(api, "going") == []
    assert found(api, "") == ["staying"]
    assert "going" not in api.get("/npm/main/-/all").json()


def test_search_covers_one_feed_only(api: Api) -> None:
    api.publish("only-main", "1.0.0")
    api.run(Admin(api.app.meta).grant("team", "alice", "publisher"))
    put = api.put("/npm/team/only-team", auth=api.alice, json=publish_body("only-team", "1.0.0"))
    assert put.status_code == 201, put.text
    assert found(api, "only") == ["only-main"]
    assert found(api, "only", feed="team", auth=api.alice) == ["only-team"]


def test_a_private_feed_is_searched_only_with_read_access(api: Api) -> None:
    admin = Admin(api.app.meta)
    api.run(admin.grant("team", "alice", "publisher"))
    put = api.put("/npm/team/secret-lib", auth=api.alice, json=publish_body("secret-lib", "1.0.0"))
    assert put.status_code == 201, put.text

    anonymous = api.get("/npm/team/-/v1/search?text=secret")
    assert anonymous.status_code == 401, anonymous.text
    assert "secret-lib" not in anonymous.text
    assert api.get("/npm/team/-/all").status_code == 401
    outsider = api.get("/npm/team/-/v1/search?text=secret", auth=bearer(api.bob_token))
    assert outsider.status_code in (403, 404), outsider.text
    assert "secret-lib" not in outsider.text
    assert found(api, "secret", feed="team", auth=api.alice) == ["secret-lib"]
    assert found(api, "secret", feed="team", auth=bearer(api.alice_read_only)) == ["secret-lib"]
    # A reader may search; alice's token limited to feed main may not.
    api.run(admin.grant("team", "bob", "reader"))
    assert found(api, "secret", feed="team", auth=bearer(api.bob_token)) == ["secret-lib"]
    main_only, _ = api.run(
        admin.create_token("alice", read_only=True, feeds=["main"], expires_days=None)
    )
    limited = api.get("/npm/team/-/v1/search?text=secret", auth=bearer(main_only))
    assert limited.status_code in (401, 403, 404), limited.text
    assert "secret-lib" not in limited.text


def test_unknown_feed_is_404(api: Api) -> None:
    response = api.get("/npm/nowhere/-/v1/search?text=x")
    assert response.status_code == 404, response.text


def test_head_answers_like_get(api: Api) -> None:
    api.publish("headed", "1.0.0")
    response = api.request("HEAD", "/npm/main/-/v1/search?text=headed")
    assert response.status_code == 200
    assert response.content == b""
    assert isinstance(httpx.Headers(response.headers).get("content-type"), str)


# -- /-/all and /-/all/since (Unity's fallback listing) --------------------------------------


def test_all_lists_every_live_package_in_the_legacy_shape(api: Api) -> None:
    api.publish("com.company.tools", "1.0.0", extra={"displayName": "Company Tools"})
    api.publish("com.company.tools", "1.1.0", extra={"displayName": "Company Tools"})
    api.publish("other", "0.1.0", extra={"keywords": ["k"]})
    body = api.get("/npm/main/-/all").json()
    assert isinstance(body.pop("_updated"), int)
    assert sorted(body) == ["com.company.tools", "other"]
    tools = body["com.company.tools"]
    assert tools["name"] == "com.company.tools"
    assert tools["displayName"] == "Company Tools"
    assert tools["versions"] == {"1.0.0": "", "1.1.0": "latest"}
    assert tools["dist-tags"] == {"latest": "1.1.0"}
    assert tools["time"] == {"modified": packument(api, "com.company.tools")["time"]["modified"]}
    assert tools["maintainers"] == [{"name": "alice", "email": "alice@example.test"}]
    assert body["other"]["keywords"] == ["k"]


@pytest.mark.parametrize("startkey", ["abc", "-1", "1.5", "9" * 20])
def test_all_since_needs_milliseconds(api: Api, startkey: str) -> None:
    response = api.get(f"/npm/main/-/all/since?startkey={startkey}")
    assert response.status_code == 400, response.text
    assert "startkey" in response.json()["error"]
