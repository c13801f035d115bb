//! `[tracing]`: the gateway's spans, exported over OTLP/HTTP in protobuf (OpenTelemetry
//! Protocol §"OTLP/HTTP").
//!
//! One server span per sampled proxied request, ended when its response body ends (or when the
//! client goes away), with a client span for each identity-provider call the request waited on
//! ([`crate::spans`]). The span's ids are the ones the upstream sees in `traceparent`: its
//! parent is the client's `parent-id`, and the upstream's span is its child.
//!
//! A span is built whole at the end of its request and handed to the SDK's batch processor,
//! which queues it (at most 2048; more are dropped, never waited for) and exports batches from
//! a thread of its own. The export goes through a reqwest client on a one-thread runtime of its
//! own, so no worker and no background task of the gateway ever waits for a collector.
//!
//! Attributes follow OpenTelemetry's HTTP semantic conventions where they apply
//! (`http.request.method`, `http.response.status_code`, `client.address`, `error.type`), and
//! never hold a path, a query, a token or a subject.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use prometheus::IntCounterVec;

use crate::config::TracingConfig;
use crate::dataplane::trace::Trace;
use crate::spans::Call;

/// The most spans waiting for export; a fuller queue drops new spans.
const MAX_QUEUE: usize = 2048;
/// The most spans in one export request.
const MAX_BATCH: usize = 512;
/// How long spans wait to fill a batch.
const BATCH_DELAY: Duration = Duration::from_secs(2);
/// The most response body read from the collector.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The variables the exporter reads collector headers from (OTLP exporter configuration).
const HEADER_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
];

/// The positions (from 0) of the members of a `key=value,key2=value2` headers variable that the
/// exporter drops without a word: no `=`, a name that is not a header name, a value with bad
/// percent-encoding or that is not a header value once decoded (red team).
fn bad_header_members(text: &str) -> Vec<usize> {
    let decoded = |value: &str| -> Option<Vec<u8>> {
        let bytes = value.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        Some(out)
    };
    let good = |member: &str| {
        let Some((name, value)) = member.split_once('=') else {
            return false;
        };
        let value = decoded(value.trim());
        http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
            && value.is_some_and(|v| http::HeaderValue::from_bytes(&v).is_ok())
    };
    let members = text.split(',').enumerate();
    members
        .filter(|(_, m)| !m.trim().is_empty() && !good(m))
        .map(|(i, _)| i)
        .collect()
}

/// What the access line knows of a request, for its span.
#[derive(Debug)]
pub struct RequestSpan<'a> {
    pub trace: Trace,
    pub method: &'static str,
    /// The route's name (`-` when none matched).
    pub route: &'a str,
    pub status: u16,
    pub outcome: &'static str,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub request_id: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub upstream: Option<SocketAddr>,
    pub client_id: Option<&'a str>,
}

/// The exporter: sampling for traces started here, and the batch processor.
#[derive(Debug)]
pub struct Exporter {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    sampler: Sampler,
    /// `follow_client_sampling`.
    follow_client: bool,
}

/// TraceIdRatioBased as OpenTelemetry's sampling specification (consistent probability
/// sampling) has it: the rejection threshold is `(1 - ratio) * 2^56`, and a trace is sampled
/// when the trace id's rightmost 56 bits (the random part of a W3C Level 2 trace id) are at
/// least that.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sampler {
    threshold: u64,
    never: bool,
}

impl Sampler {
    const BITS: u32 = 56;

    fn new(ratio: f64) -> Sampler {
        Sampler {
            threshold: ((1.0 - ratio) * 2f64.powi(Self::BITS as i32)) as u64,
            never: ratio <= 0.0,
        }
    }

    fn sample(self, trace_id: u128) -> bool {
        let randomness = (trace_id as u64) & ((1 << Self::BITS) - 1);
        !self.never && randomness >= self.threshold
    }
}

