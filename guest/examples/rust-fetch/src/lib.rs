//! Example guest: the fetch contract (guest/examples/README.md) in Rust with the `wstd` HTTP
//! client. Allow the service's origin in the activity's `[activity.outbound] allowed_hosts`.

use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};
use wstd::http::{Body, Client, Request};

fn handle(input: Value, ctx: &Context) -> Result<Value, TaskError> {
    let url = input["url"]
        .as_str()
        .ok_or_else(|| TaskError::new("Fetch.InvalidInput", "`url` must be a string"))?;
    ctx.info(&format!("fetching {url}"));
    let body = match &input["body"] {
        Value::Null => Body::empty(),
        json => Body::from(json.to_string()),
    };
    let request = Request::builder()
        .method(input["method"].as_str().unwrap_or("GET"))
        .uri(url)
        .header("content-type", "application/json")
        .body(body)
        .map_err(|err| TaskError::new("Fetch.InvalidInput", err.to_string()))?;
    wstd::runtime::block_on(async {
        let mut response = Client::new().send(request).await?;
        let status = response.status().as_u16();
        let text = response.body_mut().str_contents().await?.to_string();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(json!({ "status": status, "body": body }))
    })
    .map_err(|err: wstd::http::Error| TaskError::new("Fetch.RequestFailed", format!("{url}: {err:#}")))
}

export_handler!(handle);
