{{/* The chart name, overridable. */}}
{{- define "brook-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of the operator's objects; the chart name alone when the release has it. */}}
{{- define "brook-operator.fullname" -}}
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

{{- define "brook-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that pick the operator's pods: they never change across upgrades. */}}
{{- define "brook-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "brook-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "brook-operator.labels" -}}
helm.sh/chart: {{ include "brook-operator.chart" . }}
{{ include "brook-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: brook
app.kubernetes.io/component: operator
{{- end }}

{{- define "brook-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "brook-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "brook-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "brook-operator.brokerImage" -}}
{{- printf "%s:%s" .Values.brokerImage.repository (default .Chart.AppVersion .Values.brokerImage.tag) }}
{{- end }}

{{/*
What the operator does in a namespace it handles: the brook.dev resources (Kopf patches
them for finalizers and its progress annotations, and writes their status; "finalizers"
lets it set blockOwnerDeletion on the objects it owns), the objects it makes for each
Broker (and the StatefulSet's status), the pods and volume claims it reads (and the broker
pods it restarts one at a time), and the Events it reports.
*/}}
{{- define "brook-operator.namespacedRules" -}}
- apiGroups: [brook.dev]
  resources: [brokers, topics, consumergroups]
  verbs: [get, list, watch, patch, update]
- apiGroups: [brook.dev]
  resources: [brokers/status, topics/status, consumergroups/status]
  verbs: [get, patch, update]
- apiGroups: [brook.dev]
  resources: [brokers/finalizers, topics/finalizers, consumergroups/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets/status]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments/scale, statefulsets/scale]
  verbs: [get, update, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [pods, persistentvolumeclaims]
  verbs: [get, list, watch]
# Each Broker's cluster secret: made once, adopted if it exists; never listed or watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* The ClusterRole a rack-aware Broker's ServiceAccount is bound to. */}}
{{- define "brook-operator.rackClusterRole" -}}
{{ include "brook-operator.fullname" . }}-broker-rack
{{- end }}
