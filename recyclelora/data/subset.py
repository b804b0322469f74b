"""Which rows of the training manifests a run uses (``data.subset``): checked without reading them. Imports
no torch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from recyclelora.errors import InvalidInputError
from recyclelora.validation import check_value


def check_subset(manifests: Sequence[str | os.PathLike[str]], subset: Mapping[str, int], where: str) -> None:
    """Check that ``subset`` maps stems of ``manifests`` (each the stem of exactly one) to sizes >= 1.

    ``where`` names the mapping in errors (``data.subset``). Sizes above a manifest's row count are found
    only when it is read (:class:`SegmentationDataset`).
    """
    if not isinstance(subset, Mapping):
        raise TypeError(
            f"{where} must map training manifest stems to sample counts, e.g. {{gta5_train: 12403}} "
            f"({{}} = every manifest whole), got {subset!r}"
        )
    stems = [Path(path).stem for path in manifests]
    unknown = sorted(set(subset) - set(stems))
    if unknown:
        raise InvalidInputError(
            f"{where} names {unknown}, which are not training manifests: their stems are {stems}"
        )
    for stem, size in subset.items():
        same = [str(path) for path in manifests if Path(path).stem == stem]
        if len(same) > 1:
            raise InvalidInputError(
                f"{where}.{stem} is ambiguous: {len(same)} training manifests are named {stem}.parquet "
                f"({same}); give them distinct file names"
            )
        check_value(size, int, f"{where}.{stem}", {"ge": 1})
