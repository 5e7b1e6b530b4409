"""Certify a test set, one example per TSV line, resumable after a crash or a kill.

Each finished example is appended to <workdir>/certify_sigma<sigma>.tsv at once (flush + fsync), so a kill loses at
most the example in flight. Started again, the loop reads the file, drops a truncated last line (a kill during the
write) and skips every index already there. Example i uses key fold_in(key, i), so a resumed run writes exactly the
lines an uninterrupted run would, apart from the seconds column.

The settings that decide the numbers (sigma, n0, n, alpha, batch_size, every, key) are kept next to the TSV in
certify_sigma<sigma>.json; resuming with different settings is refused rather than mixing two experiments in one file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import jax
import numpy as np
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core.progress import Progress
from robust_jax.smoothing.certify import certify_unchecked
from robust_jax.smoothing.sampling import as_noise_dtype, check_sampling_arguments
from robust_jax.smoothing.report import CertificationResults

COLUMNS = ("index", "label", "prediction", "radius", "correct", "seconds")
HEADER = "\t".join(COLUMNS) + "\n"


@dataclasses.dataclass(frozen=True)
class CertificationRecord:
    index: int
    label: int
    prediction: int
    radius: float
    correct: int
    seconds: float

    def to_line(self) -> str:
        # repr keeps every bit of the radius, so resumed and uninterrupted runs compare exactly.
        fields = (self.index, self.label, self.prediction, repr(self.radius), self.correct, f"{self.seconds:.3f}")
        return "\t".join(str(field) for field in fields) + "\n"

    @classmethod
    def from_line(cls, line: str, where: str) -> "CertificationRecord":
        fields = line.rstrip("\n").split("\t")
        try:
            if len(fields) != len(COLUMNS):
                raise ValueError(f"expected {len(COLUMNS)} tab-separated fields, got {len(fields)}")
            index, label, prediction, radius, correct, seconds = fields
            return cls(int(index), int(label), int(prediction), float(radius), int(correct), float(seconds))
        except ValueError as error:
            raise ValueError(f"{where}: malformed certification line {line!r}: {error}") from None


def certification_path(workdir: str, sigma: float) -> str:
    return os.path.join(workdir, f"certify_sigma{sigma:g}.tsv")


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(directory)


def read_certification_log(path: str, *, repair: bool = False) -> list[CertificationRecord]:
    """The complete records in a certification TSV.

    A last line without its newline is what a kill during a write leaves; it is ignored, and with repair=True the
    file is rewritten without it (atomically) so that appending can continue. Any other malformed line is an error:
    silently dropping finished work would hide a corrupted file.
    """
    with open(path) as file:
        text = file.read()
    complete_length = text.rfind("\n") + 1
    body, truncated_tail = text[:complete_length], text[complete_length:]
    if repair and (truncated_tail or not body):
        _write_atomically(path, body or HEADER)
    lines = body.splitlines(keepends=True)
    if not lines:
        return []
    if lines[0] != HEADER:
        raise ValueError(f"{path}: first line must be the header {HEADER!r}, got {lines[0]!r}")
    return [
        CertificationRecord.from_line(line, f"{path}:{number}") for number, line in enumerate(lines[1:], start=2)
    ]


def load_certification_results(path: str) -> CertificationResults:
    """A certification TSV as arrays for report.py (one entry per certified example, in index order)."""
    records = sorted(read_certification_log(path), key=lambda record: record.index)
    return CertificationResults(
        labels=np.array([record.label for record in records], dtype=np.int64),
        predictions=np.array([record.prediction for record in records], dtype=np.int64),
        radii=np.array([record.radius for record in records], dtype=np.float64),
    )


def _check_or_write_settings(path: str, settings: dict) -> None:
    if not os.path.exists(path):
        _write_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return
    with open(path) as file:
        saved = json.load(file)
    for name, value in settings.items():
        if saved.get(name) != value:
            raise ValueError(
                f"{name}={value!r} differs from {saved.get(name)!r} used for the results already in "
                f"{os.path.dirname(path)}; use another workdir or the same settings"
            )


def certify_dataset(
    apply_fn,
    params,
    images,
    labels,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    key: jax.Array,
    workdir: str,
    every: int = 1,
    max_new_examples: int | None = None,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
    show_progress: bool = True,
) -> str:
    """Certifies images[0], images[every], images[2 * every], ... and returns the TSV path.

    images: array of shape (examples, ...) with values in [0, 1]; labels: integer array of shape (examples,).
    max_new_examples stops after that many newly certified examples (a time-boxed run; rerun to continue).
    """
    args = check_sampling_arguments(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                    num_classes=num_classes)
    sigma = args["sigma"]
    every = checks.check_int("every", every, minimum=1)
    if max_new_examples is not None:
        checks.check_int("max_new_examples", max_new_examples, minimum=0)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    in_memory = isinstance(images, (np.ndarray, jax.Array))
    if in_memory:  # checked once here; a lazily loaded image is checked as it is read
        checks.check_unit_interval_array("images", images)

    os.makedirs(workdir, exist_ok=True)
    path = certification_path(workdir, sigma)
    settings = {
        "sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size, "every": every,
        "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
    }
    _check_or_write_settings(os.path.splitext(path)[0] + ".json", settings)

    if os.path.exists(path):
        done = {record.index for record in read_certification_log(path, repair=True)}
    else:
        _write_atomically(path, HEADER)
        done = set()
    todo = [index for index in range(0, len(labels), every) if index not in done]
    if max_new_examples is not None:
        todo = todo[:max_new_examples]

    progress = Progress(len(todo), f"certify sigma={sigma:g}", enabled=show_progress)
    correct_so_far = 0
    with open(path, "a") as log:
        for count, index in enumerate(todo, start=1):
            started = time.perf_counter()
            image = images[index] if in_memory else checks.check_unit_interval_array(f"images[{index}]",
                                                                                     images[index])
            prediction, radius = certify_unchecked(
                apply_fn, params, as_noise_dtype(np.asarray(image)), key=jax.random.fold_in(key, index), mesh=mesh,
                **args)
            label = int(labels[index])
            record = CertificationRecord(
                index, label, prediction, float(radius), int(prediction == label), time.perf_counter() - started
            )
            log.write(record.to_line())
            log.flush()
            os.fsync(log.fileno())
            correct_so_far += record.correct
            progress.update(1, correct=f"{correct_so_far}/{count}")
    progress.close()
    return path
