//! `[activity.aws]`: AWS calls signed by the host. A guest sends an ordinary wasi:http
//! request to a service's standard endpoint (`https://sqs.REGION.amazonaws.com/`,
//! `https://BUCKET.s3.REGION.amazonaws.com/KEY`...); the host recognises the service and
//! region from the name ([`endpoints`]), refuses what the activity does not grant, and signs
//! the request with the activity's credentials ([`signing`]) before it goes out through the
//! outbound path (its timeouts, caps and protected addresses). No credential ever enters the
//! sandbox: the guest never sees the signature either, only the service's response.

pub mod endpoints;
mod host_calls;
pub mod signing;

pub use host_calls::{with_retries, Failed, HostCall, HostCallFor};

use crate::config::units::ByteSize;
use crate::sandbox::capability::{Capability, GrantContext, NoFlags, TaskSetup};
use crate::sandbox::outbound::policy::{Allowlist, OriginScheme, Target, TargetHost};
use anyhow::{bail, Result};
use endpoints::{looks_like_region, ServiceEndpoint};
use serde::Deserialize;
use signing::{CredentialSource, GuestCredentials};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The AWS capability.
pub struct Aws;

/// The default bound on a signed request's body (signing needs its hash, so it is read
/// into memory first).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 5 << 20;

/// `[activity.aws]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The services the guest may call, by endpoint prefix (`s3`, `sqs`, `dynamodb`,
    /// `secretsmanager`, ...). Empty (the default): none.
    #[serde(default)]
    pub services: Vec<String>,
    /// The region the guest calls (default: `[worker] region`, else `AWS_REGION`).
    pub region: Option<String>,
    /// The role the guest's calls are signed with (default: the activity's `role_arn`, else
    /// the worker's own credentials).
    pub role_arn: Option<String>,
    /// The external id for `role_arn`.
    pub external_id: Option<String>,
    /// Where the calls go instead of AWS, e.g. `http://127.0.0.1:4566` for LocalStack
    /// (default: `[worker] endpoint_url`, else `AWS_ENDPOINT_URL`, else AWS itself).
    pub endpoint_url: Option<String>,
    /// Bytes of a signed request's body (default 5MiB).
    pub max_request_bytes: Option<ByteSize>,
}

/// What an activity's guests may call of AWS, and the credentials their calls are signed
/// with (fetched by the host on first use, kept by it).
#[derive(Debug)]
pub struct AwsGrant {
    services: BTreeSet<String>,
    /// The region calls must name (or why there is none).
    region: Result<String, String>,
    /// Where calls go instead of AWS (or why the override is unusable).
    endpoint: Option<Result<Target, String>>,
    /// What the outbound path may connect to for an endpoint override (its exact origin).
    endpoint_allowlist: Arc<Allowlist>,
    max_request_bytes: u64,
    credentials: GuestCredentials,
}

/// How one admitted AWS request goes out.
#[derive(Debug, Clone)]
pub struct AwsRoute {
    /// The service and region its host named.
    pub endpoint: ServiceEndpoint,
    /// Where it is sent.
    pub send_to: Target,
    /// Its `host` header (and the authority it is signed for).
    pub host_header: String,
    /// Put before its path: `/BUCKET` when a virtual-hosted S3 name goes to an endpoint
    /// override (path-style there).
    pub path_prefix: String,
}

impl Capability for Aws {
    type Settings = AwsSettings;
    type Grant = Option<Arc<AwsGrant>>;
    type TaskState = ();
    type Usage = ();
    type Metrics = ();
    type Flags = NoFlags;

