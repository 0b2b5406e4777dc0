"""The reader study: studies, their cases and readers, reading sessions, readings and questionnaires.

A :class:`Study` reads a case set drawn from a cohort (exams with a reference standard) by readers
(users with the reader role), in two arms: ``unaided`` and ``aided`` (the AI's prediction and
explanation from ``model_version`` shown). Designs:

- ``sequential``: one session; each case is read unaided, that answer is locked, then the AI is
  revealed on the same case and the aided answer recorded.
- ``crossover``: two sessions on the same cases; readers are split into groups A and B that start
  with opposite arms; session 2 opens ``washout_days`` after the reader finished session 1.
- ``split_plot`` (an option of either): each reader reads a subset of the cases.

A reader sees cases only through :class:`StudyCase` codes (``C001``...), never the exam.
Each :class:`Assignment` is one case in one reader's session at a stored position (the randomised
order). A :class:`Reading` is one reader's answer on one case in one arm: the database allows one.
Writes go through ``reader_study.services``; reads through ``reader_study.selectors``.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.cohorts.models import Cohort, Exam


class StudyTask(models.TextChoices):
    PROGRESSION = "progression", "Progression vs treatment-related change (suspected recurrence)"
    BIOPSY_TARGET = "biopsy_target", "Biopsy target placement (initial diagnosis)"


class Design(models.TextChoices):
    SEQUENTIAL = "sequential", "Sequential (unaided, then AI revealed on the same case)"
    CROSSOVER = "crossover", "Crossover (two sessions with a washout)"


class RatingScale(models.TextChoices):
    CONFIDENCE = "confidence", "Decision and confidence 0-100"
    FIVE_POINT = "five_point", "5-point scale"


class StudyStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed"


class Arm(models.TextChoices):
    UNAIDED = "unaided", "Without AI"
    AIDED = "aided", "With AI"


class Study(models.Model):
    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    question = models.TextField(help_text="The clinical question, as shown to readers")
    task = models.CharField(max_length=16, choices=StudyTask.choices, default=StudyTask.PROGRESSION)
    design = models.CharField(max_length=16, choices=Design.choices, default=Design.SEQUENTIAL)
    split_plot = models.BooleanField(default=False, help_text="Each reader reads a subset of the cases")
    cases_per_reader = models.PositiveIntegerField(null=True, blank=True, help_text="Split-plot subset size")
    washout_days = models.PositiveIntegerField(default=28, help_text="Crossover: days between sessions")
    rating_scale = models.CharField(max_length=16, choices=RatingScale.choices, default=RatingScale.CONFIDENCE)
    cohort = models.ForeignKey(Cohort, on_delete=models.PROTECT, related_name="studies")
    model_version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="studies",
        help_text="The model whose prediction and explanation the aided arm shows",
    )
    seed = models.BigIntegerField(help_text="Seed of the case orders and groups (stored, reproducible)")
    questionnaire = models.JSONField(
        default=dict, blank=True, help_text="{'sus': bool, 'trust_items': [text, ...]} after the last case"
    )
    status = models.CharField(max_length=8, choices=StudyStatus.choices, default=StudyStatus.DRAFT)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(condition=Q(task__in=StudyTask.values), name="study_task_valid"),
            models.CheckConstraint(condition=Q(design__in=Design.values), name="study_design_valid"),
            models.CheckConstraint(condition=Q(rating_scale__in=RatingScale.values), name="study_scale_valid"),
            models.CheckConstraint(condition=Q(status__in=StudyStatus.values), name="study_status_valid"),
            models.CheckConstraint(
                condition=Q(split_plot=False) | Q(cases_per_reader__gte=1), name="study_split_plot_has_size"
            ),
        ]

    def __str__(self) -> str:
        return self.title


class StudyCase(models.Model):
    """One exam of the case set, known to readers only by its pseudonymous ``code``."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="cases")
    exam = models.ForeignKey(Exam, on_delete=models.PROTECT, related_name="study_cases")
    code = models.CharField(max_length=16, help_text="Pseudonymous case code shown to readers, e.g. C007")
    truth = models.BooleanField(help_text="Reference standard: True = positive (progression)")
    truth_label = models.CharField(max_length=32, help_text="e.g. progression / treatment_related")
    truth_basis = models.CharField(max_length=16, help_text="histology or follow_up")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "code"]
        constraints = [
            models.UniqueConstraint(fields=["study", "exam"], name="study_case_exam_unique"),
            models.UniqueConstraint(fields=["study", "code"], name="study_case_code_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.study.slug}/{self.code}"


class ReaderGroup(models.TextChoices):
    A = "A", "Group A (unaided first)"
    B = "B", "Group B (aided first)"


class StudyReader(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="readers")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="study_readers")
    code = models.CharField(max_length=16, help_text="Pseudonymous reader code in exports, e.g. R03")
    group = models.CharField(max_length=1, choices=ReaderGroup.choices, default=ReaderGroup.A)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "code"]
        constraints = [
            models.UniqueConstraint(fields=["study", "user"], name="study_reader_unique"),
            models.UniqueConstraint(fields=["study", "code"], name="study_reader_code_unique"),
            models.CheckConstraint(condition=Q(group__in=ReaderGroup.values), name="study_reader_group_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.study.slug}/{self.code}"


class ReadingSession(models.Model):
    """One reader's pass over their cases: ``number`` 1 (or 2 in a crossover).

    ``arm`` is the arm read in this session for a crossover, blank for sequential (both arms per
    case). ``opens_at`` is set when the previous session is completed (completion + washout).
    """

    reader = models.ForeignKey(StudyReader, on_delete=models.CASCADE, related_name="sessions")
    number = models.PositiveSmallIntegerField()
    arm = models.CharField(max_length=8, choices=Arm.choices, blank=True)
    opens_at = models.DateTimeField(null=True, blank=True, help_text="Not before (washout); null: open")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    order_seed = models.BigIntegerField(help_text="Seed of this session's case order")

    class Meta:
        ordering = ["reader", "number"]
        constraints = [
            models.UniqueConstraint(fields=["reader", "number"], name="reading_session_unique"),
            models.CheckConstraint(condition=Q(number__gte=1) & Q(number__lte=2), name="reading_session_1_2"),
            models.CheckConstraint(condition=Q(arm__in=["", *Arm.values]), name="reading_session_arm_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.reader} session {self.number}"


class Assignment(models.Model):
    """A case in a reader's session, at its randomised position (1-based)."""

    session = models.ForeignKey(ReadingSession, on_delete=models.CASCADE, related_name="assignments")
    case = models.ForeignKey(StudyCase, on_delete=models.PROTECT, related_name="assignments")
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ["session", "position"]
        constraints = [
            models.UniqueConstraint(fields=["session", "case"], name="assignment_case_once_per_session"),
            models.UniqueConstraint(fields=["session", "position"], name="assignment_position_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.session} #{self.position}: {self.case.code}"


class AiAgreement(models.TextChoices):
    AGREE = "agree", "Agree with the AI"
    DISAGREE = "disagree", "Disagree with the AI"
    UNSURE = "unsure", "Unsure"


class Reading(models.Model):
    """One reader's answer on one case in one arm. Created when the case is opened in that arm
    (``opened_at``), answered once (``submitted_at``); a submitted reading is locked for good."""

    assignment = models.ForeignKey(Assignment, on_delete=models.PROTECT, related_name="readings")
    reader = models.ForeignKey(StudyReader, on_delete=models.PROTECT, related_name="readings")
    case = models.ForeignKey(StudyCase, on_delete=models.PROTECT, related_name="readings")
    arm = models.CharField(max_length=8, choices=Arm.choices)
    decision = models.BooleanField(null=True, blank=True, help_text="True = positive (progression)")
    confidence = models.PositiveSmallIntegerField(null=True, blank=True, help_text="0-100")
    scale = models.PositiveSmallIntegerField(null=True, blank=True, help_text="5-point scale, 1-5")
    comment = models.TextField(blank=True)
    target_mm = models.JSONField(null=True, blank=True, help_text="Biopsy target, scanner mm [x, y, z]")
    target_voxel = models.JSONField(null=True, blank=True, help_text="Biopsy target, common-grid [i, j, k]")
    ai_agreement = models.CharField(max_length=8, choices=AiAgreement.choices, blank=True)
    explanation_usefulness = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1-5")
    opened_at = models.DateTimeField(help_text="Server time the case was opened in this arm")
    submitted_at = models.DateTimeField(null=True, blank=True, help_text="Server time of the answer")
    active_seconds = models.FloatField(null=True, blank=True, help_text="Time the page was active")

    class Meta:
        ordering = ["reader", "assignment__session__number", "assignment__position", "arm"]
        constraints = [
            models.UniqueConstraint(fields=["reader", "case", "arm"], name="reading_one_per_reader_case_arm"),
            models.CheckConstraint(condition=Q(arm__in=Arm.values), name="reading_arm_valid"),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__lte=100), name="reading_confidence_0_100"
            ),
            models.CheckConstraint(
                condition=Q(scale__isnull=True) | (Q(scale__gte=1) & Q(scale__lte=5)), name="reading_scale_1_5"
            ),
            models.CheckConstraint(
                condition=Q(explanation_usefulness__isnull=True)
                | (Q(explanation_usefulness__gte=1) & Q(explanation_usefulness__lte=5)),
                name="reading_usefulness_1_5",
            ),
            models.CheckConstraint(
                condition=Q(ai_agreement__in=["", *AiAgreement.values]), name="reading_ai_agreement_valid"
            ),
            models.CheckConstraint(
                condition=Q(active_seconds__isnull=True) | Q(active_seconds__gte=0), name="reading_active_not_negative"
            ),
            # An answered reading has its decision.
            models.CheckConstraint(
                condition=Q(submitted_at__isnull=True) | Q(decision__isnull=False), name="reading_submitted_has_decision"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reader} {self.case.code} {self.arm}"

    @property
    def is_submitted(self) -> bool:
        return self.submitted_at is not None


class QuestionnaireResponse(models.Model):
    """A reader's answers to the study questionnaire (SUS and trust in AI) after their last case."""

    reader = models.OneToOneField(StudyReader, on_delete=models.PROTECT, related_name="questionnaire")
    answers = models.JSONField(help_text="{'sus': [10 answers 1-5], 'trust': [answers 1-5]}")
    sus_score = models.FloatField(null=True, blank=True, help_text="System Usability Scale, 0-100")
    trust_score = models.FloatField(null=True, blank=True, help_text="Mean trust-in-AI item, 1-5")
    submitted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(sus_score__isnull=True) | (Q(sus_score__gte=0) & Q(sus_score__lte=100)),
                name="questionnaire_sus_0_100",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reader} questionnaire"
