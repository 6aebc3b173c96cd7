//! The module's parameters (`modparam("kazoo", ...)`): names, types,
//! defaults, validation, and the broker URLs of `amqp_connection`.
//!
//! [`Params`] collects values while Kamailio parses its configuration (one
//! call of [`Params::set`] per `modparam` line, so a bad value fails
//! start-up with a message naming it); [`Params::finish`] checks what needs
//! the whole configuration and yields the frozen [`Config`].
//!
//! Names and types are those of the C module, including the parameters it
//! ignores (see [`PARAMS`] for what ours does with each).
use std::fmt;
use std::time::Duration;

/// How Kamailio must see a parameter's value: a quoted string or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    Int,
    Str,
}

/// A `modparam` value as Kamailio hands it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamValue<'a> {
    Int(i32),
    Str(&'a [u8]),
}

/// Every parameter the module accepts, with its type.
pub const PARAMS: &[(&str, ParamType)] = &[
    ("node_hostname", ParamType::Str),
    ("amqp_connection", ParamType::Str),
    ("amqp_max_channels", ParamType::Int),
    ("amqp_consumer_processes", ParamType::Int),
    ("amqp_consumer_workers", ParamType::Int),
    ("amqp_consumer_event_key", ParamType::Str),
    ("amqp_consumer_event_subkey", ParamType::Str),
    ("amqp_query_timeout_sec", ParamType::Int),
    ("amqp_query_timeout_micro", ParamType::Int),
    ("amqp_query_timeout_avp", ParamType::Str),
    ("amqp_result_avp", ParamType::Str),
    ("amqp_heartbeats", ParamType::Int),
    ("amqp_primary_zone", ParamType::Str),
    ("amqp_command_hashtable_size", ParamType::Int),
    ("amqp_connect_timeout_sec", ParamType::Int),
    ("amqp_connect_timeout_micro", ParamType::Int),
    ("amqps_ca_cert", ParamType::Str),
    ("amqps_cert", ParamType::Str),
    ("amqps_key", ParamType::Str),
    ("amqps_verify_peer", ParamType::Int),
    ("amqps_verify_hostname", ParamType::Int),
    ("app_name", ParamType::Str),
    ("json_escape_char", ParamType::Str),
    ("event_callback", ParamType::Str),
    ("db_url", ParamType::Str),
    ("presentity_table", ParamType::Str),
    ("pua_mode", ParamType::Int),
    ("pua_include_entity", ParamType::Int),
    ("pua_lock_type", ParamType::Int),
    ("presence_use_full_entity", ParamType::Int),
    ("amqp_consumer_ack_timeout_sec", ParamType::Int),
    ("amqp_consumer_ack_timeout_micro", ParamType::Int),
    ("amqp_interprocess_timeout_sec", ParamType::Int),
    ("amqp_interprocess_timeout_micro", ParamType::Int),
    ("amqp_waitframe_timeout_sec", ParamType::Int),
    ("amqp_waitframe_timeout_micro", ParamType::Int),
    ("amqp_internal_loop_count", ParamType::Int),
    ("amqp_consumer_loop_count", ParamType::Int),
    ("amqp_consumer_ack_loop_count", ParamType::Int),
    ("single_consumer_on_reconnect", ParamType::Int),
    ("consume_messages_on_reconnect", ParamType::Int),
    ("use_federated_exchange", ParamType::Int),
    ("federated_exchange", ParamType::Str),
    ("amqp_timer_process_interval", ParamType::Int),
    ("amqp_timmer_process_interval", ParamType::Int),
    ("amqp_publish_timeout", ParamType::Int),
    ("amqp_consumer_prefetch", ParamType::Int),
    ("amqp_direct", ParamType::Int),
    ("amqp_native_client", ParamType::Int),
    ("amqp_worker_consume", ParamType::Int),
    ("amqp_worker_replies", ParamType::Int),
];

