//! A hostile registry and token service that echo the credentials they receive, in
//! every encoding, in their error bodies and in the HTTP reason phrase (which clients
//! such as containerd quote in their errors). Raw HTTP/1.1 over TCP, so the reason
//! phrase is the server's to choose; one request per connection.
//!
//! Which encoding a request gets back is chosen by the repository name it asks for
//! (`enc0`, `enc1`, ... in the path or the token request's `scope`), so every encoding
//! reaches a reason whole even where a client quotes only the start of a body; any
//! other repository gets all of them at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::serve::{LoopbackListener, LoopbackServer};

/// What the token endpoint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    /// Refuses every token request (401), echoing what it got.
    TokenRefuses,
    /// Issues a bearer token (containing the canary marker) to requests carrying
    /// credentials; the registry then refuses it (403), echoing it and the credentials.
    TokenIssues,
}

/// The bearer token [`EchoMode::TokenIssues`] hands out: the canary marker inside, so
/// any echo of it is caught.
pub const ISSUED_TOKEN: &str = "tok-CANARY-issued-bearer-7Hq2";

/// The running echo server.
pub struct EchoRegistry {
    server: LoopbackServer,
    seen: Arc<Mutex<Vec<String>>>,
}

impl EchoRegistry {
    /// Binds a loopback port and serves until dropped.
    pub async fn start(mode: EchoMode) -> Result<EchoRegistry> {
        let listener = LoopbackListener::bind("the echo registry").await?;
        let addr = listener.addr();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = seen.clone();
        let server = listener.serve(move |stream, _peer| {
            let recorded = recorded.clone();
            async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    answer(stream, addr, mode, &recorded),
                )
                .await;
            }
        });
        Ok(EchoRegistry { server, seen })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// Every request line seen, for diagnostics.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The echoes of `user`/`password` (and a bearer token, if one came), one per
/// encoding: raw, the `Basic` header, base64 of `user:password` shifted by one and by
/// two bytes inside a longer run (standard and URL-safe), JSON-escaped (serde and Go),
/// form- and percent-encoded, and the bearer token.
pub fn echo_encodings(user: &str, password: &str, bearer: Option<&str>) -> Vec<String> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let url_b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(bytes);
    let user_pass = format!("{user}:{password}");
    let json = serde_json::to_string(password).unwrap_or_default();
    let go_json = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let form: String = form_urlencoded::byte_serialize(password.as_bytes()).collect();
    let percent_lower: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02x}"),
        })
        .collect();
    let mut encodings = vec![
        format!("password {password} end"),
        format!("got Authorization: Basic {}", b64(user_pass.as_bytes())),
        format!("run {}", b64(format!("x{user_pass}\"}}").as_bytes())),
        format!(
            "run {}",
            url_b64(format!("{{\"a\":\"{user_pass}").as_bytes())
        ),
        format!("{{\"password\":{json}}}"),
        format!("{{\"password\":{go_json}}}"),
        format!("body grant_type=password&username={user}&password={form}&service=echo"),
        format!("pw={percent_lower}"),
    ];
    if let Some(token) = bearer {
        encodings.push(format!("Authorization: Bearer {token}"));
    }
    encodings
}

struct Request {
    line: String,
    authorization: Option<String>,
    body: String,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer[0] == 0x16 {
            // A TLS hello: answer in plain HTTP, as Go's server does, so clients that
            // may fall back to plain HTTP do.
            let _ = stream
                .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                .await;
            return None;
        }
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next()?.to_string();
    let mut authorization = None;
    let mut length = 0usize;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().unwrap_or(0).min(64 * 1024);
        }
    }
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        line,
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The user and password a request carries: `Basic` or a token request's form.
fn credentials_of(request: &Request) -> Option<(String, String)> {
    if let Some(basic) = request
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        return Some((user.to_string(), password.to_string()));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(request.body.as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Some((get("username").unwrap_or_default(), get("password")?))
}

/// `encN` named in the request (path or scope), if any.
fn chosen_encoding(line: &str) -> Option<usize> {
    let at = line.find("enc")?;
    let digits: String = line[at + 3..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

async fn answer(
    mut stream: TcpStream,
    addr: SocketAddr,
    mode: EchoMode,
    seen: &Mutex<Vec<String>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(request.line.clone());
    let bearer = request
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    let credentials = credentials_of(&request);
    let encodings = match &credentials {
        Some((user, password)) => echo_encodings(user, password, bearer.as_deref()),
        None => bearer
            .iter()
            .map(|t| format!("Authorization: Bearer {t}"))
            .collect(),
    };
    let echo = match chosen_encoding(&request.line) {
        Some(n) if !encodings.is_empty() => encodings[n % encodings.len()].clone(),
        _ => encodings.join(" | "),
    };
    let path = request.line.split(' ').nth(1).unwrap_or("/").to_string();
    let (status, reason, extra) = if path.starts_with("/token") {
        match (mode, &credentials) {
            (EchoMode::TokenIssues, Some(_)) => (200, "OK".to_string(), String::new()),
            _ => (401, format!("Unauthorized {echo}"), String::new()),
        }
    } else if bearer.is_some() {
        (403, format!("Forbidden {echo}"), String::new())
    } else {
        let scope = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split("/manifests/").next())
            .filter(|p| !p.is_empty())
            .map(|repo| format!(",scope=\"repository:{repo}:pull\""))
            .unwrap_or_default();
        (
            401,
            format!("Unauthorized {echo}"),
            format!(
                "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"echo\"{scope}\r\n"
            ),
        )
    };
    let body = if status == 200 {
        serde_json::json!({"token": ISSUED_TOKEN, "access_token": ISSUED_TOKEN, "expires_in": 300})
            .to_string()
    } else {
        serde_json::json!({"errors": [{"code": "DENIED", "message": echo, "detail": echo}]})
            .to_string()
    };
    // A reason phrase is visible ASCII and spaces only.
    let reason: String = reason
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(2000)
        .collect();
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nDocker-Distribution-API-Version: registry/2.0\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
