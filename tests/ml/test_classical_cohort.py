"""Classical baseline on the cohort generator: quantify recurrence exams, then T/S and TBR rules
and logistic regression, cross-validated, external site and leave-one-site-out.

The generator is calibrated so that T/S max separates progression from treatment-related change
with an AUC about 0.88 (docs/phantoms.md); 45 exams over 3 sites give CIs of about +-0.12.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from ml.classical import leave_one_site_out, train_classical
from ml.quant import QuantConfig, quantify_exam

phantoms = pytest.importorskip("ml.phantoms.exam")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recurrence_table():
    rows, labels, sites = {}, {}, {}
    for i in range(45):
        ex = phantoms.make_exam(seed=7, patient_index=i, site=i % 3,
                                timepoint="suspected_recurrence", include_mr=False)
        f = ex.suv_factor
        q = quantify_exam(
            pet_static=ex.pet_static.data * f, pet_dynamic=ex.pet_dynamic.data * f,
            frame_start_s=ex.frame_start_s, frame_duration_s=ex.frame_duration_s,
            affine=ex.pet_static.affine, tumor_mask=ex.pet_masks["tumor"],
            striatum_mask=ex.pet_masks["striatum"], background_mask=ex.pet_masks["background"],
            config=QuantConfig(maps_region="none", n_clusters=0),
        )
        key = f"{ex.labels.participant_id}/{ex.session_id}"
        rows[key], labels[key], sites[key] = q.to_row(), ex.diagnosis, ex.site.name
    return pd.DataFrame.from_dict(rows, orient="index"), pd.Series(labels), pd.Series(sites)


def test_ts_max_rule_separates_progression_leave_one_site_out(recurrence_table):
    X, y, s = recurrence_table
    assert set(y) == {"progression", "treatment_related"} and s.nunique() == 3
    loso = leave_one_site_out(X, y, s, task="progression", model="threshold",
                              threshold_feature="ts_max", n_bootstrap=500)
    auc = loso.pooled.metrics["auc"]
    assert auc.lower > 0.5 and auc.estimate > 0.7
    json.dumps(loso.to_dict(), allow_nan=False)


def test_logreg_cross_validation_and_external_site(recurrence_table):
    X, y, s = recurrence_table
    res = train_classical(X, y, s, task="progression", model="logreg", external_site="lyon",
                          n_outer=3, n_bootstrap=500)
    assert res.cv.metrics["auc"].estimate > 0.7
    assert res.external is not None and res.external.n == 15
    assert res.external.metrics["auc"].estimate > 0.6
    assert {"tbr_max", "ts_max", "mtv_ml"} & set(list(res.importance)[:4])
