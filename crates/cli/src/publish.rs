//! `qr3-webhooks publish`: one event on the events exchange, persistent and confirmed,
//! routing key = event type, exactly as the platform publishes (SPEC C).

use anyhow::Context;
use lapin::BasicProperties;
use qr3_broker::{Outgoing, SharedPublisher};
use qr3_config::Settings;
use qr3_domain::{EventId, Timestamp};
use serde_json::{Map, Value};

use crate::cli::PublishArgs;

/// Publishes and returns the event id (generated when not given).
pub async fn publish(settings: &Settings, args: &PublishArgs) -> anyhow::Result<String> {
    let data: Map<String, Value> =
        serde_json::from_str(&args.data).context("--data must be a JSON object")?;
    let id = match &args.id {
        Some(id) => EventId::parse(id)?,
        None => EventId::generate(),
    };
    let body = serde_json::json!({
        "id": id,
        "type": args.event_type,
        "workspace_id": args.workspace,
        "created": Timestamp::now(),
        "data": data,
    });
    let message = Outgoing {
        exchange: settings.amqp.events_exchange.clone(),
        routing_key: args.event_type.clone(),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
        body: serde_json::to_vec(&body)?,
    };
    let publisher = SharedPublisher::new(settings.amqp.url.expose().clone(), "qr3-publish")
        .with_tls(qr3_broker::BrokerTls::from_settings(&settings.amqp));
    publisher
        .publish_all(std::slice::from_ref(&message))
        .await
        .context("cannot publish the event (is `qr3-webhooks migrate` done?)")?;
    Ok(id.to_string())
}
