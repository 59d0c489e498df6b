#!/usr/bin/env bash
# Installs what speq needs on Debian 12 (as root, or with sudo available), skipping what is there.
# Usage: scripts/setup-debian.sh [--with-fashion-mnist] [--with-mpi]
set -euo pipefail

packages=(g++ cmake make libeigen3-dev libxsimd-dev libomp-dev doctest-dev nlohmann-json3-dev zlib1g-dev)
for arg in "$@"; do
  case "$arg" in
    --with-fashion-mnist) packages+=(dataset-fashion-mnist) ;;
    --with-mpi) packages+=(libopenmpi-dev openmpi-bin) ;;  # data-parallel training (cmake -DSPEQ_MPI=ON)
    *) echo "setup-debian.sh: unknown option '$arg'" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
