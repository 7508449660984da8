{{/* Chart name, truncated for DNS labels. */}}
{{- define "taskpulse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name. */}}
{{- define "taskpulse.fullname" -}}
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

{{- define "taskpulse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskpulse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "taskpulse.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "taskpulse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taskpulse
{{- end }}

{{- define "taskpulse.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The database backend, validated: sqlite or postgres. */}}
{{- define "taskpulse.dbType" -}}
{{- $t := .Values.database.type | default "sqlite" }}
{{- if not (has $t (list "sqlite" "postgres")) }}
{{- fail (printf "database.type must be sqlite or postgres, got %q" $t) }}
{{- end }}
{{- $t }}
{{- end }}

{{/* The Secret holding the database URL and auth token: the existing one, or the chart's. */}}
{{- define "taskpulse.secretName" -}}
{{- .Values.existingSecret | default (include "taskpulse.fullname" .) }}
{{- end }}

{{/* Whether the chart renders a Secret ("true" or ""): only when it has something to hold. */}}
{{- define "taskpulse.renderSecret" -}}
{{- if and (not .Values.existingSecret) (or (eq (include "taskpulse.dbType" .) "postgres") .Values.auth.token) -}}
true
{{- end }}
{{- end }}

{{/* The claim of the SQLite volume when persistence is on. */}}
{{- define "taskpulse.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "taskpulse.fullname" .)) }}
{{- end }}

{{/* The job label of taskpulse's scrape targets, for up{job=...}. */}}
{{- define "taskpulse.job" -}}
{{- .Values.alerts.job | default (include "taskpulse.fullname" .) }}
{{- end }}

{{/* Whether the consistency checker runs (config.checkInterval is not 0). */}}
{{- define "taskpulse.checkerEnabled" -}}
{{- $i := "30s" }}
{{- if hasKey .Values.config "checkInterval" }}
{{- $i = toString .Values.config.checkInterval }}
{{- end }}
{{- if not (regexMatch "^0+(\\.0+)?(ms|s|m|h|d)?$" $i) -}}
true
{{- end }}
{{- end }}
