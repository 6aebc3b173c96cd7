//! Publishing with failover: which broker takes a publish, confirms,
//! returns and refusals, and the retries that never report a publish as
//! confirmed when it was not.
use std::fmt;
use std::sync::atomic::Ordering;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio::time::Instant;

use super::native_publisher::Job;
use super::slot::{PubChannel, PubLink, UNRESPONSIVE_AFTER};
use super::{connect, Brokers};

/// A publish the broker confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub broker_id: u32,
    /// The Server-ID index handed to `body_for`.
    pub idx: u32,
}

/// What a publish carries besides its body.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishProperties<'a> {
    /// AMQP headers, each sent as a long string (the first of a repeated name).
    pub headers: &'a [(Vec<u8>, Vec<u8>)],
    /// `basic.publish` `mandatory`: the broker returns a message no queue takes.
    pub mandatory: bool,
    /// A query: only a broker whose reply queues are being consumed can
    /// bring its answer back, so only such brokers are candidates.
    pub needs_replies: bool,
}

/// Why a publish was not confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PublishError {
    /// No candidate broker's publisher was connected when the publish started.
    NoBrokerConnected,
    /// A query, and no candidate broker has a consuming connection up to
    /// bring the reply back (it would only wait for its timeout).
    NoReplyConsumer,
    /// The only brokers that could take it block publishers or stopped
    /// confirming (see [`Slot`]'s probe): failed at once instead of waiting.
    Unavailable { broker_id: u32, reason: String },
    /// The broker answered with a negative confirm (every candidate that was tried).
    Nacked { broker_id: u32 },
    /// The deadline passed before any broker confirmed.
    Timeout,
    /// `consumer://<id>/` names no configured broker.
    UnknownBroker(u32),
    /// The channel or connection closed before the confirm, and no other
    /// candidate confirmed; the broker's reason (e.g. `NOT_FOUND - no exchange ...`).
    Closed(String),
    /// The exchange, routing key or a header name cannot be sent (longer than
    /// 255 bytes, or a header name that is not UTF-8); nothing was sent.
    Invalid(String),
    /// A `mandatory` publish that no queue took: the broker returned it
    /// (`basic.return`) with this reply code and text; `body` is the message.
    Returned {
        broker_id: u32,
        reply_code: u16,
        reply_text: String,
        body: Vec<u8>,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::NoBrokerConnected => f.write_str("no broker connected"),
            PublishError::Unavailable { broker_id, reason } => {
                write!(f, "broker {broker_id} cannot take publishes now: {reason}")
            }
            PublishError::NoReplyConsumer => {
                f.write_str("no broker consumes its reply queues (consuming connections down)")
            }
            PublishError::Nacked { broker_id } => {
                write!(f, "broker {broker_id} refused the message (nack)")
            }
            PublishError::Timeout => f.write_str("no broker confirmed the message in time"),
            PublishError::UnknownBroker(id) => write!(f, "no broker with id {id}"),
            PublishError::Closed(reason) => write!(f, "not confirmed: {reason}"),
            PublishError::Invalid(reason) => write!(f, "cannot publish: {reason}"),
            PublishError::Returned {
                broker_id,
                reply_code,
                reply_text,
                ..
            } => write!(
                f,
                "broker {broker_id} returned the message (no queue took it): {reply_code} {reply_text}"
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// How a single attempt on one broker ended.
pub(super) enum Attempt {
    Confirmed,
    Nacked,
    /// Confirmed, but returned first: no queue took it (mandatory publishes).
    Returned(Returned),
    /// The channel was closed because of this publish (or one just before it
    /// on the same channel): worth one more try on a fresh channel only.
    Refused(String),
    /// The channel or connection went away: worth retrying after a reconnect.
    Lost(String),
}

/// What the broker's `basic.return` of a publish said.
pub(super) struct Returned {
    pub(super) reply_code: u16,
    pub(super) reply_text: String,
    pub(super) body: Vec<u8>,
}

/// Per-candidate bookkeeping of one publish.
#[derive(Default)]
struct CandidateState {
    done: bool,
    refusals: u8,
    failed_generation: Option<u64>,
}

impl Brokers {
    /// Publishes with publisher confirms (see the module documentation).
    ///
    /// `target`: `None` = the primary-zone brokers in configuration order
    /// (failover: the first whose publisher is connected; if the publish
    /// fails, is nacked or its connection drops before the confirm, the next
    /// one, then earlier ones again once they reconnect, until `deadline`);
    /// `Some(id)` = that broker only. `body_for(broker_id, idx)` builds the
    /// body once the broker and the Server-ID index (round-robin over
    /// `0..reply_queues` per broker) are chosen; it may be called again for
    /// another broker after a failure.
    pub async fn publish(
        &self,
        target: Option<u32>,
        exchange: &str,
        routing_key: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        body_for: impl Fn(u32, u32) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        let how = PublishProperties {
            headers,
            mandatory: false,
            needs_replies: false,
        };
        self.publish_with(target, exchange, routing_key, how, body_for, deadline)
            .await
    }

    /// [`Brokers::publish`] with every property: with `mandatory`, a message
    /// no queue takes is returned by the broker and reported as
    /// [`PublishError::Returned`] (not tried on another broker: the broker
    /// works, the message has nowhere to go).
    pub async fn publish_with(
        &self,
        target: Option<u32>,
        exchange: &str,
        routing_key: &str,
        how: PublishProperties<'_>,
        body_for: impl Fn(u32, u32) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        let (exchange, routing_key) = names(exchange, routing_key)?;
        let properties = properties(how.headers)?;
        let options = BasicPublishOptions {
            mandatory: how.mandatory,
            immediate: false,
        };
        let candidates: Vec<usize> = match target {
            None => self.inner.primary.clone(),
            Some(id) => match self.inner.slots.iter().position(|s| s.broker.id == id) {
                Some(i) => vec![i],
                None => return Err(PublishError::UnknownBroker(id)),
            },
        };
        let candidates: Vec<usize> = if how.needs_replies {
            let answering: Vec<usize> = candidates
                .into_iter()
                .filter(|&i| self.inner.slots[i].consumers_up.load(Ordering::Relaxed) > 0)
                .collect();
            if answering.is_empty() {
                return Err(PublishError::NoReplyConsumer);
            }
            answering
        } else {
            candidates
        };
        let mut epoch = self.inner.epoch.subscribe();
        if !candidates
            .iter()
            .any(|&i| self.inner.slots[i].link().is_some())
        {
            return Err(PublishError::NoBrokerConnected);
        }
        let mut states: Vec<CandidateState> = candidates
            .iter()
            .map(|_| CandidateState::default())
            .collect();
        let mut last_error = PublishError::NoBrokerConnected;
        loop {
            epoch.borrow_and_update();
            // A broker that blocks publishers (memory or disk alarm) or
            // stopped confirming is skipped: waiting there would hold the
            // caller (a SIP worker) for the whole timeout. When it is all
            // there is, the publish fails at once.
            let mut unavailable = None;
            for n in 0..candidates.len() {
                let i = candidates[n];
                let slot = &self.inner.slots[i];
                let state = &mut states[n];
                if state.done {
                    continue;
                }
                let Some(link) = slot.link() else {
                    continue;
                };
                if state.failed_generation == Some(link.generation) {
                    continue;
                }
                if let Some(why) = slot.unavailable(&link) {
                    unavailable = Some((slot.broker.id, why));
                    continue;
                }
                let broker_id = slot.broker.id;
                let idx =
                    slot.next_idx.fetch_add(1, Ordering::Relaxed) % self.inner.reply_queues.max(1);
                let body = body_for(broker_id, idx);
                let started = Instant::now();
                let attempt = tokio::time::timeout_at(
                    deadline,
                    publish_once(&link, &exchange, &routing_key, body, &properties, options),
                )
                .await
                .map_err(|_| {
                    // A caller's short deadline (a query with a tight
                    // timeout) says nothing about the broker's health.
                    if started.elapsed() >= UNRESPONSIVE_AFTER {
                        slot.mark_unresponsive();
                    }
                    PublishError::Timeout
                })?;
                match attempt {
                    Attempt::Confirmed => {
                        slot.mark_answering();
                        return Ok(Published { broker_id, idx });
                    }
                    Attempt::Returned(returned) => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} returned: {} {}",
                            returned.reply_code,
                            returned.reply_text
                        );
                        return Err(PublishError::Returned {
                            broker_id,
                            reply_code: returned.reply_code,
                            reply_text: returned.reply_text,
                            body: returned.body,
                        });
                    }
                    Attempt::Nacked => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} nacked"
                        );
                        state.done = true;
                        last_error = PublishError::Nacked { broker_id };
                    }
                    Attempt::Refused(reason) if refused_for_another(&reason, exchange.as_str()) => {
                        // Another publish made the broker close the shared
                        // confirm channel: this one goes again once it reopens.
                        log::debug!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} caught in \
                             another publish's channel error ({reason}); publishing it again"
                        );
                        state.failed_generation = Some(link.generation);
                        slot.reopen.notify_one();
                        last_error = PublishError::Closed(reason);
                    }
                    Attempt::Refused(reason) => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} refused: {reason}"
                        );
                        state.refusals += 1;
                        state.done = state.refusals >= 2;
                        state.failed_generation = Some(link.generation);
                        slot.reopen.notify_one();
                        last_error = PublishError::Closed(reason);
                    }
                    Attempt::Lost(reason) => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} not confirmed: {reason}"
                        );
                        state.failed_generation = Some(link.generation);
                        slot.reopen.notify_one();
                        last_error = PublishError::Closed(reason);
                    }
                }
            }
            if states.iter().all(|s| s.done) {
                return Err(last_error);
            }
            let can_try_now = candidates.iter().zip(&states).any(|(&i, s)| {
                let slot = &self.inner.slots[i];
                !s.done
                    && slot.link().is_some_and(|l| {
                        s.failed_generation != Some(l.generation) && slot.unavailable(&l).is_none()
                    })
            });
            if let (false, Some((broker_id, why))) = (can_try_now, unavailable) {
                return Err(PublishError::Unavailable {
                    broker_id,
                    reason: why.to_string(),
                });
            }
            if !can_try_now {
                match tokio::time::timeout_at(deadline, epoch.changed()).await {
                    Err(_) => return Err(PublishError::Timeout),
                    Ok(Err(_)) => return Err(PublishError::Closed("shutting down".into())),
                    Ok(Ok(())) => {}
                }
            }
        }
    }
}

