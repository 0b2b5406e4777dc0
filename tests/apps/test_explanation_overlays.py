"""Exam page: a deep model's explanation maps (Prediction.maps) as viewer overlays, served to who may see the exam."""
from __future__ import annotations

import gzip
import json
import re

import nibabel as nib
import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from apps.cohorts.services.store import StoreTransaction
from ml.explain import METHOD_PREFERENCE, save_map_nifti
from ml.io.grid import common_grid
from tests.apps.test_viewer_config import _small_common_exam
from tests.factories import PredictionFactory, SiteFactory, user_with

pytestmark = pytest.mark.django_db


def _overlays(html: str) -> list[dict]:
    payload = re.search(r'<script[^>]*type="application/json"[^>]*>(.*?)</script>', html, re.S).group(1)
    return json.loads(payload)["overlays"]


def test_exam_page_shows_the_latest_predictions_maps_best_method_first(tmp_path):
    exam = _small_common_exam(hot=(7, 7, 7))
    amap = np.zeros((12, 12, 12), np.float32)
    amap[6:9, 6:9, 6:9] = 1.0
    stored = StoreTransaction().put_file(save_map_nifti(amap, common_grid().affine, tmp_path / "m.nii.gz"),
                                         category="maps")[0]
    worst, best = METHOD_PREFERENCE[-1], METHOD_PREFERENCE[0]
    PredictionFactory(exam=exam, maps={})  # a classical model's prediction: no map
    prediction = PredictionFactory(exam=exam, maps={worst: stored, best: stored})

    client = Client()
    client.force_login(user_with("coordinator", exam.patient.site))
    overlays = _overlays(client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode())
    maps = [o for o in overlays if o["key"].startswith("explanation-")]
    assert [o["key"] for o in maps] == [f"explanation-{best}", f"explanation-{worst}"]
    assert not any(o["visible"] for o in maps) and all(o["unit"] for o in maps)
    response = client.get(maps[0]["url"])
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(b"".join(response.streaming_content)))
    np.testing.assert_array_equal(np.asarray(image.dataobj), amap)
    np.testing.assert_allclose(image.affine, common_grid().affine)
    assert client.get(reverse("quantification:prediction-map", args=[prediction.pk, "nope"])).status_code == 404

    # a coordinator of another site sees neither the exam nor its maps
    other = Client()
    other.force_login(user_with("coordinator", SiteFactory()))
    assert other.get(maps[0]["url"]).status_code == 404
