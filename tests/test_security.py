"""Issue 15, the penetration test's findings, each as a test over real HTTP: the throttle
cannot be turned against a user, signing out ends the session, tokens die with a password
reset, every answer carries the security headers, photos are reached by right and not by
hash, calendar addresses are per user, the last operator stays, /metrics is not public,
and the security log says what happened."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from marketcare.domain import signin
from marketcare.domain.access import Role
from marketcare.ledger import accounts, evidence
from marketcare.ledger import problems as rectification
from marketcare.ledger.models import LoginFailure, WebSession
from marketcare.settings import Settings
from marketcare.web import api, security
from marketcare.web.app import WebServer, create_app

from .conftest import make_schedule_text
from .support.procs import make_env
from .support.web import PASSWORD, Site, csrf_of, sign_in

pytestmark = pytest.mark.heavy(12)

ROOT = Path(__file__).resolve().parents[1]
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 2


def from_address(site: Site, address: str) -> httpx.Client:
    """A browser at ``address`` (the server trusts X-Forwarded-For from loopback, as
    from the nginx in front of it)."""
    return site.client(headers={"X-Forwarded-For": address})


def try_password(client: httpx.Client, user: str, password: str) -> httpx.Response:
    token = csrf_of(client)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token})


@contextmanager
def served(app: FastAPI) -> Iterator[httpx.Client]:
    """Another app over the same ledger, on its own loopback port."""
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield client
    finally:
        server.stop()


def fresh_user(site: Site, name: str, role: Role = Role.MANAGER) -> int:
    markets = ("lizhong",) if role == Role.MANAGER else ()
    return accounts.add_user(
        site.engine, accounts.NewUser(name, name, role, PASSWORD, markets), now=site.clock.now()
    )


# ---------------------------------------------------------------- row 1: the throttle


def test_a_guesser_cannot_keep_the_owner_out_from_another_address(site: Site) -> None:
    """Was: five wrong passwords from anywhere answered the owner 429, Retry-After 894."""
    fresh_user(site, "wu")
    with from_address(site, "203.0.113.66") as guesser:
        for _ in range(signin.PAIR_LIMIT):
            assert try_password(guesser, "wu", "wrong password").status_code == 401
        refused = try_password(guesser, "wu", PASSWORD)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    with from_address(site, "198.51.100.7") as owner:
        signed = try_password(owner, "wu", PASSWORD)
        assert signed.status_code == 303, signed.text[:300]
        assert owner.get("/account").status_code == 200


def test_unknown_names_tried_behind_one_nat_do_not_lock_out_the_others(site: Site) -> None:
    fresh_user(site, "zheng")
    with from_address(site, "100.64.9.9") as nat:
        for i in range(5):
            assert try_password(nat, f"nobody{i}", "whatever it is").status_code == 401
        assert try_password(nat, "zheng", PASSWORD).status_code == 303


def test_the_owners_phone_signs_in_behind_an_address_that_is_guessing(site: Site) -> None:
    fresh_user(site, "huang")
    with from_address(site, "100.64.7.7") as phone:
        assert try_password(phone, "huang", PASSWORD).status_code == 303  # the device cookie
        phone.post("/logout", data={"csrf_token": csrf_of(phone, "/account")})
        with site.engine.begin() as conn:  # someone behind the same address guesses a lot
            conn.execute(
                sa.insert(LoginFailure),
                [
                    {"username": f"x{i}", "client": "100.64.7.7", "at": site.clock.now()}
                    for i in range(signin.CLIENT_LIMIT)
                ],
            )
        with from_address(site, "100.64.7.7") as stranger:
            assert try_password(stranger, "huang", PASSWORD).status_code == 429
        assert try_password(phone, "huang", PASSWORD).status_code == 303


def test_guesses_sent_all_at_once_are_throttled_as_one_after_another(site: Site) -> None:
    """Was: the failures were counted before the attempt was written down, so thirty wrong
    passwords sent in parallel were all judged on the failures before them: thirty
    guesses (401) where the limit is five, the rest 429."""
    fresh_user(site, "qian")
    guessers = [from_address(site, "203.0.113.99") for _ in range(30)]
    tokens = [csrf_of(g) for g in guessers]

    def guess(i: int) -> int:
        form = {"username": "qian", "password": f"guess {i}", "csrf_token": tokens[i]}
        return guessers[i].post("/login", data=form).status_code

    with ThreadPoolExecutor(len(guessers)) as pool:
        answers = sorted(pool.map(guess, range(len(guessers))))
    for g in guessers:
        g.close()
    assert answers.count(401) <= signin.PAIR_LIMIT, answers
    assert set(answers) <= {401, 429}
    with site.engine.connect() as conn:
        kept = conn.execute(
            sa.select(sa.func.count())
            .select_from(LoginFailure)
            .where(LoginFailure.username == "qian")
        ).scalar_one()
    assert kept == answers.count(401)  # a refused attempt is not a failure
    with from_address(site, "198.51.100.8") as owner:
        assert try_password(owner, "qian", PASSWORD).status_code == 303


# ---------------------------------------------------------------- row 2: sessions


def test_a_copied_cookie_stops_working_when_its_owner_signs_out(site: Site) -> None:
    """Was: a replay after POST /logout answered 200, for reads and CSRF-protected writes."""
    with closing(site.client("mgr_a")) as browser:
        cookie = browser.cookies["marketcare_session"]
        csrf = browser.headers["X-CSRF-Token"]
        with site.client() as thief:
            thief.cookies.set("marketcare_session", cookie)
            assert thief.get("/api/v1/me", headers={"X-CSRF-Token": csrf}).status_code == 200
            browser.post("/logout", data={"csrf_token": csrf})
            assert thief.get("/api/v1/me").status_code == 401
            assert thief.get("/account").status_code == 303  # to the sign-in page
            write = thief.put(
                "/api/v1/me/language", json={"language": "en"}, headers={"X-CSRF-Token": csrf}
            )
            assert write.status_code == 401


def session_csrf(client: httpx.Client) -> str:
    """The CSRF token the session cookie holds (Starlette's cookie: signed, not secret)."""
    payload = client.cookies["marketcare_session"].split(".")[0]
    return str(json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["csrf"])


def test_no_page_carries_the_csrf_token_byte_for_byte(site: Site, mgr_a: httpx.Client) -> None:
    """Was: every page carried the session's CSRF token as it is. Pages travel
    gzip-compressed and some echo what their address says (a date, the page to go to
    next): a secret repeated in every compressed answer beside text an attacker chooses
    can be read off the answers' sizes (BREACH). Each page now carries it masked afresh;
    every masking of it is the token, for forms and scripts alike."""
    secret = session_csrf(mgr_a)
    pages = [mgr_a.get(p) for p in ("/account", "/account", "/exports/download?date=x")]
    given = [re.search(r'name="csrf-token" content="([^"]+)"', p.text) for p in pages]
    tokens = [m.group(1) for m in given if m is not None]
    assert len(set(tokens)) == len(pages)
    assert not any(secret in p.text for p in pages)
    for token in (*tokens, secret):  # a page kept from before the masking still works
        mgr_a.headers["X-CSRF-Token"] = token
        assert mgr_a.put("/api/v1/me/language", json={"language": "en"}).status_code == 200
    for wrong in (tokens[0][:-2] + "AA", tokens[0][1:], "A" * len(tokens[0]), ""):
        mgr_a.headers["X-CSRF-Token"] = wrong
        assert mgr_a.put("/api/v1/me/language", json={"language": "en"}).status_code == 403


def test_the_account_page_lists_devices_and_signs_out_everywhere(site: Site) -> None:
    fresh_user(site, "lin")
    phone = site.client(headers={"User-Agent": "Mozilla/5.0 (Linux; Android 13) Chrome/120"})
    laptop = site.client(headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0) Firefox/121"})
    with phone, laptop:
        sign_in(phone, "lin")
        sign_in(laptop, "lin")
        page = laptop.get("/account")
        assert page.headers["cache-control"] == "no-store"
        assert "Chrome · Android" in page.text and "Firefox · Windows" in page.text
        assert page.text.count('class="card device"') == 2
        ended = laptop.post("/account/sessions/end-all", data={})
        assert ended.status_code == 303 and ended.headers["location"] == "/login"
        assert phone.get("/api/v1/me").status_code == 401
        assert laptop.get("/api/v1/me").status_code == 401


def test_a_session_lasts_while_used_but_not_past_its_absolute_lifetime(site: Site) -> None:
    with closing(site.client("mgr_b")) as c:
        try:
            for _ in range(3):  # used every nine days: never idle for fourteen
                site.clock.advance(days=9)
                assert c.get("/api/v1/me").status_code == 200
            site.clock.advance(days=4)  # 31 days after sign-in: past web_session_max_days
            assert c.get("/api/v1/me").status_code == 401
        finally:
            site.clock.at -= timedelta(days=31)


# ---------------------------------------------------------------- row 3: tokens


def test_a_password_reset_revokes_the_users_tokens(site: Site) -> None:
    """Was: both tokens answered 200 after a reset."""
    uid = fresh_user(site, "chen")
    tokens = [accounts.create_token(site.engine, uid, n, now=site.clock.now())[1] for n in "ab"]
    with site.api("operator") as op:
        reset = op.post("/api/v1/users/chen/password", json={"password": "a new long one!"})
        assert reset.status_code == 200
    for token in tokens:
        with httpx.Client(base_url=site.base, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/api/v1/me").status_code == 401


def test_making_a_token_asks_for_the_password_again(site: Site) -> None:
    with closing(site.client("mgr_a")) as c:
        missing = c.post("/api/v1/tokens", json={"name": "x"})
        assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "password"
        wrong = c.post("/api/v1/tokens", json={"name": "x", "password": "not it at all"})
        assert wrong.status_code == 403 and wrong.json()["field"] == "password"
        made = c.post("/api/v1/tokens", json={"name": "门禁", "password": PASSWORD})
        assert made.status_code == 201 and made.json()["token"].startswith("mc_")
        page = c.post(
            "/account/tokens",
            data={"name": "y", "password": "not it", "csrf_token": csrf_of(c, "/account")},
        )
        assert page.status_code == 403 and 'data-field="password"' in page.text


def test_an_operator_lists_and_revokes_anyones_tokens(site: Site) -> None:
    uid = fresh_user(site, "guo")
    tid, token = accounts.create_token(site.engine, uid, "报表系统", now=site.clock.now())
    with site.api("operator") as op:
        listed = op.get("/api/v1/users/guo/tokens").json()
        assert [(t["id"], t["name"], t["revoked"]) for t in listed] == [(tid, "报表系统", False)]
        assert op.delete(f"/api/v1/users/guo/tokens/{tid}").json() == {"id": tid, "revoked": True}
        assert op.delete(f"/api/v1/users/guo/tokens/{tid}").status_code == 404
    with httpx.Client(base_url=site.base, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/v1/me").status_code == 401
    other, _ = accounts.create_token(site.engine, uid, "郭的门禁", now=site.clock.now())
    with closing(site.client("operator")) as op:
        page = op.get("/admin/tokens")
        assert page.status_code == 200 and "郭的门禁" in page.text
        revoked = op.post(f"/admin/tokens/{other}/revoke", data={"username": "guo"})
        assert revoked.status_code == 303
        assert "郭的门禁" not in op.get("/admin/tokens").text
    with closing(site.client("mgr_a")) as manager:
        assert manager.get("/admin/tokens").status_code == 403


# ---------------------------------------------------------------- row 4: headers


def test_every_page_and_api_answer_carries_the_security_headers(site: Site) -> None:
    with closing(site.client("mgr_a")) as c, site.client() as anonymous:
        for client, path in [
            (anonymous, "/login"),
            *((c, p) for p in ("/m/lizhong", "/account", "/api/v1/me", "/api/openapi.json")),
        ]:
            r = client.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp, path
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
            assert "geolocation=()" in r.headers["permissions-policy"]
            assert r.headers["cache-control"] == "no-store", path
            assert "strict-transport-security" not in r.headers  # plain HTTP here
            assert "server" not in r.headers
        assert c.get("/static/app.css").headers.get("cache-control") != "no-store"


#: the headers the middleware adds to every answer (Cache-Control aside)
SECURITY_HEADERS = (
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "permissions-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
)


def test_each_security_header_is_sent_once_whether_or_not_the_answer_set_some_itself(
    site: Site,
) -> None:
    with site.api("mgr_a") as api, site.client() as anonymous:
        plain = api.get("/api/v1/me")  # sets none of them: they are appended as encoded
        worker = anonymous.get("/sw.js")  # chooses its own caching
    for r in (plain, worker):
        assert r.status_code == 200
        for name in SECURITY_HEADERS:
            assert len(r.headers.get_list(name)) == 1, (r.url, name)
        assert len(r.headers.get_list("cache-control")) == 1, r.url
    assert [plain.headers[n] for n in SECURITY_HEADERS] == [
        worker.headers[n] for n in SECURITY_HEADERS
    ]
    assert plain.headers["cache-control"] == "no-store"
    assert worker.headers["cache-control"] == "no-cache"


def test_https_sites_send_strict_transport_security(site: Site) -> None:
    settings = site.settings.model_copy(update={"web_secure_cookies": True})
    app = create_app(settings, site.engine, clock=site.clock.now)
    with served(app) as c:
        assert c.get("/login").headers["strict-transport-security"] == security.HSTS


def test_api_docs_load_swagger_ui_from_this_server_only(site: Site) -> None:
    with site.client() as c:
        page = c.get("/api/docs")
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/") for s in sources), sources
        assert "<script>" not in page.text  # no inline script: the CSP allows none
        for source in sources:
            assert c.get(source).status_code == 200, source


def test_api_docs_can_be_turned_off(site: Site) -> None:
    settings = site.settings.model_copy(update={"web_api_docs": False})
    app = create_app(settings, site.engine, clock=site.clock.now)
    with served(app) as c:
        assert c.get("/api/docs").status_code == 404
        assert c.get("/api/openapi.json").status_code == 200


# ---------------------------------------------------------------- row 5: photos


def upload(client: httpx.Client) -> str:
    r = client.post("/api/v1/evidence", files={"file": ("p.jpg", JPEG, "image/jpeg")})
    assert r.status_code == 201, r.text
    return str(r.json()["sha256"])


def test_another_markets_photo_hash_cannot_be_attached_or_read(site: Site) -> None:
    """Was: attaching another market's hash answered 201, then 200 with its image."""
    theirs = evidence.store_bytes("x.jpg", JPEG + b"xinhua", site.settings.evidence_dir)
    now = site.clock.now()
    rectification.add(
        site.engine,
        rectification.NewProblem(
            market_id="xinhua",
            category="sanitation",
            description="水沟",
            found_by="office",
            found_at=now,
            deadline=now + timedelta(days=2),
            evidence=[theirs],
        ),
        now=now,
    )
    unknown = "ab" * 32
    problem = {"category": "order", "description": "占道", "deadline": "2026-12-01"}
    with site.api("mgr_a") as c:
        answers = [
            c.post("/api/v1/markets/lizhong/problems", json={**problem, "photos": [digest]})
            for digest in (theirs["sha256"], unknown)
        ]
        assert [a.status_code for a in answers] == [422, 422]
        assert (
            answers[0].json()["detail"].replace(theirs["sha256"], unknown)
            == (answers[1].json()["detail"])
        )
        mine = upload(c)
        ok = c.post("/api/v1/markets/lizhong/problems", json={**problem, "photos": [mine]})
        assert ok.status_code == 201
        pid = ok.json()["id"]
        reads = [c.get(f"/api/v1/problems/{pid}/photos/{d}") for d in (theirs["sha256"], unknown)]
        assert [r.status_code for r in reads] == [404, 404]
        assert reads[0].json() == reads[1].json()
        assert c.get(f"/api/v1/problems/{pid}/photos/{mine}").content == JPEG
    with site.api("mgr_b") as other:  # a hash seen on a page is not a way in
        assert other.get(f"/api/v1/problems/{pid}/photos/{mine}").status_code == 404
        rectified = other.post(f"/api/v1/problems/{pid}/rectify", json={"note": "x"})
        assert rectified.status_code == 404


def test_a_photo_the_market_already_keeps_may_be_attached_again_by_its_people(
    site: Site,
) -> None:
    with site.api("mgr_a") as a:
        digest = upload(a)
        problem = {"category": "order", "description": "再次", "deadline": "2026-12-01"}
        assert a.post(
            "/api/v1/markets/lizhong/problems", json={**problem, "photos": [digest]}
        ).status_code in (200, 201)
    with site.api("office") as office:  # not the uploader; the market keeps it
        problem = {"category": "order", "description": "督查", "deadline": "2026-12-01"}
        made = office.post("/api/v1/markets/lizhong/problems", json={**problem, "photos": [digest]})
        assert made.status_code == 201, made.text
        elsewhere = office.post(
            "/api/v1/markets/xinhua/problems", json={**problem, "photos": [digest]}
        )
        assert elsewhere.status_code == 422


def test_a_photo_named_after_another_markets_photo_is_not_a_way_to_it(
    site: Site, mgr_b: httpx.Client
) -> None:
    """Was: the markets keeping a photo were found by its hash anywhere in a record's
    evidence, the file name the phone sent included. A manager who reported a problem of
    their own market with a photo named after another market's hash then read that
    market's photo (200) and could attach it to their own records."""
    problem = {"category": "order", "description": "占道", "deadline": "2026-12-01"}
    with site.api("mgr_a") as a:
        theirs = upload(a)
        made = a.post("/api/v1/markets/lizhong/problems", json={**problem, "photos": [theirs]})
        assert made.status_code == 201, made.text
    reported = mgr_b.post(
        "/m/xinhua/problems",
        data={**problem, "deadline": "2026-12-01"},
        files={"photo": (f"{theirs}.jpg", JPEG + b"decoy", "image/jpeg")},
    )
    assert reported.status_code == 303, reported.text
    decoy = hashlib.sha256(JPEG + b"decoy").hexdigest()
    assert mgr_b.get(f"/evidence/{decoy}").status_code == 200
    assert mgr_b.get(f"/evidence/{theirs}").status_code == 404
    with site.api("mgr_b") as b:
        again = b.post("/api/v1/markets/xinhua/problems", json={**problem, "photos": [theirs]})
        assert again.status_code == 422, again.text


def png_declaring(width: int, height: int) -> bytes:
    """The start of a PNG whose header declares ``width`` × ``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + crc


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG's first segments: JFIF, then a frame of ``width`` × ``height`` pixels."""
    frame = struct.pack(">BHHB", 8, height, width, 3) + bytes(9)
    return (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + b"\xff\xc0"
        + struct.pack(">H", 2 + len(frame))
        + frame
    )


def test_an_image_declaring_more_pixels_than_any_camera_is_refused(
    site: Site, mgr_a: httpx.Client
) -> None:
    """Was: a 60 kB PNG declaring 100,000 × 100,000 pixels (a decompression bomb: 40 GB
    once decoded) was kept and shown to every phone that opened the record. The server
    never decodes a photo; it reads the size its header declares."""
    bombs = [
        ("bomb.png", png_declaring(100_000, 100_000) + bytes(60_000)),
        ("bomb.jpg", jpeg_declaring(60_000, 60_000) + bytes(1_000)),
    ]
    photos = [
        ("ok.png", png_declaring(4_000, 3_000) + bytes(1_000)),
        ("ok.jpg", jpeg_declaring(16_320, 12_240) + bytes(1_000)),  # the largest phone camera
    ]
    with site.api("mgr_a") as a:
        for name, data in bombs:
            refused = a.post("/api/v1/evidence", files={"file": (name, data, "image/png")})
            assert refused.status_code == 415, refused.text
            assert "pixels" in refused.json()["detail"]
        for name, data in photos:
            kept = a.post("/api/v1/evidence", files={"file": (name, data, "image/png")})
            assert kept.status_code == 201, kept.text
    problem = {"category": "order", "description": "占道", "deadline": "2026-12-01"}
    page = mgr_a.post("/m/lizhong/problems", data=problem, files={"photo": bombs[0]})
    assert page.status_code == 400
    assert (
        list(site.settings.evidence_dir.glob(hashlib.sha256(bombs[0][1]).hexdigest() + "*")) == []
    )


# ---------------------------------------------------------------- row 6: calendar feeds


def feed_of(site: Site, user: str) -> str:
    with site.api(user) as c:
        r = c.get("/api/v1/markets/lizhong/calendar")
    assert r.status_code == 200, r.text
    return str(r.json()["url"])


def test_calendar_addresses_are_per_user_and_end_with_the_users_access(site: Site) -> None:
    """Was: one key per market, kept by a disabled or reassigned manager for ever."""
    uid = fresh_user(site, "feng")
    site.tokens["feng"] = accounts.create_token(site.engine, uid, "t", now=site.clock.now())[1]
    mine, office = feed_of(site, "feng"), feed_of(site, "office")
    assert mine != office and mine != feed_of(site, "mgr_a")
    assert httpx.get(site.base + mine).status_code == 200
    with closing(site.client("feng")) as c:
        assert c.post("/account/calendar/rotate", data={}).status_code == 303
        rotated = feed_of(site, "feng")
        assert rotated != mine and rotated.rsplit("/", 1)[1] in c.get("/account").text
    assert httpx.get(site.base + mine).status_code == 404
    assert httpx.get(site.base + rotated).status_code == 200
    accounts.set_disabled(site.engine, "feng")
    assert httpx.get(site.base + rotated).status_code == 404
    assert httpx.get(site.base + office).status_code == 200


def test_a_manager_moved_to_another_market_loses_the_old_markets_feed(site: Site) -> None:
    uid = fresh_user(site, "qian")
    site.tokens["qian"] = accounts.create_token(site.engine, uid, "t", now=site.clock.now())[1]
    url = feed_of(site, "qian")
    from marketcare.ledger.models import UserMarket

    with site.engine.begin() as conn:
        conn.execute(
            sa.update(UserMarket).where(UserMarket.user_id == uid).values(market_id="xinhua")
        )
    assert httpx.get(site.base + url).status_code == 404


def test_the_nginx_example_does_not_log_calendar_keys() -> None:
    text = (ROOT / "deploy" / "nginx.conf.example").read_text(encoding="utf-8")
    block = re.search(r"location /calendar/ \{(.*?)\n    \}", text, re.S)
    assert block is not None and "access_log off;" in block.group(1)
    assert "proxy_pass http://marketcare;" in block.group(1)


# ---------------------------------------------------------------- row 7: the last operator


def test_an_operator_cannot_disable_their_own_account_through_the_api(site: Site) -> None:
    """Was: 200, then 401 for everything."""
    with site.api("operator") as op:
        r = op.post("/api/v1/users/operator/disable")
        assert r.status_code == 409 and r.json()["field"] == "username"
        assert op.get("/api/v1/me").status_code == 200
    with closing(site.client("operator")) as page:
        refused = page.post("/admin/users/operator/disable", data={})
        assert refused.status_code == 400


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI in this process (typer's runner) on a fresh ledger with its first operator."""
    for key, value in make_env(tmp_path).items():
        if key.startswith("MARKETCARE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(make_schedule_text(), encoding="utf-8")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    assert invoke("init").exit_code == 0
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str, stdin: str | None = None) -> Result:
    from marketcare.cli import app

    return CliRunner().invoke(app, list(args), input=stdin)


@pytest.mark.usefixtures("cli_env")
def test_operators_manage_tokens_feeds_and_operators_on_the_command_line() -> None:
    made = invoke("users", "token", "admin", "--name", "监控")
    assert made.exit_code == 0 and made.stdout.strip().startswith("mc_")
    listed = json.loads(invoke("users", "tokens", "admin", "--json").stdout)
    assert [(t["name"], t["revoked"]) for t in listed] == [("监控", False)]
    everyone = json.loads(invoke("users", "tokens", "--json").stdout)
    assert [t["username"] for t in everyone] == ["admin"]
    kept = invoke(
        "users",
        "passwd",
        "admin",
        "--password-stdin",
        "--keep-tokens",
        stdin="a long enough password\n",
    )
    assert kept.exit_code == 0 and "kept" in kept.stdout
    assert invoke("users", "revoke-token", "admin", str(listed[0]["id"])).exit_code == 0
    again = invoke("users", "revoke-token", "admin", str(listed[0]["id"]))
    assert again.exit_code == 1 and "no active token" in again.stderr
    assert invoke("users", "rotate-feed", "admin").exit_code == 0
    refused = invoke("users", "disable", "admin")
    assert refused.exit_code == 1 and "last active operator" in refused.stderr


# ---------------------------------------------------------------- row 8: metrics, the log


def declaring(
    site: Site, path: str, length: int, kind: str = "application/json", *, token: str = ""
) -> bytes:
    """The first line of the answer to a POST that only declares ``length`` bytes (an
    HTTP client will not send a body shorter than its Content-Length)."""
    bearer = f"Authorization: Bearer {token}\r\n" if token else ""
    url = httpx.URL(site.base)
    with socket.create_connection((url.host, url.port), timeout=30) as raw:
        raw.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {length}\r\n{bearer}\r\n{{}}".encode()
        )
        return raw.recv(4096).split(b"\r\n", 1)[0] + b" "


def test_a_body_too_large_to_hold_is_refused_before_the_caller_is_asked_for(
    site: Site,
) -> None:
    """FastAPI reads a JSON or form body whole before it checks who is calling: without a
    bound, anyone could make the daemon hold gigabytes. Refused with 413 whether the
    request is anonymous, carries a token (the tick's shortcut) or a session's form, or
    only declares its size; an ordinary tick still takes the shortcut."""
    tick = f"/api/v1/obligations/{site.obligation('lizhong', 'disinfect', 'veg')}/completions"
    big = json.dumps({"token": "x" * (security.HELD_BODY_MAX + 1)}).encode()
    json_type = {"content-type": "application/json"}
    with site.client() as anonymous, site.api("mgr_a") as manager:
        assert anonymous.post(tick, content=big, headers=json_type).status_code == 413
        assert manager.post(tick, content=big, headers=json_type).status_code == 413
        form = {"username": "x" * (security.HELD_BODY_MAX + 1), "password": "p"}
        assert anonymous.post("/login", data=form).status_code == 413
        assert declaring(site, tick, 10**10).startswith(b"HTTP/1.1 413 ")
        taken = api.TickShortcut.taken
        answer = manager.post(tick, json={"token": "bounded-1"})  # no reading: 422
        assert answer.status_code == 422, answer.text
        assert api.TickShortcut.taken == taken + 1


def test_a_form_with_files_larger_than_the_form_bound_is_refused_before_it_is_spooled(
    site: Site,
) -> None:
    """Each photo is bounded by ``upload_max_bytes``, but a form may carry a thousand
    parts, each spooled to disk: the whole form is bounded too, before any of it is
    written; a form under the bound still reaches its route (here: not signed in)."""
    multipart = "multipart/form-data; boundary=x"
    bound = site.settings.upload_form_max_bytes
    assert declaring(site, "/inspect/lizhong", bound + 1, multipart).startswith(b"HTTP/1.1 413 ")
    upload = declaring(site, "/api/v1/evidence", 10**12, multipart, token=site.tokens["mgr_a"])
    assert upload.startswith(b"HTTP/1.1 413 ")
    # an anonymous one is told who may upload, without a byte of it read
    assert declaring(site, "/api/v1/evidence", 10**12, multipart).startswith(b"HTTP/1.1 401 ")
    with site.client() as anonymous:
        small = anonymous.post("/inspect/lizhong", files={"photo.a": ("a.jpg", JPEG)})
        assert small.status_code != 413


def test_metrics_are_not_served_on_the_public_listener_by_default(site: Site) -> None:
    assert site.settings.metrics_token is None and site.settings.metrics_listen is None
    with site.client() as c:
        assert c.get("/metrics").status_code == 404


def test_the_security_log_tells_sign_in_failures_throttling_refusals_and_token_changes(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_user(site, "he")
    caplog.set_level(logging.INFO, logger="marketcare.security")
    with from_address(site, "192.0.2.44") as c:
        for _ in range(signin.PAIR_LIMIT + 1):
            try_password(c, "he", "wrong password")
    with site.api("mgr_a") as c:
        c.get("/api/v1/markets/xinhua/today")
        c.get("/api/v1/users")
    with site.api("operator") as op:
        tid = accounts.create_token(
            site.engine, accounts.user_id_of(site.engine, "he"), "x", now=site.clock.now()
        )[0]
        op.delete(f"/api/v1/users/he/tokens/{tid}")
    lines = [
        (r.getMessage(), r.__dict__) for r in caplog.records if r.name == "marketcare.security"
    ]
    events = {msg for msg, _ in lines}
    assert {
        "signin_failed",
        "signin_throttled",
        "access_refused",
        "token_created",
        "token_revoked",
    } <= events
    failed = next(f for m, f in lines if m == "signin_failed" and f["user"] == "he")
    assert failed["client"] == "192.0.2.44" and failed["reason"] == "wrong password"
    refused = [f for m, f in lines if m == "access_refused" and f["user"] == "mgr_a"]
    assert {(f["action"], f["status"]) for f in refused} >= {
        ("view_market", 404),
        ("manage_users", 403),
    }
    revoked = next(f for m, f in lines if m == "token_revoked" and f["user"] == "he")
    assert revoked["by"] == "operator"


def test_a_user_name_cannot_forge_a_log_line(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    from marketcare.logs import TextFormatter

    caplog.set_level(logging.INFO, logger="marketcare.security")
    with from_address(site, "192.0.2.45") as c:
        try_password(c, "x\n2026-01-01 INFO marketcare.security: signin user=admin", "p")
    record = next(r for r in caplog.records if r.getMessage() == "signin_failed")
    assert "\n" not in TextFormatter().format(record)


def test_sessions_are_rows_without_the_key(site: Site) -> None:
    with closing(site.client("office")) as c:
        key_cookie = c.cookies["marketcare_session"]
    with site.engine.connect() as conn:
        hashes = conn.execute(sa.select(WebSession.key_hash)).scalars().all()
    assert hashes and all(len(h) == 64 for h in hashes)
    assert not any(h in key_cookie for h in hashes)


def test_settings_refuse_a_malformed_metrics_address() -> None:
    from marketcare.errors import SettingsError
    from marketcare.settings import load_settings

    with pytest.raises(SettingsError, match="metrics_listen"):
        load_settings(metrics_listen="nine thousand")
    with pytest.raises(SettingsError, match="metrics_token"):
        load_settings(metrics_token="short")
    assert Settings(metrics_listen="127.0.0.1:9108").metrics_address == ("127.0.0.1", 9108)


def test_settings_refuse_a_form_bound_that_cannot_hold_one_photo() -> None:
    from marketcare.errors import SettingsError
    from marketcare.settings import load_settings

    with pytest.raises(SettingsError, match="upload_form_max_bytes"):
        load_settings(upload_max_bytes=50_000_000, upload_form_max_bytes=20_000_000)


def test_a_refusal_made_by_the_web_framework_is_a_page_for_a_browser_and_json_for_the_api(
    site: Site,
) -> None:
    """An address that does not exist, a method a route does not take, a form too large
    to hold: a browser shows the site's own error page (not a line of JSON), and the API
    answers with its usual ``detail``."""
    big_form = {"username": "x" * (security.HELD_BODY_MAX + 1), "password": "p"}
    with site.client() as browser:
        for answer, status in (
            (browser.get("/no-such-page"), 404),
            (browser.delete("/login"), 405),
            (browser.post("/login", data=big_form), 413),
        ):
            assert answer.status_code == status
            assert answer.headers["content-type"].startswith("text/html"), answer.text
            assert "<main" in answer.text and 'role="alert"' in answer.text
            assert answer.headers["x-content-type-options"] == "nosniff"
        too_large = browser.post("/login", data=big_form).text
        assert "1 MB" in too_large
    with site.api("mgr_a") as c:
        missing = c.get("/api/v1/no-such-thing")
        assert missing.status_code == 404 and missing.json()["detail"]
        big = json.dumps({"token": "x" * (security.HELD_BODY_MAX + 1)}).encode()
        tick = f"/api/v1/obligations/{site.obligation('lizhong', 'disinfect', 'veg')}/completions"
        refused = c.post(tick, content=big, headers={"content-type": "application/json"})
        assert refused.status_code == 413 and "1 MB" in refused.json()["detail"]
        assert refused.headers["x-content-type-options"] == "nosniff"
