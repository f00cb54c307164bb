//! The web config in force, re-read when its file or a certificate it names changes
//! (checked every second, off the async workers): renewed certificates and changed
//! users apply to the next connection without a restart; a broken edit keeps the last
//! good one.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio_rustls::TlsAcceptor;

use super::{
    auth::{BasicAuth, RateLimiter},
    config::WebConfig,
    metrics::WebMetrics,
    tls,
};

/// What one connection is served under, from accept to close.
pub struct Active {
    pub config: WebConfig,
    pub tls: Option<TlsAcceptor>,
    pub auth: Option<Arc<BasicAuth>>,
    pub limiter: Option<RateLimiter>,
}

impl Active {
    fn build(config: WebConfig) -> anyhow::Result<Active> {
        let tls = match &config.tls {
            Some(s) => Some(TlsAcceptor::from(tls::server_config(s)?)),
            None => None,
        };
        Ok(Active {
            tls,
            auth: BasicAuth::new(&config.users),
            limiter: config.rate_limit.map(RateLimiter::new),
            config,
        })
    }

    fn plain() -> Active {
        Active {
            config: WebConfig::default(),
            tls: None,
            auth: None,
            limiter: None,
        }
    }
}

/// A file's identity and version, enough to notice a rewrite or a rename over it.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp<'a>(files: impl Iterator<Item = &'a Path>) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

pub struct WebState {
    path: Option<PathBuf>,
    current: Mutex<(Stamp, Arc<Active>)>,
    metrics: WebMetrics,
}

impl WebState {
    /// Reads the file now: a bad file stops tcpmon before anything is attached.
    pub fn load(path: Option<&Path>, metrics: WebMetrics) -> anyhow::Result<WebState> {
        let (stamp, active) = match path {
            None => (Stamp::new(), Active::plain()),
            Some(p) => {
                let config = WebConfig::load(p)?;
                let stamp = Self::stamp_of(p, &config);
                let active =
                    Active::build(config).map_err(|e| anyhow::anyhow!("{}: {e:#}", p.display()))?;
                (stamp, active)
            }
        };
        metrics.reloaded(true);
        Ok(WebState {
            path: path.map(Path::to_owned),
            current: Mutex::new((stamp, Arc::new(active))),
            metrics,
        })
    }

    fn stamp_of(path: &Path, config: &WebConfig) -> Stamp {
        let tls_files = config.tls.iter().flat_map(|t| t.files());
        stamp(std::iter::once(path).chain(tls_files))
    }

    pub fn metrics(&self) -> &WebMetrics {
        &self.metrics
    }

    /// The config a new connection is served under.
    pub fn active(&self) -> Arc<Active> {
        self.current.lock().expect("web state").1.clone()
    }

    /// Re-reads the file and certificates if one changed (file system calls: run it
    /// off the async workers).
    pub fn refresh(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let mut current = self.current.lock().expect("web state");
        let now = Self::stamp_of(path, &current.1.config);
        if now == current.0 {
            return;
        }
        match WebConfig::load(path).map(|c| (Self::stamp_of(path, &c), c)) {
            Ok((stamp, config)) => match Active::build(config) {
                Ok(active) => {
                    tracing::info!(file = %path.display(), "web config and certificates re-read");
                    *current = (stamp, Arc::new(active));
                    self.metrics.reloaded(true);
                }
                Err(e) => self.keep(&mut current, now, &format!("{e:#}")),
            },
            Err(e) => self.keep(&mut current, now, &e.to_string()),
        }
    }

    pub fn watches_files(&self) -> bool {
        self.path.is_some()
    }

    /// A bad edit: the last good config stays, and the same bad files aren't re-read
    /// for every connection.
    fn keep(&self, current: &mut (Stamp, Arc<Active>), now: Stamp, why: &str) {
        tracing::error!(error = %why, "web config not re-read: keeping the last good one");
        current.0 = now;
        self.metrics.reloaded(false);
    }
}
