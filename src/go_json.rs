//! JSON read as Go's `encoding/json` (`json.Unmarshal`) reads it into a Go struct.
//!
//! Why not serde: what pullwatch judges was written for Go programs (containerd reads
//! manifests, indexes and image configs into image-spec's structs; the kubelet reads
//! docker configs), and Go reads differently: object keys match fields
//! case-insensitively, a repeated key decodes into the value already there (a struct
//! is merged, a slice reuses its elements), `null` is a no-op except for pointers,
//! slices and maps, invalid UTF-8 and lone surrogates in strings become U+FFFD, and
//! nesting goes 10,000 deep. serde refuses or reads differently each of these, and a
//! difference makes pullwatch call broken what a node pulls, or the reverse.
//!
//! The reader streams: a Rust value implementing [`GoDecode`] decodes the next JSON
//! value *into itself* (as Go decodes into an existing value), with the type rules of
//! the Go type it stands for; values nobody reads are skipped without recursion. As
//! in Go, a syntax error anywhere wins over a wrong-typed value (Go checks the whole
//! text before decoding), and a wrong-typed value does not stop the reading.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Deref;

/// Go's `maxNestingDepth`: arrays and objects nested deeper are a syntax error.
const MAX_DEPTH: usize = 10_000;

/// Why a body does not decode. Neither variant quotes the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GoJsonError {
    /// Not JSON (`json.SyntaxError`): where, 1-based, the column in bytes.
    #[error("not valid JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    /// JSON, but a value Go cannot store in its field (`json.UnmarshalTypeError`, or
    /// a field type's own `UnmarshalJSON` refusing it): where the first such value is.
    #[error("a value of the wrong type for its field (line {line}, column {column})")]
    Form { line: usize, column: usize },
}

/// A syntax error at this byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Syntax(usize);

/// The result of decoding one value: only a syntax error stops the reading.
pub(crate) type Decoded = Result<(), Syntax>;

/// A Rust value standing for a Go type: decodes the next JSON value into itself with
/// that Go type's rules, calling [`Reader::mismatch`] for a value of the wrong type.
pub(crate) trait GoDecode {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded;
}

/// `body` decoded into a zero `T`, as `json.Unmarshal(body, &t)` does.
pub(crate) fn unmarshal<T: GoDecode + Default>(body: &[u8]) -> Result<T, GoJsonError> {
    let mut value = T::default();
    unmarshal_into(body, &mut value)?;
    Ok(value)
}

