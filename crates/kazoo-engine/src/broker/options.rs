//! What the broker layer needs from the module's parameters.
use std::path::PathBuf;
use std::time::Duration;

/// What the broker layer needs from the module's parameters.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// `node_hostname`: reply queues are `kamailio@<node>-<<id>-<idx>>`, bound
    /// with key `kamailio@<node>-<<id>>-targeted-<idx>`.
    pub node_hostname: String,
    /// `amqp_primary_zone`: brokers of this zone are "primary".
    pub primary_zone: String,
    /// `amqp_max_channels`: reply queues (and Server-ID indexes) per primary broker.
    pub reply_queues: u32,
    /// `amqp_consumer_processes`: consuming connections per primary broker
    /// (other brokers: always 1).
    pub consumer_connections: u32,
    /// `basic.qos` prefetch of every consumer: how many deliveries one
    /// consumer may hold unacked (0 = unlimited).
    pub prefetch: u16,
    /// `amqp_heartbeats`; 0 takes the broker's proposal.
    pub heartbeat_secs: u16,
    /// `amqp_connect_timeout_*`: the TCP connect (the TLS handshake and AMQP
    /// login have a further [`HANDSHAKE_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// `amqp_native_client`: the connections to `amqp://` brokers run on
    /// the module's own AMQP client (`native_consumer`, `native_publisher`)
    /// rather than lapin (`consumer`, `publisher`, which `amqps://` brokers
    /// always use).
    pub native_client: bool,
    /// `amqp_worker_consume` (in effect): the consumer workers consume the
    /// subscriptions [`crate::worker_consume::consumed_in_workers`] takes,
    /// so the primary-zone brokers' consuming connections leave them out.
    pub workers_consume: bool,
    pub tls: TlsOptions,
}

impl Default for BrokerOptions {
    /// The C module's defaults (`node_hostname` empty: set it).
    fn default() -> Self {
        BrokerOptions {
            node_hostname: String::new(),
            primary_zone: "local".into(),
            reply_queues: 50,
            consumer_connections: 1,
            prefetch: 0,
            heartbeat_secs: 0,
            connect_timeout: Duration::from_millis(200),
            native_client: true,
            workers_consume: false,
            tls: TlsOptions::default(),
        }
    }
}

/// TLS settings for `amqps://` brokers (`amqps_*` parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) to trust; without it, the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain), sent when `key` is set too.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// false: accept any server certificate (no chain, no name check).
    pub verify_peer: bool,
    /// false: check the chain but not that it names the host.
    pub verify_hostname: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_cert: None,
            cert: None,
            key: None,
            verify_peer: true,
            verify_hostname: true,
        }
    }
}

/// The TLS handshake plus AMQP login may take this long after the TCP connect.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
