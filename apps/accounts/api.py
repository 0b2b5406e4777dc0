"""One error shape for the whole API: {"error": {"code", "message", "details"}}.

:func:`exception_handler` produces it (DRF ``EXCEPTION_HANDLER``); :func:`error_responses_hook`
declares it in the OpenAPI schema (drf-spectacular ``POSTPROCESSING_HOOKS``) for the 400, 403,
404 and 409 answers every operation can give, so clients and schemathesis know them (the API
authenticates by session only, so "not logged in" is a 403, never a 401).
"""
from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.http import Http404
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ml.io.errors import ImageFormatError

log = logging.getLogger(__name__)

#: What a client sees when a write collides with a database constraint (never the SQL error).
CONFLICT_MESSAGE = ("This change conflicts with data already stored (for example a name or an item "
                    "that already exists); nothing was changed.")


def _error(code: str, message: str, http_status: int, details=None) -> Response:
    return Response({"error": {"code": code, "message": message, "details": details or {}}}, status=http_status)


def exception_handler(exc, context):
    if isinstance(exc, ImageFormatError | DjangoValidationError):
        return _error("invalid", str(exc), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, PermissionError):
        return _error("permission_denied", str(exc), status.HTTP_403_FORBIDDEN)
    if isinstance(exc, IntegrityError):
        # Two requests creating the same thing, or a constraint a serializer did not check first.
        view = context.get("view")
        log.warning("integrity error in %s: %s", type(view).__name__ if view else "?", exc)
        return _error("conflict", CONFLICT_MESSAGE, status.HTTP_409_CONFLICT)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    message = data.get("detail") if isinstance(data, dict) and "detail" in data else "Invalid request"
    details = {} if isinstance(data, dict) and set(data) == {"detail"} else data
    code = {Http404: "not_found", DjangoPermissionDenied: "permission_denied"}.get(
        type(exc), getattr(exc, "default_code", "error"))
    response.data = {"error": {"code": code, "message": str(message), "details": details}}
    return response


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. not_found, invalid, conflict"},
                "message": {"type": "string", "description": "for people"},
                "details": {"description": "per-field messages for invalid input, else {}"},
            },
        },
    },
}
_ERROR_STATUSES = {
    "400": "Invalid input (details per field)",
    "403": "Not logged in, or no role allowing this",
    "404": "No such object among those the user may see",
    "409": "Conflicts with stored data; nothing changed",
}


def error_responses_hook(result, generator, request, public):
    """drf-spectacular postprocessing hook: the error shape and the error answers of every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, path_item in result.get("paths", {}).items():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in _ERROR_STATUSES.items():
                if code == "404" and "{" not in path:
                    description = "No such page of the list"
                responses.setdefault(code, {"content": {"application/json": {"schema": ref}},
                                            "description": description})
    return result
