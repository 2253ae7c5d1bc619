{{/* Names, labels and the pieces of pod specs that several workloads share. */}}

{{- define "pinrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pinrec.fullname" -}}
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

{{/* "<fullname>-<suffix>", within the 63 characters of a DNS label. */}}
{{- define "pinrec.componentName" -}}
{{- printf "%s-%s" (include "pinrec.fullname" .ctx | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{- define "pinrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pinrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pinrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pinrec.labels" -}}
helm.sh/chart: {{ include "pinrec.chart" . }}
{{ include "pinrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pinrec
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Usage: include "pinrec.componentLabels" (dict "ctx" $ "component" "consumer") */}}
{{- define "pinrec.componentLabels" -}}
{{ include "pinrec.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pinrec.componentSelectorLabels" -}}
{{ include "pinrec.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: repository@digest when a digest is set, else repository:tag.
Usage: include "pinrec.imageRef" (dict "image" .Values.kafka.image "defaultTag" "") */}}
{{- define "pinrec.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .defaultTag) -}}
{{- end -}}
{{- end -}}

{{- define "pinrec.image" -}}
{{- include "pinrec.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) -}}
{{- end -}}

{{/* The training pods' image: training.image when its repository is set, else the release's. */}}
{{- define "pinrec.trainingImage" -}}
{{- if .Values.training.image.repository -}}
{{- include "pinrec.imageRef" (dict "image" .Values.training.image "defaultTag" .Chart.AppVersion) -}}
{{- else -}}
{{- include "pinrec.image" . -}}
{{- end -}}
{{- end -}}

{{- define "pinrec.kafkaImage" -}}
{{- include "pinrec.imageRef" (dict "image" .Values.kafka.image "defaultTag" "") -}}
{{- end -}}

{{- define "pinrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pinrec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pinrec.isvcName" -}}
{{- default (include "pinrec.fullname" .) .Values.predictor.name | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{/* The label KServe puts on the predictor's pods: what NetworkPolicies, the PodMonitor and the
PodDisruptionBudget select them by. */}}
{{- define "pinrec.predictorSelectorLabels" -}}
serving.kserve.io/inferenceservice: {{ include "pinrec.isvcName" . }}
{{- end -}}

{{/* Fails the render unless the cluster serves an API group/version, as helm install/upgrade discover it
(helm template: --api-versions): a clear reason instead of a failed apply. helm lint only reports it.
Usage: include "pinrec.requireApi" (dict "ctx" $ "api" "monitoring.coreos.com/v1" "kind" "PodMonitor"
"for" "monitoring.podMonitor.enabled" "remedy" "install the prometheus-operator CRDs or set it to false") */}}
{{- define "pinrec.requireApi" -}}
{{- if not (.ctx.Capabilities.APIVersions.Has .api) -}}
{{- fail (printf "%s needs the %s API (%s), which the cluster does not serve: %s. Rendering without a cluster (helm template)? Pass --api-versions %s." .for .kind .api .remedy .api) -}}
{{- end -}}
{{- end -}}

{{/* Pod-level fields every pod of the release shares. */}}
{{- define "pinrec.podCommon" -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{ include "pinrec.podSecurityContext" . }}
{{- end -}}

{{/* The pod security context and the image pull secrets, without the token setting (the retraining
submitter mounts its token; runtimePatches of a ClusterTrainingRuntime's pods cannot set it). */}}
{{- define "pinrec.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "pinrec.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* The prometheus-operator API of a monitoring object, required by its monitoring.<kind>.enabled value.
Usage: include "pinrec.requirePrometheusOperator" (dict "ctx" $ "kind" "PodMonitor") */}}
{{- define "pinrec.requirePrometheusOperator" -}}
{{- include "pinrec.requireApi" (dict "ctx" .ctx "api" "monitoring.coreos.com/v1" "kind" .kind "for" (printf "monitoring.%s.enabled" (untitle .kind)) "remedy" "install the prometheus-operator CRDs or set it to false") -}}
{{- end -}}

{{/* Scheduling fields of a pod spec: the workload's own (predictor.nodeSelector, hooks.affinity...) where set,
else the release-wide scheduling defaults. A topology spread constraint without a labelSelector spreads the
workload's own pods. Usage: include "pinrec.scheduling" (dict "ctx" $ "workload" .Values.consumer
"component" "consumer") */}}
{{- define "pinrec.scheduling" -}}
{{- $defaults := .ctx.Values.scheduling -}}
{{- with (get .workload "priorityClassName") | default $defaults.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- range $field := list "nodeSelector" "tolerations" "affinity" }}
{{- with (get $.workload $field) | default (get $defaults $field) }}
{{ $field }}:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- with (get .workload "topologySpreadConstraints") | default $defaults.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (include "pinrec.componentSelectorLabels" $ | fromYaml) }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not (hasKey $constraint "labelSelector") }}
  {{- $_ := set $constraint "labelSelector" $selector }}
  {{- end }}
  - {{- toYaml $constraint | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget with whichever of minAvailable and maxUnavailable its values set (exactly one).
Usage: include "pinrec.podDisruptionBudget" (dict "ctx" $ "component" "consumer" "selector" $labels
"budget" .Values.consumer.podDisruptionBudget "values" "consumer.podDisruptionBudget") */}}
{{- define "pinrec.podDisruptionBudget" -}}
{{- $limits := dict -}}
{{- range $field := list "minAvailable" "maxUnavailable" -}}
{{- $value := get $.budget $field -}}
{{- if ne (toString $value) "" -}}
{{- $_ := set $limits $field $value -}}
{{- end -}}
{{- end -}}
{{- if ne (len $limits) 1 -}}
{{- fail (printf "%s: set exactly one of minAvailable and maxUnavailable" .values) -}}
{{- end -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "pinrec.componentName" . }}
  labels:
    {{- include "pinrec.componentLabels" . | nindent 4 }}
spec:
  {{- toYaml $limits | nindent 2 }}
  selector:
    matchLabels:
      {{- .selector | nindent 6 }}
{{- end -}}

{{- define "pinrec.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "pinrec.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Kafka */}}

{{- define "pinrec.eventsTopic" -}}
{{- .Values.kafka.topics.events.name -}}
{{- end -}}

{{/* The most consumers KEDA may run: consumer.autoscaling.maxReplicas, or one per partition when 0. */}}
{{- define "pinrec.consumerMaxReplicas" -}}
{{- .Values.consumer.autoscaling.maxReplicas | default .Values.kafka.topics.events.partitions -}}
{{- end -}}

{{- define "pinrec.dlqTopic" -}}
{{- printf "%s.dlq" .Values.kafka.topics.events.name -}}
{{- end -}}

{{- define "pinrec.kafkaBootstrap" -}}
{{- if .Values.kafka.builtin.enabled -}}
{{- printf "%s.%s.svc:9092" (include "pinrec.componentName" (dict "ctx" . "component" "kafka")) .Release.Namespace -}}
{{- else -}}
{{- .Values.kafka.external.bootstrap -}}
{{- end -}}
{{- end -}}

{{- define "pinrec.kafkaSecurityProtocol" -}}
{{- if .Values.kafka.builtin.enabled -}}PLAINTEXT{{- else -}}{{ .Values.kafka.external.securityProtocol }}{{- end -}}
{{- end -}}

{{- define "pinrec.kafkaCaEnabled" -}}
{{- $protocol := include "pinrec.kafkaSecurityProtocol" . -}}
{{- if and (hasSuffix "SSL" $protocol) .Values.kafka.external.tls.caSecret.name -}}true{{- end -}}
{{- end -}}

{{/* The PINREC_KAFKA_* variables of stream/security.py; secrets come from existing Secrets only. */}}
{{- define "pinrec.kafkaEnv" -}}
{{- $protocol := include "pinrec.kafkaSecurityProtocol" . -}}
- name: PINREC_KAFKA_BOOTSTRAP
  value: {{ include "pinrec.kafkaBootstrap" . | quote }}
- name: PINREC_KAFKA_SECURITY_PROTOCOL
  value: {{ $protocol | quote }}
{{- if hasPrefix "SASL" $protocol }}
- name: PINREC_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.external.sasl.mechanism | quote }}
- name: PINREC_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.external.sasl.secretName }}
      key: {{ .Values.kafka.external.sasl.usernameKey }}
- name: PINREC_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.external.sasl.secretName }}
      key: {{ .Values.kafka.external.sasl.passwordKey }}
{{- end }}
{{- if include "pinrec.kafkaCaEnabled" . }}
- name: PINREC_KAFKA_SSL_CAFILE
  value: /etc/pinrec/kafka-ca/{{ .Values.kafka.external.tls.caSecret.key }}
{{- end }}
{{- end -}}

