"""Generate a city-scale schedule directory for the benchmarks.

    .venv/bin/python bench/generate.py --markets 1000 --areas 12 --out bench/out/city

writes ``markets-000.yaml`` … (``--per-file`` markets each, 100 by default, so every
file stays far below the loader's 1 MB limit) and ``tasks.yaml``. The output is
deterministic for given arguments.

The configuration exercises every area kind and every task kind and recurrence form
the sample schedule uses: daily waste clearance, civility duty and disinfection (with
per-area-kind chlorine ranges), weekly deep cleaning and the xun (1st/11th/21st)
clean-up, bi-weekly pest control with an anchor and a contractor, and weekly facility
inspections. Weekly and bi-weekly tasks are spread over the week (each task names its
group of markets), as a city's contractors and inspectors would be, so that every day
of the year carries a similar load and a single benchmark day contains every kind.

With ``--forms`` (``forms=True``) it also uses every form added for real calendars
(issue 11): a district-wide Spring Festival closure, the poultry area resting every
Wednesday (or on the 15th) with its rest-day disinfection, summer hours, toilet rounds
every two hours while open (an operator task kind reported as deep cleaning), mosquito
control on Mondays from April to October, a weekly round with an exception date and an
extra date, and a 24-hour market with a day boundary every 40 markets. The expansion
benchmark (``bench/expand_bench.py``) uses that form.

Usable as a module: ``city_texts(...)`` returns ``{file name: YAML text}`` (the form
``marketcare.schedules.load_texts`` takes) and ``write_city(...)`` writes the files.
"""

from __future__ import annotations

import argparse
import random
from datetime import date, timedelta
from pathlib import Path

MAX_FILE_BYTES = 1_000_000  # marketcare.yamlsource.MAX_FILE_BYTES

