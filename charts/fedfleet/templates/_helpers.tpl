{{- define "fedfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedfleet.labels" -}}
app.kubernetes.io/name: fedfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "fedfleet.selectorLabels" -}}
app.kubernetes.io/name: fedfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fedfleet.gateway.fullname" -}}
{{- printf "%s-gateway" (include "fedfleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedfleet.gateway.labels" -}}
app.kubernetes.io/name: fedfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "fedfleet.gateway.selectorLabels" -}}
app.kubernetes.io/name: fedfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* host:port aggregators publish to: gateway.address, or the Service's DNS name. */}}
{{- define "fedfleet.gateway.address" -}}
{{- if .Values.gateway.address -}}
{{- .Values.gateway.address -}}
{{- else -}}
{{- printf "%s.%s.svc:%d" (include "fedfleet.gateway.fullname" .) .Release.Namespace (int .Values.gateway.grpcPort) -}}
{{- end -}}
{{- end -}}

{{/* The gateway's HTTP port (metrics, artifact descriptions) on the same host as its gRPC address. */}}
{{- define "fedfleet.gateway.httpAddress" -}}
{{- $host := regexReplaceAll ":[0-9]+$" (include "fedfleet.gateway.address" .) "" -}}
{{- printf "http://%s:%d" $host (int .Values.gateway.metricsPort) -}}
{{- end -}}
