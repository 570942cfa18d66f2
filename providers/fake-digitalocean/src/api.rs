use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use crate::backend::DropletSpec;
use crate::catalog;
use crate::faults::{Faults, Injected};
use crate::state::{
    action_json, droplet_json, firewall_json, key_json, now_rfc3339, ApiCall, DropletRec,
    FirewallRec, KeyRec, Shared, Status,
};

/// Closes the connection a request arrived on; put into every request's extensions.
#[derive(Clone)]
pub(crate) struct ConnKill(pub Arc<Notify>);

type S = State<Arc<Shared>>;
type Q = Query<HashMap<String, String>>;

const MAX_USER_DATA: usize = 64 * 1024;

/// A refusal made while reading a request, answered as is.
type Refused = Box<Response>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let v2 = Router::new()
        .route("/v2/account", get(account))
        .route("/v2/regions", get(regions))
        .route("/v2/sizes", get(sizes))
        .route("/v2/vpcs", get(vpcs))
        .route("/v2/account/keys", get(list_keys).post(create_key))
        .route("/v2/account/keys/{ident}", get(get_key).delete(delete_key))
        .route(
            "/v2/droplets",
            get(list_droplets)
                .post(create_droplets)
                .delete(delete_droplets_by_tag),
        )
        .route("/v2/droplets/{id}", get(get_droplet).delete(delete_droplet))
        .route(
            "/v2/droplets/{id}/actions",
            axum::routing::post(droplet_action),
        )
        .route("/v2/actions/{id}", get(get_action))
        .route("/v2/firewalls", get(list_firewalls).post(create_firewall))
        .route(
            "/v2/firewalls/{id}",
            get(get_firewall)
                .put(update_firewall)
                .delete(delete_firewall),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), gate));
    let admin = Router::new()
        .route(
            "/_fake/faults",
            get(admin_faults)
                .post(admin_set_faults)
                .delete(admin_clear_faults),
        )
        .route("/_fake/calls", get(admin_calls).delete(admin_clear_calls))
        .route("/_fake/state", get(admin_state));
    v2.merge(admin).with_state(shared)
}

pub(crate) fn error(status: StatusCode, id: &str, message: &str) -> Response {
    (status, Json(json!({"id": id, "message": message}))).into_response()
}

fn unprocessable(message: &str) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_entity",
        message,
    )
}

fn refuse(message: &str) -> Refused {
    Box::new(unprocessable(message))
}

fn missing() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you requested could not be found.",
    )
}

/// Parses a body and checks it against the specification's schema for the endpoint:
/// DigitalOcean answers 422 to a body that lacks a required field or has a wrong type.
fn parse_checked(body: &Bytes, schema: &crate::schema::Schema) -> Result<Value, Refused> {
    let v = parse_json(body)?;
    crate::schema::check(schema, &v, "").map_err(|e| refuse(&e))?;
    Ok(v)
}

fn bad_body() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "error parsing request body",
    )
}

async fn not_found() -> Response {
    missing()
}

fn rate_headers(headers: &mut HeaderMap, limit: u64, remaining: u64, reset: u64) {
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(name, v);
        }
    };
    put("ratelimit-limit", limit.to_string());
    put("ratelimit-remaining", remaining.to_string());
    put("ratelimit-reset", reset.to_string());
}

