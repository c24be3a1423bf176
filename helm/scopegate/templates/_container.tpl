{{/* scopegate's container and the volumes it mounts: the Deployment's (sidecar and standalone modes), and the
patch that adds scopegate to a workload the chart does not own (mode attach: templates/attach-patch.yaml). One
definition, so both run the same container. */}}
{{- define "scopegate.container" -}}
- name: scopegate
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  ports:
    - {name: mcp, containerPort: {{ .Values.port }}, protocol: TCP}
    - {name: metrics, containerPort: {{ .Values.metrics.port }}, protocol: TCP}
  env:
    - {name: SCOPEGATE_UPSTREAM, value: {{ include "scopegate.upstreamUrl" . | quote }}}
    - {name: SCOPEGATE_LISTEN, value: "0.0.0.0:{{ .Values.port }}"}
    - {name: SCOPEGATE_METRICS_LISTEN, value: "0.0.0.0:{{ .Values.metrics.port }}"}
    - {name: SCOPEGATE_POLICY, value: "/etc/scopegate/policy/{{ .Values.policy.key }}"}
    - {name: SCOPEGATE_LOG_LEVEL, value: {{ .Values.logLevel | quote }}}
    - {name: SCOPEGATE_AUDIT_SINK, value: {{ .Values.auditSink | quote }}}
    - {name: SCOPEGATE_WORKERS, value: {{ include "scopegate.workers" . | quote }}}
    {{- if .Values.publicUrl }}
    - {name: SCOPEGATE_PUBLIC_URL, value: {{ .Values.publicUrl | quote }}}
    {{- end }}
    - {name: SCOPEGATE_ALLOWED_HOSTS, value: {{ include "scopegate.allowedHosts" . | quote }}}
    {{- if .Values.defaultWorkspace }}
    - {name: SCOPEGATE_DEFAULT_WORKSPACE, value: {{ .Values.defaultWorkspace | quote }}}
    {{- end }}
    {{- if .Values.toolPrefix }}
    - {name: SCOPEGATE_TOOL_PREFIX, value: {{ .Values.toolPrefix | quote }}}
    {{- end }}
    {{- if .Values.jwt.issuer }}
    - {name: SCOPEGATE_JWT_ISSUER, value: {{ .Values.jwt.issuer | quote }}}
    - {name: SCOPEGATE_JWKS_URL, value: {{ required "jwt.jwksUrl is required with jwt.issuer" .Values.jwt.jwksUrl | quote }}}
    {{- end }}
    {{- if .Values.oauth.existingSecret }}
    {{- $keys := list }}
    {{- range .Values.oauth.keys }}{{ $keys = append $keys (printf "/etc/scopegate/oauth/%s" .) }}{{ end }}
    - {name: SCOPEGATE_OAUTH_SIGNING_KEYS, value: {{ join "," $keys | quote }}}
    {{- if .Values.oauth.oidcClientSecret }}
    - {name: SCOPEGATE_OIDC_CLIENT_SECRET_FILE, value: "/etc/scopegate/oauth/{{ .Values.oauth.oidcClientSecret }}"}
    {{- end }}
    {{- end }}
    {{- if .Values.pats.existingSecret }}
    - {name: SCOPEGATE_PAT_FILE, value: "/etc/scopegate/pats/{{ .Values.pats.key }}"}
    {{- end }}
    {{- if .Values.tls.existingSecret }}
    - {name: SCOPEGATE_TLS_CERT, value: /etc/scopegate/tls/tls.crt}
    - {name: SCOPEGATE_TLS_KEY, value: /etc/scopegate/tls/tls.key}
    {{- if .Values.tls.clientCA }}
    - {name: SCOPEGATE_TLS_CLIENT_CA, value: /etc/scopegate/tls/ca.crt}
    {{- end }}
    {{- end }}
    {{- if .Values.redis.existingSecret }}
    - name: SCOPEGATE_REDIS_URL
      valueFrom: {secretKeyRef: {name: {{ .Values.redis.existingSecret }}, key: {{ .Values.redis.key }}}}
    {{- else }}
    - {name: SCOPEGATE_STATE_DIR, value: /var/lib/scopegate}
    {{- end }}
    {{- if .Values.auditSigningKey.existingSecret }}
    - {name: SCOPEGATE_AUDIT_SIGNING_KEY_FILE, value: "/etc/scopegate/audit-key/{{ .Values.auditSigningKey.key }}"}
    {{- end }}
    {{- range $suffix, $key := .Values.upstreamHeaders.headers }}
    - name: SCOPEGATE_UPSTREAM_HEADER_{{ $suffix }}
      valueFrom: {secretKeyRef: {name: {{ required "upstreamHeaders.existingSecret is required with headers" $.Values.upstreamHeaders.existingSecret }}, key: {{ $key }}}}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  # Probes come from the kubelet on the node, which a NetworkPolicy never blocks: they need no metricsFrom.
  startupProbe:  # up to 60 s to load the policy and bind; liveness starts after
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 2
    failureThreshold: 30
  livenessProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 10
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 5
    failureThreshold: 2
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: policy, mountPath: /etc/scopegate/policy, readOnly: true}
    {{- if .Values.pats.existingSecret }}
    - {name: pats, mountPath: /etc/scopegate/pats, readOnly: true}
    {{- end }}
    {{- if .Values.oauth.existingSecret }}
    - {name: oauth, mountPath: /etc/scopegate/oauth, readOnly: true}
    {{- end }}
    {{- if .Values.tls.existingSecret }}
    - {name: tls, mountPath: /etc/scopegate/tls, readOnly: true}
    {{- end }}
    {{- if .Values.auditSigningKey.existingSecret }}
    - {name: audit-key, mountPath: /etc/scopegate/audit-key, readOnly: true}
    {{- end }}
    {{- if not .Values.redis.existingSecret }}
    - {name: state, mountPath: /var/lib/scopegate}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "scopegate.volumes" -}}
- name: policy
  configMap: {name: {{ include "scopegate.policyConfigMap" . }}}
{{- if .Values.pats.existingSecret }}
- name: pats
  secret: {secretName: {{ .Values.pats.existingSecret }}}
{{- end }}
{{- if .Values.oauth.existingSecret }}
- name: oauth
  secret: {secretName: {{ .Values.oauth.existingSecret }}}
{{- end }}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret: {secretName: {{ .Values.tls.existingSecret }}}
{{- end }}
{{- if .Values.auditSigningKey.existingSecret }}
- name: audit-key  # 0440: readable by the pod's fsGroup, not by others
  secret: {secretName: {{ .Values.auditSigningKey.existingSecret }}, defaultMode: 0440}
{{- end }}
{{- if not .Values.redis.existingSecret }}
- name: state  # the durable credential state of one replica (revocations, grants)
  {{- if .Values.state.existingClaim }}
  persistentVolumeClaim: {claimName: {{ .Values.state.existingClaim }}}
  {{- else }}
  emptyDir: {sizeLimit: 256Mi}
  {{- end }}
{{- end }}
{{- end -}}
