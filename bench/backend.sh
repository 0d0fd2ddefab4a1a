# Sourced by the benchmarks: the backend every proxy is measured in front
# of, one nginx worker answering "ok" with keep-alive and no log.
# ok_backend DIR PORT [CONNECTIONS]: starts it (4096 connections unless
# told), its pid in DIR/backend.pid.
ok_backend() {
    cat > "$1/backend.conf" <<CONF
worker_processes 1; daemon off; pid $1/backend.nginxpid; error_log $1/backend.err;
worker_rlimit_nofile $((${3:-4096} + 100));
events { worker_connections ${3:-4096}; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2 reuseport backlog=4096; location / { return 200 "ok\n"; } } }
CONF
    nginx -c "$1/backend.conf" & echo $! > "$1/backend.pid"
}

# haproxy_cfg WORKERS BACKEND_PORT FRONTEND_LINES [DEFAULTS_LINES]: an
# HAProxy config as the benchmarks give it (threads as workers, HTTP mode,
# connections to the backend reused), its frontend's binds and rules as
# FRONTEND_LINES say.
haproxy_cfg() {
    cat <<CONF
global
  nbthread $1
  maxconn 8192
defaults
  ${4:-}
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  $3
  default_backend be
backend be
  server s1 127.0.0.1:$2
CONF
}

# baton_toml PORT BACKEND_PORT WORKERS [SERVER_LINES] [LOG_LINES] [SECTIONS]:
# a baton config proxying everything to the backend, errors off, the
# access log as LOG_LINES say (off unless told).
baton_toml() {
    # The default outside the here-document: dash drops the quotes of a
    # default word inside one.
    _log=${5:-'access = "off"'}
    cat <<CONF
[server]
listen = ["127.0.0.1:$1"]
workers = $3
${4:-}
[log]
$_log
errors = "off"
${6:-}
[upstreams.be]
servers = ["127.0.0.1:$2"]
[[routes]]
upstream = "be"
CONF
}

# h2load_result FILE: "REQ/S 2XX" from an h2load output (0 0 when it
# failed).
h2load_result() {
    _rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$1")
    _ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$1")
    echo "${_rps:-0} ${_ok:-0}"
}

# cpu_split PID: clock ticks of user and of system time ("USER SYSTEM")
# PID and its children have used so far: a proxy's own CPU, apart from
# how the shared cores were scheduled. (The fields after the command's
# name: it may hold a space.)
cpu_split() {
    for p in $1 $(cat /proc/$1/task/*/children 2>/dev/null); do cat /proc/$p/stat; done |
        awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u + 0, s + 0 }'
}

# cpu_ticks PID: the two together.
cpu_ticks() {
    cpu_split "$1" | awk '{ print $1 + $2 }'
}

# pinned WORKERS BACKEND_PID PROXY_PID...: each proxy on cores of its
# own (every thread of each process and of its children on CPUs
# 0..WORKERS-1), the backend on the rest; prints the prefix that runs the
# load generator on the rest too. Fails when no core would be left.
pinned() {
    _w=$1; _cores=$(nproc); shift
    [ "$_w" -lt "$_cores" ] || { echo "PIN=1 needs fewer workers than the $_cores cores" >&2; return 1; }
    _rest="$_w-$((_cores - 1))"
    _be=$1; shift
    for _p in "$@" $(cat $(printf '/proc/%s/task/*/children ' "$@") 2>/dev/null); do
        taskset -apc "0-$((_w - 1))" "$_p" >/dev/null
    done
    for _p in $_be $(cat /proc/$_be/task/*/children 2>/dev/null); do
        taskset -apc "$_rest" "$_p" >/dev/null
    done
    echo "taskset -c $_rest"
}

# turned ROUND ITEM...: the items, turned left by ROUND - 1 (round 1 as
# given, round 2 from the second item...): a script that runs each proxy
# once a round puts a different one first each round, so that a sitting's
# drift, or what the one before left behind (TIME_WAIT), does not always
# fall on the same proxy.
turned() {
    _k=$(( ($1 - 1) % ($# - 1) )); shift
    while [ $_k -gt 0 ]; do _f=$1; shift; set -- "$@" "$_f"; _k=$((_k - 1)); done
    echo "$@"
}

# cpu_times: the machine's CPU time so far, as /proc/stat's first line
# gives it ("cpu user nice system idle iowait irq softirq steal ...").
cpu_times() {
    head -1 /proc/stat
}

# stolen BEFORE AFTER: the share of the machine's CPU time between two
# `cpu_times` that the hypervisor gave to other guests (steal), in
# percent. A shared virtual machine can lose a third of its cores for
# seconds at a time, and differently from one round to the next: each
# script prints it, so that a sitting's figures can be weighed.
stolen() {
    echo "$1 $2" | awk '{ t = 0; for (i = 2; i <= 9; i++) t += $(i + 11) - $i; printf "%.0f", t ? ($20 - $9) * 100 / t : 0 }'
}

# refuse_if_busy: exits when the 1-minute load average is above 1.0:
# another job is running, and its figures would be the other job's too.
refuse_if_busy() {
    _load=$(cut -d' ' -f1 /proc/loadavg)
    if [ "$(python3 -c "print(int($_load > 1.0))")" = "1" ]; then
        echo "load average is $_load: another job is running; refusing to benchmark" >&2
        exit 1
    fi
}

# bench_setup "COMMAND..." "PACKAGE...": how every benchmark starts.
# Installs the Debian packages when one of the commands is missing; sets
# BIN, the baton measured ($BATON, else this tree's release build, built
# now), and T, a scratch directory that the exit removes after killing
# every process whose pid is in T/*.pid (KEEP=1 keeps it, to look at the
# configs and logs).
bench_setup() {
    for _c in $1; do
        command -v $_c >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $2; break; }
    done
    BIN=${BATON:-./target/release/baton}
    [ -n "${BATON:-}" ] || cargo build --release -q
    T=$(mktemp -d)
    trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; sleep 0.5; [ -n "${KEEP:-}" ] || rm -rf $T' EXIT
}
