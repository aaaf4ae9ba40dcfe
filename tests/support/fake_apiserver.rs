//! A small in-process Kubernetes API server for controller tests: list + watch with real
//! resourceVersions and BOOKMARKs, label selectors, `status` merge patches, create/replace
//! with optimistic concurrency (Leases), Events, an outage switch that fails every call
//! and cuts every watch, and compaction: watches from an older resourceVersion get an ERROR
//! event with code 410 (Gone), as from the real API server, and must relist.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch, Mutex};

type Body = BoxBody<Bytes, Infallible>;

/// `(resource plural, namespace, name)`.
type Key = (String, String, String);

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Status patches per `(resource, namespace, name)`.
    status_patches: BTreeMap<Key, usize>,
    events: Vec<Value>,
    uid: u64,
    /// Watches from a resourceVersion below this one are answered 410 Gone.
    compacted: u64,
    /// How many watches were answered 410 Gone.
    gone: usize,
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    down: watch::Sender<bool>,
    /// Bumped by `compact`; every open watch ends when it changes.
    epoch: watch::Sender<u64>,
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "wsroutes" => ("wsgate.io/v1alpha1", "WsRoute"),
        "services" => ("v1", "Service"),
        "secrets" => ("v1", "Secret"),
        "endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        "leases" => ("coordination.k8s.io/v1", "Lease"),
        "events" => ("events.k8s.io/v1", "Event"),
        _ => ("v1", "Unknown"),
    }
}

