//! Portcullis: an OAuth 2.0 resource-server gateway.
//!
//! The library holds the transport-neutral auth core ([`auth`]), the request target and route
//! check every adapter shares ([`gate`]), configuration ([`config`]),
//! routing ([`routing`]) and metrics ([`metrics`]); with the default `proxy` feature it adds the
//! pingora data plane ([`proxy`], [`admin`]) and its assembly ([`app`]); with the default `tower`
//! feature, the same auth core as tower middleware ([`tower_layer`]).

pub mod auth;
pub mod config;
pub mod devkeys;
pub mod gate;
pub mod metrics;
pub mod routing;
#[cfg(test)]
mod testing;

#[cfg(feature = "proxy")]
pub mod admin;
#[cfg(feature = "proxy")]
pub mod app;
#[cfg(feature = "proxy")]
pub mod decision;
#[cfg(feature = "proxy")]
pub mod dev;
#[cfg(feature = "proxy")]
pub mod logging;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "tower")]
pub mod tower_layer;