/// `body` decoded into `value`, as `json.Unmarshal(body, &value)` does.
pub(crate) fn unmarshal_into<T: GoDecode>(body: &[u8], value: &mut T) -> Result<(), GoJsonError> {
    let mut r = Reader {
        text: body,
        pos: 0,
        depth: 0,
        mismatch_at: None,
    };
    let end = value.decode(&mut r).and_then(|()| {
        r.skip_space();
        if r.pos < r.text.len() {
            Err(Syntax(r.pos))
        } else {
            Ok(())
        }
    });
    // 1-based line and byte column of offset `at`.
    let position = |at: usize| {
        let before = &body[..at.min(body.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        (
            1 + before.iter().filter(|&&b| b == b'\n').count(),
            1 + before.len() - line_start,
        )
    };
    match (end, r.mismatch_at) {
        (Err(Syntax(at)), _) => {
            let (line, column) = position(at);
            Err(GoJsonError::Syntax { line, column })
        }
        (Ok(()), Some(at)) => {
            let (line, column) = position(at);
            Err(GoJsonError::Form { line, column })
        }
        (Ok(()), None) => Ok(()),
    }
}

/// Whether a JSON object key names a Go struct field with the ASCII name `field`,
/// as `encoding/json` folds case (Go's `bytes.EqualFold`): for ASCII names the only
/// non-ASCII runes that fold to them are U+017F (ſ, an s) and U+212A (Kelvin, a k).
pub(crate) fn field_is(key: &str, field: &str) -> bool {
    let mut key_chars = key.chars().map(|c| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    let mut field_chars = field.chars().map(|c| c.to_ascii_lowercase());
    loop {
        match (key_chars.next(), field_chars.next()) {
            (None, None) => return true,
            (Some(k), Some(f)) if k == f => {}
            _ => return false,
        }
    }
}

/// Bytes as Go makes text of them in a JSON string: each byte of an invalid UTF-8
/// sequence becomes one U+FFFD (`utf8.DecodeRune` takes one byte at a time).
pub(crate) fn go_text(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut text = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        text.extend(chunk.invalid().iter().map(|_| char::REPLACEMENT_CHARACTER));
    }
    Cow::Owned(text)
}

/// The kind of the next JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// A JSON text being decoded.
pub(crate) struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
    /// Arrays and objects open around the reader.
    depth: usize,
    /// Where the first value of the wrong type for its Go field starts (reported at
    /// the end, as Go reports the earliest).
    mismatch_at: Option<usize>,
}

impl<'a> Reader<'a> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Decoded {
        self.skip_space();
        if self.text.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Syntax(self.pos))
        }
    }

    /// The kind of the next value (not consumed).
    pub(crate) fn peek(&mut self) -> Result<Kind, Syntax> {
        self.skip_space();
        match self.text.get(self.pos) {
            Some(b'{') => Ok(Kind::Object),
            Some(b'[') => Ok(Kind::Array),
            Some(b'"') => Ok(Kind::String),
            Some(b'-' | b'0'..=b'9') => Ok(Kind::Number),
            Some(b't' | b'f') => Ok(Kind::Bool),
            Some(b'n') => Ok(Kind::Null),
            _ => Err(Syntax(self.pos)),
        }
    }

    /// Records that the next value has the wrong type for its Go field (Go's
    /// `UnmarshalTypeError`), and skips it.
    pub(crate) fn mismatch(&mut self) -> Decoded {
        self.skip_space();
        self.mismatched_at(self.pos);
        self.skip()
    }

    /// Records that the value at `at` has the wrong type for its Go field.
    fn mismatched_at(&mut self, at: usize) {
        self.mismatch_at.get_or_insert(at);
    }

    /// Skips the next value, checking its syntax (arrays and objects without
    /// recursion, so depth costs no stack).
    pub(crate) fn skip(&mut self) -> Decoded {
        let outer = self.depth;
        // Values still wanted at this point: the opening bracket's kind.
        let mut open: Vec<Kind> = Vec::new();
        loop {
            match self.peek()? {
                Kind::Object => {
                    self.enter()?;
                    open.push(Kind::Object);
                    self.skip_space();
                    if self.text.get(self.pos) == Some(&b'}') {
                        self.pos += 1;
                        self.depth -= 1;
                        open.pop();
                    } else {
                        self.skip_key()?;
                        continue;
                    }
                }
                Kind::Array => {
                    self.enter()?;
                    open.push(Kind::Array);
                    self.skip_space();
                    if self.text.get(self.pos) == Some(&b']') {
                        self.pos += 1;
                        self.depth -= 1;
                        open.pop();
                    } else {
                        continue;
                    }
                }
                Kind::String => self.string_span().map(|_| ())?,
                Kind::Number => self.number().map(|_| ())?,
                Kind::Bool | Kind::Null => self.literal().map(|_| ())?,
            }
            // A value ended: close what it ends, or go on to the next member.
            loop {
                let Some(&kind) = open.last() else {
                    debug_assert_eq!(self.depth, outer);
                    return Ok(());
                };
                self.skip_space();
                let close = if kind == Kind::Object { b'}' } else { b']' };
                match self.text.get(self.pos) {
                    Some(b',') => {
                        self.pos += 1;
                        if kind == Kind::Object {
                            self.skip_key()?;
                        }
                        break;
                    }
                    Some(&b) if b == close => {
                        self.pos += 1;
                        self.depth -= 1;
                        open.pop();
                    }
                    _ => return Err(Syntax(self.pos)),
                }
            }
        }
    }

    /// Into the array or object whose bracket is next.
    fn enter(&mut self) -> Decoded {
        self.skip_space();
        if !matches!(self.text.get(self.pos), Some(b'{' | b'[')) {
            return Err(Syntax(self.pos));
        }
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Syntax(self.pos - 1));
        }
        Ok(())
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<String, Syntax> {
        let key = self.string()?;
        self.expect(b':')?;
        Ok(key)
    }

    /// An object key and its colon, not kept.
    fn skip_key(&mut self) -> Decoded {
        self.string_span()?;
        self.expect(b':')
    }

    /// An object, each member's value decoded by `member` (given the key, it must
    /// consume the value).
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, String) -> Decoded,
    ) -> Decoded {
        self.skip_space();
        self.enter()?;
        self.skip_space();
        if self.text.get(self.pos) == Some(&b'}') {
            self.pos += 1;
        } else {
            loop {
                let key = self.key()?;
                member(self, key)?;
                self.skip_space();
                match self.text.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Syntax(self.pos)),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// An array, element `i` decoded by `element`; how many elements it had.
    pub(crate) fn array(
        &mut self,
        mut element: impl FnMut(&mut Self, usize) -> Decoded,
    ) -> Result<usize, Syntax> {
        self.skip_space();
        self.enter()?;
        self.skip_space();
        let mut n = 0;
        if self.text.get(self.pos) == Some(&b']') {
            self.pos += 1;
        } else {
            loop {
                element(self, n)?;
                n += 1;
                self.skip_space();
                match self.text.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Syntax(self.pos)),
                }
            }
        }
        self.depth -= 1;
        Ok(n)
    }

    /// A Go struct: each member whose key names a field (exactly, else folded as Go
    /// folds it, the first such field) is decoded by that field's entry; others are
    /// skipped. `null` leaves the struct alone; anything but an object is a mismatch.
    pub(crate) fn go_struct<T>(&mut self, value: &mut T, fields: &[Field<T>]) -> Decoded {
        match self.peek()? {
            Kind::Object => self.object(|r, key| {
                let field = fields
                    .iter()
                    .find(|(name, _)| *name == key)
                    .or_else(|| fields.iter().find(|(name, _)| field_is(&key, name)));
                match field {
                    Some((_, decode)) => decode(value, r),
                    None => r.skip(),
                }
            }),
            Kind::Null => self.skip(),
            _ => self.mismatch(),
        }
    }

    /// A string value; its text as Go unquotes it.
    pub(crate) fn string(&mut self) -> Result<String, Syntax> {
        let (start, end) = self.string_span()?;
        Ok(unquote(&self.text[start..end]))
    }

    /// A string value: where its content is (between the quotes, escapes as
    /// written), checked as Go's scanner checks it.
    pub(crate) fn string_span(&mut self) -> Result<(usize, usize), Syntax> {
        self.skip_space();
        if self.text.get(self.pos) != Some(&b'"') {
            return Err(Syntax(self.pos));
        }
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.text.get(self.pos) {
                None => return Err(Syntax(self.pos)),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok((start, self.pos - 1));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.text.get(self.pos) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            for _ in 0..4 {
                                match self.text.get(self.pos) {
                                    Some(b) if b.is_ascii_hexdigit() => self.pos += 1,
                                    _ => return Err(Syntax(self.pos)),
                                }
                            }
                        }
                        _ => return Err(Syntax(self.pos)),
                    }
                }
                Some(&b) if b < 0x20 => return Err(Syntax(self.pos)),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// A number value, as written (JSON's grammar, as Go's scanner checks it).
    pub(crate) fn number(&mut self) -> Result<&'a str, Syntax> {
        self.skip_space();
        let start = self.pos;
        let digits = |r: &mut Self| {
            let from = r.pos;
            while r.text.get(r.pos).is_some_and(u8::is_ascii_digit) {
                r.pos += 1;
            }
            if r.pos == from {
                Err(Syntax(r.pos))
            } else {
                Ok(())
            }
        };
        if self.text.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.text.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => digits(self)?,
            _ => return Err(Syntax(self.pos)),
        }
        if self.text.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.text.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.text.get(self.pos) {
                self.pos += 1;
            }
            digits(self)?;
        }
        // The grammar's bytes are ASCII.
        Ok(std::str::from_utf8(&self.text[start..self.pos]).unwrap_or_default())
    }

    /// `true`, `false` or `null`: which.
    pub(crate) fn literal(&mut self) -> Result<Kind, Syntax> {
        self.skip_space();
        for (word, kind) in [
            (&b"true"[..], Kind::Bool),
            (b"false", Kind::Bool),
            (b"null", Kind::Null),
        ] {
            if self.text[self.pos..].starts_with(word) {
                self.pos += word.len();
                return Ok(kind);
            }
        }
        // Where Go's scanner stops: the first byte not in any of the words.
        let rest = &self.text[self.pos..];
        let matched = [&b"true"[..], b"false", b"null"]
            .iter()
            .map(|w| {
                rest.iter()
                    .zip(w.iter())
                    .take_while(|(a, b)| a == b)
                    .count()
            })
            .max()
            .unwrap_or(0);
        Err(Syntax(self.pos + matched))
    }

    /// Decodes the next value with `decode`, and as a `json.RawMessage` into `raw`:
    /// for a key two Go structs read (containerd's `unknownDocument` and its own).
    pub(crate) fn keeping_raw(
        &mut self,
        raw: &mut RawMessage,
        decode: impl FnOnce(&mut Self) -> Decoded,
    ) -> Decoded {
        self.skip_space();
        let start = self.pos;
        decode(self)?;
        raw.len = self.pos - start;
        Ok(())
    }

    /// Decodes the next value into a zero `T` and drops it: for a Go field nobody
    /// reads, whose type still decides whether the document decodes.
    pub(crate) fn check<T: GoDecode + Default>(&mut self) -> Decoded {
        T::default().decode(self)
    }
}

