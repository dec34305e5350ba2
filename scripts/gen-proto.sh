#!/usr/bin/env bash
# Generate the Python code of the gRPC contract (proto/haddock/v1/*.proto). The one way to make it:
# `make proto` runs this, and scripts/check-proto.sh (run by `make lint`, so by CI) fails when the
# checked-in files differ from what this script generates.
#
# Usage: scripts/gen-proto.sh [OUTDIR]      (default OUTDIR: proto, i.e. beside the .proto files)
#
# For each proto/haddock/v1/X.proto it writes, under OUTDIR/haddock/v1/:
#   X_pb2.py, X_pb2_grpc.py          (grpc_tools.protoc --python_out / --grpc_python_out)
#   X_pb2.pyi, X_pb2_grpc.pyi        (mypy-protobuf: --mypy_out / --mypy_grpc_out)
# plus the empty OUTDIR/haddock/__init__.py, OUTDIR/haddock/py.typed and OUTDIR/haddock/v1/__init__.py.
# The proto package is haddock.v1 and the import root is proto/, so the generated modules import
# each other as `haddock.v1.X_pb2` and cannot collide with our own top-level `executor` package:
#   from haddock.v1 import executor_pb2, executor_pb2_grpc
# (pyproject.toml maps the `haddock` package to proto/haddock).
#
# Stale generated files (of a .proto that no longer exists) are removed from OUTDIR/haddock/v1.
# The output depends only on the .proto files and the versions of grpcio-tools and mypy-protobuf.
#
# Environment:
#   PYTHON   interpreter with grpcio-tools and mypy-protobuf (default: .venv/bin/python, else python3)
set -euo pipefail

die() {
    printf 'gen-proto: ERROR: %s\n' "$*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# OUTDIR is relative to the caller's directory; the default is the repo's proto/.
if [[ $# -ge 1 ]]; then
    mkdir -p "$1" || die "cannot create $1"
    OUTDIR="$(cd "$1" && pwd)"
else
    OUTDIR="$ROOT/proto"
fi
cd "$ROOT"
PROTO_ROOT=proto
PKG_DIR=haddock/v1

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
PY="$(command -v "$PY")" || die "python not found: $PY"
# Absolute (not resolved through symlinks, so a venv's python stays the venv's): protoc runs in proto/.
[[ "$PY" == /* ]] || PY="$ROOT/$PY"
"$PY" -c 'import grpc_tools.protoc, mypy_protobuf' 2>/dev/null ||
    die "$PY lacks grpcio-tools or mypy-protobuf (pip install -e '.[test]')"

# mypy-protobuf's plugins sit beside the interpreter (a venv's bin/), else on PATH.
find_plugin() {
    local name="$1" bindir
    bindir="$(dirname "$PY")"
    if [[ -x "$bindir/$name" ]]; then
        printf '%s\n' "$bindir/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        realpath "$(command -v "$name")"
    else
        die "$name not found beside $PY nor on PATH (pip install mypy-protobuf)"
    fi
}
MYPY_PLUGIN="$(find_plugin protoc-gen-mypy)"
MYPY_GRPC_PLUGIN="$(find_plugin protoc-gen-mypy_grpc)"

# Sorted, relative to the import root, so the protoc invocation (and its output) is deterministic.
mapfile -t PROTOS < <(cd "$PROTO_ROOT" && find "$PKG_DIR" -maxdepth 1 -name '*.proto' -type f | LC_ALL=C sort)
[[ ${#PROTOS[@]} -gt 0 ]] || die "no .proto files under $PROTO_ROOT/$PKG_DIR"

mkdir -p "$OUTDIR/$PKG_DIR"

# Remove previously generated files first, so a deleted .proto leaves nothing behind.
find "$OUTDIR/$PKG_DIR" -maxdepth 1 -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' \
    -o -name '*_pb2_grpc.py' -o -name '*_pb2_grpc.pyi' \) -delete

(
    cd "$PROTO_ROOT"
    "$PY" -m grpc_tools.protoc \
        -I . \
        --plugin=protoc-gen-mypy="$MYPY_PLUGIN" \
        --plugin=protoc-gen-mypy_grpc="$MYPY_GRPC_PLUGIN" \
        --python_out="$OUTDIR" \
        --grpc_python_out="$OUTDIR" \
        --mypy_out=quiet:"$OUTDIR" \
        --mypy_grpc_out=quiet:"$OUTDIR" \
        "${PROTOS[@]}"
)

# The package markers: empty, checked in. py.typed (PEP 561): importers use the stubs.
: >"$OUTDIR/haddock/__init__.py"
: >"$OUTDIR/haddock/py.typed"
: >"$OUTDIR/$PKG_DIR/__init__.py"

printf 'gen-proto: %d proto files -> %s/%s\n' "${#PROTOS[@]}" "$OUTDIR" "$PKG_DIR" >&2
