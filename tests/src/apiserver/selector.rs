//! Label and field selectors with the grammar the API server accepts.

use std::collections::BTreeMap;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values, found {rest:?}"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(format!("invalid label value: {bad:?}"));
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses a selector; an empty string selects everything.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("found empty requirement in {s:?}"));
            }
            reqs.push(Self::parse_req(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    fn parse_req(part: &str) -> Result<LabelReq, String> {
        if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            if !valid_key(key) {
                return Err(format!("invalid label key: {key:?}"));
            }
            return Ok(LabelReq::NotExists(key.to_owned()));
        }
        // Set-based: `key in (a,b)`, `key notin (a,b)`.
        let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
        if words.len() == 2 {
            let key = words[0];
            let rest = words[1].trim_start();
            if let Some(set) = rest.strip_prefix("notin") {
                if valid_key(key) && set.trim_start().starts_with('(') {
                    return Ok(LabelReq::NotIn(key.to_owned(), parse_set(set)?));
                }
            } else if let Some(set) = rest.strip_prefix("in")
                && valid_key(key)
                && set.trim_start().starts_with('(')
            {
                return Ok(LabelReq::In(key.to_owned(), parse_set(set)?));
            }
        }
        for (op, ctor) in [("!=", 0u8), ("==", 1), ("=", 1), (">", 2), ("<", 3)] {
            if let Some(i) = part.find(op) {
                let key = part[..i].trim();
                let value = part[i + op.len()..].trim();
                if !valid_key(key) {
                    return Err(format!("invalid label key: {key:?}"));
                }
                return match ctor {
                    0 | 1 => {
                        if !valid_value(value) {
                            return Err(format!("invalid label value: {value:?}"));
                        }
                        Ok(if ctor == 0 {
                            LabelReq::NotEq(key.to_owned(), value.to_owned())
                        } else {
                            LabelReq::Eq(key.to_owned(), value.to_owned())
                        })
                    }
                    _ => {
                        let n: i64 = value
                            .parse()
                            .map_err(|_| format!("invalid integer value: {value:?}"))?;
                        Ok(if ctor == 2 {
                            LabelReq::Gt(key.to_owned(), n)
                        } else {
                            LabelReq::Lt(key.to_owned(), n)
                        })
                    }
                };
            }
        }
        if !valid_key(part) {
            return Err(format!("invalid label key: {part:?}"));
        }
        Ok(LabelReq::Exists(part.to_owned()))
    }

    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Eq(k, v) => labels.get(k) == Some(v),
            LabelReq::NotEq(k, v) => labels.get(k) != Some(v),
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelReq::Gt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

/// A parsed `fieldSelector`: every term must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

/// Splits at unescaped commas and unescapes `\,`, `\=`, `\\`.
fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push('\\');
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Position of the first unescaped occurrence of `op`.
fn find_unescaped(s: &str, op: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(op) {
            return Some(i);
        }
        i += 1;
    }
    None
}

impl FieldSelector {
    /// Parses a selector; `supported` says which field labels the resource accepts (the
    /// real server rejects others with 400 "field label not supported").
    pub fn parse(s: &str, supported: &dyn Fn(&str) -> bool) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(terms));
        }
        for part in split_escaped(s) {
            let (i, op) = ["!=", "==", "="]
                .iter()
                .find_map(|op| find_unescaped(&part, op).map(|i| (i, *op)))
                .ok_or_else(|| format!("invalid selector: '{s}'; can't understand '{part}'"))?;
            let key = unescape(part[..i].trim());
            let value = unescape(&part[i + op.len()..]);
            if !supported(&key) {
                return Err(format!("field label not supported: {key}"));
            }
            terms.push((key, op == "!=", value));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the field values (looked up by `get`) satisfy every term.
    pub fn matches(&self, get: &dyn Fn(&str) -> String) -> bool {
        self.0
            .iter()
            .all(|(k, negated, v)| (get(k) == *v) != *negated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("app in (web, api),tier", true),
            ("app notin (web)", false),
            ("!missing", true),
            ("!app", false),
            ("missing", false),
            ("n>4,n<6", true),
            ("missing!=x", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    #[test]
    fn field_selectors() {
        let supported = |k: &str| matches!(k, "type" | "metadata.name");
        let f = FieldSelector::parse("type=kubernetes.io/dockerconfigjson", &supported).unwrap();
        assert!(f.matches(&|k| if k == "type" {
            "kubernetes.io/dockerconfigjson".into()
        } else {
            String::new()
        }));
        let f = FieldSelector::parse("type!=a\\,b,metadata.name==x", &supported).unwrap();
        assert!(f.matches(&|k| if k == "type" { "a".into() } else { "x".into() }));
        assert!(!f.matches(&|k| if k == "type" {
            "a,b".into()
        } else {
            "x".into()
        }));
        assert_eq!(
            FieldSelector::parse("spec.foo=1", &supported).unwrap_err(),
            "field label not supported: spec.foo"
        );
    }
}