/// Logs every API request, applies the rate limits, injects faults, checks the token and
/// adds the rate-limit headers.
async fn gate(State(s): S, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let kill = req.extensions().get::<ConnKill>().cloned();
    let (injected, limit, rate, latency, at_ms) = {
        let mut inner = s.lock();
        let now = std::time::Instant::now();
        let at_ms = now.saturating_duration_since(inner.started).as_millis() as u64;
        let (per_minute, per_hour) = (
            inner.settings.rate_per_minute,
            inner.settings.ratelimit_limit,
        );
        let mut rate = inner.rate.admit(now, per_minute, per_hour);
        // A request over the limit is refused before anything else looks at it.
        let injected = if rate.refused.is_some() {
            None
        } else {
            inner.faults.take(&method, &path)
        };
        if let Some(n) = inner.ratelimit_remaining.as_mut() {
            if rate.refused.is_none() {
                *n = n.saturating_sub(1);
            }
            rate.remaining = *n;
        }
        (injected, per_hour, rate, inner.settings.api_latency, at_ms)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let log = |status: Option<u16>, dropped: bool| {
        s.lock().calls.push(ApiCall {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            status,
            dropped,
            at_ms,
        });
    };
    if let Some(wait) = rate.refused {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "API Rate limit exceeded.",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert("retry-after", v);
        }
        rate_headers(resp.headers_mut(), limit, rate.remaining, rate.reset);
        log(Some(429), false);
        return resp;
    }
    let mut drop_after = false;
    let early = match injected {
        Some(Injected::Drop {
            after_handling: false,
        }) => {
            log(None, true);
            return hang_up(kill).await;
        }
        Some(Injected::Drop {
            after_handling: true,
        }) => {
            drop_after = true;
            None
        }
        Some(Injected::RateLimit { retry_after_secs }) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "API Rate limit exceeded.",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
            Some(resp)
        }
        Some(Injected::ServerError { status }) => Some(error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
            "Unexpected server-side error",
        )),
        None => None,
    };
    let mut resp = match early {
        Some(resp) => resp,
        None if !authorized(&s, req.headers()) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        ),
        None => next.run(req).await,
    };
    rate_headers(resp.headers_mut(), limit, rate.remaining, rate.reset);
    log(Some(resp.status().as_u16()), drop_after);
    if drop_after {
        return hang_up(kill).await;
    }
    resp
}

/// Closes the connection; the answer never comes.
async fn hang_up(kill: Option<ConnKill>) -> Response {
    match kill {
        Some(k) => {
            k.0.notify_one();
            std::future::pending::<Response>().await
        }
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && token.trim() == s.token
}

/// One page of `items` with DigitalOcean's `links.pages` and `meta.total`.
fn paginate(
    s: &Shared,
    uri: &Uri,
    q: &HashMap<String, String>,
    key: &str,
    items: Vec<Value>,
) -> Response {
    let max = s.lock().settings.max_per_page.clamp(1, 200) as usize;
    let per_page = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, max);
    let page = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let start = ((page - 1) * per_page).min(total);
    let end = (page * per_page).min(total);
    let slice: Vec<Value> = items[start..end].to_vec();
    let mut others: Vec<(&String, &String)> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "per_page")
        .collect();
    others.sort();
    let link = |p: usize| {
        let mut query: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
        query.push(format!("page={p}"));
        query.push(format!("per_page={per_page}"));
        format!("{}{}?{}", s.base_url(), uri.path(), query.join("&"))
    };
    let mut pages = Map::new();
    if page > 1 {
        pages.insert("first".into(), json!(link(1)));
        pages.insert("prev".into(), json!(link((page - 1).min(last))));
    }
    if page < last {
        pages.insert("next".into(), json!(link(page + 1)));
        pages.insert("last".into(), json!(link(last)));
    }
    let links = if pages.is_empty() {
        json!({})
    } else {
        json!({ "pages": pages })
    };
    Json(json!({ key: slice, "links": links, "meta": {"total": total} })).into_response()
}

fn parse_json(body: &Bytes) -> Result<Value, Refused> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Box::new(bad_body())),
    }
}

fn fingerprint(public_key: &str) -> Option<String> {
    let mut parts = public_key.split_whitespace();
    let kind = parts.next()?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    if blob.is_empty() {
        return None;
    }
    Some(
        Md5::digest(&blob)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

fn valid_droplet_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 255
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-' || c == '_')
}

fn strings(v: Option<&Value>) -> Result<Vec<String>, ()> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or(()))
            .collect(),
        Some(_) => Err(()),
    }
}

// ---- account, regions, sizes, vpcs ----------------------------------------------------

async fn account(State(s): S) -> Response {
    let limit = s.lock().settings.droplet_limit;
    Json(json!({"account": {
        "droplet_limit": limit,
        "floating_ip_limit": 3,
        "email": "sammy@example.com",
        "name": "Sammy the Shark",
        "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
        "email_verified": true,
        "status": "active",
        "status_message": "",
    }}))
    .into_response()
}

