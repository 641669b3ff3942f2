"""Augmentation: candidates with deterministic output ids, and the per-batch work
(class-map masks for the head classes to remove -> inpaint with the normal DiT, re-localising on
the result while a removed class is still called (models/removal.py, ``removal_rounds``) ->
quality score and removal check -> one Parquet shard).

The removal check (``verdict``): a generated row is accepted only when the pretrained
classifier no longer calls any removed class, still calls every tail class it called in the
parent (within ``tail_margin``), and the image is in distribution. Rows that fail are kept with
``accepted = false`` and the reason in ``verdict``; fine-tuning reads accepted rows by default.

Resume and idempotency: an output id is sha256(parent id, decision id, recipe), the recipe
being the checkpoints and every setting that changes pixels. Batches have a fixed membership
(candidates sorted by output id, cut into chunks), each image its own seed, and a batch writes
its quarantine rows first and its samples shard last (atomically). A batch is done when all
its ids are in the output; a rerun skips it, and a killed batch is redone whole with the same
result.

With a label-conditioned generator (``generator.conditioning: labels``, the paper's DfT-Caption
baseline) the same candidates, decisions and checks apply, but no mask is made: each row is
sampled from noise for its candidate's kept finding set (``kept_sets``), written with
``origin = conditional`` and no parent, patient or mask.

The package: ``settings``, ``plan``, ``models``, ``verdict``, ``batch`` (one job each)."""

from tasks.augment.settings import AugmentSettings, OOD_METHODS
from tasks.augment.plan import (
    Candidate, JUDGING, Prepared, batches, build_candidates, check_judging, done_ids, finish_output,
    output_totals, prepare, recipe_id, totals)
from tasks.augment.models import check_ood, ood_scorer
from tasks.augment.verdict import present, verdict
from tasks.augment.batch import kept_sets, run_batch

__all__ = [
    "AugmentSettings", "Candidate", "JUDGING", "OOD_METHODS", "Prepared", "batches", "build_candidates",
    "check_judging", "check_ood", "done_ids", "finish_output", "kept_sets", "ood_scorer", "output_totals",
    "prepare", "present", "recipe_id", "run_batch", "totals", "verdict"
]
