//! An OTLP/HTTP trace receiver on 127.0.0.1:0 (OpenTelemetry Protocol, "OTLP/HTTP"): decodes
//! every `POST /v1/traces` protobuf body as `ExportTraceServiceRequest` and keeps its spans,
//! each with its resource's `service.name`; answers 200 with an empty response message, or the
//! status set with [`Collector::set_status`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

use super::{full, Body};

/// One span as received, with the resource it came with.
#[derive(Debug, Clone)]
pub struct Received {
    pub service_name: Option<String>,
    pub scope: String,
    pub span: Span,
}

impl Received {
    /// A string or integer attribute, as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// Every attribute value, as text.
    pub fn values(&self) -> Vec<String> {
        let keys = self.span.attributes.iter().map(|kv| kv.key.as_str());
        keys.filter_map(|k| self.attribute(k)).collect()
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<Received>>,
    requests: AtomicUsize,
    /// 0: answer 200.
    status: AtomicU16,
    content_types: Mutex<Vec<String>>,
}

pub struct Collector {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let server = state.clone();
        super::serve_http(listener, move |req| receive(server.clone(), req));
        Collector { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.state.spans.lock().unwrap().clone()
    }

    /// The spans of the trace with this id (16 bytes).
    pub fn trace(&self, trace_id: &[u8]) -> Vec<Received> {
        let spans = self.spans().into_iter();
        spans.filter(|r| r.span.trace_id == trace_id).collect()
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn content_types(&self) -> Vec<String> {
        self.state.content_types.lock().unwrap().clone()
    }

    /// Answer every export with `status` (0: 200 again).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
}

async fn receive(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let reply = |status: u16, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(full(body))
            .unwrap()
    };
    if req.uri().path() != "/v1/traces" || req.method() != "POST" {
        return Ok(reply(404, Vec::new()));
    }
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    state
        .content_types
        .lock()
        .unwrap()
        .push(content_type.unwrap_or_default());
    let status = state.status.load(Ordering::SeqCst);
    let body = req.into_body().collect().await?.to_bytes();
    if status != 0 {
        return Ok(reply(status, Vec::new()));
    }
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return Ok(reply(400, Vec::new()));
    };
    let mut spans = state.spans.lock().unwrap();
    for resource in export.resource_spans {
        let service_name = resource
            .resource
            .as_ref()
            .and_then(|r| attribute(&r.attributes, "service.name"));
        for scope in resource.scope_spans {
            let name = scope
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in scope.spans {
                spans.push(Received {
                    service_name: service_name.clone(),
                    scope: name.clone(),
                    span,
                });
            }
        }
    }
    Ok(reply(
        200,
        ExportTraceServiceResponse::default().encode_to_vec(),
    ))
}
