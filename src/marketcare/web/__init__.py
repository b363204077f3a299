"""The web app and JSON API (FastAPI): pages, API, calendar feed, health and metrics."""
