"""The aided arm shows a deep model's explanation map (Prediction.maps) as its heat map."""
from __future__ import annotations

import gzip
import json
import re

import nibabel as nib
import numpy as np
import pytest
from django.urls import reverse

from apps.cohorts.services.store import StoreTransaction
from apps.registry.models import Prediction
from ml.explain import METHOD_PREFERENCE, save_map_nifti
from reader_study.explanations import heatmap_file
from reader_study.models import Assignment
from tests.factories import PredictionFactory


def test_heatmap_file_prefers_a_stored_heat_map_then_the_most_faithful_method():
    best, second = METHOD_PREFERENCE[0], METHOD_PREFERENCE[1]
    maps = {second: "maps/second.nii.gz", best: "maps/best.nii.gz"}
    assert heatmap_file(PredictionFactory.build(explanation={}, maps=maps)) == "maps/best.nii.gz"
    assert heatmap_file(PredictionFactory.build(explanation={}, maps={second: "maps/s.nii.gz"})) == "maps/s.nii.gz"
    with_heatmap = PredictionFactory.build(explanation={"heatmap": "maps/h.nii.gz"}, maps=maps)
    assert heatmap_file(with_heatmap) == "maps/h.nii.gz"
    assert heatmap_file(PredictionFactory.build(explanation={}, maps={})) is None
    assert heatmap_file(None) is None


def _overlays(html: str) -> list[dict]:
    config = re.search(r'<script[^>]*type="application/json"[^>]*>(.*?)</script>', html, re.S).group(1)
    return json.loads(config).get("overlays", [])


@pytest.mark.django_db
def test_aided_arm_shows_and_serves_the_deep_models_map(client, open_world, tmp_path):
    w = open_world
    user = w["readers"][0]
    a = Assignment.objects.filter(session__reader__user=user).select_related("case").order_by("position").first()
    slug, code = w["study"].slug, a.case.code
    amap = np.zeros((8, 8, 8), np.float32)
    amap[2:4, 3:5, 4:6] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    name, _ = StoreTransaction().put_file(save_map_nifti(amap, affine, tmp_path / "m.nii.gz"), category="maps")
    updated = Prediction.objects.filter(model_version=w["study"].model_version, exam=a.case.exam).update(
        explanation={"output": "calibrated probability"}, maps={METHOD_PREFERENCE[0]: name})
    assert updated == 1

    client.force_login(user)
    unaided = client.get(reverse("reader_study:case", args=[slug, code, "unaided"])).content.decode()
    assert not any(o.get("key") == "heatmap" for o in _overlays(unaided))
    client.post(reverse("reader_study:case", args=[slug, code, "unaided"]),
                {"decision": "1", "confidence": "70", "comment": "", "active_seconds": "12.5"})
    aided = client.get(reverse("reader_study:case", args=[slug, code, "aided"]))
    assert aided.status_code == 200
    heat = [o for o in _overlays(aided.content.decode()) if o.get("key") == "heatmap"]
    assert len(heat) == 1 and heat[0]["url"].startswith("/studies/images/")
    served = client.get(heat[0]["url"])
    assert served.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(b"".join(served.streaming_content)))
    np.testing.assert_array_equal(np.asarray(image.dataobj), amap)
    np.testing.assert_allclose(image.affine, affine)
