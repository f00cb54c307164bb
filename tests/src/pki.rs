//! A throwaway certificate authority for the TLS tests, made with the openssl CLI:
//! a CA, server certificates for 127.0.0.1, client certificates with a DNS SAN.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::run;

pub struct Pki {
    pub dir: PathBuf,
}

/// A certificate and its key, as files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_owned(),
        };
        run(Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            ])
            .args(["-subj", "/CN=tcpmon test CA"]));
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate signed by the CA: `cn` as subject, `san` (e.g. "IP:127.0.0.1")
    /// and `usage` ("serverAuth" or "clientAuth").
    pub fn issue(&self, name: &str, cn: &str, san: &str, usage: &str) -> Pair {
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        run(Command::new("openssl")
            .current_dir(&self.dir)
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]));
        run(Command::new("openssl")
            .current_dir(&self.dir)
            .args([
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            ])
            .args(["-CAcreateserial", "-days", "2", "-out", &cert, "-extfile"])
            .arg(&ext));
        Pair {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}
