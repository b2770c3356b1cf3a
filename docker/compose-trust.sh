#!/bin/sh
# The one-shot "trust" service of docker/compose.yaml. Makes each key that is missing from the
# volumes (node A's and node B's host keys, node A's client key), then lets node A reach node B:
# A's client key into B's authorized_keys, B's host key into A's known_hosts (read from B's own
# key volume, never from the network), and the ssh alias node-b that jobs.toml names.
set -eu

a_ssh=/keys/node-a/ssh
a_client=/keys/node-a/client
b_ssh=/keys/node-b/ssh
port=${NODE_B_PORT:?NODE_B_PORT is not set}

keygen() {  # keygen FILE COMMENT: an ed25519 key without passphrase, unless FILE exists
    if [ ! -e "$1" ]; then
        ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$1"
        echo "trust: made $2 key $(ssh-keygen -l -f "$1")"
    fi
}

mkdir -p "$a_ssh" "$a_client" "$b_ssh"
chmod 0700 "$a_client"
keygen "$a_ssh/ssh_host_ed25519_key" "node-a host"
keygen "$b_ssh/ssh_host_ed25519_key" "node-b host"
keygen "$a_client/id_ed25519" "node-a client"

client_pub=$(cut -d' ' -f1,2 "$a_client/id_ed25519.pub")
if ! grep -qF "$client_pub" "$b_ssh/authorized_keys" 2>/dev/null; then
    echo "$client_pub node-a" >>"$b_ssh/authorized_keys"
fi
chmod 0644 "$b_ssh/authorized_keys"

# known_hosts names a host on another port than 22 as [host]:port; replace any older line for it.
name="[127.0.0.1]:$port"
{
    grep -vF "$name " "$a_client/known_hosts" 2>/dev/null || true
    echo "$name $(cut -d' ' -f1,2 "$b_ssh/ssh_host_ed25519_key.pub")"
} >"$a_client/known_hosts.new"
mv "$a_client/known_hosts.new" "$a_client/known_hosts"

cat >"$a_client/config" <<CONFIG
Host node-b
    HostName 127.0.0.1
    Port $port
    User root
    IdentityFile ~/.ssh/id_ed25519
    IdentitiesOnly yes
CONFIG
chmod 0600 "$a_client/known_hosts" "$a_client/config"
echo "trust: node A may log in to node B (127.0.0.1:$port) as root; node B's host key is in node A's known_hosts"
