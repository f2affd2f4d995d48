//! `campaign-pipeline collect`: the apps' way in. Apps post events over HTTP; each is produced
//! to the pipeline's source topic as the bytes the app sent, keyed by its `campaign_id`, and a
//! request is answered 202 only once Kafka has acknowledged every one of its events
//! (idempotent producer, `acks=all`). A collector holds no state beyond its producer, so any
//! number of them can stand behind a load balancer.

pub mod body;
pub mod metrics;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};

use campaign_core::config::{CollectorConfig, Config, PipelineConfig};
use campaign_kafka::admin::TopicAdmin;
use campaign_kafka::producer::{EventProducer, ProducerBounds};
use campaign_kafka::{client_config, KafkaError};
use metrics::{Metrics, Reason, ReasonLabel, StatusLabel};

/// What can stop the collector from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// No token to check requests against.
    #[error("collector.tokens_env: the environment variable {variable} is unset or empty: set it to one or more comma-separated tokens, which apps send as `Authorization: Bearer <token>`")]
    NoTokens { variable: String },
    /// The source topic is not there.
    #[error("the topic {topic} does not exist on {brokers}: run `campaign-pipeline setup` first")]
    NoTopic { topic: String, brokers: String },
    /// An allowed origin is not a header value.
    #[error("collector.cors_origins: `{origin}` cannot be sent as a header")]
    Origin { origin: String },
    /// The producer could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The address cannot be listened on.
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Kafka's default largest message (`message.max.bytes`): a larger event could never be
/// produced, so its request gets 413 instead of 503s the app would retry for ever.
const MAX_EVENT_BYTES: usize = 1_000_000;

/// The collector, bound to its address and ready to serve.
pub struct CollectorServer {
    listener: tokio::net::TcpListener,
    collector: Arc<Collector>,
    origins: Vec<HeaderValue>,
}

impl CollectorServer {
    /// Checks the settings, the tokens and the topic, creates the producer and binds `listen`
    /// (the configured address if `None`): every problem is reported before a request is taken.
    pub async fn bind(
        config: &Config,
        pipeline: &PipelineConfig,
        listen: Option<SocketAddr>,
    ) -> Result<Self, CollectError> {
        let tokens = Tokens::from_env(&config.collector.tokens_env)?;
        Self::bind_with(config, pipeline, listen, tokens).await
    }

    /// As [`Self::bind`], accepting `tokens` instead of those of `collector.tokens_env`.
    pub async fn bind_with_tokens(
        config: &Config,
        pipeline: &PipelineConfig,
        listen: Option<SocketAddr>,
        tokens: &[&str],
    ) -> Result<Self, CollectError> {
        let tokens = Tokens::new(tokens.iter().copied(), &config.collector.tokens_env)?;
        Self::bind_with(config, pipeline, listen, tokens).await
    }

    async fn bind_with(
        config: &Config,
        pipeline: &PipelineConfig,
        listen: Option<SocketAddr>,
        tokens: Tokens,
    ) -> Result<Self, CollectError> {
        let settings = config.collector.clone();
        let origins = settings
            .cors_origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin).map_err(|_| CollectError::Origin {
                    origin: origin.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
        check_topic(&client, &pipeline.source.topic, &pipeline.source.brokers).await?;
        let factory = ProducerFactory {
            client,
            topic: pipeline.source.topic.clone(),
            bounds: ProducerBounds {
                delivery_timeout: settings.produce_timeout,
                queue_bytes: Some(settings.max_in_flight.0),
            },
        };
        let producer = RwLock::new(Arc::new(factory.create()?));
        let address = listen.unwrap_or(settings.listen);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| CollectError::Listen { address, source })?;
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight.bytes()));
        Ok(Self {
            listener,
            collector: Arc::new(Collector {
                producer,
                factory,
                tokens,
                in_flight,
                metrics: Metrics::default(),
                settings,
            }),
            origins,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true, lets the requests in flight finish, then waits for
    /// Kafka to acknowledge what is still queued.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), CollectError> {
        let settings = &self.collector.settings;
        let limits = campaign_http::ServerLimits {
            max_connections: settings.max_connections,
            header_timeout: settings.read_timeout,
            shutdown_grace: settings.read_timeout + settings.produce_timeout,
        };
        let app = router(self.collector.clone(), &self.origins);
        campaign_http::serve(self.listener, app, limits, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
        let producer = self.collector.current_producer();
        let timeout = self.collector.settings.produce_timeout;
        match tokio::task::spawn_blocking(move || producer.flush_within(timeout)).await {
            Ok(flushed) => Ok(flushed?),
            Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
        }
    }
}

/// Whether the topic exists; a broker that does not answer yet is no reason not to start
/// (requests get 503 until it does).
async fn check_topic(
    client: &rdkafka::ClientConfig,
    topic: &str,
    brokers: &str,
) -> Result<(), CollectError> {
    let admin = TopicAdmin::new(client)?;
    let name = topic.to_string();
    let found = tokio::task::spawn_blocking(move || admin.partition_count(&name)).await;
    match found {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(CollectError::NoTopic {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        }),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "the broker does not answer yet: requests get 503 until it does");
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// The accepted tokens.
struct Tokens(Vec<Vec<u8>>);

impl Tokens {
    fn from_env(variable: &str) -> Result<Self, CollectError> {
        let text = std::env::var(variable).unwrap_or_default();
        Self::new(text.split(','), variable)
    }

    /// The non-blank tokens of `given`; at least one is required (`variable` names where they
    /// come from, for the error).
    fn new<'a>(
        given: impl IntoIterator<Item = &'a str>,
        variable: &str,
    ) -> Result<Self, CollectError> {
        let tokens: Vec<Vec<u8>> = given
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.as_bytes().to_vec())
            .collect();
        if tokens.is_empty() {
            return Err(CollectError::NoTokens {
                variable: variable.to_string(),
            });
        }
        Ok(Self(tokens))
    }

    /// Whether `headers` carry an accepted bearer token, compared in constant time.
    fn admit(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
        else {
            return false;
        };
        let given = given.trim().as_bytes();
        self.0
            .iter()
            .fold(false, |found, token| found | bool::from(token.ct_eq(given)))
    }
}

