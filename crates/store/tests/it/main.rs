//! Store integration tests against the real Postgres, one database per test.

mod attempts;
mod migrations;
mod rotation;
mod stats;
mod workspaces;
