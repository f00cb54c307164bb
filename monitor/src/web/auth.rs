//! Basic auth against bcrypt hashes, and the request rate limit.
//!
//! A bcrypt check costs tens of milliseconds of CPU by design: it runs off the async
//! workers, one at a time (a flood of wrong passwords costs one core, not all), and a
//! verdict is cached under a keyed hash so a scraper's every request doesn't pay it.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::http::HeaderValue;
use base64::Engine as _;

use super::config::RateLimit;

/// Verdicts kept before the cache starts over (a bound under a password-guessing
/// flood, where every guess is new).
const CACHE_MAX: usize = 4096;

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    cache: Mutex<HashMap<(u64, u64), bool>>,
    keys: (RandomState, RandomState),
    one_at_a_time: tokio::sync::Semaphore,
}

impl BasicAuth {
    /// None when the file names no users: nothing to check.
    pub fn new(users: &BTreeMap<String, String>) -> Option<Arc<BasicAuth>> {
        (!users.is_empty()).then(|| {
            Arc::new(BasicAuth {
                users: users.clone(),
                cache: Mutex::new(HashMap::new()),
                keys: (RandomState::new(), RandomState::new()),
                one_at_a_time: tokio::sync::Semaphore::new(1),
            })
        })
    }

    /// Whether an `Authorization` header names a user with the right password.
    pub async fn allows(self: &Arc<Self>, header: Option<&HeaderValue>) -> bool {
        let Some((user, pass)) = header.and_then(credentials) else {
            return false;
        };
        let known = self.users.get(&user);
        // An unknown user still costs a bcrypt check, so timing doesn't tell users apart.
        let hash = known.cloned().unwrap_or_else(|| decoy_hash().to_owned());
        let key = (
            self.keys.0.hash_one((&user, &hash, &pass)),
            self.keys.1.hash_one((&user, &hash, &pass)),
        );
        if let Some(&ok) = self.cache.lock().expect("auth cache").get(&key) {
            return ok && known.is_some();
        }
        let Ok(_permit) = self.one_at_a_time.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let mut cache = self.cache.lock().expect("auth cache");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, ok);
        ok && known.is_some()
    }
}

fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// A real hash of nothing anyone knows, made once at the first unknown user.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let secret: u128 = RandomState::new().hash_one(Instant::now()) as u128;
        bcrypt::hash(secret.to_string(), bcrypt::DEFAULT_COST).expect("bcrypt hash")
    })
}

/// exporter-toolkit's limiter: a token every `interval`, at most `burst` saved up.
pub struct RateLimiter {
    every: Duration,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(r: RateLimit) -> RateLimiter {
        let burst = f64::from(r.burst);
        RateLimiter {
            every: r.interval,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().expect("rate limiter");
        let now = Instant::now();
        let earned = now.duration_since(s.1).as_secs_f64() / self.every.as_secs_f64();
        s.0 = (s.0 + earned).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_credentials() {
        let h = HeaderValue::from_static("Basic dXNlcjpwYTpzcw==");
        assert_eq!(credentials(&h), Some(("user".into(), "pa:ss".into())));
        assert_eq!(credentials(&HeaderValue::from_static("Bearer x")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Basic !!!")), None);
    }

    #[test]
    fn rate_limiter_allows_burst_then_one_per_interval() {
        let r = RateLimiter::new(RateLimit {
            burst: 2,
            interval: Duration::from_secs(3600),
        });
        assert!(r.allow());
        assert!(r.allow());
        assert!(!r.allow());
    }

    #[tokio::test]
    async fn checks_bcrypt_and_caches() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let users = BTreeMap::from([("alice".to_string(), hash)]);
        let auth = BasicAuth::new(&users).unwrap();
        let basic = |s: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert!(auth.allows(Some(&basic("alice:secret"))).await);
        assert!(auth.allows(Some(&basic("alice:secret"))).await, "cached");
        assert!(!auth.allows(Some(&basic("alice:wrong"))).await);
        assert!(!auth.allows(Some(&basic("bob:secret"))).await);
        assert!(!auth.allows(None).await);
        assert!(BasicAuth::new(&BTreeMap::new()).is_none());
    }
}
