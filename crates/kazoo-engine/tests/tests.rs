//! The engine's tests, one binary: the vectors captured from the C module,
//! properties, crash inputs, and the broker layer against RabbitMQ; a module
//! per area.

mod broker_support;

mod broker_nodes;
mod broker_poison;
mod broker_system;
mod config;
mod crashers;
mod direct;
mod json_behaviour;
mod payload_properties;
mod payload_vectors;
mod presence_api;
mod presence_vectors;
mod properties;
mod routes_vectors;
mod subscription;
mod vectors;
mod worker_consume;
