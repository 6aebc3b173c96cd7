//! Requests from Kamailio's processes: publishes, queries and the table of
//! queries waiting for their reply, asynchronous queries, and what
//! `kazoo:mod-init` declared and published before any broker was connected.
use super::*;

/// How often a publish made during `kazoo:mod-init` is tried before it is
/// reported as dropped.
pub(super) const STARTUP_PUBLISH_ATTEMPTS: u32 = 60;

/// Adds what the KEMI `kazoo:mod-init` in worker 1 declared and published.
pub(super) async fn collect_startup(
    config: &mut ServiceConfig,
    mut startup: mpsc::Receiver<(Vec<Vec<u8>>, Vec<Outgoing>)>,
    wait: Duration,
) {
    match tokio::time::timeout(wait, startup.recv()).await {
        Ok(Some((descriptions, publishes))) => {
            for text in descriptions {
                match crate::subscription::parse_description(&text) {
                    Ok(subscription) => config.subscriptions.push(subscription),
                    Err(e) => log::error!("a subscription from kazoo:mod-init is invalid: {e}"),
                }
            }
            config.startup_publishes.extend(publishes);
        }
        _ => log::error!(
            "the KEMI kazoo:mod-init did not report within {wait:?}; connecting without its subscriptions"
        ),
    }
}

/// Why a publish made by the service failed.
pub(super) enum Unpublished {
    /// The broker layer is not started yet (the KEMI `kazoo:mod-init` report
    /// is awaited).
    NotStarted(String),
    Broker(PublishError),
}

impl std::fmt::Display for Unpublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unpublished::NotStarted(reason) => f.write_str(reason),
            Unpublished::Broker(e) => write!(f, "{e}"),
        }
    }
}

