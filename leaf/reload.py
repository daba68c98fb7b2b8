"""Hot reload: a leaf's state, and the background thread that replaces it with newer versions.

A ``LeafState`` is one profile version together with every variant's runner bound to it. The
handler reads ``self.state`` once per request, so one request (one chunk) is scored by one
model version on one profile version, never a mix. Replacing the state is one reference
assignment.

The ``Reloader`` polls the model base directories (TensorFlow Serving's ``<base>/<version>/``
layout) and the profile source's published version. A new version is loaded in the background,
warmed up with its recorded requests, checked (``leaf.checks``) and bound to the profiles it
will serve with; only then is the new state installed. A version that fails is logged, counted
and remembered, and the old state keeps serving:

- a model that fails to load or to replay its warm-up requests is never tried again;
- a model that does not fit the profiles (widths, meta columns) is tried again with the next
  profile version;
- a profile version that fails to load, or that no model of a variant fits, is tried again
  when a model version changes.

At start the newest model version that passes is served, falling back to older ones.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from fmlite.snapshot import SnapshotError
from leaf.checks import CheckError, check_compatible, check_scores, replay_warmup
from leaf.metrics import LeafMetrics
from leaf.model_files import ModelLoadError, model_versions
from leaf.profiles import ProfileCache, ProfileSource
from leaf.runners import CosineRunner, ModelRunner, RunnerOptions, build_runner
from leaf.store import StoreUnavailable

__all__ = ["LeafState", "ReloadSettings", "Reloader"]

logger = logging.getLogger(__name__)

_COSINE = "cosine"


@dataclass(frozen=True)
class LeafState:
    """Profiles of one version and the runners bound to them: everything one request is scored with."""

    profiles: ProfileCache
    # Variant -> runner bound to ``profiles``; scoring uses only these.
    runners: Mapping[str, ModelRunner]
    # Variant -> the runner as loaded, before ``bind``; the next profile version is bound from it.
    models: Mapping[str, ModelRunner]
    created: float = field(default_factory=time.time)

    @property
    def profile_version(self) -> str:
        return self.profiles.version

    def model_versions(self) -> dict[str, str]:
        return {name: runner.version for name, runner in self.runners.items()}


@dataclass(frozen=True)
class ReloadSettings:
    """Model directories, runner kind and check settings of the reloader."""

    # Variant -> model base directory.
    model_bases: Mapping[str, str]
    runner_kind: str = "numpy"
    runner_options: RunnerOptions = RunnerOptions()
    serve_cosine: bool = True
    # Chunk sizes scored for the cold-start user before a state is installed.
    warmup_sizes: tuple[int, ...] = (1, 100, 400)
    # Largest difference from the recorded warm-up scores that a model version may show.
    tolerance: float = 1e-5
    # Seconds between polls; 0 turns the background thread off.
    interval_s: float = 5.0


def _version_number(version: str) -> int:
    return int(version) if version.isdigit() else -1


class Reloader:
    """Builds the first state and, in a daemon thread, newer ones."""

    def __init__(
        self,
        settings: ReloadSettings,
        *,
        source: ProfileSource,
        metrics: LeafMetrics,
        install: Callable[[LeafState], None],
        current: Callable[[], LeafState | None],
        fallback: ProfileSource | None = None,
    ):
        self.settings = settings
        self.source = source
        self.fallback = fallback
        self.metrics = metrics
        self._install = install
        self._current = current
        self._failed_models: set[tuple[str, int]] = set()
        # (variant, model version, profile version) pairs that failed the compatibility check.
        self._rejected_pairs: set[tuple[str, int, str]] = set()
        # Profile version -> the model versions it was rejected with.
        self._rejected_profiles: dict[str, tuple[tuple[str, str], ...]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0

    # ---- loading and checking -------------------------------------------------------------

    def _load_model(self, variant: str, version: int) -> ModelRunner:
        """Load and warm up one model version; raise ``ModelLoadError`` (or ``CheckError``) on failure."""
        base = self.settings.model_bases[variant]
        try:
            runner = build_runner(self.settings.runner_kind, variant, base, version=version, options=self.settings.runner_options)
        except (ModelLoadError, OSError, ValueError) as error:
            raise ModelLoadError(f"model {variant} version {version} under {base}: {error}") from error
        replayed = replay_warmup(runner, f"{base}/{version}", tolerance=self.settings.tolerance)
        logger.info("model %s version %d (%s runner) replayed %d warm-up requests", variant, version, runner.kind, replayed)
        return runner

    def _bind_checked(self, model: ModelRunner, profiles: ProfileCache) -> ModelRunner:
        if hasattr(model, "input_widths"):
            check_compatible(model, profiles)
        bound = model.bind(profiles)
        check_scores(bound, profiles, self.settings.warmup_sizes)
        return bound

    def _load_profiles(self, version: int | None, previous: ProfileCache | None, source: ProfileSource | None = None) -> ProfileCache:
        source = source or self.source
        if version is None:
            raise SnapshotError(f"no profile version is published in the {source.kind} profile source")
        return source.load(version, previous=previous)

    # ---- first state ----------------------------------------------------------------------

    def initial_state(self) -> LeafState:
        """Load the published profiles and the newest passing version of every model; raise when impossible."""
        try:
            profiles = self._load_profiles(self.source.published_version(), None)
        except StoreUnavailable as error:
            if self.fallback is None:
                raise
            logger.error("profile store unavailable at start (%s); loading the file snapshot instead", error)
            profiles = self._load_profiles(self.fallback.published_version(), None, self.fallback)
        runners: dict[str, ModelRunner] = {}
        models: dict[str, ModelRunner] = {}
        for variant, base in self.settings.model_bases.items():
            errors = []
            for version in reversed(model_versions(base)):
                try:
                    model = self._load_model(variant, version)
                except ModelLoadError as error:
                    self._failed_models.add((variant, version))
                    self.metrics.reloads.labels(tier=self.metrics.tier, kind="model", outcome="rejected").inc()
                    logger.error("model %s version %d rejected at start: %s", variant, version, error)
                    errors.append(f"{version}: {error}")
                    continue
                try:
                    runners[variant] = self._bind_checked(model, profiles)
                except CheckError as error:
                    self._rejected_pairs.add((variant, version, profiles.version))
                    self.metrics.reloads.labels(tier=self.metrics.tier, kind="model", outcome="rejected").inc()
                    logger.error("model %s version %d does not fit profiles %s at start: %s", variant, version, profiles.version, error)
                    errors.append(f"{version}: {error}")
                    continue
                models[variant] = model
                break
            if variant not in runners:
                detail = "; ".join(errors) if errors else f"no version under {base}"
                raise ModelLoadError(f"no usable version of model {variant}: {detail}")
        if self.settings.serve_cosine and _COSINE not in runners:
            cosine = CosineRunner()
            runners[_COSINE] = self._bind_checked(cosine, profiles)
            models[_COSINE] = cosine
        if not runners:
            raise ValueError("the leaf serves no variant: give at least one --model NAME=DIR or keep the cosine baseline")
        return LeafState(profiles=profiles, runners=runners, models=models)

    # ---- later states ---------------------------------------------------------------------

    def _combine(self, profiles: ProfileCache, current: LeafState, new_models: Mapping[str, ModelRunner]) -> LeafState | None:
        """Return a state of ``profiles`` with each variant's new model, else its current one; None if a variant fits none."""
        runners: dict[str, ModelRunner] = {}
        models: dict[str, ModelRunner] = {}
        for variant, current_model in current.models.items():
            choices = ([new_models[variant]] if variant in new_models else []) + [current_model]
            for model in choices:
                if model is current_model and profiles is current.profiles:
                    runners[variant], models[variant] = current.runners[variant], current_model
                    break
                try:
                    runners[variant] = self._bind_checked(model, profiles)
                    models[variant] = model
                    break
                except CheckError as error:
                    logger.error("model %s version %s rejected with profiles %s: %s", variant, model.version, profiles.version, error)
                    if model is not current_model:
                        self._rejected_pairs.add((variant, _version_number(model.version), profiles.version))
                        self.metrics.reloads.labels(tier=self.metrics.tier, kind="model", outcome="rejected").inc()
            else:
                return None
        return LeafState(profiles=profiles, runners=runners, models=models)

    def _published(self) -> int | None:
        try:
            return self.source.published_version()
        except StoreUnavailable:
            return None  # the source logged the outage; the current state keeps serving
        except SnapshotError as error:
            logger.error("reading the published profile version failed: %s", error)
            return None

    def poll_once(self, current: LeafState) -> LeafState | None:
        """Return a newer checked state, or None when nothing new passed."""
        self.polls += 1
        started = time.perf_counter()
        model_key = tuple(sorted(current.model_versions().items()))

        candidate_profiles: ProfileCache | None = None
        published = self._published()
        if published is not None and str(published) != current.profile_version and self._rejected_profiles.get(str(published)) != model_key:
            try:
                candidate_profiles = self._load_profiles(published, current.profiles)
            except StoreUnavailable as error:
                # An outage is not the version's fault: the next poll tries it again.
                logger.error("loading profile version %s failed, still serving %s: %s", published, current.profile_version, error)
            except (SnapshotError, ValueError) as error:
                logger.error("profile version %s rejected, still serving %s: %s", published, current.profile_version, error)
                self._rejected_profiles[str(published)] = model_key
                self.metrics.reloads.labels(tier=self.metrics.tier, kind="profiles", outcome="rejected").inc()
        target_profile_version = candidate_profiles.version if candidate_profiles is not None else current.profile_version

        new_models: dict[str, ModelRunner] = {}
        for variant, base in self.settings.model_bases.items():
            loaded = current.models.get(variant)
            usable = [v for v in model_versions(base) if (variant, v) not in self._failed_models]
            if not usable or loaded is None or str(usable[-1]) == loaded.version:
                continue
            newest = usable[-1]
            if (variant, newest, target_profile_version) in self._rejected_pairs:
                continue
            try:
                new_models[variant] = self._load_model(variant, newest)
            except ModelLoadError as error:
                self._failed_models.add((variant, newest))
                self.metrics.reloads.labels(tier=self.metrics.tier, kind="model", outcome="rejected").inc()
                logger.error("model %s version %d rejected, still serving version %s: %s", variant, newest, loaded.version, error)

        if candidate_profiles is None and not new_models:
            return None
        state = None
        if candidate_profiles is not None:
            state = self._combine(candidate_profiles, current, new_models)
            if state is None:
                logger.error("profile version %s rejected: no model version of some variant fits it; still serving %s", published, current.profile_version)
                self._rejected_profiles[candidate_profiles.version] = model_key
                self.metrics.reloads.labels(tier=self.metrics.tier, kind="profiles", outcome="rejected").inc()
        if state is None and new_models:
            state = self._combine(current.profiles, current, new_models)
        if state is None or (state.profile_version == current.profile_version and state.model_versions() == current.model_versions()):
            return None

        seconds = time.perf_counter() - started
        if state.profile_version != current.profile_version:
            self.metrics.reloads.labels(tier=self.metrics.tier, kind="profiles", outcome="switched").inc()
            self.metrics.reload_seconds.labels(tier=self.metrics.tier, kind="profiles").observe(seconds)
        for variant, version in state.model_versions().items():
            if current.model_versions().get(variant) != version:
                self.metrics.reloads.labels(tier=self.metrics.tier, kind="model", outcome="switched").inc()
                self.metrics.reload_seconds.labels(tier=self.metrics.tier, kind="model").observe(seconds)
        logger.info(
            "switching to profiles %s and models %s (was %s and %s), prepared in %.2f s",
            state.profile_version, state.model_versions(), current.profile_version, current.model_versions(), seconds,
        )
        return state

    # ---- background thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            current = self._current()
            if current is None:
                continue
            try:
                state = self.poll_once(current)
            except Exception:  # the thread must outlive any single failed reload
                logger.exception("reload poll failed; still serving profiles %s", current.profile_version)
                continue
            if state is not None:
                self._install(state)

    def start(self) -> None:
        """Start polling in a daemon thread (no thread when ``interval_s`` is 0)."""
        if self.settings.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="leaf-reloader", daemon=True)
        self._thread.start()

    def poll_soon(self) -> None:
        """Ask the thread to poll now instead of at the end of its interval."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                logger.error("reload thread still busy %.0f s after stop; leaving it as a daemon", timeout_s)
            self._thread = None
