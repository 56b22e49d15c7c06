#!/usr/bin/env bash
# Check the offline install recipe of docs/TEACHING.md for real, with a subset of the pins:
#   1. `pip download` the subset (and its dependencies) at the pinned versions into a wheelhouse;
#   2. in a network namespace with no network at all (`unshare -n`, needs root), create a fresh
#      venv and `pip install --no-index --find-links wheelhouse` the same subset, then import it.
# FULL=1 does it with every pin (`-r requirements.txt`: 201 wheels, 3.3 GB, torch a CUDA
# build), then installs cvhelpers itself offline and runs unit tests that load the real
# ImageNet weights, still with no network.
#   tools/wheelhouse_check.sh                      # subset: tqdm PyYAML python-dateutil websocket-client
#   PACKAGES="tqdm six" tools/wheelhouse_check.sh
#   FULL=1 tools/wheelhouse_check.sh               # the whole course (~4 min, 3.3 GB + 7 GB venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON3=${PYTHON3:-python3.11}
PACKAGES=${PACKAGES:-"tqdm PyYAML python-dateutil websocket-client"}
WORK=${WORK:-$(mktemp -d /tmp/cvc-wheelhouse.XXXXXX)}
# --isolated: ignore this machine's pip config (its extra indexes and local wheel folders), so
# the install below can only use the wheelhouse.
PIP_OPTS=(--isolated --disable-pip-version-check --cert /etc/ssl/certs/ca-certificates.crt)

: > "$WORK/subset.txt"
if [ "${FULL:-0}" = 1 ]; then PACKAGES=""; cp requirements.txt "$WORK/subset.txt"; fi
for package in $PACKAGES; do
  grep -iE "^${package}==" constraints.txt >> "$WORK/subset.txt" \
    || { echo "no pin for $package in constraints.txt" >&2; exit 1; }
done
echo "== subset of the pins:"; cat "$WORK/subset.txt"

echo "== 1. download (with network)"
# The download may use this machine's pip configuration (its local wheel folders hold torch);
# the install below may not.
DOWNLOAD_OPTS=("${PIP_OPTS[@]}")
[ "${FULL:-0}" = 1 ] && DOWNLOAD_OPTS=(--disable-pip-version-check)
"$PYTHON3" -m pip download "${DOWNLOAD_OPTS[@]}" -q -r "$WORK/subset.txt" -c constraints.txt -d "$WORK/wheelhouse"
echo "$(ls "$WORK/wheelhouse" | wc -l) files, $(du -sh "$WORK/wheelhouse" | cut -f1)"

echo "== 2. install with no network at all"
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
  echo "SKIPPED: the no-network install needs root for 'unshare -n'" >&2; exit 2
fi
unshare -n sh -ec "
  ! getent hosts pypi.org >/dev/null 2>&1 || { echo 'network still reachable' >&2; exit 1; }
  echo 'inside: pypi.org does not resolve (no network)'
  $PYTHON3 -m venv '$WORK/venv'
  '$WORK/venv/bin/pip' install ${PIP_OPTS[*]} -q --no-index --find-links '$WORK/wheelhouse' -r '$WORK/subset.txt' -c constraints.txt
  '$WORK/venv/bin/pip' freeze --isolated | wc -l | sed 's/$/ packages installed/'
  if [ '${FULL:-0}' = 1 ]; then
    '$WORK/venv/bin/pip' install ${PIP_OPTS[*]} -q --no-index --no-deps --no-build-isolation -e .
    '$WORK/venv/bin/python' -m pytest -q -p no:cacheprovider tests/test_pretrained.py tests/test_env.py tests/test_coco.py
  else
    '$WORK/venv/bin/python' -c 'import tqdm, yaml, dateutil, websocket; print(\"imports ok\")'
  fi
"
echo "== wheelhouse install without network: OK ($WORK)"
