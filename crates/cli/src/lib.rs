//! The wiring of qr3 webhooks: command line, start-up (waiting for Postgres and
//! RabbitMQ, migrations where configured, broker topology), and the roles running in one
//! process or several under supervision. `main` is a thin shell over this, so
//! tests start the real thing in-process on port 0.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod dead_letters;
pub mod maintain;
pub mod operator;
pub mod publish;
mod series;
mod startup;
mod supervise;

pub use app::{Roles, Running};
