{{/* Names and labels shared by every template (app.kubernetes.io/*). */}}

{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Resource name of one service: <fullname>-<service>. Context: dict root name svc. */}}
{{- define "herald.svcname" -}}
{{- printf "%s-%s" (include "herald.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herald.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: herald
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "herald.labels" -}}
{{ include "herald.chartLabels" .root }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* The image of a service: registry/repositoryPrefix<name>:tag, or the per-service override. */}}
{{- define "herald.image" -}}
{{- $img := .svc.image -}}
{{- $repo := $img.repository | default (printf "%s%s" $img.repositoryPrefix .name) -}}
{{- $tag := $img.tag | default .root.Chart.AppVersion -}}
{{- if $img.registry -}}
{{- printf "%s/%s:%s" $img.registry $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* One service's values: the `default:` block deep-merged under its entry in `services:`. */}}
{{- define "herald.merged" -}}
{{- $merged := mergeOverwrite (deepCopy .root.Values.default) (deepCopy .cfg) -}}
{{- toYaml $merged -}}
{{- end -}}
