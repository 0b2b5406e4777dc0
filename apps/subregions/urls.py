from django.urls import path

from apps.subregions import views

app_name = "subregions"
urlpatterns = [
    path("maps/<int:pk>/targets.csv", views.TargetsCsvView.as_view(), name="targets-csv"),
    path("maps/<int:pk>/<str:which>/", views.MapFileView.as_view(), name="file"),
    path("cohorts/<int:pk>/<str:key>/", views.AssociationView.as_view(), name="association"),
]
