from django.contrib import admin

from apps.quantification.models import ExamQuantification, RadiomicsFeatures


@admin.register(ExamQuantification)
class ExamQuantificationAdmin(admin.ModelAdmin):
    list_display = ("exam", "suv_max", "tbr_max", "ts_max", "ttp_min", "curve_class")
    readonly_fields = ("tacs", "config")


@admin.register(RadiomicsFeatures)
class RadiomicsFeaturesAdmin(admin.ModelAdmin):
    list_display = ("exam", "image_type", "computed_at")
