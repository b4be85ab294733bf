{{/* Names and labels shared by every template. */}}

{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart's. */}}
{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "ferry.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's objects are "<fullname>-operator"; 63 characters leave room for the suffix. */}}
{{- define "ferry.operatorName" -}}
{{- printf "%s-operator" (include "ferry.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* The Secret holding the key of the consumers' control tokens; the operator makes it. */}}
{{- define "ferry.controlKeySecret" -}}
{{- printf "%s-control-key" (include "ferry.operatorName" .) }}
{{- end }}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{ include "ferry.selectorLabels" . }}
{{- end }}

{{/* Stable across upgrades: a Deployment's selector is immutable. */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferry.operatorImage" -}}
{{- $image := .Values.operator.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "ferry.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) }}
{{- end }}

{{/* The operator's identity annotations: IRSA and Workload Identity, then the user's own. */}}
{{- define "ferry.serviceAccountAnnotations" -}}
{{- $annotations := dict }}
{{- with .Values.cloud.aws.roleArn }}
{{- $_ := set $annotations "eks.amazonaws.com/role-arn" . }}
{{- end }}
{{- with .Values.cloud.gcp.serviceAccount }}
{{- $_ := set $annotations "iam.gke.io/gcp-service-account" . }}
{{- end }}
{{- $annotations = merge (deepCopy .Values.serviceAccount.annotations) $annotations }}
{{- if $annotations }}
{{- toYaml $annotations }}
{{- end }}
{{- end }}

{{/* What the operator may do to QueueConsumers and their children, wherever it watches. */}}
{{- define "ferry.consumerRules" -}}
# The QueueConsumers it reconciles: patch adds and removes its finalizer.
- apiGroups: ["ferry.dev"]
  resources: ["queueconsumers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ferry.dev"]
  resources: ["queueconsumers/status"]
  verbs: ["get", "patch"]
# Children carry blockOwnerDeletion, which the API server allows only with this.
- apiGroups: ["ferry.dev"]
  resources: ["queueconsumers/finalizers"]
  verbs: ["update"]
# Worker Deployments, written by server-side apply; the garbage collector deletes them.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The autoscaler sets replicas through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch", "update"]
# Worker ServiceAccounts; delete only the one a consumer no longer uses.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch", "delete"]
# Each consumer's sidecar Secret (control token, starting rate share), written by server-side
# apply; never read back, so no get, list or watch: the operator cannot read Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# Worker pods: read for the autoscaler, annotated with a deletion cost before a scale-down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Events on QueueConsumers (kubectl describe qc).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Fails the render with a clear message for combinations the schema cannot express. */}}
{{- define "ferry.validate" -}}
{{- if and .Values.operator.leaderElection (lt (int .Values.operator.replicas) 1) }}
{{- fail "operator.replicas must be at least 1" }}
{{- end }}
{{- if and .Values.operator.podDisruptionBudget.enabled (gt (int .Values.operator.replicas) 1) (ge (int .Values.operator.podDisruptionBudget.minAvailable) (int .Values.operator.replicas)) }}
{{- fail "operator.podDisruptionBudget.minAvailable must be below operator.replicas, or no node with an operator pod could ever be drained" }}
{{- end }}
{{- if and (not .Values.operator.leaderElection) (gt (int .Values.operator.replicas) 1) }}
{{- fail "operator.leaderElection: false needs operator.replicas: 1; two operators without an election would write the same objects" }}
{{- end }}
{{- end }}
