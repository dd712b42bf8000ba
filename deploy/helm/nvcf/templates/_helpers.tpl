{{/* Names, labels and the URLs computed from the release. */}}

{{/* The chart's name, or nameOverride. */}}
{{- define "nvcf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the platform's Deployment, Service, ConfigMap, Role. */}}
{{- define "nvcf.fullname" -}}
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

{{- define "nvcf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The platform pod's selector. */}}
{{- define "nvcf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nvcf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: platform
{{- end }}

{{/* Labels of every object, without a component. */}}
{{- define "nvcf.commonLabels" -}}
helm.sh/chart: {{ include "nvcf.chart" . }}
app.kubernetes.io/name: {{ include "nvcf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: nvcf
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the platform's objects. */}}
{{- define "nvcf.labels" -}}
{{ include "nvcf.commonLabels" . }}
app.kubernetes.io/component: platform
{{- end }}

{{- define "nvcf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nvcf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the API keys: an existing one, or the chart's. */}}
{{- define "nvcf.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "nvcf.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{/* An image reference from {repository, tag}; an empty tag is the appVersion. */}}
{{- define "nvcf.image" -}}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The platform's Service as pods of any namespace reach it. */}}
{{- define "nvcf.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "nvcf.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The nvcf.Worker gRPC address of the worker pods (NVCF_FQDN_GRPC). */}}
{{- define "nvcf.grpcUrl" -}}
{{- printf "http://%s:%d" (include "nvcf.serviceHost" .) (int .Values.service.grpcPort) }}
{{- end }}

{{/* The attach base URL of the worker pods (--public-url). */}}
{{- define "nvcf.publicUrl" -}}
{{- if .Values.platform.publicUrl }}
{{- .Values.platform.publicUrl }}
{{- else }}
{{- printf "http://%s:%d" (include "nvcf.serviceHost" .) (int .Values.service.httpPort) }}
{{- end }}
{{- end }}

{{/* The attach base URL of the worker pods when the lean attach listener runs (--public-attach-url). */}}
{{- define "nvcf.publicAttachUrl" -}}
{{- if .Values.platform.publicAttachUrl }}
{{- .Values.platform.publicAttachUrl }}
{{- else }}
{{- printf "http://%s:%d" (include "nvcf.serviceHost" .) (int .Values.service.attachPort) }}
{{- end }}
{{- end }}

{{/*
NATS of the platform and the worker pods: the subchart's client Service, named as that chart
names it (nats.fullname, or its service.name), or externalNats.url.
*/}}
{{- define "nvcf.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $nats := .Values.nats }}
{{- $name := "" }}
{{- if $nats.fullnameOverride }}
{{- $name = $nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $chart := default "nats" $nats.nameOverride }}
{{- if contains $chart .Release.Name }}
{{- $name = .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name $chart | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- with $nats.service }}{{ with .name }}{{ $name = . }}{{ end }}{{ end }}
{{- $namespace := default .Release.Namespace $nats.namespaceOverride }}
{{- $port := 4222 }}
{{- with $nats.config }}{{ with .nats }}{{ with .port }}{{ $port = . }}{{ end }}{{ end }}{{ end }}
{{- printf "nats://%s.%s.svc.%s:%d" $name $namespace .Values.clusterDomain (int $port) }}
{{- else }}
{{- required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url }}
{{- end }}
{{- end }}
