#!/usr/bin/env bash
# Pack everything in OUT into OUT/gpu_results.tgz (the archive a lent GPU machine brings back).
#
#   bash benchmarks/pack_results.sh OUT
#
# The archive is written OUTSIDE the folder it archives, then moved in: a file growing inside the
# folder while tar reads it makes GNU tar stop with "file changed as we read it" (exit 1) and, with
# a temporary archive inside OUT, that happened in about one run in six. The temporary file lives
# beside OUT (same filesystem, so the final `mv` is a rename; $TMPDIR if that folder is not
# writable). An earlier gpu_results.tgz is left out of the new one and replaced at the end.
# If another process still writes into OUT, tar is tried three times; an archive tar reports as
# "some files changed" (exit 1) on the last try is kept, with a warning (everything is in it, a
# file that grew may be cut), since it is the only way the results leave the machine.
# Exit status: 0 the archive is in place; 1 it could not be written (the reason on stderr).
set -u -o pipefail

OUT="${1:?usage: pack_results.sh OUT}"
[[ -d "$OUT" ]] || { echo "pack_results: $OUT is not a folder" >&2; exit 1; }
OUT="$(cd "$OUT" && pwd)"
PARENT="$(dirname "$OUT")"
TARGET="$OUT/gpu_results.tgz"

TMP="$(mktemp "$PARENT/.gpu_results.XXXXXX.tgz" 2>/dev/null || mktemp "${TMPDIR:-/tmp}/gpu_results.XXXXXX.tgz")" \
    || { echo "pack_results: cannot create a temporary file beside $OUT or in ${TMPDIR:-/tmp}" >&2; exit 1; }
trap 'rm -f "$TMP"' EXIT

status=2
for attempt in 1 2 3; do
    tar -czf "$TMP" -C "$OUT" --exclude ./gpu_results.tgz . 2> "$TMP.err"
    status=$?
    [[ $status -eq 0 ]] && break
    if [[ $status -eq 1 && $attempt -lt 3 ]]; then  # a file changed while tar read it: once more
        sleep 1
        continue
    fi
    break
done
if [[ $status -eq 1 ]]; then
    echo "pack_results: WARNING: files in $OUT changed while they were archived ($(tr '\n' ' ' < "$TMP.err")); the archive is kept" >&2
elif [[ $status -ne 0 ]]; then
    echo "pack_results: tar failed (exit $status): $(tr '\n' ' ' < "$TMP.err")" >&2
    rm -f "$TMP.err"
    exit 1
fi
rm -f "$TMP.err"
chmod 644 "$TMP"
mv -f "$TMP" "$TARGET" || { echo "pack_results: could not move the archive to $TARGET" >&2; exit 1; }
trap - EXIT
