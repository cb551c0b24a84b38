#!/usr/bin/env bash
# Device install check: the base package (`pip install .`, no extras: numpy, OpenCV, ONNX Runtime,
# Pillow, tqdm) protects a real photo from a bundle, with neither torch nor onnx installed.
#
#   scripts/device_install_check.sh            # uses `python` (the dev install) to export the bundle
#   DEV_PYTHON=.venv/bin/python scripts/device_install_check.sh
#   KEEP=1 scripts/device_install_check.sh     # keep the scratch folder (venv, bundle, outputs)
#
# Steps: the dev install exports the fast preset's bundle; a fresh venv gets the working tree
# installed without extras; torch and onnx must NOT import there; that venv's `edgecloak protect`
# must cloak the sample photo from the bundle (--bundle, then from its own cache without
# --bundle) into a PNG, and an empty cache must give exit 7 and one line saying how to get a bundle.
# (--on-fail keep: this checks the install, not how strong the fast preset is.) Prints what it
# does; exits non-zero on the first failure.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEV_PYTHON="${DEV_PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgecloak-device.XXXXXX")"
if [[ -z "${KEEP:-}" ]]; then trap 'rm -rf "$WORK"' EXIT; fi
STARTED=$SECONDS

say() { printf '[device-install %3ds] %s\n' $((SECONDS - STARTED)) "$*"; }
fail() { printf '[device-install] FAIL: %s\n' "$*" >&2; exit 1; }

say "scratch folder $WORK"
say "dev install ($DEV_PYTHON): exporting the fast preset's bundle"
"$DEV_PYTHON" -m edgecloak.cli.main export --preset fast -o "$WORK/bundle" | sed 's/^/    /'
PHOTO="$("$DEV_PYTHON" -c 'from edgecloak.export.zoo.photos import sample_photo; print(sample_photo())')"
say "sample photo $PHOTO"

# Install a copy of the working tree (tracked files plus new, not ignored ones): building in the
# checkout itself would leave build/ and *.egg-info in it.
mkdir "$WORK/src"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
else
  cp -a "$REPO/." "$WORK/src/"
fi

say "fresh venv: $DEV_PYTHON -m venv $WORK/venv"
"$DEV_PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
say "pip install . (no extras)"
# (pip's notes about index folders this machine lacks are dropped; its errors are not)
"$VPY" -m pip install --quiet "$WORK/src" 2> >(grep -v '^WARNING: Location .* is ignored' >&2) \
  || fail "pip install of the base package failed"

for module in torch onnx; do
  if "$VPY" -c "import $module" >/dev/null 2>&1; then
    fail "'import $module' works in the device venv; the base install must not need or pull it"
  fi
  say "import $module fails in the device venv, as it should"
done

is_png() { "$VPY" -c 'import sys; sys.exit(open(sys.argv[1], "rb").read(8) != b"\x89PNG\r\n\x1a\n")' "$1"; }
PNG_NAME="$(basename "${PHOTO%.*}").png"

say "device: edgecloak protect PHOTO --bundle BUNDLE"
EDGECLOAK_HOME="$WORK/home-empty" "$WORK/venv/bin/edgecloak" protect "$PHOTO" -o "$WORK/out-bundle" \
  --bundle "$WORK/bundle" --on-fail keep | sed 's/^/    /' || fail "protect --bundle exited ${PIPESTATUS[0]}"
is_png "$WORK/out-bundle/$PNG_NAME" || fail "no PNG at $WORK/out-bundle/$PNG_NAME"

say "device: edgecloak protect PHOTO --preset fast (the bundle in the device's cache)"
mkdir -p "$WORK/home/bundles"
cp -a "$WORK/bundle" "$WORK/home/bundles/fast-mobileface-k10"
EDGECLOAK_HOME="$WORK/home" "$WORK/venv/bin/edgecloak" protect "$PHOTO" -o "$WORK/out-cache" --preset fast \
  --on-fail keep | sed 's/^/    /' || fail "protect from the cache exited ${PIPESTATUS[0]}"
is_png "$WORK/out-cache/$PNG_NAME" || fail "no PNG at $WORK/out-cache/$PNG_NAME"

say "device: an empty cache gives exit 7 and one line"
set +e
EDGECLOAK_HOME="$WORK/home-empty" "$WORK/venv/bin/edgecloak" protect "$PHOTO" -o "$WORK/out-none" --preset fast \
  >"$WORK/none.out" 2>"$WORK/none.err"
code=$?
set -e
sed 's/^/    /' "$WORK/none.err"
[[ $code -eq 7 ]] || fail "expected exit 7 without a bundle, got $code"
[[ $(wc -l <"$WORK/none.err") -eq 1 ]] || fail "expected one line on stderr without a bundle"
grep -q "edgecloak export --preset fast" "$WORK/none.err" || fail "the message does not say how to get a bundle"

say "OK: the base install protects from a bundle without torch or onnx ($((SECONDS - STARTED)) s)"
