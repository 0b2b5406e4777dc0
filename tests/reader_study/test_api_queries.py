"""Queries per request of the reader's API (open and submit): bounded, whatever the worklist's length.

The bench (bench/bench_reading_load.py) measures the time; these bounds keep the per-request work
from creeping back (each query is a round trip under load)."""
from __future__ import annotations

import os

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from reader_study import selectors, services
from reader_study.models import Reading

pytestmark = pytest.mark.django_db

#: Upper bounds, measured 19-20 (open, 26 aided) and 28-29 (submit) before the lookups were joined;
#: 13-17 (open, 21 aided) and 17-18 (submit) after; then 13 on a first open whose viewer configuration
#: is not cached yet (6 on a reopen), 13 aided, 13 submit once reader, study, session, assignment and
#: case came in one query, both arms' readings in one, and the viewer configuration was cached per
#: exam. Of these, 3 are the session, user and roles. Then + 1 each: the reader and the assignment are
#: two short queries again (the eight-table join cost PostgreSQL 2.5 ms to plan; the pair 1 ms). Then
#: The next reading after a submit: two flat queries instead of one with two EXISTS subqueries, which
#: cost the ORM twice as much CPU to compile (4.8 -> 2.4 ms per submit), and a sequential reader's one
#: session is not read again.
MAX_OPEN_QUERIES = 14
MAX_SUBMIT_QUERIES = 14


def _count(client, method, url, **kwargs):
    with CaptureQueriesContext(connection) as ctx:
        response = getattr(client, method)(url, **kwargs)
    if os.environ.get("SHOW_QUERIES"):
        print(f"\n{method.upper()} {url}: {len(ctx.captured_queries)} queries")
        for q in ctx.captured_queries:
            print("   ", q["sql"][:300])
    return response, len(ctx.captured_queries)


def test_open_and_submit_stay_within_their_query_budget(client, open_world):
    w = open_world
    user = w["readers"][0]
    client.force_login(user)
    slug = w["study"].slug
    code = client.get(reverse("api:worklist", args=[slug])).json()["next"]["case"]
    unaided = reverse("api:reading-case", args=[slug, code, "unaided"])
    aided = reverse("api:reading-case", args=[slug, code, "aided"])

    opened, n_open = _count(client, "get", unaided)
    assert opened.status_code == 200
    reopened, n_reopen = _count(client, "get", unaided)
    assert reopened.status_code == 200 and reopened.json()["opened_at"] == opened.json()["opened_at"]
    submitted, n_submit = _count(client, "post", unaided, data={"decision": True, "confidence": 65},
                                 content_type="application/json")
    assert submitted.status_code == 201 and submitted.json()["next"] == {"case": code, "arm": "aided"}
    opened_aided, n_open_aided = _count(client, "get", aided)
    assert opened_aided.status_code == 200 and opened_aided.json()["ai"] is not None
    answer = {"decision": False, "confidence": 40, "ai_agreement": "unsure", "explanation_usefulness": 3}
    submitted_aided, n_submit_aided = _count(client, "post", aided, data=answer, content_type="application/json")
    assert submitted_aided.status_code == 201
    assert submitted_aided.json()["next"]["arm"] == "unaided" and submitted_aided.json()["next"]["case"] != code
    assert Reading.objects.filter(reader__user=user, submitted_at__isnull=False).count() == 2

    assert max(n_open, n_reopen) <= MAX_OPEN_QUERIES, (n_open, n_reopen)
    assert n_open_aided <= MAX_OPEN_QUERIES + 1, n_open_aided  # + the AI panel's prediction
    assert max(n_submit, n_submit_aided) <= MAX_SUBMIT_QUERIES, (n_submit, n_submit_aided)


def test_a_locked_answer_costs_no_more_than_a_stored_one(client, open_world):
    w = open_world
    client.force_login(w["readers"][0])
    slug = w["study"].slug
    code = client.get(reverse("api:worklist", args=[slug])).json()["next"]["case"]
    url = reverse("api:reading-case", args=[slug, code, "unaided"])
    client.get(url)
    assert client.post(url, {"decision": True, "confidence": 65}, content_type="application/json").status_code == 201
    again, n = _count(client, "post", url, data={"decision": False, "confidence": 1}, content_type="application/json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "locked"
    assert n <= MAX_SUBMIT_QUERIES, n
    assert Reading.objects.get(reader__user=w["readers"][0], case__code=code, arm="unaided").confidence == 65


def _first_open_in_worklist(reader):
    for ws in selectors.worklist(reader):
        for row in ws.rows:
            for arm, _, state in row.arms:
                if ws.state == "open" and state == "open":
                    return row.code, arm
    return None


@pytest.mark.parametrize(("design", "washout_days"), [("sequential", 0), ("crossover", 0), ("crossover", 28)])
def test_next_reading_is_the_worklists_first_open_reading_all_the_way(design, washout_days):
    """The two-query ``next_reading`` agrees with the worklist at every step of a reader's study, across
    the sequential aided-after-unaided rule, crossover sessions and the washout."""
    from tests.reader_study.conftest import make_world

    w = make_world(design=design, washout_days=washout_days)
    services.study_open(study=w["study"], user=w["coordinator"])
    user = w["readers"][0]
    steps = 0
    while True:
        reader = selectors.study_reader_for(user, w["study"].slug)
        expected = _first_open_in_worklist(reader)
        assert selectors.next_reading(reader) == expected
        if expected is None:
            break
        code, arm = expected
        assignment = selectors.assignment_for(reader, code, arm)
        reading = services.reading_open(assignment=assignment, arm=arm, user=user)
        answer = {"decision": True, "confidence": 50}
        if arm == "aided":
            answer |= {"ai_agreement": "agree", "explanation_usefulness": 4}
        services.reading_submit(reading=reading, answer=answer, user=user)
        steps += 1
    # every reading of the reader (2 arms x 6 cases) unless the washout holds session 2 back
    assert steps == (6 if washout_days else 12)