    fn validate(settings: &AwsSettings) -> Result<()> {
        for service in &settings.services {
            if service.is_empty()
                || !service
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                bail!(
                    "key `services`: {service:?} is not a service's endpoint prefix (e.g. \"s3\", \
                     \"sqs\", \"secretsmanager\": lowercase letters, digits and '-')"
                );
            }
        }
        if let Some(region) = &settings.region {
            if !looks_like_region(region) {
                bail!("key `region`: {region:?} is not a region name (e.g. \"eu-west-1\")");
            }
        }
        if let Some(endpoint) = &settings.endpoint_url {
            endpoint_target(endpoint)
                .map_err(|why| anyhow::anyhow!("key `endpoint_url`: {why}"))?;
        }
        if settings.external_id.is_some() && settings.role_arn.is_none() {
            bail!("key `external_id` needs `role_arn` in the same table");
        }
        if settings.max_request_bytes.is_some_and(|bytes| bytes.0 == 0) {
            bail!("key `max_request_bytes` must be more than 0");
        }
        Ok(())
    }

    fn grant(settings: &AwsSettings, context: &GrantContext<'_>) -> Option<Arc<AwsGrant>> {
        if settings.services.is_empty() {
            return None;
        }
        Some(Arc::new(AwsGrant::new(settings, context, None)))
    }

    fn task_state(_: &Self::Grant, _: &TaskSetup<'_>) -> Result<()> {
        Ok(())
    }
}

impl AwsGrant {
    /// The grant of `settings` in `context`, signing with `provider` if given (else the
    /// worker's credential chain, assuming the role if one is set).
    pub fn new(
        settings: &AwsSettings,
        context: &GrantContext<'_>,
        provider: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    ) -> AwsGrant {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let region = settings
            .region
            .clone()
            .or_else(|| context.worker_region.map(str::to_string))
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .ok_or_else(|| {
                "the activity has no AWS region: set [activity.aws] region or [worker] region"
                    .to_string()
            });
        let endpoint_url = settings
            .endpoint_url
            .clone()
            .or_else(|| context.worker_endpoint_url.map(str::to_string))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let endpoint = endpoint_url.as_deref().map(endpoint_target);
        let endpoint_allowlist = match &endpoint {
            Some(Ok(target)) => Allowlist::parse(&[target.to_string()]).unwrap_or_default(),
            _ => Allowlist::default(),
        };
        let role = match (&settings.role_arn, context.role_arn) {
            (Some(role), _) => Some((role.clone(), settings.external_id.clone())),
            (None, Some(role)) => Some((role.to_string(), context.external_id.map(str::to_string))),
            (None, None) => None,
        };
        let source = match provider {
            Some(provider) => CredentialSource::Provider(provider),
            None => CredentialSource::Chain {
                region: region
                    .clone()
                    .unwrap_or_else(|_| endpoints::GLOBAL_REGION.into()),
                endpoint_url,
                role,
            },
        };
        AwsGrant {
            services: settings.services.iter().cloned().collect(),
            region,
            endpoint,
            endpoint_allowlist: Arc::new(endpoint_allowlist),
            max_request_bytes: settings
                .max_request_bytes
                .map_or(DEFAULT_MAX_REQUEST_BYTES, |bytes| bytes.0),
            credentials: GuestCredentials::new(source),
        }
    }

    /// How a request to `endpoint` (named by `target`) goes out, or why the activity does
    /// not let it (naming the key to change).
    pub fn route(&self, endpoint: ServiceEndpoint, target: &Target) -> Result<AwsRoute, String> {
        if !self.services.contains(&endpoint.service) {
            return Err(format!(
                "the activity's guests may not call the AWS service {:?}; add it to \
                 [activity.aws] services",
                endpoint.service
            ));
        }
        let region = self.region.as_ref().map_err(Clone::clone)?;
        if let Some(named) = &endpoint.region {
            if named != region {
                return Err(format!(
                    "it names the region {named} but the activity's guests call {region} \
                     ([activity.aws] region)"
                ));
            }
        }
        self.send_route(endpoint, target)
    }

