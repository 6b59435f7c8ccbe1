//! `WWW-Authenticate` challenges (RFC 7235 §4.1): one hand parser for the whole project.
//!
//! A header value may hold several challenges (`Basic realm="r", Bearer realm="..."`),
//! each a scheme and comma-separated `name=value` parameters whose values are tokens or
//! quoted strings. Quoted strings may contain commas, `=` and backslash escapes
//! (`\"`, `\\`): the splitting is done on the grammar, never on raw commas.

/// One challenge: the scheme (lower-cased) and its parameters (names lower-cased,
/// values unescaped), in header order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first value of parameter `name` (case-insensitive).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a registry asks to be authenticated, reduced to what a client acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Basic`: send the username and password with every request.
    Basic,
    /// `Bearer`: fetch a token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.at += c.len_utf8();
        }
    }

    fn skip(&mut self, what: impl Fn(char) -> bool) {
        while let Some(c) = self.peek() {
            if !what(c) {
                break;
            }
            self.bump();
        }
    }

    fn token(&mut self) -> &'a str {
        let start = self.at;
        self.skip(is_tchar);
        &self.text[start..self.at]
    }

    /// A quoted string, the cursor on its opening quote. Unterminated: the rest.
    fn quoted(&mut self) -> String {
        self.bump();
        let mut value = String::new();
        while let Some(c) = self.peek() {
            self.bump();
            match c {
                '"' => return value,
                '\\' => {
                    if let Some(escaped) = self.peek() {
                        self.bump();
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        value
    }
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Every challenge in one header value.
pub fn parse(value: &str) -> Vec<Challenge> {
    let mut cursor = Cursor { text: value, at: 0 };
    let mut challenges = Vec::new();
    loop {
        cursor.skip(|c| c == ',' || c.is_whitespace());
        if cursor.done() {
            break;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            // Not a token: skip the character rather than loop on it.
            cursor.bump();
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            let before = cursor.at;
            cursor.skip(|c| c == ',' || c.is_whitespace());
            let name = cursor.token();
            cursor.skip(is_space);
            if name.is_empty() || cursor.peek() != Some('=') {
                // The next challenge's scheme (or a token68): leave it to the outer loop.
                cursor.at = before;
                break;
            }
            cursor.bump();
            cursor.skip(is_space);
            let value = if cursor.peek() == Some('"') {
                cursor.quoted()
            } else {
                cursor.token().to_string()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        challenges.push(challenge);
    }
    challenges
}

/// What to do about a 401, from all its `WWW-Authenticate` values: a Bearer challenge
/// with a realm wins over Basic (as containerd and Docker prefer it); None when neither
/// is offered.
pub fn auth_scheme<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<AuthScheme> {
    let mut basic = false;
    for value in values {
        for challenge in parse(value) {
            match challenge.scheme.as_str() {
                "bearer" => {
                    if let Some(realm) = challenge.param("realm").filter(|r| !r.is_empty()) {
                        return Some(AuthScheme::Bearer {
                            realm: realm.to_string(),
                            service: challenge.param("service").map(str::to_string),
                            scope: challenge.param("scope").map(str::to_string),
                        });
                    }
                }
                "basic" => basic = true,
                _ => {}
            }
        }
    }
    basic.then_some(AuthScheme::Basic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn registry_challenges() {
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#),
            [Challenge {
                scheme: "basic".into(),
                params: params(&[("realm", "Registry Realm")])
            }]
        );
        // Docker Hub's form: the scope itself contains commas inside the quotes.
        let hub = parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(hub.len(), 1);
        assert_eq!(
            hub[0].param("scope"),
            Some("repository:library/nginx:pull,push")
        );
        assert_eq!(hub[0].param("SERVICE"), Some("registry.docker.io"));
        // Tokens, spaces around '=', escapes inside quotes.
        let odd = parse(
            r#"Bearer realm = "https://a/t?x=1,y=2" , service=reg, error="say \"no\", \\ ok""#,
        );
        assert_eq!(
            odd[0].params,
            params(&[
                ("realm", "https://a/t?x=1,y=2"),
                ("service", "reg"),
                ("error", r#"say "no", \ ok"#)
            ])
        );
    }

    #[test]
    fn several_challenges_in_one_value_and_odd_input() {
        let both = parse(r#"Basic realm="a, b", Bearer realm="https://t",service="s""#);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].scheme, "basic");
        assert_eq!(both[0].param("realm"), Some("a, b"));
        assert_eq!(both[1].scheme, "bearer");
        assert_eq!(both[1].param("service"), Some("s"));
        assert_eq!(parse(""), []);
        assert_eq!(parse(" , ,"), []);
        // Garbage never loops or panics.
        for text in [
            r#"""#,
            r#"Bearer realm="unterminated"#,
            "=,=",
            "Bearer ,,,",
            "Négo é=ü",
        ] {
            let _ = parse(text);
        }
        assert_eq!(
            parse(r#"Bearer realm="unterminated"#)[0].param("realm"),
            Some("unterminated")
        );
    }

    #[test]
    fn bearer_wins_over_basic_and_needs_a_realm() {
        assert_eq!(
            auth_scheme([
                r#"Basic realm="r""#,
                r#"Bearer realm="https://t/token",service="s""#
            ]),
            Some(AuthScheme::Bearer {
                realm: "https://t/token".into(),
                service: Some("s".into()),
                scope: None
            })
        );
        assert_eq!(auth_scheme([r#"Basic realm="r""#]), Some(AuthScheme::Basic));
        assert_eq!(auth_scheme(["Bearer service=x"]), None);
        assert_eq!(auth_scheme(["Negotiate abc"]), None);
    }
}
