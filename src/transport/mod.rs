//! The HTTP/1 accept loop. `axum::serve` holds a connection for as long as the client
//! likes and accepts without limit, so a few hundred clients sending half a header can
//! use up the process's file descriptors and lock everyone out. Here every connection
//! lives under a header-read and an idle timeout ([`activity`]), and the number of open
//! connections is capped below the descriptor limit. At the cap, a new connection takes
//! the place of the oldest one with no request in flight (a slow or idle client:
//! [`open`]); only when every connection is busy with a request is the new one answered
//! 503 + `Retry-After` and closed. Descriptors never run out, and connections that send
//! nothing cannot keep a client out. A request whose body the client is still sending
//! counts as slow too, and must end within a deadline ([`body`]); one client address
//! holds at most a share of the cap ([`open`]); and hyper's read buffer and header count
//! are bounded by the header limit, so a head that never ends costs no more than it.

pub mod activity;
mod body;
mod open;
mod watched;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use activity::Timeouts;
use activity::{Activity, InFlight};
use body::Reading;
use open::Open;
use watched::Watched;

/// How one listener treats its connections.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// Connections one address may hold; 0: a quarter of `max_connections`.
    pub per_address: usize,
    /// Peers exempt from the per-address share (trusted proxies).
    pub exempt: Arc<[crate::http::client_addr::Cidr]>,
    pub max_header_bytes: usize,
}

impl Limits {
    fn share(&self) -> usize {
        match self.per_address {
            0 => (self.max_connections / 4).max(1),
            n => n,
        }
    }
}

/// hyper's smallest read buffer.
const MIN_BUF: usize = 8192;
/// Header lines at most: hyper's default, set here so it cannot silently change.
const MAX_HEADERS: usize = 100;

/// What a client past the cap reads before the connection closes.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\ncache-control: no-store\r\n\
x-content-type-options: nosniff\r\nconnection: close\r\ncontent-length: 78\r\n\r\n\
{\"error\":\"temporarily_unavailable\",\"error_description\":\"too many connections\"}";

/// Refusals answered at once (each holds its descriptor for at most 2 x `LINGER`). Past
/// these, a refused connection is closed without an answer: refusing must never hold
/// many descriptors.
const LINGERING_REFUSALS: usize = 32;
const LINGER: Duration = Duration::from_millis(500);

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish their requests (idle ones close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::new(limits.max_connections, limits.share()));
    let lingering = Arc::new(Semaphore::new(LINGERING_REFUSALS));
    let evicting = Arc::new(Semaphore::new(EVICTIONS_AT_ONCE));
    // An address past its share churning through its own connections must not use up
    // the evictions that make room for everyone else.
    let evicting_own = Arc::new(Semaphore::new(EVICTIONS_AT_ONCE));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The timeouts are ours (see `activity`): hyper's one timer cannot tell a slow
    // header from an idle connection.
    http.header_read_timeout(None);
    // hyper's default buffer (~400 KiB) would hold that much of an unfinished head per
    // connection before our header limit is looked at; room for the limit plus the
    // request line and a pipelined byte or two is enough, and heads beyond it are
    // answered 431 by hyper.
    http.max_buf_size(MIN_BUF.max(limits.max_header_bytes.saturating_add(MIN_BUF)));
    http.max_headers(MAX_HEADERS);
    let serving = Arc::new(Serving {
        http,
        service: TowerToHyperService::new(app),
        timeouts: limits.timeouts,
        open: open.clone(),
    });
    tokio::pin!(shutdown);
    let (mut refused, mut last_warning) = (0u64, None::<std::time::Instant>);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ip = peer.ip().to_canonical();
        let key = (!limits.exempt.iter().any(|c| c.contains(ip))).then(|| open::peer_key(ip));
        let over_share = key.is_some_and(|k| open.over_share(k));
        if !over_share && let Ok(slot) = slots.clone().try_acquire_owned() {
            serving.spawn(stream, peer, key, slot, graceful.watcher());
            continue;
        }
        let (heir, inheritance) = tokio::sync::oneshot::channel();
        let mut heir = Some(heir);
        // Past its share, an address makes room among its own connections only.
        let (permits, key_over) = match key {
            Some(key) if over_share => (&evicting_own, Some(key)),
            _ => (&evicting, None),
        };
        if let Ok(waiting) = permits.clone().try_acquire_owned()
            && match key_over {
                Some(key) => open.evict_own(key, &mut heir),
                None => open.evict_one(&mut heir),
            }
        {
            let serving = serving.clone();
            let (watcher, lingering) = (graceful.watcher(), lingering.clone());
            tokio::spawn(async move {
                let slot = tokio::time::timeout(EVICTION_WAIT, inheritance).await;
                drop(waiting);
                match slot {
                    Ok(Ok(slot)) => serving.spawn(stream, peer, key, slot, watcher),
                    _ => refuse(stream, lingering),
                }
            });
            continue;
        }
        refused += 1;
        if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                max_connections = limits.max_connections,
                refused,
                "connection cap (or one address's share of it) reached and no connection could make room: refusing with 503"
            );
            (refused, last_warning) = (0, Some(std::time::Instant::now()));
        }
        refuse(stream, lingering.clone());
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Refusals are logged at most this often (with their count), not one line each.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long a connection that evicted another waits for the freed slot, and how many
/// may wait at once (each holds a descriptor beyond the cap meanwhile).
const EVICTION_WAIT: Duration = Duration::from_secs(1);
const EVICTIONS_AT_ONCE: usize = 32;