    /// Where a request to `endpoint` (named by `target`) is sent, and as what: to AWS
    /// itself over https, or to the endpoint override (path-style for S3).
    pub(crate) fn send_route(
        &self,
        endpoint: ServiceEndpoint,
        target: &Target,
    ) -> Result<AwsRoute, String> {
        let TargetHost::Name(name) = &target.host else {
            unreachable!("an AWS endpoint is a name");
        };
        match &self.endpoint {
            None => Ok(AwsRoute {
                send_to: Target {
                    scheme: OriginScheme::Https,
                    host: target.host.clone(),
                    port: 443,
                },
                host_header: name.clone(),
                path_prefix: String::new(),
                endpoint,
            }),
            Some(Err(why)) => Err(why.clone()),
            Some(Ok(send_to)) => {
                let host_header = if send_to.port == send_to.scheme.default_port() {
                    match &send_to.host {
                        TargetHost::Name(name) => name.clone(),
                        TargetHost::Ip(_) => send_to.authority().rsplit_once(':').unwrap().0.into(),
                    }
                } else {
                    send_to.authority()
                };
                let path_prefix = endpoint
                    .bucket
                    .as_ref()
                    .map_or(String::new(), |bucket| format!("/{bucket}"));
                Ok(AwsRoute {
                    send_to: send_to.clone(),
                    host_header,
                    path_prefix,
                    endpoint,
                })
            }
        }
    }

    /// What an endpoint override's connection may reach (its exact origin, loopback too).
    pub fn endpoint_allowlist(&self) -> Arc<Allowlist> {
        self.endpoint_allowlist.clone()
    }

    /// The region the guest's calls must name, if the activity has one.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref().ok()
    }

    /// Bytes of a signed request's body.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }

    /// The activity's guest credentials.
    pub fn credentials(&self) -> &GuestCredentials {
        &self.credentials
    }
}

/// The origin of an `endpoint_url` (`http(s)://host[:port]`, a trailing `/` allowed).
fn endpoint_target(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL like \"http://127.0.0.1:4566\""))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!(
            "{url:?} has a path; give only scheme://host[:port]"
        ));
    }
    Target::new(scheme, authority).map_err(|why| format!("{url:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(services: &[&str], region: Option<&str>) -> AwsGrant {
        let settings = AwsSettings {
            services: services.iter().map(|s| s.to_string()).collect(),
            region: region.map(Into::into),
            endpoint_url: Some("http://127.0.0.1:4566".into()),
            ..AwsSettings::default()
        };
        let provider = aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new("AKID", "secret", None, None, "test"),
        );
        AwsGrant::new(&settings, &GrantContext::default(), Some(provider))
    }

    fn route(grant: &AwsGrant, host: &str) -> Result<AwsRoute, String> {
        let target = Target::new("https", host).unwrap();
        grant.route(endpoints::recognise(host).unwrap(), &target)
    }

    #[test]
    fn a_refused_call_names_the_key_to_change() {
        let sqs_only = grant(&["sqs"], Some("eu-west-1"));
        let err = route(&sqs_only, "dynamodb.eu-west-1.amazonaws.com").unwrap_err();
        assert!(
            err.contains("\"dynamodb\"") && err.contains("[activity.aws] services"),
            "{err}"
        );
        let err = route(&sqs_only, "sqs.us-east-1.amazonaws.com").unwrap_err();
        assert!(
            err.contains("us-east-1")
                && err.contains("eu-west-1")
                && err.contains("[activity.aws] region"),
            "{err}"
        );
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            let err = route(&grant(&["sqs"], None), "sqs.eu-west-1.amazonaws.com").unwrap_err();
            assert!(
                err.contains("set [activity.aws] region or [worker] region"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_override_gets_path_style_s3_and_its_own_host() {
        let route = route(
            &grant(&["s3"], Some("eu-west-1")),
            "photos.s3.eu-west-1.amazonaws.com",
        )
        .unwrap();
        assert_eq!(route.send_to.to_string(), "http://127.0.0.1:4566");
        assert_eq!(route.host_header, "127.0.0.1:4566");
        assert_eq!(route.path_prefix, "/photos");
    }
}
