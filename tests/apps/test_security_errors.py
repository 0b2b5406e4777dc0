"""Issue 8, item 8: no raw database error reaches a user, error pages in the site's look without a
URL list, a strict Content-Security-Policy, working-day sessions."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import transaction
from django.http import HttpResponse
from django.urls import include, path, reverse
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Site
from config import urls as config_urls
from tests.factories import SiteFactory, user_with

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


class _DuplicateSiteAPI(APIView):
    """Creates a site whose name exists: a real IntegrityError from the database's unique index."""

    def post(self, request):
        with transaction.atomic():
            Site.objects.create(name="nancy")
        return Response({})


def _duplicate_site_page(request):
    with transaction.atomic():
        Site.objects.create(name="nancy")
    return HttpResponse("created")


def _broken_page(request):
    raise RuntimeError("boom: SELECT secret FROM somewhere")


# The project's URLs plus three that fail on purpose (ROOT_URLCONF = this module in the tests).
urlpatterns = [
    path("api/dup/", _DuplicateSiteAPI.as_view()),
    path("dup/", _duplicate_site_page),
    path("broken/", _broken_page),
    path("api/broken/", _broken_page),
    path("", include("config.urls")),
]
handler403, handler404, handler500 = config_urls.handler403, config_urls.handler404, config_urls.handler500


@pytest.fixture
def coordinator(client):
    user = user_with("coordinator", SiteFactory(name="nancy"))
    client.force_login(user)
    return user


def test_integrity_error_is_a_plain_409_in_the_api(client, coordinator, settings):
    settings.ROOT_URLCONF = __name__
    response = client.post("/api/dup/")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "conflict" and "already" in error["message"]
    assert "IntegrityError" not in response.content.decode() and "UNIQUE" not in response.content.decode().upper()
    assert Site.objects.filter(name="nancy").count() == 1


def test_integrity_error_is_a_plain_409_page(client, coordinator, settings):
    settings.ROOT_URLCONF = __name__
    response = client.post("/dup/")
    text = response.content.decode()
    assert response.status_code == 409 and "Not saved" in text and "AminoPET" in text
    assert "IntegrityError" not in text and "unique" not in text.lower().replace("uniquely", "")


def test_404_is_the_sites_page_without_a_url_list(client, coordinator):
    response = client.get("/no/such/page/")
    text = response.content.decode()
    assert response.status_code == 404 and "Not found" in text and 'class="topbar"' in text
    assert "URLconf" not in text and "cohort/" not in text.split("<main>")[1]
    api = client.get("/api/exams/not-a-number/")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"


def test_403_page_in_the_sites_look(client):
    client.force_login(user_with(None))
    response = client.get(reverse("cohorts:sites"))
    assert response.status_code == 403 and "Not allowed" in response.content.decode()


def test_500_page_says_nothing_of_the_error(client, coordinator, settings):
    settings.ROOT_URLCONF = __name__
    client.raise_request_exception = False
    response = client.get("/broken/")
    text = response.content.decode()
    assert response.status_code == 500 and "Something went wrong" in text and "boom" not in text
    api = client.get("/api/broken/")
    assert api.status_code == 500 and api.json()["error"]["code"] == "server_error" and b"boom" not in api.content


def test_csp_header_is_strict(client, coordinator):
    csp = client.get(reverse("home"))["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in directives["style-src"] and "unsafe" not in directives["script-src"]
    # the API docs page: its script is a file, its one inline style carries the nonce
    docs = client.get(reverse("api-docs"))
    nonce = re.search(r"'nonce-([^']+)'", docs["Content-Security-Policy"]).group(1)
    assert f'<style nonce="{nonce}">' in docs.content.decode() and "<script>" not in docs.content.decode()


def test_no_template_has_an_inline_script_or_handler():
    """What the CSP would block: inline <script> blocks and on*= handler attributes."""
    offenders = []
    for tpl in ROOT.glob("**/templates/**/*.html"):
        if ".venv" in tpl.parts or "node_modules" in tpl.parts:
            continue
        text = tpl.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag and "application/json" not in tag:
                offenders.append(f"{tpl.relative_to(ROOT)}: {tag}")
        offenders += [f"{tpl.relative_to(ROOT)}: {m}" for m in re.findall(r"\son[a-z]+=\"", text)]
    assert not offenders, offenders


def test_sessions_last_a_working_day_and_end_with_the_browser(client, settings):
    assert settings.SESSION_COOKIE_AGE == 8 * 3600 and settings.SESSION_EXPIRE_AT_BROWSER_CLOSE
    user_with("reader", SiteFactory(name="nancy"), username="dr-a")
    response = client.post(reverse("login"), {"username": "dr-a", "password": "pw-aminopet-1"})
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert not cookie["max-age"] and not cookie["expires"]  # a browser-session cookie
    assert client.session.get_expiry_age() <= 8 * 3600