/// A parameter value Kamailio must refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(String);

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParamError {}

fn err<T>(text: impl Into<String>) -> Result<T, ParamError> {
    Err(ParamError(text.into()))
}

/// A `(sec, micro)` pair as the C module keeps it in a `timeval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecMicro {
    pub sec: i32,
    pub micro: i32,
}

impl SecMicro {
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.sec as u64) + Duration::from_micros(self.micro as u64)
    }
}

/// AMQP transport of a broker URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Amqp,
    Amqps,
}

/// One `amqp_connection` (a broker), numbered from 1 in configuration order.
#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    /// 1-based number: the `<id>` of queue names, `Server-ID` and `consumer://<id>/`.
    pub id: u32,
    /// Zone name: the `zone=` prefix, else `amqp_primary_zone` as set when the
    /// line was read (the C module's order-sensitive rule).
    pub zone: String,
    pub scheme: Scheme,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

impl fmt::Debug for Broker {
    // Credentials never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broker#{} {}", self.id, self.redacted_url())
    }
}

impl Broker {
    /// The URL without the password, for log lines.
    pub fn redacted_url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Amqp => "amqp",
            Scheme::Amqps => "amqps",
        };
        format!(
            "{scheme}://{}@{}:{}/{} (zone {})",
            self.user,
            self.host,
            self.port,
            percent_encode_vhost(&self.vhost),
            self.zone
        )
    }
}

fn percent_encode_vhost(vhost: &str) -> String {
    vhost
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Parses one `amqp_connection` value: an optional `zone=<name>;` prefix,
/// then `amqp://`, `amqps://` or `kazoo://` (an alias of `amqp://`)
/// `[user[:password]@]host[:port][/vhost]`, with %XX escapes in user,
/// password and vhost. Without a path the vhost is `/`.
pub fn parse_connection(value: &str, default_zone: &str, id: u32) -> Result<Broker, ParamError> {
    let (zone, url) = match value.strip_prefix("zone=") {
        Some(rest) => {
            let Some((zone, url)) = rest.split_once(';') else {
                return err("`zone=<name>;` prefix without `;`");
            };
            if zone.is_empty() {
                return err("empty zone name in `zone=<name>;` prefix");
            }
            (zone.to_string(), url)
        }
        None => (default_zone.to_string(), value),
    };
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("amqp://") {
        (Scheme::Amqp, rest)
    } else if let Some(rest) = url.strip_prefix("kazoo://") {
        (Scheme::Amqp, rest)
    } else if let Some(rest) = url.strip_prefix("amqps://") {
        (Scheme::Amqps, rest)
    } else {
        return err("the URL must start with amqp://, amqps:// or kazoo://");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    // A `/` in a user or password splits the URL there; what follows would
    // be read as host, port and vhost and echoed in errors and log lines.
    if !authority.contains('@') && path.is_some_and(|p| p.contains('@')) {
        return err(
            "the URL has `@` after a `/`: write `/` in a user or password as %2F \
             (and `@` in a vhost as %40)",
        );
    }
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((u, p)) => (percent_decode(u, "user")?, percent_decode(p, "password")?),
            None => (percent_decode(info, "user")?, "guest".to_string()),
        },
        None => ("guest".to_string(), "guest".to_string()),
    };
    let (host, port_text) = if let Some(rest) = hostport.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return err("unterminated `[` in the host");
        };
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return err("unexpected text after `]` in the host"),
        };
        (rest[..end].to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return err("the URL has no host");
    }
    let port = match port_text {
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return err(format!("invalid port `{p}`")),
        },
        None => match scheme {
            Scheme::Amqp => 5672,
            Scheme::Amqps => 5671,
        },
    };
    let vhost = match path {
        None => "/".to_string(),
        Some("") => {
            return err("a trailing `/` names an empty vhost, which no broker has; \
                 write no path (or `/%2F`) for the default vhost `/`")
        }
        Some(p) => percent_decode(p, "vhost")?,
    };
    Ok(Broker {
        id,
        zone,
        scheme,
        user,
        password,
        host,
        port,
        vhost,
    })
}

