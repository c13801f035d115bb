//! node-oidc-provider (`tests/interop/provider.mjs`) as a child process, and the clients that get
//! tokens from it the way real clients do: plain HTTP, a cookie jar, and its development login
//! and consent pages filled in like a user would.
//!
//! Every failure names the step that broke and what the provider answered.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use url::Url;

/// Resource indicators (RFC 8707) the provider knows; each audience is the indicator itself.
pub const JWT_RESOURCE: &str = "https://orders.example/jwt";
pub const SHORT_RESOURCE: &str = "https://orders.example/short";
pub const OPAQUE_RESOURCE: &str = "https://orders.example/opaque";
/// The public client of the browser and device grants.
pub const CLI_CLIENT: &str = "orders-cli";
/// The confidential client of the client credentials grant.
pub const SERVICE_CLIENT: (&str, &str) = ("orders-service", "orders-service-secret");
/// The gateway's own client, allowed to introspect.
pub const GATEWAY_CLIENT: &str = "portcullis";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// What a token endpoint issued.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// The provider, stopped when dropped (and when the test process dies: it exits when its stdin
/// closes).
pub struct OidcProvider {
    pub issuer: String,
    /// The gateway's introspection secret, random per provider.
    pub gateway_secret: String,
    child: Child,
    log: PathBuf,
}

