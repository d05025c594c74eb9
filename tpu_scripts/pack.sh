#!/usr/bin/env bash
# Pack this checkout into a .tar.gz for the TPU workers: the files git tracks plus new files git
# does not ignore, as they are in the working tree (uncommitted edits included). Whatever
# .gitignore excludes (.venv, data/, runs/, build outputs) stays behind.
set -euo pipefail
PROG=pack.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/pack.sh ARCHIVE.tar.gz

Packs the checkout this script belongs to (git-tracked files and untracked files that
.gitignore does not exclude, as they are on disk) into ARCHIVE.tar.gz.
`tpu.sh install` runs it before copying the archive to every TPU worker.
USAGE
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") usage_error "missing ARCHIVE" ;;
  -*) usage_error "unknown flag '$1'" ;;
esac
[[ $# -eq 1 ]] || usage_error "expected one ARCHIVE, got $#"
archive="$1"
[[ "$archive" == /* ]] || archive="$PWD/$archive"
[[ -d "$(dirname "$archive")" ]] || usage_error "folder not found: $(dirname "$archive")"

root="$(cd "$here/.." && pwd)"
git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
  die "$root is not a git checkout, so which files to ship is unknown"

# Tracked files deleted from the working tree are left out (tar would fail on them).
(
  cd "$root"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
      if [[ -e "$file" || -L "$file" ]]; then printf '%s\0' "$file"; fi
    done |
    COPYFILE_DISABLE=1 tar --null -czf "$archive" -T -  # (no ._ files from macOS tar)
)
echo "$PROG: $archive ($(($(wc -c <"$archive") / 1024)) KiB)"