fn percent_decode(text: &str, what: &str) -> Result<String, ParamError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return err(format!("invalid %-escape in the {what}"));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).or_else(|_| err(format!("the {what} is not valid UTF-8")))
}

/// Values collected from `modparam` lines, with the C module's defaults.
#[derive(Clone, Debug)]
pub struct Params {
    pub node_hostname: Option<String>,
    pub brokers: Vec<Broker>,
    pub amqp_max_channels: i32,
    pub amqp_consumer_processes: i32,
    pub amqp_consumer_workers: i32,
    pub amqp_consumer_event_key: String,
    pub amqp_consumer_event_subkey: String,
    pub amqp_query_timeout: SecMicro,
    pub amqp_query_timeout_avp: Option<String>,
    pub amqp_result_avp: String,
    pub amqp_heartbeats: i32,
    pub amqp_primary_zone: String,
    pub amqp_command_hashtable_size: i32,
    pub amqp_connect_timeout: SecMicro,
    pub amqps_ca_cert: Option<String>,
    pub amqps_cert: Option<String>,
    pub amqps_key: Option<String>,
    pub amqps_verify_peer: bool,
    pub amqps_verify_hostname: bool,
    pub app_name: String,
    pub json_escape_char: u8,
    pub event_callback: Option<String>,
    pub db_url: Option<String>,
    pub presentity_table: String,
    pub pua_mode: i32,
    pub pua_include_entity: bool,
    pub pua_lock_type: i32,
    /// Longest wait for a broker's publish confirm, in ms (this module's).
    pub amqp_publish_timeout: i32,
    /// `basic.qos` prefetch of consumers that ack (this module's; 0 = no limit).
    pub amqp_consumer_prefetch: i32,
    /// `kazoo_publish` from the calling process's own broker connection
    /// (this module's; 0 = through the AMQP process, as before).
    pub amqp_direct: bool,
    /// The AMQP process's broker connections use the module's own AMQP
    /// client (this module's; 0 = lapin, as before).
    pub amqp_native_client: bool,
    /// Consumer workers consume the subscriptions they can from the
    /// brokers themselves, instead of through the AMQP process (this
    /// module's; 0 = through the AMQP process, as before).
    pub amqp_worker_consume: bool,
    /// A `kazoo_async_query` is published from the calling process's own
    /// link and its reply taken by a consumer worker, which resumes the
    /// transaction (this module's; 0 = through the AMQP process, as before).
    pub amqp_worker_replies: bool,
    /// Parameters the C module reads and ignores; kept so configurations
    /// that set them still load (documented as having no effect).
    pub ignored: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            node_hostname: None,
            brokers: Vec::new(),
            amqp_max_channels: 50,
            amqp_consumer_processes: 1,
            amqp_consumer_workers: 8,
            amqp_consumer_event_key: "Event-Category".into(),
            amqp_consumer_event_subkey: "Event-Name".into(),
            amqp_query_timeout: SecMicro { sec: 2, micro: 0 },
            amqp_query_timeout_avp: None,
            amqp_result_avp: "$avp(amqp_result)".into(),
            amqp_heartbeats: 0,
            amqp_primary_zone: "local".into(),
            amqp_command_hashtable_size: 2048,
            amqp_connect_timeout: SecMicro {
                sec: 0,
                micro: 200_000,
            },
            amqps_ca_cert: None,
            amqps_cert: None,
            amqps_key: None,
            amqps_verify_peer: true,
            amqps_verify_hostname: true,
            app_name: "kamailio".into(),
            json_escape_char: b'%',
            event_callback: None,
            db_url: None,
            presentity_table: "presentity".into(),
            pua_mode: 1,
            pua_include_entity: true,
            pua_lock_type: 1,
            amqp_publish_timeout: 2000,
            amqp_consumer_prefetch: 64,
            amqp_direct: true,
            amqp_native_client: true,
            amqp_worker_consume: true,
            amqp_worker_replies: true,
            ignored: Vec::new(),
        }
    }
}

