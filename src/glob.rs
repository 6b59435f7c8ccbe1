//! Go's `path/filepath.Match` (Unix flavour), the one glob syntax the kubelet uses for
//! keyring wildcards and credential-provider `matchImages`. Implemented once here so
//! that the keyring (root crate) and the node agent's plugins agree.
//!
//! ```text
//! pattern:   { term }
//! term:      '*'                  any sequence of non-'/' characters
//!            '?'                  any single non-'/' character
//!            '[' [ '^' ] { character-range } ']'   character class (non-empty)
//!            c                    the character c (c != '*', '?', '\\', '[')
//!            '\\' c               the character c
//! character-range:
//!            c                    (c != '\\', '-', ']')
//!            '\\' c
//!            lo '-' hi            lo <= c <= hi
//! ```
//!
//! As in Go (since 1.16), a malformed pattern is an error even when the match fails
//! before reaching the malformed part.

/// The pattern is malformed (Go's `filepath.ErrBadPattern`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern")]
pub struct BadPattern;

const SEPARATOR: u8 = b'/';

/// Whether `name` matches the shell pattern `pattern`, entirely.
pub fn matches(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    // Go works on bytes (a '*' may skip into the middle of a UTF-8 sequence), so do we.
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing '*' matches the rest of the name unless it has a '/'.
            return Ok(!name.contains(&SEPARATOR));
        }
        // A match at the current position; the last chunk must exhaust the name.
        let attempt = match_chunk_bytes(chunk, name);
        if let Ok(Some(t)) = attempt
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        attempt?;
        if star {
            // Skip i+1 bytes of the name, never a '/'.
            let mut i = 0;
            while i < name.len() && name[i] != SEPARATOR {
                match match_chunk_bytes(chunk, &name[i + 1..])? {
                    Some(t) if pattern.is_empty() && !t.is_empty() => {}
                    Some(t) => {
                        name = t;
                        continue 'pattern;
                    }
                    None => {}
                }
                i += 1;
            }
        }
        // Before answering "no", make sure the rest of the pattern is well-formed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk_bytes(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// The next run of the pattern: leading stars, then a star-free chunk.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut start = 0;
    while start < pattern.len() && pattern[start] == b'*' {
        start += 1;
    }
    let star = start > 0;
    let mut in_range = false;
    let mut i = start;
    while i < pattern.len() {
        match pattern[i] {
            // An escape at the very end is reported by match_chunk.
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[start..i], &pattern[i..])
}

/// Go's `matchChunk` on bytes: `Some(rest)` when `chunk` matches the start of `s`.
/// After a mismatch the chunk is still read to the end, to report a bad pattern.
fn match_chunk_bytes<'a>(
    mut chunk: &[u8],
    mut s: &'a [u8],
) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&first) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match first {
            b'[' => {
                let mut r = 0u32;
                if !failed {
                    let (decoded, n) = decode_rune(s);
                    r = decoded;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_escaped(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_escaped(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == SEPARATOR {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if first == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// Go's `getEsc`: a possibly escaped character of a character class, which must be
/// followed by something (at least the closing ']').
fn get_escaped(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (r, n) = decode_rune(chunk);
    if r == RUNE_ERROR && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

const RUNE_ERROR: u32 = 0xFFFD;

/// Go's `utf8.DecodeRune`: the first code point and its length; `(RUNE_ERROR, 1)`
/// for an invalid or truncated sequence (and for empty input, `(RUNE_ERROR, 0)`).
fn decode_rune(s: &[u8]) -> (u32, usize) {
    if s.is_empty() {
        return (RUNE_ERROR, 0);
    }
    let len = match s[0] {
        0x00..=0x7F => return (u32::from(s[0]), 1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (RUNE_ERROR, 1),
    };
    match s.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(text) => text
            .chars()
            .next()
            .map_or((RUNE_ERROR, 1), |c| (u32::from(c), len)),
        None => (RUNE_ERROR, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `path/filepath` `matchTests` (match_test.go), verbatim. `Err` is
    /// `ErrBadPattern`.
    #[test]
    fn go_match_table() {
        let table: &[(&str, &str, Result<bool, BadPattern>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "abc", Ok(true)),
            ("a*", "ab/c", Ok(false)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Ok(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[c]", "abc", Ok(true)),
            ("ab[b-d]", "abc", Ok(true)),
            ("ab[e-g]", "abc", Ok(false)),
            ("ab[^c]", "abc", Ok(false)),
            ("ab[^b-d]", "abc", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a[^a]b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("a[^a][^a][^a]b", "a☺b", Ok(false)),
            ("[a-ζ]*", "α", Ok(true)),
            ("*[a-ζ]", "A", Ok(false)),
            ("a?b", "a/b", Ok(false)),
            ("a*b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[\\-]", "-", Ok(true)),
            ("[x\\-]", "x", Ok(true)),
            ("[x\\-]", "-", Ok(true)),
            ("[x\\-]", "z", Ok(false)),
            ("[\\-x]", "x", Ok(true)),
            ("[\\-x]", "-", Ok(true)),
            ("[\\-x]", "a", Ok(false)),
            ("[]a]", "]", Err(BadPattern)),
            ("[-]", "-", Err(BadPattern)),
            ("[x-]", "x", Err(BadPattern)),
            ("[x-]", "-", Err(BadPattern)),
            ("[x-]", "z", Err(BadPattern)),
            ("[-x]", "x", Err(BadPattern)),
            ("[-x]", "-", Err(BadPattern)),
            ("[-x]", "a", Err(BadPattern)),
            ("\\", "a", Err(BadPattern)),
            ("[a-b-c]", "a", Err(BadPattern)),
            ("[", "a", Err(BadPattern)),
            ("[^", "a", Err(BadPattern)),
            ("[^bc", "a", Err(BadPattern)),
            ("a[", "a", Err(BadPattern)),
            ("a[", "ab", Err(BadPattern)),
            ("a[", "x", Err(BadPattern)),
            ("a/b[", "x", Err(BadPattern)),
            ("*x", "xxx", Ok(true)),
        ];
        for (pattern, name, want) in table {
            assert_eq!(
                matches(pattern, name),
                *want,
                "Match({pattern:?}, {name:?})"
            );
        }
    }

    #[test]
    fn host_label_globs_as_the_keyring_uses_them() {
        assert_eq!(matches("*", "registry"), Ok(true));
        assert_eq!(matches("*", ""), Ok(true));
        assert_eq!(matches("reg-[0-9]", "reg-7"), Ok(true));
        assert_eq!(matches("reg-[0-9]", "reg-x"), Ok(false));
        assert_eq!(matches("gcr", "GCR"), Ok(false), "case-sensitive, as Go");
        // A class is one character: `[::1]` never matches the text `[::1]`.
        assert_eq!(matches("[::1]", "[::1]"), Ok(false));
        assert_eq!(matches("[::1]", ":"), Ok(true));
        assert_eq!(matches("ok*", ""), Ok(false));
        assert_eq!(
            matches("bad[", ""),
            Err(BadPattern),
            "malformed, whatever the name"
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(pattern in "[a-c*?\\[\\]\\\\^/-]{0,12}|\\PC{0,12}", name in "[a-c/-]{0,12}|\\PC{0,12}") {
                let _ = matches(&pattern, &name);
            }

            // A pattern without metacharacters matches exactly itself.
            #[test]
            fn literals_match_themselves(text in "[a-z0-9.-]{0,16}") {
                prop_assert_eq!(matches(&text, &text), Ok(true));
                let other = format!("{text}x");
                prop_assert_eq!(matches(&text, &other), Ok(false));
            }
        }
    }
}
