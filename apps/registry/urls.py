from django.urls import path

from apps.registry import views

app_name = "registry"
urlpatterns = [
    path("", views.ModelListView.as_view(), name="list"),
    path("<int:pk>/", views.ModelDetailView.as_view(), name="detail"),
    path("<int:pk>/plots/<str:name>/", views.ModelPlotView.as_view(), name="plot"),
    path("<int:pk>/label-efficiency.png", views.LabelEfficiencyPlotView.as_view(), name="label-efficiency"),
]
