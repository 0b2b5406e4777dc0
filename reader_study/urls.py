"""Reader-study pages under /studies/ (coordinators, readers, statisticians).

Readers reach cases by study slug, case code and arm only; images by signed tokens. Other parts of
the app (results, exports) append their patterns to ``urlpatterns``.
"""
from django.urls import path

from reader_study import results_views, views

app_name = "reader_study"

urlpatterns: list = [
    path("", views.StudyListView.as_view(), name="list"),
    path("new/", views.StudyCreateView.as_view(), name="create"),
    path("images/<str:token>/", views.ImageView.as_view(), name="image"),
    path("<slug:slug>/", views.StudyDetailView.as_view(), name="detail"),
    path("<slug:slug>/edit/", views.StudyEditView.as_view(), name="edit"),
    path("<slug:slug>/open/", views.StudyOpenView.as_view(action="open"), name="open"),
    path("<slug:slug>/close/", views.StudyOpenView.as_view(action="close"), name="close"),
    path("<slug:slug>/worklist/", views.WorklistView.as_view(), name="worklist"),
    path("<slug:slug>/next/", views.NextCaseView.as_view(), name="next"),
    path("<slug:slug>/read/<str:code>/<str:arm>/", views.CaseView.as_view(), name="case"),
    path("<slug:slug>/questionnaire/", views.QuestionnaireView.as_view(), name="questionnaire"),
    # results (statisticians, the study's coordinators): reader_study/results_views.py
    path("<slug:slug>/results/", results_views.ResultsView.as_view(), name="results"),
    path("<slug:slug>/results/<str:figure>.svg", results_views.ResultsFigureView.as_view(), name="results-figure"),
    path("<slug:slug>/results/export/<str:fmt>/", results_views.ResultsExportView.as_view(), name="results-export"),
]
