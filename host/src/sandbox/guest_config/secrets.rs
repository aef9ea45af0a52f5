//! A secret by reference, as `[activity.config] secrets` and `invoke --secret` write it, and
//! its fetch by the host: `secretsmanager:NAME` (or `:ARN`, and `#JSON_KEY` to select one
//! key of a JSON secret) through Secrets Manager's `GetSecretValue`; `ssm:NAME` (or `:ARN`)
//! through Parameter Store's `GetParameter`, decrypted. A fetch's error names the reference
//! and AWS's answer, never a value.

use crate::sandbox::outbound::aws::endpoints::{looks_like_region, ServiceEndpoint};
use crate::sandbox::outbound::aws::{with_retries, AwsGrant, Failed, HostCall, HostCallFor};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Time one attempt of a fetch may take (a 5xx answer, throttling and a failed connection are
/// tried again).
const ATTEMPT_TIME: Duration = Duration::from_secs(10);

/// Where a secret's value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A Secrets Manager secret (name or ARN), or one key of its JSON value.
    SecretsManager {
        secret_id: String,
        json_key: Option<String>,
    },
    /// A Parameter Store parameter (name or ARN), SecureString or not.
    Ssm { name: String },
}

/// A secret by reference: `secretsmanager:NAME[#JSON_KEY]` or `ssm:NAME`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRef {
    text: String,
    source: Source,
}

impl FromStr for SecretRef {
    type Err = String;

    fn from_str(text: &str) -> Result<SecretRef, String> {
        let source = if let Some(rest) = text.strip_prefix("secretsmanager:") {
            let (secret_id, json_key) = match rest.split_once('#') {
                Some((id, key)) => (id, Some(key)),
                None => (rest, None),
            };
            if secret_id.is_empty() || json_key == Some("") {
                return Err(format!(
                    "{text:?} names no secret: write \"secretsmanager:NAME\" or \
                     \"secretsmanager:NAME#JSON_KEY\""
                ));
            }
            Source::SecretsManager {
                secret_id: secret_id.to_string(),
                json_key: json_key.map(str::to_string),
            }
        } else if let Some(name) = text.strip_prefix("ssm:") {
            if name.is_empty() {
                return Err(format!("{text:?} names no parameter: write \"ssm:/NAME\""));
            }
            Source::Ssm {
                name: name.to_string(),
            }
        } else {
            // Not echoed: it may be the secret itself, written where its reference belongs.
            return Err(format!(
                "a value of {} characters is not a secret reference (not shown, in case it is \
                 the secret itself): write \"secretsmanager:NAME\" (a Secrets Manager secret, \
                 \"#JSON_KEY\" to pick one key of a JSON secret) or \"ssm:/NAME\" (a \
                 Parameter Store parameter); a plain value belongs in `values`",
                text.chars().count()
            ));
        };
        let reference = SecretRef {
            text: text.to_string(),
            source,
        };
        if let Some(region) = reference.arn_region() {
            if !looks_like_region(region) {
                return Err(format!("{text:?}: {region:?} in its ARN is not a region"));
            }
        }
        Ok(reference)
    }
}

impl<'de> serde::Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// A JSON-protocol answer that is an error: its code and message.
struct ErrorAnswer {
    status: http::StatusCode,
    code: String,
    message: String,
}

impl SecretRef {
    /// The region an ARN reference names.
    fn arn_region(&self) -> Option<&str> {
        let id = match &self.source {
            Source::SecretsManager { secret_id, .. } => secret_id,
            Source::Ssm { name } => name,
        };
        id.starts_with("arn:").then(|| id.split(':').nth(3))?
    }

