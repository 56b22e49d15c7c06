#!/usr/bin/env bash
# Check the offline install recipe of docs/TEACHING.md for real, with a subset of the pins:
#   1. `pip download` the subset (and its dependencies) at the pinned versions into a wheelhouse;
#   2. in a network namespace with no network at all (`unshare -n`, needs root), create a fresh
#      venv and `pip install --no-index --find-links wheelhouse` the same subset, then import it.
# The full wheelhouse (torch is a CUDA build, ~5.5 GB) uses the same two commands with
# `-r requirements.txt`; it is not downloaded here.
#   tools/wheelhouse_check.sh                      # subset: tqdm PyYAML python-dateutil websocket-client
#   PACKAGES="tqdm six" tools/wheelhouse_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON3=${PYTHON3:-python3.11}
PACKAGES=${PACKAGES:-"tqdm PyYAML python-dateutil websocket-client"}
WORK=${WORK:-$(mktemp -d /tmp/cvc-wheelhouse.XXXXXX)}
# --isolated: ignore this machine's pip config (its extra indexes and local wheel folders), so
# the install below can only use the wheelhouse.
PIP_OPTS=(--isolated --disable-pip-version-check --cert /etc/ssl/certs/ca-certificates.crt)

: > "$WORK/subset.txt"
for package in $PACKAGES; do
  grep -iE "^${package}==" constraints.txt >> "$WORK/subset.txt" \
    || { echo "no pin for $package in constraints.txt" >&2; exit 1; }
done
echo "== subset of the pins:"; cat "$WORK/subset.txt"

echo "== 1. download (with network)"
"$PYTHON3" -m pip download "${PIP_OPTS[@]}" -q -r "$WORK/subset.txt" -c constraints.txt -d "$WORK/wheelhouse"
ls "$WORK/wheelhouse"

echo "== 2. install with no network at all"
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
  echo "SKIPPED: the no-network install needs root for 'unshare -n'" >&2; exit 2
fi
unshare -n sh -ec "
  ! getent hosts pypi.org >/dev/null 2>&1 || { echo 'network still reachable' >&2; exit 1; }
  echo 'inside: pypi.org does not resolve (no network)'
  $PYTHON3 -m venv '$WORK/venv'
  '$WORK/venv/bin/pip' install ${PIP_OPTS[*]} -q --no-index --find-links '$WORK/wheelhouse' -r '$WORK/subset.txt' -c constraints.txt
  '$WORK/venv/bin/pip' freeze --isolated
  '$WORK/venv/bin/python' -c 'import tqdm, yaml, dateutil, websocket; print(\"imports ok\")'
"
echo "== wheelhouse install without network: OK ($WORK)"
