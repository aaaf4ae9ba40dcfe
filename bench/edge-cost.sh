#!/usr/bin/env bash
# What the edge's checks (issue 20) cost, per proxied handshake and per 64 B message: the same
# release binary, one route without checks and one with every check a client can pass
# (path normalization is always on; allowedOrigins is left out: loadgen sends no Origin):
# securityOptions IP lists, rateLimitOptions and connection ceilings far above the load,
# message limits far above it, and RS256 authentication with the token in `access_token`.
# User-space instructions counted by callgrind (bench/instructions.sh), one round each.
#
#   bench/edge-cost.sh [WSGATE_BIN]      default target/release/wsgate
#
# Needs valgrind, openssl and python3 (to make the RSA key, its JWKS and a token).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-$(dirname "$BENCH_DIR")/target/release/wsgate}
KEYS=$(mktemp -d /tmp/wsgate-edge-cost.XXXXXX)
trap 'rm -rf "$KEYS"' EXIT

openssl genrsa -out "$KEYS/key.pem" 2048 2>/dev/null
python3 - "$KEYS" <<'PY'
import base64, json, subprocess, sys, time
d = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
text = subprocess.run(["openssl", "rsa", "-in", f"{d}/key.pem", "-noout", "-modulus"],
                      capture_output=True, text=True, check=True).stdout
n = int(text.strip().split("=", 1)[1], 16)
jwk = {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
       "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")), "e": b64((65537).to_bytes(3, "big"))}
json.dump({"keys": [jwk]}, open(f"{d}/jwks.json", "w"))
header = b64(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())
claims = b64(json.dumps({"iss": "https://id.bench", "aud": "bench", "sub": "load",
                         "scope": "chat", "iat": int(time.time()),
                         "exp": int(time.time()) + 3600}).encode())
signing = f"{header}.{claims}".encode()
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/key.pem"], input=signing,
                     capture_output=True, check=True).stdout
open(f"{d}/token", "w").write(f"{header}.{claims}.{b64(sig)}")
PY

CHECKS="  securityOptions:
    ipAllowedList: [127.0.0.0/8]
    ipBlockedList: [10.0.0.0/8]
  rateLimitOptions: {period: 1s, limit: 1000000}
  limits:
    maxConnections: 1000000
    maxConnectionsPerClient: 1000000
    maxMessageBytes: 1048576
    messagesPerSecond: 1000000
  authenticationOptions:
    jwt: {issuer: https://id.bench, audiences: [bench], jwksFile: $KEYS/jwks.json, leeway: 30s}
    allowedScopes: [chat]"
QUERY="?access_token=$(cat "$KEYS/token")"

for load in "handshakes --conns 1" "throughput --conns 10 --inflight 4 --size 64"; do
    echo "== $load: without checks"
    LOAD=$load bash "$BENCH_DIR/instructions.sh" "$BIN" 2>&1 | sed -n 1p
    echo "== $load: with every check"
    LOAD=$load WSGATE_ROUTE_EXTRA=$CHECKS BENCH_URL_QUERY=$QUERY \
        bash "$BENCH_DIR/instructions.sh" "$BIN" 2>&1 | sed -n 1p
done
