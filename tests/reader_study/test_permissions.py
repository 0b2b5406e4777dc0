"""Every reader-study page and endpoint, for every role: the expected status code.

Its own world: an open sequential study on a cohort with exams of sites "home" and "other", readers
of both sites, a reader of the same site who is not in the study, coordinators of home (creator),
of other (a centre of the cohort) and of a third site, a statistician, a researcher, a superuser.
tests/apps/test_permissions.py counts these URLs as walked (its "every URL" test reads ``CASES``).
"""
from __future__ import annotations

import pytest
from django.urls import reverse

from reader_study import services
from reader_study.models import Assignment
from reader_study.signing import image_token_make
from tests.factories import user_with
from tests.reader_study.conftest import make_world

ROLES = ["anon", "norole", "reader", "reader_out", "coordinator", "coord_other", "coord_third", "statistician",
         "researcher", "admin"]


@pytest.fixture
def rs_world(db):
    w = make_world()
    services.study_open(study=w["study"], user=w["coordinator"])
    reader = w["study"].readers.get(user=w["readers"][0])
    first = Assignment.objects.filter(session__reader=reader).order_by("position").select_related("case").first()
    users = {
        "anon": None,
        "norole": user_with(None),
        "reader": w["readers"][0],
        "reader_out": user_with("reader", w["home"]),
        "coordinator": w["coordinator"],
        "coord_other": user_with("coordinator", w["other"]),
        "coord_third": user_with("coordinator", w["third"]),
        "statistician": user_with("statistician", w["home"]),
        "researcher": user_with("researcher", w["home"]),
        "admin": user_with("admin"),
    }
    token = image_token_make(reader_id=reader.pk, case_id=first.case.pk, arm="unaided", what="pet_static")
    return {"users": users, "slug": w["study"].slug, "code": first.case.code, "token": token}


def _expect(default, **per_role):
    return {role: per_role.get(role, default) for role in ROLES}


MANAGE_DETAIL = _expect(403, anon=302, coordinator=200, coord_other=200, coord_third=404, admin=200)
MANAGE_POST = _expect(403, anon=302, coordinator=302, coord_other=302, coord_third=404, admin=302)
READER_PAGE = _expect(403, anon=302, reader=200, reader_out=404, admin=404)
READER_REDIRECT = _expect(403, anon=302, reader=302, reader_out=404, admin=404)
API_MANAGE_DETAIL = _expect(403, coordinator=200, coord_other=200, coord_third=404, admin=200)
API_READER = _expect(403, reader=200, reader_out=404, admin=404)
RESULTS_PAGE = _expect(403, anon=302, coordinator=200, coord_other=200, coord_third=404, statistician=200, admin=200)
RESULTS_API = _expect(403, coordinator=200, coord_other=200, coord_third=404, statistician=200, admin=200)

STUDY = {"slug": "slug"}
CASE = {"slug": "slug", "code": "code"}

# (url name, kwargs from the world, method, expectations)
CASES = [
    ("reader_study:list", {}, "get", _expect(200, anon=302, norole=403, researcher=403)),
    ("reader_study:create", {}, "get", _expect(403, anon=302, coordinator=200, coord_other=200, coord_third=200,
                                               admin=200)),
    ("reader_study:detail", STUDY, "get", MANAGE_DETAIL),
    ("reader_study:edit", STUDY, "get", MANAGE_DETAIL),
    ("reader_study:open", STUDY, "post", MANAGE_POST),  # already open: refused with a message
    ("reader_study:close", STUDY, "post", MANAGE_POST),
    ("reader_study:worklist", STUDY, "get", READER_PAGE),
    ("reader_study:next", STUDY, "get", READER_REDIRECT),
    ("reader_study:case", {**CASE, "arm": "=unaided"}, "get", READER_PAGE),
    ("reader_study:case", {**CASE, "arm": "=aided"}, "get", _expect(403, anon=302, reader_out=404, admin=404)),
    ("reader_study:case", {**CASE, "arm": "=unaided"}, "post",
     _expect(403, anon=302, reader_out=404, admin=404)),  # not opened yet: refused
    ("reader_study:case", {**CASE, "arm": "=other"}, "get", _expect(403, anon=302, reader=404, reader_out=404,
                                                                     admin=404)),
    ("reader_study:questionnaire", STUDY, "get", READER_REDIRECT),  # not due: back to the worklist
    ("reader_study:image", {"token": "token"}, "get", READER_PAGE),
    ("api:study-list", {}, "get", _expect(403, coordinator=200, coord_other=200, coord_third=200, admin=200)),
    ("api:study-detail", STUDY, "get", API_MANAGE_DETAIL),
    ("api:study-open", STUDY, "post", _expect(403, coordinator=409, coord_other=409, coord_third=404, admin=409)),
    ("api:study-close", STUDY, "post", API_MANAGE_DETAIL),
    ("api:worklist", STUDY, "get", API_READER),
    ("api:reading-case", {**CASE, "arm": "=unaided"}, "get", API_READER),
    ("api:reading-case", {**CASE, "arm": "=aided"}, "get", _expect(403, reader_out=404, admin=404)),
    ("api:reading-case", {**CASE, "arm": "=unaided"}, "post", _expect(403, reader=409, reader_out=404, admin=404)),
    # results (tests/reader_study/test_results_permissions.py walks them on a study with readings);
    # no reading here yet: figures 404, exports 409 (page) / 400 (API) for those allowed
    ("reader_study:results", STUDY, "get", RESULTS_PAGE),
    ("reader_study:results-figure", {**STUDY, "figure": "=roc"}, "get",
     {**RESULTS_PAGE, **{r: 404 for r, s in RESULTS_PAGE.items() if s == 200}}),
    ("reader_study:results-export", {**STUDY, "fmt": "=csv"}, "get",
     {**RESULTS_PAGE, **{r: 409 for r, s in RESULTS_PAGE.items() if s == 200}}),
    ("api:study-results", STUDY, "get", RESULTS_API),
    ("api:study-export", {**STUDY, "fmt": "=csv"}, "get",
     {**RESULTS_API, **{r: 400 for r, s in RESULTS_API.items() if s == 200}}),
]


def _resolve(world, value: str):
    return value[1:] if value.startswith("=") else world[value]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,kwargs,method,expected", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[1].get('arm', '')}" for c in CASES])
def test_status_for_role(client, rs_world, role, name, kwargs, method, expected):
    user = rs_world["users"][role]
    if user is not None:
        client.force_login(user)
    url = reverse(name, kwargs={k: _resolve(rs_world, v) for k, v in kwargs.items()})
    if method == "post":
        data = {"decision": True, "confidence": 50} if name == "api:reading-case" else {}
        response = client.post(url, data, content_type="application/json") if name.startswith("api:") \
            else client.post(url, data)
    else:
        response = client.get(url)
    assert response.status_code == expected[role], (name, role, response.status_code)
