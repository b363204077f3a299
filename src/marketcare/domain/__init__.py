"""The rules in plain Python: schedules, obligations and their state machine, checklists,
compliance, problems and the rectification rate, periods, roles. Nothing here touches a
database, the web, mail or a spreadsheet (checked by import-linter; docs/design.md)."""
