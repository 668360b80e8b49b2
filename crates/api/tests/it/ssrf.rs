//! SSRF at registration: a webhook URL naming an internal address in any spelling is
//! refused with 422 on `url`, on create and on update, unless
//! `delivery.allow_private_targets` allows it.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

/// Internal targets as an attacker might spell them, with what each one is.
const FORBIDDEN: &[(&str, &str)] = &[
    ("http://127.0.0.1/", "loopback"),
    (
        "http://127.255.255.254:8080/x",
        "loopback, anywhere in 127/8",
    ),
    ("http://127.1/", "loopback, short form"),
    ("http://2130706433/", "loopback, decimal"),
    ("http://0x7f000001/", "loopback, hex"),
    ("http://0x7f.0.0.1/", "loopback, hex octet"),
    ("http://0177.0.0.1/", "loopback, octal"),
    ("http://localhost/", "loopback name"),
    (
        "http://LOCALHOST./",
        "loopback name, upper case, trailing dot",
    ),
    ("http://api.localhost/", "loopback name, subdomain"),
    ("http://%6c%6f%63alhost/", "loopback name, percent-encoded"),
    (
        "http://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/",
        "loopback name, full-width letters",
    ),
    ("http://[::1]/", "IPv6 loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "IPv6 loopback, long form"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped loopback, hex"),
    ("http://[::127.0.0.1]/", "IPv4-compatible loopback"),
    ("http://[::ffff:0:7f00:1]/", "IPv4-translated loopback"),
    ("http://[64:ff9b::7f00:1]/", "NAT64 of loopback"),
    ("http://[2002:7f00:1::]/", "6to4 of loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified, short form"),
    ("http://[::]/", "IPv6 unspecified"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private"),
    ("http://3232235777/", "private, decimal"),
    ("http://[fc00::1]/", "IPv6 unique local"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://100.100.100.200/", "CGNAT (Alibaba Cloud metadata)"),
    (
        "http://169.254.169.254/latest/meta-data/",
        "link-local, cloud metadata",
    ),
    ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped cloud metadata"),
    ("http://0xa9fea9fe/", "cloud metadata, hex"),
    ("http://[fd00:ec2::254]/", "AWS IPv6 metadata"),
    ("http://metadata.google.internal/", "GCP metadata name"),
    ("http://[fe80::1]/", "IPv6 link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250:1900/", "multicast (SSDP)"),
    ("http://[ff02::1]/", "IPv6 multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("https://127.0.0.1/", "loopback over https"),
];

const PRIVATE_MESSAGE: &str = "url points at a private, loopback or otherwise internal address";

#[tokio::test]
async fn registration_refuses_every_spelling_of_an_internal_target() {
    // http:// allowed, so it is the private-target rule that answers.
    let app = spawn_app_with(|s| {
        s.api.require_https = false;
        s.delivery.allow_private_targets = false;
    })
    .await;
    let created = app.create_simple_webhook(1).await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());
    for (url, what) in FORBIDDEN {
        let message = assert_error(
            app.post_json("/v1/webhooks", &json!({"url": url, "events": ["*"]}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("url"),
        )
        .await;
        assert_eq!(message, PRIVATE_MESSAGE, "{url} ({what})");
        let message = assert_error(
            app.patch_json(&path, &json!({ "url": url })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("url"),
        )
        .await;
        assert_eq!(message, PRIVATE_MESSAGE, "PATCH {url} ({what})");
    }
    let list: serde_json::Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "nothing was stored"
    );
    assert_eq!(list["data"][0]["url"], "https://example.com/1");
}

#[tokio::test]
async fn public_targets_pass_the_rule() {
    let app = spawn_app_with(|s| s.delivery.allow_private_targets = false).await;
    for url in [
        "https://example.com/hook",
        "https://93.184.216.34/hook",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
        "https://[::ffff:93.184.216.34]/hook",
        "https://localhost.example.com/hook",
    ] {
        app.create_webhook(&json!({"url": url, "events": ["*"]}))
            .await;
    }
}

#[tokio::test]
async fn allow_private_targets_lifts_the_rule_for_local_use() {
    let app = spawn_app().await; // the test settings allow private targets
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://10.0.0.1/hook",
    ] {
        app.create_webhook(&json!({"url": url, "events": ["*"]}))
            .await;
    }
}
