"""API shapes of the reader study. Reader-facing shapes carry case codes only, never exams, truth or
other readers' answers."""
from __future__ import annotations

from rest_framework import serializers

from reader_study.models import AiAgreement, Study


class StudySerializer(serializers.ModelSerializer):
    cohort = serializers.SlugRelatedField(slug_field="name", read_only=True)
    n_cases = serializers.SerializerMethodField()
    n_readers = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = ["slug", "title", "question", "task", "design", "split_plot", "cases_per_reader", "washout_days",
                  "rating_scale", "cohort", "model_version", "seed", "questionnaire", "status", "created_at",
                  "opened_at", "closed_at", "n_cases", "n_readers", "progress"]
        read_only_fields = fields

    def get_n_cases(self, study) -> int:
        return study.cases.count()

    def get_n_readers(self, study) -> int:
        return study.readers.count()

    def get_progress(self, study) -> list[dict]:
        from reader_study.selectors import study_progress

        return [{"reader": p.reader.code, "group": p.reader.group, "session": p.session.number,
                 "arm": p.session.arm or "both", "state": p.state, "done": p.done, "total": p.total,
                 "opens_at": p.session.opens_at, "completed_at": p.session.completed_at}
                for p in study_progress(study)]


class AnswerSerializer(serializers.Serializer):
    """A reader's answer; the rules (scale, arm, biopsy target) are checked by the service."""

    decision = serializers.BooleanField()
    confidence = serializers.IntegerField(required=False, allow_null=True)
    scale = serializers.IntegerField(required=False, allow_null=True)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    target_mm = serializers.ListField(child=serializers.FloatField(), required=False, allow_null=True,
                                      min_length=3, max_length=3)
    ai_agreement = serializers.ChoiceField(choices=AiAgreement.choices, required=False, allow_blank=True)
    explanation_usefulness = serializers.IntegerField(required=False, allow_null=True)
    active_seconds = serializers.FloatField(required=False, allow_null=True)
