#!/usr/bin/env bash
# Checks that the Bazel BUILD files parse and every target resolves:
# `bazel query //...` (offline; no external repositories are fetched).
# Skips with a message (exit 0) when bazel is not installed; set
# REQUIRE_BAZEL=1 to make a missing bazel an error instead.
# Install on Debian/Ubuntu: apt-get install -y bazel-bootstrap (Bazel 4.2).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null 2>&1; then
  if [[ "${REQUIRE_BAZEL:-0}" == "1" ]]; then
    echo "check_bazel: bazel not found (apt-get install -y bazel-bootstrap)" >&2
    exit 1
  fi
  echo "check_bazel: bazel not found, skipping (apt-get install -y bazel-bootstrap)"
  exit 0
fi

# A private output base under /tmp: no bazel-* symlinks or cache in the checkout,
# and the server is shut down afterwards so it does not linger in CI.
output_base="${BAZEL_OUTPUT_BASE:-${TMPDIR:-/tmp}/tf_bitpruning_bazel}"
bazel_cmd=(bazel --batch --output_base="$output_base")

targets="$("${bazel_cmd[@]}" query //... --noshow_progress 2>/tmp/check_bazel.$$.log)" || {
  cat /tmp/check_bazel.$$.log >&2
  rm -f /tmp/check_bazel.$$.log
  exit 1
}
rm -f /tmp/check_bazel.$$.log
echo "$targets"

# Every test module has its py_test; the package its py_library (also at //:tf_bitpruning);
# the test suites exist.
missing=0
for f in tests/test_*.py; do
  name="$(basename "$f" .py)"
  if ! grep -qx "//tests:$name" <<<"$targets"; then
    echo "check_bazel: no target //tests:$name for $f" >&2
    missing=1
  fi
done
for target in //tf_bitpruning:tf_bitpruning //:tf_bitpruning //:tests //tests:tests; do
  grep -qx "$target" <<<"$targets" || { echo "check_bazel: no $target" >&2; missing=1; }
done
[[ $missing == 0 ]] || exit 1
echo "check_bazel: OK, $(wc -l <<<"$targets") targets"
