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
