"""The iCalendar feed a manager's phone subscribes to: reached by its secret address
only, it lists the market's obligations around today and nothing of another market."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from icalendar import Calendar

from marketcare.ledger.models import Obligation

from .support.web import Site, get


def feed_url(site: Site, user: str, market: str) -> str:
    with site.api(user) as c:
        r = c.get(f"/api/v1/markets/{market}/calendar")
    assert r.status_code == 200, r.text
    url: str = r.json()["url"]
    return url


def test_feed_lists_the_markets_obligations_as_events(site: Site) -> None:
    url = feed_url(site, "mgr_a", "lizhong")
    assert url.startswith("/calendar/lizhong/") and url.endswith(".ics")
    r = get(site.base + url)  # no sign-in: the phone's calendar has none
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/calendar")
    cal = Calendar.from_ical(r.content)
    assert str(cal["X-WR-CALNAME"]) == "鲤中农贸市场"
    events = {str(e["UID"]): e for e in cal.walk("VEVENT")}
    with site.engine.connect() as conn:
        ids = conn.execute(
            sa.select(Obligation.id).where(Obligation.market_id == "lizhong")
        ).scalars()
        expected = {f"obligation-{i}@marketcare" for i in ids}
    assert set(events) == expected
    aquatic = events[f"obligation-{site.obligation('lizhong', 'disinfect', 'aquatic')}@marketcare"]
    assert str(aquatic["SUMMARY"]) == "休市清洗消毒 · 水产区"
    # 18:30 closing in Shanghai is 10:30 UTC; due two hours later
    assert aquatic.decoded("DTSTART") == datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    assert aquatic.decoded("DTEND") == datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
    assert "state: open" in str(aquatic["DESCRIPTION"])


def test_feed_shows_a_completed_obligation_as_done(site: Site) -> None:
    ob = site.obligation("xinhua", "waste")
    with site.api("mgr_b") as c:
        assert c.post(f"/api/v1/obligations/{ob}/completions", json={}).status_code == 201
    cal = Calendar.from_ical(get(site.base + feed_url(site, "office", "xinhua")).content)
    event = next(e for e in cal.walk("VEVENT") if str(e["UID"]) == f"obligation-{ob}@marketcare")
    assert str(event["X-MARKETCARE-STATE"]) == "done"


def test_each_user_has_their_own_address_for_the_market(site: Site) -> None:
    mine, office = feed_url(site, "mgr_a", "lizhong"), feed_url(site, "office", "lizhong")
    assert mine != office
    assert get(site.base + mine).content.count(b"BEGIN:VEVENT") == (
        get(site.base + office).content.count(b"BEGIN:VEVENT")
    )


def test_wrong_key_is_404(site: Site) -> None:
    url = feed_url(site, "mgr_a", "lizhong")
    wrong = url[: -len(".ics") - 1] + ("0" if url[-5] != "0" else "1") + ".ics"
    assert get(site.base + wrong).status_code == 404
    assert get(site.base + "/calendar/lizhong/not-a-key.ics").status_code == 404
    assert get(site.base + "/calendar/lizhong/密钥.ics").status_code == 404


def test_another_markets_key_does_not_open_this_market(site: Site) -> None:
    xinhua = feed_url(site, "mgr_b", "xinhua")
    key = xinhua.rsplit("/", 1)[1]
    assert get(f"{site.base}/calendar/lizhong/{key}").status_code == 404


def test_only_users_who_may_view_the_market_get_its_address(site: Site) -> None:
    with site.api("mgr_a") as c:
        assert c.get("/api/v1/markets/xinhua/calendar").status_code == 404
    with site.api("operator") as c:
        assert c.get("/api/v1/markets/lizhong/calendar").status_code == 403
