//! Which AWS service and region a request's host names: the standard endpoint names
//! (`SERVICE.REGION.amazonaws.com`, the global `SERVICE.amazonaws.com`, and S3's
//! `s3.REGION.amazonaws.com` and virtual-hosted `BUCKET.s3.REGION.amazonaws.com`).

/// The region global endpoints (`iam.amazonaws.com`, `s3.amazonaws.com`) sign in.
pub const GLOBAL_REGION: &str = "us-east-1";

/// An AWS endpoint named by a request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    /// The service's endpoint prefix (`s3`, `sqs`, `secretsmanager`...): what `[activity.aws]
    /// services` lists.
    pub service: String,
    /// The region the name is in, or `None` for a global endpoint.
    pub region: Option<String>,
    /// The bucket of a virtual-hosted S3 name.
    pub bucket: Option<String>,
}

impl ServiceEndpoint {
    /// The name SigV4 signs with (the service's signing name).
    pub fn signing_name(&self) -> &str {
        match self.service.as_str() {
            "email" => "ses",
            other => other,
        }
    }

    /// The region the request is signed in.
    pub fn signing_region(&self) -> &str {
        self.region.as_deref().unwrap_or(GLOBAL_REGION)
    }
}

/// The AWS endpoint `host` names, or `None` if it is not an `amazonaws.com` name.
pub fn recognise(host: &str) -> Option<ServiceEndpoint> {
    let rest = host.strip_suffix(".amazonaws.com")?;
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.iter().any(|label| label.is_empty()) {
        return None;
    }
    // S3 names first: `s3` is the last or the second to last label.
    if let Some(s3_at) = labels.iter().rposition(|label| *label == "s3") {
        let after = &labels[s3_at + 1..];
        if after.len() <= 1 {
            let bucket = (s3_at > 0).then(|| labels[..s3_at].join("."));
            return Some(ServiceEndpoint {
                service: "s3".into(),
                region: after.first().map(|region| region.to_string()),
                bucket,
            });
        }
    }
    match labels.as_slice() {
        [service] => Some(ServiceEndpoint {
            service: service.to_string(),
            region: None,
            bucket: None,
        }),
        [service, region] if looks_like_region(region) => Some(ServiceEndpoint {
            service: service.to_string(),
            region: Some(region.to_string()),
            bucket: None,
        }),
        _ => None,
    }
}

/// Whether `label` has a region's shape (`us-east-1`, `eu-central-2`, `us-gov-west-1`).
pub fn looks_like_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts.last().is_some_and(|n| n.parse::<u8>().is_ok())
        && parts[..parts.len() - 1]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(service: &str, region: Option<&str>, bucket: Option<&str>) -> ServiceEndpoint {
        ServiceEndpoint {
            service: service.into(),
            region: region.map(Into::into),
            bucket: bucket.map(Into::into),
        }
    }

    #[test]
    fn standard_names_are_recognised() {
        for (host, expected) in [
            (
                "sqs.eu-west-1.amazonaws.com",
                endpoint("sqs", Some("eu-west-1"), None),
            ),
            (
                "secretsmanager.us-east-1.amazonaws.com",
                endpoint("secretsmanager", Some("us-east-1"), None),
            ),
            (
                "s3.us-east-1.amazonaws.com",
                endpoint("s3", Some("us-east-1"), None),
            ),
            (
                "my-bucket.s3.us-east-1.amazonaws.com",
                endpoint("s3", Some("us-east-1"), Some("my-bucket")),
            ),
            (
                "a.b.c.s3.eu-west-3.amazonaws.com",
                endpoint("s3", Some("eu-west-3"), Some("a.b.c")),
            ),
            (
                "bucket.s3.amazonaws.com",
                endpoint("s3", None, Some("bucket")),
            ),
            ("s3.amazonaws.com", endpoint("s3", None, None)),
            ("iam.amazonaws.com", endpoint("iam", None, None)),
            (
                "states.us-gov-west-1.amazonaws.com",
                endpoint("states", Some("us-gov-west-1"), None),
            ),
        ] {
            assert_eq!(recognise(host), Some(expected), "{host}");
        }
    }

    #[test]
    fn other_names_are_not_aws_endpoints() {
        for host in [
            "example.com",
            "amazonaws.com",
            "amazonaws.com.evil.example",
            "sqs.eu-west-1.amazonaws.com.evil.example",
            "a.b.sqs.eu-west-1.amazonaws.com",
            "sqs.not_a_region.amazonaws.com",
            ".s3.amazonaws.com",
        ] {
            assert_eq!(recognise(host), None, "{host}");
        }
    }
}