{{- define "pinrec.kafkaCaVolume" -}}
{{- if include "pinrec.kafkaCaEnabled" . }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.external.tls.caSecret.name }}
    items:
      - key: {{ .Values.kafka.external.tls.caSecret.key }}
        path: {{ .Values.kafka.external.tls.caSecret.key }}
{{- end }}
{{- end -}}

{{- define "pinrec.kafkaCaMount" -}}
{{- if include "pinrec.kafkaCaEnabled" . }}
- name: kafka-ca
  mountPath: /etc/pinrec/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Feature store */}}

{{- define "pinrec.featureRepoClaim" -}}
{{- default (include "pinrec.componentName" (dict "ctx" . "component" "feature-repo")) .Values.featureStore.repository.existingClaim -}}
{{- end -}}

{{- define "pinrec.redisHost" -}}
{{- if .Values.redis.builtin.enabled -}}
{{- printf "%s.%s.svc" (include "pinrec.componentName" (dict "ctx" . "component" "redis")) .Release.Namespace -}}
{{- else -}}
{{- .Values.redis.external.host -}}
{{- end -}}
{{- end -}}

{{/* PINREC_REDIS_URL: the password (from an existing Secret) is spliced in by Kubernetes' $(VAR) expansion,
so it never appears in the rendered manifest. */}}
{{- define "pinrec.redisUrl" -}}
{{- if .Values.redis.builtin.enabled -}}
{{- printf "redis://%s:6379/0" (include "pinrec.redisHost" .) -}}
{{- else -}}
{{- $scheme := ternary "rediss" "redis" (.Values.redis.external.tls | default false) -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" (ne .Values.redis.external.passwordSecret.name "") -}}
{{- printf "%s://%s%s:%v/%v" $scheme $auth .Values.redis.external.host .Values.redis.external.port .Values.redis.external.db -}}
{{- end -}}
{{- end -}}

{{/* The feature store's settings and the vocabulary (PINREC_ACTIONS, PINREC_SURFACES): what every pinrec
process of the release must agree on; no secret. */}}
{{- define "pinrec.settingsEnv" -}}
- name: HOME
  value: /tmp/pinrec
- name: PINREC_HOME
  value: /tmp/pinrec
- name: PINREC_FEATURE_REPO
  value: {{ .Values.featureStore.repository.mountPath | quote }}
- name: PINREC_ONLINE_STORE
  value: {{ .Values.featureStore.onlineStore | quote }}
- name: PINREC_FEAST_PROJECT
  value: {{ .Values.featureStore.project | quote }}
{{- with .Values.featureStore.actions }}
- name: PINREC_ACTIONS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.featureStore.surfaces }}
- name: PINREC_SURFACES
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "pinrec.featureStoreEnv" -}}
{{ include "pinrec.settingsEnv" . }}
{{- if eq .Values.featureStore.onlineStore "redis" }}
{{- if and (not .Values.redis.builtin.enabled) .Values.redis.external.passwordSecret.name }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret.name }}
      key: {{ .Values.redis.external.passwordSecret.key }}
{{- end }}
- name: PINREC_REDIS_URL
  value: {{ include "pinrec.redisUrl" . | quote }}
{{- end }}
{{- end -}}

