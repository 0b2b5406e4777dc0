"""Habitat clustering: estimator API, k selection, ordering, voxel features from the stacks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from ml.subregions.habitats import (
    HabitatModel,
    embeddings_to_voxels,
    habitat_volume,
    pooled_frame,
    voxel_features,
)
from tests.ml.subregions.conftest import make_stack


def _mixture(k: int, n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """k well separated Gaussian blobs in (tbr, ttp_min); blob c has mean TTP 5 + 10 c."""
    rng = np.random.default_rng(seed)
    centres = [(1.5 + (c % 2) * 2.0, 5.0 + 10.0 * c) for c in range(k)]
    rows, truth = [], []
    for c, (tbr, ttp) in enumerate(centres):
        rows.append(np.c_[rng.normal(tbr, 0.15, n), rng.normal(ttp, 0.8, n)])
        truth += [c] * n
    perm = rng.permutation(k * n)
    return pd.DataFrame(np.vstack(rows)[perm], columns=["tbr", "ttp_min"]), np.asarray(truth)[perm]


@pytest.mark.parametrize("true_k", [2, 3, 4])
def test_gmm_bic_picks_the_true_k(true_k):
    X, truth = _mixture(true_k)
    model = HabitatModel(method="gmm", k_range=(2, 3, 4, 5), random_state=0).fit(X)
    assert model.n_habitats_ == true_k
    assert set(model.criterion_) == {2, 3, 4, 5}
    assert adjusted_rand_score(truth, model.labels_) > 0.95


def test_kmeans_silhouette_picks_the_true_k():
    X, truth = _mixture(3)
    model = HabitatModel(method="kmeans", k_range=(2, 3, 4, 5), random_state=0).fit(X)
    assert model.n_habitats_ == 3
    assert max(model.criterion_, key=model.criterion_.get) == 3
    assert adjusted_rand_score(truth, model.predict(X)) > 0.95


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_random_state_reproducible_and_predict_matches_fit(method):
    X, _ = _mixture(3, seed=1)
    a = HabitatModel(method=method, k=3, random_state=7).fit(X)
    b = HabitatModel(method=method, k=3, random_state=7).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    proba = a.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(proba.argmax(axis=1), a.predict(X))


@pytest.mark.parametrize("ascending", [True, False])
def test_habitats_ordered_by_the_stated_column(ascending):
    X, truth = _mixture(3, seed=2)
    model = HabitatModel(k=3, order_by="ttp_min", ascending=ascending, random_state=0).fit(X)
    means = model.means_frame()["ttp_min"].to_numpy()
    assert np.all(np.diff(means) > 0) if ascending else np.all(np.diff(means) < 0)
    # the earliest blob (truth 0, TTP about 5 min) is habitat 0 when ascending, the last otherwise
    earliest = np.bincount(model.labels_[truth == 0]).argmax()
    assert earliest == (0 if ascending else 2)
    # habitat means are the means of the rows given that label
    for h in range(3):
        assert means[h] == pytest.approx(X["ttp_min"][model.labels_ == h].mean())


def test_bad_input_is_refused():
    X, _ = _mixture(2)
    with pytest.raises(ValueError, match="method"):
        HabitatModel(method="dbscan").fit(X)
    with pytest.raises(ValueError, match="order_by"):
        HabitatModel(order_by="slope").fit(X)
    bad = X.copy()
    bad.iloc[3, 1] = np.nan
    with pytest.raises(ValueError, match="ttp_min"):
        HabitatModel().fit(bad)
    model = HabitatModel(k=2).fit(X)
    with pytest.raises(ValueError, match="lacks the columns"):
        model.predict(X[["tbr"]])


def test_embeddings_interpolated_trilinearly_to_voxels():
    # patch grid 4 x 5 x 3 with 8 mm spacing; embedding 0 = world x, 1 = world y + 2 z (linear)
    patch_affine = np.diag([8.0, 8.0, 8.0, 1.0])
    patch_affine[:3, 3] = (-20.0, -30.0, 0.0)
    idx = np.indices((4, 5, 3), dtype=float).reshape(3, -1)
    world = ((patch_affine[:3, :3] @ idx).T + patch_affine[:3, 3]).reshape(4, 5, 3, 3)
    patches = np.stack([world[..., 0], world[..., 1] + 2 * world[..., 2]])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-20.0, -30.0, 0.0)
    ijk = np.array([[0, 0, 0], [3, 7, 5], [12, 15, 8], [5, 1, 2]])  # inside the patch centres' hull
    out = embeddings_to_voxels(patches, patch_affine, ijk, affine)
    w = (np.c_[ijk, np.ones(len(ijk))] @ affine.T)[:, :3]
    np.testing.assert_allclose(out[:, 0], w[:, 0], atol=1e-4)
    np.testing.assert_allclose(out[:, 1], w[:, 1] + 2 * w[:, 2], atol=1e-4)


def test_voxel_features_from_a_stack(stack):
    vf = voxel_features(stack)
    tumour = stack.masks["tumor"] > 0
    assert list(vf.frame.columns) == ["tbr", "suv_rel", "ttp_min", "slope"]
    assert len(vf.frame) == tumour.sum()
    assert vf.frame["suv_rel"].median() == pytest.approx(1.0)
    np.testing.assert_allclose(vf.frame["tbr"], stack.image[2][tumour])
    vol = vf.to_volume(vf.frame["ttp_min"].to_numpy(), fill=np.nan)
    np.testing.assert_allclose(vol[tumour], stack.ttp_min[tumour])
    assert np.isnan(vol[~tumour]).all()


def test_voxel_features_refuses_what_the_exam_lacks(stack):
    with pytest.raises(ValueError, match="unknown"):
        voxel_features(stack, dynamic=("tbr", "ktrans"))
    with pytest.raises(ValueError, match="no 'necrosis' mask"):
        voxel_features(stack, mask="necrosis")
    static_only = type(stack)(**{**stack.__dict__, "ttp_min": None, "slope_suv_per_h": None})
    with pytest.raises(ValueError, match="no dynamic PET"):
        voxel_features(static_only)
    assert list(voxel_features(static_only, dynamic=("tbr", "suv_rel")).frame.columns) == ["tbr", "suv_rel"]


def test_habitats_of_a_stack_separate_the_hot_early_subregion(stack):
    exams = [stack, make_stack(seed=3, hot_offset_mm=(-8.0, 0.0, 0.0), key="sub-U/ses-01")]
    feats = [voxel_features(s) for s in exams]
    model = HabitatModel(k=2, order_by="ttp_min", random_state=0).fit(pooled_frame(feats))
    for s, f in zip(exams, feats):
        labels = habitat_volume(model, f)
        assert set(np.unique(labels[s.masks["tumor"] == 0])) == {0}
        hot = s.masks["aggressive"] > 0
        # habitat 0 (earliest TTP) is the aggressive blob: most of it, little outside it
        assert (labels[hot] == 1).mean() > 0.8
        assert (labels[(s.masks["tumor"] > 0) & ~hot] == 1).mean() < 0.15


def test_embedding_block_is_reduced_by_pca(stack):
    class _Emb:  # stand-in for ml.foundation Embeddings: 16 features on a 12 mm patch grid
        patch_affine = np.diag([12.0, 12.0, 12.0, 1.0])
        patch_affine[:3, 3] = (-90.0, -126.0, -72.0)
        patches = np.random.default_rng(0).standard_normal((16, 16, 19, 16)).astype(np.float32)

    vf = voxel_features(stack, embeddings=_Emb(), dynamic=("ttp_min",))
    assert [c for c in vf.frame.columns if c.startswith("emb_")] == [f"emb_{i}" for i in range(16)]
    model = HabitatModel(k=3, pca_components=4, random_state=0).fit(vf.frame)
    assert model.pca_.n_components_ == 4
    assert model.other_cols_ == ["ttp_min"]


def test_min_tbr_keeps_the_active_tumour_and_context_features_are_local_means(stack):
    full = voxel_features(stack, dynamic=("tbr", "tbr_local", "ttp_local"))
    active = voxel_features(stack, dynamic=("tbr", "tbr_local"), min_tbr=3.0)
    assert 0 < len(active.frame) < len(full.frame)
    assert active.frame["tbr"].min() >= 3.0
    # local means lie within the tumour's range and vary less than the voxel values
    for raw, local in (("tbr", "tbr_local"),):
        assert full.frame[local].between(full.frame[raw].min(), full.frame[raw].max()).all()
        assert full.frame[local].std() < full.frame[raw].std()
    with pytest.raises(ValueError, match="above TBR 100"):
        voxel_features(stack, min_tbr=100.0)
