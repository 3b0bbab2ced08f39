//! Every Prometheus metric pushline exposes, in one catalogue.
//!
//! Names follow `pushline_<what>_<unit>`; counters end in `_total`, durations are
//! `_seconds` histograms. Labels are bounded: provider, app, outcome, reason, resource,
//! stage, route — never tokens or person ids.
//!
//! Each service instance owns one [`Metrics`] with its own [`Registry`], so several
//! services can run in one process (tests) without clashing. A service only touches the
//! metrics of its own stages; labelled families it never uses stay out of its `/metrics`.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets for the fast path: 0.5 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The metric handles of one service instance. Cloning it is one reference count (the
/// HTTP middleware and the workers hold their own), not one per metric family.
#[derive(Clone)]
pub struct Metrics(Arc<Catalogue>);

impl std::ops::Deref for Metrics {
    type Target = Catalogue;

    fn deref(&self) -> &Catalogue {
        &self.0
    }
}

/// Every metric family of a service instance, reached through [`Metrics`].
pub struct Catalogue {
    registry: Registry,

    /// `pushline_http_requests_total{service,route,method,status}`.
    pub http_requests: IntCounterVec,
    /// `pushline_http_request_duration_seconds{service,route,method}`.
    pub http_duration: HistogramVec,
    /// `pushline_http_connections{service}`: connections open on the public listener.
    pub http_connections: IntGaugeVec,
    /// `pushline_http_connections_closed_total{service,reason}`: connections the public
    /// listener closed itself (`over_limit`: refused at accept, `max_connections` open;
    /// `idle`: nothing sent or received for `idle_timeout_ms`).
    pub http_connections_closed: IntCounterVec,

    /// `pushline_inapp_connections{transport,app}`: apps' live connections on a gateway.
    pub inapp_connections: IntGaugeVec,
    /// `pushline_inapp_messages_total{app,outcome}`: in-app messages by what the gateway
    /// did (`sent`, `acknowledged`, `expired`: skipped, past their deadline).
    pub inapp_messages: IntCounterVec,
    /// `pushline_inapp_catchup_messages{transport}`: messages a connection got from its
    /// backlog when it connected.
    pub inapp_catchup: HistogramVec,
    /// `pushline_inapp_closed_total{transport,reason}`: connections closed, by why
    /// (`docs/inapp.md` closing codes; `client` when the client closed).
    pub inapp_closed: IntCounterVec,
    /// `pushline_inbox_messages_total{outcome}`: messages the fan-out offered the inbox
    /// (`kept`, `duplicate`: kept before, `not_kept`: an end-to-end encrypted event).
    pub inbox_messages: IntCounterVec,
    /// `pushline_inbox_size_messages`: how many messages an inbox holds once a message is
    /// kept in it.
    pub inbox_size: HistogramVec,
    /// `pushline_inbox_operations_total{op,transport,outcome}`: the inbox API and frames
    /// (`list`, `count`, `read`, `unread`, `delete`) by outcome (`ok`, `invalid`,
    /// `no_inbox`, `unknown_message`, `unavailable`).
    pub inbox_operations: IntCounterVec,
    /// `pushline_receipts_total{kind,transport,outcome}`: receipts and actions apps
    /// reported (`delivered`, `read`, `action`), by outcome (`recorded`, `invalid`,
    /// `unknown_message`, `unavailable`).
    pub receipts: IntCounterVec,
    /// `pushline_receipt_latency_seconds{kind}`: from the event's fan-out to the app's
    /// receipt.
    pub receipt_latency: HistogramVec,

    /// `pushline_endpoints_refused_total{platform,reason}`: registrations refused because
    /// their endpoint points where the endpoint policy does not allow (`not_https`,
    /// `not_public`, `not_allowed`, `unresolvable`).
    pub endpoints_refused: IntCounterVec,

    /// `pushline_webhooks_received_total{source,outcome}`: every webhook by what became of it
    /// (`accepted`, `duplicate`, `ignored`, `expired`, `stale`, `unauthorized`, `invalid`,
    /// `too_large`, `unsupported_media_type`, `overloaded`, `unavailable`).
    pub webhooks_received: IntCounterVec,
    /// `pushline_events_published_total{source,resource,class}`.
    pub events_published: IntCounterVec,
    /// `pushline_publish_seconds{stream}`: publish → JetStream ack.
    pub publish_duration: HistogramVec,

