//! Test tables ported from github.com/distribution/reference v0.6.0 (reference_test.go,
//! regexp_test.go, normalize_test.go), case for case. Where pullwatch deliberately
//! differs, the case says so and asserts pullwatch's behaviour.

use super::*;

fn kind(error: &ReferenceError) -> &'static str {
    match error {
        ReferenceError::Empty => "Empty",
        ReferenceError::InvalidFormat { .. } => "InvalidFormat",
        ReferenceError::NameNotLowercase(_) => "NameNotLowercase",
        ReferenceError::NameTooLong => "NameTooLong",
        ReferenceError::HexIdentifier(_) => "HexIdentifier",
        ReferenceError::DigestUnsupported(_) => "DigestUnsupported",
        ReferenceError::DigestInvalidLength(_) => "DigestInvalidLength",
        ReferenceError::DigestInvalidFormat(_) => "DigestInvalidFormat",
    }
}

/// `checkRegexp`: a full match with these submatches (missing groups read as "").
fn check_regexp(regex: &Regex, input: &str, matched: bool, subs: &[&str]) {
    match regex.captures(input) {
        Some(captures) if matched => {
            assert_eq!(
                captures.get(0).map(|m| m.as_str()),
                Some(input),
                "{input:?}"
            );
            for (i, sub) in subs.iter().enumerate() {
                assert_eq!(
                    captures.get(i + 1).map_or("", |m| m.as_str()),
                    *sub,
                    "submatch {} of {input:?}",
                    i + 1
                );
            }
        }
        None if !matched => {}
        other => panic!(
            "{input:?}: expected match={matched}, got {:?}",
            other.map(|c| c.get(0).map(|m| m.as_str().to_string()))
        ),
    }
}

