"""Every page and API endpoint, for every role: the expected status code.

The expectations are written here independently of the views' declarations, and a last test
checks that every URL pattern of the project appears in the table, so a new page must be added.
"""
from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from apps.accounts.models import Membership
from apps.subregions.models import SubregionCohortAnalysis, SubregionMap
from tests.factories import (
    CohortFactory,
    ExamFactory,
    ExamQuantificationFactory,
    JobFactory,
    MaskFactory,
    PredictionFactory,
    SiteFactory,
    VolumeFactory,
    user_with,
)

ROLES = ["anon", "norole", "reader", "coordinator", "coord_other", "statistician", "researcher", "researcher_other", "admin",
         "admin_site"]


def _site_admin(site):
    """An ``admin`` membership at one site: every role there, nothing elsewhere (not a superuser)."""
    user = user_with(None)
    Membership.objects.create(user=user, site=site, role="admin")
    return user


@pytest.fixture
def world(db):
    home, other = SiteFactory(name="home"), SiteFactory(name="other")
    exam = ExamFactory(patient__site=home)
    volume = VolumeFactory(exam=exam)
    mask = MaskFactory(grid=volume)
    cohort = CohortFactory(exams=[exam])
    users = {
        "anon": None,
        "norole": user_with(None),
        "reader": user_with("reader", home),
        "coordinator": user_with("coordinator", home),
        "coord_other": user_with("coordinator", other),
        "statistician": user_with("statistician", home),
        "researcher": user_with("researcher", home),
        "researcher_other": user_with("researcher", other),
        "admin": user_with("admin"),
        "admin_site": _site_admin(home),
        "admin_other": _site_admin(other),
    }
    job = JobFactory(site=home, created_by=users["coordinator"])
    ExamQuantificationFactory(exam=exam)
    prediction = PredictionFactory(exam=exam, maps={"ig": volume.file.name})
    subregion_map = SubregionMap.objects.create(
        exam=exam, key="dynamic", n_habitats=3, margin_mm=5.0, voxel_mm=2.0, habitats=volume.file.name,
        habitats_sha256=volume.sha256, aggressiveness=volume.file.name, aggressiveness_sha256=volume.sha256,
        region=volume.file.name, region_sha256=volume.sha256, aggressiveness_source="test")
    SubregionCohortAnalysis.objects.create(cohort=cohort, key="dynamic", n_habitats=3, n_exams=1)
    return {"site": home, "exam": exam, "volume": volume, "mask": mask, "cohort": cohort, "job": job,
            "users": users, "model": prediction.model_version, "prediction": prediction,
            "subregion_map": subregion_map}


def _expect(default, **per_role):
    """Status per role; ``admin_site`` (admin at the objects' site) expects what ``admin`` does unless given."""
    per_role.setdefault("admin_site", per_role.get("admin", default))
    return {role: per_role.get(role, default) for role in ROLES}


DATA_DETAIL = _expect(403, anon=302, coordinator=200, coord_other=404, researcher=200, researcher_other=404, admin=200)
DATA_LIST = _expect(403, anon=302, coordinator=200, coord_other=200, researcher=200, researcher_other=200, admin=200)
MANAGE_PAGE = _expect(403, anon=302, coordinator=200, coord_other=200, admin=200)
ANY_ROLE_PAGE = _expect(200, anon=302, norole=403)
JOB_DETAIL = _expect(404, anon=302, norole=403, coordinator=200, admin=200)
API_DATA_LIST = _expect(403, coordinator=200, coord_other=200, researcher=200, researcher_other=200, admin=200)
MODEL_PAGE = _expect(403, anon=302, researcher=200, researcher_other=200, admin=200)
API_MODEL = _expect(403, researcher=200, researcher_other=200, admin=200)
API_DATA_DETAIL = _expect(403, coordinator=200, coord_other=404, researcher=200, researcher_other=404, admin=200)

