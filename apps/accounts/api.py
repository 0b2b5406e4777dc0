"""One error shape for the whole API: {"error": {"code", "message", "details"}}."""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ml.io.errors import ImageFormatError


def exception_handler(exc, context):
    if isinstance(exc, ImageFormatError | DjangoValidationError):
        return Response(
            {"error": {"code": "invalid", "message": str(exc), "details": {}}},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, PermissionError):
        return Response(
            {"error": {"code": "permission_denied", "message": str(exc), "details": {}}},
            status=status.HTTP_403_FORBIDDEN,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    message = data.get("detail") if isinstance(data, dict) and "detail" in data else "Invalid request"
    details = {} if isinstance(data, dict) and set(data) == {"detail"} else data
    code = getattr(exc, "default_code", "error")
    response.data = {"error": {"code": code, "message": str(message), "details": details}}
    return response