    /// `pushline_fanout_events_total{outcome}` (`fanned_out`, `no_devices`, `expired`,
    /// `duplicate`).
    pub fanout_events: IntCounterVec,
    /// `pushline_fanout_jobs_total{platform,class}`: push jobs published.
    pub fanout_jobs: IntCounterVec,
    /// `pushline_fanout_skipped_total{platform,reason}`: devices an event was not sent to
    /// because it had to be encrypted and could not be (`no_key`, `key_unreadable`,
    /// `too_large`, `malformed`).
    pub fanout_skipped: IntCounterVec,
    /// `pushline_device_operations_total{operation,outcome}` on the device API.
    pub device_operations: IntCounterVec,
    /// `pushline_devices_removed_total{reason}` (`evicted`, `expired`, `replaced`, `moved`,
    /// `pruned`, `deleted`).
    pub devices_removed: IntCounterVec,
    /// `pushline_feedback_total{platform,outcome}` (`pruned`, `kept_reregistered`, `unknown_token`,
    /// `held`).
    pub feedback: IntCounterVec,
    /// `pushline_auth_refusals_total{service,reason}`: every refused caller, by reason.
    pub auth_refusals: IntCounterVec,

    /// `pushline_worker_messages_total{stage,outcome}` (`ack`, `retry`, `dead`).
    pub worker_messages: IntCounterVec,
    /// `pushline_worker_in_flight{stage}`.
    pub worker_in_flight: IntGaugeVec,
    /// `pushline_worker_handle_seconds{stage}`.
    pub worker_duration: HistogramVec,
    /// `pushline_retries_total{stage,reason}`.
    pub retries: IntCounterVec,
    /// `pushline_dead_letters_total{stage,reason}`.
    pub dead_letters: IntCounterVec,
    /// `pushline_expired_total{stage}`: work dropped because its deadline passed.
    pub expired: IntCounterVec,
    /// `pushline_held_requests{service}`: requests held while their publish is retried,
    /// counted against `max_held_bytes` instead of `max_in_flight`.
    pub held_requests: IntGaugeVec,
    /// `pushline_partition_reroutes_total{stream}`: publishes that went to another
    /// partition because theirs stalled ([`crate::partition`]).
    pub partition_reroutes: IntCounterVec,
    /// `pushline_partition_leader_moves_total{stream,leader,outcome}`: leaders the
    /// publishers moved to spread the partitions over the nodes ([`crate::balance`]).
    pub partition_leader_moves: IntCounterVec,
    /// `pushline_consumer_pending_messages{stream,consumer}`: not yet delivered (lag).
    pub consumer_pending: IntGaugeVec,
    /// `pushline_consumer_ack_pending_messages{stream,consumer}`: delivered, not yet acked.
    pub consumer_ack_pending: IntGaugeVec,

    /// `pushline_pushes_total{provider,app,outcome,reason}`.
    pub pushes: IntCounterVec,
    /// `pushline_provider_request_seconds{provider,app}`.
    pub provider_duration: HistogramVec,
    /// `pushline_end_to_end_seconds{provider,class}`: webhook received → provider accepted.
    pub end_to_end: HistogramVec,
    /// `pushline_pruning_held{provider,app}`: 1 while this dispatcher holds the app's
    /// token pruning because most answers call tokens invalid ([`crate::prune_guard`]).
    pub pruning_held: IntGaugeVec,
    /// `pushline_webex_webhook_status{name}`: 1 while the Webex webhook is active, 0 while
    /// it is inactive or missing (registry watchdog).
    pub webex_webhook_status: IntGaugeVec,
    /// `pushline_webex_webhook_checks_total{outcome}` (`ok`, `failed`: Webex unreachable or
    /// refused the token).
    pub webex_webhook_checks: IntCounterVec,
    /// `pushline_webex_webhook_reactivations_total{name}`.
    pub webex_webhook_reactivations: IntCounterVec,
    /// `pushline_callbacks_total{producer,outcome}`: producer callbacks `sent` or `failed`
    /// (each failed try; retried, then dead-lettered).
    pub callbacks: IntCounterVec,
    /// `pushline_status_records_total{stage,result}`: delivery status records written
    /// (`written`) or lost on the way to NATS (`failed`); see [`crate::tracking`].
    pub status_records: IntCounterVec,
    /// `pushline_credential_valid{provider,app}`: 1 while the provider accepts the app's
    /// credential, 0 once it refused it (a push's answer or the periodic check).
    pub credential_valid: IntGaugeVec,
    /// `pushline_credential_expiry_timestamp_seconds{provider,app}`.
    pub credential_expiry: prometheus::GaugeVec,

    /// `pushline_build_info{service,version}`, always 1.
    pub build_info: IntGaugeVec,
    /// `pushline_start_time_seconds`.
    pub start_time: Gauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    histogram_with(registry, name, help, labels, LATENCY_BUCKETS)
}