# (url name, kwargs from the world, method, expectations)
CASES = [
    ("home", {}, "get", _expect(200, anon=302)),
    ("login", {}, "get", _expect(200)),
    ("password_change", {}, "get", _expect(200, anon=302)),
    ("password_change_done", {}, "get", _expect(200, anon=302)),
    ("cohorts:sites", {}, "get", DATA_LIST),
    ("cohorts:site", {"name": "site.name"}, "get", DATA_DETAIL),
    ("cohorts:patient", {"pk": "exam.patient.pk"}, "get", DATA_DETAIL),
    ("cohorts:exam", {"pk": "exam.pk"}, "get", DATA_DETAIL),
    ("cohorts:volume-file", {"pk": "volume.pk"}, "get", DATA_DETAIL),
    ("cohorts:volume-thumbnail", {"pk": "volume.pk"}, "get", DATA_DETAIL),
    ("cohorts:mask-file", {"pk": "mask.pk"}, "get", DATA_DETAIL),
    ("cohorts:volume-qc", {"pk": "volume.pk"}, "post",
     _expect(403, anon=302, coordinator=302, coord_other=404, admin=302)),
    ("cohorts:cohorts", {}, "get", DATA_LIST),
    ("cohorts:cohort", {"name": "cohort.name"}, "get", DATA_DETAIL),
    ("cohorts:import-bids", {}, "get", MANAGE_PAGE),
    ("cohorts:import-dicom", {}, "get", MANAGE_PAGE),
    ("cohorts:import-labels", {}, "get", MANAGE_PAGE),
    ("jobs:list", {}, "get", ANY_ROLE_PAGE),
    ("jobs:detail", {"pk": "job.pk"}, "get", JOB_DETAIL),
    ("jobs:status", {"pk": "job.pk"}, "get", JOB_DETAIL),
    ("jobs:retry", {"pk": "job.pk"}, "post", _expect(404, anon=302, norole=403, coordinator=302, admin=302)),
    ("quantification:map", {"pk": "exam.pk", "which": "=tac"}, "get", DATA_DETAIL),
    ("quantification:prediction-map", {"pk": "prediction.pk", "method": "=ig"}, "get", DATA_DETAIL),
    ("subregions:file", {"pk": "subregion_map.pk", "which": "=habitats"}, "get", DATA_DETAIL),
    ("subregions:targets-csv", {"pk": "subregion_map.pk"}, "get", DATA_DETAIL),
    ("subregions:association", {"pk": "cohort.pk", "key": "=dynamic"}, "get", DATA_DETAIL),
    ("registry:list", {}, "get", MODEL_PAGE),
    ("registry:detail", {"pk": "model.pk"}, "get", MODEL_PAGE),
    ("registry:plot", {"pk": "model.pk", "name": "=cv_roc"}, "get", MODEL_PAGE),
    # the world's model is a classical one: no learning curve (404) for those who may see models
    ("registry:label-efficiency", {"pk": "model.pk"}, "get",
     _expect(403, anon=302, researcher=404, researcher_other=404, admin=404)),
    ("api:model-list", {}, "get", API_MODEL),
    ("api:model-detail", {"pk": "model.pk"}, "get", API_MODEL),
    ("api:prediction-list", {}, "get", API_DATA_LIST),
    ("api:prediction-detail", {"pk": "prediction.pk"}, "get", API_DATA_DETAIL),
    ("audit:list", {}, "get", _expect(403, anon=302, coordinator=200, coord_other=200, admin=200)),
    ("admin:index", {}, "get", _expect(302, admin=200, admin_site=302)),
    ("schema", {}, "get", _expect(200, anon=403)),
    ("api-docs", {}, "get", _expect(200, anon=403)),
    ("api:api-root", {}, "get", _expect(200, anon=403)),
    ("api:site-list", {}, "get", API_DATA_LIST),
    ("api:site-detail", {"name": "site.name"}, "get", API_DATA_DETAIL),
    ("api:patient-list", {}, "get", API_DATA_LIST),
    ("api:patient-detail", {"pk": "exam.patient.pk"}, "get", API_DATA_DETAIL),
    ("api:exam-list", {}, "get", API_DATA_LIST),
    ("api:exam-detail", {"pk": "exam.pk"}, "get", API_DATA_DETAIL),
    ("api:volume-detail", {"pk": "volume.pk"}, "get", API_DATA_DETAIL),
    ("api:volume-detail", {"pk": "volume.pk"}, "patch",
     _expect(403, coordinator=200, coord_other=404, admin=200)),
    ("api:cohort-list", {}, "get", API_DATA_LIST),
    ("api:cohort-detail", {"name": "cohort.name"}, "get", API_DATA_DETAIL),
    ("api:job-list", {}, "get", _expect(200, anon=403, norole=403)),
    ("api:job-detail", {"pk": "job.pk"}, "get", _expect(404, anon=403, norole=403, coordinator=200, admin=200)),
    ("api:job-retry", {"pk": "job.pk"}, "post", _expect(404, anon=403, norole=403, coordinator=200, admin=200)),
    ("api:import-bids", {}, "post", _expect(403, coordinator=400, coord_other=400, admin=400)),
    ("api:import-dicom", {}, "post", _expect(403, coordinator=400, coord_other=400, admin=400)),
    ("api:import-labels", {}, "post", _expect(403, coordinator=400, coord_other=400, admin=400)),
]
# Not walked: logout (POST-only, any user), admin sub-pages (Django's own), format-suffixed routes.
SKIPPED = {"logout"}


