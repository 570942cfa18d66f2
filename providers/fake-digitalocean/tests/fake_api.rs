//! The fake's HTTP surface, spoken to directly: shapes, auth, pagination, headers, faults.

use std::time::Duration;

use fake_digitalocean::{FakeDo, FakeOptions, Faults, ServerErrorFault};
use serde_json::{json, Value};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c user@host";
const KEY_MD5: &str = "f5:a4:be:64:6f:c9:df:3f:cb:41:f7:72:42:27:92:81";

async fn start(options: FakeOptions) -> FakeDo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    FakeDo::start(listener, options).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn call(
    fake: &FakeDo,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http()
        .request(method, format!("{}{path}", fake.url()))
        .bearer_auth(fake.token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

#[tokio::test]
async fn requests_without_the_token_get_401_with_an_error_body() {
    let fake = start(FakeOptions::default()).await;
    let resp = http()
        .get(format!("{}/v2/account", fake.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers().contains_key("ratelimit-remaining"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], "unauthorized");
    assert!(v["message"].as_str().is_some());
    let resp = http()
        .get(format!("{}/v2/account", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    fake.shutdown().await;
}

#[tokio::test]
async fn answers_carry_rate_limit_headers_and_404_bodies() {
    let fake = start(FakeOptions::default()).await;
    let (status, headers, v) = call(&fake, reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["account"]["droplet_limit"], 25);
    assert_eq!(headers["ratelimit-limit"], "5000");
    assert_eq!(headers["ratelimit-remaining"], "4999");
    assert!(headers["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    let (status, _, v) = call(&fake, reqwest::Method::GET, "/v2/droplets/42", None).await;
    assert_eq!(status, 404);
    assert_eq!(
        v,
        json!({"id": "not_found", "message": "The resource you requested could not be found."})
    );
    let (status, _, v) = call(&fake, reqwest::Method::GET, "/v2/nothing-here", None).await;
    assert_eq!((status, v["id"].as_str()), (404, Some("not_found")));
    fake.shutdown().await;
}

#[tokio::test]
async fn listings_paginate_with_links_and_meta() {
    let fake = start(FakeOptions::default()).await;
    let (_, _, first) = call(&fake, reqwest::Method::GET, "/v2/sizes?per_page=3", None).await;
    let total = first["meta"]["total"].as_u64().unwrap();
    assert!(total > 3);
    assert_eq!(first["sizes"].as_array().unwrap().len(), 3);
    let next = first["links"]["pages"]["next"].as_str().unwrap();
    assert!(next.starts_with(&fake.url()), "{next}");
    assert!(first["links"]["pages"].get("prev").is_none());
    let last = first["links"]["pages"]["last"]
        .as_str()
        .unwrap()
        .to_string();
    let path = last.strip_prefix(&fake.url()).unwrap();
    let (_, _, end) = call(&fake, reqwest::Method::GET, path, None).await;
    assert!(end["links"]["pages"].get("next").is_none());
    assert!(end["links"]["pages"]["prev"].as_str().is_some());
    let (_, _, all) = call(&fake, reqwest::Method::GET, "/v2/sizes?per_page=200", None).await;
    assert_eq!(all["links"], json!({}));
    assert_eq!(all["sizes"].as_array().unwrap().len() as u64, total);
    fake.shutdown().await;
}

#[tokio::test]
async fn droplets_boot_from_new_to_active_with_two_addresses() {
    let fake = start(FakeOptions {
        boot_delay: Duration::from_millis(100),
        ..FakeOptions::default()
    })
    .await;
    let (status, _, v) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(
            json!({"names": ["a1", "a2"], "region": "nyc3", "size": "s-1vcpu-1gb",
                    "image": "ubuntu-24-04-x64", "tags": ["t:1"]}),
        ),
    )
    .await;
    assert_eq!(status, 202);
    let made = v["droplets"].as_array().unwrap();
    assert_eq!(made.len(), 2);
    assert_eq!(made[0]["status"], "new");
    assert_eq!(made[0]["networks"]["v4"], json!([]));
    assert_eq!(v["links"]["actions"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, _, v) = call(
        &fake,
        reqwest::Method::GET,
        "/v2/droplets?tag_name=t:1",
        None,
    )
    .await;
    assert_eq!(v["meta"]["total"], 2);
    for d in v["droplets"].as_array().unwrap() {
        assert_eq!(d["status"], "active");
        let kinds: Vec<&str> = d["networks"]["v4"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["private", "public"]);
        assert!(d["vpc_uuid"].as_str().is_some());
    }
    let (status, _, _) = call(
        &fake,
        reqwest::Method::DELETE,
        "/v2/droplets?tag_name=t:1",
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(fake.droplets().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn create_refuses_bad_requests_with_422() {
    let fake = start(FakeOptions {
        droplet_limit: 2,
        ..FakeOptions::default()
    })
    .await;
    let body = |names: Vec<String>, size: &str| json!({"names": names, "region": "nyc3", "size": size, "image": "ubuntu-24-04-x64"});
    let eleven: Vec<String> = (0..11).map(|i| format!("n{i}")).collect();
    let (status, _, v) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(body(eleven, "s-1vcpu-1gb")),
    )
    .await;
    assert_eq!(
        (status, v["id"].as_str()),
        (422, Some("unprocessable_entity"))
    );
    let three: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    let (status, _, v) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(body(three, "s-1vcpu-1gb")),
    )
    .await;
    assert_eq!(status, 422);
    assert!(v["message"].as_str().unwrap().contains("droplet limit"));
    let (status, _, _) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(body(vec!["x".into()], "c-2")),
    )
    .await;
    assert_eq!(status, 422);
    assert!(fake.droplets().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn ssh_keys_are_found_by_fingerprint_and_never_duplicated() {
    let fake = start(FakeOptions::default()).await;
    let body = json!({"name": "laptop", "public_key": KEY});
    let (status, _, v) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/account/keys",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(v["ssh_key"]["fingerprint"], KEY_MD5);
    let (status, _, v) = call(&fake, reqwest::Method::POST, "/v2/account/keys", Some(body)).await;
    assert_eq!(status, 422);
    assert_eq!(v["message"], "SSH Key is already in use on your account");
    let (status, _, v) = call(
        &fake,
        reqwest::Method::GET,
        &format!("/v2/account/keys/{KEY_MD5}"),
        None,
    )
    .await;
    assert_eq!(
        (status, v["ssh_key"]["name"].as_str()),
        (200, Some("laptop"))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn faults_set_over_http_hit_the_next_calls() {
    let fake = start(FakeOptions::default()).await;
    let resp = http()
        .post(format!("{}/_fake/faults", fake.url()))
        .json(&json!({"server_error": {"count": 1, "status": 503}, "rate_limit": {"count": 1, "retry_after_secs": 9, "path_prefix": "/v2/sizes"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, headers, v) = call(&fake, reqwest::Method::GET, "/v2/sizes", None).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "9");
    assert_eq!(v["id"], "too_many_requests");
    let (status, _, v) = call(&fake, reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!((status, v["id"].as_str()), (503, Some("server_error")));
    let (status, _, _) = call(&fake, reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(status, 200);
    let calls: Vec<Value> = http()
        .get(format!("{}/_fake/calls", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = calls
        .iter()
        .map(|c| c["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 503, 200]);
    fake.set_faults(Faults {
        server_error: Some(ServerErrorFault::default()),
        ..Faults::default()
    });
    assert_eq!(fake.faults().server_error.map(|f| f.count), Some(1));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_gets_no_answer() {
    let fake = start(FakeOptions::default()).await;
    fake.set_faults(serde_json::from_value(json!({"drop_connection": {"count": 1}})).unwrap());
    let err = http()
        .get(format!("{}/v2/account", fake.url()))
        .bearer_auth(fake.token())
        .send()
        .await
        .unwrap_err();
    assert!(
        err.is_request() || err.is_connect() || err.is_body(),
        "{err:?}"
    );
    let (status, _, _) = call(&fake, reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(status, 200);
    let calls = fake.api_calls();
    assert!(calls[0].dropped && calls[0].status.is_none());
    fake.shutdown().await;
}

#[tokio::test]
async fn power_actions_turn_droplets_off_and_on() {
    let fake = start(FakeOptions {
        boot_delay: Duration::from_millis(10),
        action_delay: Duration::from_millis(10),
        ..FakeOptions::default()
    })
    .await;
    let (_, _, v) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(json!({"name": "p1", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"})),
    )
    .await;
    let id = v["droplet"]["id"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, v) = call(
        &fake,
        reqwest::Method::POST,
        &format!("/v2/droplets/{id}/actions"),
        Some(json!({"type": "power_off"})),
    )
    .await;
    assert_eq!(status, 201);
    let action = v["action"]["id"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, _, v) = call(
        &fake,
        reqwest::Method::GET,
        &format!("/v2/actions/{action}"),
        None,
    )
    .await;
    assert_eq!(v["action"]["status"], "completed");
    assert_eq!(fake.droplets()[0].status, "off");
    let (status, _, _) = call(
        &fake,
        reqwest::Method::POST,
        &format!("/v2/droplets/{id}/actions"),
        Some(json!({"type": "power_off"})),
    )
    .await;
    assert_eq!(status, 422);
    fake.shutdown().await;
}

#[tokio::test]
async fn put_replaces_a_whole_firewall_and_refuses_bad_rules_like_digitalocean() {
    let fake = start(FakeOptions::default()).await;
    let rule = |ports: &str, addresses: Value| json!({"protocol": "tcp", "ports": ports, "sources": {"addresses": addresses}});
    let (status, _, v) = call(
        &fake,
        reqwest::Method::POST,
        "/v2/firewalls",
        Some(json!({
            "name": "fw1",
            "tags": ["t1"],
            "inbound_rules": [rule("22", json!(["0.0.0.0/0"]))],
        })),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let id = v["firewall"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2/firewalls/{id}");

    // Everything not sent is reset: the tags go, the rules are the new ones.
    let (status, _, v) = call(
        &fake,
        reqwest::Method::PUT,
        &path,
        Some(json!({
            "name": "fw1",
            "inbound_rules": [
                rule("22", json!(["0.0.0.0/0"])),
                rule("9200", json!(["192.0.2.0/24", "2001:db8::/48"])),
            ],
        })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, _, got) = call(&fake, reqwest::Method::GET, &path, None).await;
    assert_eq!(
        got["firewall"]["inbound_rules"].as_array().unwrap().len(),
        2
    );
    assert_eq!(got["firewall"]["tags"], json!([]));
    assert_eq!(
        got["firewall"]["inbound_rules"][1]["sources"]["addresses"],
        json!(["192.0.2.0/24", "2001:db8::/48"])
    );

    // Refused with DigitalOcean's error shape, and the firewall stays as it was: values the
    // API cannot use get 400, bodies the specification does not allow (a missing required
    // field such as an icmp rule's ports, a protocol outside the enum) get 422.
    let bad_request = (400, Some("bad_request"));
    let unprocessable = (422, Some("unprocessable_entity"));
    for (bad, expected) in [
        (
            json!({"name": "fw1", "inbound_rules": [rule("9200", json!(["192.0.2.0/33"]))]}),
            bad_request,
        ),
        (
            json!({"name": "fw1", "inbound_rules": [rule("9200", json!(["example.com"]))]}),
            bad_request,
        ),
        (
            json!({"name": "fw1", "inbound_rules": [rule("70000", json!(["0.0.0.0/0"]))]}),
            bad_request,
        ),
        (
            json!({"name": "fw1", "inbound_rules": [{"protocol": "gre", "ports": "0", "sources": {"addresses": ["0.0.0.0/0"]}}]}),
            unprocessable,
        ),
        (
            json!({"name": "fw1", "inbound_rules": [{"protocol": "icmp", "sources": {"addresses": ["0.0.0.0/0"]}}]}),
            unprocessable,
        ),
        (
            json!({"inbound_rules": [rule("22", json!(["0.0.0.0/0"]))]}),
            unprocessable,
        ),
    ] {
        let (status, _, v) = call(&fake, reqwest::Method::PUT, &path, Some(bad.clone())).await;
        assert_eq!((status, v["id"].as_str()), expected, "{bad}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (_, _, after) = call(&fake, reqwest::Method::GET, &path, None).await;
    assert_eq!(after, got);

    let (status, _, v) = call(
        &fake,
        reqwest::Method::PUT,
        "/v2/firewalls/bb4b2611-3d72-467b-8602-000000000999",
        Some(json!({"name": "fw1", "inbound_rules": [rule("22", json!(["0.0.0.0/0"]))]})),
    )
    .await;
    assert_eq!((status, v["id"].as_str()), (404, Some("not_found")));
    fake.shutdown().await;
}
