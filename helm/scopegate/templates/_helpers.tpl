{{- define "scopegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "scopegate.fullname" -}}
{{- if .Values.fullnameOverride -}}{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{- $name := include "scopegate.name" . -}}
{{- if contains $name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- end -}}

{{- define "scopegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "scopegate.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* The host names clients reach scopegate by: the Service's in-cluster names, loopback, publicUrl's host, the
Ingress's and HTTPRoute's hosts, and allowedHosts. One comma-separated line (SCOPEGATE_ALLOWED_HOSTS). */}}
{{- define "scopegate.allowedHosts" -}}
{{- $full := include "scopegate.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list $full (printf "%s.%s" $full $ns) (printf "%s.%s.svc" $full $ns) (printf "%s.%s.svc.cluster.local" $full $ns) "localhost" "127.0.0.1" -}}
{{- $hosts = concat $hosts (include "scopegate.publicHosts" . | fromJsonArray) .Values.allowedHosts -}}
{{- uniq $hosts | join "," -}}
{{- end -}}

{{/* publicUrl's host, and the Ingress's and HTTPRoute's host names when they are on (JSON list). */}}
{{- define "scopegate.publicHosts" -}}
{{- $hosts := list -}}
{{- if .Values.publicUrl -}}{{- $hosts = append $hosts (urlParse .Values.publicUrl).host -}}{{- end -}}
{{- if .Values.ingress.enabled -}}{{- $hosts = concat $hosts (include "scopegate.ingressHosts" . | fromJsonArray) -}}{{- end -}}
{{- if .Values.httpRoute.enabled -}}{{- $hosts = concat $hosts (include "scopegate.routeHosts" . | fromJsonArray) -}}{{- end -}}
{{- uniq $hosts | toJson -}}
{{- end -}}

{{/* The Ingress's hosts: ingress.hosts, else publicUrl's host name (JSON list). */}}
{{- define "scopegate.ingressHosts" -}}
{{- if .Values.ingress.hosts -}}{{ toJson .Values.ingress.hosts }}
{{- else if .Values.publicUrl -}}{{ list (urlParse .Values.publicUrl).hostname | toJson }}
{{- else -}}{{ fail "ingress.enabled needs ingress.hosts or publicUrl: the host names the Ingress routes (and scopegate allows)" }}{{- end -}}
{{- end -}}

{{- define "scopegate.routeHosts" -}}
{{- if .Values.httpRoute.hostnames -}}{{ toJson .Values.httpRoute.hostnames }}
{{- else if .Values.publicUrl -}}{{ list (urlParse .Values.publicUrl).hostname | toJson }}
{{- else -}}{{ fail "httpRoute.enabled needs httpRoute.hostnames or publicUrl: the host names the route matches (and scopegate allows)" }}{{- end -}}
{{- end -}}

{{- define "scopegate.labels" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "scopegate.selector" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The pods scopegate runs in: its own Deployment's, or (mode attach) the workload's it is patched into. */}}
{{- define "scopegate.podSelector" -}}
{{- if eq .Values.mode "attach" -}}{{ toYaml .Values.attach.selector }}
{{- else -}}{{ include "scopegate.selector" . }}{{- end -}}
{{- end -}}

{{- define "scopegate.policyConfigMap" -}}
{{- if .Values.policy.existingConfigMap -}}{{ .Values.policy.existingConfigMap }}
{{- else -}}{{ include "scopegate.fullname" . }}-policy{{- end -}}
{{- end -}}

{{- define "scopegate.upstreamUrl" -}}
{{- if has .Values.mode (list "sidecar" "attach") -}}http://127.0.0.1:{{ .Values.upstream.port }}{{ .Values.upstream.path }}
{{- else -}}{{ required "upstream.url is required in standalone mode" .Values.upstream.url }}{{- end -}}
{{- end -}}

{{/* Serving processes per pod: `workers` when set, else the CPU limit's whole CPUs rounded up (several workers
need Redis: without it, or without a CPU limit, 1). */}}
{{- define "scopegate.workers" -}}
{{- $limits := .Values.resources.limits | default dict -}}
{{- if .Values.workers -}}
{{- .Values.workers -}}
{{- else if and .Values.redis.existingSecret $limits.cpu -}}
{{- $cpu := toString $limits.cpu -}}
{{- $milli := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $milli = trimSuffix "m" $cpu | atoi -}}
{{- else -}}
{{- $milli = mulf (float64 $cpu) 1000 | int -}}
{{- end -}}
{{- max 1 (div (add $milli 999) 1000) -}}
{{- else -}}
1
{{- end -}}
{{- end -}}

{{/* The path scopegate serves MCP on: the upstream URL's. */}}
{{- define "scopegate.mcpPath" -}}
{{- (urlParse (include "scopegate.upstreamUrl" .)).path | default "/" -}}
{{- end -}}
