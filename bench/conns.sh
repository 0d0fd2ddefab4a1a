#!/bin/sh
# Memory per idle client connection (HTTP/1.1 keep-alive, HTTP/2, a
# slowloris head, HTTPS keep-alive) and a normal client's latency while they are held:
# baton vs nginx vs HAProxy, one worker each, in front of the same
# backend, in one run.
# Usage: sh bench/conns.sh [connections]   (default 9000)
# BATON=PATH runs that binary instead of building this tree's; ONLY=NAME
# measures one of nginx, haproxy, baton; MODES="h1 https" only those modes.
# HAProxy reserves two descriptors per maxconn at start: with a hard
# open-file limit of 20,000 (this machine kind) it cannot hold 10,000.
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
N=${1:-9000}
bench_setup "nginx haproxy" "nginx haproxy"
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((N + 1000)) ] || { echo "open-file limit $(ulimit -n) is below $N connections" >&2; exit 1; }
LIMIT=$((N * 2 + 1000))
HARD=$(ulimit -Hn)
[ "$LIMIT" -le "$HARD" ] || LIMIT=$HARD
HAPROXY_MAXCONN=$(((HARD - 1000) / 2))

# HAProxy keeps a server connection per idle client connection.
ok_backend $T 18080 $((N + 1000))

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout $T/site.key -out $T/site.crt -subj /CN=bench.test 2>/dev/null
cat $T/site.crt $T/site.key > $T/site.pem

# nginx is given TLS 1.3 (`ssl_protocols`, its default since 1.23.4;
# Debian's 1.22 offers TLS 1.2 only unless told), as baton and HAProxy
# offer it: the HTTPS mode compares connections of one protocol.
# HTTP/1.1 and HTTP/2 on separate ports for nginx 1.22 (its plain-text
# HTTP/2 is prior knowledge only) and HAProxy; baton serves both on one.
cat > $T/nginx.conf <<CONF
worker_processes 1; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
worker_rlimit_nofile $LIMIT;
events { worker_connections $LIMIT; }
http { access_log off;
  upstream be { server 127.0.0.1:18080; keepalive 128; }
  server { listen 127.0.0.1:18081 backlog=4096; listen 127.0.0.1:18091 http2 backlog=4096;
    listen 127.0.0.1:18441 ssl backlog=4096;
    ssl_certificate $T/site.crt; ssl_certificate_key $T/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF


cat > $T/haproxy.cfg <<CONF
global
  nbthread 1
  maxconn $HAPROXY_MAXCONN
defaults
  mode http
  maxconn $HAPROXY_MAXCONN
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:18082 backlog 4096
  bind 127.0.0.1:18092 proto h2 backlog 4096
  bind 127.0.0.1:18442 ssl crt $T/site.pem alpn http/1.1 backlog 4096
  default_backend be
backend be
  server s1 127.0.0.1:18080
CONF


baton_toml 18083 18080 1 "listen_tls = [\"127.0.0.1:18443\"]" 'access = "off"' "[[tls.certificates]]
cert = \"$T/site.crt\"
key = \"$T/site.key\"" > $T/baton.toml

# Each mode is measured on fresh processes: memory a process freed from
# the previous mode would otherwise make the next one look cheaper.
start_proxies() {
    nginx -c $T/nginx.conf & echo $! > $T/nginx.pid
    haproxy -f $T/haproxy.cfg & echo $! > $T/haproxy.pid
    "$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
    sleep 1
}
stop_proxies() {
    kill $(cat $T/nginx.pid $T/haproxy.pid $T/baton.pid) 2>/dev/null || true
    rm -f $T/nginx.pid $T/haproxy.pid $T/baton.pid
    sleep 1
}

pids() { # the process and its children
    echo "$1" $(cat /proc/$1/task/*/children 2>/dev/null) | tr ' ' ',' | sed 's/,$//'
}
echo "$N connections per run; KB of RSS per connection; latency of 200 requests (fresh connections) meanwhile"
printf '%-8s %-10s %6s %8s %8s %8s %9s\n' proxy mode conns KB/conn p50_ms p99_ms ok
for mode in ${MODES:-h1 h2 slowloris https}; do
    start_proxies
    for target in nginx:18081:18091:18441 haproxy:18082:18092:18442 baton:18083:18083:18443; do
        name=${target%%:*}; rest=${target#*:}; h1=${rest%%:*}; rest=${rest#*:}; h2=${rest%%:*}; tls=${rest#*:}
        [ -z "${ONLY:-}" ] || [ "$ONLY" = "$name" ] || continue
        [ $name != haproxy ] || [ "$N" -le "$HAPROXY_MAXCONN" ] || { echo "haproxy: skipped, $N is over the maxconn ($HAPROXY_MAXCONN) the open-file limit allows"; continue; }
        port=$h1; [ $mode = h2 ] && port=$h2; [ $mode = https ] && port=$tls
        printf '%-8s ' $name
        H1PORT=$h1 python3 bench/idle.py $port "$(pids "$(cat $T/$name.pid)")" $mode "$N"
        sleep 2
    done
    stop_proxies
done
