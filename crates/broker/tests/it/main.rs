//! Tests of the broker layer against the real RabbitMQ, each in its own namespace
//! (`amqp.prefix`).

mod consumer;
