"""Results page, figures, exports and API of a study, for every role: the expected status code.

Decided (docs/statistician.md): statisticians and coordinators of the study's sites (and the
coordinator who created it) see results and exports; superusers too; readers, researchers and users
without a role never (403), statisticians and coordinators of other sites get 404, and a reader of
the study never sees its results while it is open, whatever other role they hold (404).
"""
from __future__ import annotations

import pytest
from django.urls import reverse

from apps.accounts.models import Membership
from apps.audit.models import AuditEvent
from reader_study.models import StudyStatus
from reader_study.simulation import readers_simulate
from tests.factories import SiteFactory, user_with
from tests.reader_study.factories import study_world

ROLES = ["anon", "norole", "reader", "study_reader", "researcher", "coordinator", "coord_other",
         "statistician", "stat_other", "stat_reading", "site_admin", "admin"]


def _expect(default, **per_role):
    return {role: per_role.get(role, default) for role in ROLES}


PAGE = _expect(403, anon=302, coordinator=200, coord_other=404, statistician=200, stat_other=404,
               stat_reading=404, site_admin=200, admin=200)
API = _expect(403, coordinator=200, coord_other=404, statistician=200, stat_other=404, stat_reading=404,
              site_admin=200, admin=200)

# (url name, extra kwargs, expectations); every URL of the results part of the app
RESULTS_CASES = [
    ("reader_study:results", {}, PAGE),
    ("reader_study:results-figure", {"figure": "roc"}, PAGE),
    ("reader_study:results-export", {"fmt": "csv"}, PAGE),
    ("api:study-results", {}, API),
    ("api:study-export", {"fmt": "csv"}, API),
]


@pytest.fixture
def results_world(db):
    study = study_world(n_cases=8, n_readers=3, sites=("north", "south"), seed=3)
    north = study.cases.first().exam.patient.site
    third = SiteFactory(name="third")
    stat_reading = user_with("statistician", north)
    Membership.objects.create(user=stat_reading, site=north, role="reader")
    users = {
        "anon": None,
        "norole": user_with(None),
        "reader": user_with("reader", north),
        "study_reader": study.readers.first().user,
        "researcher": user_with("researcher", north),
        "coordinator": user_with("coordinator", north),
        "coord_other": user_with("coordinator", third),
        "statistician": user_with("statistician", north),
        "stat_other": user_with("statistician", third),
        "stat_reading": stat_reading,
        "admin": user_with("admin"),
    }
    site_admin = user_with(None)
    Membership.objects.create(user=site_admin, site=north, role="admin")
    users["site_admin"] = site_admin
    # the statistician who reads in this study (the study's readers are set before reading starts)
    from reader_study import services

    services.study_readers_set(study=study, user=None,
                               readers=[r.user for r in study.readers.all()] + [stat_reading])
    readers_simulate(study=study, n_readers=4, seed=1)
    return {"study": study, "users": users}


@pytest.mark.parametrize("role", ROLES)
def test_results_status_for_role(client, results_world, role):
    user = results_world["users"][role]
    if user is not None:
        client.force_login(user)
    for name, extra, expected in RESULTS_CASES:
        n_exports = AuditEvent.objects.filter(action="study.export").count()
        response = client.get(reverse(name, kwargs={"slug": results_world["study"].slug, **extra}))
        assert response.status_code == expected[role], (name, role, response.status_code)
        exported = AuditEvent.objects.filter(action="study.export").count() - n_exports
        assert exported == (1 if "export" in name and response.status_code == 200 else 0), (name, role)


def test_a_reader_sees_results_once_the_study_is_closed(client, results_world):
    study = results_world["study"]
    client.force_login(results_world["users"]["stat_reading"])
    url = reverse("reader_study:results", kwargs={"slug": study.slug})
    assert client.get(url).status_code == 404
    study.status = StudyStatus.CLOSED
    study.save()
    assert client.get(url).status_code == 200
    # a reader without a results role: still 403 after closing
    client.force_login(results_world["users"]["study_reader"])
    assert client.get(url).status_code == 403


def test_unknown_study_figure_and_format_answer_404(client, results_world):
    client.force_login(results_world["users"]["statistician"])
    slug = results_world["study"].slug
    assert client.get(reverse("reader_study:results", kwargs={"slug": "nope"})).status_code == 404
    assert client.get(reverse("reader_study:results-figure", kwargs={"slug": slug, "figure": "x"})).status_code == 404
    assert client.get(reverse("reader_study:results-export", kwargs={"slug": slug, "fmt": "xlsx"})).status_code == 404
    assert client.get(reverse("api:study-export", kwargs={"slug": slug, "fmt": "xlsx"})).status_code == 404
    assert not AuditEvent.objects.filter(action="study.export").exists()