/// Makes the collector's producer, again when one fails for good.
struct ProducerFactory {
    client: rdkafka::ClientConfig,
    topic: String,
    bounds: ProducerBounds,
}

impl ProducerFactory {
    fn create(&self) -> Result<EventProducer, KafkaError> {
        EventProducer::bounded(&self.client, &self.topic, self.bounds)
    }
}

/// The state every request shares.
struct Collector {
    /// Replaced when it fails for good; requests in flight keep the one they started with.
    producer: RwLock<Arc<EventProducer>>,
    factory: ProducerFactory,
    tokens: Tokens,
    /// Permits are bytes of bodies read and not yet answered.
    in_flight: Arc<Semaphore>,
    metrics: Metrics,
    settings: CollectorConfig,
}

fn router(collector: Arc<Collector>, origins: &[HeaderValue]) -> Router {
    let app = Router::new()
        .route("/v1/events", post(post_events))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .with_state(collector);
    if origins.is_empty() {
        return app;
    }
    app.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::CONTENT_ENCODING,
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn metrics_text(State(collector): State<Arc<Collector>>) -> Response {
    let mut out = String::new();
    if let Err(error) =
        prometheus_client::encoding::text::encode(&mut out, &collector.metrics.registry)
    {
        tracing::warn!(%error, "encoding metrics failed");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// A request answered with anything but 202.
struct Refusal {
    status: StatusCode,
    reason: Reason,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

async fn post_events(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = match collector.accept(&headers, body).await {
        Ok(accepted) => {
            collector.metrics.events_accepted.inc_by(accepted as u64);
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "accepted": accepted })),
            )
                .into_response()
        }
        Err(refusal) => {
            collector
                .metrics
                .rejected
                .get_or_create(&ReasonLabel {
                    reason: refusal.reason.label(),
                })
                .inc();
            let mut response = (
                refusal.status,
                axum::Json(serde_json::json!({ "error": refusal.message })),
            )
                .into_response();
            let headers = response.headers_mut();
            match refusal.status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    let seconds = collector.settings.produce_timeout.as_secs().max(1);
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                StatusCode::UNAUTHORIZED => {
                    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                _ => {}
            }
            response
        }
    };
    collector
        .metrics
        .requests
        .get_or_create(&StatusLabel {
            status: answer.status().as_u16(),
        })
        .inc();
    answer
}

/// How the body is encoded.
enum Encoding {
    Plain,
    Gzip,
}

/// Bytes of the in-flight budget a request holds, shown on the gauge while held.
struct Held<'a> {
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
    metrics: &'a Metrics,
}

impl Held<'_> {
    /// Takes `bytes` more of the budget, or refuses the request at once.
    fn take(&mut self, semaphore: &Arc<Semaphore>, bytes: usize) -> Result<(), Refusal> {
        if bytes == 0 {
            return Ok(());
        }
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| semaphore.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::Unavailable,
                    "the collector holds as many unacknowledged bytes as collector.max_in_flight allows; retry later",
                )
            })?;
        self.permits.push(permit);
        self.bytes += bytes;
        self.metrics.in_flight_bytes.inc_by(bytes as i64);
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight_bytes.dec_by(self.bytes as i64);
    }
}

