"""Quality of the representation: linear probes, retrieval, reconstructions, training curves.

* :func:`embed_stacks`: frozen embeddings of exams: the global one (``encode(...).pooled``, mean over
  the brain), the global max one (``encode(...).peak``, each feature's maximum over the brain's
  patches) or the lesion one (``encode(...).lesion``, mean over the patches the tumour mask covers).
* :func:`linear_probe`: logistic regression on frozen embeddings, patient-grouped stratified
  cross-validation (every exam is scored by a model that never saw its patient), AUC of the
  out-of-fold scores with a patient-level bootstrap confidence interval.
* :func:`probe_report`: the two clinical probes, progression (suspected-recurrence exams:
  progression vs treatment-related) and IDH (initial-diagnosis exams: mutant vs wild type), for a
  pretrained encoder beside a randomly initialised one of the same config and seed.
* :func:`nearest_neighbours`: cosine retrieval of the top-k exams with their labels.
* :func:`reconstruction_png` (inpainting or cross-modal: input, masked input, output) and
  :func:`training_curve_png` (per-task losses by epoch); matplotlib, Agg backend.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ml.foundation.data import CHANNELS, ExamStack, load_stack
from ml.foundation.model import EncoderConfig, FoundationEncoder, encode, load_encoder

__all__ = [
    "PROBE_TASKS",
    "ProbeResult",
    "ProbeReport",
    "Neighbour",
    "POOLINGS",
    "POOLING_MEANINGS",
    "embed_stacks",
    "embed_stacks_pooled",
    "probe_labels",
    "linear_probe",
    "probe_report",
    "probe_reports",
    "random_encoder",
    "nearest_neighbours",
    "load_pretrain_model",
    "reconstruction_png",
    "training_curve_png",
]

#: task -> (time point of the exams, label column, positive value, negative value)
PROBE_TASKS: dict[str, tuple[str, str, str, str]] = {
    "progression": ("suspected_recurrence", "diagnosis", "progression", "treatment_related"),
    "idh": ("initial_diagnosis", "idh", "mutant", "wildtype"),
}


@dataclass(frozen=True)
class ProbeResult:
    """One linear probe.

    Attributes:
        task: probe name.
        auc: AUC of the out-of-fold (held-out patient) scores.
        ci_low, ci_high: 95 % patient-bootstrap interval of the AUC.
        n_exams, n_positive: exams scored and positives among them.
        n_folds: patient-grouped folds.
    """

    task: str
    auc: float
    ci_low: float
    ci_high: float
    n_exams: int
    n_positive: int
    n_folds: int


@dataclass(frozen=True)
class ProbeReport:
    """Pretrained vs random-init probes, by task.

    ``pretrained`` and ``random``: the first run's results. With repeats (:func:`probe_reports`'s
    ``repeats``), ``pretrained_runs`` holds the pretrained encoder's probe with each run's fold split
    and ``random_runs`` the probe of a differently initialised random encoder per run (a single random
    draw varies by several AUC points, as much as pretraining may add). ``difference``: the mean
    pretrained AUC minus the mean random AUC over the runs.
    """

    pretrained: dict[str, ProbeResult]
    random: dict[str, ProbeResult]
    pretrained_runs: tuple[dict[str, ProbeResult], ...] = ()
    random_runs: tuple[dict[str, ProbeResult], ...] = ()

    def aucs(self, side: str, task: str) -> list[float]:
        """The AUCs of ``task`` over the runs of ``side`` (``"pretrained"`` or ``"random"``)."""
        runs = getattr(self, f"{side}_runs") or (getattr(self, side),)
        return [run[task].auc for run in runs]

    @property
    def difference(self) -> dict[str, float]:
        return {t: float(np.mean(self.aucs("pretrained", t)) - np.mean(self.aucs("random", t)))
                for t in self.pretrained if t in self.random}

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = {"pretrained": {k: asdict(v) for k, v in self.pretrained.items()},
               "random": {k: asdict(v) for k, v in self.random.items()}, "difference": self.difference}
        if len(self.random_runs) > 1:
            out["runs"] = {t: {"pretrained_auc": self.aucs("pretrained", t), "random_auc": self.aucs("random", t)}
                           for t in self.pretrained if t in self.random}
        return out


@dataclass(frozen=True)
class Neighbour:
    """A retrieved exam: its key, cosine similarity to the query and its labels."""

    key: str
    similarity: float
    labels: dict[str, str]


def _stacks(source: pd.DataFrame | Iterable[ExamStack]) -> Iterable[ExamStack]:
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise ValueError("expected an index with a 'path' column (ml.foundation.data.load_index)")
        for path in source["path"]:
            yield load_stack(path)
    else:
        yield from source


#: Embeddings a probe can read: ``global`` (brain mean), ``max`` (each feature's maximum over the
#: brain's patches; no mask needed) and ``lesion`` (tumour-weighted mean).
POOLINGS = ("global", "max", "lesion")
#: What each pooling is, for printed reports and pages.
POOLING_MEANINGS = {
    "global": "mean over the brain",
    "max": "each feature's maximum over the brain's patches",
    "lesion": "mean over the tumour's patches",
}


def embed_stacks(encoder: FoundationEncoder, source: pd.DataFrame | Iterable[ExamStack], *,
                 pooling: str = "global") -> pd.DataFrame:
    """Embeddings of exams, one row per exam (index: key; columns: ``e0..e{E-1}`` then the meta).

    Args:
        pooling: ``"global"`` (mean over the brain), ``"max"`` (each feature's maximum over the
            brain's patches) or ``"lesion"`` (mean over the tumour's patches; an exam without a
            tumour mask gets its global embedding, and ``pooled_on`` says which one each row holds).
    """
    tables = embed_stacks_pooled(encoder, source, poolings=(pooling,))
    return tables[pooling]


def embed_stacks_pooled(encoder: FoundationEncoder, source: pd.DataFrame | Iterable[ExamStack], *,
                        poolings: Sequence[str] = POOLINGS) -> dict[str, pd.DataFrame]:
    """:func:`embed_stacks` for several poolings at once (each exam encoded once), by pooling."""
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise ValueError(f"embed_stacks: unknown pooling {unknown} (known: {POOLINGS})")
    rows: dict[str, list[np.ndarray]] = {p: [] for p in poolings}
    on: dict[str, list[str]] = {p: [] for p in poolings}
    meta, keys = [], []
    for stack in _stacks(source):
        emb = encode(encoder, stack)
        for p in poolings:
            vector = {"global": emb.pooled, "max": emb.peak, "lesion": emb.lesion}[p]
            rows[p].append(emb.pooled if vector is None else vector)
            on[p].append("global" if vector is None else p)
        meta.append(stack.meta)
        keys.append(stack.key)
    if not keys:
        raise ValueError("embed_stacks: no exams")
    out = {}
    for p in poolings:
        emb = pd.DataFrame(np.stack(rows[p]), index=pd.Index(keys, name="key"),
                           columns=[f"e{i}" for i in range(len(rows[p][0]))])
        emb = emb.join(pd.DataFrame(meta, index=emb.index))
        emb["pooled_on"] = on[p]
        out[p] = emb
    return out


def probe_labels(table: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, binary labels and patient groups of ``task`` in an :func:`embed_stacks` table.

    Returns:
        ``(row mask (n,) bool, y (m,), groups (m,))`` for the exams of the task's time point with a
        known label.
    """
    if task not in PROBE_TASKS:
        raise ValueError(f"unknown probe task {task!r} (known: {sorted(PROBE_TASKS)})")
    timepoint, column, positive, negative = PROBE_TASKS[task]
    for col in ("timepoint", column, "patient"):
        if col not in table.columns:
            raise ValueError(f"probe {task}: the table has no {col!r} column")
    rows = (table["timepoint"] == timepoint) & table[column].isin([positive, negative])
    y = (table.loc[rows, column] == positive).to_numpy().astype(int)
    return rows.to_numpy(), y, table.loc[rows, "patient"].to_numpy()