async fn regions(State(s): S, Query(q): Q, uri: Uri) -> Response {
    let items = catalog::REGIONS.iter().map(catalog::region_json).collect();
    paginate(&s, &uri, &q, "regions", items)
}

async fn sizes(State(s): S, Query(q): Q, uri: Uri) -> Response {
    let items = catalog::SIZES.iter().map(catalog::size_json).collect();
    paginate(&s, &uri, &q, "sizes", items)
}

async fn vpcs(State(s): S, Query(q): Q, uri: Uri) -> Response {
    let items = catalog::all_vpcs().iter().map(catalog::vpc_json).collect();
    paginate(&s, &uri, &q, "vpcs", items)
}

// ---- ssh keys ---------------------------------------------------------------------------

fn find_key<'a>(
    keys: &'a std::collections::BTreeMap<u64, KeyRec>,
    ident: &str,
) -> Option<&'a KeyRec> {
    match ident.parse::<u64>() {
        Ok(id) => keys.get(&id),
        Err(_) => keys.values().find(|k| k.fingerprint == ident),
    }
}

async fn list_keys(State(s): S, Query(q): Q, uri: Uri) -> Response {
    let items = s.lock().keys.values().map(key_json).collect();
    paginate(&s, &uri, &q, "ssh_keys", items)
}

async fn get_key(State(s): S, Path(ident): Path<String>) -> Response {
    let inner = s.lock();
    match find_key(&inner.keys, &ident) {
        Some(k) => Json(json!({"ssh_key": key_json(k)})).into_response(),
        None => missing(),
    }
}

