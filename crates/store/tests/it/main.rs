//! Store integration tests against the real Postgres, one database per test.

mod attempts;
mod events;
mod migrations;
mod rate;
mod rotation;
mod stats;
mod workspaces;
