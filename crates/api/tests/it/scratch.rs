use reqwest::Method;
use serde_json::json;
use crate::helpers::spawn_app;

#[tokio::test]
async fn show() {
    let app = spawn_app().await;
    for (m, p, b) in [
        (Method::POST, "/v1/webhooks", Some(json!({"url": 5, "events": ["*"]}))),
        (Method::POST, "/v1/webhooks", Some(json!({"url": "https://x.com", "event": ["*"]}))),
        (Method::POST, "/v1/webhooks", Some(json!({"url": "not a url", "events": ["*"]}))),
        (Method::POST, "/v1/webhooks", Some(json!({"url": "https://x.com", "events": ["*"], "secret": {"a":1}}))),
        (Method::POST, "/v1/webhooks", Some(json!([1]))),
        (Method::PUT, "/v1/webhooks", None),
        (Method::GET, "/v1/webhooks?limit=0", None),
        (Method::GET, "/v1/webhooks?foo=1", None),
    ] {
        let mut r = app.request(m.clone(), p);
        if let Some(b) = &b { r = r.json(b); }
        let resp = r.send().await.unwrap();
        println!("{m} {p} {b:?}\n  -> {} {:?}\n  {}", resp.status(), resp.headers(), resp.text().await.unwrap());
    }
    let resp = app.request(Method::POST, "/v1/webhooks").header("content-type","application/json").body("{\"url\": ").send().await.unwrap();
    println!("{} {}", resp.status(), resp.text().await.unwrap());
    let resp = app.client.get(app.url("/v1/webhooks")).send().await.unwrap();
    println!("{} {:?} {}", resp.status(), resp.headers(), resp.text().await.unwrap());
}
