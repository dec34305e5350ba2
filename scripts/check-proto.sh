#!/usr/bin/env bash
# Check the gRPC contract (proto/haddock/v1/*.proto); run by `make lint`, so by CI. Exits 1 on the
# first failing check:
#   1. lint      buf lint (STANDARD rules, buf.yaml)
#   2. format    buf format --diff --exit-code          (fix: buf format -w)
#   3. breaking  buf breaking against proto/released/haddock.binpb, the image of the last released
#                contract (FILE rules; the image is rebuilt only at a release: `make proto-release`)
#   4. stale     the checked-in generated Python code (proto/haddock) equals what
#                scripts/gen-proto.sh generates now                      (fix: make proto)
#
# Environment:
#   BUF      the buf binary (default: .venv/bin/buf, else buf on PATH; pip install buf-bin)
#   PYTHON   passed on to scripts/gen-proto.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[check-proto] %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

if [[ -n "${BUF:-}" ]]; then
    :
elif [[ -x .venv/bin/buf ]]; then
    BUF=.venv/bin/buf
elif command -v buf >/dev/null 2>&1; then
    BUF="$(command -v buf)"
else
    fail "buf not found (.venv/bin/buf or on PATH): pip install -e '.[test]' (buf-bin)"
fi

RELEASED=proto/released/haddock.binpb

log "buf lint ($("$BUF" --version))"
"$BUF" lint || fail "buf lint: fix the .proto files above"

log "buf format"
"$BUF" format --diff --exit-code || fail "buf format: the .proto files are not formatted; run \`$BUF format -w\`"

log "buf breaking against $RELEASED"
[[ -f "$RELEASED" ]] || fail "$RELEASED is missing (the last released contract; \`make proto-release\` makes it)"
"$BUF" breaking proto --against "$RELEASED" ||
    fail "breaking changes against the last released contract ($RELEASED): keep field numbers, names and types, or add a new version package (haddock.v2)"

log "generated code up to date"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash scripts/gen-proto.sh "$tmp/out" 2>"$tmp/gen.log" || {
    cat "$tmp/gen.log" >&2
    fail "scripts/gen-proto.sh failed"
}
# Compare only what the generator owns: the .proto sources are not generated, and proto/haddock's
# executor, storage and node are the symlinks that put our own packages under the haddock namespace.
diffs="$(diff -rq -x '*.proto' -x __pycache__ -x executor -x storage -x node proto/haddock "$tmp/out/haddock" 2>&1)" || {
    log "the generated code in proto/haddock is stale or was edited by hand:"
    sed -e "s|$tmp/out/|<generated>/|g" -e 's/^/    /' <<<"$diffs" >&2
    fail "run \`make proto\` and commit the result"
}
log "OK"