def _resolve(world, dotted: str):
    if dotted.startswith("="):
        return dotted[1:]
    obj = world
    first, *rest = dotted.split(".")
    obj = world[first]
    for attr in rest:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,kwargs,method,expected", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_status_for_role(client, world, role, name, kwargs, method, expected):
    user = world["users"][role]
    if user is not None:
        client.force_login(user)
    url = reverse(name, kwargs={k: _resolve(world, v) for k, v in kwargs.items()})
    if method == "post":
        data = {"qc_status": "pass", "qc_note": "ok"} if "qc" in name else {}
        response = client.post(url, data)
    elif method == "patch":
        response = client.patch(url, {"qc_status": "fail"}, content_type="application/json")
    else:
        response = client.get(url)
    assert response.status_code == expected[role], (name, role, response.status_code)


@pytest.mark.parametrize("name,kwargs,method,expected", [c for c in CASES if c[3]["coord_other"] == 404],
                         ids=[f"{c[0]}-{c[2]}" for c in CASES if c[3]["coord_other"] == 404])
def test_site_admin_of_another_site_gets_404(client, world, name, kwargs, method, expected):
    """An ``admin`` membership at the other site reaches none of this site's objects (issue 8, item 4)."""
    client.force_login(world["users"]["admin_other"])
    url = reverse(name, kwargs={k: _resolve(world, v) for k, v in kwargs.items()})
    if method == "post":
        response = client.post(url, {"qc_status": "pass", "qc_note": "ok"} if "qc" in name else {})
    elif method == "patch":
        response = client.patch(url, {"qc_status": "fail"}, content_type="application/json")
    else:
        response = client.get(url)
    assert response.status_code == 404, (name, response.status_code)


def _all_names(resolver: URLResolver, prefix: str = "") -> set[str]:
    names = set()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            ns = f"{prefix}{pattern.namespace}:" if pattern.namespace else prefix
            if pattern.namespace == "admin":
                continue
            names |= _all_names(pattern, ns)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(prefix + pattern.name)
    return names


def test_every_url_is_walked():
    from tests.reader_study.test_permissions import CASES as READER_STUDY_CASES  # its own world

    walked = {c[0] for c in CASES} | {c[0] for c in READER_STUDY_CASES} | SKIPPED
    missing = {n for n in _all_names(get_resolver()) if n not in walked and not n.endswith("-format")}
    assert not missing, f"pages/endpoints without a permission expectation: {sorted(missing)}"
