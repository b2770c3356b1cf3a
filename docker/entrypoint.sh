#!/bin/sh
# Entrypoint of the drsync node image (docker/Dockerfile).
#   drsync-node [sshd [SSHD-OPTION...]]   sshd in the foreground (the default), logging to stderr
#   drsync-node COMMAND [ARG...]          any other command, e.g. drsync mirror --every 1h JOBS.toml
# sshd listens on $DRSYNC_SSH_ADDRESS:$DRSYNC_SSH_PORT (default 0.0.0.0:22). Its host key is
# /etc/drsync/ssh/ssh_host_ed25519_key: supply it in that volume, or a new one is made on the
# first start and its fingerprint printed, to be checked and put in the clients' known_hosts.
set -eu

KEYS=/etc/drsync/ssh
HOST_KEY=$KEYS/ssh_host_ed25519_key

prepare_sshd() {
    mkdir -p "$KEYS" /run/sshd
    chmod 0755 /run/sshd
    if [ ! -e "$HOST_KEY" ]; then
        ssh-keygen -q -t ed25519 -N '' -C "drsync-node" -f "$HOST_KEY"
        echo "drsync-node: made a new host key $HOST_KEY" >&2
    fi
    echo "drsync-node: host key $(ssh-keygen -l -f "$HOST_KEY")" >&2
    if [ ! -s "$KEYS/authorized_keys" ]; then
        echo "drsync-node: warning: $KEYS/authorized_keys is missing or empty: nobody can log in" >&2
    fi
}

if [ "$#" -eq 0 ] || [ "$1" = sshd ]; then
    [ "$#" -eq 0 ] || shift
    prepare_sshd
    # sshd insists on an absolute path; -D: foreground (PID 1, so `docker stop` reaches it), -e: log to stderr
    exec /usr/sbin/sshd -D -e -f /etc/drsync/sshd_config \
        -p "${DRSYNC_SSH_PORT:-22}" -o "ListenAddress=${DRSYNC_SSH_ADDRESS:-0.0.0.0}" "$@"
fi
exec "$@"