#: 12 areas of a typical market, every one of the nine area kinds at least once
AREA_PLAN: tuple[tuple[str, str], ...] = (
    ("aquatic", "水产区"),
    ("meat", "肉类区"),
    ("poultry", "禽类区"),
    ("vegetables", "蔬菜区"),
    ("dry_goods", "干货区"),
    ("cooked_food", "熟食区"),
    ("aisles", "公共通道"),
    ("toilets", "公厕"),
    ("refuse_room", "垃圾房"),
    ("vegetables", "蔬菜二区"),
    ("aisles", "东侧通道"),
    ("toilets", "二楼公厕"),
)
SUB_DISTRICTS = (
    "鲤中", "海滨", "开元", "临江", "浮桥", "江南", "金龙", "常泰", "东海", "城东",
    "北峰", "华大", "清濛", "西街", "丰泽", "泉秀", "东湖", "洛江", "万安", "双阳",
)  # fmt: skip
HOURS = (
    '{mon-fri: "05:30-18:30", sat-sun: "05:30-19:00"}',
    '{weekdays: "05:00-18:00", weekends: "05:00-18:30"}',
    '{daily: "06:00-20:00"}',
    '{mon: closed, tue-sun: "05:30-18:00"}',
    '{daily: "05:30-19:30"}',
    '{mon-sat: "06:00-19:00", sun: "06:00-13:00"}',
)
NIGHT_HOURS = '{daily: "17:00-01:00"}'  # a night market: closing after midnight
CONTRACTORS = (
    "泉州市洁安有害生物防治有限公司",
    "鲤城区卫康病媒生物防制服务部",
    "福建绿盾环境卫生技术有限公司",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PEST_ANCHOR = date(2026, 1, 5)  # a Monday; group k starts k days later


def market_id(i: int) -> str:
    return f"m{i:04d}"


def _areas(n: int, rng: random.Random) -> list[str]:
    out: list[str] = []
    seen: dict[str, int] = {}
    for j in range(n):
        kind, label = AREA_PLAN[j % len(AREA_PLAN)]
        seen[kind] = seen.get(kind, 0) + 1
        aid = (
            kind.replace("_", "-") if seen[kind] == 1 else f"{kind.replace('_', '-')}-{seen[kind]}"
        )
        name = label if j < len(AREA_PLAN) else f"{label}{j // len(AREA_PLAN) + 1}"
        m2 = rng.randrange(40, 1000, 10)
        out.append(f"      - {{ id: {aid}, name: {name}, kind: {kind}, m2: {m2} }}")
    return out


def market_yaml(i: int, areas: int, *, forms: bool = False) -> str:
    """One market entry (list item under ``markets:``)."""
    rng = random.Random(i)
    hours = NIGHT_HOURS if i % 50 == 49 else HOURS[i % len(HOURS)]
    round_the_clock = forms and i % 40 == 39
    if round_the_clock:
        hours = "{ daily: 24h }"
    lines = [
        f"  - id: {market_id(i)}",
        f"    name: 第{i + 1}农贸市场",
        f"    sub_district: {SUB_DISTRICTS[i % len(SUB_DISTRICTS)]}",
    ]
    if i % 10 == 0:
        lines.append("    timezone: Asia/Shanghai")
    lines.append(f"    hours: {hours}")
    if round_the_clock:
        lines.append('    day_boundary: "04:00"')
    elif forms and i % 2 == 0:
        lines.append('    seasonal_hours: [{ season: may-sep, hours: { daily: "05:00-19:30" } }]')
    if i % 3 == 0:
        lines.append('    special_hours: { 2026-12-31: "05:30-20:00", 2027-02-05: "05:30-14:00" }')
    if not forms:  # with the forms, the district closes for the Spring Festival at once
        lines.append("    closed:")
        lines.append("      - { date: 2027-02-06, until: 2027-02-09, reason: 春节休市 }")
    if i % 7 == 0:
        if forms:
            lines.append("    closed:")
        lines.append("      - { date: 2026-10-01, reason: 国庆检修 }")
    lines.append("    areas:")
    area_lines = _areas(areas, rng)
    if forms:
        rest = (
            "{ days: wed, reason: 活禽休市 }"
            if i % 2
            else "{ monthly_days: [15], reason: 活禽休市 }"
        )
        area_lines = [
            line.replace(" }", f", rest: {rest} }}") if "kind: poultry" in line else line
            for line in area_lines
        ]
    lines.extend(area_lines)
    return "\n".join(lines) + "\n"


#: the tasks of the new forms (issue 11), added to every market
FORM_TASKS = """  - id: poultry-rest-disinfection
    kind: disinfection
    name: 活禽休市日全面消毒
    scope: area
    area_kinds: [poultry]
    recurrence: rest_days
    opens: opening
    due: closing
  - id: toilet-rounds
    kind: toilet-round
    name: 公厕每两小时保洁
    scope: area
    area_kinds: [toilets]
    recurrence: { every_hours: 2 }
    opens: opening
    due: +1h
  - id: mosquito-control
    kind: pest_control
    name: 灭蚊蝇（四至十月每周）
    scope: market
    recurrence: { days: mon, season: apr-oct }
    opens: "08:00"
    due: +1d
    contractor: 泉州市洁安有害生物防治有限公司
  - id: market-walk
    kind: facility_inspection
    name: 周三市场巡查
    scope: market
    recurrence: { days: wed, except: [2026-12-30], extra: [2026-12-31] }
    opens: opening+1h
    due: +4h
"""
FORM_HEADER = """closed:
  - { date: 2027-02-06, until: 2027-02-09, reason: 春节休市 }
task_kinds:
  - { id: toilet-round, name: 公厕保洁巡查, reports_as: deep_cleaning }
"""


def _ids(ids: list[str]) -> str:
    return "[" + ", ".join(ids) + "]"


def tasks_yaml(markets: int) -> str:
    ids = [market_id(i) for i in range(markets)]
    out = ["# generated by bench/generate.py: the city's tasks", "tasks:"]
    out.append(
        """  - id: waste-clearance
    kind: waste_clearance
    name: 垃圾日产日清
    scope: market
    recurrence: daily
    opens: closing
    due: closing+1h
    grace: 30m
    checklist:
      - { id: cleared, tick: 当日垃圾已清运 }
      - { id: refuse-room-washed, tick: 垃圾房已冲洗 }
  - id: daily-disinfection
    kind: disinfection
    name: 每日休市清洗消毒
    scope: area
    recurrence: daily
    opens: closing
    due: closing+2h
    grace: 1h
    checklist:
      - { id: washed, tick: 地面、台面已冲洗 }
      - id: chlorine
        reading: 消毒液有效氯浓度
        unit: mg/L
        range: [400, 700]
        by_area_kind: { aquatic: [900, 1200], meat: [900, 1200], poultry: [900, 1200] }
      - { id: contact-time, tick: 作用30分钟后清水冲净 }
  - id: xun-clean-up
    kind: deep_cleaning
    name: 逢旬卫生大清扫
    scope: market
    recurrence: xun
    opens: 30 minutes after closing
    due: +4h
    grace: 2h
    checklist:
      - { id: stalls, tick: 摊位底部、货架背面已清扫 }
      - { id: ceiling, tick: 顶棚、灯具、风扇除尘 }
  - id: civility-duty
    kind: civility_duty
    name: 文明劝导员值守
    scope: market
    recurrence: daily
    opens: opening
    due: closing
    checklist:
      - { id: on-duty, tick: 劝导员在岗 }"""
    )
    # weekly deep cleaning, spread over the week: group d cleans on weekday d
    for d, day in enumerate(WEEKDAYS):
        group = ids[d::7]
        if not group:
            continue
        out.append(
            f"""  - id: deep-cleaning-{day}
    kind: deep_cleaning
    name: 每周深度清洁（{day}）
    scope: area
    area_kinds: [aquatic, meat, poultry, vegetables, dry_goods, cooked_food, toilets, refuse_room]
    markets: {_ids(group)}
    recurrence: {day}
    opens: closing
    due: closing+3h
    grace: 1h
    checklist:
      - {{ id: walls-washed, tick: 墙面、立柱已擦洗 }}
      - {{ id: wall-chlorine, reading: 墙面消毒液有效氯浓度, unit: mg/L, range: {{ min: 250, max: 500 }} }}"""
        )
    # pest control every two weeks: 14 groups, each anchored on its own day of the cycle
    for k in range(14):
        group = ids[k::14]
        if not group:
            continue
        anchor = PEST_ANCHOR + timedelta(days=k)
        out.append(
            f"""  - id: pest-control-{k:02d}
    kind: pest_control
    name: 灭四害（第{k + 1}组）
    scope: market
    markets: {_ids(group)}
    recurrence: {{ every_weeks: 2, anchor: {anchor.isoformat()} }}
    opens: "08:00"
    due: +3d
    grace: 1d
    contractor: {CONTRACTORS[k % len(CONTRACTORS)]}
    checklist:
      - {{ id: rats, tick: 鼠类：毒饵站检查补充 }}
      - {{ id: bait-stations, reading: 鼠饵站数量, unit: 个, range: {{ min: 1 }} }}"""
        )
    # facility inspections, spread over the week with another grouping than cleaning
    for d, day in enumerate(WEEKDAYS):
        group = [ids[i] for i in range(len(ids)) if (i * 3 + 1) % 7 == d]
        if not group:
            continue
        out.append(
            f"""  - id: facility-inspection-{day}
    kind: facility_inspection
    name: 每周设施巡查（{day}）
    scope: market
    markets: {_ids(group)}
    recurrence: {{ weekly: [{day}] }}
    opens: opening+1h
    due: closing
    checklist:
      - {{ id: walls, tick: 墙面无破损、霉斑 }}
      - {{ id: lights-taps, tick: 照明、水龙头完好 }}"""
        )
    return "\n".join(out) + "\n"


def city_texts(
    markets: int = 1000, areas: int = 12, per_file: int = 100, *, forms: bool = False
) -> dict[str, str]:
    """``{file name: YAML text}`` of a city: market files of ``per_file`` markets, tasks.yaml
    (and, with ``forms``, the new forms of issue 11)."""
    if markets < 1 or areas < 1 or per_file < 1:
        raise ValueError("markets, areas and per_file must be positive")
    texts: dict[str, str] = {}
    for f, lo in enumerate(range(0, markets, per_file)):
        hi = min(lo + per_file, markets)
        body = "".join(market_yaml(i, areas, forms=forms) for i in range(lo, hi))
        texts[f"markets-{f:03d}.yaml"] = (
            f"# generated by bench/generate.py: markets {lo}..{hi - 1}\nmarkets:\n{body}"
        )
    texts["tasks.yaml"] = tasks_yaml(markets)
    if forms:
        texts["tasks.yaml"] = FORM_HEADER + texts["tasks.yaml"] + FORM_TASKS
    for name, text in texts.items():
        size = len(text.encode())
        if size >= MAX_FILE_BYTES:
            raise ValueError(f"{name} would be {size} bytes; lower --per-file")
    return texts


def write_city(
    out: Path, markets: int = 1000, areas: int = 12, per_file: int = 100, *, forms: bool = False
) -> list[Path]:
    """Write the city into ``out`` (its old ``*.yaml`` files are removed first)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    paths = []
    for name, text in city_texts(markets, areas, per_file, forms=forms).items():
        p = out / name
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--markets", type=int, default=1000)
    ap.add_argument("--areas", type=int, default=12, help="areas per market")
    ap.add_argument("--per-file", type=int, default=100, help="markets per file")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "city")
    ap.add_argument("--forms", action="store_true", help="also use the forms of issue 11")
    args = ap.parse_args(argv)
    paths = write_city(args.out, args.markets, args.areas, args.per_file, forms=args.forms)
    total = sum(p.stat().st_size for p in paths)
    biggest = max(paths, key=lambda p: p.stat().st_size)
    print(
        f"wrote {len(paths)} files ({total / 1e6:.2f} MB; largest {biggest.name} "
        f"{biggest.stat().st_size / 1e3:.0f} kB) to {args.out}"
    )


if __name__ == "__main__":
    main()
