"""The JSON API through real HTTP: every endpoint's answers, its clear refusals, and the
full authorisation matrix (every role × every endpoint × own and other market), derived
from ``access.ALLOWED`` / ``MARKET_SCOPED`` so the test and the rules cannot drift apart.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from marketcare.domain.access import ALLOWED, MARKET_SCOPED, Action, Principal, Role
from marketcare.ledger import accounts, evidence
from marketcare.ledger import inspections as inspection_ledger
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.models import Completion, User
from marketcare.web import api, api_inspections

from .support.web import ALL_PASS, PASSWORD, USERS, Site, get, http, running_site, sign_in

pytestmark = pytest.mark.heavy(11)

JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 4
UPLOAD_LIMIT = 20_000
SITE_SETTINGS = {"upload_max_bytes": UPLOAD_LIMIT}


@pytest.fixture(scope="module")
def clients(site: Site) -> Iterator[dict[str, httpx.Client]]:
    made = {user: site.api(user) for user in USERS}
    yield made
    for c in made.values():
        c.close()


def problem_in(site: Site, market: str, *, state: str = "open", **extra: Any) -> int:
    """A fresh problem of ``market`` (rectified first when ``state`` asks for it)."""
    now = site.clock.now()
    pid, _ = ledger_problems.add(
        site.engine,
        ledger_problems.NewProblem(
            market_id=market,
            category="sanitation",
            description="排水沟堵塞",
            found_by="office",
            found_at=now,
            deadline=now + timedelta(days=3),
            **extra,
        ),
        now=now,
    )
    if state == "rectified":
        ledger_problems.rectify(site.engine, problem_id=pid, by="mgr", note="已疏通", now=now)
    return pid


def inspection_in(site: Site, market: str) -> int:
    """A fresh inspection of ``market`` (every item passed)."""
    done = inspection_ledger.record(
        site.engine,
        site.schedule.inspection_templates[0],
        inspection_ledger.Submission(market_id=market, by="office", outcomes=ALL_PASS),
        now=site.clock.now(),
    )
    return done.inspection_id


def completions(site: Site, obligation_id: int) -> int:
    with site.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(Completion)
                .where(Completion.obligation_id == obligation_id)
            ).scalar_one()
        )


# ---------------------------------------------------------------- who and where


def test_markets_lists_what_each_role_may_view(clients: dict[str, httpx.Client]) -> None:
    ids = {u: [m["id"] for m in clients[u].get("/api/v1/markets").json()] for u in USERS}
    assert ids == {
        "mgr_a": ["lizhong"],
        "mgr_b": ["xinhua"],
        "office": ["lizhong", "xinhua"],
        "operator": [],
    }
    first = clients["office"].get("/api/v1/markets").json()[0]
    assert first == {
        "id": "lizhong",
        "name": "鲤中农贸市场",
        "sub_district": "鲤中",
        "timezone": "Asia/Shanghai",
    }


def test_me_names_the_caller_and_their_markets(clients: dict[str, httpx.Client]) -> None:
    me = clients["mgr_a"].get("/api/v1/me").json()
    assert me["username"] == "mgr_a" and me["role"] == "manager" and me["markets"] == ["lizhong"]


def test_language_choice_is_kept_and_can_be_cleared(site: Site) -> None:
    with site.api("mgr_b") as c:
        assert c.put("/api/v1/me/language", json={"language": "en"}).json()["language"] == "en"
        assert c.get("/api/v1/me").json()["language"] == "en"
        bad = c.put("/api/v1/me/language", json={"language": "fr"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "language"
        assert c.put("/api/v1/me/language", json={"language": None}).json()["language"] is None


def test_today_history_and_areas_of_a_market(clients: dict[str, httpx.Client]) -> None:
    c = clients["mgr_a"]
    today = c.get("/api/v1/markets/lizhong/today").json()
    assert today["date"] == "2026-11-23" and today["open"]
    history = c.get("/api/v1/markets/lizhong/history", params={"days": 2, "area": "veg"}).json()
    assert history and {r["area"] for r in history} == {"veg"}
    areas = c.get("/api/v1/markets/lizhong/areas").json()
    assert [a["id"] for a in areas] == ["aquatic", "veg"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"days": 0}, "days"),
        ({"days": 93}, "days"),
        ({"days": "x"}, "days"),
        ({"area": "no"}, "area"),
    ],
)
def test_history_refuses_bad_query_naming_the_field(
    clients: dict[str, httpx.Client], params: dict[str, Any], field: str
) -> None:
    r = clients["mgr_a"].get("/api/v1/markets/lizhong/history", params=params)
    assert r.status_code == 422
    body = r.json()
    assert body.get("field", body.get("errors", [{}])[0].get("field")) == field
    assert field in body["detail"]


def test_unknown_market_is_404_even_for_the_office(clients: dict[str, httpx.Client]) -> None:
    assert clients["office"].get("/api/v1/markets/nowhere/today").status_code == 404
    assert clients["office"].get("/api/v1/markets/nowhere/areas").status_code == 404


# ---------------------------------------------------------------- obligations and ticks


def test_obligation_shows_its_checklist_with_the_area_range(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    ob = site.obligation("lizhong", "disinfect", "aquatic")
    body = clients["mgr_a"].get(f"/api/v1/obligations/{ob}").json()
    assert body["id"] == ob and body["area_name"] == "水产区"
    assert body["checklist"]["readings"][0]["range"] == [900, 1200]


def test_an_obligation_names_the_schedule_version_that_made_it(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    ob = site.obligation("lizhong", "disinfect", "aquatic")
    body = clients["mgr_a"].get(f"/api/v1/obligations/{ob}").json()
    with site.engine.connect() as conn:
        version = conn.execute(
            sa.text("SELECT version_id FROM obligations WHERE id = :id"), {"id": ob}
        ).scalar_one()
    assert body["schedule_version"] == version
    page = clients["mgr_a"].get(f"/o/{ob}")
    assert f"Schedule version {version}" in page.text or f"计划版本 {version}" in page.text


def test_unknown_obligation_is_404_and_a_non_number_id_422(
    clients: dict[str, httpx.Client],
) -> None:
    c = clients["office"]
    assert c.get("/api/v1/obligations/999999").status_code == 404
    r = c.get("/api/v1/obligations/abc")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "obligation_id"
    assert c.get(f"/api/v1/obligations/{10**30}").status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"readings": {"chlorine": "lots"}}, "readings.chlorine"),
        ({"readings": [1, 2]}, "readings"),
        ({"items": "washed"}, "items"),
        ({"note": "x" * 2001}, "note"),
        ({"token": "t" * 101}, "token"),
        ({"photos": ["not-a-sha"]}, "photos.0"),
        ({"reading": {"chlorine": 1000}}, "reading"),
    ],
)
def test_tick_with_wrong_field_types_is_422_naming_the_field(
    site: Site, clients: dict[str, httpx.Client], body: dict[str, Any], field: str
) -> None:
    ob = site.obligation("lizhong", "disinfect", "veg")
    r = clients["mgr_a"].post(f"/api/v1/obligations/{ob}/completions", json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == field
    assert completions(site, ob) == 0


def test_tick_refused_by_the_ledger_says_why_and_records_nothing(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    ob = site.obligation("lizhong", "disinfect", "veg")
    r = clients["mgr_a"].post(f"/api/v1/obligations/{ob}/completions", json={})
    assert r.status_code == 422
    assert "missing reading" in r.json()["detail"] and r.json()["field"] == "readings"
    unknown = clients["mgr_a"].post(
        f"/api/v1/obligations/{ob}/completions", json={"readings": {"chlorine": 500, "ph": 7}}
    )
    assert unknown.status_code == 422 and "'ph'" in unknown.json()["detail"]
    photo = clients["mgr_a"].post(
        f"/api/v1/obligations/{ob}/completions",
        json={"readings": {"chlorine": 500}, "photos": ["0" * 64]},
    )
    assert photo.status_code == 422 and photo.json()["field"] == "photos"
    assert completions(site, ob) == 0


def test_out_of_range_reading_fails_the_obligation_and_lists_the_failure(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    ob = site.obligation("xinhua", "disinfect", "meat")
    r = clients["mgr_b"].post(
        f"/api/v1/obligations/{ob}/completions", json={"readings": {"chlorine": 50}}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["state"] == "failed" and body["changed"] is True
    assert body["failures"]["chlorine"]["value"] == 50
    assert body["failures"]["chlorine"]["range"] == [400, 700]
    assert "chlorine=50" in body["message"]


def test_same_token_twice_records_once_and_answers_200_unchanged(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    ob = site.obligation("lizhong", "disinfect", "aquatic")
    body = {"token": "phone-1", "readings": {"chlorine": 1000}, "note": "done"}
    first = clients["mgr_a"].post(f"/api/v1/obligations/{ob}/completions", json=body)
    again = clients["mgr_a"].post(f"/api/v1/obligations/{ob}/completions", json=body)
    assert first.status_code == 201 and first.json()["changed"] is True
    assert first.json()["state"] == "done"
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["completion_id"] == first.json()["completion_id"]
    assert completions(site, ob) == 1
    # already done, a new token: nothing changes either
    other = clients["mgr_a"].post(
        f"/api/v1/obligations/{ob}/completions",
        json={"token": "phone-2", "readings": {"chlorine": 1000}},
    )
    assert other.status_code == 200 and other.json()["changed"] is False
    assert completions(site, ob) == 1
    # a token of one obligation cannot be replayed on another
    waste = site.obligation("lizhong", "waste")
    reused = clients["mgr_a"].post(
        f"/api/v1/obligations/{waste}/completions", json={"token": "phone-1"}
    )
    assert reused.status_code == 409 and reused.json()["field"] == "token"


def test_photo_uploaded_then_attached_to_a_tick_is_served_back(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    c = clients["mgr_b"]
    up = c.post("/api/v1/evidence", files={"file": ("wash.jpg", JPEG, "image/jpeg")})
    assert up.status_code == 201
    sha = up.json()["sha256"]
    assert up.json() == {"sha256": sha, "name": "wash.jpg", "bytes": len(JPEG), "kind": "jpeg"}
    ob = site.obligation("xinhua", "waste")
    r = c.post(f"/api/v1/obligations/{ob}/completions", json={"photos": [sha]})
    assert r.status_code == 201
    shown = c.get(f"/api/v1/obligations/{ob}").json()["completions"][0]["photos"]
    assert [p["sha256"] for p in shown] == [sha]
    photo = c.get(f"/api/v1/obligations/{ob}/photos/{sha}")
    assert photo.status_code == 200 and photo.content == JPEG
    assert photo.headers["content-type"] == "image/jpeg"
    # the office sees it; the other market's manager and other records do not
    assert clients["office"].get(f"/api/v1/obligations/{ob}/photos/{sha}").status_code == 200
    assert clients["mgr_a"].get(f"/api/v1/obligations/{ob}/photos/{sha}").status_code == 404
    other = site.obligation("xinhua", "disinfect", "meat")
    assert c.get(f"/api/v1/obligations/{other}/photos/{sha}").status_code == 404
    assert c.get(f"/api/v1/obligations/{ob}/photos/{'a' * 64}").status_code == 404


def test_oversized_upload_is_413_with_a_message(clients: dict[str, httpx.Client]) -> None:
    big = JPEG + b"\x00" * (UPLOAD_LIMIT + 100_000)
    r = clients["mgr_a"].post("/api/v1/evidence", files={"file": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413
    assert "larger than" in r.json()["detail"] and r.json()["field"] == "file"


def test_oversized_upload_without_content_length_is_413_by_its_real_size(
    site: Site,
) -> None:
    """Chunked, so only the real size can tell."""
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    data = JPEG + b"\x00" * (UPLOAD_LIMIT + 1000)

    def chunks() -> Iterator[bytes]:
        yield head
        yield data
        yield tail

    with site.api("mgr_a") as c:
        r = c.post(
            "/api/v1/evidence",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_text_file_named_jpg_is_415_with_the_reason(clients: dict[str, httpx.Client]) -> None:
    r = clients["mgr_a"].post(
        "/api/v1/evidence", files={"file": ("notes.jpg", b"just some text\n" * 10, "image/jpeg")}
    )
    assert r.status_code == 415
    assert "not a photo" in r.json()["detail"] and "notes.jpg" in r.json()["detail"]


def test_upload_without_the_file_field_is_422(clients: dict[str, httpx.Client]) -> None:
    r = clients["mgr_a"].post("/api/v1/evidence", files={"photo": ("a.jpg", JPEG, "image/jpeg")})
    assert r.status_code == 422 and r.json()["field"] == "file"
    r = clients["mgr_a"].post("/api/v1/evidence", json={"file": "x"})
    assert r.status_code == 422 and r.json()["field"] == "file"


# ---------------------------------------------------------------- problems


def test_problem_reported_listed_and_shown(site: Site, clients: dict[str, httpx.Client]) -> None:
    c = clients["mgr_a"]
    sha = c.post("/api/v1/evidence", files={"file": ("p.jpg", JPEG, "image/jpeg")}).json()["sha256"]
    r = c.post(
        "/api/v1/markets/lizhong/problems",
        json={
            "category": "pest",
            "description": "老鼠出没",
            "area": "veg",
            "deadline": "2026-11-25",
            "photos": [sha],
        },
    )
    assert r.status_code == 201 and r.json()["created"] is True
    pid = r.json()["id"]
    shown = c.get(f"/api/v1/problems/{pid}").json()
    assert shown["found_by"] == "mgr_a" and shown["area"] == "veg"
    assert shown["deadline"] == "2026-11-25T23:59:59+08:00"
    assert [p["sha256"] for p in shown["photos"]] == [sha]
    assert c.get(f"/api/v1/problems/{pid}/photos/{sha}").content == JPEG
    assert clients["mgr_b"].get(f"/api/v1/problems/{pid}/photos/{sha}").status_code == 404
    listed = c.get("/api/v1/markets/lizhong/problems", params={"state": "open"}).json()
    assert pid in [p["id"] for p in listed]
    assert c.get("/api/v1/markets/lizhong/problems", params={"state": "verified"}).json() == []
    assert c.get("/api/v1/markets/lizhong/problems", params={"overdue": "true"}).json() == []


def test_problem_with_the_same_token_is_raised_once(clients: dict[str, httpx.Client]) -> None:
    body = {"category": "repair", "description": "灯坏了", "deadline": "2026-11-30", "token": "f1"}
    first = clients["office"].post("/api/v1/markets/xinhua/problems", json=body)
    again = clients["office"].post("/api/v1/markets/xinhua/problems", json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "created": False}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"category": "fire"}, "category"),
        ({"deadline": "soon"}, "deadline"),
        ({"deadline": "2026-11-20"}, "deadline"),
        ({"deadline": "9999-12-31"}, "deadline"),
        ({"area": "meat"}, "area"),
        ({"description": ""}, "description"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_problem_is_422_naming_the_field_and_nothing_is_raised(
    site: Site, clients: dict[str, httpx.Client], change: dict[str, Any], field: str
) -> None:
    before = clients["office"].get("/api/v1/markets/lizhong/problems").json()
    body = {"category": "order", "description": "占道经营", "deadline": "2026-11-30"} | change
    r = clients["office"].post("/api/v1/markets/lizhong/problems", json=body)
    assert r.status_code == 422
    j = r.json()
    assert j.get("field", j.get("errors", [{}])[0].get("field")) == field
    assert clients["office"].get("/api/v1/markets/lizhong/problems").json() == before


def test_problem_goes_rectified_reopened_assigned_and_verified(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    pid = problem_in(site, "lizhong")
    mgr, office = clients["mgr_a"], clients["office"]
    early = office.post(f"/api/v1/problems/{pid}/verify", json={})
    assert early.status_code == 409 and "cannot verify" in early.json()["detail"]
    r = mgr.post(f"/api/v1/problems/{pid}/rectify", json={"note": "已修复"})
    assert r.status_code == 200 and r.json()["state"] == "rectified"
    again = mgr.post(f"/api/v1/problems/{pid}/rectify", json={"note": "再修"})
    assert again.status_code == 409
    r = office.post(
        f"/api/v1/problems/{pid}/reopen", json={"note": "仍有积水", "deadline": "2026-11-28"}
    )
    assert r.status_code == 200 and r.json()["state"] == "open" and r.json()["reopened"] == 1
    assert r.json()["deadline"] == "2026-11-28T23:59:59+08:00"
    r = office.post(f"/api/v1/problems/{pid}/assign", json={"assigned_to": "王师傅"})
    assert r.status_code == 200 and r.json()["assigned_to"] == "王师傅"
    mgr.post(f"/api/v1/problems/{pid}/rectify", json={"note": "重新疏通"})
    r = office.post(f"/api/v1/problems/{pid}/verify", json={"note": "通过"})
    assert r.status_code == 200 and r.json()["state"] == "verified"
    closed = office.post(f"/api/v1/problems/{pid}/assign", json={"assigned_to": "李"})
    assert closed.status_code == 409


def test_problem_moves_refuse_blank_notes_and_bad_deadlines(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    pid = problem_in(site, "lizhong", state="rectified")
    blank = clients["office"].post(f"/api/v1/problems/{pid}/reopen", json={"note": "  "})
    assert blank.status_code == 422 and blank.json()["errors"][0]["field"] == "note"
    past = clients["office"].post(
        f"/api/v1/problems/{pid}/reopen", json={"note": "x", "deadline": "2026-01-01"}
    )
    assert past.status_code == 422 and past.json()["field"] == "deadline"
    assert clients["office"].get(f"/api/v1/problems/{pid}").json()["state"] == "rectified"
    assert clients["office"].get("/api/v1/problems/99999").status_code == 404


# ---------------------------------------------------------------- the office


def test_dashboard_has_every_market(clients: dict[str, httpx.Client]) -> None:
    body = clients["office"].get("/api/v1/dashboard").json()
    assert [m["market"] for m in body] == ["lizhong", "xinhua"]
    assert {"compliance_today", "overdue_problems"} <= set(body[0])


def test_export_is_an_xlsx_named_after_its_period_and_scope(
    clients: dict[str, httpx.Client],
) -> None:
    r = clients["office"].get("/api/v1/exports/week/2026-11-23", params={"language": "en"})
    assert r.status_code == 200 and r.content[:2] == b"PK"
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert 'filename="marketcare_week_2026-W48_en.xlsx"' in r.headers["content-disposition"]
    own = clients["mgr_a"].get("/api/v1/exports/day/2026-11-23")
    assert own.status_code == 200
    assert "marketcare_day_2026-11-23_lizhong" in own.headers["content-disposition"]


def test_export_refusals(clients: dict[str, httpx.Client]) -> None:
    mgr = clients["mgr_a"]
    assert mgr.get("/api/v1/exports/day/2026-11-23", params={"market": "xinhua"}).status_code == 404
    both = {"market": ["lizhong", "xinhua"]}
    assert mgr.get("/api/v1/exports/day/2026-11-23", params=both).status_code == 404
    assert clients["operator"].get("/api/v1/exports/day/2026-11-23").status_code == 403
    office = clients["office"]
    assert office.get("/api/v1/exports/year/2026-11-23").status_code == 422
    assert office.get("/api/v1/exports/day/23.11.2026").status_code == 422
    far = office.get("/api/v1/exports/month/9999-12-01")
    assert far.status_code == 422 and far.json()["field"] == "day"
    unknown = office.get("/api/v1/exports/day/2026-11-23", params={"market": "nowhere"})
    assert unknown.status_code == 404


def test_outbox_lists_deliveries(clients: dict[str, httpx.Client]) -> None:
    assert clients["operator"].get("/api/v1/outbox").json() == []
    assert clients["office"].get("/api/v1/outbox", params={"state": "failed"}).status_code == 200
    assert clients["office"].get("/api/v1/outbox", params={"state": "lost"}).status_code == 422


# ---------------------------------------------------------------- users and tokens


def test_operator_adds_a_user_who_can_sign_in(site: Site, clients: dict[str, httpx.Client]) -> None:
    op = clients["operator"]
    body = {
        "username": "mgr_c",
        "display_name": "新经理",
        "role": "manager",
        "markets": ["xinhua"],
        "password": "long enough pass",
        "language": "en",
    }
    r = op.post("/api/v1/users", json=body)
    assert r.status_code == 201 and r.json()["markets"] == ["xinhua"]
    assert "mgr_c" in [u["username"] for u in op.get("/api/v1/users").json()]
    dupe = op.post("/api/v1/users", json=body)
    assert dupe.status_code == 422 and dupe.json()["field"] == "username"
    short = op.post("/api/v1/users", json=body | {"username": "mgr_d", "password": "short"})
    assert short.status_code == 422 and short.json()["field"] == "password"
    nomarket = op.post("/api/v1/users", json=body | {"username": "mgr_e", "markets": []})
    assert nomarket.status_code == 422 and nomarket.json()["field"] == "markets"
    role = op.post("/api/v1/users", json=body | {"username": "mgr_f", "role": "king"})
    assert role.status_code == 422 and role.json()["errors"][0]["field"] == "role"
    with site.client() as c:
        sign_in(c, "mgr_c", "long enough pass")
    assert op.post("/api/v1/users/nobody/disable").status_code == 404


def test_a_disabled_users_token_stops_working_and_enabling_restores_it(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    op = clients["operator"]
    accounts.add_user(
        site.engine,
        accounts.NewUser("temp", "临时", Role.MANAGER, PASSWORD, ("lizhong",)),
        now=site.clock.now(),
    )
    with closing(site.client("temp")) as c:
        token = c.post("/api/v1/tokens", json={"name": "phone", "password": PASSWORD}).json()[
            "token"
        ]
    headers = {"Authorization": f"Bearer {token}"}
    with http(site.base, headers=headers) as t:
        assert t.get("/api/v1/me").status_code == 200
        assert op.post("/api/v1/users/temp/disable").json()["disabled"] is True
        assert t.get("/api/v1/me").status_code == 401
        assert op.post("/api/v1/users/temp/enable").json()["disabled"] is False
        assert t.get("/api/v1/me").status_code == 200


def test_a_password_change_ends_the_users_sessions(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    accounts.add_user(
        site.engine,
        accounts.NewUser("temp2", "临时", Role.MANAGER, PASSWORD, ("lizhong",)),
        now=site.clock.now(),
    )
    with closing(site.client("temp2")) as c:
        assert c.get("/api/v1/me").status_code == 200
        op = clients["operator"]
        short = op.post("/api/v1/users/temp2/password", json={"password": "x"})
        assert short.status_code == 422 and short.json()["field"] == "password"
        assert c.get("/api/v1/me").status_code == 200
        r = op.post("/api/v1/users/temp2/password", json={"password": "a new long password"})
        assert r.status_code == 200
        assert c.get("/api/v1/me").status_code == 401
    with site.client() as c:
        sign_in(c, "temp2", "a new long password")


def test_tokens_are_made_listed_and_revoked_by_their_owner_only(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    made = clients["mgr_a"].post("/api/v1/tokens", json={"name": "scale", "password": PASSWORD})
    assert made.status_code == 201
    tid, token = made.json()["id"], made.json()["token"]
    listed = clients["mgr_a"].get("/api/v1/tokens").json()
    assert "scale" in [t["name"] for t in listed] and "token" not in listed[0]
    assert clients["mgr_b"].delete(f"/api/v1/tokens/{tid}").status_code == 404
    with http(site.base, headers={"Authorization": f"Bearer {token}"}) as t:
        assert t.get("/api/v1/me").json()["username"] == "mgr_a"
        assert clients["mgr_a"].delete(f"/api/v1/tokens/{tid}").status_code == 200
        assert t.get("/api/v1/me").status_code == 401
    assert clients["mgr_a"].delete(f"/api/v1/tokens/{tid}").status_code == 404
    blank = clients["mgr_a"].post("/api/v1/tokens", json={"name": "  ", "password": PASSWORD})
    assert blank.status_code == 422 and blank.json()["field"] == "name"


# ---------------------------------------------------------------- CSRF


def test_cookie_session_write_needs_the_csrf_header_but_a_token_does_not(site: Site) -> None:
    body = {"category": "order", "description": "占道", "deadline": "2026-11-30"}
    with closing(site.client("mgr_a")) as c:
        header = c.headers.pop("X-CSRF-Token")
        refused = c.post("/api/v1/markets/lizhong/problems", json=body)
        assert refused.status_code == 403 and "reload" in refused.json()["detail"]
        c.headers["X-CSRF-Token"] = "forged"
        assert c.post("/api/v1/markets/lizhong/problems", json=body).status_code == 403
        c.headers["X-CSRF-Token"] = header
        assert c.post("/api/v1/markets/lizhong/problems", json=body).status_code == 201
        assert c.get("/api/v1/me").status_code == 200  # reads need no token
    with site.api("mgr_a") as t:
        assert t.post("/api/v1/markets/lizhong/problems", json=body).status_code == 201


# ---------------------------------------------------------------- the authorisation matrix

OWN = {"mgr_a": "lizhong", "mgr_b": "xinhua"}
MARKETS = ("lizhong", "xinhua")
TICK_AREA = {"lizhong": "veg", "xinhua": "meat"}
Call = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Route:
    """One API route: who may call it (any of ``actions``; none: anyone signed in) and
    how to build a valid request against ``market`` (fresh records where it writes)."""

    method: str
    path: str
    actions: tuple[Action, ...]
    build: Callable[[Site, str, str], Call]
    #: the request is about one market's records (so the market scope applies)
    market_bound: bool = True

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _user_id(site: Site, username: str) -> int:
    with site.engine.connect() as conn:
        return int(conn.execute(sa.select(User.id).where(User.username == username)).scalar_one())


_serial = itertools.count(1)


def _fresh_user(site: Site) -> str:
    name = f"victim{next(_serial)}"
    accounts.add_user(
        site.engine,
        accounts.NewUser(name, "受测", Role.OFFICE, PASSWORD),
        now=site.clock.now(),
    )
    return name


#: per matrix site (by its address): the user every refused users request names
_bystanders: dict[str, str] = {}


def _victim(site: Site, caller: str) -> str:
    """The user a users route acts on. A fresh one for a caller who may manage users (the
    request changes that user); for any other caller, one bystander made once per site:
    such a request is refused by role before the user is looked at (were it not, that case
    fails on its status). Each new user is an Argon2 hash, the matrix's biggest cost."""
    role, _markets = USERS[caller]
    if role in ALLOWED[Action.MANAGE_USERS]:
        return _fresh_user(site)
    if site.base not in _bystanders:
        _bystanders[site.base] = _fresh_user(site)
    return _bystanders[site.base]


