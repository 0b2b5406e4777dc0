from django.urls import path

from apps.quantification import views

app_name = "quantification"
urlpatterns = [
    path("exams/<int:pk>/<str:which>/", views.MapFileView.as_view(), name="map"),
]
