//! The publisher connection of one broker: a confirm-mode channel offered to
//! [`super::Brokers::publish`], reopened when the broker closes it, and the
//! connection reopened when it drops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio::time::Instant;

use super::connect::{close, error_text, next, Backoff, ConnCtx, Reported, STABLE, WATCH_INTERVAL};
use super::{lock, Inner, PubLink};

/// Opening the confirm channel may take this long.
const CHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run(ctx: Arc<ConnCtx>, inner: Arc<Inner>, mut shutdown: watch::Receiver<()>) {
    let tls_cache = Mutex::new(None);
    let mut backoff = Backoff::reconnect();
    let mut reported = Reported::Nothing;
    loop {
        let attempt = tokio::select! {
            attempt = ctx.connect(&tls_cache) => attempt,
            _ = shutdown.changed() => return,
        };
        let reason = match attempt {
            Err(reason) => reason,
            Ok(connection) => {
                let since = Instant::now();
                let outcome =
                    session(&ctx, &inner, &connection, &mut reported, &mut shutdown).await;
                set_link(&ctx, &inner, None);
                match outcome {
                    None => {
                        close(&connection, "shutting down").await;
                        return;
                    }
                    Some(reason) => {
                        close(&connection, "reconnecting").await;
                        if since.elapsed() >= STABLE {
                            backoff.reset();
                        }
                        reason
                    }
                }
            }
        };
        ctx.report_down(&mut reported, &reason).await;
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn set_link(ctx: &ConnCtx, inner: &Inner, link: Option<(&Connection, Channel)>) {
    let link = link.map(|(connection, channel)| PubLink {
        connection: connection.status().clone(),
        channel,
        generation: ctx
            .slot
            .link_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1,
    });
    *lock(&ctx.slot.publisher) = link;
    inner.epoch.send_modify(|epoch| *epoch += 1);
}

async fn open_channel(connection: &Connection) -> Result<Channel, String> {
    let open = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    match tokio::time::timeout(CHANNEL_TIMEOUT, open).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!(
            "cannot open the publish channel: {}",
            error_text(&e)
        )),
        Err(_) => Err(format!(
            "the publish channel did not open within {CHANNEL_TIMEOUT:?}"
        )),
    }
}

/// Serves one connection; returns why it ended, or None on shutdown.
async fn session(
    ctx: &ConnCtx,
    inner: &Inner,
    connection: &Connection,
    reported: &mut Reported,
    shutdown: &mut watch::Receiver<()>,
) -> Option<String> {
    let mut events = Box::pin(connection.events_listener());
    let channel = match open_channel(connection).await {
        Ok(channel) => channel,
        Err(reason) => return Some(reason),
    };
    set_link(ctx, inner, Some((connection, channel.clone())));
    ctx.report_up(reported).await;
    let mut channel = channel;
    loop {
        tokio::select! {
            event = next(&mut events) => match event {
                Some(lapin::Event::Error(e)) if e.is_amqp_soft_error() => {
                    log::debug!("{}: channel closed by the broker: {}", ctx.name(), error_text(&e));
                }
                Some(lapin::Event::Error(e)) => return Some(error_text(&e)),
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    log::warn!("{}: the broker blocks publishing: {reason}", ctx.name());
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    log::info!("{}: the broker accepts publishing again", ctx.name());
                }
                Some(_) => {}
                None => return Some("connection closed".into()),
            },
            _ = ctx.slot.reopen.notified() => {}
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = shutdown.changed() => return None,
        }
        if !connection.status().connected() {
            return Some("connection closed by the broker".into());
        }
        if !channel.status().connected() {
            log::warn!(
                "{}: the publish channel closed; opening another",
                ctx.name()
            );
            channel = match open_channel(connection).await {
                Ok(channel) => channel,
                Err(reason) => return Some(reason),
            };
            set_link(ctx, inner, Some((connection, channel.clone())));
        }
    }
}
