"""The manager's phone without JavaScript, through real HTTP: one post per task from the
board, the next task offered, the out-of-range confirmation, "redo by", names instead of
ids, the history summary, the problem confirmation, sign-out on the account page, the
installable app's files; and the JSON API taking a queued checklist with the phone's time.

Each test works on its own obligations of the evening round (tests/support/field.py),
so the order of the tests does not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from marketcare.ledger import audit
from marketcare.ledger.models import Completion, Event, Obligation
from tests.support.field import NAMES, USERS, evening_schedule
from tests.support.web import Site, running_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(
        tmp_path_factory.mktemp("phone-pages"),
        schedule_text=evening_schedule(),
        users=USERS,
        names=NAMES,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def mgr_a(site: Site) -> Iterator[httpx.Client]:
    c = site.client("mgr_a")
    yield c
    c.close()


@pytest.fixture(scope="module")
def mgr_d(site: Site) -> Iterator[httpx.Client]:
    c = site.client("mgr_d")
    yield c
    c.close()


def form_of(page: str, action: str, nth: int = 0) -> dict[str, Any]:
    """The hidden fields of the ``nth`` form posting to ``action`` on a page."""
    starts = [m.start() for m in re.finditer(f'action="{re.escape(action)}"', page)]
    start = starts[nth]
    form = page[start : page.index("</form>", start)]
    fields: dict[str, Any] = {}
    for name, value in re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form):
        if name == "item":
            fields.setdefault("item", []).append(value)
        else:
            fields[name] = value
    return fields


def post(client: httpx.Client, path: str, data: dict[str, Any]) -> httpx.Response:
    """A form post as a browser without JavaScript makes it (csrf_token in the form)."""
    saved = client.headers.pop("X-CSRF-Token", None)
    try:
        return client.post(path, data=data, files={"photo": ("", b"", "application/octet-stream")})
    finally:
        if saved is not None:
            client.headers["X-CSRF-Token"] = saved


def completions(site: Site, oid: int) -> list[Any]:
    with site.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(Completion).where(Completion.obligation_id == oid).order_by(Completion.id)
            ).all()
        )


def section(page: str, key: str) -> str:
    start = page.index(f'class="board-{key}"')
    end = page.find('<section class="board-', start + 10)
    return page[start : end if end > 0 else len(page)]


# ---------------------------------------------------------------- one post per task


def test_a_task_with_nothing_to_enter_is_ticked_from_the_board_and_the_board_comes_back(
    site: Site, mgr_a: httpx.Client
) -> None:
    oid = site.obligation("lizhong", "lights")
    board = mgr_a.get("/m/lizhong").text
    assert 'aria-label="完成：关灯关水"' in board
    response = post(mgr_a, f"/o/{oid}", form_of(board, f"/o/{oid}"))
    assert response.status_code == 303 and response.headers["location"] == "/m/lizhong"
    again = mgr_a.get("/m/lizhong").text
    assert "关灯关水: 已记录，按时完成。" in again
    assert [(c.by, c.outcome, c.items) for c in completions(site, oid)] == [
        ("mgr_a", "done", {"done": True})
    ]


def test_a_checklist_sent_from_the_board_comes_back_to_it_with_the_next_task_open(
    site: Site, mgr_a: httpx.Client
) -> None:
    aquatic = site.obligation("lizhong", "disinfect", "aquatic")
    cooked = site.obligation("lizhong", "disinfect", "cooked")
    board = mgr_a.get("/m/lizhong").text
    data = form_of(board, f"/o/{aquatic}") | {"item": "washed", "reading_chlorine": "1000"}
    response = post(mgr_a, f"/o/{aquatic}", data)
    assert response.status_code == 303
    assert response.headers["location"] == f"/m/lizhong?open={cooked}#ob-{cooked}"
    again = mgr_a.get(response.headers["location"]).text
    opened = again[again.index(f'id="ob-{cooked}"') :]
    assert opened[: opened.index("<summary")].count("<details") == 1
    assert '<details class="task" open>' in opened[:400]
    assert "休市清洗消毒 · 水产区: 已记录，按时完成。" in again


def test_the_checklist_page_offers_the_next_open_task_of_the_same_kind_after_a_submit(
    site: Site, mgr_a: httpx.Client
) -> None:
    poultry = site.obligation("lizhong", "disinfect", "poultry")
    page = mgr_a.get(f"/o/{poultry}").text
    data = form_of(page, f"/o/{poultry}") | {"item": "washed", "reading_chlorine": "1000"}
    response = post(mgr_a, f"/o/{poultry}", data)
    assert response.status_code == 303
    done = mgr_a.get(response.headers["location"]).text
    offer = re.search(r'<a class="button primary next-task" href="/o/(\d+)">([^<]*)</a>', done)
    assert offer is not None and offer.group(2).startswith("下一项：休市清洗消毒 · ")
    nxt = int(offer.group(1))
    with site.engine.connect() as conn:
        row = conn.execute(sa.select(Obligation).where(Obligation.id == nxt)).one()
    assert (row.market_id, row.task_id, row.state) == ("lizhong", "disinfect", "open")


# ---------------------------------------------------------------- out of range: confirm first


def test_an_out_of_range_reading_is_recorded_only_once_the_manager_confirms_it(
    site: Site, mgr_d: httpx.Client
) -> None:
    veg = site.obligation("haibin", "disinfect", "veg")
    page = mgr_d.get(f"/o/{veg}").text
    data = form_of(page, f"/o/{veg}") | {"item": "washed", "reading_chlorine": "1000"}
    asked = post(mgr_d, f"/o/{veg}", data)
    assert asked.status_code == 409
    assert "1000 不在要求范围 400–700 mg/L 内：记录为不合格，还是修改读数？" in asked.text
    assert 'name="confirm_failed" value="1"' in asked.text
    assert 'value="1000"' in asked.text  # kept, to correct it
    assert completions(site, veg) == []

    confirmed = post(mgr_d, f"/o/{veg}", data | {"confirm_failed": "1"})
    assert confirmed.status_code == 303
    (c,) = completions(site, veg)
    assert (c.outcome, c.readings, c.failures["chlorine"]["value"]) == (
        "failed",
        {"chlorine": 1000.0},
        1000.0,
    )


def test_a_failed_check_before_its_due_time_shows_redo_by_and_overdue_only_after(
    site: Site, mgr_d: httpx.Client
) -> None:
    meat = site.obligation("haibin", "disinfect", "meat")
    page = mgr_d.get(f"/o/{meat}").text
    data = form_of(page, f"/o/{meat}") | {
        "item": "washed",
        "reading_chlorine": "300",
        "confirm_failed": "1",
    }
    assert post(mgr_d, f"/o/{meat}", data).status_code == 303
    board = mgr_d.get("/m/haibin").text  # 19:00, due 20:30
    row = board[board.index(f'id="ob-{meat}"') :][:1500]
    assert "请于 20:30 前重做" in row and "逾期" not in row
    assert f'id="ob-{meat}"' in section(board, "open")
    api = mgr_d.get("/api/v1/markets/haibin/today").json()
    (listed,) = [r for r in api["open"] if r["id"] == meat]
    assert listed["redo_by"] == "2026-11-23T20:30:00+08:00" and not listed["overdue"]
    site.clock.advance(minutes=91)  # 20:31
    try:
        late = mgr_d.get("/m/haibin").text
        assert f'id="ob-{meat}"' in section(late, "overdue")
        assert "请于 20:30 前重做" not in late
    finally:
        site.clock.advance(minutes=-91)


# ---------------------------------------------------------------- names, history


def test_records_and_history_name_people_and_areas_not_their_ids(
    site: Site, mgr_d: httpx.Client
) -> None:
    doors = site.obligation("haibin", "doors")
    board = mgr_d.get("/m/haibin").text
    assert post(mgr_d, f"/o/{doors}", form_of(board, f"/o/{doors}")).status_code == 303
    record = mgr_d.get(f"/o/{doors}").text
    assert "<strong>吴丽娟</strong>" in record and "<strong>mgr_d</strong>" not in record
    history = mgr_d.get("/m/haibin/history").text
    assert "吴丽娟" in history and "mgr_d<" not in history
    assert "· 水产区" in history and "· aquatic" not in history


def test_history_shows_each_days_summary_first_and_its_details_folded(
    site: Site, mgr_d: httpx.Client
) -> None:
    page = mgr_d.get("/m/haibin/history").text
    day = page[page.index('<section class="day card">') :]
    day = day[: day.index("</section>")]
    counts = dict(re.findall(r'<li class="badge (\w+)">[^<]*<strong>(\d+)</strong>', day))
    assert set(counts) >= {"done", "late", "missed", "failed"}
    assert sum(int(n) for n in counts.values()) == 10
    assert day.index('<ul class="counts">') < day.index("<details>")
    assert "明细（10 项）" in day and "<details open" not in day


# ---------------------------------------------------------------- problems, account


def test_a_reported_problem_is_confirmed_at_the_top_and_the_form_is_folded_away(
    site: Site, mgr_d: httpx.Client
) -> None:
    page = mgr_d.get("/m/haibin/problems").text
    assert '<details class="report card" id="report" open>' in page
    data = form_of(page, "/m/haibin/problems") | {
        "category": "repair",
        "area": "poultry",
        "description": "禽类区水龙头漏水",
        "deadline": "2026-11-30",
    }
    response = post(mgr_d, "/m/haibin/problems", data)
    assert response.status_code == 303
    assert re.fullmatch(r"/m/haibin/problems\?reported=\d+", response.headers["location"])
    shown = mgr_d.get(response.headers["location"]).text
    confirmation = shown.index('id="reported"')
    assert confirmation < shown.index('<ul class="list problems">')
    assert "已上报" in shown[confirmation:][:300] and "禽类区" in shown[confirmation:][:600]
    assert '<details class="report card" id="report">' in shown  # folded: no second report
    assert "上报其他问题" in shown


def test_sign_out_is_on_the_account_page_and_not_in_the_header(
    site: Site, mgr_d: httpx.Client
) -> None:
    assert 'action="/logout"' not in mgr_d.get("/m/haibin").text
    account = mgr_d.get("/account").text
    assert 'action="/logout"' in account and 'id="signout"' in account


# ---------------------------------------------------------------- the installable app


def test_the_app_can_be_installed_and_its_pages_travel_compressed(site: Site) -> None:
    with site.client() as anonymous:
        manifest = anonymous.get("/manifest.webmanifest")
        assert manifest.headers["content-type"].startswith("application/manifest+json")
        body = manifest.json()
        assert (body["start_url"], body["display"]) == ("/", "standalone")
        for icon in body["icons"]:
            got = anonymous.get(icon["src"])
            assert got.status_code == 200 and got.content[:4] == b"\x89PNG"
        worker = anonymous.get("/sw.js")
        assert worker.headers["content-type"].startswith("text/javascript")
        assert worker.headers["service-worker-allowed"] == "/"
        assert anonymous.get("/offline").status_code == 200
    c = site.client("mgr_a")
    try:
        board = c.get("/m/lizhong", headers={"Accept-Encoding": "gzip"})
    finally:
        c.close()
    assert board.headers["content-encoding"] == "gzip"
    assert '<link rel="manifest" href="/manifest.webmanifest">' in board.text


# ---------------------------------------------------------------- the API and the queue


def test_a_queued_checklist_sent_through_the_api_keeps_the_phone_time_and_the_arrival(
    site: Site,
) -> None:
    toilets = site.obligation("xinhua", "toilets")
    on_phone = site.clock.now() + timedelta(minutes=5)
    site.clock.advance(hours=2)  # it arrives two hours later, past the grace period
    try:
        arrived = site.clock.now()
        with site.api("mgr_b") as api:
            body = {
                "token": "web:queued-1",
                "phone_at": on_phone.isoformat(),
                "phone_sent_at": (arrived - timedelta(seconds=20)).isoformat(),
            }
            first = api.post(f"/api/v1/obligations/{toilets}/completions", json=body)
            again = api.post(f"/api/v1/obligations/{toilets}/completions", json=body)
            other = api.post(
                f"/api/v1/obligations/{toilets}/completions", json={"token": "web:queued-2"}
            )
    finally:
        site.clock.advance(hours=-2)
    assert first.status_code == 201, first.text
    out = first.json()
    assert (out["state"], out["time_basis"]) == ("done", "phone")
    assert datetime.fromisoformat(out["counted_at"]) == on_phone
    assert datetime.fromisoformat(out["arrived_at"]) == arrived
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["counted_at"] == out["counted_at"]
    colleague = other.json()
    assert (colleague["changed"], colleague["done_by"], colleague["done_by_name"]) == (
        False,
        "mgr_b",
        "陈建国",
    )
    (c,) = completions(site, toilets)
    assert (c.phone_at, c.arrived_at, c.at) == (on_phone, arrived, on_phone)
    # on PostgreSQL the web's ticks are linked to the chain just after the answer
    audit.chain(site.engine, wait=True)
    with site.engine.connect() as conn:
        event = conn.execute(
            sa.select(Event).where(Event.obligation_id == toilets, Event.action == "completed")
        ).one()
    assert event.details["phone_at"] == on_phone.isoformat()
    assert event.details["arrived_at"] == arrived.isoformat()


def test_the_api_refuses_a_phone_time_without_its_utc_offset(site: Site) -> None:
    drains = site.obligation("xinhua", "drains")
    with site.api("mgr_b") as api:
        refused = api.post(
            f"/api/v1/obligations/{drains}/completions",
            json={"phone_at": "2026-11-23T19:05:00"},
        )
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "phone_at"
    assert completions(site, drains) == []