fn non_negative(value: i32) -> Result<i32, ParamError> {
    if value < 0 {
        return err(format!("must not be negative (got {value})"));
    }
    Ok(value)
}

fn at_least_one(value: i32) -> Result<i32, ParamError> {
    if value < 1 {
        return err(format!("must be at least 1 (got {value})"));
    }
    Ok(value)
}

fn micros(value: i32) -> Result<i32, ParamError> {
    if !(0..1_000_000).contains(&value) {
        return err(format!(
            "microseconds must be in 0..999999 (got {value}); put whole seconds in the _sec parameter"
        ));
    }
    Ok(value)
}

fn text(value: &[u8]) -> Result<String, ParamError> {
    String::from_utf8(value.to_vec()).or_else(|_| err("not valid UTF-8"))
}

fn optional_text(value: &[u8]) -> Result<Option<String>, ParamError> {
    Ok(Some(text(value)?).filter(|s| !s.is_empty()))
}

impl Params {
    /// Applies one `modparam` line.
    pub fn set(&mut self, name: &str, value: ParamValue<'_>) -> Result<(), ParamError> {
        use ParamValue::{Int, Str};
        match (name, value) {
            ("node_hostname", Str(v)) => self.node_hostname = optional_text(v)?,
            ("amqp_connection", Str(v)) => {
                let id = self.brokers.len() as u32 + 1;
                let broker = parse_connection(&text(v)?, &self.amqp_primary_zone, id)?;
                self.brokers.push(broker);
            }
            ("amqp_max_channels", Int(v)) => self.amqp_max_channels = at_least_one(v)?,
            ("amqp_consumer_processes", Int(v)) => self.amqp_consumer_processes = non_negative(v)?,
            ("amqp_consumer_workers", Int(v)) => self.amqp_consumer_workers = at_least_one(v)?,
            ("amqp_consumer_event_key", Str(v)) => self.amqp_consumer_event_key = text(v)?,
            ("amqp_consumer_event_subkey", Str(v)) => self.amqp_consumer_event_subkey = text(v)?,
            ("amqp_query_timeout_sec", Int(v)) => self.amqp_query_timeout.sec = non_negative(v)?,
            ("amqp_query_timeout_micro", Int(v)) => self.amqp_query_timeout.micro = micros(v)?,
            ("amqp_query_timeout_avp", Str(v)) => self.amqp_query_timeout_avp = optional_text(v)?,
            ("amqp_result_avp", Str(v)) => self.amqp_result_avp = text(v)?,
            ("amqp_heartbeats", Int(v)) => self.amqp_heartbeats = non_negative(v)?,
            ("amqp_primary_zone", Str(v)) => {
                self.amqp_primary_zone = optional_text(v)?
                    .ok_or_else(|| ParamError("the zone name must not be empty".into()))?
            }
            ("amqp_command_hashtable_size", Int(v)) => {
                self.amqp_command_hashtable_size = at_least_one(v)?
            }
            ("amqp_connect_timeout_sec", Int(v)) => {
                self.amqp_connect_timeout.sec = non_negative(v)?
            }
            ("amqp_connect_timeout_micro", Int(v)) => self.amqp_connect_timeout.micro = micros(v)?,
            ("amqps_ca_cert", Str(v)) => self.amqps_ca_cert = optional_text(v)?,
            ("amqps_cert", Str(v)) => self.amqps_cert = optional_text(v)?,
            ("amqps_key", Str(v)) => self.amqps_key = optional_text(v)?,
            ("amqps_verify_peer", Int(v)) => self.amqps_verify_peer = v != 0,
            ("amqps_verify_hostname", Int(v)) => self.amqps_verify_hostname = v != 0,
            ("app_name", Str(v)) => self.app_name = text(v)?,
            ("json_escape_char", Str(v)) => match v {
                [c] => self.json_escape_char = *c,
                _ => return err("must be exactly one character"),
            },
            ("event_callback", Str(v)) => self.event_callback = optional_text(v)?,
            ("db_url", Str(v)) => self.db_url = optional_text(v)?,
            ("presentity_table", Str(v)) => self.presentity_table = text(v)?,
            ("pua_mode", Int(v)) => self.pua_mode = v,
            ("pua_include_entity", Int(v)) => self.pua_include_entity = v != 0,
            ("pua_lock_type", Int(v)) => {
                if !(0..=2).contains(&v) {
                    return err("must be 0 (none), 1 (write) or 2 (full)");
                }
                self.pua_lock_type = v
            }
            ("amqp_publish_timeout", Int(v)) => self.amqp_publish_timeout = at_least_one(v)?,
            ("amqp_consumer_prefetch", Int(v)) => {
                if !(0..=i32::from(u16::MAX)).contains(&v) {
                    return err("must be in 0..65535 (0 = no limit)");
                }
                self.amqp_consumer_prefetch = v
            }
            ("amqp_direct", Int(v)) => self.amqp_direct = v != 0,
            ("amqp_native_client", Int(v)) => self.amqp_native_client = v != 0,
            ("amqp_worker_consume", Int(v)) => self.amqp_worker_consume = v != 0,
            ("amqp_worker_replies", Int(v)) => self.amqp_worker_replies = v != 0,
            ("amqp_consumer_ack_timeout_micro", Int(v))
            | ("amqp_interprocess_timeout_micro", Int(v))
            | ("amqp_waitframe_timeout_micro", Int(v)) => {
                micros(v)?;
                self.ignored.push(name.to_string())
            }
            ("presence_use_full_entity", Int(_))
            | ("amqp_consumer_ack_timeout_sec", Int(_))
            | ("amqp_interprocess_timeout_sec", Int(_))
            | ("amqp_waitframe_timeout_sec", Int(_))
            | ("amqp_internal_loop_count", Int(_))
            | ("amqp_consumer_loop_count", Int(_))
            | ("amqp_consumer_ack_loop_count", Int(_))
            | ("single_consumer_on_reconnect", Int(_))
            | ("consume_messages_on_reconnect", Int(_))
            | ("use_federated_exchange", Int(_))
            | ("federated_exchange", Str(_))
            | ("amqp_timer_process_interval", Int(_))
            | ("amqp_timmer_process_interval", Int(_)) => self.ignored.push(name.to_string()),
            _ => return err("unknown parameter or wrong type"),
        }
        Ok(())
    }

    /// Checks what needs the whole configuration and freezes it.
    pub fn finish(self) -> Result<Config, ParamError> {
        let Some(node_hostname) = self.node_hostname.clone() else {
            return err(
                "modparam \"node_hostname\" is required: set it to this proxy's name, e.g. \
                 modparam(\"kazoo\", \"node_hostname\", \"proxy1.example.com\")",
            );
        };
        if self.amqps_cert.is_some() != self.amqps_key.is_some() {
            return err("modparam \"amqps_cert\" and \"amqps_key\" must be set together");
        }
        Ok(Config {
            node_hostname,
            params: self,
        })
    }
}

/// The validated configuration, frozen after start-up.
#[derive(Clone, Debug)]
pub struct Config {
    /// `node_hostname` (required).
    pub node_hostname: String,
    /// Every parameter as configured.
    pub params: Params,
}

impl Config {
    /// `Node` as injected into payloads: `kamailio@<node_hostname>`.
    pub fn node(&self) -> String {
        format!("kamailio@{}", self.node_hostname)
    }
}
