#!/bin/sh
# Copy fmlite model and profile versions from object storage to a local directory with rclone.
#
# The layout is the same on both sides:
#   profiles/<version>/...  profiles/CURRENT  models/fmlite/<version>/...
# Versions are directories named by a positive integer, and other names are skipped. Each missing
# version is copied into <root>/.staging and then renamed into place, so a reader (the leaf,
# TF Serving) never sees a half-copied version. profiles/CURRENT is replaced last, and only when
# the version it names is complete locally.
#
# Usage: sync-artifacts.sh once|loop
#   once  copy what is missing and exit non-zero on any failure (the pod's init container).
#   loop  copy every FMLITE_SYNC_INTERVAL_S seconds, log a failed round and retry (a sidecar).
# Environment:
#   FMLITE_ARTIFACT_REMOTE  rclone path of the artifact root (required), e.g. blob:fmlite
#   FMLITE_ARTIFACT_ROOT    local artifact root (default /var/lib/fmlite)
#   FMLITE_KEEP_VERSIONS    versions kept per kind (default 3), plus the one CURRENT names
#   FMLITE_SYNC_INTERVAL_S  seconds between rounds in loop mode (default 300)
#   FMLITE_MODEL_DIRS       model directories under models/ (default fmlite)
set -u

remote="${FMLITE_ARTIFACT_REMOTE:?set FMLITE_ARTIFACT_REMOTE to the rclone path of the artifact root}"
root="${FMLITE_ARTIFACT_ROOT:-/var/lib/fmlite}"
keep="${FMLITE_KEEP_VERSIONS:-3}"
interval="${FMLITE_SYNC_INTERVAL_S:-300}"
model_dirs="${FMLITE_MODEL_DIRS:-fmlite}"
staging="$root/.staging"

log() {
    echo "sync-artifacts: $*" >&2
}

is_version() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

# copy_versions KIND: copy every version directory of KIND (e.g. models/fmlite) that is missing
# locally. Every command's status is checked by hand because `set -e` does not apply inside a
# function that is called as an `if` condition.
copy_versions() {
    kind="$1"
    mkdir -p "$root/$kind" "$staging" || return 1
    entries=$(rclone lsf --dirs-only "$remote/$kind") || {
        log "listing $remote/$kind failed"
        return 1
    }
    for entry in $entries; do
        version="${entry%/}"
        is_version "$version" || continue
        [ -d "$root/$kind/$version" ] && continue

        partial="$staging/$(echo "$kind" | tr / _)-$version"
        rm -rf "$partial" || return 1
        log "copying $kind/$version"
        rclone copy "$remote/$kind/$version" "$partial" || {
            log "copying $remote/$kind/$version failed"
            return 1
        }
        mv "$partial" "$root/$kind/$version" || return 1
    done
}

# prune_versions KIND PROTECTED: remove all but the newest $keep versions of KIND, never PROTECTED.
prune_versions() {
    kind="$1"
    protected="$2"
    newest_first=$(
        for path in "$root/$kind"/*; do
            name="${path##*/}"
            if is_version "$name"; then
                echo "$name"
            fi
        done | sort -rn
    )
    count=0
    for version in $newest_first; do
        count=$((count + 1))
        [ "$count" -le "$keep" ] && continue
        [ "$version" = "$protected" ] && continue
        log "removing $kind/$version"
        # Renamed first, so that a reader sees the whole version or none of it.
        mv "$root/$kind/$version" "$staging/removed-$version" || return 1
        rm -rf "$staging/removed-$version" || return 1
    done
}

sync_round() {
    mkdir -p "$staging" || return 1
    # CURRENT is read before the versions are listed: the publisher writes a version before it
    # points CURRENT at it, so the listing below includes the version that CURRENT names.
    rclone copyto "$remote/profiles/CURRENT" "$staging/CURRENT" || {
        log "reading $remote/profiles/CURRENT failed"
        return 1
    }
    # Surrounding white space is dropped, as the leaf's reader does, but inner white space is invalid.
    current=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$staging/CURRENT")
    if ! is_version "$current"; then
        log "$remote/profiles/CURRENT must hold a version number, found '$current'"
        return 1
    fi

    copy_versions profiles || return 1
    for model in $model_dirs; do
        copy_versions "models/$model" || return 1
    done

    if [ ! -d "$root/profiles/$current" ]; then
        log "profiles/CURRENT names version $current, which is not in $remote/profiles"
        return 1
    fi
    mv "$staging/CURRENT" "$root/profiles/CURRENT" || return 1

    prune_versions profiles "$current" || return 1
    for model in $model_dirs; do
        prune_versions "models/$model" "" || return 1
    done
    log "in sync, profiles/CURRENT is $current"
}

case "${1:-}" in
    once)
        sync_round
        ;;
    loop)
        # The shell runs the trap only between commands, so sleep runs in the background and
        # `wait` returns as soon as SIGTERM arrives.
        trap 'log "stopping"; exit 0' TERM INT
        while true; do
            sleep "$interval" &
            wait $!
            sync_round || log "round failed, retrying in ${interval}s"
        done
        ;;
    *)
        echo "usage: $0 once|loop" >&2
        exit 2
        ;;
esac
