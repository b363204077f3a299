"""The closed vocabularies of the domain: kinds of area, kinds of task, weekdays."""

from __future__ import annotations

from enum import StrEnum


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


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