def _someones_token(site: Site, caller: str) -> Call:
    """A token of another user, to revoke as an operator."""
    name = _victim(site, caller)
    tid, _ = accounts.create_token(site.engine, _user_id(site, name), "x", now=site.clock.now())
    return f"{V}/users/{name}/tokens/{tid}", {}


def _photo_on_obligation(site: Site, market: str) -> Call:
    """The waste obligation of ``market`` carries a photo (ticked once, the first time)."""
    record = evidence.store_bytes("w.jpg", JPEG, site.settings.evidence_dir)
    ob = site.obligation(market, "waste")
    ledger_tick.tick(
        site.engine,
        obligation_id=ob,
        by="mgr",
        now=site.clock.now(),
        token=f"matrix-photo-{market}",
        evidence=[record],
    )
    return f"/api/v1/obligations/{ob}/photos/{record['sha256']}", {}


def _photo_on_problem(site: Site, market: str) -> Call:
    record = evidence.store_bytes("p.jpg", JPEG, site.settings.evidence_dir)
    pid = problem_in(site, market, evidence=[record])
    return f"/api/v1/problems/{pid}/photos/{record['sha256']}", {}


V = "/api/v1"
ROUTES: list[Route] = [
    Route("GET", f"{V}/me", (), lambda s, u, m: (f"{V}/me", {}), False),
    Route(
        "PUT",
        f"{V}/me/language",
        (),
        lambda s, u, m: (f"{V}/me/language", {"json": {"language": None}}),
        False,
    ),
    Route("GET", f"{V}/markets", (), lambda s, u, m: (f"{V}/markets", {}), False),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/today",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/markets/{m}/today", {}),
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/history",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/markets/{m}/history", {"params": {"days": 3}}),
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/areas",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/markets/{m}/areas", {}),
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/calendar",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/markets/{m}/calendar", {}),
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/problems",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/markets/{m}/problems", {}),
    ),
    Route(
        "POST",
        f"{V}/markets/{{market_id}}/problems",
        (Action.REPORT_PROBLEM,),
        lambda s, u, m: (
            f"{V}/markets/{m}/problems",
            {"json": {"category": "order", "description": "x", "deadline": "2026-12-01"}},
        ),
    ),
    Route(
        "GET",
        f"{V}/obligations/{{obligation_id}}",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/obligations/{s.obligation(m, 'disinfect', TICK_AREA[m])}", {}),
    ),
    Route(
        "POST",
        f"{V}/obligations/{{obligation_id}}/completions",
        (Action.TICK,),
        lambda s, u, m: (
            f"{V}/obligations/{s.obligation(m, 'disinfect', TICK_AREA[m])}/completions",
            {"json": {"readings": {"chlorine": 500}}},
        ),
    ),
    Route(
        "GET",
        f"{V}/obligations/{{obligation_id}}/photos/{{sha256}}",
        (Action.VIEW_MARKET,),
        lambda s, u, m: _photo_on_obligation(s, m),
    ),
    Route(
        "POST",
        f"{V}/evidence",
        (Action.TICK, Action.RECTIFY, Action.REPORT_PROBLEM),
        lambda s, u, m: (f"{V}/evidence", {"files": {"file": ("a.jpg", JPEG, "image/jpeg")}}),
        False,
    ),
    Route(
        "GET",
        f"{V}/problems/{{problem_id}}",
        (Action.VIEW_MARKET,),
        lambda s, u, m: (f"{V}/problems/{problem_in(s, m)}", {}),
    ),
    Route(
        "GET",
        f"{V}/problems/{{problem_id}}/photos/{{sha256}}",
        (Action.VIEW_MARKET,),
        lambda s, u, m: _photo_on_problem(s, m),
    ),
    Route(
        "POST",
        f"{V}/problems/{{problem_id}}/rectify",
        (Action.RECTIFY,),
        lambda s, u, m: (f"{V}/problems/{problem_in(s, m)}/rectify", {"json": {"note": "好了"}}),
    ),
    Route(
        "POST",
        f"{V}/problems/{{problem_id}}/assign",
        (Action.ASSIGN,),
        lambda s, u, m: (
            f"{V}/problems/{problem_in(s, m)}/assign",
            {"json": {"assigned_to": "王"}},
        ),
    ),
    Route(
        "POST",
        f"{V}/problems/{{problem_id}}/verify",
        (Action.VERIFY,),
        lambda s, u, m: (
            f"{V}/problems/{problem_in(s, m, state='rectified')}/verify",
            {"json": {}},
        ),
    ),
    Route(
        "POST",
        f"{V}/problems/{{problem_id}}/reopen",
        (Action.VERIFY,),
        lambda s, u, m: (
            f"{V}/problems/{problem_in(s, m, state='rectified')}/reopen",
            {"json": {"note": "未通过"}},
        ),
    ),
    Route(
        "GET", f"{V}/dashboard", (Action.DASHBOARD,), lambda s, u, m: (f"{V}/dashboard", {}), False
    ),
    Route(
        "GET",
        f"{V}/exports/{{period}}/{{day}}",
        (Action.EXPORT,),
        lambda s, u, m: (f"{V}/exports/day/2026-11-22", {"params": {"market": m}}),
    ),
    Route("GET", f"{V}/outbox", (Action.OUTBOX,), lambda s, u, m: (f"{V}/outbox", {}), False),
    Route("GET", f"{V}/users", (Action.MANAGE_USERS,), lambda s, u, m: (f"{V}/users", {}), False),
    Route(
        "POST",
        f"{V}/users",
        (Action.MANAGE_USERS,),
        lambda s, u, m: (
            f"{V}/users",
            {
                "json": {
                    "username": f"made{next(_serial)}",
                    "display_name": "新人",
                    "role": "office",
                    "password": PASSWORD,
                }
            },
        ),
        False,
    ),
    Route(
        "POST",
        f"{V}/users/{{username}}/disable",
        (Action.MANAGE_USERS,),
        lambda s, u, m: (f"{V}/users/{_victim(s, u)}/disable", {}),
        False,
    ),
    Route(
        "POST",
        f"{V}/users/{{username}}/enable",
        (Action.MANAGE_USERS,),
        lambda s, u, m: (f"{V}/users/{_victim(s, u)}/enable", {}),
        False,
    ),
    Route(
        "POST",
        f"{V}/users/{{username}}/password",
        (Action.MANAGE_USERS,),
        lambda s, u, m: (
            f"{V}/users/{_victim(s, u)}/password",
            {"json": {"password": "another long one"}},
        ),
        False,
    ),
    Route(
        "GET",
        f"{V}/users/{{username}}/tokens",
        (Action.MANAGE_USERS,),
        lambda s, u, m: (f"{V}/users/{_victim(s, u)}/tokens", {}),
        False,
    ),
    Route(
        "DELETE",
        f"{V}/users/{{username}}/tokens/{{token_id}}",
        (Action.MANAGE_USERS,),
        lambda s, u, m: _someones_token(s, u),
        False,
    ),
    Route(
        "GET",
        f"{V}/inspection-templates",
        (Action.VIEW_INSPECTIONS,),
        lambda s, u, m: (f"{V}/inspection-templates", {}),
        False,
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/inspection-sheet",
        (Action.INSPECT,),
        lambda s, u, m: (f"{V}/markets/{m}/inspection-sheet", {}),
    ),
    Route(
        "POST",
        f"{V}/markets/{{market_id}}/inspections",
        (Action.INSPECT,),
        lambda s, u, m: (f"{V}/markets/{m}/inspections", {"json": {"outcomes": ALL_PASS}}),
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/inspections",
        (Action.VIEW_INSPECTIONS,),
        lambda s, u, m: (f"{V}/markets/{m}/inspections", {}),
    ),
    Route(
        "GET",
        f"{V}/inspections/{{inspection_id}}",
        (Action.VIEW_INSPECTIONS,),
        lambda s, u, m: (f"{V}/inspections/{inspection_in(s, m)}", {}),
    ),
    Route(
        "GET",
        f"{V}/markets/{{market_id}}/scores",
        (Action.VIEW_INSPECTIONS,),
        lambda s, u, m: (f"{V}/markets/{m}/scores", {}),
    ),
    Route("GET", f"{V}/ranking", (Action.RANKING,), lambda s, u, m: (f"{V}/ranking", {}), False),
    Route(
        "GET",
        f"{V}/bulletins/{{period}}/{{day}}",
        (Action.RANKING,),
        lambda s, u, m: (f"{V}/bulletins/week/2026-11-23", {}),
        False,
    ),
    Route("GET", f"{V}/tokens", (), lambda s, u, m: (f"{V}/tokens", {}), False),
    Route(
        "POST",
        f"{V}/tokens",
        (),
        lambda s, u, m: (f"{V}/tokens", {"json": {"name": "matrix", "password": PASSWORD}}),
        False,
    ),
    Route(
        "DELETE",
        f"{V}/tokens/{{token_id}}",
        (),
        lambda s, u, m: (
            f"{V}/tokens/{accounts.create_token(s.engine, _user_id(s, u), 'x', now=s.clock.now())[0]}",
            {},
        ),
        False,
    ),
]


