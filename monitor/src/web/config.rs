//! `--web.config.file`: the Prometheus exporter-toolkit schema, read strictly, so an
//! operator's existing node_exporter file works here and a typo is refused with its
//! line instead of silently leaving the endpoint open.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde_yaml_ng's message carries the line and column (unknown keys included).
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file as written (exporter-toolkit's `Config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    /// Go's knob; rustls always prefers the server's order, so true is what it does.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    #[serde(default)]
    burst: u32,
    interval: Option<String>,
}

/// Where PEM data comes from: a file is re-read when it changes (renewed certificates
/// apply without a restart); inline data changes only with the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Verified against the client CAs when the client sends one.
    VerifyIfGiven,
    RequireAndVerify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Go names of TLS 1.2 suites, in preference order; empty: rustls' defaults.
    pub cipher_suites: Vec<String>,
    /// Go names of key-exchange groups; empty: rustls' defaults.
    pub curves: Vec<String>,
    pub allowed_sans: Option<Vec<String>>,
}

impl TlsSettings {
    /// The files the TLS config is built from (watched for changes).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| match p {
                Pem::File(f) => Some(f.as_path()),
                Pem::Inline(_) => None,
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub interval: Duration,
}

/// The file, checked: everything here is usable as is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// User name to bcrypt hash (each hash checked to be one).
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimit>,
}

/// Headers an operator may add, with the values allowed where the set is closed
/// (exporter-toolkit's list, for one behaviour across the Prometheus ecosystem).
const EXTRA_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::parse(&text, dir).map_err(|e| match e {
            Error::Syntax(message) => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            Error::Invalid(message) => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
        })
    }

    /// The file's text, parsed and checked (nothing is read: certificate files are
    /// loaded later). `dir` anchors relative file names (the config file's
    /// directory, as exporter-toolkit does).
    pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, Error> {
        let file: Option<File> =
            serde_yaml_ng::from_str(text).map_err(|e| Error::Syntax(e.to_string()))?;
        let file = file.unwrap_or_default();
        let tls = match file.tls_server_config {
            Some(t) => tls_settings(t, dir)?,
            None => None,
        };
        for (user, hash) in &file.basic_auth_users {
            bcrypt_cost(hash).map_err(|why| {
                Error::Invalid(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash ({why}); \
                     make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                ))
            })?;
        }
        let http = file.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            tracing::info!("http_server_config.http2: tcpmon serves HTTP/1.1 only");
        }
        let headers = http
            .headers
            .into_iter()
            .map(|(k, v)| check_header(k, v))
            .collect::<Result<_, _>>()?;
        let rate_limit = file.rate_limit.map(rate_limit).transpose()?.flatten();
        Ok(WebConfig {
            tls,
            users: file.basic_auth_users,
            headers,
            rate_limit,
        })
    }
}

