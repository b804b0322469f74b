"""Stage ``analyze``: effective rank and subspace similarity of the trained adapter updates.

Per adapted layer (:func:`recyclelora.analysis.rank_report`): ``erank(B A) = exp(-sum p_i log p_i)``,
``p_i = s_i / sum s``, of the main and sub updates, rank efficiency ``erank / rank``, and the principal angles
between ``B_main`` and ``B_sub`` (Grassmann distance, ``sum cos^2 / min(r1, r2)``). The reports folder holds
the per-layer table (Parquet, CSV), a plot and the summary; the summary (means over layers, ``null`` where a
measure is undefined) is the DVC metric. A frozen or fully tuned backbone has no adapters: ``layers`` is 0.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.stages._common import log_numbers, open_stage, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.analysis import rank_report
from recyclelora.eval.analyze import rank_summary, write_rank_report
from recyclelora.io import atomic_dir
from recyclelora.models.segmentor import Segmentor

SUMMARY_FILE = "rank_summary.json"


def run_analyze(
    params_path: Path, checkpoint: Path, reports: Path, metrics: Path
) -> dict[str, float | int | None]:
    """The ``analyze`` stage: rank reports of the trained (unmerged) checkpoint and their summary."""
    with open_stage("analyze", params_path):
        model = Segmentor.from_checkpoint(checkpoint)
        layers = rank_report(model.backbone.vit)
        with atomic_dir(reports) as tmp:
            if layers:
                write_rank_report(layers, tmp)
                summary = rank_summary(layers)
            else:
                summary = {"layers": 0}
                write_json(tmp / SUMMARY_FILE, summary)
        write_json(metrics, summary)
        log_numbers(summary)
        log_small_artifacts([reports, metrics])
    return summary
