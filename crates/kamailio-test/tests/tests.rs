//! The harness's own tests: Kamailio runner and RabbitMQ helpers.

mod kamailio;
mod rabbit;
