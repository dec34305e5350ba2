#!/usr/bin/env bash
# Build the container images the tests use, locally (no public registry is reachable).
# Each image has its own build_<name> function; an image that already exists is left alone.
#
#   haddock-test/busybox:latest   Debian's static busybox, one /bin/<applet> symlink per applet,
#                                 /etc/passwd with root and nobody, PATH=/bin, CMD /bin/sh
#   haddock-test/golang:latest    Debian minbase + golang-go (debootstrap), the golang job type's base
#   haddock-test/python3:latest   Debian minbase + python3, python3-venv, python3-pip, the python3 job
#                                 type's base (each takes minutes; built once per machine)
#
# Environment:
#   DOCKER    docker CLI to use (default: docker)
#   BUSYBOX   static busybox binary to copy (default: /bin/busybox from busybox-static)
#   FORCE=1   rebuild images even when present
#   SUITE     Debian suite for the debootstrap images (default: bookworm)
#   MIRROR    Debian mirror (default: http://deb.debian.org/debian)
#   ONLY      build only these images (space-separated: busybox golang python3)
set -euo pipefail

DOCKER="${DOCKER:-docker}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

log() { printf '[test-images] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

TMPDIRS=()
cleanup() {
    local d
    for d in "${TMPDIRS[@]}"; do
        rm -rf "$d"
    done
}
trap cleanup EXIT

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# True when the image should be built (missing, or FORCE=1).
needs_build() {
    if [[ "${FORCE:-0}" != "1" ]] && image_exists "$1"; then
        log "$1: present"
        return 1
    fi
    return 0
}

new_rootfs() {
    local dir
    dir="$(mktemp -d "${TMPDIR:-/tmp}/haddock-rootfs.XXXXXX")"
    TMPDIRS+=("$dir")
    chmod 0755 "$dir" # mktemp -d makes it 0700, which would become the image's /
    printf '%s\n' "$dir"
}

# tar a rootfs dir into an image. Extra args are `docker import -c` changes.
import_rootfs() {
    local dir="$1" ref="$2"
    shift 2
    local changes=() c
    for c in "$@"; do
        changes+=(-c "$c")
    done
    tar -C "$dir" --numeric-owner --owner=0 --group=0 -c . |
        "$DOCKER" import "${changes[@]}" -m "built by scripts/build-test-images.sh" - "$ref" >/dev/null
}

# Run `true` in a freshly built image; remove the image if that fails, so that the next run
# rebuilds it instead of trusting a broken image.
verify_image() {
    local ref="$1"
    if ! "$DOCKER" run --rm "$ref" true; then
        "$DOCKER" image rm "$ref" >/dev/null 2>&1 || true
        die "$ref: 'docker run --rm $ref true' failed; image removed"
    fi
    log "$ref: built and verified"
}

build_busybox() {
    local ref="haddock-test/busybox:latest"
    needs_build "$ref" || return 0

    [[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing: apt-get install busybox-static"
    # ldd exits non-zero on a static binary; a dynamic busybox would not run in the image.
    if ldd "$BUSYBOX" >/dev/null 2>&1; then
        die "$BUSYBOX is dynamically linked: apt-get install busybox-static"
    fi

    local root
    root="$(new_rootfs)"
    mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    install -m 0755 "$BUSYBOX" "$root/bin/busybox"

    local applet n=0
    while read -r applet; do
        # Skip the applet named busybox: a bin/busybox -> busybox link would replace the
        # binary with a self-referencing symlink ("too many levels of symbolic links").
        [[ -z "$applet" || "$applet" == "busybox" || "$applet" == */* ]] && continue
        [[ -e "$root/bin/$applet" || -L "$root/bin/$applet" ]] && continue
        ln -s busybox "$root/bin/$applet"
        n=$((n + 1))
    done < <("$root/bin/busybox" --list)
    [[ -f "$root/bin/busybox" && ! -L "$root/bin/busybox" ]] || die "bin/busybox is not a regular file"
    [[ -L "$root/bin/sh" ]] || die "busybox --list has no sh applet"

    cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
    cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
    chmod 0644 "$root/etc/passwd" "$root/etc/group"

    log "$ref: importing rootfs (busybox + $n applet links)"
    import_rootfs "$root" "$ref" 'ENV PATH=/bin' 'CMD ["/bin/sh"]'
    verify_image "$ref"
}

# A Debian minbase rootfs with extra packages, imported as an image (the job types' test bases).
build_debootstrap() {
    local ref="$1" include="$2"
    needs_build "$ref" || return 0
    command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] ||
        die "debootstrap missing: apt-get install debootstrap"
    local debootstrap
    debootstrap="$(command -v debootstrap || echo /usr/sbin/debootstrap)"
    local root
    root="$(new_rootfs)"
    log "$ref: debootstrap --variant=minbase --include=$include ${SUITE:-bookworm} (takes minutes)"
    if ! "$debootstrap" --variant=minbase --include="$include" "${SUITE:-bookworm}" "$root" \
        "${MIRROR:-http://deb.debian.org/debian}" >"$root.log" 2>&1; then
        tail -n 30 "$root.log" >&2
        die "$ref: debootstrap failed"
    fi
    rm -f "$root.log"
    # Not needed in an image; keeps it smaller.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    log "$ref: importing rootfs"
    import_rootfs "$root" "$ref" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["/bin/sh"]'
    rm -rf "$root" # hundreds of MB; the EXIT trap does not see dirs made in a $(...) subshell
    verify_image "$ref"
}

build_golang() { build_debootstrap haddock-test/golang:latest golang-go,ca-certificates; }
build_python3() { build_debootstrap haddock-test/python3:latest python3,python3-venv,python3-pip; }

# To add an image: write build_<name> like build_busybox and list it here.
for image in ${ONLY:-busybox golang python3}; do
    "build_$image"
done