/// Descriptors one listener may hold beyond its cap, while refusing or evicting.
pub const BEYOND_CAP: usize = LINGERING_REFUSALS + 2 * EVICTIONS_AT_ONCE;

/// What every connection of one listener shares.
struct Serving {
    http: hyper::server::conn::http1::Builder,
    service: TowerToHyperService<Router>,
    timeouts: Timeouts,
    open: Arc<Open>,
}

/// TCP keepalive: probes after this long without traffic, then every interval (nine
/// unanswered probes and the kernel closes the connection).
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Serving {
    fn spawn(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        key: Option<std::net::IpAddr>,
        slot: OwnedSemaphorePermit,
        watcher: Watcher,
    ) {
        // Responses go out at once, not held back by Nagle's algorithm waiting for an ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // A peer that vanished without a FIN (a partition, a crashed host) is found out
        // in about two and a half minutes instead of the kernel's two hours: a
        // revocation stream, always in flight and kept alive by comments that fit in the
        // socket buffer, would otherwise hold its connection and its stream slot.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "could not set TCP keepalive");
        }
        let activity = Activity::new();
        let held = self.open.add(&activity, key);
        let body_read = self.timeouts.body_read;
        let requests = {
            let (service, activity) = (self.service.clone(), activity.clone());
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let in_flight = activity.begin();
                let request = request.map(|body| Reading::new(body, &activity, body_read));
                let response = service.call(request);
                async move {
                    let response: axum::response::Response = match response.await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let io = TokioIo::new(Watched {
            io: stream,
            activity: activity.clone(),
        });
        let connection = watcher.watch(self.http.serve_connection(io, requests));
        let timeouts = self.timeouts;
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = activity.expired(timeouts) => {
                    tracing::debug!(%peer, "closing a slow, idle or evicted connection");
                }
            }
            // Evicted: the slot goes to the connection that took this one's place.
            drop(held);
            if let Some(heir) = activity.take_heir() {
                let _ = heir.send(slot);
            }
        });
    }
}

/// As `axum::serve` does: errors of one connection are skipped; others (out of file
/// descriptors) pause accepting a moment rather than spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing for 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers 503 and closes. The request is read first (briefly): an HTTP client takes
/// an answer that comes before its request for a broken connection, and closing with
/// its request unread would reset the connection under the answer.
fn refuse(stream: TcpStream, lingering: Arc<Semaphore>) {
    let Ok(permit) = lingering.try_acquire_owned() else {
        // Too many refusals at once: closing is the cheapest clean answer.
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, stream.read(&mut sink)).await;
        let _ = tokio::time::timeout(LINGER, stream.write_all(REFUSAL)).await;
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(permit);
    });
}

/// A response body that keeps its request in flight until it is sent or dropped, so
/// a long response (a revocation stream) is never taken for an idle connection.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The most connections that fit in the process's file descriptors: the soft limit is
/// raised to the hard one first; `reserve` is kept for everything else (database
/// connections, files, the other listener).
pub fn connection_room(reserve: u64) -> Option<u64> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?.0
        }
    };
    Some(limit.saturating_sub(reserve))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_one_well_formed_response() {
        let text = std::str::from_utf8(super::REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "temporarily_unavailable");
    }
}
