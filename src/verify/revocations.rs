//! Following the server's revocation stream (Server-Sent Events on `/v1/revocations`).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::Verifier;

const IDLE_LIMIT: Duration = Duration::from_secs(45);

#[derive(Deserialize)]
struct Event {
    session_id: Uuid,
    expires_at: i64,
}

/// Feeds one SSE `data:` payload to the verifier.
fn apply(verifier: &Verifier, data: &str) {
    if let Ok(e) = serde_json::from_str::<Event>(data) {
        verifier.mark_revoked(e.session_id, e.expires_at);
    }
}

pub(super) fn spawn(
    verifier: Verifier,
    client_id: String,
    secret: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_id: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            match follow(&verifier, &client_id, &secret, &mut last_id).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream interrupted; reconnecting");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            tokio::time::sleep(backoff).await;
        }
    })
}

/// One connection: read events until the stream ends. `last_id` resumes after a drop.
async fn follow(
    verifier: &Verifier,
    client_id: &str,
    secret: &str,
    last_id: &mut Option<String>,
) -> Result<(), String> {
    let config = verifier.config();
    let mut request = config
        .http
        .get(format!("{}/v1/revocations", config.base_url))
        .basic_auth(client_id, Some(secret))
        .header("accept", "text/event-stream");
    if let Some(id) = last_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let (mut data, mut id) = (String::new(), None::<String>);
    // The server sends a keep-alive every 15 s: silence for longer means the connection
    // died without closing (NAT, load balancer), and a dead feed would hide revocations.
    while let Some(chunk) = tokio::time::timeout(IDLE_LIMIT, stream.next())
        .await
        .map_err(|_| "no event or keep-alive for 45 s".to_owned())?
    {
        let chunk = chunk.map_err(|e| e.to_string())?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() {
                    apply(verifier, &data);
                    if id.is_some() {
                        *last_id = id.take();
                    }
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            }
        }
    }
    Ok(())
}
