#!/usr/bin/env bash
# End-to-end test of the shipping path on a kind cluster: image, Helm chart, WsRoute
# status, discovery through EndpointSlices, backend scaling and rollout, and uninstall.
#
#   tests/e2e/kind.sh                 # run everything, keep the cluster for the next run
#   tests/e2e/kind.sh --delete-cluster   # ... and delete the cluster at the end
#
# Needs on PATH: docker (or a docker-compatible CLI with BuildKit), kind, kubectl, helm (3 or 4),
# cargo. Idempotent: it reuses the cluster `$WSGATE_E2E_CLUSTER` (default wsgate-e2e) if it
# exists, upgrades the release in place, and always ends by uninstalling and checking that
# nothing is left.
#
# What runs, in order:
#   1. kind cluster (created once), image built and `kind load`ed under a content tag
#   2. CRD applied server-side (Helm never upgrades CRDs), `helm upgrade --install --wait`
#   3. examples/echo-backend.yaml (2 replicas) and examples/wsroute.yaml in namespace
#      wsgate-e2e; waits for the WsRoute's Programmed condition
#   4. port-forward to the gateway Service, then `cargo test --test e2e` against it:
#      echo works, several connections, plain HTTP, both backends used
#   5. scale the backend 2 -> 3: `kubectl get wsr` READY follows, connections reach 3 pods;
#      back to 2
#   6. the kind-only tests in tests/e2e.rs (scale-down and rollout of the backend with live
#      connections), which drive kubectl themselves
#   7. `helm uninstall`, delete the examples and the CRD; fail if anything is left
#
# Environment: WSGATE_E2E_CLUSTER, WSGATE_E2E_PORT (local port for the port-forward,
# default 18080). Logs of the port-forward and the gateway go to target/e2e/.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${WSGATE_E2E_CLUSTER:-wsgate-e2e}
LOCAL_PORT=${WSGATE_E2E_PORT:-18080}
CONTEXT=kind-$CLUSTER
RELEASE=wsgate
GATEWAY_NS=wsgate-system
APP_NS=wsgate-e2e
CRD=wsroutes.wsgate.io
LOGS=target/e2e
DELETE_CLUSTER=0

for arg in "$@"; do
  case $arg in
    --delete-cluster) DELETE_CLUSTER=1 ;;
    -h | --help)
      sed -n '2,30p' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || {
    echo "kind.sh needs $tool on PATH" >&2
    exit 1
  }
done