/// reference_test.go `TestReferenceParse` (distribution/reference `Parse`).
#[test]
fn reference_parse_table() {
    // (input, expected error kind, repository, domain, tag, digest)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, &'a str, &'a str, &'a str);
    let cases: &[Case] = &[
        ("test_com", None, "test_com", "", "", ""),
        ("test.com:tag", None, "test.com", "", "tag", ""),
        ("test.com:5000", None, "test.com", "", "5000", ""),
        (
            "test.com/repo:tag",
            None,
            "test.com/repo",
            "test.com",
            "tag",
            "",
        ),
        (
            "test:5000/repo",
            None,
            "test:5000/repo",
            "test:5000",
            "",
            "",
        ),
        (
            "test:5000/repo:tag",
            None,
            "test:5000/repo",
            "test:5000",
            "tag",
            "",
        ),
        (
            "test:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            None,
            "test:5000/repo",
            "test:5000",
            "",
            "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ),
        (
            "test:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            None,
            "test:5000/repo",
            "test:5000",
            "tag",
            "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ),
        (
            "test:5000/repo",
            None,
            "test:5000/repo",
            "test:5000",
            "",
            "",
        ),
        ("", Some("Empty"), "", "", "", ""),
        (":justtag", Some("InvalidFormat"), "", "", "", ""),
        (
            "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            Some("InvalidFormat"),
            "",
            "",
            "",
            "",
        ),
        (
            "repo@sha256:ffffffffffffffffffffffffffffffffff",
            Some("DigestInvalidLength"),
            "",
            "",
            "",
            "",
        ),
        (
            "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            Some("DigestUnsupported"),
            "",
            "",
            "",
            "",
        ),
        ("Uppercase:tag", Some("NameNotLowercase"), "", "", "", ""),
        (
            "test:5000/Uppercase/lowercase:tag",
            Some("NameNotLowercase"),
            "",
            "",
            "",
            "",
        ),
        (
            "lowercase:Uppercase",
            None,
            "lowercase",
            "",
            "Uppercase",
            "",
        ),
        (
            "domain/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:tag",
            Some("NameTooLong"),
            "",
            "",
            "",
            "",
        ),
        (
            "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a:tag-puts-this-over-max",
            None,
            "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a",
            "a",
            "tag-puts-this-over-max",
            "",
        ),
        ("aa/asdf$$^/aa", Some("InvalidFormat"), "", "", "", ""),
        (
            "sub-dom1.foo.com/bar/baz/quux",
            None,
            "sub-dom1.foo.com/bar/baz/quux",
            "sub-dom1.foo.com",
            "",
            "",
        ),
        (
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            None,
            "sub-dom1.foo.com/bar/baz/quux",
            "sub-dom1.foo.com",
            "some-long-tag",
            "",
        ),
        (
            "b.gcr.io/test.example.com/my-app:test.example.com",
            None,
            "b.gcr.io/test.example.com/my-app",
            "b.gcr.io",
            "test.example.com",
            "",
        ),
        (
            "xn--n3h.com/myimage:xn--n3h.com",
            None,
            "xn--n3h.com/myimage",
            "xn--n3h.com",
            "xn--n3h.com",
            "",
        ),
        (
            "xn--7o8h.com/myimage:xn--7o8h.com@sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            None,
            "xn--7o8h.com/myimage",
            "xn--7o8h.com",
            "xn--7o8h.com",
            "sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ),
        ("foo_bar.com:8080", None, "foo_bar.com", "", "8080", ""),
        (
            "foo/foo_bar.com:8080",
            None,
            "foo/foo_bar.com",
            "foo",
            "8080",
            "",
        ),
        ("192.168.1.1", None, "192.168.1.1", "", "", ""),
        ("192.168.1.1:tag", None, "192.168.1.1", "", "tag", ""),
        ("192.168.1.1:5000", None, "192.168.1.1", "", "5000", ""),
        (
            "192.168.1.1/repo",
            None,
            "192.168.1.1/repo",
            "192.168.1.1",
            "",
            "",
        ),
        (
            "192.168.1.1:5000/repo",
            None,
            "192.168.1.1:5000/repo",
            "192.168.1.1:5000",
            "",
            "",
        ),
        (
            "192.168.1.1:5000/repo:5050",
            None,
            "192.168.1.1:5000/repo",
            "192.168.1.1:5000",
            "5050",
            "",
        ),
        ("[2001:db8::1]", Some("InvalidFormat"), "", "", "", ""),
        ("[2001:db8::1]:5000", Some("InvalidFormat"), "", "", "", ""),
        ("[2001:db8::1]:tag", Some("InvalidFormat"), "", "", "", ""),
        (
            "[2001:db8::1]/repo",
            None,
            "[2001:db8::1]/repo",
            "[2001:db8::1]",
            "",
            "",
        ),
        (
            "[2001:db8:1:2:3:4:5:6]/repo:tag",
            None,
            "[2001:db8:1:2:3:4:5:6]/repo",
            "[2001:db8:1:2:3:4:5:6]",
            "tag",
            "",
        ),
        (
            "[2001:db8::1]:5000/repo",
            None,
            "[2001:db8::1]:5000/repo",
            "[2001:db8::1]:5000",
            "",
            "",
        ),
        (
            "[2001:db8::1]:5000/repo:tag",
            None,
            "[2001:db8::1]:5000/repo",
            "[2001:db8::1]:5000",
            "tag",
            "",
        ),
        (
            "[2001:db8::1]:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            None,
            "[2001:db8::1]:5000/repo",
            "[2001:db8::1]:5000",
            "",
            "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ),
        (
            "[2001:db8::1]:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            None,
            "[2001:db8::1]:5000/repo",
            "[2001:db8::1]:5000",
            "tag",
            "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ),
        (
            "[2001:db8::]:5000/repo",
            None,
            "[2001:db8::]:5000/repo",
            "[2001:db8::]:5000",
            "",
            "",
        ),
        (
            "[::1]:5000/repo",
            None,
            "[::1]:5000/repo",
            "[::1]:5000",
            "",
            "",
        ),
        (
            "[fe80::1%eth0]:5000/repo",
            Some("InvalidFormat"),
            "",
            "",
            "",
            "",
        ),
        (
            "[fe80::1%@invalidzone]:5000/repo",
            Some("InvalidFormat"),
            "",
            "",
            "",
            "",
        ),
        (
            "example.com/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:tag",
            None,
            "example.com/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "example.com",
            "tag",
            "",
        ),
    ];
    for (input, error, repository, domain, tag, digest) in cases {
        let parsed = parse_raw(input);
        if let Some(error) = error {
            let got = parsed.expect_err(input);
            assert_eq!(kind(&got), *error, "{input:?}: {got}");
            continue;
        }
        let parsed = parsed.unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let name = if parsed.domain.is_empty() {
            parsed.path.clone()
        } else {
            format!("{}/{}", parsed.domain, parsed.path)
        };
        let mut string = name.clone();
        if let Some(tag) = &parsed.tag {
            string = format!("{string}:{tag}");
        }
        if let Some(digest) = &parsed.digest {
            string = format!("{string}@{digest}");
        }
        assert_eq!(&string, input, "String() of {input:?}");
        assert_eq!(&name, repository, "Name() of {input:?}");
        assert_eq!(&parsed.domain, domain, "Domain() of {input:?}");
        assert_eq!(
            parsed.tag.as_deref().unwrap_or(""),
            *tag,
            "Tag() of {input:?}"
        );
        assert_eq!(
            parsed.digest.as_deref().unwrap_or(""),
            *digest,
            "Digest() of {input:?}"
        );
    }
}

/// regexp_test.go `TestDomainRegexp`.
#[test]
fn domain_regexp_table() {
    let cases: &[(&str, bool, &[&str])] = &[
        ("test.com", true, &[]),
        ("test.com:10304", true, &[]),
        ("test.com:http", false, &[]),
        ("localhost", true, &[]),
        ("localhost:8080", true, &[]),
        ("a", true, &[]),
        ("a.b", true, &[]),
        ("ab.cd.com", true, &[]),
        ("a-b.com", true, &[]),
        ("-ab.com", false, &[]),
        ("ab-.com", false, &[]),
        ("ab.c-om", true, &[]),
        ("ab.-com", false, &[]),
        ("ab.com-", false, &[]),
        ("0101.com", true, &[]),
        ("001a.com", true, &[]),
        ("b.gbc.io:443", true, &[]),
        ("b.gbc.io", true, &[]),
        ("xn--n3h.com", true, &[]),
        ("Asdf.com", true, &[]),
        ("192.168.1.1:75050", true, &[]),
        ("192.168.1.1:750050", true, &[]),
        ("[fd00:1:2::3]:75050", true, &[]),
        ("[fd00:1:2::3]75050", false, &[]),
        ("[fd00:1:2::3]::75050", false, &[]),
        ("[fd00:1:2::3%eth0]:75050", false, &[]),
        ("[fd00123123123]:75050", true, &[]),
        ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050", true, &[]),
        (
            "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505",
            true,
            &[],
        ),
        ("fd00:1:2::3:75050", false, &[]),
    ];
    for (input, matched, subs) in cases {
        check_regexp(&ANCHORED_DOMAIN, input, *matched, subs);
    }
}

/// regexp_test.go `TestFullNameRegexp`.
#[test]
fn full_name_regexp_table() {
    let cases: &[(&str, bool, &[&str])] = &[
        ("", false, &[]),
        ("short", true, &["", "short"]),
        ("simple/name", true, &["simple", "name"]),
        ("library/ubuntu", true, &["library", "ubuntu"]),
        ("docker/stevvooe/app", true, &["docker", "stevvooe/app"]),
        (
            "aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb",
            true,
            &["aa", "aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb"],
        ),
        ("aa/aa/bb/bb/bb", true, &["aa", "aa/bb/bb/bb"]),
        ("a/a/a/a", true, &["a", "a/a/a"]),
        ("a/a/a/a/", false, &[]),
        ("a//a/a", false, &[]),
        ("a", true, &["", "a"]),
        ("a/aa", true, &["a", "aa"]),
        ("a/aa/a", true, &["a", "aa/a"]),
        ("foo.com", true, &["", "foo.com"]),
        ("foo.com/", false, &[]),
        ("foo.com:8080/bar", true, &["foo.com:8080", "bar"]),
        ("foo.com:http/bar", false, &[]),
        ("foo.com/bar", true, &["foo.com", "bar"]),
        ("foo.com/bar/baz", true, &["foo.com", "bar/baz"]),
        ("localhost:8080/bar", true, &["localhost:8080", "bar"]),
        (
            "sub-dom1.foo.com/bar/baz/quux",
            true,
            &["sub-dom1.foo.com", "bar/baz/quux"],
        ),
        ("blog.foo.com/bar/baz", true, &["blog.foo.com", "bar/baz"]),
        ("a^a", false, &[]),
        ("aa/asdf$$^/aa", false, &[]),
        ("asdf$$^/aa", false, &[]),
        ("aa-a/a", true, &["aa-a", "a"]),
        (
            "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a",
            true,
            &[
                "a",
                "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a",
            ],
        ),
        ("a-/a/a/a", false, &[]),
        ("foo.com/a-/a/a", false, &[]),
        ("-foo/bar", false, &[]),
        ("foo/bar-", false, &[]),
        ("foo-/bar", false, &[]),
        ("foo/-bar", false, &[]),
        ("_foo/bar", false, &[]),
        ("foo_bar", true, &["", "foo_bar"]),
        ("foo_bar.com", true, &["", "foo_bar.com"]),
        ("foo_bar.com:8080", false, &[]),
        ("foo_bar.com:8080/app", false, &[]),
        ("foo.com/foo_bar", true, &["foo.com", "foo_bar"]),
        ("____/____", false, &[]),
        ("_docker/_docker", false, &[]),
        ("docker_/docker_", false, &[]),
        (
            "b.gcr.io/test.example.com/my-app",
            true,
            &["b.gcr.io", "test.example.com/my-app"],
        ),
        ("xn--n3h.com/myimage", true, &["xn--n3h.com", "myimage"]),
        ("xn--7o8h.com/myimage", true, &["xn--7o8h.com", "myimage"]),
        (
            "example.com/xn--7o8h.com/myimage",
            true,
            &["example.com", "xn--7o8h.com/myimage"],
        ),
        (
            "example.com/some_separator__underscore/myimage",
            true,
            &["example.com", "some_separator__underscore/myimage"],
        ),
        ("example.com/__underscore/myimage", false, &[]),
        ("example.com/..dots/myimage", false, &[]),
        ("example.com/.dots/myimage", false, &[]),
        ("example.com/nodouble..dots/myimage", false, &[]),
        ("example.com/nodouble..dots/myimage", false, &[]),
        ("docker./docker", false, &[]),
        (".docker/docker", false, &[]),
        ("docker-/docker", false, &[]),
        ("-docker/docker", false, &[]),
        ("do..cker/docker", false, &[]),
        ("do__cker:8080/docker", false, &[]),
        ("do__cker/docker", true, &["", "do__cker/docker"]),
        (
            "b.gcr.io/test.example.com/my-app",
            true,
            &["b.gcr.io", "test.example.com/my-app"],
        ),
        (
            "registry.io/foo/project--id.module--name.ver---sion--name",
            true,
            &[
                "registry.io",
                "foo/project--id.module--name.ver---sion--name",
            ],
        ),
        ("Asdf.com/foo/bar", true, &[]),
        ("Foo/FarB", false, &[]),
    ];
    for (input, matched, subs) in cases {
        check_regexp(&ANCHORED_NAME, input, *matched, subs);
    }
}

/// regexp_test.go `TestReferenceRegexp`.
#[test]
fn reference_regexp_table() {
    let cases: &[(&str, bool, &[&str])] = &[
        (
            "registry.com:8080/myapp:tag",
            true,
            &["registry.com:8080/myapp", "tag", ""],
        ),
        (
            "registry.com:8080/myapp@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            true,
            &[
                "registry.com:8080/myapp",
                "",
                "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            ],
        ),
        (
            "registry.com:8080/myapp:tag2@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            true,
            &[
                "registry.com:8080/myapp",
                "tag2",
                "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            ],
        ),
        ("registry.com:8080/myapp@sha256:badbadbadbad", false, &[]),
        ("registry.com:8080/myapp:invalid~tag", false, &[]),
        ("bad_hostname.com:8080/myapp:tag", false, &[]),
        (
            "localhost:8080@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            true,
            &[
                "localhost",
                "8080",
                "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            ],
        ),
        (
            "localhost:8080/name@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            true,
            &[
                "localhost:8080/name",
                "",
                "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            ],
        ),
        (
            "localhost:http/name@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            false,
            &[],
        ),
        (
            "localhost@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            true,
            &[
                "localhost",
                "",
                "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
            ],
        ),
        ("registry.com:8080/myapp@bad", false, &[]),
        ("registry.com:8080/myapp@2bad", false, &[]),
    ];
    for (input, matched, subs) in cases {
        check_regexp(&REFERENCE, input, *matched, subs);
    }
}

/// regexp_test.go `TestIdentifierRegexp`.
#[test]
fn identifier_regexp_table() {
    let cases: &[(&str, bool, &[&str])] = &[
        (
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
            true,
            &[],
        ),
        (
            "7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C",
            false,
            &[],
        ),
        (
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf",
            false,
            &[],
        ),
        (
            "sha256:da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
            false,
            &[],
        ),
        (
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482",
            false,
            &[],
        ),
    ];
    for (input, matched, subs) in cases {
        check_regexp(&IDENTIFIER, input, *matched, subs);
    }
}

/// normalize_test.go `TestValidateReferenceName` and `TestValidateRemoteName`.
#[test]
fn validate_names_tables() {
    for name in [
        "docker/docker",
        "library/debian",
        "debian",
        "localhost/library/debian",
        "localhost/debian",
        "LOCALDOMAIN/library/debian",
        "LOCALDOMAIN/debian",
        "docker.io/docker/docker",
        "docker.io/library/debian",
        "docker.io/debian",
        "index.docker.io/docker/docker",
        "index.docker.io/library/debian",
        "index.docker.io/debian",
        "127.0.0.1:5000/docker/docker",
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000/debian",
        "192.168.0.1",
        "192.168.0.1:80",
        "192.168.0.1:8/debian",
        "192.168.0.2:25000/debian",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "[fc00::1]:5000/docker",
        "[fc00::1]:5000/docker/docker",
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "Docker/docker",
        "DOCKER/docker",
    ] {
        if let Err(e) = ImageReference::parse(name) {
            panic!("{name:?} should be valid: {e}");
        }
    }
    for name in [
        "docker/docker",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker-rules/docker",
        "docker---rules/docker",
        "doc/docker",
        "d/docker",
        "jess/t",
        "dock__er/docker",
    ] {
        if let Err(e) = ImageReference::parse(name) {
            panic!("{name:?} should be valid: {e}");
        }
    }
    for name in [
        "https://github.com/docker/docker",
        "docker/Docker",
        "-docker",
        "-docker/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker/Docker",
        "docker.io/docker///docker",
        "[fc00::1]",
        "[fc00::1]:5000",
        "fc00::1:5000/debian",
        "[fe80::1%eth0]:5000/debian",
        "[2001:db8:3:4::192.0.2.33]:5000/debian",
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    ] {
        assert!(
            ImageReference::parse(name).is_err(),
            "{name:?} should be invalid"
        );
    }
    for name in [
        "docker/Docker",
        "docker///docker",
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "-docker/docker",
        "docker-/docker",
        "-docker-/docker",
        "____/____",
        "_docker/_docker",
        "dock..er/docker",
        "dock_.er/docker",
        "dock-.er/docker",
        "docker/",
        "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker",
    ] {
        assert!(
            ImageReference::parse(name).is_err(),
            "{name:?} should be invalid"
        );
    }
}

/// normalize_test.go `TestParseRepositoryInfo`: every spelling names the same
/// registry, repository and full name.
#[test]
fn parse_repository_info_table() {
    // (remote name, familiar, full, ambiguous, domain)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "fooo",
            "localhost/fooo",
            "localhost/fooo",
            "localhost/fooo",
            "localhost",
        ),
        (
            "fooo/bar",
            "localhost/fooo/bar",
            "localhost/fooo/bar",
            "localhost/fooo/bar",
            "localhost",
        ),
        (
            "fooo",
            "LOCALDOMAIN/fooo",
            "LOCALDOMAIN/fooo",
            "LOCALDOMAIN/fooo",
            "LOCALDOMAIN",
        ),
        (
            "fooo/bar",
            "LOCALDOMAIN/fooo/bar",
            "LOCALDOMAIN/fooo/bar",
            "LOCALDOMAIN/fooo/bar",
            "LOCALDOMAIN",
        ),
        (
            "fooo/bar",
            "fooo/bar",
            "docker.io/fooo/bar",
            "index.docker.io/fooo/bar",
            "docker.io",
        ),
        (
            "library/ubuntu",
            "ubuntu",
            "docker.io/library/ubuntu",
            "library/ubuntu",
            "docker.io",
        ),
        (
            "nonlibrary/ubuntu",
            "nonlibrary/ubuntu",
            "docker.io/nonlibrary/ubuntu",
            "",
            "docker.io",
        ),
        (
            "other/library",
            "other/library",
            "docker.io/other/library",
            "",
            "docker.io",
        ),
        (
            "private/moonbase",
            "127.0.0.1:8000/private/moonbase",
            "127.0.0.1:8000/private/moonbase",
            "",
            "127.0.0.1:8000",
        ),
        (
            "privatebase",
            "127.0.0.1:8000/privatebase",
            "127.0.0.1:8000/privatebase",
            "",
            "127.0.0.1:8000",
        ),
        (
            "private/moonbase",
            "example.com/private/moonbase",
            "example.com/private/moonbase",
            "",
            "example.com",
        ),
        (
            "privatebase",
            "example.com/privatebase",
            "example.com/privatebase",
            "",
            "example.com",
        ),
        (
            "private/moonbase",
            "example.com:8000/private/moonbase",
            "example.com:8000/private/moonbase",
            "",
            "example.com:8000",
        ),
        (
            "privatebasee",
            "example.com:8000/privatebasee",
            "example.com:8000/privatebasee",
            "",
            "example.com:8000",
        ),
        (
            "library/ubuntu-12.04-base",
            "ubuntu-12.04-base",
            "docker.io/library/ubuntu-12.04-base",
            "index.docker.io/library/ubuntu-12.04-base",
            "docker.io",
        ),
        (
            "library/foo",
            "foo",
            "docker.io/library/foo",
            "docker.io/foo",
            "docker.io",
        ),
        (
            "library/foo/bar",
            "library/foo/bar",
            "docker.io/library/foo/bar",
            "",
            "docker.io",
        ),
        (
            "store/foo/bar",
            "store/foo/bar",
            "docker.io/store/foo/bar",
            "",
            "docker.io",
        ),
        ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
        ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
    ];
    for (remote, familiar, full, ambiguous, domain) in cases {
        for spelling in [familiar, full, ambiguous]
            .into_iter()
            .filter(|s| !s.is_empty())
        {
            let parsed =
                ImageReference::parse(spelling).unwrap_or_else(|e| panic!("{spelling:?}: {e}"));
            assert_eq!(parsed.registry(), *domain, "{spelling:?}");
            assert_eq!(parsed.repository(), *remote, "{spelling:?}");
            assert_eq!(&parsed.name(), full, "{spelling:?}");
        }
    }
}

/// normalize_test.go `TestNormalizedSplitHostname`.
#[test]
fn normalized_split_hostname_table() {
    let cases: &[(&str, &str, &str)] = &[
        ("test.com/foo", "test.com", "foo"),
        ("test_com/foo", "docker.io", "test_com/foo"),
        ("docker/migrator", "docker.io", "docker/migrator"),
        ("test.com:8080/foo", "test.com:8080", "foo"),
        ("test-com:8080/foo", "test-com:8080", "foo"),
        ("foo", "docker.io", "library/foo"),
        ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
        ("docker.io/foo", "docker.io", "library/foo"),
        ("docker.io/library/foo", "docker.io", "library/foo"),
        ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
    ];
    for (input, domain, path) in cases {
        let parsed = ImageReference::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(parsed.registry(), *domain, "{input:?}");
        assert_eq!(parsed.repository(), *path, "{input:?}");
    }
}

/// normalize_test.go `TestParseDockerRef`.
#[test]
fn parse_docker_ref_table() {
    let cases: &[(&str, &str, &str)] = &[
        ("nothing", "busybox", "docker.io/library/busybox:latest"),
        (
            "tag only",
            "busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        (
            "digest only",
            "busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
            "docker.io/library/busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
        ),
        (
            "path only",
            "library/busybox",
            "docker.io/library/busybox:latest",
        ),
        (
            "hostname only",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
        ),
        (
            "no tag",
            "docker.io/library/busybox",
            "docker.io/library/busybox:latest",
        ),
        (
            "no path",
            "docker.io/busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        (
            "no hostname",
            "library/busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        (
            "full reference with tag",
            "docker.io/library/busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        (
            "gcr reference without tag",
            "gcr.io/library/busybox",
            "gcr.io/library/busybox:latest",
        ),
        (
            "both tag and digest",
            "gcr.io/library/busybox:latest@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
            "gcr.io/library/busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
        ),
    ];
    for (name, input, expected) in cases {
        let parsed = ImageReference::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        if *name == "both tag and digest" {
            // Intentional difference: ParseDockerRef drops the tag when there is a
            // digest. pullwatch keeps it in the reference it reports (it is what the
            // workload wrote, and the kubelet passes both to the runtime), but checks by
            // the digest, as the runtime pulls.
            assert_eq!(
                parsed.to_string(),
                format!(
                    "gcr.io/library/busybox:latest@{}",
                    expected.rsplit_once('@').map_or("", |(_, d)| d)
                )
            );
            assert_eq!(
                Some(parsed.manifest_reference()),
                expected.rsplit_once('@').map(|(_, d)| d)
            );
            continue;
        }
        assert_eq!(&parsed.to_string(), expected, "{name}");
        // The canonical form parses back to itself.
        assert_eq!(
            ImageReference::parse(expected).as_ref(),
            Ok(&parsed),
            "{name}"
        );
    }
}

/// reference_test.go `TestWithNameFailure` (`WithName`: the anchored name grammar and
/// the 255-character path limit).
#[test]
fn with_name_failure_table() {
    let long = format!("example.com/{}", "a".repeat(256));
    let cases: &[(&str, &str)] = &[
        ("", "InvalidFormat"),
        (":justtag", "InvalidFormat"),
        (
            "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "InvalidFormat",
        ),
        (
            "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "InvalidFormat",
        ),
        ("example.com/repo:tag", "InvalidFormat"),
        (&long, "NameTooLong"),
        ("aa/asdf$$^/aa", "InvalidFormat"),
    ];
    for (input, want) in cases {
        let got = match ANCHORED_NAME.captures(input) {
            None => "InvalidFormat",
            Some(parts) if parts.get(2).map_or(0, |m| m.as_str().len()) > 255 => "NameTooLong",
            Some(_) => "ok",
        };
        assert_eq!(got, *want, "{input:?}");
    }
}

/// reference_test.go `TestDomainAndPath`.
#[test]
fn domain_and_path_table() {
    let cases: &[(&str, &str, &str)] = &[
        ("test.com/foo", "test.com", "foo"),
        ("test_com/foo", "", "test_com/foo"),
        ("test:8080/foo", "test:8080", "foo"),
        ("test.com:8080/foo", "test.com:8080", "foo"),
        ("test-com:8080/foo", "test-com:8080", "foo"),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
    ];
    for (input, domain, path) in cases {
        let raw = parse_raw(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(
            (raw.domain.as_str(), raw.path.as_str()),
            (*domain, *path),
            "{input:?}"
        );
    }
}

/// reference_test.go `TestParseNamed`: a name is canonical when normalizing it gives
/// it back unchanged.
#[test]
fn parse_named_table() {
    let cases: &[(&str, Option<(&str, &str)>)] = &[
        ("test.com/foo", Some(("test.com", "foo"))),
        ("test:8080/foo", Some(("test:8080", "foo"))),
        ("test_com/foo", None),
        ("test.com", None),
        ("foo", None),
        ("library/foo", None),
        ("docker.io/library/foo", Some(("docker.io", "library/foo"))),
        ("docker.io/foo", None),
    ];
    for (input, want) in cases {
        let parsed = ImageReference::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        match want {
            Some((domain, path)) => {
                assert_eq!(&parsed.name(), input, "{input:?} is canonical");
                assert_eq!((parsed.registry(), parsed.repository()), (*domain, *path));
            }
            None => assert_ne!(&parsed.name(), input, "{input:?} is not canonical"),
        }
    }
}
