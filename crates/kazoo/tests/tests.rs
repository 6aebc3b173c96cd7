//! The module's end-to-end tests, one binary: a real Kamailio with the built
//! module, RabbitMQ, SQLite and MariaDB, SIP over loopback; a module per area.

mod common;

mod amqp_consume_e2e;
mod amqp_events_e2e;
mod amqp_failover_e2e;
mod amqp_publish_e2e;
mod amqp_query_e2e;
mod amqp_startup_e2e;
mod amqps_e2e;
mod docs_e2e;
mod example_e2e;
mod guard_e2e;
mod ipc_e2e;
mod json_e2e;
mod kazoo_edge_e2e;
mod kazoo_edge_kemi_e2e;
mod kemi_e2e;
mod module_e2e;
mod presence_e2e;
mod process_e2e;
mod regression;
mod rpc_e2e;
