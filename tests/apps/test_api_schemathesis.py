"""Issue 8: schemathesis over the OpenAPI schema, logged in as a user with roles, in-process (WSGI).

Every operation gets a bounded number of generated requests (valid and invalid); the API must
answer no 5xx and nothing its schema does not declare (status codes, content types, bodies).
Bounded in time: ``MAX_EXAMPLES`` per operation and a hard deadline for the whole run.
"""
from __future__ import annotations

import time

import pytest
import schemathesis
from django.core.signals import request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.accounts.models import Membership
from tests.factories import (
    CohortFactory,
    ExamFactory,
    JobFactory,
    MaskFactory,
    PredictionFactory,
    SiteFactory,
    VolumeFactory,
    user_with,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
MAX_EXAMPLES = 12  # per operation and mode (valid, then invalid requests)
DEADLINE_S = 90.0
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
CSRF = "aminopetschemathesis0123456789ab"  # any 32 characters: the cookie and the header agree


@pytest.fixture
def world():
    """A coordinator and researcher of one site, with one of everything there (and one elsewhere).

    Values that may be null are null somewhere: a volume without SUV factor or thumbnail, a system
    job (no creator, never started), a model without training cohort or external site.
    """
    home, other = SiteFactory(name="home"), SiteFactory(name="other")
    exam = ExamFactory(patient__site=home, patient__age=None, patient__who_grade=None)
    volume = VolumeFactory(exam=exam, suv_factor=None, thumbnail="")
    MaskFactory(grid=volume)
    ExamFactory(patient__site=other)
    cohort = CohortFactory(exams=[exam])
    prediction = PredictionFactory(exam=exam)
    user = user_with("coordinator", home)
    Membership.objects.create(user=user, site=home, role="researcher")
    job = JobFactory(site=home, created_by=user)
    system_job = JobFactory(site=home, created_by=None, status="queued")
    return {"user": user, "exam": exam, "volume": volume, "cohort": cohort, "prediction": prediction,
            "job": job, "system_job": system_job, "home": home}


@pytest.fixture
def logged_in_app(world):
    """The project's WSGI app, every request carrying the user's session and a CSRF token pair.

    (A WSGI wrapper, since the WSGI test client keeps its own cookie jar and drops a Cookie header.)
    """
    client = Client()
    client.force_login(world["user"])
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={CSRF}"
    django_app = get_wsgi_application()

    def app(environ, start_response):
        environ["HTTP_COOKIE"] = cookie
        environ["HTTP_X_CSRFTOKEN"] = CSRF
        return django_app(environ, start_response)

    # In-process calls share the test's database transaction: keep the handler from closing the
    # connection at each request, as Django's own test client does.
    request_started.disconnect(close_old_connections)
    try:
        yield app
    finally:
        request_started.connect(close_old_connections)


def test_api_conforms_to_its_schema(logged_in_app):
    started = time.monotonic()
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", logged_in_app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # the API as documented, not an empty schema
    calls = 0
    timings = []
    for operation in operations:
        if time.monotonic() - started > DEADLINE_S:
            failures.append(f"deadline of {DEADLINE_S:.0f} s reached at {operation.label} ({calls} calls)")
            break
        t0 = time.monotonic()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case):
                nonlocal calls
                calls += 1
                case.call_and_validate(checks=CHECKS)

            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # keep going, report every operation at the end
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
        timings.append((time.monotonic() - t0, operation.label))
    print("slowest:", sorted(timings, reverse=True)[:5])
    print(f"schemathesis: {len(operations)} operations, {calls} calls, {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures)


def test_known_objects_conform_to_the_schema(world, logged_in_app):
    """Every GET on real objects (nulls included) answers what the schema declares."""
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", logged_in_app)
    w = world
    params = {
        "/api/sites/{name}/": {"name": w["home"].name},
        "/api/patients/{id}/": {"id": w["exam"].patient_id},
        "/api/exams/{id}/": {"id": w["exam"].pk},
        "/api/volumes/{id}/": {"id": w["volume"].pk},
        "/api/cohorts/{name}/": {"name": w["cohort"].name},
        "/api/jobs/{id}/": {"id": w["system_job"].pk},
        "/api/models/{id}/": {"id": w["prediction"].model_version_id},
        "/api/predictions/{id}/": {"id": w["prediction"].pk},
    }
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "GET" or ("{" in operation.path and operation.path not in params):
            continue
        case = operation.Case(path_parameters=params.get(operation.path, {}))
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code == 200, (operation.label, response.status_code, response.text[:300])
        checked.append(operation.path)
    assert set(params) <= set(checked)
