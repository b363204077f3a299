"""The API's answers follow the error's kind and field (docs/web.md, "Errors"), and client
tokens belong to the user who sent them. The module shares one site (``site``, reset
before each test)."""

from __future__ import annotations

import sqlalchemy as sa

from marketcare.domain import inputs

from .support.web import Site


def count(site: Site, sql: str) -> int:
    with site.engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def test_two_users_may_send_the_same_token_and_each_is_recorded(site: Site) -> None:
    lizhong = site.obligation("lizhong", "waste")
    xinhua = site.obligation("xinhua", "waste")
    with site.api("mgr_a") as a, site.api("mgr_b") as b:
        first = a.post(f"/api/v1/obligations/{lizhong}/completions", json={"token": "same"})
        second = b.post(f"/api/v1/obligations/{xinhua}/completions", json={"token": "same"})
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert count(site, "SELECT count(*) FROM completions WHERE token = 'same'") == 2


def test_a_problem_reported_with_another_users_token_is_raised_not_dropped(site: Site) -> None:
    body = {"category": "repair", "description": "灯管损坏", "deadline": "2026-11-30"}
    with site.api("mgr_a") as manager, site.api("office") as office:
        mine = manager.post("/api/v1/markets/lizhong/problems", json={**body, "token": "f1"})
        theirs = office.post(
            "/api/v1/markets/lizhong/problems",
            json={**body, "description": "排水沟堵塞", "token": "f1"},
        )
        again = manager.post("/api/v1/markets/lizhong/problems", json={**body, "token": "f1"})
        other = manager.post(
            "/api/v1/markets/lizhong/problems",
            json={**body, "description": "地面积水", "token": "f1"},
        )
    assert (mine.status_code, theirs.status_code) == (201, 201), theirs.text
    assert mine.json()["id"] != theirs.json()["id"]
    assert again.status_code == 200 and again.json() == {"id": mine.json()["id"], "created": False}
    assert other.status_code == 409 and other.json()["field"] == "token"
    assert count(site, "SELECT count(*) FROM problems") == 2


def test_a_tick_before_its_window_is_a_conflict_and_bad_readings_name_their_field(
    site: Site,
) -> None:
    tomorrow = site.obligation("lizhong", "waste")
    with site.engine.connect() as conn:
        later = conn.execute(
            sa.text("SELECT id FROM obligations WHERE opens_at > :now ORDER BY opens_at LIMIT 1"),
            {"now": site.clock.now()},
        ).scalar_one()
    with site.api("mgr_a") as api:
        early = api.post(f"/api/v1/obligations/{later}/completions", json={})
        missing = api.post(
            f"/api/v1/obligations/{site.obligation('lizhong', 'disinfect', 'veg')}/completions",
            json={},
        )
        unknown_item = api.post(
            f"/api/v1/obligations/{tomorrow}/completions", json={"items": ["nope"]}
        )
    assert early.status_code == 409 and "cannot be completed before then" in early.text
    assert missing.status_code == 422 and missing.json()["field"] == "readings"
    assert unknown_item.status_code == 422 and unknown_item.json()["field"] == "items"


def test_a_field_the_ledger_refuses_is_named_without_reading_the_message(site: Site) -> None:
    with site.api("mgr_a") as manager:
        raised = manager.post(
            "/api/v1/markets/lizhong/problems",
            json={"category": "repair", "description": "x", "deadline": "2026-11-30"},
        )
    pid = raised.json()["id"]
    with site.api("office") as office:
        blank = office.post(f"/api/v1/problems/{pid}/assign", json={"assigned_to": " \u3000 "})
        early = office.post(f"/api/v1/problems/{pid}/verify", json={})
    assert blank.status_code == 422, blank.text
    assert early.status_code == 409 and "field" not in early.json()


def test_json_text_that_cannot_be_utf8_is_refused_naming_its_field(site: Site) -> None:
    raw = '{"category": "repair", "description": "\\udc80", "deadline": "2026-11-30"}'
    with site.api("mgr_a") as api:
        refused = api.post(
            "/api/v1/markets/lizhong/problems",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "description"
    assert count(site, "SELECT count(*) FROM problems") == 0


def test_a_lone_surrogate_is_found_in_any_text_and_real_text_of_any_script_passes() -> None:
    assert not inputs.undecodable("mgr000 bench 0f3a")
    assert not inputs.undecodable("水产区已冲洗消毒 😀")
    assert inputs.undecodable("水产\udc80区")
    assert inputs.undecodable("bench\ud800")