    /// The IAM action the worker needs to fetch it.
    pub fn iam_action(&self) -> &'static str {
        match self.source {
            Source::SecretsManager { .. } => "secretsmanager:GetSecretValue",
            Source::Ssm { .. } => "ssm:GetParameter",
        }
    }

    /// Its value, fetched with `aws`'s credentials for `activity`; the error names AWS's
    /// answer (never a value).
    pub async fn fetch(&self, aws: &AwsGrant, activity: &Arc<str>) -> Result<String, String> {
        let region = match self.arn_region().or(aws.region()) {
            Some(region) => region.to_string(),
            None => return Err("no AWS region: set [worker] region (or AWS_REGION)".into()),
        };
        let (service, target, payload) = match &self.source {
            Source::SecretsManager { secret_id, .. } => (
                "secretsmanager",
                "secretsmanager.GetSecretValue",
                serde_json::json!({ "SecretId": secret_id }).to_string(),
            ),
            Source::Ssm { name } => (
                "ssm",
                "AmazonSSM.GetParameter",
                serde_json::json!({ "Name": name, "WithDecryption": true }).to_string(),
            ),
        };
        let (region, payload) = (&region, &payload);
        let body = with_retries(ATTEMPT_TIME, |deadline| async move {
            let call = HostCall {
                endpoint: ServiceEndpoint {
                    service: service.into(),
                    region: Some(region.clone()),
                    bucket: None,
                },
                method: "POST",
                path: "/",
                headers: &[
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amz-target", target),
                ],
                body: payload.clone().into(),
                on_behalf_of: HostCallFor {
                    activity_arn: activity.clone(),
                    task_id: "config-secrets".into(),
                },
                deadline,
            };
            let (status, body) = aws.call(call).await.map_err(Failed::retryable)?;
            if status.is_success() {
                return Ok(body);
            }
            let answer = error_answer(status, &body);
            Err(Failed {
                retryable: status.is_server_error()
                    || answer.code.contains("Throttl")
                    || answer.code == "TooManyRequestsException",
                why: format!(
                    "{} answered {} {}: {}",
                    service_name(service),
                    answer.status.as_u16(),
                    answer.code,
                    answer.message
                ),
            })
        })
        .await?;
        self.value_of(&body)
    }

    /// The value in a successful answer.
    fn value_of(&self, body: &[u8]) -> Result<String, String> {
        let answer: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| "the answer is not the JSON its API documents".to_string())?;
        match &self.source {
            Source::Ssm { .. } => answer["Parameter"]["Value"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "the answer has no Parameter.Value".into()),
            Source::SecretsManager { json_key, .. } => {
                let text = match (
                    answer["SecretString"].as_str(),
                    answer["SecretBinary"].as_str(),
                ) {
                    (Some(text), _) => text,
                    // A binary secret is given as the API gives it: base64.
                    (None, Some(base64)) if json_key.is_none() => base64,
                    _ => return Err("the answer has no SecretString".into()),
                };
                let Some(key) = json_key else {
                    return Ok(text.to_string());
                };
                let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                    .map_err(|_| {
                        format!(
                            "the secret is not a JSON object, so \"#{key}\" cannot select from it"
                        )
                    })?;
                match object.get(key) {
                    Some(serde_json::Value::String(value)) => Ok(value.clone()),
                    Some(other) => Ok(other.to_string()),
                    None => Err(format!(
                        "the secret's JSON has no key {key:?} (it has {})",
                        object
                            .keys()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        }
    }
}

/// A service's name as its documentation spells it.
fn service_name(service: &str) -> &str {
    match service {
        "secretsmanager" => "Secrets Manager",
        "ssm" => "SSM Parameter Store",
        other => other,
    }
}

/// The code and message of a JSON-protocol error answer.
fn error_answer(status: http::StatusCode, body: &[u8]) -> ErrorAnswer {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = answer["__type"]
        .as_str()
        .and_then(|kind| kind.rsplit('#').next())
        .filter(|code| !code.is_empty())
        .map_or_else(|| format!("HTTP{}", status.as_u16()), str::to_string);
    // Only the service's own message: a body of another shape (a proxy's page) is not shown.
    let message = answer["message"]
        .as_str()
        .or(answer["Message"].as_str())
        .map_or_else(|| "(no message)".to_string(), str::to_string);
    ErrorAnswer {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_name_the_forms() {
        let key: SecretRef = "secretsmanager:prod/tenant-b/api#key".parse().unwrap();
        assert_eq!(
            key.source,
            Source::SecretsManager {
                secret_id: "prod/tenant-b/api".into(),
                json_key: Some("key".into())
            }
        );
        let arn: SecretRef = "ssm:arn:aws:ssm:eu-west-1:123456789012:parameter/rate"
            .parse()
            .unwrap();
        assert_eq!(arn.arn_region(), Some("eu-west-1"));
        for bad in ["secretsmanager:", "secretsmanager:x#", "ssm:"] {
            let err = bad.parse::<SecretRef>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        // A value that is no reference at all may be the secret: it is not echoed.
        let err = "sk-live-hunter2".parse::<SecretRef>().unwrap_err();
        assert!(
            !err.contains("hunter2") && err.contains("secretsmanager:NAME"),
            "{err}"
        );
    }

    #[test]
    fn a_json_key_is_selected_and_a_missing_one_named_without_values() {
        let reference: SecretRef = "secretsmanager:db#password".parse().unwrap();
        let answer = br#"{"SecretString": "{\"user\": \"app\", \"password\": \"hunter2\", \"port\": 5432}"}"#;
        assert_eq!(reference.value_of(answer).unwrap(), "hunter2");
        let port: SecretRef = "secretsmanager:db#port".parse().unwrap();
        assert_eq!(port.value_of(answer).unwrap(), "5432");
        let missing: SecretRef = "secretsmanager:db#host".parse().unwrap();
        let err = missing.value_of(answer).unwrap_err();
        assert!(
            err.contains("\"host\"") && err.contains("\"user\"") && !err.contains("hunter2"),
            "{err}"
        );
        let plain = br#"{"SecretString": "not json hunter2"}"#;
        let err = reference.value_of(plain).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn an_error_answer_gives_its_code_and_message() {
        let answer = error_answer(
            http::StatusCode::BAD_REQUEST,
            br#"{"__type":"com.amazonaws#ResourceNotFoundException","message":"not found"}"#,
        );
        assert_eq!(
            (answer.code.as_str(), answer.message.as_str()),
            ("ResourceNotFoundException", "not found")
        );
    }
}
