#!/usr/bin/env bash
# Fetches CIFAR-10 (binary version), verifies it, and unpacks it as DEST/cifar-10-batches-bin/.
#
#   data/fetch_cifar10.sh [--archive PATH] [--dest DIR]
#
#   --archive PATH  use a local cifar-10-binary.tar.gz instead of downloading it. A local archive
#                   may have been repacked, so its own MD5 is not checked; the six extracted data
#                   files are checked either way.
#   --dest DIR      where cifar-10-batches-bin/ goes (default: the folder of this script, data/).
#
# The files are extracted into a temporary folder inside DEST and moved under their real name
# only after every checksum matched, so DEST/cifar-10-batches-bin/ is never a half data set.
# Running it again when the files are there and verified does nothing.
set -euo pipefail

# CIFAR10_URL overrides the download address (a mirror); the archive MD5 is still checked.
URL="${CIFAR10_URL:-https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz}"
ARCHIVE_MD5="c32a1d4ab5d03f1284b67883e8d87530"
# From https://www.cs.toronto.edu/~kriz/cifar.html (archive) and the official files (each file).
FILE_MD5S="5dd7e06a14cb22eb9f671a540d1b7c25  data_batch_1.bin
5ea93a67294ea407fff1d09f752e9692  data_batch_2.bin
942cd6a4bcdd0dd3c604fbe906cb4421  data_batch_3.bin
ae636b3ba5c66a11e91e8cb52e771fcb  data_batch_4.bin
53f37980c15c3d472c316c40844f3f0d  data_batch_5.bin
803d5f7f4d78ea53de84dbe85f74fb6d  test_batch.bin"

die() { echo "fetch_cifar10: error: $*" >&2; exit 1; }
note() { echo "fetch_cifar10: $*"; }
usage() { sed -n '3,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

archive=""
dest=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --archive) [[ $# -ge 2 ]] || die "--archive needs a path"; archive="$2"; shift 2 ;;
    --archive=*) archive="${1#*=}"; shift ;;
    --dest) [[ $# -ge 2 ]] || die "--dest needs a folder"; dest="$2"; shift 2 ;;
    --dest=*) dest="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

# MD5 of a file, with GNU coreutils (Linux) or BSD md5 (macOS).
md5_of() {
  if command -v md5sum >/dev/null 2>&1; then md5sum "$1" | cut -d' ' -f1
  elif command -v md5 >/dev/null 2>&1; then md5 -q "$1"
  else die "need md5sum or md5 to verify the files"; fi
}

# verify DIR [quiet]: succeeds if DIR holds the six files with the official MD5s.
verify() {
  local dir="$1" quiet="${2:-}" ok=0 sum name actual
  while read -r sum name; do
    if [[ ! -f "$dir/$name" ]]; then
      [[ -n "$quiet" ]] || echo "fetch_cifar10:   $name is missing" >&2
      ok=1
      continue
    fi
    actual="$(md5_of "$dir/$name")"
    if [[ "$actual" != "$sum" ]]; then
      [[ -n "$quiet" ]] || echo "fetch_cifar10:   $name has MD5 $actual, expected $sum" >&2
      ok=1
    fi
  done <<< "$FILE_MD5S"
  return $ok
}

if [[ -z "$dest" ]]; then dest="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; fi
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
target="$dest/cifar-10-batches-bin"

if [[ -d "$target" ]]; then
  if verify "$target" quiet; then
    note "$target already holds the six CIFAR-10 files, all verified; nothing to do"
    exit 0
  fi
  note "$target exists but does not verify:"
  verify "$target" || true
  note "fetching again; it will be replaced once the new files verify"
fi

# Everything temporary lives in one folder next to the target (same file system: the final mv
# is a rename) and is removed however the script ends.
tmp="$(mktemp -d "$dest/.fetch_cifar10.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

if [[ -n "$archive" ]]; then
  [[ -f "$archive" ]] || die "archive $archive not found"
  archive="$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")"
  note "using local archive $archive"
  note "not checking the archive's MD5 (a local archive may be repacked); checking each extracted file instead"
else
  archive="$tmp/cifar-10-binary.tar.gz"
  note "downloading $URL"
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 --progress-bar -o "$archive" "$URL" || die "download failed: $URL"
  elif command -v wget >/dev/null 2>&1; then
    wget -q --show-progress -O "$archive" "$URL" || die "download failed: $URL"
  else
    die "need curl or wget to download $URL (or pass --archive PATH)"
  fi
  actual="$(md5_of "$archive")"
  [[ "$actual" == "$ARCHIVE_MD5" ]] ||
    die "downloaded archive has MD5 $actual, expected $ARCHIVE_MD5 (incomplete or altered download)"
  note "archive MD5 verified"
fi

note "extracting"
tar -xzf "$archive" -C "$tmp" cifar-10-batches-bin ||
  die "could not extract cifar-10-batches-bin/ from $archive (is it cifar-10-binary.tar.gz?)"
verify "$tmp/cifar-10-batches-bin" ||
  die "the extracted files do not match the official checksums; $target left unchanged"
note "all six files verified"

if [[ -e "$target" ]]; then mv "$target" "$tmp/replaced"; fi
mv "$tmp/cifar-10-batches-bin" "$target"
note "CIFAR-10 is ready in $target"
