"""A reader-study world: two sites, six cases with real small NIfTI files and predictions, readers
from both sites, a statistician, coordinators of both sites and of a third site."""
from __future__ import annotations

import pytest

from reader_study import services
from tests.factories import (
    CohortFactory,
    ModelVersionFactory,
    PredictionFactory,
    SiteFactory,
    StudyFactory,
    case_exam,
    user_with,
)


def make_world(*, design: str = "sequential", washout_days: int = 0, split_plot: bool = False,
               cases_per_reader: int | None = None, n_readers: int = 2) -> dict:
    home, other, third = SiteFactory(name="home"), SiteFactory(name="other"), SiteFactory(name="third")
    exams = [case_exam(site, diagnosis=d) for site, d in
             [(home, "progression"), (home, "treatment_related"), (home, "progression"),
              (other, "treatment_related"), (other, "progression"), (other, "treatment_related")]]
    model = ModelVersionFactory()
    for i, exam in enumerate(exams):
        PredictionFactory(model_version=model, exam=exam, probability=0.2 + 0.1 * i, decision=i >= 3,
                          label="progression" if i >= 3 else "treatment_related",
                          explanation={"base_value": 0.0, "output": "log-odds", "contributions": [
                              {"feature": "ts_max", "value": 2.4, "shap": 0.9},
                              {"feature": "ttp_min", "value": 17.5, "shap": -0.3},
                              {"feature": "curve_class", "value": 2.0, "shap": 0.1}]})
    cohort = CohortFactory(exams=exams)
    coordinator = user_with("coordinator", home)
    readers = [user_with("reader", home if i % 2 == 0 else other) for i in range(n_readers)]
    study = StudyFactory(cohort=cohort, model_version=model, design=design, washout_days=washout_days,
                         split_plot=split_plot, cases_per_reader=cases_per_reader, created_by=coordinator)
    services.study_cases_set(study=study, user=coordinator)
    services.study_readers_set(study=study, user=coordinator, readers=readers)
    return {"home": home, "other": other, "third": third, "exams": exams, "model": model, "cohort": cohort,
            "coordinator": coordinator, "readers": readers, "study": study}


@pytest.fixture
def world(db):
    return make_world()


@pytest.fixture
def open_world(world):
    services.study_open(study=world["study"], user=world["coordinator"])
    world["study"].refresh_from_db()
    return world
