#!/bin/sh
# The whole test suite, from a fresh Debian machine with a Rust toolchain.
# Installs what the tests need, then runs format, lint and every test.
set -eu
cd "$(dirname "$0")/.."

need=""
command -v setpriv >/dev/null 2>&1 || need="$need util-linux"   # a test runs baton as nobody
command -v chromium >/dev/null 2>&1 || need="$need chromium"    # error pages in a real browser
command -v php-fpm8.2 >/dev/null 2>&1 || need="$need php8.2-fpm" # FastCGI upstreams and the supervisor
command -v nginx >/dev/null 2>&1 || need="$need nginx"           # side by side with PHP-FPM
command -v python3 >/dev/null 2>&1 || need="$need python3"       # a supervised Python app
command -v haproxy >/dev/null 2>&1 || need="$need haproxy"       # `baton logs` reads a real HAProxy's log
[ -x /usr/sbin/apache2 ] || need="$need apache2"                  # ... and a real Apache's
command -v pebble >/dev/null 2>&1 || need="$need pebble"         # a real ACME CA for automatic certificates
command -v htpasswd >/dev/null 2>&1 || need="$need apache2-utils"  # basic_auth files as htpasswd writes them
[ -d /usr/share/wordpress ] || need="$need wordpress"           # Debian's WordPress side by side with nginx
command -v mariadbd >/dev/null 2>&1 || need="$need mariadb-server" # ... on its database
command -v openssl >/dev/null 2>&1 || need="$need openssl"       # OCSP responder, s_client against the HTTPS listener
if [ -n "$need" ]; then
    echo "installing:$need"
    apt-get update -qq && apt-get install -y -qq $need
fi
# a real gRPC client and server (grpcio) for HTTP/2 upstreams
python3 -c "import grpc" 2>/dev/null || python3 -m pip install -q grpcio
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo test --doc