{{- define "pinrec.featureRepoVolume" -}}
- name: feature-repo
  persistentVolumeClaim:
    claimName: {{ include "pinrec.featureRepoClaim" . }}
{{- end -}}

{{- define "pinrec.featureRepoMount" -}}
- name: feature-repo
  mountPath: {{ .Values.featureStore.repository.mountPath }}
{{- end -}}

{{/* Model artifacts */}}

{{- define "pinrec.modelsClaim" -}}
{{- if .Values.model.pvc.create -}}
{{- include "pinrec.componentName" (dict "ctx" . "component" "models") -}}
{{- else -}}
{{- .Values.model.pvc.claimName -}}
{{- end -}}
{{- end -}}

{{/* What `pinrec serve --artifacts` reads: KServe's download folder, or a path inside the mounted claim. */}}
{{- define "pinrec.artifactsPath" -}}
{{- if .Values.model.storageUri -}}
/mnt/models
{{- else -}}
{{- printf "/mnt/models/%s" (.Values.model.pvc.path | trimPrefix "/") | trimSuffix "/" -}}
{{- end -}}
{{- end -}}

{{/* Refuse values that would deploy something broken. */}}
{{- define "pinrec.validate" -}}
{{- $partitions := int .Values.kafka.topics.events.partitions -}}
{{- if gt (int .Values.consumer.replicas) $partitions -}}
{{- fail (printf "consumer.replicas (%d) must not exceed kafka.topics.events.partitions (%d): a consumer group never gives one partition to two members, so the extra replicas would sit idle" (int .Values.consumer.replicas) $partitions) -}}
{{- end -}}
{{- if and .Values.sink.enabled (gt (int .Values.sink.replicas) $partitions) -}}
{{- fail (printf "sink.replicas (%d) must not exceed kafka.topics.events.partitions (%d)" (int .Values.sink.replicas) $partitions) -}}
{{- end -}}
{{- if and .Values.sink.enabled (not .Values.sink.out) -}}
{{- fail "sink.enabled needs sink.out: an object-store URI (s3://bucket/prefix) or a path on sink.volume" -}}
{{- end -}}
{{- if and (not .Values.kafka.builtin.enabled) (not .Values.kafka.external.bootstrap) -}}
{{- fail "set kafka.external.bootstrap or enable kafka.builtin" -}}
{{- end -}}
{{- if and .Values.kafka.builtin.enabled (gt (int .Values.kafka.topics.events.replicationFactor) 1) -}}
{{- fail "the built-in Kafka has one broker: set kafka.topics.events.replicationFactor to 1" -}}
{{- end -}}
{{- if and (hasPrefix "SASL" (include "pinrec.kafkaSecurityProtocol" .)) (not .Values.kafka.external.sasl.secretName) -}}
{{- fail "kafka.external.securityProtocol SASL_* needs kafka.external.sasl.secretName (an existing Secret)" -}}
{{- end -}}
{{- if and (eq .Values.featureStore.onlineStore "redis") (not .Values.redis.builtin.enabled) (not .Values.redis.external.host) -}}
{{- fail "the redis online store needs redis.external.host or redis.builtin.enabled" -}}
{{- end -}}
{{- if and (not .Values.model.storageUri) (not (include "pinrec.modelsClaim" .)) -}}
{{- fail "set model.storageUri, model.pvc.claimName or model.pvc.create" -}}
{{- end -}}
{{- if and .Values.model.bootstrap.enabled .Values.model.storageUri -}}
{{- fail "model.bootstrap trains into the model claim: leave model.storageUri empty" -}}
{{- end -}}
{{- if gt (int .Values.predictor.minReplicas) (int .Values.predictor.maxReplicas) -}}
{{- fail "predictor.minReplicas must not exceed predictor.maxReplicas" -}}
{{- end -}}
{{- if has (int .Values.predictor.metricsPort) (list 8080 8081) -}}
{{- fail "predictor.metricsPort must differ from the predictor's API ports 8080 (REST) and 8081 (gRPC)" -}}
{{- end -}}
{{- if and .Values.tests.enabled .Values.networkPolicy.enabled (not .Values.networkPolicy.predictor.allowedPods) -}}
{{- fail "tests.enabled: the predictor's test pods carry the labels of the first networkPolicy.predictor.allowedPods entry, and there is none; list one or set tests.enabled to false" -}}
{{- end -}}
{{- if .Values.training.enabled -}}
{{- if .Values.model.storageUri -}}
{{- fail "training.enabled retrains into the model claim and re-points model.pvc.path there: leave model.storageUri empty" -}}
{{- end -}}
{{- $log := include "pinrec.trainingEventLog" . -}}
{{- if not $log -}}
{{- fail "training.enabled needs an event log: set training.eventLog, or sink.out (with sink.enabled) whose log it reads" -}}
{{- end -}}
{{- /* A URI (s3://, gs://, hdfs://) is read through pyarrow's filesystems; its credentials come from training.extraEnv. */ -}}
{{- if not (or (contains "://" $log) (hasPrefix "/mnt/models/" $log) (include "pinrec.trainingReadsSinkClaim" .)) -}}
{{- fail (printf "training reads the event log %s, which is on no claim the trainer mounts: put it under sink.volume.mountPath (with sink.volume.claimName) or under /mnt/models" $log) -}}
{{- end -}}
{{- end -}}
{{- with .Values.consumer.autoscaling -}}
{{- if and .enabled (gt (int (include "pinrec.consumerMaxReplicas" $)) $partitions) -}}
{{- fail (printf "consumer.autoscaling.maxReplicas (%d) must not exceed kafka.topics.events.partitions (%d)" (int .maxReplicas) $partitions) -}}
{{- end -}}
{{- if and .enabled (gt (int .minReplicas) (int (include "pinrec.consumerMaxReplicas" $))) -}}
{{- fail "consumer.autoscaling.minReplicas must not exceed its maxReplicas" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Retraining (training.*): Kubeflow Trainer v2 TrainJobs that run files/retrain.sh */}}

