"""Issue 8, items 1 and 8: a model's per-case results and a cohort's exam ids follow the exams'
site scoping (a researcher of one site never sees another site's exams through them)."""
from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from apps.accounts.models import Membership
from ml.classical import evaluate_predictions
from tests.factories import CohortFactory, ExamFactory, ModelVersionFactory, SiteFactory, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_sites():
    """Exams at sites A and B, one cohort over both, a model evaluated on all of them (CV) and on B."""
    a, b = SiteFactory(name="site-a"), SiteFactory(name="site-b")
    exams_a = [ExamFactory(patient__site=a, diagnosis=d) for d in ("progression", "treatment_related") * 3]
    exams_b = [ExamFactory(patient__site=b, diagnosis=d) for d in ("progression", "treatment_related") * 2]
    exams = exams_a + exams_b
    rng = np.random.default_rng(3)
    y = np.array([e.diagnosis == "progression" for e in exams], dtype=int)
    prob = np.clip(0.5 * y + 0.5 * rng.random(y.size), 0, 1)
    cv = evaluate_predictions("cross-validation", y, prob, 0.5, cases=tuple(e.pk for e in exams), n_bootstrap=50)
    yb, pb = y[len(exams_a):], prob[len(exams_a):]
    ext = evaluate_predictions("external:site-b", yb, pb, 0.5, cases=tuple(e.pk for e in exams_b), n_bootstrap=50)
    model = ModelVersionFactory(metrics={"cv": cv.to_dict(), "external": ext.to_dict(), "rule": None,
                                         "importance": {"tbr_max": 0.3}, "n_excluded": 0})
    cohort = CohortFactory(exams=exams)
    return {"a": a, "b": b, "exams_a": exams_a, "exams_b": exams_b, "model": model, "cohort": cohort,
            "cv": cv, "ext": ext}


def _ids(exams) -> set[str]:
    return {str(e.pk) for e in exams}


def test_model_api_shows_only_the_researchers_sites_cases(client, two_sites):
    client.force_login(user_with("researcher", two_sites["a"]))
    body = client.get(reverse("api:model-detail", args=[two_sites["model"].pk])).json()
    cv, ext = body["metrics"]["cv"], body["metrics"]["external"]
    assert set(cv["cases"]) == _ids(two_sites["exams_a"])
    assert not set(cv["cases"]) & _ids(two_sites["exams_b"]) and ext["cases"] == []
    # the per-case columns stay aligned with the cases left
    stored = two_sites["cv"]
    for i, case in enumerate(cv["cases"]):
        j = stored.cases.index(case)
        assert (cv["y_true"][i], cv["prob"][i], cv["thresholds"][i]) == (
            int(stored.y_true[j]), pytest.approx(stored.prob[j]), pytest.approx(stored.thresholds[j]))
    assert len(ext["y_true"]) == len(ext["prob"]) == len(ext["thresholds"]) == 0
    # aggregate metrics are whole: computed on every case, as stored
    assert cv["n"] == 10 and cv["cases_shown"] == 6 and ext["n"] == 4
    assert cv["metrics"]["auc"] == stored.to_dict()["metrics"]["auc"]
    # the list endpoint answers the same
    listed = client.get(reverse("api:model-list")).json()["results"][0]["metrics"]["cv"]
    assert set(listed["cases"]) == _ids(two_sites["exams_a"])


def test_model_api_scoping_for_other_roles(client, two_sites):
    both = user_with("researcher", two_sites["a"])
    Membership.objects.create(user=both, site=two_sites["b"], role="researcher")
    client.force_login(both)
    cv = client.get(reverse("api:model-detail", args=[two_sites["model"].pk])).json()["metrics"]["cv"]
    assert set(cv["cases"]) == _ids(two_sites["exams_a"] + two_sites["exams_b"])
    # a site admin of B sees B's cases only; the superuser all of them
    admin_b = user_with(None)
    Membership.objects.create(user=admin_b, site=two_sites["b"], role="admin")
    client.force_login(admin_b)
    cv = client.get(reverse("api:model-detail", args=[two_sites["model"].pk])).json()["metrics"]["cv"]
    assert set(cv["cases"]) == _ids(two_sites["exams_b"])
    client.force_login(user_with("admin"))
    cv = client.get(reverse("api:model-detail", args=[two_sites["model"].pk])).json()["metrics"]["cv"]
    assert len(cv["cases"]) == cv["cases_shown"] == 10


def test_model_page_shows_no_other_site_case(client, two_sites):
    client.force_login(user_with("researcher", two_sites["a"]))
    response = client.get(reverse("registry:detail", args=[two_sites["model"].pk]))
    assert response.status_code == 200
    metrics = response.context["metrics"]
    assert set(metrics["cv"]["cases"]) == _ids(two_sites["exams_a"]) and metrics["external"]["cases"] == []
    assert "cross-validation" in response.content.decode()


def test_cohort_api_lists_only_the_users_sites_exams(client, two_sites):
    client.force_login(user_with("researcher", two_sites["a"]))
    name = two_sites["cohort"].name
    detail = client.get(reverse("api:cohort-detail", args=[name])).json()
    assert detail["exams"] == sorted(e.pk for e in two_sites["exams_a"])
    listed = client.get(reverse("api:cohort-list")).json()["results"]
    assert [c["exams"] for c in listed] == [detail["exams"]]
    client.force_login(user_with("coordinator", two_sites["b"]))
    assert client.get(reverse("api:cohort-detail", args=[name])).json()["exams"] == sorted(
        e.pk for e in two_sites["exams_b"])


def test_cohort_list_counts_only_the_users_sites_exams(client, two_sites):
    cohort = two_sites["cohort"]
    client.force_login(user_with("researcher", two_sites["a"]))
    (row,) = client.get(reverse("cohorts:cohorts")).context["cohorts"]
    assert row.n_exams == len(two_sites["exams_a"]) < cohort.exams.count()
    client.force_login(user_with("admin"))
    (row,) = client.get(reverse("cohorts:cohorts")).context["cohorts"]
    assert row.n_exams == cohort.exams.count()