/// The exchange and routing key as AMQP short strings (at most 255 bytes).
pub(crate) fn names(
    exchange: &str,
    routing_key: &str,
) -> Result<(ShortString, ShortString), PublishError> {
    let exchange = ShortString::try_new(exchange)
        .map_err(|_| PublishError::Invalid("exchange name longer than 255 bytes".into()))?;
    let routing_key = ShortString::try_new(routing_key)
        .map_err(|_| PublishError::Invalid("routing key longer than 255 bytes".into()))?;
    Ok((exchange, routing_key))
}

/// `content_type = application/json` plus the headers as long strings;
/// nothing else, as the C module.
pub(crate) fn properties(headers: &[(Vec<u8>, Vec<u8>)]) -> Result<BasicProperties, PublishError> {
    let properties = BasicProperties::default().with_content_type("application/json".into());
    if headers.is_empty() {
        return Ok(properties);
    }
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let name = std::str::from_utf8(name)
            .map_err(|_| PublishError::Invalid("a header name is not UTF-8".into()))?;
        let key = ShortString::try_new(name)
            .map_err(|_| PublishError::Invalid("a header name is longer than 255 bytes".into()))?;
        // A table keeps one value per name: the first, as RabbitMQ reads a
        // table with duplicates (the C module sends them all).
        if !table.contains_key(name) {
            table.insert(key, AMQPValue::LongString(LongString::from(value.clone())));
        }
    }
    Ok(properties.with_headers(table))
}

