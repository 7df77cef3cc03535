//! notify's own metrics: every delivery, by notifier and result.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    notifier: String,
    result: &'static str,
}

/// `canaryd_notifications_total`; cheap to clone (the series are shared).
#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    notifications: Family<NotificationLabels, Counter>,
}

impl DeliveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.sub_registry_with_prefix("canaryd").register(
            "notifications",
            "Notification deliveries, by notifier and result",
            m.notifications.clone(),
        );
        m
    }

    /// One notification delivery (after its retries).
    pub fn delivered(&self, notifier: &str, delivered: bool) {
        let result = if delivered { "delivered" } else { "failed" };
        self.notifications
            .get_or_create(&NotificationLabels {
                notifier: notifier.into(),
                result,
            })
            .inc();
    }
}
