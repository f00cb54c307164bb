use std::{path::Path, time::Duration};

use super::*;

fn parse(text: &str) -> Result<WebConfig, String> {
    WebConfig::parse(text, Path::new("/etc/tcpmon")).map_err(|e| match e {
        Error::Syntax(m) | Error::Invalid(m) => m,
    })
}

const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFN.CNuETnHuDPbCcTJ54ay8fnSsR1vNXqgz.u";

#[test]
fn reads_node_exporters_full_example() {
    let c = parse(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
         min_version: TLS12\n  max_version: TLS13\n  prefer_server_cipher_suites: true\n  \
         cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    \
         - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305\n  curve_preferences: [X25519, CurveP256]\n  \
         client_allowed_sans: [scraper.example]\n\
         http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n\
         rate_limit:\n  burst: 10\n  interval: 100ms\n\
         basic_auth_users:\n  prometheus: '{HASH}'\n"
    ))
    .unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert, Pem::File("/etc/tcpmon/server.crt".into()));
    assert_eq!(tls.key, Pem::File("/abs/server.key".into()));
    assert_eq!(tls.client_ca, Some(Pem::File("/etc/tcpmon/ca.crt".into())));
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerify);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert_eq!(tls.allowed_sans, Some(vec!["scraper.example".to_string()]));
    assert_eq!(c.users.len(), 1);
    assert_eq!(c.headers, vec![("X-Frame-Options".into(), "deny".into())]);
    assert_eq!(
        c.rate_limit,
        Some(RateLimit {
            burst: 10,
            interval: Duration::from_millis(100)
        })
    );
}

#[test]
fn an_empty_file_or_tls_section_means_plain_http() {
    assert_eq!(parse("").unwrap(), WebConfig::default());
    assert_eq!(parse("# nothing\n").unwrap(), WebConfig::default());
    assert!(parse("tls_server_config: {}\n").unwrap().tls.is_none());
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let e =
        parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  cert_fiel: c\n").unwrap_err();
    assert!(e.contains("cert_fiel") && e.contains("line 4"), "{e}");
    let e = parse("basic_auth_users: {}\nhttp_server_config:\n  http3: true\n").unwrap_err();
    assert!(e.contains("http3") && e.contains("line 3"), "{e}");
}

#[test]
fn old_protocols_and_weak_suites_are_refused() {
    for v in ["TLS10", "TLS11"] {
        let e = parse(&format!(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: {v}\n"
        ))
        .unwrap_err();
        assert!(e.contains(v) && e.contains("1.2 and 1.3 only"), "{e}");
    }
    let e = parse(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n",
    )
    .unwrap_err();
    assert!(e.contains("CBC"), "{e}");
    let e = parse(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n",
    )
    .unwrap_err();
    assert!(e.contains("CurveP521"), "{e}");
}

#[test]
fn incomplete_or_contradictory_tls_is_refused() {
    let e = parse("tls_server_config:\n  cert_file: a\n").unwrap_err();
    assert!(e.contains("key_file"), "{e}");
    let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n")
        .unwrap_err();
    assert!(e.contains("Client Auth Policy"), "{e}");
    let e = parse(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
    )
    .unwrap_err();
    assert!(e.contains("cannot verify"), "{e}");
    let e = parse(
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: c\n  client_allowed_sans: [x]\n",
    )
    .unwrap_err();
    assert!(e.contains("client_allowed_sans"), "{e}");
}

#[test]
fn users_need_bcrypt_hashes_and_headers_a_known_name() {
    let e = parse("basic_auth_users:\n  bob: plaintext\n").unwrap_err();
    assert!(e.contains("bob") && e.contains("bcrypt"), "{e}");
    let e = parse("http_server_config:\n  headers:\n    X-Powered-By: me\n").unwrap_err();
    assert!(e.contains("X-Powered-By"), "{e}");
    let e =
        parse("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n").unwrap_err();
    assert!(e.contains("nosniff"), "{e}");
    // A no-break space (found by the web_config fuzz target) is not visible ASCII.
    let e =
        parse("http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=1\u{a0}x\n")
            .unwrap_err();
    assert!(e.contains("Strict-Transport-Security"), "{e}");
}

#[test]
fn go_durations() {
    assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
    assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(go_duration("0"), Some(Duration::ZERO));
    assert_eq!(go_duration("5"), None);
    assert_eq!(go_duration("1d"), None);
    let huge = format!("0m0m0m0m0{}m", "5".repeat(40));
    assert_eq!(go_duration(&huge), None, "an overflow is no duration");
}
