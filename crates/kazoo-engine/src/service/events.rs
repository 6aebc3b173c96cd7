//! What the broker layer reports: connections opening and closing (and the
//! synthetic events they raise for the routes), consumed messages, and
//! subscriptions failing or working again.
use super::*;

impl Shared {
    /// Records a connection's state (see [`record_connection`]).
    pub(super) fn set_connection(
        &self,
        broker_id: u32,
        role: Role,
        up: bool,
    ) -> Option<(String, usize, usize)> {
        record_connection(&mut lock(&self.brokers_state), broker_id, role, up)
    }

    pub(super) fn connection_event(&self, open: bool, host: &str, zone: &str) {
        let body = connection_event(&self.event_key, &self.event_subkey, open, host, zone);
        self.synthetic_event(body, None);
    }

    /// `connection` / `error`: why a connection closed or could not open.
    pub(super) fn connection_error(&self, broker_id: u32, host: &str, zone: &str, reason: &str) {
        if let Some(broker) = lock(&self.brokers_state)
            .iter_mut()
            .find(|b| b.id == broker_id)
        {
            broker.last_error = Some((unix_now(), reason.to_string()));
        }
        let fields = [("host", host), ("zone", zone), ("message", reason)];
        let body = connection_notice(&self.event_key, &self.event_subkey, "error", &fields);
        self.synthetic_event(body, None);
    }

    /// `connection` / `listener-zone-available` (or `-unavailable`), one per
    /// subscription consumed in `zone` (every one in the primary zone, the
    /// `federate` ones elsewhere), named by [`Subscription::listener_name`].
    pub(super) fn listener_zone_events(&self, zone: &str, available: bool) {
        let name = if available {
            "listener-zone-available"
        } else {
            "listener-zone-unavailable"
        };
        let primary = zone == self.primary_zone;
        for subscription in self.subscriptions.get().into_iter().flatten() {
            if !(primary || subscription.federate) {
                continue;
            }
            let fields = [("name", subscription.listener_name()), ("zone", zone)];
            let body = connection_notice(&self.event_key, &self.event_subkey, name, &fields);
            self.synthetic_event(body, None);
        }
    }

    /// A `mandatory` publish the broker returned, for the event routes
    /// (`kazoo:consumer-event-amqp-error-message-returned`).
    pub(super) fn returned_event(
        &self,
        outgoing: &Outgoing,
        broker_id: u32,
        reply_code: u16,
        reply_text: &str,
        body: &[u8],
    ) {
        let zone = lock(&self.brokers_state)
            .iter()
            .find(|b| b.id == broker_id)
            .map(|b| b.zone.clone())
            .unwrap_or_default();
        match returned_message(
            body,
            &self.event_key,
            &self.event_subkey,
            &zone,
            reply_code,
            reply_text,
        ) {
            Ok(event) => self.synthetic_event(event, Some(outgoing.routing_key.clone())),
            Err(e) => log::error!("a returned message cannot go to the event routes: {e}"),
        }
    }
}

/// Records a connection's state. For a consuming connection, returns its
/// zone and how many consuming connections of that zone were up before and
/// are up after (0 to 1: the zone is available; 1 to 0: unavailable).
pub(super) fn record_connection(
    brokers: &mut [BrokerState],
    broker_id: u32,
    role: Role,
    up: bool,
) -> Option<(String, usize, usize)> {
    let zone = brokers.iter().find(|b| b.id == broker_id)?.zone.clone();
    let consuming = |brokers: &[BrokerState]| {
        brokers
            .iter()
            .filter(|b| b.zone == zone)
            .flat_map(|b| b.consumers_up.iter())
            .filter(|up| **up)
            .count()
    };
    let before = consuming(brokers);
    let broker = brokers.iter_mut().find(|b| b.id == broker_id)?;
    let previous = broker.connections.insert(role.to_string(), up);
    if previous != Some(up) {
        broker.since.insert(role.to_string(), unix_now());
    }
    if up && previous == Some(false) {
        broker.reconnects += 1;
    }
    let Role::Consumer(n) = role else {
        return None;
    };
    let n = n as usize;
    if broker.consumers_up.len() <= n {
        broker.consumers_up.resize(n + 1, false);
    }
    broker.consumers_up[n] = up;
    let after = consuming(brokers);
    Some((zone, before, after))
}

