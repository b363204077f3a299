"""The manager's pages through real HTTP: the board, the checklist form, history, problems,
the account and photos. Every write is a plain form post (no JavaScript), as on a phone."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from marketcare.ledger import problems as ledger_problems
from marketcare.ledger.models import Completion, Obligation, ProblemRow
from tests.support.web import PASSWORD, Site

#: the smallest thing the evidence store takes for a JPEG (it sniffs the first bytes)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200
LIMIT = 10_000
SITE_SETTINGS = {"upload_max_bytes": LIMIT}


def form_fields(client: httpx.Client, path: str, action: str) -> dict[str, str]:
    """The hidden fields (csrf_token, token) of the form posting to ``action`` on a page."""
    page = client.get(path)
    assert page.status_code == 200, page.text[:300]
    start = page.text.index(f'action="{action}')
    form = page.text[start : page.text.index("</form>", start)]
    return dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form))


def post_form(
    client: httpx.Client,
    path: str,
    data: dict[str, Any],
    photo: tuple[str, bytes] | None = None,
) -> httpx.Response:
    """A multipart form post as a browser makes it (csrf_token in the form, no header)."""
    files = (
        {"photo": (photo[0], photo[1], "application/octet-stream")}
        if photo
        else {"photo": ("", b"", "application/octet-stream")}
    )
    saved = client.headers.pop("X-CSRF-Token", None)
    try:
        return client.post(path, data=data, files=files)
    finally:
        if saved is not None:
            client.headers["X-CSRF-Token"] = saved


def completions(site: Site, obligation_id: int) -> list[Any]:
    with site.engine.connect() as conn:
        return conn.execute(
            sa.select(Completion).where(Completion.obligation_id == obligation_id)
        ).all()


def state_of(site: Site, obligation_id: int) -> str:
    with site.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(Obligation.state).where(Obligation.id == obligation_id)
            ).scalar_one()
        )


def make_problem(site: Site, market: str = "lizhong") -> int:
    """A problem the office found in ``market`` two days ago, due in three days."""
    now = site.clock.now()
    pid, _ = ledger_problems.add(
        site.engine,
        ledger_problems.NewProblem(
            market_id=market,
            category="sanitation",
            description="水产区排水沟积水",
            found_by="office",
            found_at=now - timedelta(days=2),
            deadline=now + timedelta(days=3),
        ),
        now=now,
    )
    return pid


def problems(site: Site) -> list[Any]:
    with site.engine.connect() as conn:
        return conn.execute(sa.select(ProblemRow).order_by(ProblemRow.id)).all()


def tick(
    client: httpx.Client,
    obligation_id: int,
    fields: dict[str, Any],
    photo: tuple[str, bytes] | None = None,
) -> httpx.Response:
    hidden = form_fields(client, f"/o/{obligation_id}", f"/o/{obligation_id}")
    return post_form(client, f"/o/{obligation_id}", {**hidden, **fields}, photo)


def test_the_board_lists_what_is_open_with_a_link_to_each_checklist(
    site: Site, mgr_a: httpx.Client
) -> None:
    page = mgr_a.get("/m/lizhong")
    assert page.status_code == 200
    for area in ("aquatic", "veg"):
        assert f'href="/o/{site.obligation("lizhong", "disinfect", area)}"' in page.text
    assert f'href="/o/{site.obligation("lizhong", "waste")}"' in page.text
    assert "休市清洗消毒" in page.text and "水产区" in page.text and "20:30" in page.text
    assert 'href="/m/lizhong/history"' in page.text and 'href="/m/lizhong/problems"' in page.text
    assert f'href="/o/{site.obligation("xinhua", "disinfect", "meat")}"' not in page.text


def test_the_checklist_shows_the_required_range_and_a_fresh_token(
    mgr_a: httpx.Client, site: Site
) -> None:
    oid = site.obligation("lizhong", "disinfect", "aquatic")
    page = mgr_a.get(f"/o/{oid}")
    assert "900–1200 mg/L" in page.text
    assert 'accept="image/*" capture="environment"' in page.text
    first = form_fields(mgr_a, f"/o/{oid}", f"/o/{oid}")["token"]
    second = form_fields(mgr_a, f"/o/{oid}", f"/o/{oid}")["token"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_ticking_through_the_form_records_a_completion_by_the_signed_in_user(
    site: Site, mgr_a: httpx.Client
) -> None:
    oid = site.obligation("lizhong", "disinfect", "veg")
    response = tick(
        mgr_a,
        oid,
        {"item": "washed", "reading_chlorine": "500", "note": "地面冲洗"},
        ("p.jpg", JPEG),
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"/o/{oid}?done=")
    [done] = completions(site, oid)
    assert (done.by, done.outcome, done.readings, done.note) == (
        "mgr_a",
        "done",
        {"chlorine": 500.0},
        "地面冲洗",
    )
    assert done.evidence["items"][0]["kind"] == "jpeg"
    page = mgr_a.get(response.headers["location"])
    assert "已记录，按时完成" in page.text and "mgr_a" in page.text


def test_an_out_of_range_reading_is_recorded_as_failed_and_flagged_with_its_range(
    site: Site, mgr_a: httpx.Client
) -> None:
    oid = site.obligation("lizhong", "disinfect", "aquatic")
    response = tick(
        mgr_a, oid, {"item": "washed", "reading_chlorine": "500", "confirm_failed": "1"}
    )
    assert response.status_code == 303
    assert state_of(site, oid) == "failed"
    page = mgr_a.get(response.headers["location"])
    flagged = re.search(r'<p class="flash error"[^>]*>(.*?)</p>', page.text, re.S)
    assert flagged is not None
    assert "500" in flagged.group(1) and "900–1200 mg/L" in flagged.group(1)
    assert "重新" in flagged.group(1)
    assert f'action="/o/{oid}"' in page.text  # the form stays to redo it
    redo = tick(mgr_a, oid, {"item": "washed", "reading_chlorine": "1000"})
    assert redo.status_code == 303 and state_of(site, oid) == "done"
    assert [c.outcome for c in completions(site, oid)] == ["failed", "done"]


def test_a_reading_that_is_not_a_number_is_refused_at_its_field_and_nothing_is_recorded(
    site: Site, mgr_b: httpx.Client
) -> None:
    oid = site.obligation("xinhua", "disinfect", "meat")
    response = tick(mgr_b, oid, {"item": "washed", "reading_chlorine": "abc"})
    assert response.status_code == 400
    assert re.search(r'id="reading_chlorine-error">[^<]*abc', response.text)
    assert 'value="abc"' in response.text  # what was typed is kept to correct it
    assert completions(site, oid) == [] and state_of(site, oid) == "open"


def test_an_unticked_item_is_refused_and_nothing_is_recorded(
    site: Site, mgr_b: httpx.Client
) -> None:
    oid = site.obligation("xinhua", "disinfect", "meat")
    response = tick(mgr_b, oid, {"reading_chlorine": "500"})
    assert response.status_code == 400 and "field-error" in response.text
    assert completions(site, oid) == []


def test_posting_the_same_form_twice_records_once(site: Site, mgr_b: httpx.Client) -> None:
    oid = site.obligation("xinhua", "disinfect", "meat")
    hidden = form_fields(mgr_b, f"/o/{oid}", f"/o/{oid}")
    data = {**hidden, "item": "washed", "reading_chlorine": "550"}
    first = post_form(mgr_b, f"/o/{oid}", data)
    second = post_form(mgr_b, f"/o/{oid}", data)
    assert first.status_code == second.status_code == 303
    assert len(completions(site, oid)) == 1


def test_a_manager_cannot_reach_another_markets_board_checklist_or_problem(
    site: Site, mgr_a: httpx.Client, office: httpx.Client
) -> None:
    other = site.obligation("xinhua", "waste")
    hidden = form_fields(office, "/m/xinhua/problems", "/m/xinhua/problems")
    post_form(
        office,
        "/m/xinhua/problems",
        {**hidden, "category": "repair", "description": "下水道堵塞", "deadline": "2026-11-30"},
    )
    theirs = next(p.id for p in problems(site) if p.market_id == "xinhua")
    for path in (
        "/m/xinhua",
        f"/o/{other}",
        "/m/xinhua/history",
        "/m/xinhua/problems",
        f"/p/{theirs}",
        "/o/999999",
        "/p/999999",
        "/m/nowhere",
    ):
        assert mgr_a.get(path).status_code == 404, path
    token = form_fields(mgr_a, "/account", "/logout")["csrf_token"]
    refused = post_form(mgr_a, f"/o/{other}", {"csrf_token": token, "item": "cleared"})
    assert refused.status_code == 404 and completions(site, other) == []
    refused = post_form(mgr_a, f"/p/{theirs}/rectify", {"csrf_token": token, "note": "修好了"})
    assert refused.status_code == 404
    refused = post_form(
        mgr_a,
        "/m/xinhua/problems",
        {"csrf_token": token, "category": "repair", "description": "x", "deadline": "2026-11-30"},
    )
    assert refused.status_code == 404
    assert [p.state for p in problems(site) if p.market_id == "xinhua"] == ["open"]


def test_a_problem_reported_through_the_form_appears_in_the_list_and_can_be_rectified(
    site: Site, mgr_a: httpx.Client
) -> None:
    hidden = form_fields(mgr_a, "/m/lizhong/problems", "/m/lizhong/problems")
    data = {
        **hidden,
        "category": "sanitation",
        "area": "aquatic",
        "description": "水产区排水沟积水",
        "deadline": "2026-11-25",
    }
    response = post_form(
        mgr_a, "/m/lizhong/problems", data, ("drain.png", b"\x89PNG\r\n\x1a\n" + b"0" * 50)
    )
    assert response.status_code == 303
    again = post_form(mgr_a, "/m/lizhong/problems", data)  # a double submit records once
    assert again.status_code == 303
    [problem] = [p for p in problems(site) if p.market_id == "lizhong"]
    assert (problem.found_by, problem.area_id, problem.state) == ("mgr_a", "aquatic", "open")
    assert problem.deadline.isoformat().startswith("2026-11-25T15:59:59")  # end of day in Shanghai
    listing = mgr_a.get("/m/lizhong/problems")
    assert "水产区排水沟积水" in listing.text and f'href="/p/{problem.id}"' in listing.text
    assert "2026-11-25 23:59" in listing.text

    empty = post_form(
        mgr_a,
        f"/p/{problem.id}/rectify",
        {**form_fields(mgr_a, f"/p/{problem.id}", f"/p/{problem.id}/rectify"), "note": ""},
    )
    assert empty.status_code == 400 and "field-error" in empty.text
    hidden = form_fields(mgr_a, f"/p/{problem.id}", f"/p/{problem.id}/rectify")
    done = post_form(
        mgr_a, f"/p/{problem.id}/rectify", {**hidden, "note": "已疏通排水沟"}, ("after.jpg", JPEG)
    )
    assert done.status_code == 303
    [problem] = [p for p in problems(site) if p.market_id == "lizhong"]
    assert (problem.state, problem.rectified_by, problem.rectify_note) == (
        "rectified",
        "mgr_a",
        "已疏通排水沟",
    )
    page = mgr_a.get(f"/p/{problem.id}")
    assert "已疏通排水沟" in page.text
    assert f'action="/p/{problem.id}/rectify"' not in page.text


def test_a_problem_form_with_bad_fields_names_each_field_and_records_nothing(
    site: Site, mgr_a: httpx.Client
) -> None:
    before = len(problems(site))
    hidden = form_fields(mgr_a, "/m/lizhong/problems", "/m/lizhong/problems")
    response = post_form(
        mgr_a,
        "/m/lizhong/problems",
        {**hidden, "category": "weather", "area": "roof", "description": " ", "deadline": "soon"},
    )
    assert response.status_code == 400
    assert response.text.count('class="field-error"') == 4
    assert len(problems(site)) == before


def test_the_office_sees_its_forms_on_a_problem_and_the_manager_does_not(
    site: Site, mgr_a: httpx.Client, office: httpx.Client
) -> None:
    pid = make_problem(site)
    ledger_problems.rectify(
        site.engine, problem_id=pid, by="mgr_a", note="已疏通", now=site.clock.now()
    )
    page = office.get(f"/p/{pid}")
    for action in ("verify", "reopen", "assign"):
        assert f'action="/p/{pid}/{action}"' in page.text
    assert 'name="assigned_to"' in page.text
    mine = mgr_a.get(f"/p/{pid}")
    assert f'action="/p/{pid}/verify"' not in mine.text


def test_a_form_post_without_the_csrf_token_is_refused_and_changes_nothing(
    site: Site, mgr_a: httpx.Client
) -> None:
    oid = site.obligation("lizhong", "waste")
    hidden = form_fields(mgr_a, f"/o/{oid}", f"/o/{oid}")
    del hidden["csrf_token"]
    response = post_form(mgr_a, f"/o/{oid}", {**hidden, "item": "cleared"})
    assert response.status_code == 403
    forged = post_form(mgr_a, f"/o/{oid}", {**hidden, "item": "cleared", "csrf_token": "x" * 43})
    assert forged.status_code == 403
    assert completions(site, oid) == []
    before = len(problems(site))
    response = post_form(
        mgr_a,
        "/m/lizhong/problems",
        {"category": "repair", "description": "x", "deadline": "2026-12-01"},
    )
    assert response.status_code == 403 and len(problems(site)) == before


def test_an_oversized_or_non_image_photo_is_refused_with_a_clear_message(
    site: Site, mgr_a: httpx.Client
) -> None:
    oid = site.obligation("lizhong", "waste")
    big = tick(mgr_a, oid, {"item": "cleared"}, ("big.jpg", JPEG + b"\x00" * LIMIT))
    assert big.status_code == 413
    assert re.search(r'<p class="field-error" id="photo-error">[^<]*0\.01 MB', big.text)
    text = tick(mgr_a, oid, {"item": "cleared"}, ("notes.jpg", b"just some text, not a picture"))
    assert text.status_code == 400
    assert re.search(r'<p class="field-error" id="photo-error">[^<]*JPEG', text.text)
    assert completions(site, oid) == [] and state_of(site, oid) == "open"
    before = len(problems(site))
    hidden = form_fields(mgr_a, "/m/lizhong/problems", "/m/lizhong/problems")
    response = post_form(
        mgr_a,
        "/m/lizhong/problems",
        {**hidden, "category": "repair", "description": "灯坏了", "deadline": "2026-12-01"},
        ("x.gif", b"GIF89a" + b"0" * 30),
    )
    assert response.status_code == 400 and 'id="photo-error"' in response.text
    assert len(problems(site)) == before


def test_a_photo_is_served_only_to_those_who_may_see_its_market(
    site: Site, mgr_a: httpx.Client, mgr_b: httpx.Client, office: httpx.Client
) -> None:
    oid = site.obligation("lizhong", "disinfect", "veg")
    ticked = tick(mgr_a, oid, {"item": "washed", "reading_chlorine": "500"}, ("p.jpg", JPEG))
    assert ticked.status_code == 303
    sha = completions(site, oid)[0].evidence["items"][0]["sha256"]
    assert f"/evidence/{sha}" in mgr_a.get(f"/o/{oid}").text
    mine = mgr_a.get(f"/evidence/{sha}")
    assert mine.status_code == 200 and mine.content == JPEG
    assert mine.headers["content-type"] == "image/jpeg"
    assert office.get(f"/evidence/{sha}").status_code == 200
    assert mgr_b.get(f"/evidence/{sha}").status_code == 404
    assert mgr_a.get(f"/evidence/{'0' * 64}").status_code == 404
    assert mgr_a.get("/evidence/..%2F..%2Fledger.db").status_code == 404


def test_history_lists_past_days_and_filters_by_area(site: Site, mgr_a: httpx.Client) -> None:
    page = mgr_a.get("/m/lizhong/history")
    assert page.status_code == 200
    assert "<h2>2026-11-23</h2>" in page.text
    veg = site.obligation("lizhong", "disinfect", "veg")
    aquatic = site.obligation("lizhong", "disinfect", "aquatic")
    only = mgr_a.get("/m/lizhong/history", params={"area": "aquatic"})
    assert f'href="/o/{aquatic}"' in only.text and f'href="/o/{veg}"' not in only.text
    assert mgr_a.get("/m/lizhong/history", params={"days": "x"}).status_code == 400


def test_the_account_page_shows_the_calendar_feed_and_makes_and_revokes_tokens(
    site: Site, mgr_a: httpx.Client
) -> None:
    page = mgr_a.get("/account")
    feed = re.search(
        r'value="(http://127\.0\.0\.1:\d+/calendar/lizhong/[0-9a-f]{32}\.ics)"', page.text
    )
    assert feed is not None
    hidden = form_fields(mgr_a, "/account", "/account/tokens")
    made = mgr_a.post("/account/tokens", data={**hidden, "name": "门禁系统", "password": PASSWORD})
    assert made.status_code == 200
    shown = re.search(r'<input readonly value="([^"]+)" class="new-token"', made.text)
    assert shown is not None
    with httpx.Client(
        base_url=site.base, headers={"Authorization": f"Bearer {shown.group(1)}"}
    ) as api:
        assert api.get("/api/v1/me").json()["username"] == "mgr_a"
    newest = re.findall(r'action="/account/tokens/(\d+)/revoke"', made.text)[-1]
    revoked = mgr_a.post(f"/account/tokens/{newest}/revoke", data=hidden)
    assert revoked.status_code == 303
    with httpx.Client(
        base_url=site.base, headers={"Authorization": f"Bearer {shown.group(1)}"}
    ) as api:
        assert api.get("/api/v1/me").status_code == 401
    assert "门禁系统" not in mgr_a.get("/account").text


def test_switching_the_language_to_english_shows_english_labels(
    site: Site, office: httpx.Client
) -> None:
    hidden = form_fields(office, "/account", "/account/language")
    assert "逾期" in office.get("/m/lizhong").text
    switched = office.post("/account/language", data={**hidden, "language": "en"})
    assert switched.status_code == 303
    board = office.get("/m/lizhong")
    assert "Overdue" in board.text and "Open now" in board.text and "逾期" not in board.text
    assert office.post("/account/language", data={**hidden, "language": "fr"}).status_code == 400
    office.post("/account/language", data={**hidden, "language": ""})
    assert "逾期" in office.get("/m/lizhong").text


@pytest.mark.parametrize(
    ("user", "allowed", "refused"),
    [
        ("mgr_a", ["/m/lizhong", "/m/lizhong/history", "/m/lizhong/problems", "/account"], []),
        (
            "office",
            ["/m/lizhong", "/m/xinhua", "/m/xinhua/history", "/m/lizhong/problems", "/account"],
            [],
        ),
        ("operator", ["/account"], ["/m/lizhong", "/m/lizhong/problems", "/m/xinhua/history"]),
    ],
)
def test_each_page_renders_for_each_role_that_may_see_it(
    site: Site, user: str, allowed: list[str], refused: list[str]
) -> None:
    oid = site.obligation("lizhong", "disinfect", "aquatic")
    pid = make_problem(site)
    extra = [f"/o/{oid}", f"/p/{pid}"]
    c = site.client(user)
    try:
        for path in allowed + (extra if user != "operator" else []):
            page = c.get(path)
            assert page.status_code == 200, (user, path, page.text[:300])
            assert 'name="csrf-token"' in page.text
        for path in refused + (extra if user == "operator" else []):
            assert c.get(path).status_code == 403, (user, path)
    finally:
        c.close()


def test_an_obligation_past_its_due_time_shows_as_overdue_on_the_board(
    site: Site, mgr_a: httpx.Client
) -> None:
    site.clock.advance(hours=1)  # 20:00: waste clearance was due at 19:30
    page = mgr_a.get("/m/lizhong")
    overdue = page.text[
        page.text.index('class="board-overdue"') : page.text.index('class="board-open"')
    ]
    assert f'href="/o/{site.obligation("lizhong", "waste")}"' in overdue


def test_an_address_or_a_date_no_record_can_have_is_refused_not_a_server_error(
    site: Site, mgr_a: httpx.Client, office: httpx.Client
) -> None:
    """Was: an id past 64 bits in a page's address (the API bounds its own) reached the
    database and a date in year 1 or 9999 reached the period arithmetic: 500, the
    traceback in the log and the browser's connection dropped."""
    problem = ledger_problems.NewProblem(
        market_id="lizhong",
        category="order",
        description="占道",
        found_by="office",
        found_at=site.clock.now(),
        deadline=site.clock.now() + timedelta(days=2),
    )
    pid, _ = ledger_problems.add(site.engine, problem, now=site.clock.now())
    answers: dict[str, int] = {}

    def status(client: httpx.Client, method: str, path: str, **kwargs: Any) -> int:
        try:
            return client.request(method, path, **kwargs).status_code
        except httpx.TransportError:  # the server dropped the connection
            return 0

    for n in (2**63, 2**70, 0):
        for path in (f"/o/{n}", f"/p/{n}", f"/i/{n}"):
            answers[f"GET {path}"] = status(mgr_a, "GET", path)
        for path in (f"/o/{n}", f"/p/{n}/rectify"):
            answers[f"POST {path}"] = status(mgr_a, "POST", path, data={"note": "x"})
        for path in (f"/p/{n}/assign", f"/p/{n}/verify", f"/p/{n}/reopen"):
            answers[f"POST {path}"] = status(office, "POST", path, data={"note": "x"})
    for day in ("0001-01-01", "9999-12-31"):
        for path in (
            f"/office/ranking?date={day}",
            f"/office/ranking?period=month&date={day}",
            f"/bulletin/download?date={day}&format=xlsx",
            f"/exports/download?period=day&date={day}&market=all",
            f"/exports/download?period=month&date={day}&market=all",
        ):
            answers[f"GET {path}"] = status(office, "GET", path)
        for path, data in (
            ("/m/lizhong/problems", {"category": "order", "description": "x", "deadline": day}),
            (f"/p/{pid}/assign", {"assigned_to": "老王", "deadline": day}),
            (f"/p/{pid}/reopen", {"note": "没修好", "deadline": day}),
        ):
            answers[f"POST {path} {day}"] = status(office, "POST", path, data=data)
    assert {k: v for k, v in answers.items() if v not in (400, 404)} == {}
    assert [p.state for p in problems(site) if p.id == pid] == ["open"]
