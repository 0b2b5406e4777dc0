"""Pages: a write that collides with a database constraint answers a plain 409 page, never the
raw database error (the API does the same in apps/accounts/api.py)."""
from __future__ import annotations

import logging

from django.db import IntegrityError
from django.shortcuts import render

from apps.accounts.api import CONFLICT_MESSAGE

log = logging.getLogger(__name__)


class IntegrityErrorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, IntegrityError):
            return None
        log.warning("integrity error on %s %s: %s", request.method, request.path, exception)
        return render(request, "409.html", {"message": CONFLICT_MESSAGE}, status=409)
