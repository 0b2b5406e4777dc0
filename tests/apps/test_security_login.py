"""Issue 8, item 6: logins are throttled (django-axes: 5 failures per username+address, 15 min),
failures are logged and audited, and the API takes no HTTP Basic credentials."""
from __future__ import annotations

import base64
import logging
from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.urls import reverse

from apps.audit.models import AuditEvent
from tests.factories import SiteFactory, user_with

pytestmark = pytest.mark.django_db
PASSWORD = "pw-aminopet-1"  # tests.factories.UserFactory's


@pytest.fixture(autouse=True)
def _axes_on(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def _login(client, username, password, ip="10.0.0.1"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_six_wrong_passwords_lock_the_account_for_this_address(client, caplog):
    user = user_with("coordinator", SiteFactory(name="nancy"), username="dr-a")
    with caplog.at_level(logging.WARNING, logger="apps.accounts.security"):
        for _ in range(6):
            response = _login(client, "dr-a", "wrong-password")
            assert "_auth_user_id" not in client.session
    assert response.status_code == 429
    locked = _login(client, "dr-a", PASSWORD)
    assert locked.status_code == 429 and "_auth_user_id" not in client.session
    text = locked.content.decode()
    assert "Too many failed logins" in text and "dr-a" in text and "0:15:00" in text
    # every failure is counted, logged and in the audit trail (never the password)
    assert AccessAttempt.objects.get(username="dr-a", ip_address="10.0.0.1").failures_since_start >= 5
    assert AccessFailureLog.objects.filter(username="dr-a").count() >= 5
    failed = [r for r in caplog.records if r.getMessage().startswith("login failed: username='dr-a'")]
    assert len(failed) >= 5 and all("wrong-password" not in r.getMessage() for r in caplog.records)
    assert AuditEvent.objects.filter(action="login.failed", details__username="dr-a").count() >= 5
    assert AuditEvent.objects.filter(action="login.locked_out", details__username="dr-a").exists()
    assert not AuditEvent.objects.filter(details__icontains="wrong-password").exists()
    # the lockout ends after the cool-off
    AccessAttempt.objects.filter(username="dr-a").update(
        attempt_time=AccessAttempt.objects.get(username="dr-a").attempt_time - timedelta(minutes=16))
    assert _login(client, "dr-a", PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_a_lockout_is_per_user_and_address(client):
    user_with("coordinator", SiteFactory(name="nancy"), username="dr-a")
    other = user_with("reader", SiteFactory(name="nancy"), username="dr-b")
    for _ in range(6):
        _login(client, "dr-a", "wrong-password")
    assert _login(client, "dr-a", PASSWORD).status_code == 429
    response = _login(client, "dr-b", PASSWORD)  # another user from the same address
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(other.pk)
    client.logout()
    assert _login(client, "dr-a", PASSWORD, ip="10.0.0.2").status_code == 302  # dr-a from elsewhere


def test_a_success_resets_the_count(client):
    user_with("coordinator", SiteFactory(name="nancy"), username="dr-a")
    for _ in range(4):
        _login(client, "dr-a", "wrong-password")
    assert _login(client, "dr-a", PASSWORD).status_code == 302
    client.logout()
    for _ in range(4):
        _login(client, "dr-a", "wrong-password")
    assert _login(client, "dr-a", PASSWORD).status_code == 302


def test_the_api_takes_no_http_basic_credentials(client):
    user = user_with("coordinator", SiteFactory(name="nancy"), username="dr-a")
    basic = "Basic " + base64.b64encode(f"dr-a:{PASSWORD}".encode()).decode()
    response = client.get(reverse("api:exam-list"), HTTP_AUTHORIZATION=basic)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_authenticated"
    client.force_login(user)
    assert client.get(reverse("api:exam-list")).status_code == 200
