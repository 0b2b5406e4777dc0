"""Label efficiency on a WP3 model page: the learning curve of every registered run of the same task,
training cohort and external site (issue 12: "plot and table on the model page")."""
from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from apps.registry.deep import PROTOCOL, label_efficiency, label_efficiency_runs
from tests.factories import CohortFactory, ModelVersionFactory, SiteFactory, user_with


def wp3_run(*, cohort, site, family: str, fraction: float, seed: int, auc: float, n_train: int, task="progression"):
    return ModelVersionFactory(
        name=f"{task}-{family}", task=task, family="cnn" if family == "cnn" else "classical",
        algorithm=family, training_cohort=cohort, external_site=site, plots={},
        config={"protocol": PROTOCOL, "family": family, "task": task, "label_fraction": fraction, "seed": seed,
                "split": {"train": [str(i) for i in range(n_train)]}},
        metrics={"external": {"name": f"external:{site.name if site else ''}", "n": 50, "n_positive": 32,
                              "brier": 0.1, "metrics": {"auc": {"estimate": auc, "lower": auc - 0.1,
                                                                "upper": min(1.0, auc + 0.05)}},
                              "calibration_stats": {"brier": 0.1}}})


@pytest.fixture
def runs(db):
    paris, lyon = SiteFactory(name="paris"), SiteFactory(name="lyon")
    cohort = CohortFactory(name="dev")
    made = {}
    for family, aucs in (("cnn", {0.25: (0.70, 0.76), 1.0: (0.85, 0.87)}), ("radiomics", {0.25: (0.94, 0.96)})):
        for fraction, values in aucs.items():
            for seed, auc in enumerate(values):
                made[(family, fraction, seed)] = wp3_run(cohort=cohort, site=paris, family=family,
                                                         fraction=fraction, seed=seed, auc=auc,
                                                         n_train=int(88 * fraction))
    # not part of the curve: another external site, another task, a classical (non-WP3) version
    wp3_run(cohort=cohort, site=lyon, family="cnn", fraction=1.0, seed=0, auc=0.5, n_train=88)
    wp3_run(cohort=cohort, site=paris, family="cnn", fraction=1.0, seed=0, auc=0.5, n_train=88, task="idh")
    ModelVersionFactory(training_cohort=cohort, external_site=paris)
    return made


def test_runs_and_table_gather_the_curve_of_one_task_cohort_and_site(runs):
    this = runs[("cnn", 0.25, 1)]
    assert {r["pk"] for r in label_efficiency_runs(this)} == {mv.pk for mv in runs.values()}
    table = label_efficiency(this)
    assert table["site"] == "paris" and table["n_runs"] == 6
    rows = {(r["family"], r["fraction"]): r for r in table["rows"]}
    assert set(rows) == {("cnn", 0.25), ("cnn", 1.0), ("radiomics", 0.25)}
    cnn = rows[("cnn", 0.25)]
    assert cnn["seeds"] == 2 and cnn["auc_mean"] == pytest.approx(0.73)
    assert cnn["auc_sd"] == pytest.approx(np.std([0.70, 0.76], ddof=1))
    assert cnn["auc_lo"] == pytest.approx(0.63) and cnn["n_train"] == 22
    assert cnn["current"] and not rows[("cnn", 1.0)]["current"]
    # a classical version, or a WP3 run alone on its site: no curve
    lone = runs[("cnn", 1.0, 0)].__class__.objects.get(external_site__name="lyon")
    assert label_efficiency(lone) is None


def test_model_page_shows_the_table_and_the_plot(client, runs):
    this = runs[("radiomics", 0.25, 0)]
    client.force_login(user_with("researcher", SiteFactory(name="nancy")))
    html = client.get(reverse("registry:detail", args=[this.pk])).content.decode()
    text = " ".join(html.split())
    assert "Label efficiency" in text and "AUC on paris" in text and "6 registered runs" in text
    assert "<strong>0.730</strong> (0.042)" in text and "<strong>0.860</strong>" in text
    assert "radiomics <span class=\"muted\">(this model)</span>" in text
    response = client.get(reverse("registry:label-efficiency", args=[this.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size[0] > 400 and image.size[1] > 300
    # no curve, no section and no plot
    lone = this.__class__.objects.get(external_site__name="lyon")
    assert "Label efficiency" not in client.get(reverse("registry:detail", args=[lone.pk])).content.decode()
    assert client.get(reverse("registry:label-efficiency", args=[lone.pk])).status_code == 404