/// A Go struct field: its JSON name and how to decode into it.
pub(crate) type Field<T> = (&'static str, fn(&mut T, &mut Reader<'_>) -> Decoded);

/// A string's content (between the quotes) as Go's `unquote` makes text of it:
/// escapes resolved, invalid UTF-8 and unpaired surrogates as U+FFFD.
fn unquote(raw: &[u8]) -> String {
    fn hex4(raw: &[u8]) -> Option<u32> {
        let digits = raw.get(..4)?;
        let text = std::str::from_utf8(digits).ok()?;
        u32::from_str_radix(text, 16).ok()
    }
    let mut text = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let run = raw[i..]
            .iter()
            .position(|&b| b == b'\\')
            .map_or(raw.len(), |p| i + p);
        text.push_str(&go_text(&raw[i..run]));
        i = run;
        if i >= raw.len() {
            break;
        }
        // An escape (the scanner checked its form).
        let escaped = raw.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let c = match escaped {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex4(&raw[i..]).unwrap_or(0xFFFD);
                i += 4;
                if (0xD800..0xE000).contains(&unit) {
                    // A surrogate: a pair with a following \u low surrogate, else U+FFFD
                    // (and the following escape read on its own).
                    let low = raw[i..]
                        .strip_prefix(b"\\u")
                        .and_then(hex4)
                        .filter(|low| (0xDC00..0xE000).contains(low) && unit < 0xDC00);
                    match low {
                        Some(low) => {
                            i += 6;
                            char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                                .unwrap_or(char::REPLACEMENT_CHARACTER)
                        }
                        None => char::REPLACEMENT_CHARACTER,
                    }
                } else {
                    char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER)
                }
            }
            other => char::from(other),
        };
        text.push(c);
    }
    text
}