def expected(user: str, route: Route, market: str) -> int | None:
    """What ``access`` says: None when allowed, else 403 (by role) or 404 (other market)."""
    role, markets = USERS[user]
    who = Principal(0, user, user, role, frozenset(markets))
    if route.actions and not any(role in ALLOWED[a] for a in route.actions):
        return 403
    scoped = route.market_bound and any(a in MARKET_SCOPED for a in route.actions)
    if scoped and not who.all_markets and market not in who.markets:
        return 404
    return None


@pytest.fixture(scope="module")
def matrix_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("matrix")) as s:
        yield s


CASES = [
    pytest.param(user, route, market, id=f"{user}-{market}-{route.id}")
    for route in ROUTES
    for user in ("mgr_a", "office", "operator")
    for market in MARKETS
]


@pytest.mark.parametrize(("user", "route", "market"), CASES)
def test_authorisation_matrix(matrix_site: Site, user: str, route: Route, market: str) -> None:
    url, kwargs = route.build(matrix_site, user, market)
    with matrix_site.api(user) as c:
        r = c.request(route.method, url, **kwargs)
    want = expected(user, route, market)
    if want is None:
        assert 200 <= r.status_code < 300, (r.status_code, r.text[:300])
    else:
        assert r.status_code == want, (r.status_code, r.text[:300])


