//! End-to-end tests of the whole pipeline: the real binary's roles in-process, the real
//! RabbitMQ and Postgres, real HTTP receivers on 127.0.0.1, millisecond retry delays.

mod cli;
mod delivery;
mod helpers;
mod metrics;
mod ping;
mod retries;
mod robustness;
mod shutdown;
mod verifiers;
