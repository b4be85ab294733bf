//! Pub/Sub backlog from Cloud Monitoring, the only place Google exposes it.
//!
//! Google samples these metrics every 60 s and they can take up to two minutes more to
//! appear, so they are for dashboards and for scaling from zero, not for fast decisions.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::{QueueError, QueueErrorKind, QueueStats};

pub const DEFAULT_ENDPOINT: &str = "https://monitoring.googleapis.com";
const UNDELIVERED: &str = "pubsub.googleapis.com/subscription/num_undelivered_messages";
const OLDEST_AGE: &str = "pubsub.googleapis.com/subscription/oldest_unacked_message_age";
/// How far back to look for the newest point; the metrics lag by up to three minutes.
const LOOKBACK: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct MonitoringConfig {
    /// `https://monitoring.googleapis.com`, or a compatible endpoint. Anything else than the
    /// default is called without Google credentials.
    pub endpoint: String,
}

pub struct CloudMonitoring {
    http: reqwest::Client,
    endpoint: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
    project: String,
    subscription_id: String,
    dead_letter_subscription_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListTimeSeries {
    #[serde(default)]
    time_series: Vec<TimeSeries>,
}

#[derive(Deserialize)]
struct TimeSeries {
    #[serde(default)]
    points: Vec<Point>,
}

#[derive(Deserialize)]
struct Point {
    value: TypedValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedValue {
    int64_value: Option<String>,
    double_value: Option<f64>,
}

impl TypedValue {
    fn as_f64(&self) -> Option<f64> {
        self.int64_value
            .as_deref()
            .and_then(|v| v.parse().ok())
            .or(self.double_value)
    }
}

/// The newest point of the first series (Monitoring returns points newest first).
fn newest_value(body: &str) -> Result<Option<f64>, serde_json::Error> {
    let list: ListTimeSeries = serde_json::from_str(body)?;
    Ok(list
        .time_series
        .first()
        .and_then(|s| s.points.first())
        .and_then(|p| p.value.as_f64()))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl CloudMonitoring {
    /// `subscription` and `dead_letter` are `projects/<p>/subscriptions/<s>` paths.
    pub fn new(
        config: &MonitoringConfig,
        subscription: &str,
        dead_letter: Option<&str>,
    ) -> Result<Self, QueueError> {
        let parts: Vec<&str> = subscription.split('/').collect();
        let project = parts.get(1).copied().unwrap_or_default().to_string();
        let credentials = if config.endpoint == DEFAULT_ENDPOINT {
            Some(
                google_cloud_auth::credentials::Builder::default()
                    .with_scopes(["https://www.googleapis.com/auth/monitoring.read"])
                    .build()
                    .map_err(|e| {
                        QueueError::new(
                            "ListTimeSeries",
                            QueueErrorKind::PermissionDenied,
                            format!("no usable Google credentials for Cloud Monitoring: {e}"),
                        )
                    })?,
            )
        } else {
            None
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| {
                    QueueError::new("ListTimeSeries", QueueErrorKind::Invalid, e.to_string())
                })?,
            endpoint: config.endpoint.trim_end_matches('/').to_string(),
            credentials,
            project,
            subscription_id: crate::pubsub::short_name(subscription),
            dead_letter_subscription_id: dead_letter.map(crate::pubsub::short_name),
        })
    }

    async fn latest(
        &self,
        metric: &str,
        subscription_id: &str,
        now: SystemTime,
    ) -> Result<Option<f64>, QueueError> {
        let filter = format!(
            "metric.type=\"{metric}\" AND resource.labels.subscription_id=\"{subscription_id}\""
        );
        let url = format!("{}/v3/projects/{}/timeSeries", self.endpoint, self.project);
        let mut request = self.http.get(url).query(&[
            ("filter", filter.as_str()),
            ("interval.startTime", &rfc3339(now - LOOKBACK)),
            ("interval.endTime", &rfc3339(now)),
            ("view", "FULL"),
        ]);
        if let Some(credentials) = &self.credentials {
            let headers = credentials
                .headers(http::Extensions::new())
                .await
                .map_err(|e| {
                    QueueError::new(
                        "ListTimeSeries",
                        QueueErrorKind::PermissionDenied,
                        format!("Google credentials: {e}"),
                    )
                })?;
            if let google_cloud_auth::credentials::CacheableResource::New { data, .. } = headers {
                request = request.headers(data);
            }
        }
        let response = request.send().await.map_err(|e| {
            QueueError::new("ListTimeSeries", QueueErrorKind::Unavailable, e.to_string())
        })?;
        let status = response.status();
        let body = response.text().await.map_err(|e| {
            QueueError::new("ListTimeSeries", QueueErrorKind::Unavailable, e.to_string())
        })?;
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 | 403 => QueueErrorKind::PermissionDenied,
                404 => QueueErrorKind::NotFound,
                429 => QueueErrorKind::Throttled,
                400..=499 => QueueErrorKind::Invalid,
                _ => QueueErrorKind::Unavailable,
            };
            return Err(QueueError::new(
                "ListTimeSeries",
                kind,
                format!("HTTP {status}: {body}"),
            ));
        }
        newest_value(&body).map_err(|e| {
            QueueError::new(
                "ListTimeSeries",
                QueueErrorKind::Other,
                format!("unexpected answer: {e}"),
            )
        })
    }

    /// Undelivered messages and the oldest unacked age of the subscription, and the dead
    /// letters waiting in the DLQ subscription. A metric with no recent point stays `None`.
    pub async fn backlog(&self, now: SystemTime) -> Result<QueueStats, QueueError> {
        let visible = self.latest(UNDELIVERED, &self.subscription_id, now).await?;
        let oldest = self.latest(OLDEST_AGE, &self.subscription_id, now).await?;
        let dead_letter_visible = match &self.dead_letter_subscription_id {
            Some(id) => self.latest(UNDELIVERED, id, now).await?,
            None => None,
        };
        Ok(QueueStats {
            visible: visible.map(|v| v as u64),
            in_flight: None,
            delayed: None,
            dead_letter_visible: dead_letter_visible.map(|v| v as u64),
            oldest_age_seconds: oldest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_point_is_read() {
        let body = r#"{"timeSeries":[{"metric":{"type":"pubsub.googleapis.com/subscription/num_undelivered_messages"},
            "resource":{"type":"pubsub_subscription","labels":{"subscription_id":"orders"}},
            "points":[{"interval":{"endTime":"2026-01-01T00:01:00Z"},"value":{"int64Value":"42"}},
                      {"interval":{"endTime":"2026-01-01T00:00:00Z"},"value":{"int64Value":"7"}}]}]}"#;
        assert_eq!(newest_value(body).unwrap(), Some(42.0));
        assert_eq!(newest_value("{}").unwrap(), None);
        assert_eq!(
            newest_value(r#"{"timeSeries":[{"points":[{"value":{"doubleValue":1.5}}]}]}"#).unwrap(),
            Some(1.5)
        );
        assert!(newest_value("not json").is_err());
    }
}
