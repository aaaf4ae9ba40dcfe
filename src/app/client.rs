//! `wsgate client`: a tiny WebSocket client so the demo needs nothing else installed.
//! Sends each `--send` message (or each stdin line), prints what comes back.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub struct ClientOptions {
    pub url: String,
    pub send: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub wait: Duration,
}

pub async fn run(opts: ClientOptions) -> anyhow::Result<()> {
    let mut request = opts
        .url
        .as_str()
        .into_client_request()
        .with_context(|| format!("`{}` is not a ws:// URL", opts.url))?;
    for (k, v) in &opts.headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("bad header name `{k}`"))?,
            http::HeaderValue::from_str(v).with_context(|| format!("bad header value `{v}`"))?,
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("could not open {}", opts.url))?;
    eprintln!("connected: {} {}", resp.status().as_u16(), opts.url);
    let (mut tx, mut rx) = ws.split();

    let printer = tokio::spawn(async move {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Text(t)) => println!("< {t}"),
                Ok(Message::Binary(b)) => println!("< ({} bytes binary)", b.len()),
                Ok(Message::Close(c)) => {
                    println!(
                        "< close {}",
                        c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                            .unwrap_or_default()
                    );
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("connection error: {e}");
                    break;
                }
            }
        }
    });

    if opts.send.is_empty() {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            tx.send(Message::text(line)).await?;
        }
    } else {
        for m in &opts.send {
            tx.send(Message::text(m.clone())).await?;
        }
    }
    // Give the echoes time to arrive before closing.
    tokio::time::sleep(opts.wait).await;
    let _ = tx.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    Ok(())
}
