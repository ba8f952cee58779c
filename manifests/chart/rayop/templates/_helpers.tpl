{{/* The chart's name, for the app.kubernetes.io/name label. */}}
{{- define "rayop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The base name of every object: the release name when it contains the chart's name, else <release>-<name>. */}}
{{- define "rayop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "rayop.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of the pods, which the Deployment and the Services select on. */}}
{{- define "rayop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rayop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "rayop.labels" -}}
{{ include "rayop.selectorLabels" . }}
app.kubernetes.io/part-of: rayop
{{- end -}}

{{/* Labels of the operator's workload objects (Deployment, pods, Services, monitors). */}}
{{- define "rayop.operatorLabels" -}}
{{ include "rayop.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "rayop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rayop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether leader election is on: asked for, or more than one replica. */}}
{{- define "rayop.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* The rules of the ClusterRole, or of the Role in each watched namespace (see rbac.yaml). */}}
{{- define "rayop.rules" -}}
- apiGroups: ["ray.k8s.io"]
  resources: ["rays"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
- apiGroups: ["ray.k8s.io"]
  resources: ["rays/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.k8s.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["ray.k8s.io"]
  resources: ["rayjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.k8s.io"]
  resources: ["rayjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
