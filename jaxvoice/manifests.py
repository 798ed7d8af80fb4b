"""Checkpoint file manifests: a damaged step is found by its files, before orbax reads a byte of them.

Beside checkpoints/ (orbax's) the run keeps checkpoint_manifests/STEP.json: the size and sha256 of every
file of each finished step. A file zeroed, cut, overwritten or deleted is named; a step without a manifest
(a kill between a save and its manifest) is left to orbax and the checksums of its arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from jaxvoice import files

MANIFEST_DIR = "checkpoint_manifests"
log = logging.getLogger(__name__)


class Damaged(Exception):
    """A checkpoint step whose files are missing, truncated or do not match their checksums."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def path_of(checkpoints_dir: Path, step: int) -> Path:
    return Path(checkpoints_dir).parent / MANIFEST_DIR / f"{step}.json"


def write(checkpoints_dir: Path, step: int, kept_steps: set[int]) -> None:
    """Size and sha256 of every file of a finished step; and forget the steps orbax no longer keeps."""
    step_dir = Path(checkpoints_dir) / str(step)
    found = {str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)] for p in sorted(step_dir.rglob("*"))
             if p.is_file()}  # fmt: skip
    path = path_of(checkpoints_dir, step)
    path.parent.mkdir(exist_ok=True)
    files.write_atomic(path, json.dumps(found, indent=0))
    for old in path.parent.glob("*.json"):
        if old.stem.isdigit() and int(old.stem) not in kept_steps:
            old.unlink()


def _is_manifest(value: Any) -> bool:
    """{relative path: [size, sha256 hex]}, as `write` writes it."""
    return isinstance(value, dict) and all(
        isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and isinstance(entry[1], str)
        for entry in value.values()
    )


def check(checkpoints_dir: Path, step: int, items: set[str]) -> None:
    """Raise Damaged naming the first file of `step` (of its `items`, and its top-level files) that is
    missing, cut or changed since it was saved. A manifest that does not read is a warning: the step is then
    used unverified (its arrays' checksums still apply)."""
    path = path_of(checkpoints_dir, step)
    try:
        expected = files.read_json(path)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        log.warning(f"checkpoint step {step}: its manifest {path} does not read ({e}); using it unverified")
        return
    if not _is_manifest(expected):
        log.warning(
            f"checkpoint step {step}: its manifest {path} is not a jaxvoice manifest; using it unverified"
        )
        return
    step_dir = Path(checkpoints_dir) / str(step)
    for name, (size, sha) in expected.items():
        if "/" in name and name.split("/")[0] not in items:
            continue
        file = step_dir / name
        if not file.is_file():
            raise Damaged(f"{name} is missing")
        if file.stat().st_size != size:
            raise Damaged(f"{name} has {file.stat().st_size} bytes where {size} were saved")
        if _sha256(file) != sha:
            raise Damaged(f"{name} has changed since it was saved")


def saved_before(checkpoints_dir: Path) -> bool:
    """Whether this run has finished a save before (its manifests say so), whatever is in checkpoints/ now."""
    folder = Path(checkpoints_dir).parent / MANIFEST_DIR
    return folder.is_dir() and any(p.stem.isdigit() for p in folder.glob("*.json"))
