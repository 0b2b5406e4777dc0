"""The cohort's habitat-signature vs marker table (stored by apps.subregions), its page and CSV, with
the p- and q-values recomputed independently (scipy Mann-Whitney, Benjamini-Hochberg by hand)."""
from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest
from django.urls import reverse
from scipy import stats

from apps.audit.models import AuditEvent
from apps.subregions.models import SubregionCohortAnalysis
from apps.subregions.services import _cohort_analysis
from ml.subregions.habitats import HabitatModel
from tests.factories import CohortFactory, ExamFactory, PatientFactory, SiteFactory, user_with

pytestmark = pytest.mark.django_db


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, written out (step-up, monotone)."""
    n = len(p)
    order = np.argsort(p)
    q = np.empty(n)
    running = 1.0
    for rank in range(n, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * n / rank)
        q[i] = running
    return q


@pytest.fixture
def analysis():
    """12 patients (initial-diagnosis exams, plus one follow-up that must not count); the share of
    habitat 1 is higher in WHO grade 4 and IDH-wildtype tumours."""
    site = SiteFactory()
    rng = np.random.default_rng(5)
    exams, signatures = [], {}
    for i in range(12):
        grade4 = i % 2 == 0
        patient = PatientFactory(site=site, who_grade=4 if grade4 else 2, idh="wildtype" if grade4 else "mutant",
                                 codeletion_1p19q="" if grade4 else ("codeleted" if i % 4 == 1 else "intact"))
        exam = ExamFactory(patient=patient, timepoint="initial_diagnosis", day=0, diagnosis="unknown",
                           diagnosis_basis="unknown")
        f0 = float(np.clip(rng.normal(0.6 if grade4 else 0.3, 0.1), 0.01, 0.98))
        signatures[exam.pk] = {"frac_h0": f0, "frac_h1": 1 - f0, "suvmean_h0": float(rng.normal(3, 0.5)),
                               "suvmean_h1": float(rng.normal(2, 0.5))}
        exams.append(exam)
        if i == 0:  # a later exam of the same patient: one exam per patient in the table
            later = ExamFactory(patient=patient, timepoint="suspected_recurrence", day=300)
            signatures[later.pk] = {"frac_h0": 0.99, "frac_h1": 0.01, "suvmean_h0": 9.0, "suvmean_h1": 9.0}
            exams.append(later)
    cohort = CohortFactory(name="dx12", exams=exams)
    frame = pd.DataFrame({"tbr": rng.normal(2, 0.5, 200), "ttp_min": rng.normal(20, 5, 200)})
    habitats = HabitatModel(k=2, random_state=0).fit(frame)
    pk = _cohort_analysis(cohort, "dynamic", None, habitats, exams, signatures, marker="who_grade",
                          source="test", margin_mm=5.0, random_state=0)
    return SubregionCohortAnalysis.objects.get(pk=pk), signatures, [e for e in exams if e.timepoint ==
                                                                     "initial_diagnosis"], site


def test_association_rows_match_an_independent_computation(analysis):
    a, signatures, initial, _ = analysis
    assert a.n_exams == 12 and sorted(a.exams) == sorted(e.pk for e in initial)  # the follow-up left out
    rows = {(r["marker"], r["feature"]): r for r in a.association}
    grade4 = np.array([e.patient.who_grade == 4 for e in initial])
    x = np.array([signatures[e.pk]["frac_h0"] for e in initial])
    p = stats.mannwhitneyu(x[grade4], x[~grade4], alternative="two-sided").pvalue
    r = rows[("who_grade", "frac_h0")]
    assert r["p_mwu"] == pytest.approx(p, rel=1e-5) and r["n"] == 12 and r["n_pos"] == 6
    assert r["rank_biserial"] > 0.5 and r["rb_lo"] <= r["rank_biserial"] <= r["rb_hi"]
    tested = [row for row in a.association if row["p_mwu"] is not None]
    q = _bh(np.array([row["p_mwu"] for row in tested]))
    assert [row["q_mwu"] for row in tested] == pytest.approx(list(q), rel=1e-5)
    # 1p/19q only within IDH-mutant tumours: 6 patients, 3 codeleted (IDH-wildtype left out)
    assert rows[("codeletion_1p19q", "frac_h0")]["n"] == 6 and rows[("codeletion_1p19q", "frac_h0")]["n_pos"] == 3


def test_association_page_and_csv_for_the_cohort_sites(analysis, client):
    a, _, _, site = analysis
    url = reverse("subregions:association", args=[a.cohort.pk, "dynamic"])
    client.force_login(user_with("researcher", site))
    page = client.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Habitat signature vs molecular markers" in text and "who_grade" in text and "frac_h0" in text
    # frac_h0 separates the grades completely: the odds ratio is not printed as a 300-digit number
    assert "&gt; 1000 (separation)" in text and max(len(w) for w in text.split()) < 200
    response = client.get(url + "?format=csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert response.status_code == 200 and len(rows) == len(a.association)
    assert {"marker", "feature", "or_per_sd", "q_mwu", "q_fisher"} <= set(rows[0])
    assert AuditEvent.objects.filter(action="subregions.download", details__file="association.csv").exists()
    client.force_login(user_with("researcher", SiteFactory()))
    assert client.get(url).status_code == 404
    assert client.get(reverse("subregions:association", args=[a.cohort.pk, "model-99"])).status_code == 404
