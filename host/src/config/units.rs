//! Human units for configuration and the command line: durations ("30s", "2m", "500ms")
//! and byte sizes ("128MiB", "64 MB", "1048576").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written in human units, e.g. `30s`, `1m 30s`, `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|err| {
                format!(
                    "invalid duration {text:?} ({err}); write e.g. \"30s\", \"5m\" or \"250ms\""
                )
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte count written in human units, e.g. `128MiB`, `64 MB`, `512KiB`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Units, case-insensitive: `B` or `bytes`, decimal `KB`/`MB`/`GB`, binary `KiB`/`MiB`/`GiB` (also `Ki`,
/// `Mi`, `Gi` as Kubernetes writes them). A bare `K`, `M` or `G` is refused as ambiguous.
const UNITS: [(&str, u64); 12] = [
    ("b", 1),
    ("byte", 1),
    ("bytes", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("ki", 1 << 10),
    ("mi", 1 << 20),
    ("gi", 1 << 30),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("invalid size {text:?}; write e.g. \"128MiB\", \"64MB\" or \"1048576\"");
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let unit = unit.trim().to_ascii_lowercase();
        if matches!(unit.as_str(), "k" | "m" | "g") {
            let upper = unit.to_ascii_uppercase();
            return Err(format!(
                "ambiguous size {text:?}: write {number}{upper}iB (binary, 2^10 steps) or \
                 {number}{upper}B (decimal, 10^3 steps)"
            ));
        }
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, multiplier)| *multiplier)
                .ok_or_else(invalid)?
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(invalid)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 30 && n % (1 << 30) == 0 => write!(f, "{}GiB", n >> 30),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n} bytes"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Accepts both `"128MiB"` and a plain integer number of bytes.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!("128MiB".parse::<ByteSize>().unwrap().0, 128 << 20);
        assert_eq!("64 MB".parse::<ByteSize>().unwrap().0, 64_000_000);
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("2gib".parse::<ByteSize>().unwrap().0, 2 << 30);
        assert_eq!("64Mi".parse::<ByteSize>().unwrap().0, 64 << 20);
        let ambiguous = "64m".parse::<ByteSize>().unwrap_err();
        assert!(
            ambiguous.contains("64MiB") && ambiguous.contains("64MB"),
            "{ambiguous}"
        );
        assert!("12 parsecs"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("12 parsecs"));
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("99999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(128 << 20).to_string(), "128MiB");
    }

    #[test]
    fn every_size_reads_back_as_printed() {
        // Found by the units fuzz target (fuzz/): "1 bytes", as errors print it, was refused.
        for size in [0, 1, 1_500, 1 << 10, 3 << 20, 5 << 30, u64::MAX] {
            let printed = ByteSize(size).to_string();
            assert_eq!(printed.parse::<ByteSize>(), Ok(ByteSize(size)), "{printed}");
        }
    }

    #[test]
    fn durations_parse_in_human_units() {
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert!("soon"
            .parse::<HumanDuration>()
            .unwrap_err()
            .contains("\"soon\""));
    }
}
