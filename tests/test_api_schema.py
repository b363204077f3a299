"""Property-based run of the API's own OpenAPI schema (schemathesis): whatever a client
sends, valid or not, the server never answers with a 5xx. Run as the office (reaches
every market) and as a market manager (reaches one; the others must be clean 404s).

Derandomized, so a failure reproduces on the next run; few examples per operation, so
the run stays short on a 2-core machine.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from marketcare.ledger import accounts
from marketcare.ledger.models import User

from .support.web import Site

USERS = ("office", "mgr_a")


@pytest.fixture(scope="module")
def api_schema(site: Site) -> Any:
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


#: examples per operation and generation mode
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 15}


def fuzz(schema: Any, token_id: int, token: str, mode: GenerationMode) -> list[str]:
    """Every operation of ``schema`` with generated requests; the failures, labelled."""
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES[mode],
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            if case.path_parameters and case.path_parameters.get("token_id") == token_id:
                case.path_parameters["token_id"] = token_id + 1_000_000
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
            )
            # the run is signed in throughout, or it would only test the 401
            assert response.status_code != 401, case.operation.label

        try:
            run()
        except Unsatisfiable:
            # negative mode: nothing in this operation can be made invalid (a free-text
            # path segment, no body); the positive run covers it
            assert mode == GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # noqa: BLE001 - collected, reported together below
            failures.append(f"{operation.label}: {exc}")
    return failures


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
@pytest.mark.parametrize("user", USERS)
def test_no_request_makes_a_server_error(
    api_schema: Any, fuzz_tokens: dict[str, tuple[int, str]], user: str, mode: GenerationMode
) -> None:
    token_id, token = fuzz_tokens[user]
    failures = fuzz(api_schema, token_id, token, mode)
    assert not failures, "\n\n".join(failures)