{{- define "pinrec.requireTrainer" -}}
{{- include "pinrec.requireApi" (dict "ctx" . "api" "trainer.kubeflow.org/v1alpha1" "kind" "TrainJob" "for" "training.enabled" "remedy" "install Kubeflow Trainer v2 (its CRDs and controller) or set it to false") -}}
{{- end -}}

{{/* The event log the trainer reads: training.eventLog, else the sink's sink.out. */}}
{{- define "pinrec.trainingEventLog" -}}
{{- .Values.training.eventLog | default .Values.sink.out | trimSuffix "/" -}}
{{- end -}}

{{/* "true" when the trainer reads the event log from the sink's claim, mounted read-only where the sink mounts
it; a log under /mnt/models is read from the model claim. */}}
{{- define "pinrec.trainingReadsSinkClaim" -}}
{{- $log := include "pinrec.trainingEventLog" . -}}
{{- with .Values.sink.volume -}}
{{- if and .claimName (hasPrefix (printf "%s/" (trimSuffix "/" .mountPath)) $log) (not (hasPrefix "/mnt/models/" $log)) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* TrainJob names: short enough for the pod host names JobSet derives from them ("<name>-node-0-0"). */}}
{{- define "pinrec.trainJobPrefix" -}}
{{- printf "%s-retrain" (include "pinrec.fullname" . | trunc 30 | trimSuffix "-") -}}
{{- end -}}

