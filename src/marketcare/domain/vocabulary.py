"""The closed vocabularies of the domain: kinds of area, kinds of task, weekdays."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class AreaKind(StrEnum):
    AQUATIC = "aquatic"
    MEAT = "meat"
    POULTRY = "poultry"
    VEGETABLES = "vegetables"
    DRY_GOODS = "dry_goods"
    COOKED_FOOD = "cooked_food"
    AISLES = "aisles"
    TOILETS = "toilets"
    REFUSE_ROOM = "refuse_room"


class TaskKind(StrEnum):
    WASTE_CLEARANCE = "waste_clearance"
    DISINFECTION = "disinfection"
    DEEP_CLEANING = "deep_cleaning"
    PEST_CONTROL = "pest_control"
    FACILITY_INSPECTION = "facility_inspection"
    CIVILITY_DUTY = "civility_duty"


#: the kind of the office's re-inspection of a rectified problem (再督查): an obligation the
#: ledger makes when a problem is reported rectified, never a task of the schedules. It is
#: the office's work, not the market's: the reports count it in the rectification figures,
#: never in a market's compliance (``compliance.counts_for_compliance``).
REINSPECTION: Final = "reinspection"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