/// Why a config text was refused ([`WebConfig::load`] adds the file's path).
#[derive(Debug)]
pub enum Error {
    Syntax(String),
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// None when the section configures nothing (exporter-toolkit: TLS disabled).
fn tls_settings(t: TlsFile, dir: &Path) -> Result<Option<TlsSettings>, Error> {
    let pem = |inline: Option<String>, file: Option<PathBuf>| match (inline, file) {
        (_, Some(f)) if !f.as_os_str().is_empty() => Some(Pem::File(dir.join(f))),
        (Some(s), _) if !s.is_empty() => Some(Pem::Inline(s)),
        _ => None,
    };
    let cert = pem(t.cert, t.cert_file);
    let key = pem(t.key, t.key_file);
    let client_ca = pem(t.client_ca, t.client_ca_file);
    let auth_name = t.client_auth_type.unwrap_or_default();
    if cert.is_none() && key.is_none() && client_ca.is_none() && auth_name.is_empty() {
        return Ok(None);
    }
    let cert =
        cert.ok_or_else(|| invalid("tls_server_config: missing one of cert or cert_file"))?;
    let key = key.ok_or_else(|| invalid("tls_server_config: missing one of key or key_file"))?;
    let client_auth = match auth_name.as_str() {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => {
            return Err(invalid(format!(
                "tls_server_config.client_auth_type {auth_name}: tcpmon does not accept client \
                 certificates it cannot verify; use RequireAndVerifyClientCert or \
                 VerifyClientCertIfGiven with client_ca_file"
            )));
        }
        other => return Err(invalid(format!("invalid client_auth_type: {other}"))),
    };
    if client_auth != ClientAuth::None && client_ca.is_none() {
        return Err(invalid(format!(
            "tls_server_config.client_auth_type {auth_name} needs client_ca_file (or client_ca)"
        )));
    }
    if client_ca.is_some() && client_auth == ClientAuth::None {
        return Err(invalid(
            "client CA's have been configured without a Client Auth Policy (client_auth_type)",
        ));
    }
    if t.client_allowed_sans.is_some() && client_auth != ClientAuth::RequireAndVerify {
        return Err(invalid(
            "client_allowed_sans requires client_auth_type RequireAndVerifyClientCert",
        ));
    }
    let min_version = version(t.min_version.as_deref(), TlsVersion::Tls12, "min_version")?;
    let max_version = version(t.max_version.as_deref(), TlsVersion::Tls13, "max_version")?;
    if min_version > max_version {
        return Err(invalid(
            "tls_server_config: min_version is above max_version",
        ));
    }
    for suite in &t.cipher_suites {
        if suite.contains("_CBC_") || suite.contains("RC4") || suite.contains("3DES") {
            return Err(invalid(format!(
                "cipher_suites: {suite} is refused: CBC, RC4 and 3DES suites are not offered \
                 (tcpmon's TLS 1.2 suites are AEAD: AES-GCM and ChaCha20-Poly1305)"
            )));
        }
        if !super::tls::known_suite(suite) {
            return Err(invalid(format!("unknown cipher: {suite}")));
        }
    }
    for curve in &t.curve_preferences {
        match curve.as_str() {
            "X25519" | "CurveP256" | "CurveP384" => {}
            "CurveP521" => {
                return Err(invalid(format!(
                    "curve_preferences: {curve} is not offered by tcpmon's TLS library \
                     (rustls): use X25519, CurveP256 or CurveP384"
                )));
            }
            other => return Err(invalid(format!("unknown curve: {other}"))),
        }
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_auth,
        client_ca,
        min_version,
        max_version,
        cipher_suites: t.cipher_suites,
        curves: t.curve_preferences,
        allowed_sans: t.client_allowed_sans,
    }))
}

fn version(name: Option<&str>, default: TlsVersion, key: &str) -> Result<TlsVersion, Error> {
    match name {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(old @ ("TLS10" | "TLS11")) => Err(invalid(format!(
            "tls_server_config.{key}: {old} is refused: tcpmon speaks TLS 1.2 and 1.3 only"
        ))),
        Some(other) => Err(invalid(format!("unknown TLS version: {other}"))),
    }
}

fn check_header(name: String, value: String) -> Result<(String, String), Error> {
    let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(h, _)| *h == name) else {
        return Err(invalid(format!(
            "HTTP header {name:?} can not be configured"
        )));
    };
    if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
        return Err(invalid(format!(
            "invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}"
        )));
    }
    // Visible ASCII, spaces and tabs: HeaderValue also takes obs-text (bytes from
    // 0x80), which RFC 9110 keeps only for old senders; in a configured value it is
    // a typing mistake (a no-break space), found by the web_config fuzz target.
    let visible = value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    if !visible || axum::http::HeaderValue::from_str(&value).is_err() {
        return Err(invalid(format!(
            "header {name}: value {value:?} is not valid"
        )));
    }
    Ok((name, value))
}

/// exporter-toolkit's rate limit: `interval` between requests, `burst` above it;
/// a zero interval turns it off.
fn rate_limit(r: RateLimitFile) -> Result<Option<RateLimit>, Error> {
    let interval = match r.interval.as_deref() {
        None | Some("") => return Ok(None),
        Some(s) => go_duration(s).ok_or_else(|| {
            invalid(format!(
                "rate_limit.interval: {s:?} is not a duration (e.g. 100ms, 1s)"
            ))
        })?,
    };
    if interval.is_zero() {
        return Ok(None);
    }
    Ok(Some(RateLimit {
        burst: r.burst.max(1),
        interval,
    }))
}

/// Go's `time.ParseDuration` subset config files use: `1h30m`, `250ms`, `1.5s`.
pub fn go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    // Too long for a Duration is invalid, as Go's ParseDuration says of an overflow
    // (found by the web_config fuzz target: from_secs_f64 panicked).
    Duration::try_from_secs_f64(total).ok()
}

fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    let parts: Vec<&str> = hash.split('$').collect();
    match parts.as_slice() {
        ["", "2a" | "2b" | "2x" | "2y", cost, rest] if rest.len() == 53 => cost
            .parse::<u32>()
            .ok()
            .filter(|c| (4..=31).contains(c))
            .ok_or_else(|| format!("cost {cost:?} out of range")),
        _ => Err("expected $2y$<cost>$<53 characters>".into()),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
