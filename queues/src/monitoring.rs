//! Pub/Sub backlog from Cloud Monitoring, the only place Google exposes it.
//!
//! Google samples these metrics every 60 s and they can take up to two minutes more to
//! appear, so they are for dashboards and for scaling from zero, not for fast decisions.

use std::collections::HashMap;
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

/// One subscription's backlog (the sidecar's view: its queue and its DLQ).
pub struct CloudMonitoring {
    client: MonitoringClient,
    project: String,
    subscription_id: String,
    dead_letter_subscription_id: Option<String>,
}

/// Calls `projects.timeSeries.list`, with Google credentials when the endpoint is Google's.
#[derive(Clone)]
pub struct MonitoringClient {
    http: reqwest::Client,
    endpoint: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListTimeSeries {
    #[serde(default)]
    time_series: Vec<TimeSeries>,
    #[serde(default)]
    next_page_token: String,
}

#[derive(Deserialize)]
struct TimeSeries {
    #[serde(default)]
    resource: MonitoredResource,
    #[serde(default)]
    points: Vec<Point>,
}

#[derive(Deserialize, Default)]
struct MonitoredResource {
    #[serde(default)]
    labels: HashMap<String, String>,
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

impl TimeSeries {
    /// Monitoring returns points newest first.
    fn newest(&self) -> Option<f64> {
        self.points.first().and_then(|p| p.value.as_f64())
    }
}

/// The newest point of the first series.
fn newest_value(body: &str) -> Result<Option<f64>, serde_json::Error> {
    let list: ListTimeSeries = serde_json::from_str(body)?;
    Ok(list.time_series.first().and_then(TimeSeries::newest))
}

/// The newest point of every series, by subscription id, and the next page's token.
fn newest_by_subscription(
    body: &str,
) -> Result<(HashMap<String, f64>, Option<String>), serde_json::Error> {
    let list: ListTimeSeries = serde_json::from_str(body)?;
    let values = list
        .time_series
        .iter()
        .filter_map(|series| {
            let id = series.resource.labels.get("subscription_id")?;
            Some((id.clone(), series.newest()?))
        })
        .collect();
    let next = Some(list.next_page_token).filter(|t| !t.is_empty());
    Ok((values, next))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn list_error(kind: QueueErrorKind, message: impl Into<String>) -> QueueError {
    QueueError::new("ListTimeSeries", kind, message)
}

/// More pages than this for one project would mean a runaway; better an error than a loop.
const MAX_PAGES: usize = 100;

impl MonitoringClient {
    pub fn new(config: &MonitoringConfig) -> Result<Self, QueueError> {
        let credentials = if config.endpoint == DEFAULT_ENDPOINT {
            Some(
                google_cloud_auth::credentials::Builder::default()
                    .with_scopes(["https://www.googleapis.com/auth/monitoring.read"])
                    .build()
                    .map_err(|e| {
                        list_error(
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
                .map_err(|e| list_error(QueueErrorKind::Invalid, e.to_string()))?,
            endpoint: config.endpoint.trim_end_matches('/').to_string(),
            credentials,
        })
    }

    /// One page of `timeSeries.list` over the last [`LOOKBACK`]: the answer's body.
    async fn list(
        &self,
        project: &str,
        filter: &str,
        now: SystemTime,
        page_token: Option<&str>,
    ) -> Result<String, QueueError> {
        let url = format!("{}/v3/projects/{project}/timeSeries", self.endpoint);
        let mut query = vec![
            ("filter", filter.to_string()),
            ("interval.startTime", rfc3339(now - LOOKBACK)),
            ("interval.endTime", rfc3339(now)),
            ("view", "FULL".to_string()),
        ];
        if let Some(token) = page_token {
            query.push(("pageToken", token.to_string()));
        }
        let mut request = self.http.get(url).query(&query);
        if let Some(credentials) = &self.credentials {
            let headers = credentials
                .headers(http::Extensions::new())
                .await
                .map_err(|e| {
                    list_error(
                        QueueErrorKind::PermissionDenied,
                        format!("Google credentials: {e}"),
                    )
                })?;
            if let google_cloud_auth::credentials::CacheableResource::New { data, .. } = headers {
                request = request.headers(data);
            }
        }
        crate::calls::record("monitoring", "ListTimeSeries");
        let response = request
            .send()
            .await
            .map_err(|e| list_error(QueueErrorKind::Unavailable, e.to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| list_error(QueueErrorKind::Unavailable, e.to_string()))?;
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 | 403 => QueueErrorKind::PermissionDenied,
                404 => QueueErrorKind::NotFound,
                429 => QueueErrorKind::Throttled,
                400..=499 => QueueErrorKind::Invalid,
                _ => QueueErrorKind::Unavailable,
            };
            return Err(list_error(kind, format!("HTTP {status}: {body}")));
        }
        Ok(body)
    }

    /// The newest undelivered-message count of every subscription of `project` that has a
    /// recent point, by subscription id: one call (per page) for all of them, so reading a
    /// thousand idle consumers costs one call per poll, not a thousand. A subscription
    /// missing from the answer has no data yet (new subscriptions lag a few minutes).
    pub async fn undelivered_by_subscription(
        &self,
        project: &str,
        now: SystemTime,
    ) -> Result<HashMap<String, u64>, QueueError> {
        let filter =
            format!("metric.type=\"{UNDELIVERED}\" AND resource.type=\"pubsub_subscription\"");
        let mut all = HashMap::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let body = self.list(project, &filter, now, token.as_deref()).await?;
            let (values, next) = newest_by_subscription(&body).map_err(|e| {
                list_error(QueueErrorKind::Other, format!("unexpected answer: {e}"))
            })?;
            all.extend(values.into_iter().map(|(id, v)| (id, v as u64)));
            match next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
        Err(list_error(
            QueueErrorKind::Other,
            format!("more than {MAX_PAGES} pages of Pub/Sub subscriptions in project {project}"),
        ))
    }
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
        Ok(Self {
            client: MonitoringClient::new(config)?,
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
        let body = self.client.list(&self.project, &filter, now, None).await?;
        newest_value(&body)
            .map_err(|e| list_error(QueueErrorKind::Other, format!("unexpected answer: {e}")))
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

    #[test]
    fn a_project_wide_answer_is_read_by_subscription() {
        let body = r#"{"timeSeries":[
            {"resource":{"type":"pubsub_subscription","labels":{"project_id":"p","subscription_id":"a"}},
             "points":[{"value":{"int64Value":"3"}},{"value":{"int64Value":"9"}}]},
            {"resource":{"type":"pubsub_subscription","labels":{"project_id":"p","subscription_id":"b"}},
             "points":[{"value":{"int64Value":"0"}}]},
            {"resource":{"labels":{"subscription_id":"no-points"}},"points":[]}],
            "nextPageToken":"page-2"}"#;
        let (values, next) = newest_by_subscription(body).unwrap();
        assert_eq!(values.get("a"), Some(&3.0));
        assert_eq!(values.get("b"), Some(&0.0));
        assert_eq!(values.len(), 2);
        assert_eq!(next.as_deref(), Some("page-2"));
        let (values, next) = newest_by_subscription("{}").unwrap();
        assert!(values.is_empty() && next.is_none());
    }
}
