"""The office's and the operator's pages through real HTTP: the dashboard, problem
decisions, exports, the outbox and user management."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import openpyxl
import sqlalchemy as sa

from marketcare.domain import compliance
from marketcare.domain.access import Role
from marketcare.domain.periods import Period
from marketcare.ledger import problems as ledger_problems
from marketcare.ledger import sweep as ledger_sweep
from marketcare.ledger import tick as ledger_tick
from marketcare.ledger.models import ProblemRow
from marketcare.reports import delivery
from marketcare.reports.dashboard import figures as dashboard_figures
from marketcare.web.pages_inspections import MARKETS_PER_PAGE
from marketcare.web.pages_office import pct
from tests.support.web import PASSWORD, SCHEDULE, Site, running_site, sign_in

ALL = ["lizhong", "xinhua"]


@contextmanager
def signed_in(site: Site, user: str) -> Iterator[httpx.Client]:
    client = site.client(user)
    try:
        yield client
    finally:
        client.close()


def make_problem(site: Site, market: str = "lizhong", *, days: float = 3, **kw: str) -> int:
    now = site.clock.now()
    pid, _ = ledger_problems.add(
        site.engine,
        ledger_problems.NewProblem(
            market_id=market,
            category=kw.get("category", "sanitation"),
            description=kw.get("description", "排水沟堵塞"),
            found_by="office",
            found_at=now - timedelta(days=5),
            deadline=now + timedelta(days=days),
            area_id=kw.get("area"),
        ),
        now=now,
    )
    return pid


def make_rectified(site: Site, market: str = "lizhong") -> int:
    pid = make_problem(site, market)
    ledger_problems.rectify(
        site.engine, problem_id=pid, by="mgr_a", note="已疏通", now=site.clock.now()
    )
    return pid


def state_of(site: Site, pid: int) -> str:
    with site.engine.connect() as conn:
        return str(
            conn.execute(sa.select(ProblemRow.state).where(ProblemRow.id == pid)).scalar_one()
        )


def cell(html: str, market: str, figure: str) -> str:
    """The text of one figure of one market in the desktop table."""
    found = re.search(
        rf'<td[^>]*data-market="{market}" data-figure="{figure}">(.*?)</td>', html, re.S
    )
    assert found is not None, (market, figure)
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


# ---------------------------------------------------------------- the dashboard


def test_the_dashboard_shows_every_market_with_the_figures_the_exports_count(
    tmp_path: Path,
) -> None:
    with running_site(tmp_path / "site") as site, signed_in(site, "office") as office:
        ledger_tick.tick(
            site.engine,
            obligation_id=site.obligation("lizhong", "disinfect", "aquatic"),
            by="mgr_a",
            now=site.clock.now(),
            readings={"chlorine": 1000},
            items=["washed"],
        )
        late = make_problem(site, "xinhua", days=-1, description="冷库门封条破损")
        site.clock.advance(hours=4)  # 23:00: the rest of the evening's work was missed
        ledger_sweep.sweep_all(site.engine, now=site.clock.now())
        assert_dashboard_matches_the_rules(site, office, late, tmp_path / "exports")


def assert_dashboard_matches_the_rules(
    site: Site, office: httpx.Client, late: int, exports: Path
) -> None:
    now = site.clock.now()
    page = office.get("/office")

    assert page.status_code == 200
    figures = dashboard_figures(site.engine, now=now, market_ids=ALL)
    assert [f.market.id for f in figures] == ALL
    for f in figures:
        assert f.market.name in page.text
        assert f'href="/m/{f.market.id}"' in page.text
        assert f'href="/m/{f.market.id}/problems"' in page.text
        assert cell(page.text, f.market.id, "compliance_today").startswith(pct(f.compliance_today))
        assert cell(page.text, f.market.id, "compliance_week").startswith(pct(f.compliance_week))
        assert cell(page.text, f.market.id, "missed_today") == str(f.missed_today)
        assert cell(page.text, f.market.id, "missed_week") == str(f.missed_week)
        assert cell(page.text, f.market.id, "open_problems") == str(f.open_problems)
        assert cell(page.text, f.market.id, "overdue_problems") == str(f.overdue_problems)
        # the week's figure is the workbook's headline for that market, to the same decimal
        result = delivery.export(
            site.engine,
            period=Period.of("week", f.market.today(now)),
            exports_dir=exports,
            now=now,
            markets=[f.market.id],
        )
        assert cell(page.text, f.market.id, "compliance_week").startswith(
            pct(result.headline["compliance"])
        )
    lizhong = next(f for f in figures if f.market.id == "lizhong")
    xinhua = next(f for f in figures if f.market.id == "xinhua")
    assert cell(page.text, "lizhong", "compliance_today") == "33.3% 1/3"
    assert cell(page.text, "xinhua", "compliance_today") == "0.0% 0/2"
    assert (lizhong.missed_today, xinhua.missed_today) == (2, 2)
    assert xinhua.overdue_problems == 1
    assert f'href="/p/{late}"' in page.text
    assert "冷库门封条破损" in page.text


def test_while_work_is_open_today_shows_what_is_open_now_not_a_percentage(
    site: Site, office: httpx.Client
) -> None:
    figures = dashboard_figures(site.engine, now=site.clock.now(), market_ids=ALL)
    still_open = [f for f in figures if f.open_now]
    assert still_open, "at 19:00 on the first day the evening's work is still open"
    page = office.get("/office").text
    for f in still_open:
        assert not f.today_settled
        shown = cell(page, f.market.id, "compliance_today")
        assert shown == f"尚有 {f.open_now} 项待完成 目前按时 {f.today_on_time}/{f.today_due}"
        assert "%" not in shown  # never "0.0% 0/1" for a day that is not over
        assert cell(page, f.market.id, "open_now") == str(f.open_now)


def test_a_manager_may_not_see_the_dashboard_the_users_or_the_outbox(site: Site) -> None:
    with signed_in(site, "mgr_a") as mgr:
        assert mgr.get("/office").status_code == 403
        assert mgr.get("/admin/users").status_code == 403
        assert mgr.get("/office/outbox").status_code == 403
        refused = mgr.post("/admin/users/mgr_b/disable")
        assert refused.status_code == 403


def test_a_manager_gets_404_for_another_markets_export_and_their_own_workbook(
    site: Site,
) -> None:
    with signed_in(site, "mgr_a") as mgr:
        form = mgr.get("/exports")
        assert form.status_code == 200
        assert 'value="lizhong"' in form.text
        assert 'value="xinhua"' not in form.text
        assert 'value="all"' not in form.text
        other = mgr.get(
            "/exports/download", params={"period": "week", "date": "2026-11-23", "market": "xinhua"}
        )
        assert other.status_code == 404
        own = mgr.get(
            "/exports/download", params={"period": "day", "date": "2026-11-23", "market": "lizhong"}
        )
        assert own.status_code == 200
        assert "lizhong" in own.headers["content-disposition"]


def test_a_manager_may_not_verify_or_assign(site: Site) -> None:
    pid = make_rectified(site)
    with signed_in(site, "mgr_a") as mgr:
        assert mgr.post(f"/p/{pid}/verify", data={"note": ""}).status_code == 403
        assert mgr.post(f"/p/{pid}/assign", data={"assigned_to": "x"}).status_code == 403
    assert state_of(site, pid) == "rectified"


# ---------------------------------------------------------------- problem decisions


def test_the_office_verifies_a_rectified_problem_through_the_form(
    site: Site, office: httpx.Client
) -> None:
    pid = make_rectified(site)

    done = office.post(f"/p/{pid}/verify", data={"note": "复查合格"})

    assert done.status_code == 303
    assert done.headers["location"] == f"/p/{pid}?done=verified"
    assert state_of(site, pid) == "verified"


def test_a_form_without_the_csrf_token_changes_nothing(site: Site) -> None:
    pid = make_rectified(site)
    with signed_in(site, "office") as c:
        del c.headers["X-CSRF-Token"]
        assert c.post(f"/p/{pid}/verify", data={"note": ""}).status_code == 403
    assert state_of(site, pid) == "rectified"


def test_reopen_without_a_note_is_refused_naming_the_note(site: Site, office: httpx.Client) -> None:
    pid = make_rectified(site)

    refused = office.post(f"/p/{pid}/reopen", data={"note": "  ", "deadline": ""})

    assert refused.status_code == 400
    assert 'data-field="note"' in refused.text
    assert "note" in refused.text
    assert f'href="/p/{pid}"' in refused.text
    assert state_of(site, pid) == "rectified"


def test_reopen_with_a_note_and_a_deadline_sends_it_back_with_the_new_deadline(
    site: Site, office: httpx.Client
) -> None:
    pid = make_rectified(site)

    done = office.post(f"/p/{pid}/reopen", data={"note": "仍有积水", "deadline": "2026-12-05"})

    assert done.status_code == 303
    assert done.headers["location"] == f"/p/{pid}?done=reopened"
    with site.engine.connect() as conn:
        row = conn.execute(sa.select(ProblemRow).where(ProblemRow.id == pid)).one()
    assert row.state == "open"
    assert row.reopened == 1
    # the end of 5 December in Shanghai
    assert row.deadline.isoformat() == "2026-12-05T15:59:59+00:00"


def test_verifying_an_open_problem_is_a_conflict_that_changes_nothing(
    site: Site, office: httpx.Client
) -> None:
    pid = make_problem(site)

    refused = office.post(f"/p/{pid}/verify", data={"note": ""})

    assert refused.status_code == 409
    assert "cannot verify a problem that is open" in refused.text
    assert state_of(site, pid) == "open"


def test_the_office_assigns_a_problem_with_a_deadline_at_the_end_of_that_local_day(
    site: Site, office: httpx.Client
) -> None:
    pid = make_problem(site)

    done = office.post(
        f"/p/{pid}/assign", data={"assigned_to": "保洁公司 张三", "deadline": "2026-11-30"}
    )

    assert done.status_code == 303
    assert done.headers["location"] == f"/p/{pid}?done=assigned"
    with site.engine.connect() as conn:
        row = conn.execute(sa.select(ProblemRow).where(ProblemRow.id == pid)).one()
    assert row.assigned_to == "保洁公司 张三"
    assert row.deadline.isoformat() == "2026-11-30T15:59:59+00:00"


def test_assigning_with_a_bad_deadline_names_the_deadline_and_changes_nothing(
    site: Site, office: httpx.Client
) -> None:
    pid = make_problem(site)

    refused = office.post(f"/p/{pid}/assign", data={"assigned_to": "张三", "deadline": "30/11"})

    assert refused.status_code == 400
    assert 'data-field="deadline"' in refused.text
    assert "is not a date" in refused.text
    with site.engine.connect() as conn:
        row = conn.execute(sa.select(ProblemRow).where(ProblemRow.id == pid)).one()
    assert row.assigned_to is None


def test_a_decision_on_a_problem_that_does_not_exist_is_404(office: httpx.Client) -> None:
    assert office.post("/p/999999/verify", data={"note": ""}).status_code == 404


# ---------------------------------------------------------------- exports


def test_the_office_downloads_a_weekly_export_that_opens_with_openpyxl(
    office: httpx.Client,
) -> None:
    form = office.get("/exports")
    assert form.status_code == 200
    assert 'value="all"' in form.text

    got = office.get(
        "/exports/download", params={"period": "week", "date": "2026-11-23", "market": "all"}
    )

    assert got.status_code == 200
    assert got.headers["content-type"].startswith(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert "marketcare_week_2026-W48.xlsx" in got.headers["content-disposition"]
    book = openpyxl.load_workbook(io.BytesIO(got.content))
    assert book.sheetnames


def test_a_bad_export_date_is_refused_naming_the_date(office: httpx.Client) -> None:
    got = office.get(
        "/exports/download", params={"period": "week", "date": "23.11.2026", "market": "all"}
    )

    assert got.status_code == 400
    assert 'data-field="date"' in got.text
    assert "23.11.2026" in got.text


def test_an_unknown_period_is_refused_naming_the_period(office: httpx.Client) -> None:
    got = office.get(
        "/exports/download", params={"period": "year", "date": "2026-11-23", "market": "all"}
    )

    assert got.status_code == 400
    assert 'data-field="period"' in got.text


def test_the_operator_may_not_export(operator: httpx.Client) -> None:
    assert operator.get("/exports").status_code == 403


# ---------------------------------------------------------------- outbox


def test_the_outbox_lists_recipient_state_attempts_and_report(
    site: Site, office: httpx.Client, operator: httpx.Client, tmp_path: Path
) -> None:
    result = delivery.export(
        site.engine,
        period=Period.of("day", site.clock.now().date()),
        exports_dir=tmp_path,
        now=site.clock.now(),
    )
    delivery.enqueue(
        site.engine,
        result.report_id,
        ["district@example.org"],
        now=site.clock.now(),
        sender="marketcare@example.org",
    )
    for who in (office, operator):
        page = who.get("/office/outbox")
        assert page.status_code == 200
        assert "district@example.org" in page.text
        assert result.path.name in page.text


# ---------------------------------------------------------------- users


def test_the_operator_adds_a_user_through_the_form_and_the_user_can_sign_in(
    site: Site, operator: httpx.Client
) -> None:
    added = operator.post(
        "/admin/users",
        data={
            "username": "mgr_c",
            "display_name": "王经理",
            "role": "manager",
            "markets": ["lizhong", "xinhua"],
            "password": "a long new password",
            "language": "en",
        },
    )

    assert added.status_code == 303
    listing = operator.get("/admin/users").text
    assert 'data-user="mgr_c"' in listing
    assert "王经理" in listing
    with site.client() as c:
        sign_in(c, "mgr_c", "a long new password")
        assert c.get("/exports").status_code == 200


def test_a_duplicate_username_is_refused_at_the_username_field(operator: httpx.Client) -> None:
    refused = operator.post(
        "/admin/users",
        data={
            "username": "mgr_a",
            "display_name": "重复",
            "role": "manager",
            "markets": ["lizhong"],
            "password": PASSWORD,
        },
    )

    assert refused.status_code == 400
    found = re.search(r'<p class="field-error" data-field="(\w+)">([^<]*)</p>', refused.text)
    assert found is not None
    assert found.group(1) == "username"
    assert "already exists" in found.group(2)
    # what was typed is kept (but never the password)
    assert 'value="重复"' in refused.text
    assert PASSWORD not in refused.text


def test_a_manager_without_a_market_is_refused_at_the_markets_field(
    operator: httpx.Client,
) -> None:
    refused = operator.post(
        "/admin/users",
        data={
            "username": "nomarket",
            "display_name": "无",
            "role": "manager",
            "password": PASSWORD,
        },
    )

    assert refused.status_code == 400
    assert 'data-field="markets"' in refused.text


def test_disabling_a_user_ends_their_session(site: Site, operator: httpx.Client) -> None:
    operator.post(
        "/admin/users",
        data={
            "username": "leaver",
            "display_name": "离职",
            "role": "office",
            "password": PASSWORD,
        },
    )
    with signed_in(site, "leaver") as leaver:
        assert leaver.get("/office").status_code == 200

        done = operator.post("/admin/users/leaver/disable")

        assert done.status_code == 303
        gone = leaver.get("/office")
        assert gone.status_code == 303
        assert gone.headers["location"].startswith("/login")
    assert "已停用" in operator.get("/admin/users").text
    assert operator.post("/admin/users/leaver/enable").status_code == 303


def test_the_operator_sets_a_password_and_a_short_one_is_refused(
    site: Site, operator: httpx.Client
) -> None:
    short = operator.post("/admin/users/mgr_b/password", data={"password": "short"})
    assert short.status_code == 400
    assert "at least 10 characters" in short.text

    assert (
        operator.post(
            "/admin/users/mgr_b/password", data={"password": "another password"}
        ).status_code
        == 303
    )
    with site.client() as c:
        sign_in(c, "mgr_b", "another password")


def test_the_operator_cannot_disable_their_own_account(operator: httpx.Client) -> None:
    refused = operator.post("/admin/users/operator/disable")
    assert refused.status_code == 400
    assert operator.get("/admin/users").status_code == 200


def test_an_unknown_user_is_404(operator: httpx.Client) -> None:
    assert operator.post("/admin/users/nobody/disable").status_code == 404


def large_district(markets: int) -> str:
    """A district of ``markets`` one-area markets with the site's daily disinfection."""
    head, tasks = SCHEDULE.split("tasks:\n", 1)
    tasks = tasks.split("inspection_templates:", 1)[0]
    lines = ["markets:"]
    for i in range(markets):
        lines += [
            f"  - id: m{i:03d}",
            f"    name: 第{i:03d}农贸市场",
            f"    sub_district: {('鲤中', '海滨', '临江')[i % 3]}",
            "    timezone: Asia/Shanghai",
            '    hours: {mon-sun: "05:30-18:30"}',
            "    areas:",
            "      - {id: meat, name: 肉类区, kind: meat, m2: 500}",
        ]
    return "\n".join(lines) + "\ntasks:\n" + tasks


