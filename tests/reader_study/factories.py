"""factory_boy factories for the reader-study models (ORM only, no services), and
:func:`study_world`: a study with cases, predictions, readers, sessions and assignments, no readings.

They let the results, exports and simulation tests build a study without going through the study
services (which own the rules of opening a study); exams come from ``tests.factories``.
"""
from __future__ import annotations

import factory
import numpy as np
from django.utils import timezone

from apps.accounts.models import Site
from reader_study.models import (
    Arm,
    Assignment,
    Design,
    Reading,
    ReadingSession,
    Study,
    StudyCase,
    StudyReader,
    StudyStatus,
)
from tests.factories import (
    CohortFactory,
    ExamFactory,
    ModelVersionFactory,
    PatientFactory,
    PredictionFactory,
    SiteFactory,
    user_with,
)


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study

    title = factory.Sequence(lambda n: f"Study {n}")
    slug = factory.Sequence(lambda n: f"study-{n}")
    question = "Is this progression or treatment-related change?"
    cohort = factory.SubFactory(CohortFactory)
    seed = 7
    status = StudyStatus.OPEN
    opened_at = factory.LazyFunction(timezone.now)


class StudyCaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = StudyCase

    study = factory.SubFactory(StudyFactory)
    exam = factory.SubFactory(ExamFactory)
    code = factory.Sequence(lambda n: f"C{n + 1:03d}")
    truth = True
    truth_label = factory.LazyAttribute(lambda o: "progression" if o.truth else "treatment_related")
    truth_basis = "histology"


class StudyReaderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = StudyReader

    study = factory.SubFactory(StudyFactory)
    user = factory.LazyFunction(lambda: user_with("reader", SiteFactory()))
    code = factory.Sequence(lambda n: f"R{n + 1:02d}")


class ReadingSessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReadingSession

    reader = factory.SubFactory(StudyReaderFactory)
    number = 1
    order_seed = 1


class AssignmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Assignment

    session = factory.SubFactory(ReadingSessionFactory)
    case = factory.SubFactory(StudyCaseFactory)
    position = factory.Sequence(lambda n: n + 1)


class ReadingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Reading

    assignment = factory.SubFactory(AssignmentFactory)
    reader = factory.SelfAttribute("assignment.session.reader")
    case = factory.SelfAttribute("assignment.case")
    arm = Arm.UNAIDED
    decision = True
    confidence = 80
    opened_at = factory.LazyFunction(timezone.now)
    submitted_at = factory.LazyAttribute(lambda o: o.opened_at + timezone.timedelta(seconds=40))
    active_seconds = 35.0


def study_world(
    *,
    n_cases: int = 12,
    n_readers: int = 4,
    design: str = Design.SEQUENTIAL,
    split_plot: bool = False,
    cases_per_reader: int | None = None,
    rating_scale: str = "confidence",
    sites: tuple[str, ...] = ("north", "south"),
    seed: int = 3,
    with_model: bool = True,
    status: str = StudyStatus.OPEN,
) -> Study:
    """An open study: ``n_cases`` cases (alternating truth) from exams of ``sites``, a model version
    with a prediction per exam, ``n_readers`` readers at alternating sites, their sessions (two in a
    crossover, groups A/B alternating) and assignments in a seeded random order; no readings."""
    site_objs = [Site.objects.get_or_create(name=s, defaults={"display_name": s.title()})[0] for s in sites]
    rng = np.random.default_rng(seed)
    model = ModelVersionFactory() if with_model else None
    exams = []
    for k in range(n_cases):
        positive = k % 2 == 0
        exams.append(ExamFactory(
            patient=PatientFactory(site=site_objs[k % len(site_objs)]),
            diagnosis="progression" if positive else "treatment_related",
            diagnosis_basis="histology" if k % 3 else "follow_up",
        ))
    study = StudyFactory(
        cohort=CohortFactory(exams=exams), design=design, split_plot=split_plot,
        cases_per_reader=cases_per_reader, rating_scale=rating_scale, model_version=model, seed=seed,
        status=status,
    )
    cases = []
    for k, exam in enumerate(exams):
        positive = exam.diagnosis == "progression"
        cases.append(StudyCase.objects.create(
            study=study, exam=exam, code=f"C{k + 1:03d}", truth=positive,
            truth_label=exam.diagnosis, truth_basis=exam.diagnosis_basis,
        ))
        if model is not None:
            # an informative but imperfect AI
            p = float(np.clip(rng.normal(0.64 if positive else 0.38, 0.2), 0.01, 0.99))
            PredictionFactory(model_version=model, exam=exam, probability=p, decision=p >= 0.5,
                              label="progression" if p >= 0.5 else "treatment_related")
    for r in range(n_readers):
        user = user_with("reader", site_objs[r % len(site_objs)])
        reader = StudyReader.objects.create(study=study, user=user, code=f"R{r + 1:02d}",
                                            group="A" if r % 2 == 0 else "B")
        if split_plot:
            size = cases_per_reader or n_cases
            start = (r * size) % n_cases
            subset = [cases[(start + i) % n_cases] for i in range(size)]
        else:
            subset = cases
        if design == Design.CROSSOVER:
            arms = [Arm.UNAIDED, Arm.AIDED] if reader.group == "A" else [Arm.AIDED, Arm.UNAIDED]
        else:
            arms = [""]
        for number, arm in enumerate(arms, start=1):
            session = ReadingSession.objects.create(reader=reader, number=number, arm=arm,
                                                    order_seed=int(rng.integers(1 << 31)))
            order = np.random.default_rng(session.order_seed).permutation(len(subset))
            Assignment.objects.bulk_create(
                Assignment(session=session, case=subset[i], position=pos + 1) for pos, i in enumerate(order)
            )
    return study
