"""The REST API under /api/ (OpenAPI schema at /api/schema/, docs at /api/docs/)."""
from django.urls import path
from rest_framework.routers import DefaultRouter

from apps.cohorts import api as cohorts_api
from apps.jobs import api as jobs_api
from apps.registry import api as registry_api
from reader_study import api as reader_study_api
from reader_study import results_api

router = DefaultRouter()
router.register("sites", cohorts_api.SiteViewSet, basename="site")
router.register("patients", cohorts_api.PatientViewSet, basename="patient")
router.register("exams", cohorts_api.ExamViewSet, basename="exam")
router.register("volumes", cohorts_api.VolumeViewSet, basename="volume")
router.register("cohorts", cohorts_api.CohortViewSet, basename="cohort")
router.register("jobs", jobs_api.JobViewSet, basename="job")
router.register("models", registry_api.ModelVersionViewSet, basename="model")
router.register("predictions", registry_api.PredictionViewSet, basename="prediction")
router.register("studies", reader_study_api.StudyViewSet, basename="study")

urlpatterns = [
    path("imports/bids/", cohorts_api.BidsImportAPI.as_view(), name="import-bids"),
    path("imports/dicom/", cohorts_api.DicomImportAPI.as_view(), name="import-dicom"),
    path("imports/labels/", cohorts_api.LabelsImportAPI.as_view(), name="import-labels"),
    path("studies/<slug:slug>/results/", results_api.StudyResultsAPI.as_view(), name="study-results"),
    path("studies/<slug:slug>/export/<str:fmt>/", results_api.StudyExportAPI.as_view(), name="study-export"),
    path("worklist/<slug:slug>/", reader_study_api.WorklistAPI.as_view(), name="worklist"),
    path("worklist/<slug:slug>/cases/<str:code>/<str:arm>/", reader_study_api.ReadingCaseAPI.as_view(),
         name="reading-case"),
    *router.urls,
]