def linear_probe(features: np.ndarray, y: np.ndarray, groups: np.ndarray, *, task: str = "probe",
                 n_folds: int = 5, C: float = 0.1, n_boot: int = 1000, random_state: int = 0) -> ProbeResult:
    """Patient-grouped cross-validated logistic regression on frozen features.

    Args:
        features: (n, E) embeddings.
        y: (n,) 0/1 labels.
        groups: (n,) patient ids (no patient in both a fold's training and test exams).
        n_folds: folds (reduced to what the rarer class allows, at least 2).
        C: inverse L2 strength of the logistic regression (standardised features).
        n_boot: bootstrap resamples (of patients) for the 95 % interval.
        random_state: seeds the folds and the bootstrap.

    Raises:
        ValueError: fewer than 2 exams per class, or mismatched lengths.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    if not (len(x) == len(y) == len(groups)):
        raise ValueError(f"linear_probe {task}: features {len(x)}, labels {len(y)}, groups {len(groups)} differ")
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"linear_probe {task}: needs at least 2 exams of each class, got {counts.tolist()}")
    folds = int(max(2, min(n_folds, counts.min())))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
    scores = np.full(len(y), np.nan)
    for train, test in cv.split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            scores[test] = y[train].mean()
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        clf.fit(x[train], y[train])
        scores[test] = clf.predict_proba(x[test])[:, 1]
    auc = float(roc_auc_score(y, scores))
    rng = np.random.default_rng(random_state)
    patients = np.unique(groups)
    by_patient = {p: np.flatnonzero(groups == p) for p in patients}
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([by_patient[p] for p in rng.choice(patients, size=len(patients), replace=True)])
        if len(np.unique(y[idx])) == 2:
            boots.append(roc_auc_score(y[idx], scores[idx]))
    low, high = (np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan))
    return ProbeResult(task=task, auc=auc, ci_low=float(low), ci_high=float(high), n_exams=len(y),
                       n_positive=int(y.sum()), n_folds=folds)


def random_encoder(config: EncoderConfig, seed: int = 0) -> FoundationEncoder:
    """A randomly initialised encoder of ``config`` (weights seeded), in eval mode."""
    torch.manual_seed(seed)
    return FoundationEncoder(config).eval()


def _probe_all(table: pd.DataFrame, tasks: Sequence[str], random_state: int, n_boot: int) -> dict[str, ProbeResult]:
    features = table[[c for c in table.columns if c.startswith("e") and c[1:].isdigit()]].to_numpy()
    out = {}
    for task in tasks:
        rows, y, groups = probe_labels(table, task)
        out[task] = linear_probe(features[rows], y, groups, task=task, random_state=random_state, n_boot=n_boot)
    return out


def probe_report(encoder: FoundationEncoder | str | Path, source: pd.DataFrame | Sequence[ExamStack], *,
                 tasks: Sequence[str] = tuple(PROBE_TASKS), random_state: int = 0,
                 n_boot: int = 1000, pooling: str = "global", repeats: int = 1) -> ProbeReport:
    """Linear probes of a pretrained encoder beside a random encoder (same config, seed ``random_state``).

    Args:
        encoder: the encoder or its checkpoint path.
        source: the exams (an index with paths, or stacks) of held-out patients or the whole cohort:
            the probe's own cross-validation keeps patients apart.
        tasks: probe names (:data:`PROBE_TASKS`).
        pooling: the embedding probed (:data:`POOLINGS`).
        repeats: fold splits and random encoders compared (see :func:`probe_reports`).
    """
    return probe_reports(encoder, source, tasks=tasks, random_state=random_state, n_boot=n_boot,
                         poolings=(pooling,), repeats=repeats)[pooling]


def probe_reports(encoder: FoundationEncoder | str | Path, source: pd.DataFrame | Sequence[ExamStack], *,
                  tasks: Sequence[str] = tuple(PROBE_TASKS), random_state: int = 0, n_boot: int = 1000,
                  poolings: Sequence[str] = POOLINGS, repeats: int = 1) -> dict[str, ProbeReport]:
    """:func:`probe_report` for several poolings, each exam encoded once per encoder; by pooling.

    ``repeats``: runs ``i = 0..repeats-1``, each with its fold split (seed ``random_state + i``) for
    the pretrained encoder and a random encoder initialised with seed ``random_state + i`` probed
    with the same split; the report's ``difference`` compares the means (:class:`ProbeReport`).
    """
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    if not isinstance(encoder, FoundationEncoder):
        encoder, _ = load_encoder(encoder)
    stacks = list(_stacks(source))
    trained = embed_stacks_pooled(encoder, stacks, poolings=poolings)
    seeds = [random_state + i for i in range(repeats)]
    pretrained_runs = {p: tuple(_probe_all(trained[p], tasks, s, n_boot) for s in seeds) for p in poolings}
    random_runs: dict[str, list] = {p: [] for p in poolings}
    for s in seeds:
        baseline = embed_stacks_pooled(random_encoder(encoder.config, s), stacks, poolings=poolings)
        for p in poolings:
            random_runs[p].append(_probe_all(baseline[p], tasks, s, n_boot))
    return {p: ProbeReport(pretrained=pretrained_runs[p][0], random=random_runs[p][0],
                           pretrained_runs=pretrained_runs[p] if repeats > 1 else (),
                           random_runs=tuple(random_runs[p]) if repeats > 1 else ()) for p in poolings}


def nearest_neighbours(table: pd.DataFrame, query: str, *, k: int = 5,
                       label_columns: Sequence[str] = ("timepoint", "diagnosis", "idh", "site", "patient"),
                       ) -> list[Neighbour]:
    """Top-k exams by cosine similarity of their embeddings to ``query`` (itself excluded).

    Args:
        table: :func:`embed_stacks` output.
        query: key of the query exam.
    """
    if query not in table.index:
        raise ValueError(f"nearest_neighbours: no exam {query!r} in the table")
    cols = [c for c in table.columns if c.startswith("e") and c[1:].isdigit()]
    x = table[cols].to_numpy(dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    q = x[table.index.get_loc(query)]
    sims = x @ q
    order = [i for i in np.argsort(-sims) if table.index[i] != query][:k]
    labels = [c for c in label_columns if c in table.columns]
    return [Neighbour(key=str(table.index[i]), similarity=float(sims[i]),
                      labels={c: str(table.iloc[i][c]) for c in labels}) for i in order]


# --- figures ---------------------------------------------------------------------------------------

def load_pretrain_model(path: str | Path, map_location: str = "cpu"):
    """The full pretraining model (encoder, decoder, projector) of a ``model.pt``, with its config.

    Returns:
        ``(PretrainModel in eval mode, PretrainConfig)``.
    """
    from ml.foundation.config import PretrainConfig
    from ml.foundation.pretext import PretrainModel

    encoder, config = load_encoder(path, map_location)
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if "heads" not in payload:
        raise ValueError(f"{path}: an encoder-only checkpoint (no pretext heads to reconstruct with)")
    cfg = PretrainConfig.from_dict(config)
    model = PretrainModel(cfg.encoder, cfg.pretext)
    model.load_state_dict({**{f"encoder.{k}": v for k, v in encoder.state_dict().items()}, **payload["heads"]})
    return model.eval(), cfg


def _lesion_crop(stack: ExamStack, size: Sequence[int]) -> tuple[int, int, int]:
    """Start voxel of a crop of ``size`` centred on the tumour (else the PET maximum), inside the volume."""
    mask = stack.masks.get("tumor")
    if mask is not None and mask.any():
        centre = np.argwhere(mask > 0).mean(axis=0)
    else:
        centre = np.array(np.unravel_index(np.argmax(stack.image[2]), stack.image.shape[1:]), dtype=float)
    shape = stack.image.shape[1:]
    return tuple(int(np.clip(round(c - s / 2), 0, max(0, n - s))) for c, s, n in zip(centre, size, shape))


@torch.no_grad()
def reconstruction_png(encoder_ckpt: str | Path, stack: ExamStack, path: str | Path, *, task: str = "inpainting",
                       seed: int = 0) -> Path:
    """PNG of a reconstruction on one exam: rows = channels, columns = input, masked input, output.

    Args:
        encoder_ckpt: a ``model.pt`` of :func:`ml.foundation.train.pretrain` (with its heads).
        stack: the exam (ideally of a held-out patient).
        path: output PNG.
        task: ``"inpainting"`` (``mask_ratio`` of the patches hidden) or ``"crossmodal"`` (PET hidden,
            predicted from MRI; the masked column shows what the encoder saw).
        seed: the mask.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ml.foundation.pretext import MRI_CHANNELS, patchify, random_keep, unpatchify

    if task not in ("inpainting", "crossmodal"):
        raise ValueError(f"reconstruction_png: task must be 'inpainting' or 'crossmodal', got {task!r}")
    model, cfg = load_pretrain_model(encoder_ckpt)
    enc = model.encoder
    size = tuple(min(s, n) for s, n in zip(cfg.encoder.img_size, stack.image.shape[1:]))
    p = cfg.encoder.patch_size
    size = tuple(s // p * p for s in size)
    start = _lesion_crop(stack, size)
    crop = stack.image[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
    x = torch.from_numpy(np.ascontiguousarray(crop))[None].float()
    origin = torch.as_tensor((stack.affine @ np.array([*start, 1.0]))[:3], dtype=torch.float32)[None]
    grid = tuple(s // p for s in size)
    centres = enc.patch_centres_mm(grid, origin)
    g = torch.Generator().manual_seed(seed)
    if task == "inpainting":
        keep, masked = random_keep(1, int(np.prod(grid)), cfg.pretext.mask_ratio, g)
        out = enc(x, origin, keep_idx=keep)
        pred = model.decoder(out.tokens, keep, centres)
        shown = patchify(x, p) * (~masked).float()[:, :, None, None]
        shown = unpatchify(shown, grid, p)
        # the output keeps the visible patches and fills the hidden ones
        recon = unpatchify(torch.where(masked[:, :, None, None], pred, patchify(x, p)), grid, p)
        channels = list(range(len(CHANNELS)))
    else:
        avail = torch.zeros(1, len(CHANNELS), dtype=torch.bool)
        avail[0, list(MRI_CHANNELS)] = True
        out = enc(x, origin, channel_mask=avail)
        pred = model.decoder(out.tokens, None, centres)
        shown = x * avail[:, :, None, None, None].float()
        recon = unpatchify(pred, grid, p)
        channels = list(range(len(CHANNELS)))
    z = size[2] // 2
    fig, axes = plt.subplots(len(channels), 3, figsize=(6.6, 2.1 * len(channels)), squeeze=False)
    titles = ("input", "masked" if task == "inpainting" else "MRI only (PET hidden)", "output")
    for r, c in enumerate(channels):
        ref = x[0, c, :, :, z].numpy()
        lo, hi = float(np.percentile(ref, 1)), float(np.percentile(ref, 99.5))
        for col, img in enumerate((x, shown, recon)):
            ax = axes[r, col]
            ax.imshow(img[0, c, :, :, z].float().numpy().T, origin="lower", cmap="gray" if c < 2 else "hot",
                      vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[col], fontsize=9)
        axes[r, 0].set_ylabel(CHANNELS[c], fontsize=9)
    fig.suptitle(f"{stack.key}: {task}", fontsize=10)
    fig.tight_layout()
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


def training_curve_png(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """PNG of the per-task losses (and their weighted sum) by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("training_curve_png: empty history")
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key in ("loss", "inpainting", "crossmodal", "contrastive"):
        if key in history[0]:
            ax.plot(epochs, [h[key] for h in history], marker="o", ms=3,
                    label="weighted sum" if key == "loss" else key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path