// ---- Go types --------------------------------------------------------------------

/// `string`: a string sets it, `null` leaves it.
impl GoDecode for String {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        match r.peek()? {
            Kind::String => {
                *self = r.string()?;
                Ok(())
            }
            Kind::Null => r.skip(),
            _ => r.mismatch(),
        }
    }
}

/// `int64` (and `int` on 64-bit).
impl GoDecode for i64 {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        decode_integer(self, r)
    }
}

/// `uint8` (an element of a `[]byte` written as an array).
impl GoDecode for u8 {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        decode_integer(self, r)
    }
}

/// A Go integer: a number `strconv.ParseInt`/`ParseUint` takes whole (no fraction, no
/// exponent, in range), or `null`, which leaves it.
fn decode_integer<N: std::str::FromStr>(value: &mut N, r: &mut Reader<'_>) -> Decoded {
    match r.peek()? {
        Kind::Number => {
            let at = r.pos;
            match r.number()?.parse() {
                Ok(n) => *value = n,
                Err(_) => r.mismatched_at(at),
            }
            Ok(())
        }
        Kind::Null => r.skip(),
        _ => r.mismatch(),
    }
}

/// `bool`.
impl GoDecode for bool {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        match r.peek()? {
            Kind::Bool => {
                *self = r.text[r.pos] == b't';
                r.literal().map(|_| ())
            }
            Kind::Null => r.skip(),
            _ => r.mismatch(),
        }
    }
}

/// `*T`: `null` sets it to nil; anything else decodes into the value it points to,
/// allocated (zero) when nil.
impl<T: GoDecode + Default> GoDecode for Option<T> {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        if r.peek()? == Kind::Null {
            *self = None;
            return r.skip();
        }
        self.get_or_insert_with(T::default).decode(r)
    }
}

/// A struct-valued (not pointer) Go field kept as `Option` to know whether it was
/// ever given: `null` leaves it as it is; anything else decodes into it, zero when
/// not yet given.
pub(crate) fn decode_struct_value<T: GoDecode + Default>(
    value: &mut Option<T>,
    r: &mut Reader<'_>,
) -> Decoded {
    if r.peek()? == Kind::Null {
        return r.skip();
    }
    value.get_or_insert_with(T::default).decode(r)
}

/// A Go slice `[]T`. Decoding an array into a slice reuses its backing array: element
/// `i` decodes into what is there (kept from an earlier decode, even past the
/// slice's length: Go only grows the backing array when it is full, copying all of
/// it), then the slice is cut to the array's length. An empty array or `null` starts
/// afresh. Reads as the slice (`&[T]`).
#[derive(Clone, Debug)]
pub(crate) struct GoSlice<T> {
    backing: Vec<T>,
    len: usize,
}

impl<T> Default for GoSlice<T> {
    fn default() -> Self {
        GoSlice {
            backing: Vec::new(),
            len: 0,
        }
    }
}

impl<T> GoSlice<T> {
    /// The slice's elements.
    pub(crate) fn into_vec(mut self) -> Vec<T> {
        self.backing.truncate(self.len);
        self.backing
    }
}

/// Slices are equal by their elements (not what their backing array keeps past them).
impl<T: PartialEq> PartialEq for GoSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T> From<Vec<T>> for GoSlice<T> {
    fn from(items: Vec<T>) -> Self {
        GoSlice {
            len: items.len(),
            backing: items,
        }
    }
}

impl<T> Deref for GoSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.backing[..self.len]
    }
}

impl<'s, T> IntoIterator for &'s GoSlice<T> {
    type Item = &'s T;
    type IntoIter = std::slice::Iter<'s, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: GoDecode + Default> GoDecode for GoSlice<T> {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        match r.peek()? {
            Kind::Array => {
                let backing = &mut self.backing;
                let n = r.array(|r, i| {
                    if i == backing.len() {
                        backing.push(T::default());
                    }
                    backing[i].decode(r)
                })?;
                if n == 0 {
                    *self = GoSlice::default();
                } else {
                    self.len = n;
                }
                Ok(())
            }
            Kind::Null => {
                *self = GoSlice::default();
                r.skip()
            }
            _ => r.mismatch(),
        }
    }
}

/// `json.RawMessage`: any value, `null` included, as written (the last one given).
/// Only its length is kept: what containerd asks of one is `len(raw) != 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawMessage {
    len: usize,
}

