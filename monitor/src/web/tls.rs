//! The rustls server config a `tls_server_config` section asks for: TLS 1.2 and 1.3,
//! AEAD suites only (the file cannot ask for less), client certificates verified
//! against the configured CAs, and the client's SANs matched when asked.

use std::{net::IpAddr, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig, SupportedCipherSuite,
    crypto::{CryptoProvider, ring},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::config::{ClientAuth, Pem, TlsSettings, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: no PEM {kind} found ({detail})")]
    Pem {
        what: &'static str,
        kind: &'static str,
        detail: String,
    },
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Go's names for the TLS 1.2 AEAD suites rustls offers, with Go's older aliases.
fn rustls_name(go: &str) -> &str {
    match go {
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

fn suite_name(s: &SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

/// Whether rustls offers the suite a file names (TLS 1.3 names are accepted, as Go
/// does, and change nothing: every TLS 1.3 suite is AEAD and stays on).
pub fn known_suite(go: &str) -> bool {
    let want = rustls_name(go);
    ring::default_provider()
        .cipher_suites
        .iter()
        .any(|s| suite_name(s) == want)
}

fn provider(s: &TlsSettings) -> CryptoProvider {
    let mut p = ring::default_provider();
    if !s.cipher_suites.is_empty() {
        let all = std::mem::take(&mut p.cipher_suites);
        let tls13 = all.iter().filter(|c| c.tls13().is_some()).copied();
        let chosen = s.cipher_suites.iter().filter_map(|go| {
            all.iter()
                .find(|c| c.tls13().is_none() && suite_name(c) == rustls_name(go))
                .copied()
        });
        p.cipher_suites = tls13.chain(chosen).collect();
    }
    if !s.curves.is_empty() {
        p.kx_groups = s
            .curves
            .iter()
            .filter_map(|c| match c.as_str() {
                "X25519" => Some(ring::kx_group::X25519),
                "CurveP256" => Some(ring::kx_group::SECP256R1),
                "CurveP384" => Some(ring::kx_group::SECP384R1),
                _ => None,
            })
            .collect();
    }
    p
}

fn read(pem: &Pem, what: &'static str) -> Result<Vec<u8>, TlsError> {
    match pem {
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        Pem::File(path) => std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.display().to_string(),
            source,
        }),
    }
}

fn certs(pem: &Pem, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(pem, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            kind: "certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            kind: "certificate",
            detail: "the data holds none".into(),
        });
    }
    Ok(certs)
}

/// Builds the config from the files as they are now.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider(s));
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (s.min_version..=s.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match (&s.client_ca, s.client_auth) {
        (Some(ca), auth @ (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify)) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "client_ca_file")? {
                roots.add(c)?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::VerifyIfGiven {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build()?)
        }
        _ => builder.with_no_client_auth(),
    };
    let chain = certs(&s.cert, "cert_file")?;
    let key_bytes = read(&s.key, "key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Pem {
        what: "key_file",
        kind: "private key",
        detail: e.to_string(),
    })?;
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// exporter-toolkit's rule: some SAN of the client's certificate (DNS, email, IP,
/// URI) is in the allowed list.
pub fn sans_allowed(allowed: &[String], cert: &CertificateDer<'_>) -> bool {
    use x509_parser::{extensions::GeneralName, prelude::*};
    let Ok((_, cert)) = X509Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return false;
    };
    sans.value.general_names.iter().any(|name| {
        let value = match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                s.to_string()
            }
            GeneralName::IPAddress(b) => match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")).to_string(),
                16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")).to_string(),
                _ => return false,
            },
            _ => return false,
        };
        allowed.contains(&value)
    })
}