{{- define "pinrec.trainingConfigMap" -}}
{{- include "pinrec.componentName" (dict "ctx" . "component" "training") -}}
{{- end -}}

{{/* The trainer pods' volumes: /tmp, the model claim (written), the feature repository, the event log's claim
and retrain.sh. */}}
{{- define "pinrec.trainerVolumes" -}}
{{ include "pinrec.tmpVolume" . }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "pinrec.modelsClaim" . }}
{{ include "pinrec.featureRepoVolume" . }}
- name: training
  configMap:
    name: {{ include "pinrec.trainingConfigMap" . }}
    items:
      - key: retrain.sh
        path: retrain.sh
{{- if include "pinrec.trainingReadsSinkClaim" . }}
- name: event-log
  persistentVolumeClaim:
    claimName: {{ .Values.sink.volume.claimName }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "pinrec.trainerVolumeMounts" -}}
{{ include "pinrec.tmpMount" . }}
- name: models
  mountPath: /mnt/models
- name: feature-repo
  mountPath: {{ .Values.featureStore.repository.mountPath }}
  readOnly: true
- name: training
  mountPath: /etc/pinrec/training
  readOnly: true
{{- if include "pinrec.trainingReadsSinkClaim" . }}
- name: event-log
  mountPath: {{ .Values.sink.volume.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A TrainJob of retraining. With the chart's own TrainingRuntime its pods are described there; with a
ClusterTrainingRuntime, runtimePatches give them the same labels, security contexts, volumes and the placement
fields runtimePatches carry (nodeSelector, tolerations, affinity).
Usage: include "pinrec.trainJob" (dict "ctx" $ "metadata" (dict "generateName" "x-")) */}}
{{- define "pinrec.trainJob" -}}
{{- $ctx := .ctx -}}
{{- $training := $ctx.Values.training -}}
{{- $component := dict "ctx" $ctx "component" "trainer" -}}
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata:
  {{- toYaml .metadata | nindent 2 }}
  labels:
    {{- include "pinrec.componentLabels" $component | nindent 4 }}
