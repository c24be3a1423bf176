{{- define "scopegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "scopegate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "scopegate.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "scopegate.policyConfigMap" -}}
{{- if .Values.policy.existingConfigMap -}}{{ .Values.policy.existingConfigMap }}
{{- else -}}{{ include "scopegate.fullname" . }}-policy{{- end -}}
{{- end -}}

{{- define "scopegate.upstreamUrl" -}}
{{- if eq .Values.mode "sidecar" -}}http://127.0.0.1:{{ .Values.upstream.port }}{{ .Values.upstream.path }}
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
