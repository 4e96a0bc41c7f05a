#!/usr/bin/env bash
# Installs what tandem needs to build and test on Debian 12 (apt-get); skips what is present.
# The CUDA toolkit is optional: when nvcc is found the CUDA backend is compiled too.
set -euo pipefail
packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libcli11-dev libspdlog-dev
          libfmt-dev libpcre2-dev libcpp-httplib-dev libgtest-dev libgmock-dev libbenchmark-dev
          libboost-dev libucx-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tandem: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