impl RawMessage {
    /// Go's `len(raw) == 0`: no value was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl GoDecode for RawMessage {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.keeping_raw(self, Reader::skip)
    }
}

/// A Go map with string keys, `map[string]T`, kept: an object sets each key to its
/// value decoded into a zero `T` (Go zeroes the map's element for each key), keeping
/// the other keys; `null` empties it (a nil map).
#[derive(Clone, Debug)]
pub(crate) struct GoMap<T>(pub(crate) BTreeMap<String, T>);

impl<T> Default for GoMap<T> {
    fn default() -> Self {
        GoMap(BTreeMap::new())
    }
}

impl<T: GoDecode + Default> GoDecode for GoMap<T> {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        match r.peek()? {
            Kind::Object => r.object(|r, key| {
                let mut value = T::default();
                value.decode(r)?;
                self.0.insert(key, value);
                Ok(())
            }),
            Kind::Null => {
                self.0.clear();
                r.skip()
            }
            _ => r.mismatch(),
        }
    }
}

/// A Go map with string keys, `map[string]T`, checked only (nobody reads one here):
/// an object whose values are each a `T`, or `null`.
#[derive(Default)]
pub(crate) struct MapOf<T>(PhantomData<T>);

impl<T: GoDecode + Default> GoDecode for MapOf<T> {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        match r.peek()? {
            Kind::Object => r.object(|r, _| r.check::<T>()),
            Kind::Null => r.skip(),
            _ => r.mismatch(),
        }
    }
}

/// `struct{}` (a set's value: `map[string]struct{}`).
#[derive(Default)]
pub(crate) struct EmptyStruct;

impl GoDecode for EmptyStruct {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        r.go_struct(self, &[])
    }
}

/// `[]byte`, checked only: a string of padded standard base64 (`\r`, `\n` ignored,
/// as Go's `base64.StdEncoding`), an array of numbers 0 to 255, or `null`.
#[derive(Default)]
pub(crate) struct Bytes;

impl GoDecode for Bytes {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        use base64::Engine as _;
        use base64::alphabet::STANDARD;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        const GO_STD: GeneralPurpose = GeneralPurpose::new(
            &STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
        );
        match r.peek()? {
            Kind::String => {
                let at = r.pos;
                let text = r.string()?;
                let cleaned: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
                if GO_STD.decode(cleaned).is_err() {
                    r.mismatched_at(at);
                }
                Ok(())
            }
            Kind::Array => r.check::<GoSlice<u8>>(),
            Kind::Null => r.skip(),
            _ => r.mismatch(),
        }
    }
}

/// `*time.Time`, checked only: `null`, or a string whose text as written (escapes
/// not resolved: Go hands `UnmarshalJSON` the raw bytes) is RFC 3339 as Go ≥ 1.20's
/// `Time.UnmarshalJSON` takes it. Anything else is refused by `UnmarshalJSON`.
#[derive(Default)]
pub(crate) struct Time;

impl GoDecode for Time {
    fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
        match r.peek()? {
            Kind::String => {
                let (start, end) = r.string_span()?;
                if !rfc3339(&r.text[start..end]) {
                    r.mismatched_at(start - 1);
                }
                Ok(())
            }
            Kind::Null => r.skip(),
            _ => r.mismatch(),
        }
    }
}

