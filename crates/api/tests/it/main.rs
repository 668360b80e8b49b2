//! Integration tests of the public API: the real router on 127.0.0.1, a fresh Postgres
//! database per test, requests made with reqwest as a customer would.

mod admin;
mod auth;
mod deliveries;
mod errors;
mod helpers;
mod limits;
mod manual;
mod openapi;
mod pagination;
mod rate_limit;
mod rotate;
mod slow_clients;
mod ssrf;
mod stats;
mod webhooks;
