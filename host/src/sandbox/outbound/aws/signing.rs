//! Signing a guest's AWS request in the host: the activity's credentials (fetched and kept
//! here, never in the sandbox), the request's body read in full (bounded: SigV4 signs its
//! hash), what the guest set of `Authorization`, `X-Amz-Security-Token` and `X-Amz-Date`
//! removed, and SigV4 applied by the SDK's own signer (aws-sigv4).

use crate::sandbox::outbound::aws::AwsRoute;
use crate::sandbox::outbound::client;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use wasmtime_wasi_http::{Error, WasiBody};

/// Headers a guest may not set on a signed request: the host sets them, or they would carry
/// a credential of the guest's own.
const STRIPPED_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-security-token",
    "x-amz-date",
    "x-amz-content-sha256",
];

/// Credentials kept for this long when they carry no expiry, then fetched again.
const UNDATED_CREDENTIALS_KEPT: Duration = Duration::from_secs(15 * 60);
/// Credentials are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Where an activity's guest credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// The worker's default credential chain (in `region`, with `endpoint_url` for STS),
    /// assuming `role` (ARN, external id) if set.
    Chain {
        /// The region STS is called in.
        region: String,
        /// The endpoint override (LocalStack), if any.
        endpoint_url: Option<String>,
        /// The role to assume, and its external id.
        role: Option<(String, Option<String>)>,
    },
    /// A provider given by the embedding program (tests).
    Provider(SharedCredentialsProvider),
}

/// An activity's guest credentials: its provider, built on first use, and the last
/// credentials it gave while they are fresh.
#[derive(Debug)]
pub struct GuestCredentials {
    source: CredentialSource,
    provider: tokio::sync::OnceCell<SharedCredentialsProvider>,
    current: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl GuestCredentials {
    /// Credentials from `source`, fetched on first use.
    pub fn new(source: CredentialSource) -> GuestCredentials {
        GuestCredentials {
            source,
            provider: tokio::sync::OnceCell::new(),
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Fresh credentials; the error says where they could not come from (never a secret).
    async fn get(&self) -> Result<Credentials, String> {
        let mut current = self.current.lock().await;
        let now = SystemTime::now();
        if let Some((credentials, fetched)) = &*current {
            let fresh = match credentials.expiry() {
                Some(expiry) => expiry > now + REFRESH_BEFORE_EXPIRY,
                None => now < *fetched + UNDATED_CREDENTIALS_KEPT,
            };
            if fresh {
                return Ok(credentials.clone());
            }
        }
        let provider = self.provider.get_or_try_init(|| self.build()).await?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|err| format!("no AWS credentials for the activity's guests: {err}"))?;
        *current = Some((credentials.clone(), now));
        Ok(credentials)
    }

    async fn build(&self) -> Result<SharedCredentialsProvider, String> {
        let (region, endpoint_url, role) = match &self.source {
            CredentialSource::Provider(provider) => return Ok(provider.clone()),
            CredentialSource::Chain {
                region,
                endpoint_url,
                role,
            } => (region, endpoint_url, role),
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.clone()));
        if let Some(endpoint) = endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        match role {
            Some((role_arn, external_id)) => {
                let mut builder = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                    .session_name("sfn-wasm-worker-guest")
                    .configure(&sdk);
                if let Some(external_id) = external_id {
                    builder = builder.external_id(external_id);
                }
                Ok(SharedCredentialsProvider::new(builder.build().await))
            }
            None => sdk.credentials_provider().ok_or_else(|| {
                "no AWS credentials for the activity's guests: the worker has none \
                 (its default credential chain found nothing)"
                    .to_string()
            }),
        }
    }
}

/// `request` as it goes to AWS: sent to the route's endpoint, its body read (at most
/// `max_body` bytes), the guest's signing headers removed, signed with `credentials`.
pub async fn signed(
    route: &AwsRoute,
    credentials: &GuestCredentials,
    max_body: u64,
    request: http::Request<WasiBody>,
    deadline: Instant,
) -> Result<http::Request<WasiBody>, Error> {
    let (mut parts, body) = request.into_parts();
    let body = collected(body, max_body, deadline).await?;
    for name in STRIPPED_HEADERS {
        parts.headers.remove(name);
    }
    let host = http::HeaderValue::from_str(&route.host_header)
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    parts.headers.insert(http::header::HOST, host);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!(
        "{}://{}{}{}",
        route.send_to.scheme.as_str(),
        route.host_header,
        route.path_prefix,
        path
    );
    parts.uri = uri.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

    let credentials = credentials.get().await.map_err(|why| {
        tracing::warn!(service = %route.endpoint.service, "AWS request not signed: {why}");
        Error::InternalError(Some(
            "the host has no AWS credentials for this activity (see the worker's log)".into(),
        ))
    })?;
    let identity: Identity = credentials.into();
    let mut settings = SigningSettings::default();
    if route.endpoint.service == "s3" {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(route.endpoint.signing_region())
        .name(route.endpoint.signing_name())
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|err| Error::InternalError(Some(format!("signing: {err}"))))?
        .into();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let signable = SignableRequest::new(
        parts.method.as_str(),
        uri.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&body),
    )
    .map_err(|err| Error::InternalError(Some(format!("signing: {err}"))))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|err| Error::InternalError(Some(format!("signing: {err}"))))?
        .into_parts();
    let mut request = http::Request::from_parts(
        parts,
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    instructions.apply_to_request_http1x(&mut request);
    Ok(request)
}

/// The whole body of a request to sign, at most `max_body` bytes. Past that the request fails
/// with HTTP-request-body-size, and the rest of what the guest writes is discarded (its body
/// stream stays open, so the guest sees that error rather than a closed stream).
async fn collected(mut body: WasiBody, max_body: u64, deadline: Instant) -> Result<Bytes, Error> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if (collected.len() + data.len()) as u64 > max_body {
            client::discard_unsent(body, deadline);
            return Err(Error::HttpRequestBodySize(Some(max_body)));
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}
