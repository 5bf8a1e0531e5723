#!/bin/sh
# Installs the Debian tools the deployment tests call (systemd-analyze, shellcheck) when they
# are missing and this is a Debian/Ubuntu machine run as root. Elsewhere it only says what is
# missing: those tests then skip locally and fail under CI=true.
set -eu

missing=""
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing:$missing"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
  echo "Not installed:$missing (apt-get install$missing); the deployment tests will skip."
fi
