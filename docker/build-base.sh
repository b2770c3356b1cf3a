#!/bin/sh
# Make a local Debian base image for docker/Dockerfile, with no registry: debootstrap a minimal
# Debian into a directory, then `docker import` it. Needs root, debootstrap and a Docker engine.
#   docker/build-base.sh [IMAGE [SUITE [MIRROR]]]
# defaults: drsync-base:bookworm, bookworm, http://deb.debian.org/debian. An existing IMAGE is kept
# (FORCE=1 makes it again). Then:
#   docker build --network host --build-arg BASE_IMAGE=drsync-base:bookworm -f docker/Dockerfile -t drsync-node .
set -eu

image=${1:-drsync-base:bookworm}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-base: $image exists (FORCE=1 to make it again)"
    exit 0
fi

root=$(mktemp -d "${TMPDIR:-/var/tmp}/drsync-base.XXXXXX")
# --one-file-system: never descend into a /proc or /dev that an interrupted debootstrap left mounted
trap 'rm -rf --one-file-system "$root"' EXIT INT TERM

echo "build-base: debootstrap --variant=minbase $suite $root $mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"

# The suite's updates and security updates too, as Debian's own images have them.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES
# No downloaded packages or apt lists in the image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$image"
echo "build-base: made $image"
