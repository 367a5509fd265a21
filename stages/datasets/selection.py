"""Which part of a dataset to read (the options), and what a reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cache_schema import GroundTruthSpec, digest
from stages.errors import ConfigError
from stages.sources import ImageSource

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSelection:
    """The subset of a dataset that a stage-one run reads."""

    split: str = "train"
    """'train' or 'test', by each dataset's own protocol (Human3.6M: subjects)."""
    stride: int | None = None
    """Keep every stride-th item (Human3.6M: frame of the 50 Hz index; CUB, dogs: image in
    list order); None is the dataset's default (Human3.6M 5, the others 1)."""
    actions: str = "all"
    """Human3.6M only: 'all', 'paper' (the KeyDiff3D six) or a comma list of action names."""
    cameras: tuple[str, ...] | None = None
    """Human3.6M only: camera ids to read; None reads all four."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {SPLITS}, got {self.split!r}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"--stride must be >= 1, got {self.stride}")
        if self.cameras is not None and not self.cameras:
            raise ConfigError("--cameras names no camera")

    def stride_or(self, default: int) -> int:
        return default if self.stride is None else self.stride

    def refuse_h36m_options(self, dataset: str) -> None:
        """Datasets without actions or cameras reject those options instead of ignoring them."""
        if self.actions != "all":
            raise ConfigError(f"--actions applies to h36m only, not {dataset}")
        if self.cameras is not None:
            raise ConfigError(f"--cameras applies to h36m only, not {dataset}")


@dataclass(frozen=True, eq=False)
class DatasetSources:
    """A reader's answer: the annotated images, the ground truth they carry, the record."""

    sources: tuple[ImageSource, ...]
    """One per sample, in store order; images that are missing on disk are kept (they
    are recorded as failed samples)."""
    ground_truth: GroundTruthSpec
    """Joint names and which ground-truth arrays the store gets."""
    record: dict[str, Any] = field(default_factory=dict)
    """For the store's source record: dataset, root, split, stride, actions, the frame of
    the 3D ground truth, the background choice, and a fingerprint of what changes the
    bytes (not the root: moving a dataset must not orphan its caches)."""


def dataset_record(dataset: str, content: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The store's source record of a dataset read.

    content: what changes the stored bytes of a sample (background choice, box margin,
    reader conventions): it makes the fingerprint. provenance: what was read (root,
    split, stride, actions...): the sample ids already tell resumes apart, and a moved
    dataset root must not orphan its caches.
    """
    return {
        "dataset": dataset,
        **provenance,
        **content,
        "fingerprint": digest({"dataset": dataset, **content}),
    }
