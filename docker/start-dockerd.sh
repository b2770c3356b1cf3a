#!/bin/sh
# Start a Docker engine (Debian's docker.io) by hand where no init system runs it, unless one
# already answers. It makes no bridge and no iptables rules: every container of this project runs
# with --network host, and a build's RUN steps too (docker build --network host).
#   docker/start-dockerd.sh        (root; dockerd's log: $DOCKERD_LOG, default /var/log/drsync-dockerd.log)
set -eu

log=${DOCKERD_LOG:-/var/log/drsync-dockerd.log}

if docker info >/dev/null 2>&1; then
    echo "start-dockerd: an engine is already running"
    exit 0
fi
command -v dockerd >/dev/null || { echo "start-dockerd: no dockerd (apt-get install docker.io)" >&2; exit 1; }

# A dockerd killed with its session leaves its pid file behind, and a new one refuses to start
# ("pid file found, ensure docker is not running"): remove it when no such process exists.
pidfile=/var/run/docker.pid
if [ -s "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "start-dockerd: removing the stale $pidfile (pid $(cat "$pidfile") is gone)"
    rm -f "$pidfile"
fi

nohup dockerd --iptables=false --ip6tables=false --bridge=none >"$log" 2>&1 </dev/null &
pid=$!
i=0
while ! docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 60 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "start-dockerd: dockerd did not come up; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    sleep 1
done
echo "start-dockerd: dockerd (pid $pid) is up after ${i}s: $(docker info --format '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}')"
