from django.urls import path

from apps.cohorts import views

app_name = "cohorts"
urlpatterns = [
    path("sites/", views.SiteListView.as_view(), name="sites"),
    path("sites/<slug:name>/", views.SiteDetailView.as_view(), name="site"),
    path("patients/<int:pk>/", views.PatientDetailView.as_view(), name="patient"),
    path("exams/<int:pk>/", views.ExamDetailView.as_view(), name="exam"),
    path("volumes/<int:pk>/qc/", views.VolumeQcView.as_view(), name="volume-qc"),
    path("volumes/<int:pk>/file/", views.VolumeFileView.as_view(what="file"), name="volume-file"),
    path("volumes/<int:pk>/thumbnail/", views.VolumeFileView.as_view(what="thumbnail"), name="volume-thumbnail"),
    path("masks/<int:pk>/file/", views.MaskFileView.as_view(), name="mask-file"),
    path("cohorts/", views.CohortListView.as_view(), name="cohorts"),
    path("cohorts/<slug:name>/", views.CohortDetailView.as_view(), name="cohort"),
    path("import/bids/", views.BidsImportView.as_view(), name="import-bids"),
    path("import/dicom/", views.DicomImportView.as_view(), name="import-dicom"),
    path("import/labels/", views.LabelsImportView.as_view(), name="import-labels"),
]
