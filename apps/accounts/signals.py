"""Failed and locked-out logins: a warning line in the log and an event in the audit trail.

django-axes counts the failures (``AccessAttempt``/``AccessFailureLog``, in the Django admin) and
locks a username+address out; these receivers make each failure visible to whoever reads the
logs or the audit page. Passwords never reach here (Django hands over cleansed credentials).
"""
from __future__ import annotations

import logging

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver

from apps.audit.services import audit_record

log = logging.getLogger("apps.accounts.security")


def _username(credentials: dict | None) -> str:
    return str((credentials or {}).get("username") or "")[:150]


def _ip(request) -> str:
    return (request.META.get("REMOTE_ADDR") or "") if request is not None else ""


@receiver(user_login_failed, dispatch_uid="aminopet_login_failed")
def login_failed(sender, credentials=None, request=None, **kwargs):
    username = _username(credentials)
    # %r: a username is attacker-chosen text; repr keeps it on one line in the log.
    log.warning("login failed: username=%r ip=%s", username, _ip(request) or "-")
    audit_record(action="login.failed", details={"username": username}, request=request)


@receiver(user_locked_out, dispatch_uid="aminopet_login_locked_out")
def login_locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    username = str(username or "")[:150]
    log.warning("login locked out: username=%r ip=%s", username, ip_address or _ip(request) or "-")
    audit_record(action="login.locked_out", details={"username": username}, request=request)
