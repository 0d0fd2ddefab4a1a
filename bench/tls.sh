#!/bin/sh
# HTTPS: baton vs nginx vs HAProxy terminating TLS with the same
# certificate (ECDSA P-256) and worker count, in front of the same nginx
# backend, in one run.
# Usage: sh bench/tls.sh [workers] [seconds] [rounds]
# Measures, per proxy:
#   handshakes/s  new TLS connections, one request each (wrk with
#                 "Connection: close": a full handshake per request)
#   h1 req/s      HTTPS keep-alive, HTTP/1.1 (wrk -t2 -c64)
#   h2 req/s      HTTP/2 over TLS, 64 connections x 10 streams (h2load)
#   us/handshake  the proxy's CPU (user + system, all its processes) per
#                 handshake during the handshakes/s run: what a handshake
#                 costs, apart from how the shared cores were scheduled
#   us/h1, us/h2  the same per request of the h1 and h2 runs, user +
#                 system (the kernel's share: TCP and the socket calls)
#   steal         the share of the machine's CPU the hypervisor gave to
#                 other guests during the proxy's runs (`stolen`)
# and prints baton's ratios to each peer.
# nginx is given `ssl_protocols TLSv1.2 TLSv1.3`, its default since 1.23.4
# (Debian's 1.22 offers no TLS 1.3 unless told): without it, wrk's
# reconnections resume TLS 1.2 sessions, with no key exchange at all,
# against baton's and HAProxy's TLS 1.3, whose resumption keeps its X25519
# exchange (forward secrecy). Before the rounds, each proxy's protocol and
# whether it resumes a session (`openssl s_client -sess_out`, then
# `-sess_in`) are printed.
# Each round measures the three one after another, in an order that turns
# by one each round (`turned`, bench/backend.sh): the handshake runs leave
# tens of thousands of connections in TIME_WAIT. The report gives the
# medians over the rounds.
# PIN=1 (workers below the core count) gives each proxy cores of its own,
# the backend and the load generators the rest, as bench/run.sh's PIN=1.
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
SECS=${2:-10}
ROUNDS=${3:-1}
bench_setup "nginx haproxy wrk h2load" "nginx haproxy wrk nghttp2-client"
ok_backend $T 18080

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout $T/site.key -out $T/site.crt -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 2>/dev/null
cat $T/site.crt $T/site.key > $T/site.pem

cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream be { server 127.0.0.1:18080; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18441 ssl http2 backlog=4096; keepalive_requests 1000000;
    ssl_certificate $T/site.crt; ssl_certificate_key $T/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid

haproxy_cfg $WORKERS 18080 "bind 127.0.0.1:18442 ssl crt $T/site.pem alpn h2,http/1.1" > $T/haproxy.cfg
haproxy -f $T/haproxy.cfg > $T/haproxy.out 2>&1 & echo $! > $T/haproxy.pid

baton_toml 18083 18080 $WORKERS "listen_tls = [\"127.0.0.1:18443\"]" 'access = "off"' "[[tls.certificates]]
cert = \"$T/site.crt\"
key = \"$T/site.key\"" > $T/baton.toml
"$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
sleep 1

TARGETS="nginx:18441 haproxy:18442 baton:18443"
LOADGEN=""
if [ "${PIN:-0}" = 1 ]; then
    LOADGEN=$(pinned $WORKERS $(cat $T/backend.pid) $(cat $T/nginx.pid $T/haproxy.pid $T/baton.pid)) || exit 1
fi
rps() { sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' "$1"; }
wrk_requests() { sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$1"; }
: > $T/results
for n in $TARGETS; do
    $LOADGEN wrk -t2 -c64 -d3s https://127.0.0.1:${n#*:}/ >/dev/null 2>&1   # warm-up
    sleep 0.5 | openssl s_client -connect 127.0.0.1:${n#*:} -sess_out $T/sess > $T/first.out 2>&1 || true
    sleep 0.5 | openssl s_client -connect 127.0.0.1:${n#*:} -sess_in $T/sess > $T/again.out 2>&1 || true
    echo "${n%%:*}: $(grep -m1 -o '^New, [^,]*' $T/first.out), reconnecting: $(grep -m1 -o '^\(New\|Reused\), [^,]*' $T/again.out)"
done
r=1
while [ $r -le $ROUNDS ]; do
    for n in $(turned $r $TARGETS); do
        name=${n%%:*}; port=${n#*:}
        pid=$(cat $T/$name.pid)
        m0=$(cpu_times)
        c0=$(cpu_split $pid)
        $LOADGEN wrk -t2 -c32 -d${SECS}s -H "Connection: close" https://127.0.0.1:$port/ > $T/hs.out 2>&1
        c1=$(cpu_split $pid)
        $LOADGEN wrk -t2 -c64 -d${SECS}s https://127.0.0.1:$port/ > $T/h1.out 2>&1
        c2=$(cpu_split $pid)
        $LOADGEN h2load -c64 -m10 -t2 -D $SECS https://127.0.0.1:$port/ > $T/h2.out 2>&1
        c3=$(cpu_split $pid)
        # name, handshakes/s, h1 req/s, h2 req/s, h2 2xx, handshakes, h1
        # requests, the user and system ticks at the four marks, and the
        # share of the machine's CPU stolen meanwhile.
        echo "$name $(rps $T/hs.out) $(rps $T/h1.out) $(h2load_result $T/h2.out) $(wrk_requests $T/hs.out) $(wrk_requests $T/h1.out) $c0 $c1 $c2 $c3 $(stolen "$m0" "$(cpu_times)")" >> $T/results
    done
    r=$((r + 1))
done
python3 - "$T/results" "$WORKERS" "$SECS" "$ROUNDS" "$(getconf CLK_TCK)" "$([ "${PIN:-0}" = 1 ] && echo ", each proxy on cores of its own (PIN=1)")" <<'PY'
import sys, statistics as st
tck = float(sys.argv[5])
by = {}
for l in open(sys.argv[1]):
    f = l.split()
    hs, h1, h2, ok, n_hs, n_h1 = (float(x) for x in f[1:7])
    t = [float(x) for x in f[7:15]]  # user, system at the four marks
    steal = float(f[15])
    us = lambda a, b, n: ((t[b] - t[a]) / tck * 1e6 / n if n else 0.0)
    by.setdefault(f[0], []).append([
        hs, h1, h2, ok,
        us(0, 2, n_hs) + us(1, 3, n_hs),
        us(2, 4, n_h1), us(3, 5, n_h1),
        us(4, 6, ok), us(5, 7, ok), steal,
    ])
rows = {n: [st.median(v[i] for v in runs) for i in range(10)] for n, runs in by.items()}
print(f"workers={sys.argv[2]} duration={sys.argv[3]}s rounds={sys.argv[4]} (medians), ECDSA P-256, TLS 1.3{sys.argv[6]}")
print(f"{'proxy':<9} {'handshakes/s':>13} {'h1 req/s':>10} {'h2 req/s':>10} {'h2 2xx':>9} {'us/handshake':>13} {'us/h1 usr+sys':>14} {'us/h2 usr+sys':>14} {'steal':>6}")
for n, r in rows.items():
    print(f"{n:<9} {r[0]:>13.0f} {r[1]:>10.0f} {r[2]:>10.0f} {r[3]:>9.0f} {r[4]:>13.0f} {r[5]:>6.1f}+{r[6]:<7.1f} {r[7]:>6.1f}+{r[8]:<7.1f} {r[9]:>5.0f}%")
b = rows["baton"]
for peer in ("nginx", "haproxy"):
    p = rows[peer]
    print(f"baton/{peer}: handshakes {b[0]/p[0]:.2f}x, h1 {b[1]/p[1]:.2f}x, h2 {b[2]/p[2]:.2f}x, "
          f"CPU a handshake {b[4]/p[4]:.2f}x, a h1 request {(b[5]+b[6])/(p[5]+p[6]):.2f}x, a h2 request {(b[7]+b[8])/(p[7]+p[8]):.2f}x")
PY
