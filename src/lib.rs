//! Portcullis: an OAuth 2.0 resource-server gateway.
//!
//! The library holds the transport-neutral auth core ([`auth`]), the request target and route
//! check every adapter shares ([`gate`]), configuration ([`config`]),
//! routing ([`routing`]), the gateway's own answers ([`response`]) and metrics ([`metrics`]);
//! with the default `proxy` feature it adds the hyper data plane ([`dataplane`]), the decision
//! endpoint ([`decision`]), the admin listener ([`admin`]) and their assembly ([`app`]); with
//! the default `tower` feature, the same auth core as tower middleware ([`tower_layer`]).

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod devkeys;
pub mod gate;
pub mod live;
pub mod metrics;
pub mod response;
pub mod routing;
pub mod spans;
#[cfg(test)]
mod testing;

#[cfg(feature = "proxy")]
pub mod admin;
#[cfg(feature = "proxy")]
pub mod app;
#[cfg(feature = "proxy")]
pub mod dataplane;
#[cfg(feature = "proxy")]
pub mod decision;
#[cfg(feature = "proxy")]
pub mod dev;
#[cfg(feature = "proxy")]
pub mod logging;
#[cfg(feature = "proxy")]
pub mod otlp;
#[cfg(feature = "tower")]
pub mod tower_layer;