async fn publish_once(
    link: &PubLink,
    exchange: &ShortString,
    routing_key: &ShortString,
    body: Vec<u8>,
    properties: &BasicProperties,
    options: BasicPublishOptions,
) -> Attempt {
    let channel = match &link.channel {
        PubChannel::Lapin { channel, .. } => channel,
        PubChannel::Native(handle) => {
            let job = Job {
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                mandatory: options.mandatory,
                properties: properties.clone(),
                body,
            };
            return handle.publish(job).await;
        }
    };
    let confirm = match channel
        .basic_publish(
            exchange.clone(),
            routing_key.clone(),
            options,
            &body,
            properties.clone(),
        )
        .await
    {
        Ok(confirm) => confirm,
        Err(e) => return failed(&e),
    };
    match confirm.await {
        Ok(Confirmation::Ack(Some(returned))) => Attempt::Returned(Returned {
            reply_code: returned.reply_code,
            reply_text: returned.reply_text.to_string(),
            body: returned.delivery.data,
        }),
        Ok(Confirmation::Ack(None)) => Attempt::Confirmed,
        Ok(Confirmation::Nack(_)) => Attempt::Nacked,
        Ok(Confirmation::NotRequested) => {
            Attempt::Lost("the channel is not in confirm mode".into())
        }
        Err(e) => failed(&e),
    }
}

/// Whether the broker's reason for closing the channel names an exchange
/// other than `exchange` (`NOT_FOUND - no exchange 'x' in vhost '/'`,
/// `ACCESS_REFUSED - access to exchange 'x' ...`): the publish that caused it
/// was another one in flight on the same channel.
fn refused_for_another(reason: &str, exchange: &str) -> bool {
    let Some(at) = reason.find("exchange '") else {
        return false;
    };
    let named = &reason[at + "exchange '".len()..];
    match named.find('\'') {
        Some(end) => &named[..end] != exchange,
        None => false,
    }
}

fn failed(e: &lapin::Error) -> Attempt {
    if e.is_amqp_soft_error() {
        Attempt::Refused(connect::error_text(e))
    } else {
        Attempt::Lost(connect::error_text(e))
    }
}
