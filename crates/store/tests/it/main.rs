//! Store integration tests against the real Postgres, one database per test.

mod attempts;
mod events;
mod migrations;
mod payloads;
mod rate;
mod rotation;
mod stats;
mod targets;
mod tls;
mod workspaces;
