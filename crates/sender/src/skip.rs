//! The skip rule: when a job gets no attempt at all. Pure; the attempt applies it to
//! what it read from Postgres for that job.

use qr3_broker::{DeliveryJob, Trigger};

/// Why a job gets no attempt (the label of `qr3_deliveries_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    WebhookDeleted,
    WebhookDisabled,
    AlreadyDelivered,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::WebhookDeleted => "webhook_deleted",
            Skip::WebhookDisabled => "webhook_disabled",
            Skip::AlreadyDelivered => "already_delivered",
        }
    }
}

/// What the webhook's row says, before the log is asked: `exists` and `is_active` as
/// read for this job. Pings are sent even to a disabled webhook.
pub fn by_webhook(exists: bool, is_active: bool, trigger: Trigger) -> Option<Skip> {
    if !exists {
        Some(Skip::WebhookDeleted)
    } else if !is_active && trigger != Trigger::Ping {
        Some(Skip::WebhookDisabled)
    } else {
        None
    }
}

/// Whether the delivery log must be asked if the event was already delivered: for a
/// retry or a manual attempt (a manual retry may race an automatic one, a recovery may
/// be asked twice), and for a job that may have been delivered before (`recheck`: the
/// broker handed it out before, or it was parked and may have a twin). Never for a
/// ping, nor for a forced resend (asked for although the event was delivered).
pub fn needs_log_check(job: &DeliveryJob, recheck: bool) -> bool {
    match job.trigger {
        Trigger::Event => job.attempt > 1 || recheck,
        Trigger::Manual => true,
        Trigger::Ping | Trigger::Resend => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};

    fn job(trigger: Trigger, attempt: u16) -> DeliveryJob {
        DeliveryJob {
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::generate(),
            event_type: EventType::QrCreated,
            event_created: Timestamp::now(),
            attempt,
            trigger,
            body: Default::default(),
        }
    }

    #[test]
    fn a_deleted_webhook_skips_everything_and_a_disabled_one_all_but_pings() {
        for trigger in [Trigger::Event, Trigger::Manual, Trigger::Ping] {
            assert_eq!(by_webhook(false, true, trigger), Some(Skip::WebhookDeleted));
            assert_eq!(by_webhook(true, true, trigger), None);
        }
        assert_eq!(
            by_webhook(true, false, Trigger::Event),
            Some(Skip::WebhookDisabled)
        );
        assert_eq!(
            by_webhook(true, false, Trigger::Manual),
            Some(Skip::WebhookDisabled)
        );
        assert_eq!(by_webhook(true, false, Trigger::Ping), None);
        assert_eq!(Skip::AlreadyDelivered.label(), "already_delivered");
    }

    #[test]
    fn the_log_is_asked_for_retries_manual_attempts_and_rechecked_jobs_only() {
        assert!(
            !needs_log_check(&job(Trigger::Event, 1), false),
            "first attempts are not checked"
        );
        assert!(needs_log_check(&job(Trigger::Event, 1), true));
        assert!(needs_log_check(&job(Trigger::Event, 2), false));
        assert!(needs_log_check(&job(Trigger::Manual, 1), false));
        assert!(!needs_log_check(&job(Trigger::Ping, 1), true));
        assert!(!needs_log_check(&job(Trigger::Resend, 1), true));
    }
}
