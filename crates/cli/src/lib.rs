//! The wiring of qr3 webhooks: command line, start-up (migrations, broker topology) and
//! the roles running in one process or several. `main` is a thin shell over this, so
//! tests start the real thing in-process on port 0.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod operator;
pub mod publish;

pub use app::{Roles, Running};