async fn create_key(State(s): S, body: Bytes) -> Response {
    let v = match parse_checked(&body, &crate::schema::ssh_key_create()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let name = v.get("name").and_then(Value::as_str).unwrap_or("").trim();
    let public_key = v
        .get("public_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    if name.is_empty() {
        return unprocessable("Name can't be blank");
    }
    let Some(fp) = fingerprint(public_key) else {
        return unprocessable("Key invalid, key should be of the format `type key [comment]`");
    };
    let mut inner = s.lock();
    if inner.keys.values().any(|k| k.fingerprint == fp) {
        return unprocessable("SSH Key is already in use on your account");
    }
    let id = inner.next_key_id;
    inner.next_key_id += 1;
    let key = KeyRec {
        id,
        name: name.to_string(),
        public_key: public_key.to_string(),
        fingerprint: fp,
    };
    let body = json!({"ssh_key": key_json(&key)});
    inner.keys.insert(id, key);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn delete_key(State(s): S, Path(ident): Path<String>) -> Response {
    let mut inner = s.lock();
    let Some(id) = find_key(&inner.keys, &ident).map(|k| k.id) else {
        return missing();
    };
    inner.keys.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

// ---- droplets ---------------------------------------------------------------------------

async fn list_droplets(State(s): S, Query(q): Q, uri: Uri) -> Response {
    let tag = q.get("tag_name");
    let name = q.get("name");
    if tag.is_some() && name.is_some() {
        return unprocessable("tag_name can not be combined with name or type");
    }
    let items = s
        .lock()
        .droplets
        .values()
        .filter(|d| tag.is_none_or(|t| d.spec.tags.contains(t)))
        .filter(|d| name.is_none_or(|n| &d.spec.name == n))
        .map(droplet_json)
        .collect();
    paginate(&s, &uri, &q, "droplets", items)
}

async fn get_droplet(State(s): S, Path(id): Path<String>) -> Response {
    let inner = s.lock();
    match id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.droplets.get(&id))
    {
        Some(d) => Json(json!({"droplet": droplet_json(d)})).into_response(),
        None => missing(),
    }
}

struct CreateRequest {
    names: Vec<String>,
    single: bool,
    region: String,
    size: String,
    image: String,
    ssh_keys: Vec<Value>,
    tags: Vec<String>,
    user_data: Option<String>,
    vpc_uuid: Option<String>,
    monitoring: bool,
}

fn read_create(v: &Value) -> Result<CreateRequest, Refused> {
    let (names, single) = match (v.get("names"), v.get("name")) {
        (Some(names), _) => (
            strings(Some(names)).map_err(|_| Box::new(bad_body()))?,
            false,
        ),
        (None, Some(Value::String(n))) => (vec![n.clone()], true),
        _ => return Err(refuse("You must provide a name or names for the Droplet")),
    };
    if names.is_empty() || names.len() > 10 {
        return Err(refuse("names must hold between 1 and 10 Droplet names"));
    }
    if let Some(bad) = names.iter().find(|n| !valid_droplet_name(n)) {
        return Err(refuse(&format!(
            "Name {bad} is invalid: only letters, digits, '.' and '-' are allowed"
        )));
    }
    let size = v.get("size").and_then(Value::as_str).unwrap_or_default();
    let image = match v.get("image") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => catalog::IMAGES
            .iter()
            .find(|i| Some(i.3) == n.as_u64())
            .map(|i| i.0.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    if size.is_empty() || (image.is_empty() && v.get("image").is_none()) {
        return Err(refuse("size and image are required"));
    }
    let ssh_keys = match v.get("ssh_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(Box::new(bad_body())),
    };
    let tags = strings(v.get("tags")).map_err(|_| Box::new(bad_body()))?;
    if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
        return Err(refuse(&format!(
            "tag {bad} is invalid: use letters, digits, ':', '-' and '_'"
        )));
    }
    Ok(CreateRequest {
        names,
        single,
        region: v
            .get("region")
            .and_then(Value::as_str)
            .unwrap_or("nyc3")
            .to_string(),
        size: size.to_string(),
        image,
        ssh_keys,
        tags,
        user_data: v
            .get("user_data")
            .and_then(Value::as_str)
            .map(str::to_string),
        vpc_uuid: v
            .get("vpc_uuid")
            .and_then(Value::as_str)
            .map(str::to_string),
        monitoring: v
            .get("monitoring")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

async fn create_droplets(State(s): S, body: Bytes) -> Response {
    let v = match parse_checked(&body, &crate::schema::droplet_create()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let req = match read_create(&v) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(region) = catalog::region(&req.region).filter(|r| r.available) else {
        return unprocessable("Region is not available");
    };
    let Some(size) = catalog::size(&req.size) else {
        return unprocessable("You specified an invalid size for Droplet creation.");
    };
    if !size.available || !catalog::size_regions(size).contains(&region.slug) {
        return unprocessable("Size is not available in this region.");
    }
    if catalog::image(&req.image).is_none() {
        return unprocessable("You specified an invalid image for Droplet creation.");
    }
    if req
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > MAX_USER_DATA)
    {
        return unprocessable("user_data must be 64 KiB or less");
    }
    let Some(vpc) = catalog::default_vpc(region.slug) else {
        return unprocessable("Region is not available");
    };
    if let Some(uuid) = &req.vpc_uuid {
        if uuid != &vpc.id {
            return unprocessable(&format!(
                "vpc_uuid {uuid} is not a VPC of region {}",
                region.slug
            ));
        }
    }

    let mut inner = s.lock();
    let mut public_keys = Vec::new();
    for k in &req.ssh_keys {
        let ident = match k {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return bad_body(),
        };
        match find_key(&inner.keys, &ident) {
            Some(key) => public_keys.push(key.public_key.clone()),
            None => {
                return unprocessable(&format!("ssh key {ident} was not found on your account"))
            }
        }
    }
    if inner.droplets.len() + req.names.len() > inner.settings.droplet_limit as usize {
        return unprocessable("creating this/these droplet(s) will exceed your droplet limit");
    }
    let (make, failure) = match inner.faults.take_partial() {
        Some((succeed, status)) => ((succeed as usize).min(req.names.len()), Some(status)),
        None => (req.names.len(), None),
    };
    let boot_delay = inner.settings.boot_delay;
    let mut made = Vec::new();
    let mut actions = Vec::new();
    for name in req.names.iter().take(make) {
        let id = inner.next_droplet_id;
        inner.next_droplet_id += 1;
        let spec = DropletSpec {
            id,
            name: name.clone(),
            region: region.slug.to_string(),
            size: size.slug.to_string(),
            image: req.image.clone(),
            tags: req.tags.clone(),
            user_data: req.user_data.clone(),
            ssh_public_keys: public_keys.clone(),
            vpc_ip_range: vpc.ip_range.clone(),
        };
        let rec = DropletRec {
            spec,
            status: Status::New,
            addrs: None,
            created_at: now_rfc3339(),
            locked: false,
            vpc_uuid: vpc.id.clone(),
            monitoring: req.monitoring,
            requested: std::time::Instant::now(),
            active_after: None,
        };
        made.push(droplet_json(&rec));
        inner.droplets.insert(id, rec);
        let action = inner.new_action("create", id, region.slug);
        actions.push(json!({"id": action, "rel": "create", "href": format!("{}/v2/actions/{action}", s.base_url())}));
        s.spawn(boot(s.clone(), id, action, boot_delay));
    }
    drop(inner);
    if let Some(status) = failure {
        return error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            if status >= 500 {
                "server_error"
            } else {
                "unprocessable_entity"
            },
            &format!(
                "only {} of {} droplets could be created",
                made.len(),
                req.names.len()
            ),
        );
    }
    let body = if req.single {
        json!({"droplet": made[0], "links": {"actions": actions}})
    } else {
        json!({"droplets": made, "links": {"actions": actions}})
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn boot(s: Arc<Shared>, id: u64, action: u64, delay: std::time::Duration) {
    tokio::time::sleep(delay).await;
    let Some(spec) = s.lock().droplets.get(&id).map(|d| d.spec.clone()) else {
        return;
    };
    match s.backend.create(&spec).await {
        Ok(addrs) => {
            let still_there = {
                let mut inner = s.lock();
                let found = match inner.droplets.get_mut(&id) {
                    Some(d) => {
                        d.addrs = Some(addrs);
                        d.status = Status::Active;
                        d.active_after = Some(d.requested.elapsed());
                        true
                    }
                    None => false,
                };
                inner.finish_action(action, found);
                found
            };
            if still_there {
                return;
            }
            // Deleted while it was being made.
            if let Err(e) = s.backend.delete(&spec).await {
                tracing::warn!(droplet = id, error = %e, "backend could not remove a droplet deleted while booting");
            }
        }
        Err(e) => {
            tracing::warn!(droplet = id, error = %e, "backend could not make the droplet");
            s.lock().finish_action(action, false);
        }
    }
}

async fn remove_droplets(s: &Shared, ids: Vec<u64>) -> Response {
    for id in ids {
        let Some(spec) = s.lock().droplets.get(&id).map(|d| d.spec.clone()) else {
            continue;
        };
        if let Err(e) = s.backend.delete(&spec).await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &format!("droplet {id} could not be deleted: {e}"),
            );
        }
        s.lock().droplets.remove(&id);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_droplet(State(s): S, Path(id): Path<String>) -> Response {
    let Some(id) = id
        .parse::<u64>()
        .ok()
        .filter(|id| s.lock().droplets.contains_key(id))
    else {
        return missing();
    };
    remove_droplets(&s, vec![id]).await
}

async fn delete_droplets_by_tag(State(s): S, Query(q): Q) -> Response {
    let Some(tag) = q.get("tag_name") else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "tag_name is required to delete droplets",
        );
    };
    let ids: Vec<u64> = s
        .lock()
        .droplets
        .values()
        .filter(|d| d.spec.tags.contains(tag))
        .map(|d| d.spec.id)
        .collect();
    remove_droplets(&s, ids).await
}

async fn droplet_action(State(s): S, Path(id): Path<String>, body: Bytes) -> Response {
    let v = match parse_checked(&body, &crate::schema::droplet_action()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut inner = s.lock();
    let Some(d) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.droplets.get_mut(&id))
    else {
        return missing();
    };
    let on = match kind.as_str() {
        "power_on" => true,
        "power_off" | "shutdown" => false,
        "reboot" | "power_cycle" => true,
        _ => return unprocessable(&format!("action type {kind:?} is not supported here")),
    };
    if d.locked {
        return unprocessable("Droplet already has a pending event.");
    }
    match (d.status, kind.as_str()) {
        (Status::New, _) => return unprocessable("Droplet is still being created."),
        (Status::Off, "power_off" | "shutdown") => {
            return unprocessable("Droplet is already powered off.")
        }
        (Status::Active, "power_on") => return unprocessable("Droplet is already powered on."),
        _ => {}
    }
    d.locked = true;
    let spec = d.spec.clone();
    let delay = inner.settings.action_delay;
    let action = inner.new_action(&kind, spec.id, &spec.region);
    let body = inner
        .actions
        .get(&action)
        .map(action_json)
        .unwrap_or(Value::Null);
    drop(inner);
    let shared = s.clone();
    s.spawn(async move {
        tokio::time::sleep(delay).await;
        let result = shared.backend.power(&spec, on).await;
        let mut inner = shared.lock();
        if let Some(d) = inner.droplets.get_mut(&spec.id) {
            d.locked = false;
            if result.is_ok() {
                d.status = if on { Status::Active } else { Status::Off };
            }
        }
        inner.finish_action(action, result.is_ok());
    });
    (StatusCode::CREATED, Json(json!({"action": body}))).into_response()
}

async fn get_action(State(s): S, Path(id): Path<String>) -> Response {
    let inner = s.lock();
    match id.parse::<u64>().ok().and_then(|id| inner.actions.get(&id)) {
        Some(a) => Json(json!({"action": action_json(a)})).into_response(),
        None => missing(),
    }
}

// ---- firewalls --------------------------------------------------------------------------

fn read_rules(v: &Value, key: &str, target: &str) -> Result<Vec<Value>, String> {
    let rules = match v.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(format!("{key} must be a list")),
    };
    let mut out = Vec::new();
    for r in rules {
        let protocol = r
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(protocol, "tcp" | "udp" | "icmp") {
            return Err(format!(
                "protocol {protocol:?} is invalid: use tcp, udp or icmp"
            ));
        }
        let ports = r.get("ports").and_then(Value::as_str).unwrap_or_default();
        let ports = if protocol == "icmp" {
            "0".to_string()
        } else {
            let valid = ports == "all"
                || ports
                    .split('-')
                    .all(|p| !p.is_empty() && p.parse::<u16>().is_ok())
                    && ports.split('-').count() <= 2;
            if !valid {
                return Err(format!("ports {ports:?} is invalid for {protocol}"));
            }
            if ports == "all" {
                "0".to_string()
            } else {
                ports.to_string()
            }
        };
        let t = r.get(target).cloned().unwrap_or(Value::Null);
        let non_empty = [
            "addresses",
            "droplet_ids",
            "load_balancer_uids",
            "kubernetes_ids",
            "tags",
        ]
        .iter()
        .any(|k| {
            t.get(k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        });
        if !non_empty {
            return Err(format!(
                "every rule in {key} needs at least one of {target}"
            ));
        }
        // DigitalOcean takes addresses as IPv4 or IPv6 addresses or CIDR blocks only.
        if let Some(addresses) = t.get("addresses").and_then(Value::as_array) {
            for a in addresses {
                let text = a.as_str().unwrap_or_default();
                if !is_address_or_cidr(text) {
                    return Err(format!(
                        "{text:?} in {key} is not a valid IP address or CIDR block"
                    ));
                }
            }
        }
        out.push(json!({"protocol": protocol, "ports": ports, target: t}));
    }
    Ok(out)
}

fn is_address_or_cidr(text: &str) -> bool {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    addr.parse::<std::net::IpAddr>().is_ok_and(|ip| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
    })
}

struct FirewallBody {
    name: String,
    inbound: Vec<Value>,
    outbound: Vec<Value>,
    tags: Vec<String>,
    droplet_ids: Vec<u64>,
}

fn bad_request(message: &str) -> Refused {
    Box::new(error(StatusCode::BAD_REQUEST, "bad_request", message))
}

fn read_firewall(v: &Value) -> Result<FirewallBody, Refused> {
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
    let valid_name = !name.is_empty()
        && name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !valid_name {
        return Err(bad_request(
            "name must start with a letter or digit and hold only letters, digits, '.' and '-'",
        ));
    }
    let inbound = read_rules(v, "inbound_rules", "sources").map_err(|m| bad_request(&m))?;
    let outbound = read_rules(v, "outbound_rules", "destinations").map_err(|m| bad_request(&m))?;
    if inbound.is_empty() && outbound.is_empty() {
        return Err(bad_request(
            "a firewall needs at least one inbound or outbound rule",
        ));
    }
    if inbound.len() + outbound.len() > 50 {
        return Err(bad_request("a firewall holds at most 50 rules"));
    }
    let tags = strings(v.get("tags")).map_err(|_| Box::new(bad_body()))?;
    if tags.len() > 5 {
        return Err(bad_request("a firewall takes at most 5 tags"));
    }
    let droplet_ids = match v.get("droplet_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        Some(_) => return Err(Box::new(bad_body())),
    };
    Ok(FirewallBody {
        name: name.to_string(),
        inbound,
        outbound,
        tags,
        droplet_ids,
    })
}

async fn list_firewalls(State(s): S, Query(q): Q, uri: Uri) -> Response {
    let items = s.lock().firewalls.iter().map(firewall_json).collect();
    paginate(&s, &uri, &q, "firewalls", items)
}

async fn get_firewall(State(s): S, Path(id): Path<String>) -> Response {
    let inner = s.lock();
    match inner.firewalls.iter().find(|f| f.id == id) {
        Some(f) => Json(json!({"firewall": firewall_json(f)})).into_response(),
        None => missing(),
    }
}

async fn create_firewall(State(s): S, body: Bytes) -> Response {
    let v = match parse_checked(&body, &crate::schema::firewall()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let FirewallBody {
        name,
        inbound,
        outbound,
        tags,
        droplet_ids,
    } = match read_firewall(&v) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let mut inner = s.lock();
    let n = inner.next_firewall;
    inner.next_firewall += 1;
    let rec = FirewallRec {
        id: format!("bb4b2611-3d72-467b-8602-{n:012x}"),
        name,
        inbound,
        outbound,
        tags,
        droplet_ids,
        created_at: now_rfc3339(),
    };
    let mut body = firewall_json(&rec);
    body["status"] = json!("waiting");
    inner.firewalls.push(rec);
    (StatusCode::ACCEPTED, Json(json!({"firewall": body}))).into_response()
}

async fn update_firewall(State(s): S, Path(id): Path<String>, body: Bytes) -> Response {
    let v = match parse_checked(&body, &crate::schema::firewall()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let body = match read_firewall(&v) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let mut inner = s.lock();
    let Some(f) = inner.firewalls.iter_mut().find(|f| f.id == id) else {
        return missing();
    };
    f.name = body.name;
    f.inbound = body.inbound;
    f.outbound = body.outbound;
    f.tags = body.tags;
    f.droplet_ids = body.droplet_ids;
    Json(json!({"firewall": firewall_json(f)})).into_response()
}

async fn delete_firewall(State(s): S, Path(id): Path<String>) -> Response {
    let mut inner = s.lock();
    let before = inner.firewalls.len();
    inner.firewalls.retain(|f| f.id != id);
    if inner.firewalls.len() == before {
        return missing();
    }
    StatusCode::NO_CONTENT.into_response()
}

// ---- admin ------------------------------------------------------------------------------

async fn admin_faults(State(s): S) -> Response {
    Json(s.lock().faults_view()).into_response()
}

async fn admin_set_faults(State(s): S, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("faults body is not valid: {e}"),
            )
        }
    };
    let mut inner = s.lock();
    inner.apply_faults(&faults);
    Json(inner.faults_view()).into_response()
}

async fn admin_clear_faults(State(s): S) -> Response {
    s.lock().faults = Faults::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_calls(State(s): S) -> Response {
    Json(s.lock().calls.clone()).into_response()
}

async fn admin_clear_calls(State(s): S) -> Response {
    s.lock().calls.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_state(State(s): S) -> Response {
    let inner = s.lock();
    Json(json!({
        "droplets": inner.droplets.values().map(droplet_json).collect::<Vec<_>>(),
        "ssh_keys": inner.keys.values().map(key_json).collect::<Vec<_>>(),
        "firewalls": inner.firewalls.iter().map(firewall_json).collect::<Vec<_>>(),
        // Not DigitalOcean's: seconds from each create call to its droplet turning active.
        "boot_seconds": inner
            .droplets
            .values()
            .filter_map(|d| Some((d.spec.name.clone(), json!(d.active_after?.as_secs_f64()))))
            .collect::<serde_json::Map<_, _>>(),
    }))
    .into_response()
}
