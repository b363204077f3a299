"""What the district office receives: report figures, the Excel workbook, the dashboard
figures, reports as records with their email outbox, and escalation notifications."""
