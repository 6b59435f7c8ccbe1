//! Response compression both binaries' `/metrics` offer: Prometheus asks for gzip on
//! every scrape.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

/// Whether a request's `Accept-Encoding` admits gzip (RFC 9110 §12.5.3): `gzip` or
/// `x-gzip` with a weight above 0, else `*` with one; a coding without a weight has 1.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let codings = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|coding| {
            let mut params = coding.split(';');
            let name = params
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let weight = params
                .filter_map(|param| {
                    let (key, value) = param.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| value.trim().parse::<f32>().unwrap_or(0.0))
                })
                .next_back()
                .unwrap_or(1.0);
            (name, weight)
        });
    let mut named = None;
    let mut any = None;
    for (name, weight) in codings {
        match name.as_str() {
            "gzip" | "x-gzip" => named = Some(weight),
            "*" => any = Some(weight),
            _ => {}
        }
    }
    named.or(any).is_some_and(|weight| weight > 0.0)
}

/// `body` as one gzip member, at the fastest level (it costs less than sending the
/// text uncompressed).
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accepts(value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        accepts_gzip(&headers)
    }

    #[test]
    fn gzip_is_accepted_as_http_says() {
        assert!(accepts("gzip"), "Prometheus's header");
        assert!(accepts("deflate, GZIP;q=0.5"));
        assert!(accepts("x-gzip"));
        assert!(accepts("br;q=1.0, *;q=0.1"));
        assert!(!accepts("identity"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip; q=0.000"));
        assert!(!accepts("gzipped"));
        assert!(!accepts("gzip;q=0, *"), "refused by name, whatever * says");
        assert!(accepts("identity, *"));
        assert!(!accepts(""));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
