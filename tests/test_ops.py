"""Liveness, readiness and Prometheus metrics, over real HTTP."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from marketcare.ledger import leader
from marketcare.ledger.models import Obligation
from marketcare.web.app import start_servers

from .support.web import Site

METRICS_TOKEN = "scrape-me-please-0123456789"
SITE_SETTINGS = {"metrics_token": METRICS_TOKEN}


def scrape(site: Site, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with site.client() as c:
        return c.get("/metrics", headers=headers)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_liveness_needs_nothing_but_the_process(site: Site) -> None:
    with site.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}


def test_a_monitor_asking_head_gets_the_get_answer_without_a_body(site: Site) -> None:
    with site.client() as c:
        got, head = c.get("/healthz"), c.head("/healthz")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"]
        assert c.head("/login").status_code == 200
        assert c.head("/no-such-page").status_code == 404


def test_not_ready_until_a_scheduler_leader_is_known(site: Site) -> None:
    with site.client() as c:
        before = c.get("/readyz")
        assert before.status_code == 503
        assert before.json()["checks"]["scheduler_leader"] == "no leader heartbeat"
        assert before.json()["checks"]["database"] == "ok"
        leader.heartbeat(site.engine, "host:1", now=site.clock.now(), since=site.clock.now())
        after = c.get("/readyz")
        assert after.status_code == 200, after.text
        # PostgreSQL also says whether the audit chain keeps up (docs/operations.md)
        chain = {"audit_chain": "ok"} if site.engine.dialect.name == "postgresql" else {}
        assert (
            after.json()["checks"]
            == {
                "database": "ok",
                "schedule": "ok",
                "scheduler_leader": "host:1",
                "writes": "ok",
            }
            | chain
        )
        site.clock.advance(minutes=5)  # the leader stopped beating
        try:
            assert c.get("/readyz").status_code == 503
        finally:
            site.clock.advance(minutes=-5)


def test_metrics_count_obligations_by_state_as_the_ledger_has_them(site: Site) -> None:
    with site.engine.connect() as conn:
        expected = dict(
            conn.execute(
                sa.select(Obligation.state, sa.func.count()).group_by(Obligation.state)
            ).all()
        )
    response = scrape(site)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    for state, n in expected.items():
        assert got[("marketcare_obligations", (("state", state),))] == n
    assert got[("marketcare_outbox_depth", (("kind", "report"),))] == 0
    assert got[("marketcare_last_export_timestamp_seconds", ())] == 0
    assert ("marketcare_sweep_duration_seconds_count", ()) in got


def test_metrics_on_the_main_listener_need_the_metrics_token(site: Site) -> None:
    assert scrape(site, None).status_code == 401
    assert scrape(site, "a-wrong-token-of-some-length").status_code == 401
    with site.api("operator") as c:  # an API token is not the metrics token
        assert c.get("/metrics").status_code == 401


def test_metrics_on_their_own_listener_need_no_token_and_serve_nothing_else(
    site: Site,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = site.settings.model_copy(
        update={"metrics_token": None, "metrics_listen": f"127.0.0.1:{port}", "web_port": 0}
    )
    server = start_servers(settings, site.engine)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert "marketcare_obligations" in c.get("/metrics").text
            assert c.get("/healthz").status_code == 200
            assert c.get("/login").status_code == 404
            assert c.get("/api/v1/me").status_code == 404
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as c:
            assert c.get("/metrics").status_code == 404
    finally:
        server.stop()


def test_operating_endpoints_are_not_in_the_api_schema(site: Site) -> None:
    with site.client() as c:
        paths = c.get("/api/openapi.json").json()["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


def test_every_api_route_is_documented_in_the_web_docs(site: Site) -> None:
    import re

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", path)

    docs = (Path(__file__).resolve().parents[1] / "docs" / "web.md").read_text(encoding="utf-8")
    documented = {
        (method, shape(path))
        for method, path in re.findall(
            r"`(GET|POST|PUT|DELETE) (/[^`?]*)", docs.replace("\\|", "|")
        )
    }
    with site.client() as c:
        paths = c.get("/api/openapi.json").json()["paths"]
    routes = {
        (method.upper(), shape(path.removeprefix("/api/v1")))
        for path, ops in paths.items()
        for method in ops
    }
    assert routes - documented == set()