fn resource_of(kind: &str) -> &'static str {
    match kind {
        "WsRoute" => "wsroutes",
        "Service" => "services",
        "Secret" => "secrets",
        "EndpointSlice" => "endpointslices",
        "Lease" => "leases",
        "Event" => "events",
        other => panic!("the fake API server does not serve {other}"),
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (changes, _) = broadcast::channel(1024);
        let server = FakeApiServer {
            addr,
            state: Arc::default(),
            changes,
            down: watch::channel(false).0,
            epoch: watch::channel(0).0,
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                // Down looks like a dead API server: connections are cut, not answered.
                if *s.down.borrow() {
                    drop(tcp);
                    continue;
                }
                let s = s.clone();
                let mut down = s.down.subscribe();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    let gone = async move {
                        let _ = down.wait_for(|d| *d).await;
                    };
                    tokio::select! {
                        _ = conn => {}
                        _ = gone => {}
                    }
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object (given as typed JSON with apiVersion/kind/metadata),
    /// as `kubectl apply` would: bumps resourceVersion, keeps uid, creationTimestamp and
    /// status, bumps generation when the spec changed.
    pub async fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let resource = resource_of(&kind).to_string();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let mut st = self.state.lock().await;
        let key = (resource.clone(), ns, name);
        let (event, generation) = match st.objects.get(&key) {
            Some(old) => {
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] =
                    old["metadata"]["creationTimestamp"].clone();
                if object.get("status").is_none() {
                    if let Some(status) = old.get("status") {
                        object["status"] = status.clone();
                    }
                }
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let spec_changed = old.get("spec") != object.get("spec")
                    || old.get("endpoints") != object.get("endpoints");
                ("MODIFIED", if spec_changed { g + 1 } else { g })
            }
            None => {
                st.uid += 1;
                object["metadata"]["uid"] = json!(format!("uid-{}", st.uid));
                if object["metadata"].get("creationTimestamp").is_none() {
                    object["metadata"]["creationTimestamp"] =
                        json!(format!("2024-01-01T00:00:{:02}Z", st.uid % 60));
                }
                ("ADDED", 1)
            }
        };
        object["metadata"]["generation"] = json!(generation);
        self.commit(&mut st, key, event, object);
    }

    pub async fn delete(&self, kind: &str, ns: &str, name: &str) {
        let mut st = self.state.lock().await;
        let key = (
            resource_of(kind).to_string(),
            ns.to_string(),
            name.to_string(),
        );
        if let Some(mut object) = st.objects.remove(&key) {
            st.rv += 1;
            object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let change = Change {
                rv: st.rv,
                resource: key.0,
                kind: "DELETED",
                object,
            };
            st.log.push(change.clone());
            let _ = self.changes.send(change);
        }
    }

    pub async fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (
            resource_of(kind).to_string(),
            ns.to_string(),
            name.to_string(),
        );
        self.state.lock().await.objects.get(&key).cloned()
    }

    pub async fn status_patches(&self, kind: &str, ns: &str, name: &str) -> usize {
        let key = (
            resource_of(kind).to_string(),
            ns.to_string(),
            name.to_string(),
        );
        self.state
            .lock()
            .await
            .status_patches
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    pub async fn events(&self) -> Vec<Value> {
        self.state.lock().await.events.clone()
    }

    /// Forgets the change log, as etcd compaction and a watch-cache restart do: every open
    /// watch ends, and a watch resumed from any resourceVersion seen so far gets an ERROR
    /// event with code 410, so the client must list again.
    pub async fn compact(&self) {
        let mut st = self.state.lock().await;
        st.log.clear();
        // A fresh resourceVersion that lists report and watches may resume from.
        st.rv += 1;
        st.compacted = st.rv;
        self.epoch.send_modify(|e| *e += 1);
    }

    /// How many watches were answered 410 Gone.
    pub async fn gone_responses(&self) -> usize {
        self.state.lock().await.gone
    }

    /// While down, connections are cut and refused, as when the API server dies.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    fn commit(&self, st: &mut State, key: Key, event: &'static str, mut object: Value) {
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(key.clone(), object.clone());
        let change = Change {
            rv: st.rv,
            resource: key.0,
            kind: event,
            object,
        };
        st.log.push(change.clone());
        let _ = self.changes.send(change);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if *self.down.borrow() {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the fake API server is down",
            );
        }
        let path: Vec<String> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let query: BTreeMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        // /api/v1/... or /apis/{group}/{version}/...
        let rest = match path.first().map(String::as_str) {
            Some("api") => &path[2.min(path.len())..],
            Some("apis") => &path[3.min(path.len())..],
            _ => return status(StatusCode::NOT_FOUND, "NotFound", "unknown path"),
        };
        let (ns, rest) = match rest {
            [n, ns, rest @ ..] if n == "namespaces" && !rest.is_empty() => (Some(ns.clone()), rest),
            rest => (None, rest),
        };
        let method = req.method().clone();
        match (method, rest) {
            (Method::GET, [resource])
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                self.watch(resource, ns, &query).await
            }
            (Method::GET, [resource]) => self.list(resource, ns, &query).await,
            (Method::GET, [resource, name]) => {
                let key = (resource.clone(), ns.unwrap_or_default(), name.clone());
                match self.state.lock().await.objects.get(&key) {
                    Some(o) => json_response(StatusCode::OK, o),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{resource} {name} not found"),
                    ),
                }
            }
            (Method::POST, [resource]) => {
                let body = read_json(req).await;
                self.create(resource, ns.unwrap_or_default(), body).await
            }
            (Method::PUT, [resource, name]) => {
                let body = read_json(req).await;
                self.replace(resource, ns.unwrap_or_default(), name, body)
                    .await
            }
            (Method::PATCH, [resource, name, sub]) if sub == "status" => {
                let body = read_json(req).await;
                self.patch_status(resource, ns.unwrap_or_default(), name, body)
                    .await
            }
            (Method::PATCH, [resource, _name]) if resource == "events" => {
                // Event series updates.
                let body = read_json(req).await;
                self.state.lock().await.events.push(body.clone());
                json_response(StatusCode::OK, &body)
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not served by the fake",
            ),
        }
    }

    async fn list(
        &self,
        resource: &str,
        ns: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let st = self.state.lock().await;
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((r, n, _), o)| {
                r == resource && ns.as_ref().is_none_or(|ns| ns == n) && selects(&selector, o)
            })
            .map(|(_, o)| o.clone())
            .collect();
        let (api_version, kind) = kind_of(resource);
        json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        )
    }

    async fn watch(
        &self,
        resource: &str,
        ns: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
        let (backlog, current_rv, mut live, mut epoch) = {
            let mut st = self.state.lock().await;
            // `0` means "from any point" and is never too old.
            if since != 0 && since < st.compacted {
                st.gone += 1;
                let message = format!("too old resource version: {since} ({})", st.compacted);
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "message": message,
                    "reason": "Expired", "code": 410}});
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!("{gone}\n"))).boxed())
                    .expect("response");
            }
            let backlog: Vec<Change> = st.log.iter().filter(|c| c.rv > since).cloned().collect();
            // Subscribed under the lock, so a `compact` after this point ends this watch.
            (
                backlog,
                st.rv,
                self.changes.subscribe(),
                self.epoch.subscribe(),
            )
        };
        let resource = resource.to_string();
        let mut down = self.down.subscribe();
        let (api_version, kind) = kind_of(&resource);
        tokio::spawn(async move {
            let matches = |c: &Change| {
                c.resource == resource
                    && ns
                        .as_deref()
                        .is_none_or(|ns| c.object["metadata"]["namespace"] == ns)
                    && selects(&selector, &c.object)
            };
            let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
            for c in backlog.into_iter().filter(|c| matches(c)) {
                if tx
                    .send(line(json!({"type": c.kind, "object": c.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if bookmarks {
                let bookmark = json!({"type": "BOOKMARK", "object": {
                    "apiVersion": api_version, "kind": kind,
                    "metadata": {"resourceVersion": current_rv.to_string()}}});
                if tx.send(line(bookmark)).await.is_err() {
                    return;
                }
            }
            let gone = async move {
                let _ = down.wait_for(|d| *d).await;
            };
            tokio::pin!(gone);
            loop {
                tokio::select! {
                    _ = &mut gone => return,
                    _ = epoch.changed() => return,
                    c = live.recv() => match c {
                        Ok(c) if c.rv > current_rv && matches(&c) => {
                            if tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .expect("response")
    }

    async fn create(&self, resource: &str, ns: String, mut body: Value) -> Response<Body> {
        let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut st = self.state.lock().await;
        if resource == "events" {
            st.events.push(body.clone());
            return json_response(StatusCode::CREATED, &body);
        }
        let key = (resource.to_string(), ns, name.clone());
        if st.objects.contains_key(&key) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{resource} {name} exists"),
            );
        }
        st.uid += 1;
        body["metadata"]["uid"] = json!(format!("uid-{}", st.uid));
        self.commit(&mut st, key.clone(), "ADDED", body);
        json_response(StatusCode::CREATED, &st.objects[&key])
    }

    async fn replace(&self, resource: &str, ns: String, name: &str, body: Value) -> Response<Body> {
        let mut st = self.state.lock().await;
        let key = (resource.to_string(), ns, name.to_string());
        let Some(old) = st.objects.get(&key) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{resource} {name} not found"),
            );
        };
        let want = body["metadata"]["resourceVersion"].as_str();
        if want.is_some() && want != old["metadata"]["resourceVersion"].as_str() {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified",
            );
        }
        self.commit(&mut st, key.clone(), "MODIFIED", body);
        json_response(StatusCode::OK, &st.objects[&key])
    }

    async fn patch_status(
        &self,
        resource: &str,
        ns: String,
        name: &str,
        patch: Value,
    ) -> Response<Body> {
        let mut st = self.state.lock().await;
        let key = (resource.to_string(), ns, name.to_string());
        let Some(mut object) = st.objects.get(&key).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{resource} {name} not found"),
            );
        };
        let mut status_value = object.get("status").cloned().unwrap_or(json!({}));
        merge(&mut status_value, &patch["status"]);
        object["status"] = status_value;
        *st.status_patches.entry(key.clone()).or_default() += 1;
        self.commit(&mut st, key.clone(), "MODIFIED", object);
        json_response(StatusCode::OK, &st.objects[&key])
    }
}

/// `key`, `key=value`, comma-separated: all the selectors the controller sends.
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k.trim()] == v.trim(),
            None => labels.get(term.trim()).is_some(),
        })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn read_json(req: Request<Incoming>) -> Value {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}
