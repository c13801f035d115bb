//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the documents the proxy listener serves
//! at `/.well-known/oauth-protected-resource` (and its path-suffixed forms, §3.1), built once
//! from the configuration. A client that gets a 401 finds the document's URL in the
//! challenge's `resource_metadata` attribute (§5.1), and in it the authorization servers to get
//! a token from.

use std::collections::HashMap;

use bytes::Bytes;

/// The well-known path every document lives under (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The URL of the document describing `resource` (RFC 9728 §3.1).
pub fn document_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", ""));
    let authority = rest.split('/').next().unwrap_or("");
    let path = rest
        .find('/')
        .map_or("", |i| &rest[i..])
        .trim_end_matches('/');
    format!("{scheme}://{authority}{WELL_KNOWN}{path}")
}

/// One resource's metadata, before it is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `resource`: the resource identifier (an `https` URL without query or fragment).
    pub resource: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
    /// `dpop_signing_alg_values_supported`: the proof algorithms, when a route of the resource
    /// takes DPoP-bound tokens (RFC 9728 §2, RFC 9449).
    pub dpop_algorithms: Vec<String>,
    /// `dpop_bound_access_tokens_required`: every route of the resource that checks tokens
    /// takes DPoP-bound tokens only.
    pub dpop_required: bool,
}

impl Resource {
    /// Where the document is served: the well-known path, then the resource's own path when
    /// it has one (§3.1: `https://h/api` is described at `/.well-known/oauth-protected-resource/api`).
    pub fn path(&self) -> String {
        let after_scheme = self.resource.split_once("://").map_or("", |(_, r)| r);
        let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        match path.trim_end_matches('/') {
            "" => WELL_KNOWN.to_owned(),
            p => format!("{WELL_KNOWN}{p}"),
        }
    }

    /// The document's absolute URL, for the challenge (§5.1): on the resource's own origin.
    pub fn url(&self) -> String {
        document_url(&self.resource)
    }

    fn json(&self) -> Bytes {
        let mut doc = serde_json::json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": self.scopes_supported,
            // RFC 6750 §2.1 only: the query form is never accepted, the form body never read.
            "bearer_methods_supported": ["header"],
        });
        if let Some(name) = &self.resource_name {
            doc["resource_name"] = name.clone().into();
        }
        if let Some(url) = &self.resource_documentation {
            doc["resource_documentation"] = url.clone().into();
        }
        if !self.dpop_algorithms.is_empty() {
            doc["dpop_signing_alg_values_supported"] = self.dpop_algorithms.clone().into();
            doc["dpop_bound_access_tokens_required"] = self.dpop_required.into();
        }
        Bytes::from(doc.to_string())
    }
}

/// Every configured resource's document, by the path it is served at.
#[derive(Debug, Clone, Default)]
pub struct ResourceMetadata {
    documents: HashMap<String, Bytes>,
}

impl ResourceMetadata {
    pub fn new(resources: &[Resource]) -> ResourceMetadata {
        ResourceMetadata {
            documents: resources.iter().map(|r| (r.path(), r.json())).collect(),
        }
    }

    /// The document served at `path`, if any. Other paths cost one prefix comparison.
    pub fn document(&self, path: &str) -> Option<&Bytes> {
        if !path.starts_with(WELL_KNOWN) {
            return None;
        }
        self.documents.get(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: &str) -> Resource {
        Resource {
            resource: id.into(),
            authorization_servers: vec!["https://id.example".into()],
            scopes_supported: vec!["read".into()],
            resource_name: None,
            resource_documentation: None,
            dpop_algorithms: Vec::new(),
            dpop_required: false,
        }
    }

    #[test]
    fn documents_live_at_the_well_known_path_with_the_resource_path_after_it() {
        let root = resource("https://api.example");
        let slash = resource("https://api.example/");
        let orders = resource("https://api.example:8443/v1/orders");
        assert_eq!(root.path(), WELL_KNOWN);
        assert_eq!(slash.path(), WELL_KNOWN);
        assert_eq!(
            orders.path(),
            "/.well-known/oauth-protected-resource/v1/orders"
        );
        assert_eq!(
            orders.url(),
            "https://api.example:8443/.well-known/oauth-protected-resource/v1/orders"
        );
        let m = ResourceMetadata::new(&[root, orders]);
        let doc: serde_json::Value =
            serde_json::from_slice(m.document(WELL_KNOWN).unwrap()).unwrap();
        assert_eq!(doc["resource"], "https://api.example");
        assert_eq!(
            doc["bearer_methods_supported"],
            serde_json::json!(["header"])
        );
        assert!(m
            .document("/.well-known/oauth-protected-resource/v1")
            .is_none());
        assert!(m.document("/v1/orders").is_none());
    }
}
