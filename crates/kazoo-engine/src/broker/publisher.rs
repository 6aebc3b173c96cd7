//! The publisher connection of one broker: a confirm-mode channel offered to
//! [`super::Brokers::publish`], reopened when the broker closes it, and the
//! connection reopened when it drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::watch;

use super::connect::{connection_loop, error_text, next, ConnCtx, Reported, Serve, WATCH_INTERVAL};
use super::slot::{PubChannel, PubLink};
use super::{lock, Inner};

/// Opening the confirm channel may take this long.
const CHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a probe of a broker that stopped confirming waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) async fn run(ctx: Arc<ConnCtx>, inner: Arc<Inner>, shutdown: watch::Receiver<()>) {
    let mut publishing = Publishing {
        ctx: ctx.clone(),
        inner,
    };
    connection_loop(&ctx, shutdown, &mut publishing).await;
}

/// What a publisher connection serves.
struct Publishing {
    ctx: Arc<ConnCtx>,
    inner: Arc<Inner>,
}

impl Serve for Publishing {
    type Link = Arc<Connection>;

    async fn serve(
        &mut self,
        connection: &mut Arc<Connection>,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Option<String> {
        let outcome = session(&self.ctx, &self.inner, connection, reported, shutdown).await;
        set_link(&self.ctx, &self.inner, None);
        outcome
    }
}

fn lapin_link(connection: &Connection, channel: &Channel) -> PubChannel {
    PubChannel::Lapin {
        connection: connection.status().clone(),
        channel: channel.clone(),
    }
}

/// Offers the publish path a new link (a new generation), or none.
pub(super) fn set_link(ctx: &ConnCtx, inner: &Inner, channel: Option<PubChannel>) {
    let link = channel.map(|channel| PubLink {
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

/// Whether the broker confirms a message on `channel` within
/// [`PROBE_TIMEOUT`]: an empty message to the default exchange with a
/// routing key no queue has, which the broker confirms and drops. It finds
/// out that a broker that stopped confirming answers again, so that no SIP
/// request has to.
async fn probe(channel: &Channel) -> bool {
    let attempt = async {
        channel
            .basic_publish(
                "".into(),
                "kazoo.probe".into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default(),
            )
            .await?
            .await
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Ok(Confirmation::Ack(_)))
    )
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
    set_link(ctx, inner, Some(lapin_link(connection, &channel)));
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
        if ctx.slot.unresponsive.load(Ordering::Relaxed) && probe(&channel).await {
            ctx.slot.mark_answering();
            inner.epoch.send_modify(|epoch| *epoch += 1);
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
            set_link(ctx, inner, Some(lapin_link(connection, &channel)));
        }
    }
}
