"""The dist-tag rule both stores apply inside the publish transaction."""

from __future__ import annotations

from entrepot.storage.base import tags_after_publish


def test_the_first_live_version_is_latest_whatever_its_tag() -> None:
    assert tags_after_publish({}, "beta", "2.0.0-beta.1", only_live=True) == {
        "beta": "2.0.0-beta.1",
        "latest": "2.0.0-beta.1",
    }


def test_a_higher_version_moves_latest() -> None:
    tags = tags_after_publish({"latest": "1.9.0"}, "latest", "1.10.0", only_live=False)
    assert tags == {"latest": "1.10.0"}


def test_a_publish_never_moves_latest_down() -> None:
    # npm's client refuses this unless the user insists; racing publishes must not do it.
    tags = tags_after_publish({"latest": "1.10.0"}, "latest", "1.9.0", only_live=False)
    assert tags == {"latest": "1.10.0"}


def test_other_tags_move_freely_and_latest_stays() -> None:
    tags = tags_after_publish(
        {"latest": "2.0.0", "next": "3.0.0-rc.1"}, "next", "1.0.1", only_live=False
    )
    assert tags == {"latest": "2.0.0", "next": "1.0.1"}


def test_after_unpublishing_everything_the_new_version_is_latest_again() -> None:
    # delete_package clears the tags; a lower version published afterwards is latest.
    assert tags_after_publish({}, "latest", "0.1.0", only_live=True) == {"latest": "0.1.0"}