fn histogram_with(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let metric = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// A fresh registry with every pushline metric, for the named service.
    #[allow(clippy::expect_used)] // static names and labels: a failure is a programming error
    pub fn new(service: &str) -> Self {
        let r = Registry::new();
        let metrics = Catalogue {
            http_requests: counter(
                &r,
                "pushline_http_requests_total",
                "HTTP requests served.",
                &["service", "route", "method", "status"],
            ),
            http_duration: histogram(
                &r,
                "pushline_http_request_duration_seconds",
                "HTTP request duration.",
                &["service", "route", "method"],
            ),
            http_connections: gauge(
                &r,
                "pushline_http_connections",
                "Connections open on the public listener.",
                &["service"],
            ),
            http_connections_closed: counter(
                &r,
                "pushline_http_connections_closed_total",
                "Connections the public listener closed itself, by reason.",
                &["service", "reason"],
            ),
            inapp_connections: gauge(
                &r,
                "pushline_inapp_connections",
                "Apps' live connections on this gateway.",
                &["transport", "app"],
            ),
            inapp_messages: counter(
                &r,
                "pushline_inapp_messages_total",
                "In-app messages, by what the gateway did with them.",
                &["app", "outcome"],
            ),
            inapp_catchup: histogram_with(
                &r,
                "pushline_inapp_catchup_messages",
                "Messages a connection got from its backlog when it connected.",
                &["transport"],
                &[0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0],
            ),
            inapp_closed: counter(
                &r,
                "pushline_inapp_closed_total",
                "Apps' connections closed, by reason.",
                &["transport", "reason"],
            ),
            inbox_messages: counter(
                &r,
                "pushline_inbox_messages_total",
                "Messages offered to persons' inboxes, by outcome.",
                &["outcome"],
            ),
            inbox_size: histogram_with(
                &r,
                "pushline_inbox_size_messages",
                "Messages an inbox holds once a message is kept in it.",
                &[],
                &[
                    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0,
                ],
            ),
            inbox_operations: counter(
                &r,
                "pushline_inbox_operations_total",
                "Inbox reads and changes by persons' apps, by operation, transport and outcome.",
                &["op", "transport", "outcome"],
            ),
            receipts: counter(
                &r,
                "pushline_receipts_total",
                "Receipts and actions reported by apps, by kind, transport and outcome.",
                &["kind", "transport", "outcome"],
            ),
            receipt_latency: histogram_with(
                &r,
                "pushline_receipt_latency_seconds",
                "From an event's fan-out to an app's receipt of it.",
                &["kind"],
                &[
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
                ],
            ),
            endpoints_refused: counter(
                &r,
                "pushline_endpoints_refused_total",
                "Registrations refused for where their endpoint points, by reason.",
                &["platform", "reason"],
            ),
            webhooks_received: counter(
                &r,
                "pushline_webhooks_received_total",
                "Webhooks received, by outcome.",
                &["source", "outcome"],
            ),
            events_published: counter(
                &r,
                "pushline_events_published_total",
                "Events published to EVENTS.",
                &["source", "resource", "class"],
            ),
            publish_duration: histogram(
                &r,
                "pushline_publish_seconds",
                "Time from publish to JetStream ack.",
                &["stream"],
            ),
            fanout_events: counter(
                &r,
                "pushline_fanout_events_total",
                "Events handled by the fan-out, by outcome.",
                &["outcome"],
            ),
            fanout_jobs: counter(
                &r,
                "pushline_fanout_jobs_total",
                "Push jobs published by the fan-out.",
                &["platform", "class"],
            ),
            fanout_skipped: counter(
                &r,
                "pushline_fanout_skipped_total",
                "Devices an event was not sent to because its payload had to be encrypted and could not be.",
                &["platform", "reason"],
            ),
            device_operations: counter(
                &r,
                "pushline_device_operations_total",
                "Device API operations, by outcome.",
                &["operation", "outcome"],
            ),
            devices_removed: counter(
                &r,
                "pushline_devices_removed_total",
                "Device registrations removed, by reason.",
                &["reason"],
            ),
            feedback: counter(
                &r,
                "pushline_feedback_total",
                "Invalid-token feedback handled, by outcome.",
                &["platform", "outcome"],
            ),
            auth_refusals: counter(
                &r,
                "pushline_auth_refusals_total",
                "Callers refused, by reason.",
                &["service", "reason"],
            ),
            worker_messages: counter(
                &r,
                "pushline_worker_messages_total",
                "JetStream messages handled, by outcome.",
                &["stage", "outcome"],
            ),
            worker_in_flight: gauge(
                &r,
                "pushline_worker_in_flight",
                "Messages being handled now.",
                &["stage"],
            ),
            worker_duration: histogram(
                &r,
                "pushline_worker_handle_seconds",
                "Time to handle one message.",
                &["stage"],
            ),
            retries: counter(
                &r,
                "pushline_retries_total",
                "Messages scheduled for another attempt.",
                &["stage", "reason"],
            ),
            dead_letters: counter(
                &r,
                "pushline_dead_letters_total",
                "Messages dead-lettered.",
                &["stage", "reason"],
            ),
            expired: counter(
                &r,
                "pushline_expired_total",
                "Work dropped because its deadline had passed.",
                &["stage"],
            ),
            held_requests: gauge(
                &r,
                "pushline_held_requests",
                "Requests held while their publish is retried, counted in bytes.",
                &["service"],
            ),
            partition_reroutes: counter(
                &r,
                "pushline_partition_reroutes_total",
                "Publishes routed to another partition because theirs stalled.",
                &["stream"],
            ),
            partition_leader_moves: counter(
                &r,
                "pushline_partition_leader_moves_total",
                "Stream and consumer leaders moved to spread the partitions over the nodes.",
                &["stream", "leader", "outcome"],
            ),
            consumer_pending: gauge(
                &r,
                "pushline_consumer_pending_messages",
                "Messages in the stream not yet delivered to the consumer.",
                &["stream", "consumer"],
            ),
            consumer_ack_pending: gauge(
                &r,
                "pushline_consumer_ack_pending_messages",
                "Messages delivered and not yet acknowledged.",
                &["stream", "consumer"],
            ),
            pushes: counter(
                &r,
                "pushline_pushes_total",
                "Pushes sent to providers, by outcome.",
                &["provider", "app", "outcome", "reason"],
            ),
            provider_duration: histogram(
                &r,
                "pushline_provider_request_seconds",
                "Provider request duration.",
                &["provider", "app"],
            ),
            end_to_end: histogram(
                &r,
                "pushline_end_to_end_seconds",
                "Webhook received to provider accepted.",
                &["provider", "class"],
            ),
            pruning_held: gauge(
                &r,
                "pushline_pruning_held",
                "1 while token pruning for an app is held because most provider answers call its tokens invalid.",
                &["provider", "app"],
            ),
            webex_webhook_status: gauge(
                &r,
                "pushline_webex_webhook_status",
                "1 while the Webex webhook is active, 0 while it is inactive or missing.",
                &["name"],
            ),
            webex_webhook_checks: counter(
                &r,
                "pushline_webex_webhook_checks_total",
                "Checks of the Webex webhook, by outcome.",
                &["outcome"],
            ),
            webex_webhook_reactivations: counter(
                &r,
                "pushline_webex_webhook_reactivations_total",
                "Inactive Webex webhooks set active again.",
                &["name"],
            ),
            callbacks: counter(
                &r,
                "pushline_callbacks_total",
                "Producer callbacks sent, or failed tries.",
                &["producer", "outcome"],
            ),
            status_records: counter(
                &r,
                "pushline_status_records_total",
                "Delivery status records written to STATUS, or lost on the way.",
                &["stage", "result"],
            ),
            credential_valid: gauge(
                &r,
                "pushline_credential_valid",
                "1 while the provider accepts the app's credential, 0 once it refused it.",
                &["provider", "app"],
            ),
            credential_expiry: {
                let m = prometheus::GaugeVec::new(
                    Opts::new(
                        "pushline_credential_expiry_timestamp_seconds",
                        "When each provider credential expires (Unix time).",
                    ),
                    &["provider", "app"],
                )
                .expect("valid metric");
                r.register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            },
            build_info: gauge(
                &r,
                "pushline_build_info",
                "Build information; always 1.",
                &["service", "version"],
            ),
            start_time: {
                let g = Gauge::new(
                    "pushline_start_time_seconds",
                    "Process start time (Unix time).",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone()))
                    .expect("metric names are unique");
                g
            },
            registry: r,
        };
        metrics
            .build_info
            .with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics
            .start_time
            .set(crate::contract::now_ms() as f64 / 1000.0);
        Metrics(Arc::new(metrics))
    }

    /// The registry, for callers that add metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_follows_the_convention() {
        let m = Metrics::new("test");
        m.webhooks_received
            .with_label_values(&["webex", "accepted"])
            .inc();
        for family in m.registry().gather() {
            let name = family.name();
            assert!(name.starts_with("pushline_"), "{name}");
        }
        assert!(
            m.render().contains(
                "pushline_webhooks_received_total{outcome=\"accepted\",source=\"webex\"} 1"
            )
        );
    }
}
