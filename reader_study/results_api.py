"""Results API of a reader study: ``GET /api/studies/<slug>/results/`` (JSON) and
``GET /api/studies/<slug>/export/<csv|imrmc|json>/`` (the files of :mod:`reader_study.exports`).

Same rules as the pages (:func:`reader_study.results.results_studies_for`): statisticians and the
study's coordinators; readers, researchers and users of other sites get 403/404.
"""
from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import RolePermission
from reader_study.analysis.results import jsonable
from reader_study.biopsy import biopsy_results
from reader_study.exports import FORMATS, ExportError, study_export
from reader_study.results import RESULTS_STUDY_ROLES, results_studies_for, study_results_cached


class _StudyResultsAPI(APIView):
    permission_classes = [RolePermission]
    required_roles = RESULTS_STUDY_ROLES

    def get_study(self, slug):
        return get_object_or_404(results_studies_for(self.request.user), slug=slug)


class StudyResultsAPI(_StudyResultsAPI):
    """Interim or final results: meta data, ``study_report`` as a dictionary, acceptability, notes."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, slug):
        study = self.get_study(slug)
        data = study_results_cached(study).to_dict()
        if study.task == "biopsy_target":  # hit rates of the placed targets, unaided vs aided
            data["biopsy_targets"] = jsonable(biopsy_results(study))
        return Response(data)


class StudyExportAPI(_StudyResultsAPI):
    """One export file (``csv``: analysis-ready long CSV, ``imrmc``: iMRMC input, ``json``); audited."""

    @extend_schema(parameters=[OpenApiParameter("fmt", str, OpenApiParameter.PATH, enum=list(FORMATS),
                                                description="csv, imrmc or json")],
                   responses={(200, "text/csv"): OpenApiTypes.BINARY, (200, "text/plain"): OpenApiTypes.BINARY,
                              (200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request, slug, fmt):
        study = self.get_study(slug)
        if fmt not in FORMATS:
            raise NotFound(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        try:
            export = study_export(study=study, format=fmt, user=request.user, request=request)
        except ExportError as exc:
            raise ValidationError({"study": [str(exc)]}) from exc
        response = HttpResponse(export.content, content_type=export.content_type)
        response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
        response["Cache-Control"] = "private, no-store"
        return response