@pytest.mark.parametrize("route", ROUTES, ids=[r.id for r in ROUTES])
def test_every_api_route_needs_sign_in(matrix_site: Site, route: Route) -> None:
    url, kwargs = route.build(matrix_site, "office", "lizhong")
    with http(matrix_site.base) as c:
        r = c.request(route.method, url, **kwargs)
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert r.headers["www-authenticate"] == "Bearer"


def test_matrix_covers_every_api_route(matrix_site: Site) -> None:
    """A new endpoint without a row here fails this test (schema and the app's routes)."""
    listed = {(r.method, r.path) for r in ROUTES}
    schema = get(matrix_site.base + "/api/openapi.json").json()
    documented = {
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        if path.startswith("/api/v1")
        for method in ops
    }
    assert documented == listed
    # and the router itself, in case a route is ever hidden from the schema
    routed = {
        (method, r.path)
        for r in [*api.router.routes, *api_inspections.router.routes]
        if isinstance(r, APIRoute)
        for method in r.methods or ()
    }
    assert routed == listed


def _answer(r: httpx.Response, *masked: str) -> tuple[int, list[tuple[str, str]], Any]:
    """What a client sees of an answer (the Date header aside), ``masked`` fields blanked
    (and then its length too: two ids need not have as many digits)."""
    body = r.json()
    for name in masked:
        body[name] = "…"
    aside = {"date", "content-length"} if masked else {"date"}
    headers = [(k, v) for k, v in r.headers.multi_items() if k not in aside]
    return r.status_code, headers, body