spec:
  runtimeRef:
    apiGroup: trainer.kubeflow.org
    {{- with $training.runtime.clusterTrainingRuntime }}
    kind: ClusterTrainingRuntime
    name: {{ . }}
    {{- else }}
    kind: TrainingRuntime
    name: {{ include "pinrec.componentName" $component }}
    {{- end }}
  activeDeadlineSeconds: {{ $training.activeDeadlineSeconds }}
  trainer:
    image: {{ include "pinrec.trainingImage" $ctx }}
    command: ["bash", "/etc/pinrec/training/retrain.sh"]
    args:
      - --event-log
      - {{ include "pinrec.trainingEventLog" $ctx | quote }}
      - --models
      - /mnt/models
      - --serving
      - {{ include "pinrec.artifactsPath" $ctx | quote }}
      {{- range $ctx.Values.predictor.surfaces }}
      - --surface
      - {{ . | quote }}
      {{- end }}
      {{- range $training.trainArgs }}
      - --train-arg
      - {{ . | quote }}
      {{- end }}
      {{- range $training.finetuneArgs }}
      - --finetune-arg
      - {{ . | quote }}
      {{- end }}
      {{- range $training.gate.metrics }}
      - --gate-metric
      - {{ . | quote }}
      {{- end }}
      - --gate-tolerance
      - {{ $training.gate.tolerance | quote }}
    numNodes: {{ $training.numNodes }}
    {{- if ne (toString $training.numProcPerNode) "auto" }}
    numProcPerNode: {{ $training.numProcPerNode }}
    {{- end }}
    resourcesPerNode:
      {{- toYaml $training.resourcesPerNode | nindent 6 }}
    env:
      {{- include "pinrec.settingsEnv" $ctx | nindent 6 }}
      # The release folder is named after the TrainJob (its JobSet's name), so a restarted run finds its
      # checkpoint again.
      - name: PINREC_RELEASE_ID
        valueFrom:
          fieldRef:
            fieldPath: metadata.labels['jobset.sigs.k8s.io/jobset-name']
      {{- with $training.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  {{- if $training.runtime.clusterTrainingRuntime }}
  {{- $placement := pick (include "pinrec.scheduling" (merge (dict "workload" $training) $component) | fromYaml) "nodeSelector" "tolerations" "affinity" }}
  runtimePatches:
    - manager: pinrec.io/helm-chart
      trainingRuntimeSpec:
        template:
          spec:
            replicatedJobs:
              - name: node
                template:
                  spec:
                    template:
                      metadata:
                        labels:
                          {{- include "pinrec.componentLabels" $component | nindent 26 }}
                      spec:
                        serviceAccountName: {{ include "pinrec.serviceAccountName" $ctx }}
                        {{- include "pinrec.podSecurityContext" $ctx | nindent 24 }}
                        {{- with $placement }}
                        {{- toYaml . | nindent 24 }}
                        {{- end }}
                        containers:
                          - name: node
                            {{- include "pinrec.containerSecurityContext" $ctx | nindent 28 }}
                            volumeMounts:
                              {{- include "pinrec.trainerVolumeMounts" $ctx | nindent 30 }}
                        volumes:
                          {{- include "pinrec.trainerVolumes" $ctx | nindent 24 }}
  {{- end }}
{{- end -}}