step() { printf '\n== %s\n' "$*"; }
kc() { kubectl --context "$CONTEXT" "$@"; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every half second until it succeeds.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${seconds}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

ready_endpoints_are() {
  [[ $(kc -n "$APP_NS" get wsroute echo -o jsonpath='{.status.readyEndpoints}') == "$1" ]]
}

no_pods() { [[ -z $(kc -n "$1" get pods -l "$2" -o name) ]]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$LOCAL_PORT") 2>/dev/null; }

PF_PID=
cleanup() {
  local rc=$?
  if [[ -n $PF_PID ]]; then
    kill "$PF_PID" 2>/dev/null || true
    wait "$PF_PID" 2>/dev/null || true
    PF_PID=
  fi
  if ((rc != 0)) && kc get ns "$GATEWAY_NS" >/dev/null 2>&1; then
    kc -n "$GATEWAY_NS" logs -l "app.kubernetes.io/instance=$RELEASE" --tail=200 --prefix \
      >"$LOGS/gateway.log" 2>&1 || true
    echo "gateway logs: $LOGS/gateway.log" >&2
  fi
}
trap cleanup EXIT
mkdir -p "$LOGS"

step "1. kind cluster $CLUSTER and the image"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "reusing cluster $CLUSTER"
else
  kind create cluster --name "$CLUSTER" --wait 180s
fi
docker build --tag wsgate:e2e .
# A tag per image content: a rebuilt image changes the pod spec, so pods are replaced even
# when the cluster is reused.
IMAGE_TAG=e2e-$(docker image inspect --format '{{.Id}}' wsgate:e2e | cut -d: -f2 | cut -c1-12)
IMAGE=wsgate:$IMAGE_TAG
docker tag wsgate:e2e "$IMAGE"
kind load docker-image --name "$CLUSTER" "$IMAGE"

step "2. CRD and helm upgrade --install"
kc apply --server-side --force-conflicts -f charts/wsgate/crds/
kc wait --for=condition=Established "crd/$CRD" --timeout=60s
helm upgrade --install "$RELEASE" charts/wsgate \
  --kube-context "$CONTEXT" --namespace "$GATEWAY_NS" --create-namespace \
  --values tests/e2e/kind-values.yaml --set "image.tag=$IMAGE_TAG" \
  --wait --timeout 180s
kc -n "$GATEWAY_NS" get deploy,pods,svc,pdb,lease

step "3. echo backend and the first WsRoute in $APP_NS"
kc get namespace "$APP_NS" >/dev/null 2>&1 || kc create namespace "$APP_NS"
grep -q 'image: wsgate:0.1.0' examples/echo-backend.yaml
sed "s|image: wsgate:0.1.0|image: $IMAGE|" examples/echo-backend.yaml | kc -n "$APP_NS" apply -f -
kc -n "$APP_NS" scale deployment/echo --replicas=2
kc -n "$APP_NS" apply -f examples/wsroute.yaml
kc -n "$APP_NS" rollout status deployment/echo --timeout=120s
kc -n "$APP_NS" wait --for=condition=Programmed wsroute/echo --timeout=60s
wait_for "WsRoute echo READY=2" 30 ready_endpoints_are 2
kc -n "$APP_NS" get wsroutes

step "4. port-forward to the gateway and the e2e checks"
kc -n "$GATEWAY_NS" port-forward "service/$RELEASE" "$LOCAL_PORT:80" >"$LOGS/port-forward.log" 2>&1 &
PF_PID=$!
wait_for "port-forward on 127.0.0.1:$LOCAL_PORT" 30 port_open
export WSGATE_E2E_MODE=kind
export WSGATE_E2E_URL=http://127.0.0.1:$LOCAL_PORT
export WSGATE_E2E_NAMESPACE=$APP_NS
export WSGATE_E2E_KUBECTL_CONTEXT=$CONTEXT
WSGATE_E2E_EXPECT_BACKENDS=2 cargo test --locked --test e2e

step "5. scaling the backend changes readyEndpoints"
kc -n "$APP_NS" scale deployment/echo --replicas=3
wait_for "WsRoute echo READY=3" 60 ready_endpoints_are 3
kc -n "$APP_NS" get wsroutes
WSGATE_E2E_EXPECT_BACKENDS=3 cargo test --locked --test e2e connections_spread_over_every_backend
kc -n "$APP_NS" scale deployment/echo --replicas=2
wait_for "WsRoute echo READY=2" 60 ready_endpoints_are 2
kc -n "$APP_NS" get wsroutes

step "6. backend scale-down and rollout with live connections"
cargo test --locked --test e2e -- --ignored --test-threads=1

step "7. uninstall leaves nothing behind"
kill "$PF_PID" 2>/dev/null || true
wait "$PF_PID" 2>/dev/null || true
PF_PID=
kc -n "$APP_NS" delete -f examples/wsroute.yaml -f examples/echo-backend.yaml --wait=true
helm uninstall "$RELEASE" --kube-context "$CONTEXT" --namespace "$GATEWAY_NS" --wait --timeout 120s
# Pods go through their grace period (the gateway's drain) after their Deployment is gone.
wait_for "echo pods gone" 60 no_pods "$APP_NS" app.kubernetes.io/name=echo
wait_for "gateway pods gone" 120 no_pods "$GATEWAY_NS" "app.kubernetes.io/instance=$RELEASE"
# Helm keeps CRDs on uninstall on purpose (deleting one deletes every WsRoute): remove it here.
kc delete crd "$CRD" --wait=true
left=$(
  kc get all,serviceaccounts,roles,rolebindings,poddisruptionbudgets,horizontalpodautoscalers,leases,configmaps,secrets \
    --all-namespaces -l "app.kubernetes.io/instance=$RELEASE" -o name
  kc get clusterroles,clusterrolebindings -l "app.kubernetes.io/instance=$RELEASE" -o name
  kc -n "$GATEWAY_NS" get leases,deployments,services,pods -o name
  kc -n "$APP_NS" get deployments,services,pods -o name
  kc get crd "$CRD" -o name --ignore-not-found
)
if [[ -n $left ]]; then
  echo "left behind after uninstall:" >&2
  echo "$left" >&2
  exit 1
fi
echo "nothing left behind"
kc delete namespace "$APP_NS" "$GATEWAY_NS" --wait=true

if ((DELETE_CLUSTER)); then
  kind delete cluster --name "$CLUSTER"
fi
step "kind e2e passed"
