{{- /*
The Prometheus rules: recording rules for the dashboards and the alerts, thresholds from
.Values.alerts. This is the single source: the PrometheusRule renders it, and
alerts/taskpulse-rules.yaml is its rendering with default values (helm/sync.sh writes it,
tests/tools/helm/ checks that the two are equal).

Text in {{`...`}} is Prometheus' own alert template, passed through untouched.

State gauges come from the leading replica only and counters from every replica: both are
aggregated `without (instance, pod)`, so a failover or a second replica neither changes an
alert's identity nor counts anything twice.
*/ -}}
{{- define "taskpulse.ruleGroups" -}}
{{- $a := .Values.alerts }}
{{- $g := $a.grafanaUrl | trimSuffix "/" }}
{{- $overview := printf "%s/d/taskpulse-overview" $g }}
{{- $taskDashboard := printf "%s/d/taskpulse-task" $g }}
{{- $runbook := $a.runbookUrl }}
{{- $job := include "taskpulse.job" . -}}
groups:
  - name: taskpulse.recording
    rules:
      # Counters summed over replicas, for the dashboards' rate panels.
      - record: job:taskpulse_updates:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_updates_total[5m]))
      - record: job:taskpulse_transitions_rejected:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_transitions_rejected_total[5m]))
      - record: job:taskpulse_progress_updates:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_progress_updates_total[5m]))
      - record: job:taskpulse_store_writes:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_store_writes_total[5m]))
      - record: job:taskpulse_store_write_errors:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_store_write_errors_total[5m]))
      - record: job:taskpulse_checker_repairs:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_checker_repairs_total[5m]))
      # Histograms: bucket rates over replicas, and the 95th percentiles the dashboards plot.
      - record: job:taskpulse_task_duration_seconds_bucket:rate5m
        expr: sum without (instance, pod) (rate(taskpulse_task_duration_seconds_bucket[5m]))
      - record: job:taskpulse_task_duration_seconds:p95_5m
        expr: histogram_quantile(0.95, sum without (instance, pod, status) (rate(taskpulse_task_duration_seconds_bucket[5m])))
      - record: job:taskpulse_wait_wakeup_lag_seconds:p95_5m
        expr: histogram_quantile(0.95, sum without (instance, pod) (rate(taskpulse_wait_wakeup_lag_seconds_bucket[5m])))
  - name: taskpulse.alerts
    rules:
{{- with $a.taskPredictedTimeout }}{{ if .enabled }}
      - alert: TaskPredictedTimeout
        # seconds by which the predicted completion misses the deadline
        expr: |-
          max without (instance, pod) (
            taskpulse_task_predicted_completion_timestamp_seconds
              - taskpulse_task_deadline_timestamp_seconds
          ) > {{ .marginSeconds }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`Task {{ $labels.task_id }} ({{ $labels.task_type }}) is predicted to miss its deadline`}}'
          description: '{{`At its current progress rate, task {{ $labels.task_id }} of type {{ $labels.task_type }} in workflow {{ $labels.workflow_id }} ({{ $labels.workflow_type }}) will finish {{ $value | humanizeDuration }} after its deadline, when the engine times it out. Check its worker and progress history.`}}'
          dashboard: '{{ $taskDashboard }}?var-task_id={{`{{ $labels.task_id | urlquery }}`}}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#taskpredictedtimeout'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.taskStalled }}{{ if .enabled }}
      - alert: TaskStalled
        expr: max without (instance, pod) (taskpulse_tasks_stalled) > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`{{ $value }} {{ $labels.task_type }} task(s) of {{ $labels.workflow_type }} stalled`}}'
          description: '{{`{{ $value }} in-flight {{ $labels.task_type }} task(s) of workflow type {{ $labels.workflow_type }} have reported no progress for longer than `}}{{ $.Values.config.stallAfter | default "5m" }}{{` (--stall-after). Their workers may be hung or gone: list them with GET /api/v1/tasks?taskType={{ $labels.task_type | urlquery }} (stalled: true).`}}'
          dashboard: '{{ $overview }}?var-workflow_type={{`{{ $labels.workflow_type | urlquery }}`}}&var-task_type={{`{{ $labels.task_type | urlquery }}`}}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#taskstalled'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.waitTasksOverdue }}{{ if .enabled }}
      - alert: WaitTasksOverdue
        expr: max without (instance, pod) (taskpulse_wait_overdue_tasks) > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`{{ $value }} WAIT task(s) of {{ $labels.workflow_type }} overdue`}}'
          description: '{{`{{ $value }} WAIT task(s) of workflow type {{ $labels.workflow_type }} are still waiting more than `}}{{ $.Values.config.waitGrace | default "30s" }}{{` (--wait-grace) past their wake-up time. The engine is not waking them: check its WAIT queue (asynchronous since Conductor 3.14).`}}'
          dashboard: '{{ $overview }}?var-workflow_type={{`{{ $labels.workflow_type | urlquery }}`}}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#waittasksoverdue'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.illegalTransitionsDetected }}{{ if .enabled }}
      - alert: IllegalTransitionsDetected
        # Rejections in the window: increase() for series older than the window, the whole
        # value for newer ones (the first rejection from/to a status creates its series).
        expr: |-
          sum without (instance, pod) (
              (
                increase(taskpulse_transitions_rejected_total{to=~"{{ .toStatuses }}"}[{{ .window }}])
                  and taskpulse_transitions_rejected_total offset {{ .window }}
              )
            or
              (
                taskpulse_transitions_rejected_total{to=~"{{ .toStatuses }}"}
                  unless taskpulse_transitions_rejected_total offset {{ .window }}
              )
          ) > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`Updates moving tasks from {{ $labels.from }} back to {{ $labels.to }} are rejected`}}'
          description: '{{`{{ printf "%.0f" $value }} update(s) in the last `}}{{ .window }}{{` tried to move a task from the terminal status {{ $labels.from }} to {{ $labels.to }} and were rejected. The engine or a worker sends late or out-of-order updates (the conductor-oss#176 shape); each rejection is kept in the task history (GET /api/v1/tasks/TASK_ID).`}}'
          dashboard: '{{ $overview }}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#illegaltransitionsdetected'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.consistencyViolationsUnrepaired }}{{ if .enabled }}
      - alert: ConsistencyViolationsUnrepaired
        # the leader's gauge: a replica that lost the lead keeps its last pass's numbers
        expr: |-
          max without (instance, pod) (
            taskpulse_checker_violations and ignoring (rule) (taskpulse_checker_leader == 1)
          ) > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`The consistency checker keeps finding {{ $labels.rule }} violations`}}'
          description: '{{`The last checker pass found {{ $value }} {{ $labels.rule }} violation(s), and violations have stayed for `}}{{ .for }}{{`: the rule has no automatic repair (successor_finished and wait_overdue have none without --conductor-url), repairs are off (--repair=false), or they conflict or fail. See the evidence with taskpulse check --json and the audit trail at GET /api/v1/repairs.`}}'
          dashboard: '{{ $overview }}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#consistencyviolationsunrepaired'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.checkerNotRunning }}{{ if .enabled }}
      - alert: CheckerNotRunning
        # reason: last_run_too_old, runs_failing or no_leader
        expr: |-
          {{- if include "taskpulse.checkerEnabled" $ }}
          label_replace(
            max without (instance, pod) (
              (time() - taskpulse_checker_last_run_timestamp_seconds) and (taskpulse_checker_leader == 1)
            ) > {{ .maxAgeSeconds }},
            "reason", "last_run_too_old", "", ""
          )
          or
          label_replace(
              sum without (instance, pod, outcome) (increase(taskpulse_checker_runs_total{outcome="error"}[{{ .maxAgeSeconds }}s])) > 0
            unless
              sum without (instance, pod, outcome) (increase(taskpulse_checker_runs_total{outcome="ok"}[{{ .maxAgeSeconds }}s])) > 0,
            "reason", "runs_failing", "", ""
          )
          or
          {{- end }}
          label_replace(
            max without (instance, pod) (taskpulse_checker_leader) == 0,
            "reason", "no_leader", "", ""
          )
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`The taskpulse consistency checker is not running ({{ $labels.reason }})`}}'
          description: '{{`{{ if eq $labels.reason "no_leader" }}No taskpulse replica of {{ $labels.job }} leads, so nothing runs the checker or exports the task state gauges. Check that the replicas reach PostgreSQL (leader election uses an advisory lock).{{ else if eq $labels.reason "runs_failing" }}Every checker pass of {{ $labels.job }} in the last `}}{{ .maxAgeSeconds }}{{`s failed. Check the store and the taskpulse logs (checker pass failed).{{ else }}The last checker pass on the leader of {{ $labels.job }} ended {{ $value | humanizeDuration }} ago. The checker is stuck or the process is overloaded: check the taskpulse logs.{{ end }}`}}'
          dashboard: '{{ $overview }}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#checkernotrunning'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.taskpulseDown }}{{ if .enabled }}
      - alert: TaskpulseDown
        expr: up{job="{{ $job }}"} == 0 or absent(up{job="{{ $job }}"})
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`{{ if $labels.instance }}taskpulse {{ $labels.instance }} is down{{ else }}No taskpulse target is scraped{{ end }}`}}'
          description: '{{`{{ if $labels.instance }}Prometheus cannot scrape taskpulse at {{ $labels.instance }} (job {{ $labels.job }}).{{ else }}Prometheus has no scrape target with job {{ $labels.job }}: taskpulse is not deployed, or the ServiceMonitor or scrape configuration does not find it.{{ end }} Without it task progress, predictions, WAIT-queue metrics and the consistency checker are gone, and workers sending updates to it get errors.`}}'
          dashboard: '{{ $overview }}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#taskpulsedown'
          {{- end }}
{{- end }}{{ end }}
{{- with $a.storeWriteErrors }}{{ if .enabled }}
      - alert: StoreWriteErrors
        expr: sum without (instance, pod) (increase(taskpulse_store_write_errors_total[{{ .window }}])) > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $a.labels }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: '{{`taskpulse store writes are failing`}}'
          description: '{{`{{ printf "%.0f" $value }} store write attempt(s) of {{ $labels.job }} failed in the last `}}{{ .window }}{{`. Failed writes are retried and wait in memory (taskpulse_store_pending_writes); past --max-pending-writes ingest answers 503. Check the database (reachable, disk full, locked) and the taskpulse logs.`}}'
          dashboard: '{{ $overview }}'
          {{- with $runbook }}
          runbook_url: '{{ . }}#storewriteerrors'
          {{- end }}
{{- end }}{{ end }}
{{- end }}
