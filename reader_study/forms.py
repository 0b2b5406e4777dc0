"""Forms of the reader study: the coordinator's design form, the reader's answer and questionnaire.

Forms validate the shape of the input; the rules (locks, blinding, eligibility) live in
``reader_study.services``.
"""
from __future__ import annotations

import json

from django import forms

from apps.registry.models import ModelVersion
from reader_study.models import AiAgreement, Design, RatingScale, Study, StudyTask
from reader_study.services import DEFAULT_TRUST_ITEMS, SUS_ITEMS, reader_candidates

LIKERT = [(i, str(i)) for i in range(1, 6)]


class StudyForm(forms.Form):
    """Create or edit a study: design, case set (from a cohort) and readers."""

    title = forms.CharField(max_length=200)
    question = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}),
                               help_text="The clinical question, as readers will see it")
    task = forms.ChoiceField(choices=StudyTask.choices)
    design = forms.ChoiceField(choices=Design.choices)
    washout_days = forms.IntegerField(min_value=0, max_value=365, initial=28,
                                      help_text="Crossover: days between a reader's two sessions (0 for demos)")
    split_plot = forms.BooleanField(required=False, help_text="Each reader reads a subset of the cases")
    cases_per_reader = forms.IntegerField(min_value=1, required=False, help_text="Split-plot: subset size")
    rating_scale = forms.ChoiceField(choices=RatingScale.choices)
    cohort = forms.ModelChoiceField(queryset=None, to_field_name="name",
                                    help_text="Cases: its exams with a reference standard for the task")
    n_cases = forms.IntegerField(min_value=2, required=False,
                                 help_text="Draw this many eligible cases (seeded); empty: all eligible")
    model_version = forms.ModelChoiceField(queryset=ModelVersion.objects.all(), label="AI model",
                                           help_text="Its prediction and explanation are shown in the aided arm")
    readers = forms.ModelMultipleChoiceField(queryset=None, widget=forms.CheckboxSelectMultiple,
                                             help_text="Users with the reader role at any site")
    sus = forms.BooleanField(required=False, initial=True, label="System Usability Scale after the last case")
    trust_items = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                  initial="\n".join(DEFAULT_TRUST_ITEMS),
                                  help_text="Trust-in-AI items, one per line, answered 1-5")
    seed = forms.IntegerField(required=False, min_value=0, help_text="Case orders and groups; empty: random")

    def __init__(self, *args, cohorts, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["cohort"].queryset = cohorts
        self.fields["readers"].queryset = reader_candidates()
        self.fields["readers"].label_from_instance = lambda u: u.get_full_name() or u.get_username()

    def clean(self):
        data = super().clean()
        if data.get("split_plot") and not data.get("cases_per_reader"):
            self.add_error("cases_per_reader", "Give the subset size of a split-plot design.")
        data["questionnaire"] = {
            "sus": bool(data.get("sus")),
            "trust_items": [line.strip() for line in (data.get("trust_items") or "").splitlines() if line.strip()],
        }
        return data

    @classmethod
    def initial_from(cls, study: Study) -> dict:
        return {
            "title": study.title, "question": study.question, "task": study.task, "design": study.design,
            "washout_days": study.washout_days, "split_plot": study.split_plot,
            "cases_per_reader": study.cases_per_reader, "rating_scale": study.rating_scale,
            "cohort": study.cohort, "model_version": study.model_version,
            "readers": [r.user for r in study.readers.all()], "seed": study.seed,
            "sus": (study.questionnaire or {}).get("sus", True),
            "trust_items": "\n".join((study.questionnaire or {}).get("trust_items", [])),
        }


class ReadingForm(forms.Form):
    """A reader's answer on one case in one arm (fields shown depend on the study and the arm)."""

    decision = forms.TypedChoiceField(coerce=lambda v: v == "1", choices=[("1", "positive"), ("0", "negative")],
                                      widget=forms.RadioSelect)
    confidence = forms.IntegerField(min_value=0, max_value=100, required=False,
                                    widget=forms.NumberInput(attrs={"type": "range", "step": 1}))
    scale = forms.TypedChoiceField(coerce=int, required=False, widget=forms.RadioSelect, choices=[
        (1, "1 definitely negative"), (2, "2 probably negative"), (3, "3 indeterminate"),
        (4, "4 probably positive"), (5, "5 definitely positive")])
    comment = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 2}))
    target_mm = forms.CharField(required=False, widget=forms.HiddenInput)
    ai_agreement = forms.ChoiceField(required=False, choices=AiAgreement.choices, widget=forms.RadioSelect)
    explanation_usefulness = forms.TypedChoiceField(
        coerce=int, required=False, choices=LIKERT, widget=forms.RadioSelect,
        label="How useful was the explanation? (1 not at all, 5 very)")
    active_seconds = forms.FloatField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, study: Study, arm: str, **kwargs):
        super().__init__(*args, **kwargs)
        positive, negative = (("Progression", "Treatment-related change") if study.task == StudyTask.PROGRESSION
                              else ("High-grade", "Low-grade"))
        self.fields["decision"].choices = [("1", positive), ("0", negative)]
        self.fields["decision"].label = "Your decision"
        self.fields["confidence"].label = f"Confidence that this is {positive.lower()} (0-100)"
        self.fields["confidence"].initial = 50
        if study.rating_scale == RatingScale.CONFIDENCE:
            del self.fields["scale"]
            self.fields["confidence"].required = True
        else:
            del self.fields["confidence"]
            self.fields["scale"].required = True
            self.fields["scale"].label = f"Rating (5 = definitely {positive.lower()})"
        if study.task != StudyTask.BIOPSY_TARGET:
            del self.fields["target_mm"]
        if arm != "aided":
            del self.fields["ai_agreement"]
            del self.fields["explanation_usefulness"]
        else:
            self.fields["ai_agreement"].required = True
            self.fields["ai_agreement"].label = "Do you agree with the AI?"
            self.fields["explanation_usefulness"].required = True

    def clean_target_mm(self):
        raw = self.cleaned_data.get("target_mm") or ""
        if not raw:
            raise forms.ValidationError("Place the biopsy target: move the crosshair and press “Set target here”.")
        try:
            values = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError("Invalid target.") from exc
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, int | float) for v in values)):
            raise forms.ValidationError("Invalid target.")
        return [float(v) for v in values]

    def answer(self) -> dict:
        data = dict(self.cleaned_data)
        data.pop("active_seconds", None)
        return data


class QuestionnaireForm(forms.Form):
    """SUS (10 items) and the study's trust items, each 1-5 (1 strongly disagree, 5 strongly agree)."""

    def __init__(self, *args, study: Study, **kwargs):
        super().__init__(*args, **kwargs)
        config = study.questionnaire or {}
        if config.get("sus"):
            for i, text in enumerate(SUS_ITEMS, start=1):
                self.fields[f"sus_{i}"] = forms.TypedChoiceField(label=text, choices=LIKERT, coerce=int,
                                                                 widget=forms.RadioSelect)
        for i, text in enumerate(config.get("trust_items", []), start=1):
            self.fields[f"trust_{i}"] = forms.TypedChoiceField(label=text, choices=LIKERT, coerce=int,
                                                               widget=forms.RadioSelect)

    def answers(self) -> dict:
        d = self.cleaned_data
        return {"sus": [d[k] for k in sorted((k for k in d if k.startswith("sus_")), key=lambda k: int(k[4:]))],
                "trust": [d[k] for k in sorted((k for k in d if k.startswith("trust_")), key=lambda k: int(k[6:]))]}