impl Exporter {
    /// Start the export thread. Fails only on an endpoint the exporter cannot use (config
    /// validation has parsed it already).
    pub fn start(
        config: &TracingConfig,
        exports: IntCounterVec,
    ) -> Result<Exporter, opentelemetry_otlp::ExporterBuildError> {
        for variable in HEADER_VARIABLES {
            if let Ok(text) = std::env::var(variable) {
                for member in bad_header_members(&text) {
                    tracing::warn!(
                        variable,
                        member,
                        "trace export: this member is not a header (name=value, the value percent-encoded) and is not sent"
                    );
                }
            }
        }
        let transport = Transport::new(config.export_timeout, exports);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.as_str())
            .with_timeout(config.export_timeout)
            .with_http_client(transport)
            .build()?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(BATCH_DELAY)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        processor.set_resource(&resource);
        let scope = InstrumentationScope::builder("portcullis")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Exporter {
            processor,
            scope,
            sampler: Sampler::new(config.sample_ratio),
            follow_client: config.follow_client_sampling,
        })
    }

    /// Whether a request's trace is sampled, given the client's flag (`None`: the trace starts
    /// here): the client's flag when followed, else `sample_ratio` on the trace id, so that
    /// every hop deciding by ratio decides alike for one trace.
    pub fn sample(&self, client: Option<bool>, trace_id: u128) -> bool {
        match client {
            Some(flag) if self.follow_client => flag,
            _ => self.sampler.sample(trace_id),
        }
    }

    /// Queue a request's span and its calls' spans. Never blocks: a full queue drops them.
    pub fn record(&self, request: &RequestSpan<'_>, calls: Vec<Call>) {
        let trace_id = TraceId::from(request.trace.trace_id);
        let own = SpanId::from(request.trace.span_id);
        let context = |span| {
            SpanContext::new(
                trace_id,
                span,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        // A method the gateway does not know is `_OTHER`, and the span `HTTP route` (HTTP
        // semantic conventions).
        let (method, named) = match request.method {
            "OTHER" => ("_OTHER", "HTTP"),
            known => (known, known),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.response.status_code", i64::from(request.status)),
            KeyValue::new("portcullis.route", request.route.to_owned()),
            KeyValue::new("portcullis.auth.outcome", request.outcome),
        ];
        let optional = [
            (
                "portcullis.request_id",
                request.request_id.map(str::to_owned),
            ),
            ("client.address", request.client.map(|a| a.to_string())),
            (
                "portcullis.upstream",
                request.upstream.map(|a| a.to_string()),
            ),
            ("portcullis.client_id", request.client_id.map(str::to_owned)),
        ];
        attributes.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some(KeyValue::new(key, value?))),
        );
        // A server span is an error for a 5xx only (HTTP semantic conventions: a 4xx is the
        // client's mistake).
        let status = match request.status {
            500.. => {
                attributes.push(KeyValue::new("error.type", request.status.to_string()));
                Status::error("")
            }
            _ => Status::Unset,
        };
        self.processor.on_end(SpanData {
            span_context: context(own),
            parent_span_id: request.trace.parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: request.trace.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("{named} {}", request.route)),
            start_time: request.started,
            end_time: request.ended,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
        for call in calls {
            let failed = call.result == "failed";
            self.processor.on_end(SpanData {
                span_context: context(SpanId::from(call.span_id)),
                parent_span_id: own,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Borrowed(call.kind.name()),
                start_time: call.started,
                end_time: call.ended,
                attributes: vec![
                    KeyValue::new("portcullis.issuer", call.issuer),
                    KeyValue::new("portcullis.result", call.result),
                ],
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: match failed {
                    true => Status::error(call.result),
                    false => Status::Unset,
                },
                instrumentation_scope: self.scope.clone(),
            });
        }
    }

    /// Export what is queued now, and wait for it (benchmarks).
    pub fn flush(&self) {
        let _ = self.processor.force_flush();
    }

    /// Export what is queued, waiting up to `timeout`: at shutdown, after the workers ended.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.processor.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "trace export: queued spans not exported at shutdown");
        }
    }
}

/// The export's HTTP client: our reqwest (rustls), no redirects, bounded in time, on a runtime
/// of its own (the SDK's export thread runs no tokio runtime).
#[derive(Debug)]
struct Transport {
    client: reqwest::Client,
    runtime: ExportRuntime,
    exports: IntCounterVec,
}

impl Transport {
    fn new(timeout: Duration, exports: IntCounterVec) -> Transport {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the TLS backend is compiled in");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-otlp")
            .enable_all()
            .build()
            .expect("an export thread");
        Transport {
            client,
            runtime: ExportRuntime(Some(runtime)),
            exports,
        }
    }

    async fn send(
        client: reqwest::Client,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, HttpError> {
        // Every error without its URL (see `send_bytes`).
        let request = reqwest::Request::try_from(request).map_err(reqwest::Error::without_url)?;
        let mut response = client
            .execute(request)
            .await
            .map_err(reqwest::Error::without_url)?;
        let mut answer = Response::builder().status(response.status());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(reqwest::Error::without_url)?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err("the collector's answer is too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        if let Some(headers) = answer.headers_mut() {
            *headers = std::mem::take(response.headers_mut());
        }
        Ok(answer.body(Bytes::from(body))?)
    }
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = self.runtime.0.as_ref().expect("set until dropped");
        let result = runtime
            .spawn(Self::send(self.client.clone(), request))
            .await
            .unwrap_or_else(|e| Err(e.into()));
        let label = match &result {
            Ok(r) if r.status().is_success() => "ok",
            Ok(_) => "bad_status",
            Err(_) => "unreachable",
        };
        self.exports.with_label_values(&[label]).inc();
        match &result {
            // The URL is left out: the query of a collector's URL can hold a key (red team).
            Err(e) => tracing::warn!(
                error = %export_error(e.as_ref()),
                "trace export: the collector cannot be reached"
            ),
            Ok(r) if !r.status().is_success() => tracing::warn!(
                status = r.status().as_u16(),
                "trace export: the collector refused a batch"
            ),
            Ok(_) => {}
        }
        result
    }
}

/// An export failure with its causes, and no URL.
fn export_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    crate::auth::fetch::error_chain(e)
}

/// The export runtime, shut down without waiting (dropping a runtime inside another one's
/// context would panic).
#[derive(Debug)]
struct ExportRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bad_header_members, Sampler};

    #[test]
    fn header_members_the_exporter_would_drop_are_found() {
        assert!(bad_header_members("api-key=abc,x-team=a%20b").is_empty());
        assert_eq!(
            bad_header_members("a=%ZZ,b=1,novalue,c d=1,e=x%0Ay"),
            [0, 2, 3, 4]
        );
        assert!(bad_header_members("").is_empty());
    }

    #[test]
    fn the_ratio_is_the_share_of_random_values_sampled() {
        let never = Sampler::new(0.0);
        assert!(!never.sample(0) && !never.sample(u128::MAX));
        let always = Sampler::new(1.0);
        assert!(always.sample(0) && always.sample(u128::MAX));
        // The rightmost 56 bits decide, at or above the threshold; the rest of the id does not.
        let half = Sampler::new(0.5);
        assert!(half.sample(1 << 55) && half.sample(u128::MAX) && half.sample((1 << 56) - 1));
        assert!(!half.sample(0) && !half.sample((1 << 55) - 1) && !half.sample(u128::MAX << 56));
        let tenth = Sampler::new(0.1);
        let sampled = (0..10_000u128)
            .filter(|i| tenth.sample(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .count();
        assert!((900..1100).contains(&sampled), "{sampled}");
    }
}
