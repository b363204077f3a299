"""Who may do what: the roles and the authorisation matrix, in one place.

Plain Python, no web: the web pages, the JSON API and the tests all read this table, so
a rule is written once. Every check is made on the server for every read and write.

* **manager** (市场管理员): reads and works on the markets assigned to them, and only
  those: ticks checklists, reports problems and rectifications, downloads exports of
  their own markets, subscribes to their calendar.
* **office** (区级主管部门): reads every market; raises problems on inspection, assigns
  and verifies or reopens them; downloads any export; sees the mail outbox.
* **operator** (运维): manages users and watches delivery (the outbox). An operator is
  not a market's user: they see no market's obligations or problems in the web app
  (they have the CLI and the database for that).

A refusal never says whether the thing exists: a manager asking for another market's
obligation gets the same 404 as for one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    MANAGER = "manager"
    OFFICE = "office"
    OPERATOR = "operator"


class Action(StrEnum):
    VIEW_MARKET = "view_market"  # boards, obligations, history, problems, calendar
    TICK = "tick"  # record a completion
    REPORT_PROBLEM = "report_problem"
    RECTIFY = "rectify"  # the market says a problem is fixed
    ASSIGN = "assign"  # the office assigns a problem (and may move its deadline)
    VERIFY = "verify"  # the office re-inspects: verify or reopen
    EXPORT = "export"  # download a compliance workbook
    DASHBOARD = "dashboard"  # all markets side by side
    OUTBOX = "outbox"
    MANAGE_USERS = "manage_users"
    INSPECT = "inspect"  # record an inspection (督查) with the scoring sheet
    VIEW_INSPECTIONS = "view_inspections"  # a market's inspections and scores
    RANKING = "ranking"  # every market's ranking and the bulletin (managers: by a setting)


#: the matrix: which roles may take each action (market scope is checked separately)
ALLOWED: dict[Action, frozenset[Role]] = {
    Action.VIEW_MARKET: frozenset({Role.MANAGER, Role.OFFICE}),
    Action.TICK: frozenset({Role.MANAGER}),
    Action.REPORT_PROBLEM: frozenset({Role.MANAGER, Role.OFFICE}),
    Action.RECTIFY: frozenset({Role.MANAGER}),
    Action.ASSIGN: frozenset({Role.OFFICE}),
    Action.VERIFY: frozenset({Role.OFFICE}),
    Action.EXPORT: frozenset({Role.MANAGER, Role.OFFICE}),
    Action.DASHBOARD: frozenset({Role.OFFICE}),
    Action.OUTBOX: frozenset({Role.OFFICE, Role.OPERATOR}),
    Action.MANAGE_USERS: frozenset({Role.OPERATOR}),
    Action.INSPECT: frozenset({Role.OFFICE}),
    Action.VIEW_INSPECTIONS: frozenset({Role.MANAGER, Role.OFFICE}),
    Action.RANKING: frozenset({Role.OFFICE}),
}

#: actions a setting may open to managers: ``managers_see_ranking``
MANAGER_BY_SETTING = frozenset({Action.RANKING})

#: actions about one market: a manager may take them only in their own markets
MARKET_SCOPED = frozenset(
    {
        Action.VIEW_MARKET,
        Action.TICK,
        Action.REPORT_PROBLEM,
        Action.RECTIFY,
        Action.ASSIGN,
        Action.VERIFY,
        Action.EXPORT,
        Action.INSPECT,
        Action.VIEW_INSPECTIONS,
    }
)

assert set(ALLOWED) == set(Action)


@dataclass(frozen=True)
class Principal:
    """The signed-in user as the rules see them."""

    user_id: int
    username: str
    display_name: str
    role: Role
    markets: frozenset[str]
    language: str | None = None

    @property
    def all_markets(self) -> bool:
        """True when the role reaches every market (the office)."""
        return self.role == Role.OFFICE


def may(
    who: Principal, action: Action, market: str | None = None, *, managers_see_ranking: bool = False
) -> bool:
    """May ``who`` take ``action`` (in ``market``, for market-scoped actions)?

    ``managers_see_ranking`` is the setting that opens ``MANAGER_BY_SETTING`` to managers.
    """
    opened = managers_see_ranking and action in MANAGER_BY_SETTING and who.role == Role.MANAGER
    if who.role not in ALLOWED[action] and not opened:
        return False
    if action in MARKET_SCOPED and market is not None and not who.all_markets:
        return market in who.markets
    return True


def leaves_no_operator(active_operators: Iterable[str], username: str) -> bool:
    """Would disabling or demoting ``username`` leave no active operator? Then nobody
    could manage users any more (short of editing the database), so it is refused."""
    active = set(active_operators)
    return username in active and not active - {username}


def visible_markets(who: Principal, every: Iterable[str]) -> list[str]:
    """The markets ``who`` may look at, in the order of ``every``."""
    return [m for m in every if may(who, Action.VIEW_MARKET, m)]
