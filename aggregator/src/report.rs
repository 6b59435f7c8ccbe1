//! One-shot output of `check`: a table for people, JSON for programs, JUnit XML for CI
//! systems that render test reports.

use std::borrow::Cow;

use pullwatch::CheckOutcome;
use pullwatch::terminal::escape_controls;
use serde::Serialize;

use crate::index::ContainerRef;

/// One row of `check -o json`. Key names are a contract other tools depend on.
#[derive(Debug, Serialize)]
pub(crate) struct Row<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) name: &'a str,
    pub(crate) container: &'a str,
    pub(crate) image: &'a str,
    pub(crate) status: &'a str,
    pub(crate) reason: &'a str,
}

fn rows(results: &[(ContainerRef, CheckOutcome)]) -> Vec<Row<'_>> {
    results
        .iter()
        .map(|(c, o)| Row {
            namespace: &c.namespace,
            kind: c.kind.as_str(),
            name: &c.name,
            container: &c.container,
            image: &c.image,
            status: o.status.as_str(),
            reason: &o.reason,
        })
        .collect()
}

pub(crate) fn json(results: &[(ContainerRef, CheckOutcome)]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&rows(results))
}

pub(crate) fn table(results: &[(ContainerRef, CheckOutcome)]) -> String {
    const HEADER: [&str; 7] = [
        "NAMESPACE",
        "KIND",
        "NAME",
        "CONTAINER",
        "IMAGE",
        "STATUS",
        "REASON",
    ];
    // Names, images and reasons come from manifests and registries: control and bidi
    // characters are shown as `\u{…}`, never sent to the terminal.
    let escaped: Vec<[Cow<'_, str>; 7]> = rows(results)
        .into_iter()
        .map(|r| {
            [
                r.namespace,
                r.kind,
                r.name,
                r.container,
                r.image,
                r.status,
                r.reason,
            ]
            .map(escape_controls)
        })
        .collect();
    let cells: Vec<[&str; 7]> = escaped
        .iter()
        .map(|row| row.each_ref().map(|c| &**c))
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(HEADER).chain(cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, width))| {
                if i + 1 == row.len() {
                    cell.to_string()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// JUnit XML: one test suite, one test case per container reference (class name
/// `namespace/kind/name`, name `container: image`), failing with its status as type
/// and message, and its reason as text.
pub(crate) fn junit(
    results: &[(ContainerRef, CheckOutcome)],
) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new("pullwatch image availability");
    for row in rows(results) {
        // Control characters escaped as in the table: XML 1.0 cannot carry most of
        // them, and the writer would drop them (a refused image would look valid).
        let [namespace, kind, name, container, image, reason] = [
            row.namespace,
            row.kind,
            row.name,
            row.container,
            row.image,
            row.reason,
        ]
        .map(escape_controls);
        let status = if row.status == pullwatch::CheckStatus::Available.as_str() {
            TestCaseStatus::success()
        } else {
            let mut failure = TestCaseStatus::non_success(NonSuccessKind::Failure);
            failure
                .set_type(row.status)
                .set_message(format!("{}: {reason}", row.status))
                .set_description(reason.as_ref());
            failure
        };
        let mut case = TestCase::new(format!("{container}: {image}"), status);
        case.set_classname(format!("{namespace}/{kind}/{name}"));
        suite.add_test_case(case);
    }
    let mut report = Report::new("pullwatch");
    report.add_test_suite(suite);
    report.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::WorkloadKind;
    use pullwatch::CheckStatus;

    fn results() -> Vec<(ContainerRef, CheckOutcome)> {
        vec![(
            ContainerRef {
                namespace: "ns".into(),
                kind: WorkloadKind::CronJob,
                name: "nightly".into(),
                container: "job".into(),
                image: "reg/x:1".into(),
            },
            CheckOutcome::new(CheckStatus::Absent, "manifest not found (HTTP 404)"),
        )]
    }

    #[test]
    fn json_keys_are_the_contract() {
        let value: serde_json::Value = serde_json::from_str(&json(&results()).unwrap()).unwrap();
        let object = value[0].as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7);
        for key in [
            "namespace",
            "kind",
            "name",
            "container",
            "image",
            "status",
            "reason",
        ] {
            assert!(object.contains_key(key), "{key}");
        }
        assert_eq!(object["kind"], "cronjob");
        assert_eq!(object["status"], "absent");
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(&results());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("STATUS"), lines[1].find("absent"));
        assert!(lines[1].ends_with("manifest not found (HTTP 404)"));
    }

    /// XML 1.0 cannot carry most control characters, and the JUnit writer drops them:
    /// an image refused for one showed as a valid-looking image. They are shown
    /// escaped, as the table shows them.
    #[test]
    fn junit_shows_control_characters_escaped() {
        let mut rows = results();
        rows[0].0.image = "reg/x:1\x1b".into();
        rows[0].0.name = "night\x07ly".into();
        rows[0].1 = CheckOutcome::new(
            CheckStatus::BadImageFormat,
            "invalid reference format: contains whitespace or control characters",
        );
        let xml = junit(&rows).unwrap();
        assert!(xml.contains("name=\"job: reg/x:1\\u{1b}\""), "{xml}");
        assert!(
            xml.contains("classname=\"ns/cronjob/night\\u{7}ly\""),
            "{xml}"
        );
    }

    #[test]
    fn table_escapes_control_and_bidi_characters() {
        let mut rows = results();
        rows[0].0.image = "reg/x:1\r\x1b[2K\x07\u{202E}evil".into();
        rows[0].1.reason = "line one\nline two\u{9b}".into();
        let text = table(&rows);
        assert_eq!(text.lines().count(), 2, "{text}");
        for raw in ['\r', '\x1b', '\x07', '\u{202E}', '\u{9b}'] {
            assert!(!text.contains(raw), "{raw:?} in {text}");
        }
        assert!(
            text.contains("reg/x:1\\u{d}\\u{1b}[2K\\u{7}\\u{202e}evil"),
            "{text}"
        );
        assert!(text.contains("line one\\u{a}line two\\u{9b}"), "{text}");
    }
}
