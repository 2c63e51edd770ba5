{{/* ---- names ------------------------------------------------------------------------- */}}

{{- define "loqua.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or just <release> when it already contains the chart name. */}}
{{- define "loqua.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loqua.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loqua.operator.fullname" -}}
{{- printf "%s-operator" (include "loqua.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loqua.operator.serviceAccountName" -}}
{{- default (include "loqua.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "loqua.operator.leaseName" -}}
{{- default (printf "%s-leader" (include "loqua.operator.fullname" .)) .Values.operator.leaseName -}}
{{- end -}}

{{- define "loqua.worker.serviceAccountName" -}}
{{- default (printf "%s-worker" (include "loqua.fullname" .)) .Values.workerServiceAccount.name -}}
{{- end -}}

{{/* Name of one worker's Deployment (and PDB, HPA). Call with (dict "root" $ "name" NAME). */}}
{{- define "loqua.worker.fullname" -}}
{{- printf "%s-%s" (include "loqua.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ---- labels ------------------------------------------------------------------------ */}}

{{- define "loqua.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loqua.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* On every object: standard labels, the region, commonLabels. */}}
{{- define "loqua.labels" -}}
helm.sh/chart: {{ include "loqua.chart" . }}
{{ include "loqua.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loqua
loqua.app/region: {{ .Values.region | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loqua.operator.selectorLabels" -}}
{{ include "loqua.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "loqua.operator.labels" -}}
{{ include "loqua.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Call with (dict "root" $ "w" WORKER) where WORKER is the merged worker config. */}}
{{- define "loqua.worker.selectorLabels" -}}
{{ include "loqua.selectorLabels" .root }}
app.kubernetes.io/component: worker
loqua.app/worker: {{ .w.name | quote }}
{{- end -}}

{{- define "loqua.worker.labels" -}}
{{ include "loqua.labels" .root }}
app.kubernetes.io/component: worker
loqua.app/worker: {{ .w.name | quote }}
loqua.app/tier: {{ .w.tier | quote }}
{{- end -}}

{{/* ---- image, secrets ---------------------------------------------------------------- */}}

{{- define "loqua.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "loqua.livekit.secretName" -}}
{{- if .Values.createSecrets -}}
{{- printf "%s-livekit" (include "loqua.fullname" .) -}}
{{- else -}}
{{- required "livekit.existingSecret: name an existing Secret with the LiveKit API key and secret" .Values.livekit.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Call with (dict "root" $ "w" WORKER): the worker's existingSecret wins. */}}
{{- define "loqua.loqua.secretName" -}}
{{- if .w.existingSecret -}}
{{- .w.existingSecret -}}
{{- else if .root.Values.createSecrets -}}
{{- printf "%s-loqua" (include "loqua.fullname" .root) -}}
{{- else -}}
{{- required "loqua.existingSecret: name an existing Secret with the agent JWT and the shared secret" .root.Values.loqua.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "loqua.env.livekit" -}}
- name: LIVEKIT_URL
  value: {{ required "livekit.url is required" .Values.livekit.url | quote }}
- name: LIVEKIT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "loqua.livekit.secretName" . }}
      key: {{ .Values.livekit.secretKeys.apiKey }}
- name: LIVEKIT_API_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "loqua.livekit.secretName" . }}
      key: {{ .Values.livekit.secretKeys.apiSecret }}
{{- end -}}

{{/* ---- pods --------------------------------------------------------------------------- */}}

{{- define "loqua.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "loqua.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* The root filesystem is read-only: /tmp is the one writable place. */}}
{{- define "loqua.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end -}}

{{- define "loqua.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* ---- quantities -------------------------------------------------------------------- */}}

{{/* Half a CPU quantity, in millicores, rounded up: "2" -> 1000m, "500m" -> 250m. */}}
{{- define "loqua.halfCpu" -}}
{{- $q := toString . -}}
{{- $milli := 0 -}}
{{- if hasSuffix "m" $q -}}
{{- $milli = trimSuffix "m" $q | int64 -}}
{{- else -}}
{{- $milli = mulf (float64 $q) 1000.0 | ceil | int64 -}}
{{- end -}}
{{- printf "%dm" (div (add $milli 1) 2) -}}
{{- end -}}

{{/* Half a memory quantity, in the largest binary unit that divides it: 4Gi -> 2Gi, 3Gi -> 1536Mi. */}}
{{- define "loqua.halfMemory" -}}
{{- $q := toString . -}}
{{- $number := regexReplaceAll "^([0-9.]+).*$" $q "${1}" -}}
{{- $unit := regexReplaceAll "^[0-9.]+" $q "" -}}
{{- $factors := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if not (hasKey $factors $unit) -}}
{{- fail (printf "memory quantity %q: use a number with one of the units k, M, G, T, Ki, Mi, Gi, Ti" $q) -}}
{{- end -}}
{{- $bytes := mulf (float64 $number) (get $factors $unit) | ceil | int64 -}}
{{- $half := div (add $bytes 1) 2 -}}
{{- if eq (mod $half 1073741824) 0 -}}{{ printf "%dGi" (div $half 1073741824) }}
{{- else if eq (mod $half 1048576) 0 -}}{{ printf "%dMi" (div $half 1048576) }}
{{- else if eq (mod $half 1024) 0 -}}{{ printf "%dKi" (div $half 1024) }}
{{- else -}}{{ printf "%d" $half }}
{{- end -}}
{{- end -}}

{{/* ---- workers ----------------------------------------------------------------------- */}}

{{/*
One worker's settings: workerDefaults, then the entry's own keys on top (zero values such as
replicas: 0 included). Maps listed below are merged one level deep; others are replaced whole.
Also resolves the tier: `resources` (limits from the tier, requests half unless set) and
`sessions`. Call with (dict "root" $ "worker" ENTRY); returns YAML for fromYaml.
*/}}
{{- define "loqua.worker.config" -}}
{{- $root := .root -}}
{{- $entry := .worker -}}
{{- $defaults := deepCopy $root.Values.workerDefaults -}}
{{- $w := dict -}}
{{- range $k, $v := $defaults -}}
{{- $_ := set $w $k $v -}}
{{- end -}}
{{- $nested := list "pdb" "hpa" "autoscaling" "livenessProbe" "readinessProbe" "podAnnotations" "podLabels" "nodeSelector" -}}
{{- range $k, $v := $entry -}}
{{- if and (has $k $nested) (kindIs "map" $v) (kindIs "map" (get $defaults $k)) -}}
{{- $sub := deepCopy (get $defaults $k) -}}
{{- range $kk, $vv := $v -}}
{{- $_ := set $sub $kk $vv -}}
{{- end -}}
{{- $_ := set $w $k $sub -}}
{{- else -}}
{{- $_ := set $w $k $v -}}
{{- end -}}
{{- end -}}
{{- $tier := get $root.Values.tiers (toString $w.tier) -}}
{{- if not $tier -}}
{{- fail (printf "workers[%s].tier %q is not a key of tiers (%s)" $w.name (toString $w.tier) (keys $root.Values.tiers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $res := default dict $w.resources -}}
{{- $limits := default dict $res.limits -}}
{{- $requests := default dict $res.requests -}}
{{- $tierRequests := default dict $tier.requests -}}
{{- $limitCpu := toString (default $tier.cpu $limits.cpu) -}}
{{- $limitMemory := toString (default $tier.memory $limits.memory) -}}
{{- $requestCpu := toString (default (default (include "loqua.halfCpu" $limitCpu) $tierRequests.cpu) $requests.cpu) -}}
{{- $requestMemory := toString (default (default (include "loqua.halfMemory" $limitMemory) $tierRequests.memory) $requests.memory) -}}
{{- /* Other resources (ephemeral-storage, ...) pass through unchanged. */ -}}
{{- $limitsOut := merge (dict "cpu" $limitCpu "memory" $limitMemory) (deepCopy $limits) -}}
{{- $requestsOut := merge (dict "cpu" $requestCpu "memory" $requestMemory) (deepCopy $requests) -}}
{{- $_ := set $w "resolvedResources" (dict "limits" $limitsOut "requests" $requestsOut) -}}
{{- if or (not (hasKey $w "sessions")) (kindIs "invalid" $w.sessions) -}}
{{- $_ := set $w "sessions" $tier.sessions -}}
{{- end -}}
{{- $minGrace := add ($w.drainTimeoutSeconds | int) ($w.finalizeTimeoutSeconds | int) -}}
{{- if or (not (hasKey $w "terminationGracePeriodSeconds")) (kindIs "invalid" $w.terminationGracePeriodSeconds) -}}
{{- $_ := set $w "terminationGracePeriodSeconds" (add $minGrace 30) -}}
{{- else if le ($w.terminationGracePeriodSeconds | int) $minGrace -}}
{{- fail (printf "workers[%s].terminationGracePeriodSeconds (%d) must exceed drainTimeoutSeconds + finalizeTimeoutSeconds (%d), or running sessions are killed before they drain" $w.name ($w.terminationGracePeriodSeconds | int) $minGrace) -}}
{{- end -}}
{{- $as := $w.autoscaling -}}
{{- if $as.mode -}}
{{- if $w.hpa.enabled -}}
{{- fail (printf "workers[%s]: autoscaling.mode %s and hpa.enabled would both set the Deployment's replicas; exactly one mechanism may own them: set hpa.enabled=false or autoscaling.mode=\"\"" $w.name $as.mode) -}}
{{- end -}}
{{- if not $w.agentName -}}
{{- fail (printf "workers[%s]: autoscaling.mode %s counts AgentDispatch objects by agent name; set agentName (automatic dispatch has no declared demand)" $w.name $as.mode) -}}
{{- end -}}
{{- if lt ($as.max | int) ($as.min | int) -}}
{{- fail (printf "workers[%s].autoscaling.max (%d) must be >= min (%d)" $w.name ($as.max | int) ($as.min | int)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $w -}}
{{- end -}}

{{/* Workers whose replicas follow demand, as the operator's DEMAND_SCALING JSON. */}}
{{- define "loqua.demandScaling" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $entry := $root.Values.workers -}}
{{- $w := include "loqua.worker.config" (dict "root" $root "worker" $entry) | fromYaml -}}
{{- if $w.autoscaling.mode -}}
{{- $selector := include "loqua.worker.selectorLabels" (dict "root" $root "w" $w) | fromYaml -}}
{{- $pairs := list -}}
{{- range $k := keys $selector | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $k (get $selector $k)) -}}
{{- end -}}
{{- $out = append $out (dict "deployment" (include "loqua.worker.fullname" (dict "root" $root "name" $w.name)) "agentName" $w.agentName "sessions" ($w.sessions | int) "min" ($w.autoscaling.min | int) "max" ($w.autoscaling.max | int) "spareSessions" ($w.autoscaling.spareSessions | int) "scaleDownDelaySeconds" ($w.autoscaling.scaleDownDelaySeconds | int) "selector" (join "," $pairs) "metricsPort" ($w.metricsPort | int) "scale" (eq $w.autoscaling.mode "demand")) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "loqua.webBackend.serviceAccountName" -}}
{{- default (printf "%s-web-backend" (include "loqua.fullname" .)) .Values.webBackend.serviceAccount.name -}}
{{- end -}}
