{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name. */}}
{{- define "wsgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wsgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wsgate.labels" -}}
helm.sh/chart: {{ include "wsgate.chart" . }}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "wsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wsgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wsgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Seconds from the pod's deletion to the end of the drain, plus the margin. */}}
{{- define "wsgate.terminationGracePeriodSeconds" -}}
{{- $g := .Values.gateway }}
{{- add .Values.lifecycle.preStopSleepSeconds $g.shutdownDelaySeconds $g.drainTimeoutSeconds $g.terminationGraceMarginSeconds }}
{{- end }}

{{/*
The rules the controller needs where WsRoutes live (cluster-wide or per watched namespace),
exactly the calls docs/kubernetes.md lists. No `get`: everything is read from watch caches.
Secrets: certificates named by routes (`tls.secretName`, `backendTls.caSecretName`) and the
default certificate when it lives in a watched namespace.
Events: kube-runtime's Recorder creates events.k8s.io/v1 Events in the WsRoute's namespace
and patches the same Event when it repeats (its series count), hence create + patch.
*/}}
{{- define "wsgate.routeRules" -}}
- apiGroups: ["wsgate.io"]
  resources: ["wsroutes"]
  verbs: ["list", "watch"]
- apiGroups: ["wsgate.io"]
  resources: ["wsroutes/status"]
  verbs: ["patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
The Lease the status writer elects its leader with (`wsgate-status`, the name the controller
uses). The chart creates it so that `helm uninstall` removes it too.
*/}}
{{- define "wsgate.leaseName" -}}
wsgate-status
{{- end }}

{{/*
`tls.defaultCertSecret` as the `NS/NAME` that --default-cert-secret takes: a bare `NAME` is
in the release namespace. Empty when unset.
*/}}
{{- define "wsgate.defaultCertSecret" -}}
{{- with .Values.tls.defaultCertSecret }}
{{- if contains "/" . }}
{{- . }}
{{- else }}
{{- printf "%s/%s" $.Release.Namespace . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the sticky-session key Secret is mounted; the file inside is always `key`. */}}
{{- define "wsgate.stickyKeyDir" -}}
/etc/wsgate/sticky
{{- end }}

{{/*
Refusals of value combinations values.schema.json cannot express. Included by the
Deployment, so `helm template` and `helm install` both stop before creating anything.
*/}}
{{- define "wsgate.validate" -}}
{{- if and .Values.tls.defaultCertSecret (not .Values.tls.enabled) }}
{{- fail "tls.defaultCertSecret needs tls.enabled=true (the certificate is served on the TLS listener)" }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- if has (int .Values.tls.port) (list (int .Values.gateway.port) (int .Values.gateway.adminPort)) }}
{{- fail (printf "tls.port %d is already gateway.port or gateway.adminPort" (int .Values.tls.port)) }}
{{- end }}
{{- if eq (int .Values.tls.servicePort) (int .Values.service.port) }}
{{- fail (printf "tls.servicePort and service.port are both %d: the Service needs one port for http and another for https" (int .Values.service.port)) }}
{{- end }}
{{- if and .Values.tls.nodePort .Values.service.nodePort (eq (int .Values.tls.nodePort) (int .Values.service.nodePort)) }}
{{- fail (printf "tls.nodePort and service.nodePort are both %d" (int .Values.tls.nodePort)) }}
{{- end }}
{{- end }}
{{- end }}
