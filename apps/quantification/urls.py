from django.urls import path

from apps.quantification import views
from apps.quantification.explanation_maps import PredictionMapFileView

app_name = "quantification"
urlpatterns = [
    path("exams/<int:pk>/<str:which>/", views.MapFileView.as_view(), name="map"),
    path("predictions/<int:pk>/maps/<str:method>/", PredictionMapFileView.as_view(), name="prediction-map"),
]