impl Collector {
    fn current_producer(&self) -> Arc<EventProducer> {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed` with a new producer if `error` ended it for good (a new producer id and
    /// epoch; what it had queued is lost, and those requests got 503).
    fn renew_if_ended(&self, failed: &Arc<EventProducer>, error: &KafkaError) {
        if !failed.is_ended_by(error) {
            return;
        }
        let fatal = source_text(error);
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match self.factory.create() {
            Ok(fresh) => {
                tracing::warn!(error = %fatal, "the Kafka producer failed for good: replaced it with a new one");
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                // Dropping a producer purges and waits for its queue: not on a request's thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(error) => {
                tracing::error!(error = %error, fatal = %fatal, "the Kafka producer failed for good and a new one cannot be made");
            }
        }
    }

    /// Checks, reads, splits and produces a request's events; the number Kafka acknowledged.
    async fn accept(&self, headers: &HeaderMap, body: Body) -> Result<usize, Refusal> {
        if !self.tokens.admit(headers) {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                Reason::Unauthorized,
                "send a token of collector.tokens_env as `Authorization: Bearer <token>`",
            ));
        }
        let encoding = match headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
        {
            None => Encoding::Plain,
            Some(e) if e.is_empty() || e == "identity" => Encoding::Plain,
            Some(e) if e == "gzip" || e == "x-gzip" => Encoding::Gzip,
            Some(other) => {
                return Err(Refusal::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Reason::Encoding,
                    format!(
                        "Content-Encoding {other:?} is not accepted: send the body plain or gzip"
                    ),
                ))
            }
        };
        let max = self.settings.max_body.bytes();
        let too_large = || {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge,
                format!(
                    "the body is larger than collector.max_body ({})",
                    self.settings.max_body
                ),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut held = Held {
            permits: Vec::new(),
            bytes: 0,
            metrics: &self.metrics,
        };
        held.take(&self.in_flight, declared.unwrap_or(max))?;
        let read = tokio::time::timeout(self.settings.read_timeout, read_body(body, max)).await;
        let raw = match read {
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    Reason::SlowBody,
                    format!(
                        "the body did not arrive within collector.read_timeout ({})",
                        humantime::format_duration(self.settings.read_timeout)
                    ),
                ))
            }
            Ok(Err(BodyRead::TooLarge)) => return Err(too_large()),
            Ok(Err(BodyRead::Broken)) => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    Reason::NotJson,
                    "the body ended before its length",
                ))
            }
            Ok(Ok(raw)) => raw,
        };
        let body = match encoding {
            Encoding::Plain => raw,
            Encoding::Gzip => {
                let mut plain = Vec::new();
                flate2::read::MultiGzDecoder::new(&raw[..])
                    .take(max as u64 + 1)
                    .read_to_end(&mut plain)
                    .map_err(|e| {
                        Refusal::new(
                            StatusCode::BAD_REQUEST,
                            Reason::NotJson,
                            format!("the gzip body does not decode: {e}"),
                        )
                    })?;
                if plain.len() > max {
                    return Err(too_large());
                }
                held.take(&self.in_flight, plain.len().saturating_sub(held.bytes))?;
                plain
            }
        };
        let events = body::split(&body)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, Reason::NotJson, e.to_string()))?;
        if events.len() > self.settings.max_events {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge,
                format!(
                    "{} events in one request; collector.max_events allows {}",
                    events.len(),
                    self.settings.max_events
                ),
            ));
        }
        if let Some(index) = events.iter().position(|e| e.bytes.len() > MAX_EVENT_BYTES) {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge,
                format!("event {index} is larger than Kafka takes ({MAX_EVENT_BYTES} bytes)"),
            ));
        }
        self.produce(&events).await?;
        Ok(events.len())
    }

    /// Produces `events` and waits until Kafka acknowledged every one.
    async fn produce(&self, events: &[body::Event<'_>]) -> Result<(), Refusal> {
        let unavailable = |why: String| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::Unavailable,
                format!("Kafka did not take the events ({why}); retry with the same event_ids"),
            )
        };
        let producer = self.current_producer();
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let key = event.key.as_deref().map(str::as_bytes);
            match producer.queue(key, event.bytes) {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    self.renew_if_ended(&producer, &error);
                    return Err(unavailable(source_text(&error)));
                }
            }
        }
        // librdkafka fails each message after `produce_timeout` by itself; the margin only
        // guards against a delivery report that never comes.
        let bound = self.settings.produce_timeout + Duration::from_secs(1);
        match tokio::time::timeout(bound, futures::future::try_join_all(deliveries)).await {
            Ok(Ok(_)) => {
                self.metrics
                    .produce_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Err(error)) => {
                self.renew_if_ended(&producer, &error);
                Err(unavailable(source_text(&error)))
            }
            Err(_) => Err(unavailable(format!(
                "no acknowledgement within {}",
                humantime::format_duration(self.settings.produce_timeout)
            ))),
        }
    }
}

/// The innermost cause of a Kafka error, which says what the broker or client reported.
fn source_text(error: &KafkaError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    text
}

/// Why a body could not be read whole.
enum BodyRead {
    TooLarge,
    Broken,
}

/// The body's bytes, at most `max` of them.
async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, BodyRead> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyRead::Broken)?;
        if bytes.len() + chunk.len() > max {
            return Err(BodyRead::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
