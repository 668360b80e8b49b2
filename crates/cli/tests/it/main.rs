//! End-to-end tests of the whole pipeline: the real binary's roles in-process, the real
//! RabbitMQ and Postgres, real HTTP receivers on 127.0.0.1, millisecond retry delays.

mod backlog;
mod broker_tls;
mod bundles;
mod cli;
mod cluster;
mod dead_letters;
mod delivery;
mod deployment;
mod failure_classes;
mod helpers;
mod hostile;
mod manual;
mod metrics;
mod narrow_log;
mod payload_once;
mod ping;
mod portal;
mod portal_browser;
mod rate_limit;
mod retries;
mod robustness;
mod secrets;
mod shutdown;
mod ssrf;
mod standard_webhooks;
mod startup;
mod supervision;
mod tenants;
mod verifiers;
mod webdriver;