impl Shared {
    pub(super) fn body_for<'a>(
        &'a self,
        outgoing: &'a Outgoing,
    ) -> impl Fn(u32, u32) -> Vec<u8> + 'a {
        move |broker_id, idx| {
            let server_id = crate::payload::server_id(&self.node_hostname, broker_id, idx);
            outgoing.payload.body(&server_id)
        }
    }

    /// The broker layer, waiting for it to start until `deadline`.
    pub(super) async fn brokers(&self, deadline: Instant) -> Result<Arc<Brokers>, String> {
        let mut brokers = self.brokers.clone();
        let started = tokio::time::timeout_at(deadline, brokers.wait_for(Option::is_some)).await;
        match started {
            Ok(Ok(brokers)) => brokers.clone().ok_or_else(|| "no broker layer".to_string()),
            _ => Err("the broker connections are not started yet".into()),
        }
    }

    /// Publishes `outgoing`; a query (`needs_replies`) goes only to a broker
    /// whose reply queues are consumed.
    pub(super) async fn publish(
        &self,
        outgoing: &Outgoing,
        needs_replies: bool,
        deadline: Instant,
    ) -> Result<(), Unpublished> {
        let brokers = self
            .brokers(deadline)
            .await
            .map_err(Unpublished::NotStarted)?;
        let target = match outgoing.target {
            PublishTarget::Primary => None,
            PublishTarget::Broker(id) => Some(id),
        };
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        let how = PublishProperties {
            headers: &outgoing.headers,
            mandatory: outgoing.mandatory,
            needs_replies,
        };
        brokers
            .publish_with(
                target,
                &exchange,
                &routing_key,
                how,
                self.body_for(outgoing),
                deadline,
            )
            .await
            .map(|_| ())
            .map_err(Unpublished::Broker)
    }

    /// Publishes a `kazoo_publish` (or one queued in `kazoo:mod-init`); a
    /// message the broker returned also goes to the event routes.
    pub(super) async fn publish_message(
        &self,
        outgoing: &Outgoing,
        deadline: Instant,
    ) -> Result<(), Unpublished> {
        let result = self.publish(outgoing, false, deadline).await;
        if let Err(Unpublished::Broker(PublishError::Returned {
            broker_id,
            reply_code,
            reply_text,
            body,
        })) = &result
        {
            self.returned_event(outgoing, *broker_id, *reply_code, reply_text, body);
        }
        result
    }

    pub(super) async fn answer_publish(&self, outgoing: Outgoing) -> Outcome {
        let wait = Duration::from_millis(outgoing.timeout_ms.into()).min(self.publish_timeout);
        let result = self.publish_message(&outgoing, Instant::now() + wait).await;
        self.script_counters.record(match &result {
            Ok(()) => Ok(()),
            Err(Unpublished::NotStarted(_)) => Err(None),
            Err(Unpublished::Broker(e)) => Err(Some(e)),
        });
        match result {
            Ok(()) => Outcome::Published,
            Err(failure) => Outcome::Failed(failure.to_string()),
        }
    }

    pub(super) async fn answer_query(&self, outgoing: Outgoing) -> Outcome {
        let deadline = Instant::now() + Duration::from_millis(outgoing.timeout_ms.into());
        let msg_id = outgoing.payload.msg_id().to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.contains_key(&msg_id) {
                return Outcome::Failed(format!(
                    "a query with Msg-ID {msg_id} is already waiting for its reply"
                ));
            }
            pending.insert(msg_id.clone(), tx);
        }
        // A query the broker returned fails at once (its caller is told; no
        // event route runs for it).
        if let Err(failure) = self.publish(&outgoing, true, deadline).await {
            lock(&self.pending).remove(&msg_id);
            self.script_counters.record_query(QueryOutcome::Failed);
            return Outcome::Failed(failure.to_string());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => {
                self.script_counters.record_query(QueryOutcome::Answered);
                Outcome::Reply(reply)
            }
            _ => {
                lock(&self.pending).remove(&msg_id);
                self.script_counters.record_query(QueryOutcome::TimedOut);
                Outcome::Timeout
            }
        }
    }

    /// Runs an asynchronous query and has a worker resume its transaction:
    /// in `ok_route` with the reply, or in `err_route` when it failed or
    /// timed out (the reason is logged).
    pub(super) async fn async_query(&self, outgoing: Outgoing, at: ResumeAt) {
        let ResumeAt {
            hash,
            label,
            ok_route,
            err_route,
        } = at;
        let resume = match self.answer_query(outgoing).await {
            Outcome::Reply(reply) => {
                bump(&self.counters.async_answered);
                Resume {
                    hash,
                    label,
                    answered: true,
                    route: ok_route,
                    reply: Some(reply),
                }
            }
            other => {
                bump(&self.counters.async_not_answered);
                let why = match other {
                    Outcome::Failed(reason) => reason,
                    _ => "no reply in time".to_string(),
                };
                log::info!("asynchronous query not answered ({why}): resuming in failure_route[{err_route}]");
                Resume {
                    hash,
                    label,
                    answered: false,
                    route: err_route,
                    reply: None,
                }
            }
        };
        self.resume(resume);
    }
}

pub(super) async fn startup_publishes(shared: Arc<Shared>, publishes: Vec<Outgoing>) {
    for outgoing in publishes {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let deadline = Instant::now() + shared.publish_timeout;
            match shared.publish_message(&outgoing, deadline).await {
                Ok(()) => break,
                // Reported to the event routes; publishing again would not help.
                Err(Unpublished::Broker(PublishError::Returned { .. })) => break,
                Err(reason) if attempt < STARTUP_PUBLISH_ATTEMPTS => {
                    log::debug!("publish from kazoo:mod-init not done yet: {reason}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(reason) => {
                    log::error!(
                        "a publish made in kazoo:mod-init to exchange {} was dropped after {attempt} attempts: {reason}",
                        String::from_utf8_lossy(&outgoing.exchange)
                    );
                    break;
                }
            }
        }
    }
}
