//! One connection from accept to close: a slot under the cap, the TLS handshake if
//! configured, then HTTP/1.1 with the header timeout: a connection that holds no
//! request in progress for that long (a slow request head, a silent client, an idle
//! keep-alive) is closed.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Request, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::oneshot,
    time::Instant,
};
use tower::ServiceExt as _;

use super::{
    WebOptions,
    metrics::Closed,
    slots::{Admitted, Slot, Slots},
    state::{Active, WebState},
};

/// What every connection task shares.
pub struct Ctx {
    pub router: Router,
    pub state: WebState,
    pub slots: Arc<Slots>,
    pub opts: WebOptions,
}

/// Takes a slot for a new connection and serves it on its own task.
pub fn spawn<IO>(ctx: &Arc<Ctx>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = ctx.state.metrics();
    metrics.opened();
    let (slot, evicted) = match ctx.slots.admit() {
        Admitted::Slot(s, rx) => (s, rx),
        Admitted::Refused => {
            metrics.closed(Closed::Refused);
            return;
        }
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let why = serve(&ctx, io, slot, evicted).await;
        ctx.state.metrics().closed(why);
    });
}

async fn serve<IO>(ctx: &Arc<Ctx>, io: IO, slot: Slot, mut evicted: oneshot::Receiver<()>) -> Closed
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let active = ctx.state.active();
    let Some(acceptor) = active.tls.clone() else {
        return http(ctx, io, active, slot, evicted).await;
    };
    let handshake = tokio::time::timeout(ctx.opts.header_timeout, acceptor.accept(io));
    let tls = tokio::select! {
        r = handshake => match r {
            Err(_) => return Closed::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return Closed::Tls;
            }
            Ok(Ok(tls)) => tls,
        },
        _ = &mut evicted => return Closed::Evicted,
    };
    if let Some(allowed) = active
        .config
        .tls
        .as_ref()
        .and_then(|t| t.allowed_sans.as_ref())
    {
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if !cert.is_some_and(|c| super::tls::sans_allowed(allowed, c)) {
            tracing::debug!("client certificate has none of client_allowed_sans");
            return Closed::Tls;
        }
    }
    http(ctx, tls, active, slot, evicted).await
}

async fn http<IO>(
    ctx: &Arc<Ctx>,
    io: IO,
    active: Arc<Active>,
    slot: Slot,
    mut evicted: oneshot::Receiver<()>,
) -> Closed
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Idle since accept: with TLS, the handshake and the request head share one timeout.
    let slot = Arc::new(slot);
    let svc = {
        let (ctx, slot) = (ctx.clone(), slot.clone());
        hyper::service::service_fn(move |req| {
            let (ctx, slot, active) = (ctx.clone(), slot.clone(), active.clone());
            async move {
                slot.busy();
                let resp = handle(&ctx, &active, req).await;
                slot.idle();
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(ctx.opts.max_request_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let timeout = ctx.opts.header_timeout;
    loop {
        let deadline = match slot.idle_since() {
            Some(t) => Instant::from_std(t) + timeout,
            None => Instant::now() + timeout,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return Closed::Done;
            }
            _ = &mut evicted => return Closed::Evicted,
            _ = tokio::time::sleep_until(deadline) => {
                if slot.idle_since().is_some_and(|t| t.elapsed() >= timeout) {
                    return Closed::Timeout;
                }
            }
        }
    }
}

/// Paths a liveness or readiness probe asks for: they say only ok / not ready, and
/// a kubelet probe cannot send credentials, so basic auth does not guard them.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The closed set of handler labels.
fn handler_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/api/v1/syn" => "/api/v1/syn",
        "/api/v1/top" => "/api/v1/top",
        _ => "other",
    }
}

async fn handle(ctx: &Ctx, active: &Active, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut resp = match refuse(ctx, active, &req, &path).await {
        Some(r) => r,
        None => match ctx.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
    };
    let headers = resp.headers_mut();
    for (k, v) in &active.config.headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    ctx.state
        .metrics()
        .request(handler_label(&path), resp.status().as_u16());
    resp
}

/// The answer when the request may not reach a handler: too large, over the rate
/// limit, or without valid credentials.
async fn refuse(
    ctx: &Ctx,
    active: &Active,
    req: &Request<Incoming>,
    path: &str,
) -> Option<Response<Body>> {
    let status = |code: StatusCode| {
        let mut r = Response::new(Body::from(format!("{code}\n")));
        *r.status_mut() = code;
        r
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > ctx.opts.max_request_bytes)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Some(status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    if active.limiter.as_ref().is_some_and(|l| !l.allow()) {
        return Some(status(StatusCode::TOO_MANY_REQUESTS));
    }
    if let Some(auth) = &active.auth
        && !PROBES.contains(&path)
        && !auth.allows(req.headers().get(header::AUTHORIZATION)).await
    {
        let mut r = status(StatusCode::UNAUTHORIZED);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tcpmon\""),
        );
        return Some(r);
    }
    None
}