impl Shared {
    /// A subscription failed on a broker (`failure` says why), or works
    /// there again: what `kazoo.subscriptions` shows. The AMQP process's
    /// consumers and the workers that consume themselves (over their links)
    /// report here, each once per change; an index no subscription has is
    /// ignored.
    pub(super) fn subscription_state(&self, index: usize, broker_id: u32, failure: Option<String>) {
        if self.subscriptions.get().is_none_or(|s| index >= s.len()) {
            return;
        }
        let mut failures = lock(&self.subscription_failures);
        match failure {
            Some(reason) => {
                failures.entry(index).or_default().insert(broker_id, reason);
            }
            None => {
                if let Some(failed) = failures.get_mut(&index) {
                    failed.remove(&broker_id);
                }
            }
        }
    }
}

pub(super) async fn broker_events(shared: Arc<Shared>, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected {
                broker_id,
                zone,
                host,
                role,
            } => {
                log::info!("broker {broker_id} ({host}, zone {zone}): {role:?} connection open");
                let consuming = shared.set_connection(broker_id, role, true);
                shared.connection_event(true, &host, &zone);
                if let Some((zone, 0, 1..)) = consuming {
                    shared.listener_zone_events(&zone, true);
                }
            }
            Event::Disconnected {
                broker_id,
                zone,
                host,
                role,
                reason,
            } => {
                // The broker layer logs the change; every retry comes here.
                log::debug!(
                    "broker {broker_id} ({host}, zone {zone}): {role:?} connection closed: {reason}"
                );
                let consuming = shared.set_connection(broker_id, role, false);
                shared.connection_event(false, &host, &zone);
                shared.connection_error(broker_id, &host, &zone, &reason);
                if let Some((zone, 1.., 0)) = consuming {
                    shared.listener_zone_events(&zone, false);
                }
            }
            Event::Consumed(delivery) => shared.consumed(delivery),
            Event::SubscriptionFailed {
                index,
                broker_id,
                reason,
            } => {
                log::error!(
                    "subscription {} on broker {broker_id} failed: {reason}",
                    index + 1
                );
                shared.subscription_state(index, broker_id, Some(reason));
            }
            Event::SubscriptionWorking { index, broker_id } => {
                shared.subscription_state(index, broker_id, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_opens_again_counts_as_a_reconnect() {
        let mut brokers = vec![BrokerState {
            id: 1,
            zone: "local".into(),
            host: "h".into(),
            connections: Default::default(),
            since: Default::default(),
            last_error: None,
            reconnects: 0,
            consumers_up: Vec::new(),
        }];
        for up in [false, true, true, false, true] {
            record_connection(&mut brokers, 1, Role::Publisher, up);
        }
        assert_eq!(brokers[0].reconnects, 2);
    }

    #[test]
    fn zone_counts_follow_the_consuming_connections_only() {
        let state = |id, zone: &str| BrokerState {
            id,
            zone: zone.into(),
            host: "h".into(),
            connections: Default::default(),
            since: Default::default(),
            last_error: None,
            reconnects: 0,
            consumers_up: Vec::new(),
        };
        let mut brokers = vec![state(1, "local"), state(2, "local"), state(3, "remote")];
        let mut record = |id, role, up| record_connection(&mut brokers, id, role, up);
        let local = |before, after| Some(("local".to_string(), before, after));
        assert_eq!(record(1, Role::Consumer(0), true), local(0, 1));
        assert_eq!(record(1, Role::Consumer(1), true), local(1, 2));
        assert_eq!(record(2, Role::Consumer(0), true), local(2, 3));
        assert_eq!(record(1, Role::Publisher, false), None);
        assert_eq!(
            record(3, Role::Consumer(0), true),
            Some(("remote".to_string(), 0, 1))
        );
        assert_eq!(record(1, Role::Consumer(0), false), local(3, 2));
        // A retry that fails again changes nothing.
        assert_eq!(record(1, Role::Consumer(0), false), local(2, 2));
        assert_eq!(record(1, Role::Consumer(1), false), local(2, 1));
        assert_eq!(record(2, Role::Consumer(0), false), local(1, 0));
        assert_eq!(record(9, Role::Consumer(0), true), None);
    }
}
