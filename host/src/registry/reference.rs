//! A component's registry reference as `component` and `push` take it:
//! `oci://REGISTRY/REPOSITORY@sha256:DIGEST` (reproducible) or `oci://REGISTRY/REPOSITORY:TAG`
//! (resolved to a digest when loaded).

use std::fmt;

/// The scheme that marks a registry reference.
pub const SCHEME: &str = "oci://";

/// A component in an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// The repository, e.g. `tenants/orders`.
    pub repository: String,
    /// Which version: a manifest digest or a tag.
    pub version: Version,
}

/// A reference's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// `@sha256:HEX`: exactly one manifest.
    Digest(String),
    /// `:TAG`: whatever the tag names when it is resolved.
    Tag(String),
}

impl OciReference {
    /// Parses `text`, which starts with `oci://`; the error shows the forms.
    pub fn parse(text: &str) -> Result<OciReference, String> {
        let forms = "write oci://REGISTRY/REPOSITORY@sha256:DIGEST (or :TAG), e.g. \
                     oci://registry.example.com:5000/tenants/orders@sha256:4f3c…";
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{text:?} is not an oci:// reference; {forms}"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{text:?} names no repository; {forms}"))?;
        if registry.is_empty() {
            return Err(format!("{text:?} names no registry; {forms}"));
        }
        let (repository, version) = if let Some((repository, digest)) = path.split_once('@') {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "{text:?}: {digest:?} is not a digest (sha256: and 64 lowercase hex digits, as `push` prints)"
                ));
            }
            (repository, Version::Digest(digest.to_string()))
        } else {
            match path.rsplit_once(':') {
                Some((repository, tag)) if !tag.is_empty() && !tag.contains('/') => {
                    (repository, Version::Tag(tag.to_string()))
                }
                _ => return Err(format!("{text:?} has no digest or tag; {forms}")),
            }
        };
        let valid_repository = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !valid_repository {
            return Err(format!(
                "{text:?}: {repository:?} is not a repository name (lowercase letters, digits, \
                 '.', '_', '-', parts separated by '/')"
            ));
        }
        Ok(OciReference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            version,
        })
    }

    /// The same repository at `digest`.
    pub fn at_digest(&self, digest: &str) -> OciReference {
        OciReference {
            version: Version::Digest(digest.to_string()),
            ..self.clone()
        }
    }

    /// As the registry client names it.
    pub fn client_reference(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match &self.version {
            Version::Digest(digest) => {
                oci_client::Reference::with_digest(registry, repository, digest.clone())
            }
            Version::Tag(tag) => oci_client::Reference::with_tag(registry, repository, tag.clone()),
        }
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        match &self.version {
            Version::Digest(digest) => write!(f, "@{digest}"),
            Version::Tag(tag) => write!(f, ":{tag}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_print_back() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for text in [
            format!("oci://127.0.0.1:5000/tenants/orders@{digest}"),
            "oci://registry.example.com/orders:v1.2".to_string(),
        ] {
            assert_eq!(OciReference::parse(&text).unwrap().to_string(), text);
        }
        let tagged = OciReference::parse("oci://localhost:5000/orders:latest").unwrap();
        assert_eq!(tagged.registry, "localhost:5000");
        assert_eq!(tagged.version, Version::Tag("latest".into()));
        for bad in [
            "oci://registry",
            "oci:///orders:v1",
            "oci://r/orders",
            "oci://r/orders@sha256:12",
            "oci://r/Orders:v1",
        ] {
            let err = OciReference::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
