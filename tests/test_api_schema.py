"""Property-based run of the API's own OpenAPI schema (schemathesis): whatever a client
sends, valid or not, the server never answers with a 5xx. Run as the office (reaches
every market) and as a market manager (reaches one; the others must be clean 404s).

Derandomized, so a failure reproduces on the next run; few examples per operation, so
the run stays short on a 2-core machine. The requests are generated once per mode and sent
as each user (generating them is most of the time, and depends on the schema only).

schemathesis and hypothesis are imported by the fixtures and functions that use them, not
when the module is collected: every pytest-xdist worker collects every module, and only
the one that runs this module needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from marketcare.ledger import accounts
from marketcare.ledger.models import User

from .support.procs import LIVENESS
from .support.web import Site

if TYPE_CHECKING:
    from schemathesis import GenerationMode

pytestmark = pytest.mark.heavy(20)

USERS = ("office", "mgr_a")


@pytest.fixture(scope="module")
def api_schema(site: Site) -> Any:
    import schemathesis

    return schemathesis.openapi.from_url(site.base + "/api/openapi.json")


@pytest.fixture(scope="module")
def fuzz_tokens(site: Site) -> dict[str, tuple[int, str]]:
    """A token per user made for this run (id, token), so the run's own DELETE of a
    token id never revokes the credential it is using; kept with the site, so every test
    of the module starts with them."""
    out: dict[str, tuple[int, str]] = {}
    with site.engine.connect() as conn:
        ids = {r.username: r.id for r in conn.execute(sa.select(User.username, User.id))}
    for user in USERS:
        out[user] = accounts.create_token(
            site.engine, ids[user], "schemathesis", now=site.clock.now()
        )
    site.keep()
    return out


#: examples per operation and generation mode (the values of schemathesis' ``GenerationMode``)
EXAMPLES = {"positive": 20, "negative": 15}


def generate(schema: Any, mode: GenerationMode) -> list[tuple[str, list[Any]]]:
    """Every operation of ``schema`` with its generated requests, not yet sent.

    Generating is most of this module's time (in negative mode hypothesis drafts seven
    requests for each one it keeps) and depends on the schema only, never on the user
    or the server's answers: so the requests are made once and sent as each user,
    rather than the same derandomized requests drafted again for the second user.
    """
    return [
        (result.ok().label, cases_of(result.ok(), mode)) for result in schema.get_all_operations()
    ]


def cases_of(operation: Any, mode: GenerationMode) -> list[Any]:
    """The requests hypothesis generates for one operation (none where nothing in it can be
    made invalid: a free-text path segment, no body; the positive run covers it)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    cases: list[Any] = []

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def collect(case: Any) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE, operation.label
    return cases


@pytest.fixture(scope="module")
def generated(api_schema: Any) -> dict[str, list[tuple[str, list[Any]]]]:
    """The requests of each generation mode (by its value), made by the first test that
    needs them."""
    from schemathesis import GenerationMode

    class Generated(dict[str, list[tuple[str, list[Any]]]]):
        def __missing__(self, mode: str) -> list[tuple[str, list[Any]]]:
            self[mode] = generate(api_schema, GenerationMode(mode))
            return self[mode]

    return Generated()


def fuzz(operations: list[tuple[str, list[Any]]], token_id: int, token: str) -> list[str]:
    """Send every generated request signed in with ``token``; the failures, labelled."""
    from schemathesis.checks import not_a_server_error

    failures: list[str] = []
    for label, cases in operations:
        for case in cases:
            own = case.path_parameters
            if own and own.get("token_id") == token_id:
                # never revoke the credential the run is using (the other user's run
                # sends the request as it was generated)
                case.path_parameters = {**own, "token_id": token_id + 1_000_000}
            try:
                response = case.call_and_validate(
                    headers={"Authorization": f"Bearer {token}"},
                    checks=[not_a_server_error],
                    # a liveness bound, not a performance check (schemathesis gives 10 s):
                    # the bulletin's PDF takes longer than that on a loaded 2-core machine
                    timeout=LIVENESS,
                )
                # the run is signed in throughout, or it would only test the 401
                assert response.status_code != 401, label
            except Exception as exc:  # noqa: BLE001 - collected, reported together below
                failures.append(f"{label}: {exc}")
                break  # the first failure of each operation, as hypothesis reported it
            finally:
                case.path_parameters = own
    return failures


@pytest.mark.parametrize("mode", list(EXAMPLES))
@pytest.mark.parametrize("user", USERS)
def test_no_request_makes_a_server_error(
    generated: dict[str, list[tuple[str, list[Any]]]],
    fuzz_tokens: dict[str, tuple[int, str]],
    user: str,
    mode: str,
) -> None:
    token_id, token = fuzz_tokens[user]
    failures = fuzz(generated[mode], token_id, token)
    assert not failures, "\n\n".join(failures)