impl OidcProvider {
    pub async fn start() -> OidcProvider {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run ./scripts/setup.sh test (npm ci in tests/interop)"
        );
        let gateway_secret = format!("gw-{}", uuid::Uuid::new_v4().simple());
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "oidc-provider-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("INTEROP_GATEWAY_SECRET", &gateway_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("node runs (Node.js 20.19 or newer)");
        // The first line names the issuer; the rest (the provider's notices) is drained, since a
        // closed pipe would kill it.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (first_line, line_read) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = first_line.send(line);
            std::io::copy(&mut stdout, &mut std::io::sink())
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line_read)
            .await
            .expect("the provider prints its issuer within 60 s")
            .unwrap_or_default();
        let issuer = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                panic!(
                    "provider start: expected {{\"issuer\":...}}, got {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        OidcProvider {
            issuer,
            gateway_secret,
            child,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Panic naming the step, the answer, and where the provider's log is.
    fn broke(&self, step: &str, what: impl std::fmt::Display) -> ! {
        panic!(
            "step `{step}` broke: {what}\n(provider log: {})",
            self.log.display()
        )
    }

    /// POST a form; the JSON answer when the status is 200.
    async fn post(
        &self,
        step: &str,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Value {
        let mut request = super::client().post(self.url(path)).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| self.broke(step, format!("{e:?}")));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status != 200 {
            self.broke(step, format!("{path} answered {status}: {body}"));
        }
        serde_json::from_str(&body)
            .unwrap_or_else(|_| self.broke(step, format!("{path} answered non-JSON: {body}")))
    }

    async fn token(
        &self,
        step: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Tokens {
        let v = self.post(step, "/token", basic, form).await;
        let field = |name: &str| v[name].as_str().map(str::to_owned);
        Tokens {
            access_token: field("access_token")
                .unwrap_or_else(|| self.broke(step, format!("no access_token in {v}"))),
            refresh_token: field("refresh_token"),
            id_token: field("id_token"),
        }
    }

    /// The client credentials grant (RFC 6749 §4.4) for `orders-service`.
    pub async fn client_credentials(&self, scope: &str, resource: &str) -> Tokens {
        let step = format!("client credentials grant for {scope} at {resource}");
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("resource", resource),
        ];
        self.token(&step, Some(SERVICE_CLIENT), &form).await
    }

    /// The client credentials grant for `orders-service` with a DPoP proof by `key` (RFC 9449
    /// §5): the token is bound to the key. Also returns the answer's `token_type`.
    pub async fn client_credentials_dpop(
        &self,
        scope: &str,
        resource: &str,
        key: &portcullis::devkeys::DevKey,
    ) -> (Tokens, String) {
        let step = format!("DPoP client credentials grant for {scope} at {resource}");
        let url = self.url("/token");
        // No `ath` at the token endpoint: there is no access token yet.
        let proof = key.dpop_proof("POST", &url, "", &serde_json::json!({ "ath": null }));
        let response = super::client()
            .post(&url)
            .basic_auth(SERVICE_CLIENT.0, Some(SERVICE_CLIENT.1))
            .header("dpop", proof)
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap_or_else(|e| self.broke(&step, format!("{e:?}")));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status != 200 {
            self.broke(&step, format!("/token answered {status}: {body}"));
        }
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| self.broke(&step, format!("non-JSON: {body}")));
        let access_token = v["access_token"]
            .as_str()
            .unwrap_or_else(|| self.broke(&step, format!("no access_token in {v}")))
            .to_owned();
        let tokens = Tokens {
            access_token,
            refresh_token: None,
            id_token: None,
        };
        (
            tokens,
            v["token_type"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// The authorization code grant with PKCE (RFC 7636) for the public client `orders-cli`:
    /// the browser part runs on the provider's login and consent pages as user `login`.
    pub async fn authorization_code(&self, login: &str, scope: &str, resource: &str) -> Tokens {
        let step = format!("authorization code grant for {login}");
        let verifier = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        let challenge = URL_SAFE_NO_PAD.encode(digest.as_ref());
        let state = uuid::Uuid::new_v4().simple().to_string();
        let mut authorize = Url::parse(&self.url("/auth")).unwrap();
        authorize
            .query_pairs_mut()
            .append_pair("client_id", CLI_CLIENT)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("scope", scope)
            .append_pair("resource", resource)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &state);
        let Browsed::Left(callback) = self.browse(&step, authorize.as_str(), login, None).await
        else {
            self.broke(&step, "the pages never redirected back to the client");
        };
        let params: std::collections::HashMap<String, String> =
            callback.query_pairs().into_owned().collect();
        if params.get("state") != Some(&state) {
            self.broke(&step, format!("state not returned intact: {callback}"));
        }
        // RFC 9207: the authorization response names its issuer.
        if params.get("iss") != Some(&self.issuer) {
            self.broke(&step, format!("iss missing or wrong: {callback}"));
        }
        let code = params
            .get("code")
            .unwrap_or_else(|| self.broke(&step, format!("no code: {callback}")));
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
            ("client_id", CLI_CLIENT),
        ];
        self.token(&format!("{step}: code exchange"), None, &form)
            .await
    }

    /// The device authorization grant (RFC 8628) for `orders-cli`: the user code is entered and
    /// approved on the provider's pages as user `login`, then the device asks for its token.
    pub async fn device(&self, login: &str, scope: &str, resource: &str) -> Tokens {
        let step = format!("device authorization grant for {login}");
        let form = [
            ("client_id", CLI_CLIENT),
            ("scope", scope),
            ("resource", resource),
        ];
        let auth = self.post(&step, "/device/auth", None, &form).await;
        let field = |name: &str| {
            auth[name]
                .as_str()
                .unwrap_or_else(|| self.broke(&step, format!("no {name} in {auth}")))
                .to_owned()
        };
        let (device_code, user_code, verification_uri) = (
            field("device_code"),
            field("user_code"),
            field("verification_uri"),
        );
        match self
            .browse(&step, &verification_uri, login, Some(&user_code))
            .await
        {
            Browsed::Page(page) if page.contains("Sign-in Success") => {}
            other => self.broke(&step, format!("approval did not succeed: {other:?}")),
        }
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.as_str()),
            ("client_id", CLI_CLIENT),
        ];
        self.token(&format!("{step}: device token request"), None, &form)
            .await
    }

    /// The refresh token grant for `orders-cli`.
    pub async fn refresh(&self, refresh_token: &str) -> Tokens {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLI_CLIENT),
        ];
        self.token("refresh token grant", None, &form).await
    }

    /// Revoke a token of `orders-service` (RFC 7009).
    pub async fn revoke(&self, token: &str) {
        let form = [("token", token), ("token_type_hint", "access_token")];
        let step = "revocation at the provider";
        let response = super::client()
            .post(self.url("/token/revocation"))
            .basic_auth(SERVICE_CLIENT.0, Some(SERVICE_CLIENT.1))
            .form(&form)
            .send()
            .await
            .unwrap_or_else(|e| self.broke(step, format!("{e:?}")));
        if response.status() != 200 {
            self.broke(step, format!("answered {}", response.status()));
        }
    }

    /// Ask the introspection endpoint directly, as the gateway's client.
    pub async fn introspect(&self, token: &str) -> Value {
        let basic = Some((GATEWAY_CLIENT, self.gateway_secret.as_str()));
        let form = [("token", token)];
        self.post(
            "introspection at the provider",
            "/token/introspection",
            basic,
            &form,
        )
        .await
    }

    /// Rotate the provider's ES256 signing key: the new key signs from now on, the old one stays
    /// published. The kids, newest first.
    pub async fn rotate_signing_key(&self) -> Vec<String> {
        let v = self
            .post("signing key rotation", "/interop/rotate", None, &[])
            .await;
        v["kids"]
            .as_array()
            .unwrap_or_else(|| self.broke("signing key rotation", format!("answered {v}")))
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect()
    }

    /// Follow the provider's pages from `start` like a browser with a cookie jar: redirects are
    /// followed while they stay on the provider, and each page's form is submitted, filled in
    /// with `login` (any password is accepted) and `user_code` where it asks for them.
    async fn browse(
        &self,
        step: &str,
        start: &str,
        login: &str,
        user_code: Option<&str>,
    ) -> Browsed {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut url = Url::parse(start).unwrap();
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..20 {
            let request = match form.take() {
                Some(fields) => browser.post(url.clone()).form(&fields),
                None => browser.get(url.clone()),
            };
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| self.broke(step, format!("{url}: {e:?}")));
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or_else(|| {
                        self.broke(step, format!("{url}: {status} without Location"))
                    });
                url = url.join(location).unwrap();
                if !url.as_str().starts_with(&self.issuer) {
                    return Browsed::Left(url);
                }
                continue;
            }
            let page = response.text().await.unwrap_or_default();
            if status != 200 {
                self.broke(step, format!("{url} answered {status}: {page}"));
            }
            let Some(found) = Form::first_in(&page) else {
                return Browsed::Page(page);
            };
            let mut fields = found.fields;
            for (name, value) in &mut fields {
                match name.as_str() {
                    "login" => *value = login.to_owned(),
                    "password" => *value = "any password".to_owned(),
                    "user_code" if value.is_empty() => {
                        *value = user_code.unwrap_or_default().to_owned()
                    }
                    _ => {}
                }
            }
            url = url.join(&found.action).unwrap();
            form = Some(fields);
        }
        self.broke(step, "more than 20 pages without an end")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[derive(Debug)]
enum Browsed {
    /// Redirected off the provider (to the client's redirect URI).
    Left(Url),
    /// A page without a form: the end of the flow.
    Page(String),
}

/// The first `<form>` of a page: its action and its inputs' names and values.
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

impl Form {
    fn first_in(page: &str) -> Option<Form> {
        let start = page.find("<form")?;
        let end = page[start..]
            .find("</form>")
            .map_or(page.len(), |e| start + e);
        let html = &page[start..end];
        let tag_end = html.find('>')?;
        let action = attribute(&html[..tag_end], "action")?;
        let fields = html
            .match_indices("<input")
            .filter_map(|(at, _)| {
                let tag = &html[at..at + html[at..].find('>')?];
                Some((
                    attribute(tag, "name")?,
                    attribute(tag, "value").unwrap_or_default(),
                ))
            })
            .collect();
        Some(Form { action, fields })
    }
}

/// The value of `name="..."` in one HTML tag, with the entities the provider escapes decoded.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    let raw = &tag[start..start + len];
    Some(
        raw.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The `kid` in a JWT's header.
pub fn kid(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(header).expect("base64url header");
    let v: Value = serde_json::from_slice(&bytes).expect("JSON header");
    v["kid"].as_str().expect("a kid").to_owned()
}
