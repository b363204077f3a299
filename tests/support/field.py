"""An evening round to test the manager's phone with: three markets, each with the ten
tasks of an evening (five disinfections with a chlorine reading, five checks with nothing
to enter), and managers with real names (two share ``xinhua``)."""

from __future__ import annotations

from marketcare.domain.access import Role

AREAS = [
    ("aquatic", "水产区", "aquatic"),
    ("cooked", "熟食区", "cooked_food"),
    ("meat", "肉类区", "meat"),
    ("poultry", "禽类区", "poultry"),
    ("veg", "蔬菜区", "vegetables"),
]
QUICK = [  # tasks with nothing to enter: one tick each, from the board
    ("waste", "waste_clearance", "垃圾日产日清", "已清运"),
    ("toilets", "facility_inspection", "公厕保洁检查", "已保洁"),
    ("drains", "facility_inspection", "排水沟清理", "已清理"),
    ("lights", "facility_inspection", "关灯关水", "已关闭"),
    ("doors", "facility_inspection", "门窗上锁", "已上锁"),
]
MARKETS = [("lizhong", "鲤中农贸市场"), ("xinhua", "新华农贸市场"), ("haibin", "海滨农贸市场")]


def evening_schedule() -> str:
    """Three markets, each with the ten tasks of an evening round: five disinfections
    with a chlorine reading and five checks with nothing to enter."""
    areas = "".join(
        f"      - {{id: {a}, name: {name}, kind: {kind}, m2: 300}}\n" for a, name, kind in AREAS
    )
    markets = "".join(
        f"""  - id: {mid}
    name: {name}
    sub_district: 鲤中
    timezone: Asia/Shanghai
    hours: {{mon-sun: "05:30-18:30"}}
    areas:
{areas}"""
        for mid, name in MARKETS
    )
    quick = "".join(
        f"""  - id: {tid}
    kind: {kind}
    name: {name}
    scope: market
    recurrence: daily
    opens: closing
    due: closing+1h
    grace: 30m
    checklist: [{{id: done, tick: {tick}}}]
"""
        for tid, kind, name, tick in QUICK
    )
    return f"""markets:
{markets}tasks:
  - id: disinfect
    kind: disinfection
    name: 休市清洗消毒
    scope: area
    recurrence: daily
    opens: closing
    due: +2h
    grace: 1h
    checklist:
      - {{id: washed, tick: 已冲洗}}
      - {{id: chlorine, reading: 有效氯, unit: mg/L, range: [400, 700], by_area_kind: {{aquatic: [900, 1200], meat: [900, 1200], poultry: [900, 1200]}}}}
{quick}"""


USERS: dict[str, tuple[Role, tuple[str, ...]]] = {
    "mgr_a": (Role.MANAGER, ("lizhong",)),
    "mgr_b": (Role.MANAGER, ("xinhua",)),
    "mgr_c": (Role.MANAGER, ("xinhua",)),
    "mgr_d": (Role.MANAGER, ("haibin",)),
    "office": (Role.OFFICE, ()),
    "operator": (Role.OPERATOR, ()),
}
NAMES = {
    "mgr_a": "林秀英",
    "mgr_b": "陈建国",
    "mgr_c": "王芳",
    "mgr_d": "吴丽娟",
    "office": "张伟",
    "operator": "运维值班",
}
