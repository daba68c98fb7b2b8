"""The artifact root that leaves serve from, and the release history kept beside it.

Layout under the root (``var/`` of ``make up``, or the volume of a Helm installation)::

    models/fmlite/<version>/        SavedModel versions in TF Serving's layout; the newest is served
    models/fmlite/.retired-<v>/     versions taken out of service by a rollback (ignored by readers)
    profiles/<version>/             profile snapshots, profiles/CURRENT names the served one
    releases.json                   release history, oldest first
    reports/release-<version>.json  the gate figures of every release attempt

Leaves and TensorFlow Serving serve the newest integer version under ``models/fmlite``, and
read the profile version from ``profiles/CURRENT`` (or from the Redis pointer when they use the
Redis store). So publishing moves a checked version directory into place with one rename, and a
rollback renames the newer model versions to ``.retired-<v>`` (a name that both readers skip)
and points ``CURRENT`` back. A version directory is never changed after it is moved into place.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmlite import snapshot

__all__ = ["MODEL_NAME", "HISTORY_FILE", "RETIRED_PREFIX", "ReleaseStoreError", "ReleaseRecord", "ArtifactRoot"]

logger = logging.getLogger(__name__)

MODEL_NAME = "fmlite"
HISTORY_FILE = "releases.json"
RETIRED_PREFIX = ".retired-"
# Status of a history entry: published by a release, found on disk before the first release,
# or taken out of service by a rollback.
ACTIVE_STATUSES = ("published", "found")


class ReleaseStoreError(RuntimeError):
    """The artifact root does not hold what a release or rollback needs."""


@dataclass(frozen=True)
class ReleaseRecord:
    """One entry of the release history."""

    model_version: int
    profile_version: int
    status: str
    published_at: str
    data: str = ""
    gate: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


class ArtifactRoot:
    """Models, profile snapshots and the release history under one directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.models = self.root / "models" / MODEL_NAME
        self.profiles = self.root / "profiles"
        self.history_path = self.root / HISTORY_FILE
        self.reports = self.root / "reports"

    # ---- what is served -------------------------------------------------------------------

    def model_versions(self) -> list[int]:
        """Return the complete model versions in service, oldest first."""
        if not self.models.is_dir():
            return []
        return sorted(int(p.name) for p in self.models.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())

    def retired_versions(self) -> list[int]:
        if not self.models.is_dir():
            return []
        names = (p.name.removeprefix(RETIRED_PREFIX) for p in self.models.iterdir() if p.name.startswith(RETIRED_PREFIX))
        return sorted(int(name) for name in names if name.isdigit())

    def served(self) -> tuple[int, int] | None:
        """Return (model version, profile version) that the leaves load from these files, or None."""
        models = self.model_versions()
        profile = snapshot.current_version(self.profiles)
        if not models or profile is None:
            return None
        return models[-1], profile

    def num_shards(self) -> int | None:
        """Return the shard count of the served snapshot, or None when nothing is published."""
        profile = snapshot.current_version(self.profiles)
        if profile is None:
            return None
        return snapshot.read_manifest(self.profiles / str(profile)).num_shards

    # ---- history --------------------------------------------------------------------------

    def history(self) -> list[ReleaseRecord]:
        try:
            raw = json.loads(self.history_path.read_text())
        except FileNotFoundError:
            return []
        except json.JSONDecodeError as error:
            raise ReleaseStoreError(f"release history {self.history_path} is not valid JSON: {error}; fix or remove it") from None
        return [ReleaseRecord(**entry) for entry in raw.get("releases", [])]

    def write_history(self, records: list[ReleaseRecord]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(self.history_path, {"releases": [asdict(record) for record in records]})

    def history_with_served(self) -> list[ReleaseRecord]:
        """Return the history, with the served versions recorded as ``found`` when no entry names them."""
        records = self.history()
        served = self.served()
        active = [r for r in records if r.status in ACTIVE_STATUSES]
        if served is not None and (not active or (active[-1].model_version, active[-1].profile_version) != served):
            records.append(ReleaseRecord(model_version=served[0], profile_version=served[1], status="found", published_at=_now()))
        return records

    def next_version(self) -> int:
        """Return a version above every model and profile version ever used here: the UTC time as YYYYMMDDHHMMSS, or more."""
        used = [*self.model_versions(), *self.retired_versions(), *snapshot.list_versions(self.profiles)]
        used += [r.model_version for r in self.history()] + [r.profile_version for r in self.history()]
        candidate = int(dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S"))
        return max([candidate, *(version + 1 for version in used)])

    def write_report(self, version: int, report: dict[str, Any]) -> Path:
        self.reports.mkdir(parents=True, exist_ok=True)
        path = self.reports / f"release-{version}.json"
        _write_json(path, report)
        return path

    # ---- changing what is served ----------------------------------------------------------

    def _move_in(self, source: Path, target: Path) -> None:
        """Move ``source`` to ``target`` so that ``target`` appears whole: one rename, via a hidden copy across file systems."""
        if target.exists():
            raise ReleaseStoreError(f"{target} already exists; a published version never changes")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, target)
            return
        except OSError as error:
            if error.errno != 18:  # EXDEV: source and target are on different file systems
                raise
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
        shutil.copytree(source, staging)
        os.rename(staging, target)
        shutil.rmtree(source, ignore_errors=True)

    def install(self, *, model_dir: Path, snapshot_dir: Path, version: int) -> None:
        """Move a checked candidate's model and snapshot directories into place under ``version``."""
        self._move_in(snapshot_dir, self.profiles / str(version))
        self._move_in(model_dir, self.models / str(version))
        logger.info("installed model and profile snapshot version %d under %s", version, self.root)

    def publish_profiles(self, version: int) -> None:
        snapshot.publish_version(self.profiles, version)

    def retire_models_after(self, version: int) -> list[int]:
        """Take every model version newer than ``version`` out of service; return them."""
        if not (self.models / str(version) / "saved_model.pb").exists():
            raise ReleaseStoreError(f"model version {version} is not in service under {self.models}; it cannot be served again")
        retired = []
        for newer in [v for v in self.model_versions() if v > version]:
            target = self.models / f"{RETIRED_PREFIX}{newer}"
            if target.exists():
                shutil.rmtree(target)
            os.rename(self.models / str(newer), target)
            retired.append(newer)
        logger.info("retired model versions %s under %s; version %d is the newest in service", retired, self.models, version)
        return retired
