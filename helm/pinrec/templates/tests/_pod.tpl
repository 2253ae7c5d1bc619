{{/* Labels only the release's `helm test` pods carry: the consumer's NetworkPolicy admits them to its metrics. */}}
{{- define "pinrec.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end -}}

{{/* A `helm test` pod running one check of files/helm-test.py in the pinrec image, as a restricted-Pod-Security
pod like the release's others. "labels" are added to the pod's own (a caller label the predictor admits).
Usage: include "pinrec.testPod" (dict "ctx" $ "check" "rest" "labels" (dict "pinrec.io/predictor-client" "true")) */}}
{{- define "pinrec.testPod" -}}
{{- $ctx := .ctx -}}
{{- $component := dict "ctx" $ctx "component" "test" -}}
{{- $labels := merge (include "pinrec.testSelectorLabels" $ctx | fromYaml) (.labels | default dict) (include "pinrec.componentLabels" $component | fromYaml) -}}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "pinrec.componentName" (dict "ctx" $ctx "component" (printf "test-%s" .check)) }}
  labels:
    {{- toYaml $labels | nindent 4 }}
  annotations:
    helm.sh/hook: test
    # Unless tests.keepPods, a passing pod is deleted at once (helm uninstall never deletes hook pods); a failing
    # one is kept for `kubectl logs` until the next run replaces it.
    helm.sh/hook-delete-policy: {{ ternary "before-hook-creation" "before-hook-creation,hook-succeeded" $ctx.Values.tests.keepPods }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "pinrec.serviceAccountName" $ctx }}
  {{- include "pinrec.podCommon" $ctx | nindent 2 }}
  enableServiceLinks: false
  {{- include "pinrec.scheduling" (dict "ctx" $ctx "workload" $ctx.Values.hooks "component" "test") | nindent 2 }}
  containers:
    - name: {{ .check }}
      image: {{ include "pinrec.image" $ctx }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      command: ["python", "-c"]
      args:
        - |
          {{- $ctx.Files.Get "files/helm-test.py" | nindent 10 }}
        - {{ .check }}
      env:
        - name: PINREC_TEST_PREDICTOR_URL
          value: {{ printf "http://%s-predictor.%s.svc" (include "pinrec.isvcName" $ctx) $ctx.Release.Namespace | quote }}
        - name: PINREC_TEST_PREDICTOR_GRPC
          value: {{ printf "%s-predictor.%s.svc:8081" (include "pinrec.isvcName" $ctx) $ctx.Release.Namespace | quote }}
        - name: PINREC_TEST_SURFACES
          value: {{ join "," $ctx.Values.predictor.surfaces | quote }}
        - name: PINREC_TEST_CONSUMER_METRICS_URL
          value: {{ printf "http://%s.%s.svc:%d/metrics" (include "pinrec.componentName" (dict "ctx" $ctx "component" "consumer")) $ctx.Release.Namespace (int $ctx.Values.consumer.metricsPort) | quote }}
        - name: PINREC_TEST_USER_ID
          value: {{ $ctx.Values.tests.userId | quote }}
        - name: PINREC_TEST_TIMEOUT_SECONDS
          value: {{ $ctx.Values.tests.timeoutSeconds | quote }}
      resources:
        {{- toYaml $ctx.Values.tests.resources | nindent 8 }}
      {{- include "pinrec.containerSecurityContext" $ctx | nindent 6 }}
      volumeMounts:
        {{- include "pinrec.tmpMount" $ctx | nindent 8 }}
  volumes:
    {{- include "pinrec.tmpVolume" $ctx | nindent 4 }}
{{- end -}}