def test_a_tick_answers_the_same_by_the_shortcut_and_by_the_route(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    """``api.TickShortcut`` takes a plain JSON tick of a known token; the same request
    with ``; charset=utf-8`` in its content type goes through FastAPI's route. Both give
    the same status, headers and body: recorded, the same token again, refused by the
    ledger, another market's record."""
    mgr = clients["mgr_a"]
    routed = {"Content-Type": "application/json; charset=utf-8"}

    def both(ob: int, body: dict[str, Any], *masked: str) -> tuple[Any, Any]:
        path = f"/api/v1/obligations/{ob}/completions"
        taken = api.TickShortcut.taken
        short = mgr.post(
            path, content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert api.TickShortcut.taken == taken + 1
        route = mgr.post(path, content=json.dumps(body), headers=routed)
        assert api.TickShortcut.taken == taken + 1
        return _answer(short, *masked), _answer(route, *masked)

    mgr.get("/api/v1/markets")  # the token is known from now on (the shortcut needs that)
    veg, aquatic = (site.obligation("lizhong", "disinfect", a) for a in ("veg", "aquatic"))
    waste = site.obligation("lizhong", "waste")
    taken = api.TickShortcut.taken
    first = mgr.post(
        f"/api/v1/obligations/{veg}/completions",
        content=json.dumps({"token": "short", "readings": {"chlorine": 500}}),
        headers={"Content-Type": "application/json"},
    )
    second = mgr.post(
        f"/api/v1/obligations/{waste}/completions",
        content=json.dumps({"token": "route"}),
        headers=routed,
    )
    assert api.TickShortcut.taken == taken + 1
    assert first.status_code == 201 and first.json()["state"] == "done"
    ids = ("obligation_id", "completion_id")
    assert _answer(first, *ids) == _answer(second, *ids)
    # the same submission again, answered 200 either way
    short, route = both(veg, {"token": "short", "readings": {"chlorine": 500}})
    assert short == route and short[0] == 200
    # refused by the ledger: a missing reading, a token of another obligation
    short, route = both(aquatic, {})
    assert short == route and short[0] == 422
    short, route = both(aquatic, {"token": "short"})
    assert short == route and short[0] == 409
    # another market's record: the same 404 as a missing one
    short, route = both(site.obligation("xinhua", "waste"), {})
    assert short == route and short[0] == 404
    assert completions(site, veg) == 1 and completions(site, aquatic) == 0
    # a token nobody has: the same 401
    mgr.headers["Authorization"] = "Bearer mc_not-a-token"
    try:
        short, route = both(aquatic, {"readings": {"chlorine": 1000}})
    finally:
        mgr.headers["Authorization"] = f"Bearer {site.tokens['mgr_a']}"
    assert short == route and short[0] == 401


def test_a_tick_the_shortcut_cannot_take_goes_to_the_route_with_its_body(
    site: Site, clients: dict[str, httpx.Client]
) -> None:
    """An unknown field, an id out of range, a signed-in page's request: the route
    answers, with the body the shortcut read given to it again."""
    ob = site.obligation("lizhong", "disinfect", "veg")
    taken = api.TickShortcut.taken
    mgr = clients["mgr_a"]
    typo = mgr.post(f"/api/v1/obligations/{ob}/completions", json={"reading": {}})
    assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "reading"
    huge = mgr.post(f"/api/v1/obligations/{2**63}/completions", json={})
    assert huge.status_code == 422
    # a session's request (its CSRF token is the route's to check): the ledger's refusal
    page = site.session("mgr_a")
    missing = page.post(f"/api/v1/obligations/{ob}/completions", json={"readings": {}})
    assert missing.status_code == 422 and "missing reading" in missing.json()["detail"]
    assert api.TickShortcut.taken == taken
    assert completions(site, ob) == 0