/// Go's `parseRFC3339` (what `parseStrictRFC3339` accepts): `YYYY-MM-DDTHH:MM:SS`,
/// an optional `.` and digits, then `Z` or `±HH:MM`, each number in range.
fn rfc3339(s: &[u8]) -> bool {
    fn number(s: &[u8], min: u32, max: u32) -> Option<u32> {
        let n = s.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })?;
        (min..=max).contains(&n).then_some(n)
    }
    fn days_in(month: u32, year: u32) -> u32 {
        match month {
            2 if year.is_multiple_of(4)
                && (!year.is_multiple_of(100) || year.is_multiple_of(400)) =>
            {
                29
            }
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }
    if s.len() < "2006-01-02T15:04:05".len() {
        return false;
    }
    let date = (|| {
        let year = number(&s[0..4], 0, 9999)?;
        let month = number(&s[5..7], 1, 12)?;
        number(&s[8..10], 1, days_in(month, year))?;
        number(&s[11..13], 0, 23)?;
        number(&s[14..16], 0, 59)?;
        number(&s[17..19], 0, 59)
    })();
    if date.is_none()
        || s[4] != b'-'
        || s[7] != b'-'
        || s[10] != b'T'
        || s[13] != b':'
        || s[16] != b':'
    {
        return false;
    }
    let mut rest = &s[19..];
    if rest.len() >= 2 && rest[0] == b'.' && rest[1].is_ascii_digit() {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &rest[1 + digits..];
    }
    rest == b"Z"
        || (rest.len() == 6
            && (rest[0] == b'+' || rest[0] == b'-')
            && rest[3] == b':'
            && number(&rest[1..3], 0, 23).is_some()
            && number(&rest[4..6], 0, 59).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// decode_test.go's `T` (`X string`, `Y int`), with `Z *T` for pointers and `L`
    /// for slices of structs.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct T {
        x: String,
        y: i64,
        z: Option<Box<T>>,
        l: GoSlice<T>,
    }

    impl GoDecode for Box<T> {
        fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
            (**self).decode(r)
        }
    }

    impl GoDecode for T {
        fn decode(&mut self, r: &mut Reader<'_>) -> Decoded {
            r.go_struct(
                self,
                &[
                    ("X", |t, r| t.x.decode(r)),
                    ("Y", |t, r| t.y.decode(r)),
                    ("Z", |t, r| t.z.decode(r)),
                    ("L", |t, r| t.l.decode(r)),
                ],
            )
        }
    }

    fn t(x: &str, y: i64) -> T {
        T {
            x: x.into(),
            y,
            ..T::default()
        }
    }

    /// A type error, wherever it is.
    const FORM: GoJsonError = GoJsonError::Form { line: 0, column: 0 };

    fn read<V: GoDecode + Default>(text: &str) -> Result<V, GoJsonError> {
        unmarshal(text.as_bytes()).map_err(|e| match e {
            GoJsonError::Form { .. } => FORM,
            syntax => syntax,
        })
    }

    #[test]
    fn a_type_error_says_where_the_first_is() {
        let text = "{\"X\": \"a\",\n \"Y\": 1.5, \"X\": 2}";
        assert_eq!(
            unmarshal::<T>(text.as_bytes()).map(|_| ()),
            Err(GoJsonError::Form { line: 2, column: 7 })
        );
        let text = r#"{"L":[{"Z":{"Y":"x"}}]}"#;
        assert_eq!(
            unmarshal::<T>(text.as_bytes()).map(|_| ()),
            Err(GoJsonError::Form {
                line: 1,
                column: 17
            })
        );
    }

    #[test]
    fn strings_as_go_unquotes_them() {
        // decode_test.go's unmarshalTests (strings and invalid UTF-8).
        let table: &[(&[u8], &str)] = &[
            (br#""g-clef: \uD834\uDD1E""#, "g-clef: \u{1D11E}"),
            (br#""invalid: \uD834x\uDD1E""#, "invalid: \u{FFFD}x\u{FFFD}"),
            (b"\t \"a\\u1234\" \n", "a\u{1234}"),
            (b"\"hello\xffworld\"", "hello\u{FFFD}world"),
            (b"\"hello\xc2\xc2world\"", "hello\u{FFFD}\u{FFFD}world"),
            (b"\"hello\xc2\xffworld\"", "hello\u{FFFD}\u{FFFD}world"),
            (br#""hello\ud800world""#, "hello\u{FFFD}world"),
            (br#""hello\ud800\ud800world""#, "hello\u{FFFD}\u{FFFD}world"),
            (
                b"\"hello\xed\xa0\x80\xed\xb0\x80world\"",
                "hello\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}world",
            ),
            // A high surrogate before an escape that is not a low one: both read alone.
            (br#""\ud800\u0041""#, "\u{FFFD}A"),
            (br#""\udc00\ud800""#, "\u{FFFD}\u{FFFD}"),
            (br#""\"\\\/\b\f\n\r\t\u0000""#, "\"\\/\u{8}\u{c}\n\r\t\u{0}"),
            // A truncated sequence: one U+FFFD per byte, as Go's DecodeRune.
            (
                b"\"\xe2\x82A\xf0\x90\x80\"",
                "\u{FFFD}\u{FFFD}A\u{FFFD}\u{FFFD}\u{FFFD}",
            ),
        ];
        for (text, want) in table {
            let got: Result<String, _> = unmarshal(text);
            assert_eq!(
                got.as_deref(),
                Ok(*want),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn numbers_into_int64_as_parse_int_takes_them() {
        for (text, want) in [
            ("\t 1 ", Ok(1)),
            ("\t -5 \n", Ok(-5)),
            ("-0", Ok(0)),
            ("9223372036854775807", Ok(i64::MAX)),
            ("-9223372036854775808", Ok(i64::MIN)),
            ("null", Ok(0)),
            ("9223372036854775808", Err(FORM)),
            ("1.0", Err(FORM)),
            ("1e2", Err(FORM)),
            ("\"1\"", Err(FORM)),
            ("true", Err(FORM)),
            ("[]", Err(FORM)),
            ("{}", Err(FORM)),
        ] {
            assert_eq!(read::<i64>(text), want, "{text}");
        }
        assert_eq!(read::<bool>("\n true "), Ok(true));
        assert_eq!(read::<bool>("false"), Ok(false));
        assert_eq!(read::<bool>("1"), Err(FORM));
    }

    #[test]
    fn syntax_errors_as_go_checks_them() {
        // decode_test.go's syntax and raw value errors, and the scanner's rules.
        for text in [
            "",
            " \n\r\t",
            "[2, 3",
            r#"{"X": "foo", "Y"}"#,
            "[1, 2, 3+]",
            r#"{"X":12x}"#,
            r#"{"X": -}"#,
            "\x01 42",
            " 42 \x01",
            " false \x01",
            " \"string\" \x01",
            "[1,]",
            r#"{"a":1,}"#,
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "NaN",
            "\"\\x\"",
            "\"\\u12G4\"",
            "\"a\x01\"",
            "\"open",
            "{\"a\" 1}",
            "{1:2}",
            "\u{FEFF}{}",
            "{}{}",
        ] {
            assert!(
                matches!(read::<T>(text), Err(GoJsonError::Syntax { .. })),
                "{text:?} is a syntax error"
            );
        }
        // Where: 1-based line and byte column of the offending byte.
        assert_eq!(
            read::<T>("{\n  \"X\": tru }"),
            Err(GoJsonError::Syntax {
                line: 2,
                column: 11
            })
        );
        // A syntax error anywhere wins over a wrong type before it (Go checks the
        // whole text first).
        assert!(matches!(
            read::<T>(r#"{"Y": "x", "X": [1,}"#),
            Err(GoJsonError::Syntax { .. })
        ));
    }

    #[test]
    fn nesting_goes_as_deep_as_go_allows() {
        // Go's maxNestingDepth is 10,000; skipped values cost no stack.
        let nested = |depth: usize| {
            format!(
                r#"{{"unknown":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert_eq!(read::<T>(&nested(9_999)), Ok(T::default()));
        assert!(matches!(
            read::<T>(&nested(10_000)),
            Err(GoJsonError::Syntax { .. })
        ));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert_eq!(read::<T>(&objects), Ok(T::default()));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(10_001), "}".repeat(10_001));
        assert!(matches!(
            read::<T>(&objects),
            Err(GoJsonError::Syntax { .. })
        ));
    }

    #[test]
    fn keys_match_fields_as_go_folds_them() {
        // Exact match first, else Go's EqualFold: ASCII case, and U+017F (ſ) and
        // U+212A (K) fold to s and k.
        assert!(field_is("MEDIATYPE", "mediaType"));
        assert!(field_is("mediatype", "mediaType"));
        assert!(field_is("o\u{17F}", "os"));
        assert!(field_is("\u{212A}ey", "key"));
        assert!(field_is("ExposedPorts", "exposedports"));
        assert!(!field_is("media_type", "mediaType"));
        assert!(!field_is("os ", "os"));
        assert!(!field_is("\u{130}d", "id"), "İ is not i in a simple fold");
        assert!(!field_is("o\u{17F}\u{17F}", "os"));
        assert_eq!(read::<T>(r#"{"x": "a", "y": 2}"#), Ok(t("a", 2)));
        // decode_test.go: `{"X": [1,2,3], "Y": 4}` sets Y and is an error for X.
        assert_eq!(read::<T>(r#"{"X": [1,2,3], "Y": 4}"#), Err(FORM));
        assert_eq!(read::<T>(r#"{"X": 23}"#), Err(FORM));
        // Unknown keys are ignored whatever their value.
        assert_eq!(
            read::<T>(r#"{"alpha": [1, {"a": null}], "X": "a", "unknown": {"X": 5}}"#),
            Ok(t("a", 0))
        );
    }

    #[test]
    fn a_repeated_key_decodes_into_what_is_there() {
        // Scalars: the last wins; null leaves them.
        assert_eq!(read::<T>(r#"{"X":"a","x":"b","X":null}"#), Ok(t("b", 0)));
        // A struct behind a pointer is merged; null sets the pointer to nil
        // (decode_test.go's `{"I": 0, "I": null}` into DoublePtr).
        let merged = read::<T>(r#"{"Z":{"X":"a","Y":1},"Z":{"Y":2}}"#).unwrap();
        assert_eq!(merged.z.as_deref(), Some(&t("a", 2)));
        assert_eq!(read::<T>(r#"{"Z":{"X":"a"},"Z":null}"#).unwrap().z, None);
        let again = read::<T>(r#"{"Z":{"X":"a"},"Z":null,"Z":{"Y":3}}"#).unwrap();
        assert_eq!(again.z.as_deref(), Some(&t("", 3)));
        // A slice reuses its elements: element i of the later array decodes into
        // element i of the earlier one; the slice is cut to the later length.
        let reused = read::<T>(r#"{"L":[{"X":"a","Y":1},{"X":"b"}],"L":[{"Y":2}]}"#).unwrap();
        assert_eq!(&*reused.l, &[t("a", 2)]);
        // ... even past that length: Go grows the backing array only when full,
        // copying all of it, so what was decoded there is still there.
        let stale = read::<T>(r#"{"L":[{"X":"a"},{"X":"b"},{"X":"c"}],"L":[{}],"L":[{},{"Y":5}]}"#)
            .unwrap();
        assert_eq!(&*stale.l, &[t("a", 0), t("b", 5)]);
        // An empty array or null starts afresh.
        for reset in ["[]", "null"] {
            let fresh = read::<T>(&format!(
                r#"{{"L":[{{"X":"a"}}],"L":{reset},"L":[{{"Y":1}}]}}"#
            ))
            .unwrap();
            assert_eq!(&*fresh.l, &[t("", 1)], "{reset}");
        }
        // Prefilled values (decode_test.go TestPrefilled: `[2]` into []int{1}, `[2, 3]`).
        let mut prefilled = T {
            l: vec![t("a", 1)].into(),
            ..T::default()
        };
        unmarshal_into(br#"{"L":[{"Y":2},{"Y":3}]}"#, &mut prefilled).unwrap();
        assert_eq!(&*prefilled.l, &[t("a", 2), t("", 3)]);
    }

    #[test]
    fn null_in_an_array_is_a_no_op_on_its_element() {
        // A fresh element stays zero; a reused one keeps its value.
        let fresh = read::<T>(r#"{"L":[null,{"X":"b"}]}"#).unwrap();
        assert_eq!(&*fresh.l, &[T::default(), t("b", 0)]);
        let reused = read::<T>(r#"{"L":[{"X":"a"}],"L":[null,null]}"#).unwrap();
        assert_eq!(&*reused.l, &[t("a", 0), T::default()]);
        assert_eq!(
            read::<GoSlice<String>>(r#"["a",null]"#).unwrap().into_vec(),
            ["a", ""]
        );
        assert_eq!(read::<GoSlice<String>>(r#"["a",1]"#), Err(FORM));
        assert_eq!(read::<GoSlice<String>>(r#""a""#), Err(FORM));
        assert_eq!(read::<GoSlice<String>>(r#"{}"#), Err(FORM));
    }

    #[test]
    fn types_checked_but_not_kept() {
        // map[string]string: an object of strings (null values are ""), or null.
        for ok in [r#"{}"#, r#"{"a":"b","a":null}"#, "null"] {
            assert_eq!(read::<MapOf<String>>(ok).map(|_| ()), Ok(()), "{ok}");
        }
        for bad in [r#"{"a":1}"#, r#"[]"#, r#""a""#, r#"{"a":{}}"#] {
            assert_eq!(read::<MapOf<String>>(bad).map(|_| ()), Err(FORM), "{bad}");
        }
        // map[string]struct{}: values are objects (any keys) or null.
        assert!(read::<MapOf<EmptyStruct>>(r#"{"80/tcp":{},"x":{"a":[1]},"y":null}"#).is_ok());
        assert!(read::<MapOf<EmptyStruct>>(r#"{"80/tcp":true}"#).is_err());
        // []byte: padded standard base64 (newlines ignored), or an array of bytes.
        for ok in [
            r#""AQID""#,
            r#""AQ==""#,
            r#""AQ\n==""#,
            "[1,2,255,null]",
            "null",
            r#""""#,
        ] {
            assert!(read::<Bytes>(ok).is_ok(), "{ok}");
        }
        for bad in [
            r#""AQ""#,
            r#""A""#,
            r#""!!!!""#,
            "[256]",
            "[-1]",
            r#"["a"]"#,
            "1",
            "{}",
        ] {
            assert_eq!(read::<Bytes>(bad).map(|_| ()), Err(FORM), "{bad}");
        }
    }

    #[test]
    fn times_as_go_1_20_takes_them() {
        for ok in [
            "2006-01-02T15:04:05Z",
            "2006-01-02T15:04:05.999999999999Z",
            "2006-01-02T15:04:05+23:59",
            "2006-01-02T15:04:05-07:00",
            "2024-02-29T00:00:00Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(read::<Time>(&format!("\"{ok}\"")).is_ok(), "{ok}");
        }
        assert!(read::<Time>("null").is_ok());
        for bad in [
            "2006-01-02T15:04:05",
            "2006-01-02 15:04:05Z",
            "2006-01-02t15:04:05Z",
            "2006-01-02T15:04:05z",
            "2006-01-02T5:04:05Z",
            "2006-01-02T15:04:05,5Z",
            "2006-01-02T15:04:05.Z",
            "2006-01-02T15:04:05+24:00",
            "2006-01-02T15:04:05+0700",
            "2023-02-29T00:00:00Z",
            "2006-13-02T15:04:05Z",
            "2006-01-02T15:04:60Z",
            "yesterday",
            // Escapes are not resolved: Go hands UnmarshalJSON the raw bytes.
            "2006-01-02T15:04:05\\u005a",
        ] {
            assert_eq!(
                read::<Time>(&format!("\"{bad}\"")).map(|_| ()),
                Err(FORM),
                "{bad}"
            );
        }
        for bad in ["1136214245", "{}", "[]", "true"] {
            assert_eq!(read::<Time>(bad).map(|_| ()), Err(FORM), "{bad}");
        }
    }

    #[test]
    fn raw_messages_keep_any_value_null_included() {
        assert_eq!(read::<RawMessage>("null").unwrap().len, 4);
        assert_eq!(read::<RawMessage>(" [1, {\"a\":2}] ").unwrap().len, 12);
        assert!(RawMessage::default().is_empty());
    }
}