def market_columns(html: str) -> list[str]:
    """The markets of the desktop table, in the page's order."""
    return re.findall(r'<th scope="col" data-market="([^"]+)"', html)


def test_a_large_district_is_paged_with_the_most_urgent_markets_first(tmp_path: Path) -> None:
    count = MARKETS_PER_PAGE + 3
    with (
        running_site(
            tmp_path / "site",
            schedule_text=large_district(count),
            users={"office": (Role.OFFICE, ())},
        ) as site,
        signed_in(site, "office") as office,
    ):
        late = make_problem(site, "m040", days=-1, description="冷库门封条破损")
        first = office.get("/office")
        assert first.status_code == 200
        shown = market_columns(first.text)
        assert len(shown) == MARKETS_PER_PAGE
        assert shown[0] == "m040"  # the one problem past its deadline comes first
        assert f"第 1–{MARKETS_PER_PAGE} 个市场，共 {count} 个" in first.text
        assert 'href="/office?page=2"' in first.text
        assert f'href="/p/{late}"' in first.text

        second = office.get("/office", params={"page": "2"})
        rest = market_columns(second.text)
        assert len(rest) == 3 and 'href="/office?page=1"' in second.text
        assert sorted(shown + rest) == [f"m{i:03d}" for i in range(count)]
        for f in dashboard_figures(
            site.engine, now=site.clock.now(), market_ids=rest
        ):  # a later page shows the same figures as the rules count
            assert cell(second.text, f.market.id, "missed_today") == str(f.missed_today)

        for bad in ("3", "0", "two"):
            refused = office.get("/office", params={"page": bad})
            assert refused.status_code == 400
            assert "page" in refused.text and "1 to 2" in refused.text


def test_a_district_of_a_few_markets_shows_them_all_in_their_order_without_pages(
    office: httpx.Client,
) -> None:
    page = office.get("/office").text
    assert market_columns(page) == ALL
    assert 'class="pager' not in page
    assert market_columns(office.get("/office", params={"page": "1"}).text) == ALL
    assert office.get("/office", params={"page": "2"}).status_code == 400


def test_the_most_urgent_market_is_the_one_with_a_problem_past_its_deadline_then_misses() -> None:
    def key(overdue: int, today: int, week: int, rate: float | None) -> tuple[int, int, int, float]:
        return compliance.attention(
            overdue_problems=overdue, missed_today=today, missed_week=week, compliance_week=rate
        )

    markets = {
        "nothing due": key(0, 0, 0, None),
        "all on time": key(0, 0, 0, 1.0),
        "weak week": key(0, 0, 0, 0.6),
        "missed this week": key(0, 0, 3, 0.9),
        "missed today": key(0, 1, 1, 0.95),
        "problem past deadline": key(1, 0, 0, 1.0),
    }
    assert sorted(markets, key=markets.__getitem__) == [
        "problem past deadline",
        "missed today",
        "missed this week",
        "weak week",
        "all on time",
        "nothing due",
    ]
