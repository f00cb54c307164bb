//! `--web.config.file` text through the strict parser and its checks (no file is
//! read: certificates are loaded later, by the TLS layer).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use monitor::web::config::{Error, WebConfig, go_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match WebConfig::parse(text, Path::new("/etc/tcpmon")) {
        Ok(c) => {
            // What the checks promise the rest of the endpoint.
            if let Some(t) = &c.tls {
                assert!(t.min_version <= t.max_version);
            }
            for (name, value) in &c.headers {
                assert!(header_value_ok(name, value), "{name}: {value:?}");
            }
            if let Some(r) = c.rate_limit {
                assert!(r.burst >= 1 && !r.interval.is_zero());
            }
            // Parsing is a function of the text.
            assert_eq!(
                WebConfig::parse(text, Path::new("/etc/tcpmon")).ok(),
                Some(c)
            );
        }
        Err(Error::Syntax(m) | Error::Invalid(m)) => assert!(!m.is_empty()),
    }
    let _ = go_duration(text);
});

/// Header values the checks let through are visible ASCII, spaces and tabs.
fn header_value_ok(_name: &str, value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}
